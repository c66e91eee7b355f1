// What the exec tests share: a daemon that trusts a test control plane (user tokens), a running workspace,
// and an ExecWorkspace call driven from the test as a client would.
import * as grpc from '@grpc/grpc-js';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Test } from 'tap';
import { startDaemon, uniqueName, type Daemon } from '../helpers/daemon';
import type { ExecInput } from '../../src/generated/tetrix/agent/v1/ExecInput';
import type { ExecOutput__Output } from '../../src/generated/tetrix/agent/v1/ExecOutput';
import type { ExecStart } from '../../src/generated/tetrix/agent/v1/ExecStart';
import type { ExecAttach } from '../../src/generated/tetrix/agent/v1/ExecAttach';
import type { ExecExit__Output } from '../../src/generated/tetrix/agent/v1/ExecExit';

const controlPlane = crypto.generateKeyPairSync('ed25519');
const b64 = (value: unknown): string => Buffer.from(JSON.stringify(value)).toString('base64url');

export interface ExecDaemon {
  d: Daemon;
  /** A user token of this daemon's control plane. */
  token(sub: string): string;
}

export async function execDaemon(t: Test, extra: string[] = []): Promise<ExecDaemon> {
  const nodeId = uniqueName('tetrix-node');
  const keyDir = fs.mkdtempSync(path.join(os.tmpdir(), 'tetrix-test-exec-key-'));
  t.teardown(() => fs.rmSync(keyDir, { recursive: true, force: true }));
  const keyFile = path.join(keyDir, 'control-plane.pub.pem');
  fs.writeFileSync(keyFile, controlPlane.publicKey.export({ type: 'spki', format: 'pem' }));
  const d = await startDaemon(t, ['--control-plane-key-file', keyFile, '--node-id', nodeId, ...extra]);
  const token = (sub: string): string => {
    const now = Math.floor(Date.now() / 1000);
    const input = `${b64({ alg: 'EdDSA', typ: 'JWT' })}.${b64({ sub, teams: [], aud: nodeId, iat: now, exp: now + 3600 })}`;
    return `${input}.${crypto.sign(null, Buffer.from(input), controlPlane.privateKey).toString('base64url')}`;
  };
  return { d, token };
}

/** A workspace that just waits, owned by `owner`. */
export async function sleeper(d: Daemon, id: string, owner = 'alice', extra: Record<string, unknown> = {}): Promise<void> {
  const w = await d.start({ id, ownerId: owner, image: 'builtin:busybox', command: ['/bin/sh', '-c', 'exec sleep 3600'], ...extra });
  if (w.state !== 'WORKSPACE_STATE_RUNNING') throw new Error(`workspace ${id} did not start: ${w.state} ${w.message}`);
}

export interface ExecRun {
  call: grpc.ClientDuplexStream<ExecInput, ExecOutput__Output>;
  sessionId: Promise<string>;
  /** Everything received so far. */
  stdout(): Buffer;
  stderr(): Buffer;
  /** The exit message, or the call's error. */
  done: Promise<{ exit?: ExecExit__Output; error?: grpc.ServiceError }>;
  /** Resolves once stdout holds text. */
  waitFor(text: string | RegExp, timeoutMs?: number): Promise<void>;
  send(msg: ExecInput): void;
}

function metadataOf(token?: string): grpc.Metadata {
  const md = new grpc.Metadata();
  if (token) md.set('authorization', `Bearer ${token}`);
  return md;
}

export function exec(d: Daemon, first: { start: ExecStart } | { attach: ExecAttach }, token?: string): ExecRun {
  const call = d.clients.exec.ExecWorkspace(metadataOf(token));
  const out: Buffer[] = [];
  const err: Buffer[] = [];
  let onSession!: (id: string) => void;
  const sessionId = new Promise<string>((resolve) => (onSession = resolve));
  const waiters: Array<() => void> = [];
  let exit: ExecExit__Output | undefined;
  call.on('data', (m: ExecOutput__Output) => {
    if (m.started) onSession(m.started.sessionId);
    if (m.stdout) out.push(m.stdout);
    if (m.stderr) err.push(m.stderr);
    if (m.exit) exit = m.exit;
    for (const w of waiters.splice(0)) w();
  });
  const done = new Promise<{ exit?: ExecExit__Output; error?: grpc.ServiceError }>((resolve) => {
    call.on('error', (e: grpc.ServiceError) => resolve({ error: e, ...(exit ? { exit } : {}) }));
    call.on('end', () => resolve(exit ? { exit } : {}));
  });
  void done.then(() => onSession(''));
  call.write(first);
  const stdout = (): Buffer => Buffer.concat(out);
  const run: ExecRun = {
    call,
    sessionId,
    stdout,
    stderr: () => Buffer.concat(err),
    done,
    send: (msg) => call.write(msg),
    waitFor: async (text, timeoutMs = 30_000) => {
      const seen = (): boolean => (typeof text === 'string' ? stdout().includes(text) : text.test(stdout().toString('latin1')));
      const end = Date.now() + timeoutMs;
      let ended: { error?: grpc.ServiceError } | undefined;
      void done.then((x) => (ended = x));
      while (!seen()) {
        if (ended) throw new Error(`the call ended (${ended.error?.details ?? 'ok'}) before ${String(text)}; got ${JSON.stringify(stdout().toString('latin1').slice(-400))}`);
        if (Date.now() > end) throw new Error(`timed out waiting for ${String(text)}; got ${JSON.stringify(stdout().toString('latin1').slice(-400))}`);
        await Promise.race([new Promise<void>((r) => waiters.push(r)), new Promise((r) => setTimeout(r, 200)), done]);
      }
    },
  };
  return run;
}

/** Waits until pred holds (polling), or fails naming what. */
export async function eventually(what: string, pred: () => boolean | Promise<boolean>, timeoutMs = 30_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!(await pred())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}
