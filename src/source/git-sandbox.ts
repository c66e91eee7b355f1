// One git command, run as the workspace's own unprivileged user in a sandbox of its own (never as host
// root): spawn's user namespace mapped to the workspace's uid range, its mount namespace with the host's
// /usr (hence git, its libraries, sh) and /etc/ssl read-only and the workspace's content dir at
// /workspace, the workspace's cgroup, the default seccomp filter, no capabilities at all, and a network
// namespace whose loopback holds only the daemon's fetch proxy. What a hostile repository makes git run
// runs there, and can write nothing but /workspace. docs/source.md says why each part is there.
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import type { Logger } from 'pino';
import type { LaunchSpec, Launched } from '../sandbox/launch';
import { workspaceLayout } from '../layout';
import { FetchProxy, type EgressPolicy } from './fetch-proxy';

export interface SourceSandboxDeps {
  /** The workspace sandbox's launch (src/sandbox/launch.ts), into the workspace's cgroup. */
  launch(spec: LaunchSpec): Promise<Launched>;
  /** native/netns-listen.c */
  listenInNetns(pid: number, port: number): number;
  /** native/output.c: git's stdout and stderr go to pipes, never to a file on the workspace's (maybe full) disk. */
  outputPipe(capacity: number): { readFd: number; writeFd: number; keepFd: number };
  policy: EgressPolicy;
  log: Logger;
  /** Host path of an extra CA bundle for HTTPS remotes ('' = none), bound read-only at CA_IN_SANDBOX. */
  caFile: string;
}

export interface GitRun {
  workspaceId: string;
  step: string;               // for the log: prepare, fetch, checkout, submodules
  wsDir: string;
  uidBase: number;
  argv: string[];
  env: Record<string, string>;
  /** Serve the proxy: SOCKS5 on SOCKS_PORT, and each git:// remote on its local port. */
  network?: { forwards: Array<{ localPort: number; host: string; port: number }> };
  /** Called with the stderr written so far, every PROGRESS_EVERY_MS while it runs. */
  onStderr?(text: string): void;
  timeoutMs: number;
}

export interface GitResult {
  exitCode: number;
  signal: string;
  stdout: string;
  stderr: string;
  timedOut: boolean;
  bytesIn: number;
  refused: number;
  unreachable: string;
}

export const SOCKS_PORT = 1080;
export const CA_IN_SANDBOX = '/etc/tetrix-source-ca.pem';
const PROGRESS_EVERY_MS = 250;
const MAX_OUTPUT = 1 << 20;
// Host directories the fetch sees, read-only. Debian merges /bin, /lib, /lib64 and /sbin into /usr: the
// tool root carries the same symlinks.
const HOST_READONLY = ['/usr', '/etc/ssl'];
const USR_LINKS: Array<[string, string]> = [['bin', 'usr/bin'], ['lib', 'usr/lib'], ['lib64', 'usr/lib64'], ['sbin', 'usr/sbin']];

export class GitSandbox {
  constructor(private readonly d: SourceSandboxDeps) {}

  /** Runs argv in the tool root; resolves with how it ended. Throws only when the sandbox cannot be made. */
  async run(job: GitRun): Promise<GitResult> {
    const layout = workspaceLayout(job.wsDir);
    const dir = layout.source;
    const root = this.toolRoot(dir);
    const stdout = this.collect();
    const stderr = this.collect();
    const proxy = new FetchProxy(this.d.policy, this.d.log, job.workspaceId);
    let launched: Launched | undefined;
    let progress: NodeJS.Timeout | undefined;
    let timer: NodeJS.Timeout | undefined;
    let timedOut = false;
    const began = performance.now();
    try {
      const mounts = [
        ...HOST_READONLY.map((p) => ({ source: p, target: p, readonly: true })),
        ...(this.d.caFile ? [{ source: this.d.caFile, target: CA_IN_SANDBOX, readonly: true }] : []),
        { source: layout.content, target: '/workspace', readonly: false },
      ];
      launched = await this.d.launch({
        workspaceId: job.workspaceId, wsDir: dir, rootfs: root, argv: job.argv, env: job.env, cwd: '/workspace',
        uidBase: job.uidBase, seccompProfile: '', mounts, output: { stdoutFd: stdout.writeFd, stderrFd: stderr.writeFd },
        holdAtGate: true, capabilities: [],
      });
      stdout.closeWriteEnd();
      stderr.closeWriteEnd();
      if (job.network) {
        proxy.serveSocks(this.d.listenInNetns(launched.pid, SOCKS_PORT));
        for (const f of job.network.forwards) proxy.serveForward(this.d.listenInNetns(launched.pid, f.localPort), f.host, f.port);
      }
      await launched.release();
      const running = launched;
      if (job.onStderr) progress = setInterval(() => job.onStderr!(stderr.text()), PROGRESS_EVERY_MS);
      timer = setTimeout(() => {
        timedOut = true;
        running.signal('SIGKILL');
      }, job.timeoutMs);
      const exit = await launched.exited;
      await Promise.all([stdout.ended, stderr.ended]);
      this.d.log.info({ workspace: job.workspaceId, step: job.step, ms: Math.round(performance.now() - began), exitCode: exit.exitCode, bytesIn: proxy.counters.bytesIn }, 'source step done');
      return {
        exitCode: exit.exitCode ?? -1,
        signal: exit.signal ?? '',
        stdout: stdout.text(),
        stderr: stderr.text(),
        timedOut,
        bytesIn: proxy.counters.bytesIn,
        refused: proxy.counters.refused,
        unreachable: proxy.counters.unreachable,
      };
    } catch (err) {
      if (launched) await launched.kill();
      throw err;
    } finally {
      clearInterval(progress);
      clearTimeout(timer);
      proxy.close();
      stdout.close();
      stderr.close();
    }
  }

  /** A pipe for one output stream, read as it comes (a net.Socket: no threadpool thread parked in read(2)),
   *  keeping its last MAX_OUTPUT bytes. */
  private collect(): { writeFd: number; text(): string; ended: Promise<void>; closeWriteEnd(): void; close(): void } {
    const pipe = this.d.outputPipe(0);
    fs.closeSync(pipe.keepFd);
    let writeOpen = true;
    let kept = Buffer.alloc(0);
    const socket = new net.Socket({ fd: pipe.readFd, readable: true, writable: false });
    const ended = new Promise<void>((resolve) => {
      socket.on('data', (chunk: Buffer) => {
        kept = Buffer.concat([kept, chunk]);
        if (kept.length > MAX_OUTPUT) kept = kept.subarray(kept.length - MAX_OUTPUT);
      });
      socket.once('close', () => resolve());
      socket.on('error', () => undefined);
    });
    const closeWriteEnd = (): void => {
      if (writeOpen) fs.closeSync(pipe.writeFd);
      writeOpen = false;
    };
    return { writeFd: pipe.writeFd, text: () => kept.toString('utf8'), ended, closeWriteEnd, close: () => { closeWriteEnd(); socket.destroy(); } };
  }

  /** An empty root: mount points for /usr, /etc/ssl and /workspace, and the /proc, /dev, /sys spawn needs. */
  private toolRoot(dir: string): string {
    const root = path.join(dir, 'root');
    if (fs.existsSync(path.join(root, 'workspace'))) return root;
    fs.mkdirSync(dir, { recursive: true, mode: 0o711 });
    fs.mkdirSync(root, { mode: 0o755 });
    for (const d of ['proc', 'dev', 'sys', 'usr', 'etc', 'etc/ssl', 'home']) fs.mkdirSync(path.join(root, d), { mode: 0o755 });
    for (const [link, target] of USR_LINKS) fs.symlinkSync(target, path.join(root, link));
    if (this.d.caFile) fs.writeFileSync(path.join(root, CA_IN_SANDBOX), '', { mode: 0o644 });
    fs.mkdirSync(path.join(root, 'workspace'), { mode: 0o755 });
    return root;
  }
}

