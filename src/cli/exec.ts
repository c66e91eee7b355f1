// tetrixctl exec, attach and sessions: a process or terminal session in a running workspace, as `docker exec`
// behaves. With -t on a terminal, the local terminal goes raw (Ctrl-C, Ctrl-Z and the rest reach the remote
// process as bytes) and follows resizes; without -t, SIGINT and SIGTERM are sent on as signals. The remote
// exit code becomes tetrixctl's own (128 + N for a signal). Ctrl-P Ctrl-Q detaches from a session.
import * as grpc from '@grpc/grpc-js';
import os from 'node:os';
import type { Clients } from './client';
import { unaryCall } from './client';
import { keyValues, UsageError, type Invocation } from './args';
import type { ExecInput } from '../generated/tetrix/agent/v1/ExecInput';
import type { ExecOutput__Output } from '../generated/tetrix/agent/v1/ExecOutput';
import type { ExecExit__Output } from '../generated/tetrix/agent/v1/ExecExit';
import type { ListSessionsResponse__Output } from '../generated/tetrix/agent/v1/ListSessionsResponse';

const DETACH_KEYS = Buffer.from([0x10, 0x11]); // Ctrl-P Ctrl-Q, as docker attach
const SIGNALS = os.constants.signals as Record<string, number>;

type Action = (c: Clients) => Promise<number>;

interface Terminal {
  tty: boolean;
  interactive: boolean;
  raw: boolean;        // the local stdin is a terminal we put in raw mode
}

function localSize(): { rows: number; cols: number } | undefined {
  return process.stdout.isTTY && process.stdout.rows > 0 ? { rows: process.stdout.rows, cols: process.stdout.columns } : undefined;
}

/** The exit code tetrixctl takes from the remote process. */
export function exitCodeOf(exit: ExecExit__Output | undefined): number {
  if (!exit || exit.unknown) return 255;
  if (exit.signal) return 128 + (SIGNALS[exit.signal] ?? 0);
  return exit.exitCode;
}

/** Drives one ExecWorkspace call with this process's stdio; resolves with the exit code to use. */
function runCall(c: Clients, first: ExecInput, term: Terminal, announce: boolean): Promise<number> {
  return new Promise((resolve, reject) => {
    const call = c.exec.ExecWorkspace();
    let exit: ExecExit__Output | undefined;
    let detached = false;
    const cleanups: Array<() => void> = [];
    const finish = (fn: () => void): void => {
      for (const undo of cleanups.splice(0)) undo();
      fn();
    };
    call.on('data', (m: ExecOutput__Output) => {
      if (m.started && announce) process.stderr.write(`tetrixctl: session ${m.started.sessionId}${term.raw ? ' (detach: Ctrl-P Ctrl-Q)' : ''}\r\n`);
      const out = m.stdout ?? m.stderr;
      if (out && out.length > 0) {
        const stream = m.stderr ? process.stderr : process.stdout;
        // The remote side waits while our terminal or pipe is full.
        if (!stream.write(out)) {
          call.pause();
          stream.once('drain', () => call.resume());
        }
      }
      if (m.exit) exit = m.exit;
    });
    call.on('error', (err: grpc.ServiceError) => finish(() => (detached && err.code === grpc.status.CANCELLED ? resolve(0) : reject(err))));
    call.on('end', () => finish(() => resolve(detached ? 0 : exitCodeOf(exit))));
    call.write(first);

    if (term.raw) {
      process.stdin.setRawMode(true);
      cleanups.push(() => process.stdin.setRawMode(false));
    }
    if (term.tty && process.stdout.isTTY) {
      const onResize = (): void => {
        const size = localSize();
        if (size) call.write({ resize: size });
      };
      process.stdout.on('resize', onResize);
      cleanups.push(() => process.stdout.off('resize', onResize));
    }
    if (!term.tty) {
      for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
        const forward = (): void => void call.write({ signal: sig });
        process.on(sig, forward);
        cleanups.push(() => process.off(sig, forward));
      }
    }
    if (term.interactive) {
      const onData = (chunk: Buffer): void => {
        if (term.raw && chunk.includes(DETACH_KEYS)) {
          detached = true;
          call.write({ detach: true });
          return;
        }
        if (!call.write({ stdin: chunk })) {
          process.stdin.pause();
          call.once('drain', () => process.stdin.resume());
        }
      };
      const onEnd = (): void => void call.end();
      process.stdin.on('data', onData);
      process.stdin.once('end', onEnd);
      cleanups.push(() => {
        process.stdin.off('data', onData);
        process.stdin.off('end', onEnd);
        process.stdin.pause();
      });
    } else if (!term.tty) {
      call.end(); // no stdin: EOF at once, as `docker exec` without -i
    }
  });
}

function terminalOf(inv: Invocation, tty: boolean): Terminal {
  const interactive = inv.values.interactive === true;
  return { tty, interactive, raw: tty && interactive && process.stdin.isTTY === true };
}

export function execAction(inv: Invocation, json: boolean): Action | undefined {
  const name = inv.command!.name;
  if (name === 'exec') {
    if (inv.argv.length === 0) throw new UsageError('exec needs a program after -- (tetrixctl exec ID -- sh)', 'exec');
    const term = terminalOf(inv, inv.values.tty === true);
    const session = inv.values.session === true;
    if (session && !term.tty) throw new UsageError('exec: --session needs -t (a session is a terminal)', 'exec');
    const start = {
      workspaceId: inv.args[0],
      argv: inv.argv,
      env: Object.fromEntries(keyValues('--env', (inv.values.env as string[] | undefined) ?? [])),
      workingDir: (inv.values.workdir as string | undefined) ?? '',
      user: (inv.values.user as string | undefined) ?? '',
      tty: term.tty,
      ...(term.tty ? { size: localSize() ?? { rows: 24, cols: 80 } } : {}),
      session,
    };
    return (c) => runCall(c, { start }, term, session);
  }
  if (name === 'attach') {
    const term: Terminal = { tty: true, interactive: true, raw: process.stdin.isTTY === true };
    const attach = { workspaceId: inv.args[0], sessionId: inv.args[1], size: localSize() ?? { rows: 0, cols: 0 } };
    return (c) => runCall(c, { attach }, term, true);
  }
  if (name === 'sessions') {
    return async (c) => {
      const res = await unaryCall<ListSessionsResponse__Output>((md, o, cb) => c.exec.ListSessions({ workspaceId: inv.args[0] }, md, o, cb));
      if (json) process.stdout.write(res.sessions.map((s) => JSON.stringify(s) + '\n').join(''));
      else {
        const rows = res.sessions.map((s) => [s.sessionId, s.running ? 'running' : `exited ${exitCodeOf(s.exit ?? undefined)}`, s.attached ? 'attached' : 'detached', new Date(Number(s.createdUnixMs)).toISOString(), s.argv.join(' ')]);
        process.stdout.write(['SESSION\tSTATE\tCLIENT\tCREATED\tCOMMAND', ...rows.map((r) => r.join('\t'))].join('\n') + '\n');
      }
      return 0;
    };
  }
  return undefined;
}
