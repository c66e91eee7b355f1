// Running a prebuild's tasks. tetrix-init runs them itself (`init --tasks`, native/init.c run_tasks), one
// at a time, over a unix socket pair: init holds one end as fd 8, the daemon the other; no task ever
// holds either. This is the daemon's side (protocol in docs/prebuilds.md):
//   init: "ready <i>"   -> the daemon sends task i (argv, cwd, its own env) with two fresh pipes for its
//                          stdout and stderr, or an empty frame when there is no task i
//   init: "start <i>"   -> task i runs
//   init: "end <i> <c>" -> task i and everything it left behind are gone; c is its exit code (128+signal)
// Task i's env therefore leaves the daemon only when task i starts, and only into init (not dumpable), and
// from there only into task i's execve. Nothing of the channel is a path: the daemon never opens anything
// the workspace can write, and no task can write a status line.
import net from 'node:net';

/** One prebuild task as the workspace spec names it. */
export interface TaskSpec {
  name: string;
  command: string[];
  workingDir: string;
  env: Record<string, string>;
}

export type TaskEvent = { kind: 'start'; index: number } | { kind: 'end'; index: number; exitCode: number };

/** What the channel needs of the addon (src/native/channel.ts). */
export interface TaskChannelNative {
  pipe(): [number, number];
  sendWithFds(socketFd: number, data: Buffer, fds: number[]): void;
  closeFd(fd: number): void;
}

type InitLine = { kind: 'ready' | 'start'; index: number } | { kind: 'end'; index: number; exitCode: number };

/** init's lines; anything else is ignored (only init writes here, so anything else is a bug). */
export function parseInitLine(line: string, count: number): InitLine | undefined {
  const m = /^(ready|start|end) (\d{1,4})(?: (\d{1,3}))?$/.exec(line);
  if (!m) return undefined;
  const index = Number(m[2]);
  if (m[1] === 'end') return m[3] === undefined || index >= count ? undefined : { kind: 'end', index, exitCode: Number(m[3]) };
  if (m[3] !== undefined || (m[1] === 'start' && index >= count)) return undefined;
  return { kind: m[1] as 'ready' | 'start', index };
}

/** Task i as init reads it: u32 length (little-endian), then NUL-terminated argc, cwd, argv..., env "K=V"... */
export function encodeTaskFrame(task: TaskSpec): Buffer {
  const strings = [String(task.command.length), task.workingDir, ...task.command, ...Object.entries(task.env).map(([k, v]) => `${k}=${v}`)];
  const payload = Buffer.from(strings.map((s) => `${s}\0`).join(''), 'utf8');
  const header = Buffer.alloc(4);
  header.writeUInt32LE(payload.length);
  return Buffer.concat([header, payload]);
}

const NO_MORE_TASKS = Buffer.alloc(4);

export interface TaskRunHooks {
  onEvent(event: TaskEvent): void;
  /** Task i's stdout and stderr read ends, owned by the callee from then on. */
  onOutput(index: number, stdoutFd: number, stderrFd: number): void;
}

/**
 * Serves init over the daemon's end of the channel (owned from here on) until init closes it. Resolves
 * then; init's exit status and the task statuses tell how the run went.
 */
export async function serveTasks(tasks: readonly TaskSpec[], channelFd: number, native: TaskChannelNative, hooks: TaskRunHooks): Promise<void> {
  const socket = new net.Socket({ fd: channelFd, readable: true, writable: false });
  let handedOut = 0;   // tasks sent to init so far: init asks for them in order, each once
  let started = -1;
  let ended = -1;
  let pending = '';
  try {
    for await (const chunk of socket) {
      pending += (chunk as Buffer).toString('utf8');
      const lines = pending.split('\n');
      pending = lines.pop() ?? '';
      for (const line of lines) {
        const msg = parseInitLine(line, tasks.length);
        if (msg?.kind === 'ready') handedOut = handOut(tasks, msg.index, handedOut, channelFd, native, hooks);
        else if (msg?.kind === 'start' && msg.index === handedOut - 1 && msg.index > started) {
          started = msg.index;
          hooks.onEvent({ kind: 'start', index: msg.index });
        } else if (msg?.kind === 'end' && msg.index === started && msg.index > ended) {
          ended = msg.index;
          hooks.onEvent(msg);
        }
      }
    }
  } finally {
    socket.destroy();
  }
}

function handOut(tasks: readonly TaskSpec[], index: number, handedOut: number, channelFd: number, native: TaskChannelNative, hooks: TaskRunHooks): number {
  if (index !== handedOut || index >= tasks.length) {
    native.sendWithFds(channelFd, NO_MORE_TASKS, []);
    return handedOut;
  }
  const [outRead, outWrite] = native.pipe();
  const [errRead, errWrite] = native.pipe();
  hooks.onOutput(index, outRead, errRead);
  try {
    native.sendWithFds(channelFd, encodeTaskFrame(tasks[index]), [outWrite, errWrite]);
  } finally {
    // init has its copies (or is gone): the pipes end when the task and what it left end.
    native.closeFd(outWrite);
    native.closeFd(errWrite);
  }
  return index + 1;
}
