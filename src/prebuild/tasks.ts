// Running a prebuild's tasks inside its workspace. The workload is a small shell script that runs
// each task in order and stops at the first failure; the daemon learns each task's start and end
// through a status FIFO, and each task's output through FIFOs of its own, so every line of the log
// is attributed to the task that wrote it.
//
// Inside the workspace (the io directory is bound at /.tetrix/io, owned by the workspace's root):
//   status     "start <i>" and "end <i> <exit code>", one line each, written by the runner only
//   <i>.out    task i's stdout
//   <i>.err    task i's stderr
//
// No secret is ever in the script: task env values reach the runner as its own environment
// (__TX_<i>_<NAME>) and each task's subshell exports its own under the real names and unsets the rest.
import fs from 'node:fs';
import path from 'node:path';
import type { TaskSpec } from '../workspace/types';

export const IO_DIR_IN_WORKSPACE = '/.tetrix/io';

const quote = (s: string): string => `'${s.replace(/'/g, `'\\''`)}'`;
const carrier = (i: number, name: string): string => `__TX_${i}_${name}`;

/** argv and extra environment of the runner; the script holds names and commands, never values. */
export function taskRunner(tasks: readonly TaskSpec[]): { argv: string[]; env: Record<string, string> } {
  const env: Record<string, string> = {};
  const carriers: string[] = [];
  tasks.forEach((t, i) => {
    for (const [name, value] of Object.entries(t.env)) {
      env[carrier(i, name)] = value;
      carriers.push(carrier(i, name));
    }
  });
  const io = IO_DIR_IN_WORKSPACE;
  const lines = [`exec 9>${io}/status`];
  tasks.forEach((t, i) => {
    const exports = Object.keys(t.env).map((name) => `export ${name}="$${carrier(i, name)}"; `).join('');
    const unset = carriers.length ? `unset ${carriers.join(' ')}; ` : '';
    lines.push(
      `echo "start ${i}" >&9`,
      `( ${exports}${unset}cd ${quote(t.workingDir)} && exec ${t.command.map(quote).join(' ')} ) 9>&- >${io}/${i}.out 2>${io}/${i}.err`,
      'rc=$?',
      `echo "end ${i} $rc" >&9`,
      '[ "$rc" -eq 0 ] || exit "$rc"',
    );
  });
  lines.push('exit 0');
  return { argv: ['/bin/sh', '-c', lines.join('\n')], env };
}

export type TaskEvent = { kind: 'start'; index: number } | { kind: 'end'; index: number; exitCode: number };

/** The FIFOs of a run, owned by the workspace's root so its runner may open them. */
export function createTaskFifos(ioDir: string, count: number, uid: number, mkfifo: (p: string, mode: number) => void): void {
  fs.rmSync(ioDir, { recursive: true, force: true });
  fs.mkdirSync(ioDir, { mode: 0o700 });
  fs.chownSync(ioDir, uid, uid);
  for (const name of ['status', ...Array.from({ length: count }, (_, i) => [`${i}.out`, `${i}.err`]).flat()]) {
    const fifo = path.join(ioDir, name);
    mkfifo(fifo, 0o600);
    fs.chownSync(fifo, uid, uid);
  }
}

/** Parses the runner's status lines. Anything else is ignored: the protocol has no other words. */
export function parseTaskEvent(line: string, count: number): TaskEvent | undefined {
  const m = /^(start|end) (\d{1,4})(?: (\d{1,3}))?$/.exec(line.trim());
  if (!m) return undefined;
  const index = Number(m[2]);
  if (index >= count) return undefined;
  if (m[1] === 'start') return { kind: 'start', index };
  return m[3] === undefined ? undefined : { kind: 'end', index, exitCode: Number(m[3]) };
}
