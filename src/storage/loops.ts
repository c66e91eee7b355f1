// The loop devices the kernel has attached, and the file behind each (sysfs, loop(4)): what sweep()
// and the leak checks count.
import fs from 'node:fs';
import path from 'node:path';

export interface AttachedLoop {
  minor: number;
  backingFile: string;
}

const SYS_BLOCK = '/sys/block';

/** Every bound loop device; a file deleted while attached shows with " (deleted)" appended, as sysfs says. */
export function attachedLoops(): AttachedLoop[] {
  const out: AttachedLoop[] = [];
  for (const name of fs.readdirSync(SYS_BLOCK)) {
    const m = /^loop(\d+)$/.exec(name);
    if (!m) continue;
    try {
      const backingFile = fs.readFileSync(path.join(SYS_BLOCK, name, 'loop', 'backing_file'), 'utf8').trim();
      out.push({ minor: Number(m[1]), backingFile });
    } catch {
      // No loop/ directory: the device is not bound.
    }
  }
  return out;
}

/** The bound loop devices whose file lies under dir. */
export function loopsUnder(dir: string): AttachedLoop[] {
  const root = path.resolve(dir) + '/';
  return attachedLoops().filter((l) => l.backingFile.startsWith(root));
}
