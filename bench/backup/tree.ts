// The generated workspace-shaped tree both backup benchmarks use (run.ts, snapshots.ts).
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';

const MiB = 1 << 20;

// ------------------------------------------------------------------------------------------------
// The tree: ~55% small source-like files, ~30% large semi-compressible binaries, ~15% random data.

function sourceTextPool(bytes: number): Buffer {
  const words = Array.from({ length: 3000 }, (_, i) =>
    crypto.createHash('md5').update(String(i)).digest('base64').replace(/[^a-z]/gi, '').slice(0, 3 + (i % 9)));
  const kw = ['const', 'let', 'return', 'if', 'for', 'import', 'export', 'function', 'await', 'new', 'class'];
  const lines: string[] = [];
  let size = 0;
  let seed = 1;
  const rnd = (n: number) => ((seed = (seed * 1103515245 + 12345) & 0x7fffffff) % n);
  while (size < bytes) {
    const indent = '  '.repeat(rnd(4));
    const line = `${indent}${kw[rnd(kw.length)]} ${words[rnd(words.length)]} = ${words[rnd(words.length)]}(${words[rnd(words.length)]}, ${rnd(1000)});\n`;
    lines.push(line);
    size += line.length;
  }
  return Buffer.from(lines.join(''));
}

function semiCompressible(bytes: number): Buffer {
  // Like build outputs and images: stretches of structure between stretches of noise.
  const out = Buffer.alloc(bytes);
  for (let off = 0; off < bytes; off += 64 * 1024) {
    const len = Math.min(64 * 1024, bytes - off);
    if ((off / (64 * 1024)) % 2 === 0) crypto.randomFillSync(out, off, len);
    else for (let i = 0; i < len; i++) out[off + i] = (i * 31) & 0xff & (i >> 6);
  }
  return out;
}

export function generateTree(dir: string, total: number): { files: number } {
  const pool = sourceTextPool(16 * MiB);
  let files = 0;
  let small = Math.floor(total * 0.55);
  for (let pkg = 0; small > 0; pkg++) {
    for (let mod = 0; mod < 20 && small > 0; mod++) {
      const d = path.join(dir, 'src', `pkg${pkg}`, `mod${mod}`);
      fs.mkdirSync(d, { recursive: true });
      for (let f = 0; f < 40 && small > 0; f++) {
        const size = Math.min(small, 1024 + ((pkg * 7919 + mod * 104729 + f * 1299709) % (24 * 1024)));
        const off = (pkg * 31 + mod * 17 + f * 7919 * 13) % (pool.length - size);
        fs.writeFileSync(path.join(d, `file${f}.ts`), pool.subarray(off, off + size));
        small -= size;
        files++;
      }
    }
  }
  fs.mkdirSync(path.join(dir, 'build'), { recursive: true });
  const big = Math.floor(total * 0.3 / 3);
  for (let i = 0; i < 3; i++) {
    writeInChunks(path.join(dir, 'build', `artifact${i}.bin`), big, semiCompressible);
    files++;
  }
  fs.mkdirSync(path.join(dir, 'assets'), { recursive: true });
  const random = Math.floor(total * 0.15 / 2);
  for (let i = 0; i < 2; i++) {
    writeInChunks(path.join(dir, 'assets', `media${i}.zip`), random, (n) => crypto.randomBytes(n));
    files++;
  }
  return { files };
}

function writeInChunks(file: string, bytes: number, make: (n: number) => Buffer): void {
  const fd = fs.openSync(file, 'w');
  for (let done = 0; done < bytes; done += 8 * MiB) fs.writeSync(fd, make(Math.min(8 * MiB, bytes - done)));
  fs.closeSync(fd);
}

