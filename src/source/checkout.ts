// Bringing /workspace to a git revision: a fresh clone, or (from a prebuild snapshot) a fetch of only the
// new commits and a checkout. Each step is one git command in the fetch sandbox (git-sandbox.ts), hardened
// by configuration passed in the environment, never by a file: no system or global config, no hooks, no
// fsmonitor, no ssh, no file:// or ext::, no credential helper, and the token as an HTTP header scoped to
// the remote's origin (GIT_CONFIG_COUNT), so it is in no file, no remote URL and no reflog.
import { DomainError, type ErrorCode } from '../errors';
import { CA_IN_SANDBOX, GitSandbox, SOCKS_PORT, type GitResult } from './git-sandbox';
import { remoteEndpoint, type GitSourceSpec } from './spec';

export type SourceStep = 'prepare' | 'fetch' | 'checkout' | 'submodules';
export type SourcePhase = 'fetching' | 'checking-out' | 'submodules' | 'ready';

export interface SourceProgress {
  phase: SourcePhase;
  objectsReceived: number;
  objectsTotal: number;
  attempts: number;
}

export interface PopulateJob {
  workspaceId: string;
  uidBase: number;
  git: GitSourceSpec;
  /** The content holds a clone already (a prebuild snapshot): fetch what is new, then check out. */
  update: boolean;
  onProgress(p: SourceProgress): void;
}

export interface PopulateResult {
  commit: string;
  /** Objects the fetch received (git's own count): what a start from a prebuild saved shows here. */
  objectsFetched: number;
}

/** A step of content initialization failed: the step is named, the message holds no secret. */
export class SourceError extends DomainError {
  constructor(code: ErrorCode, readonly step: SourceStep, message: string) {
    super(code, `content: ${step}: ${message}`);
  }
}

export interface CheckoutOptions {
  attempts: number;          // tries of a fetch that failed for a transient reason
  retryBaseMs: number;       // backoff before the second, doubled after
  hasCaFile: boolean;
  stepTimeoutMs?: number;
  /** The workspace's directory (src/layout.ts). */
  workspaceDir(workspaceId: string): string;
}

const GIT_FORWARD_PORT = 9418;
const DEFAULT_STEP_TIMEOUT_MS = 60 * 60 * 1000;

export class GitCheckout {
  constructor(private readonly sandbox: GitSandbox, private readonly o: CheckoutOptions) {}

  async populate(job: PopulateJob): Promise<PopulateResult> {
    const g = job.git;
    const progress: SourceProgress = { phase: 'fetching', objectsReceived: 0, objectsTotal: 0, attempts: 0 };
    const report = (): void => job.onProgress({ ...progress });
    const env = gitEnvironment(g, this.o.hasCaFile, job.update);
    const prepare = job.update
      ? 'git remote set-url origin "$1" 2>/dev/null || git remote add origin "$1"'
      : 'git init -q --template= . && git remote add origin "$1"';
    // A snapshot that holds no clone (or a symlink for .git) is refused inside the sandbox, not read by the host.
    const script = job.update ? `test -d .git -a ! -L .git || { echo 'fatal: the snapshot holds no git checkout' >&2; exit 1; }; ${prepare}` : prepare;
    await this.step(job, 'prepare', ['/bin/sh', '-c', script, 'sh', g.url], env, false);

    report();
    const fetchArgs = ['git', 'fetch', '--progress', '--no-recurse-submodules', ...(g.depth ? [`--depth=${g.depth}`] : []), ...(g.filter ? [`--filter=${g.filter}`] : []), 'origin', g.commit || g.ref || 'HEAD'];
    let fetched: GitResult | undefined;
    for (let attempt = 1; ; attempt++) {
      progress.attempts = attempt;
      report();
      const r = await this.run(job, 'fetch', fetchArgs, env, true, (text) => {
        const p = parseProgress(text);
        if (p) Object.assign(progress, p);
        report();
      });
      if (r.exitCode === 0) {
        fetched = r;
        break;
      }
      const failure = classify(r, g.token);
      if (!failure.transient || attempt >= this.o.attempts) {
        const tries = attempt > 1 ? ` (after ${attempt} attempts)` : '';
        throw new SourceError(failure.code, 'fetch', `${failure.message}${tries}`);
      }
      await new Promise((resolve) => setTimeout(resolve, this.o.retryBaseMs * 2 ** (attempt - 1)));
    }
    const received = parseProgress(fetched.stderr);
    if (received) Object.assign(progress, received);

    progress.phase = 'checking-out';
    report();
    const checkout = g.commit
      ? 'git checkout -q -f --detach "$2"'
      : 'if [ -n "$1" ] && git show-ref -q --verify "refs/remotes/origin/$1"; then git checkout -q -f -B "$1" "refs/remotes/origin/$1"; else git checkout -q -f --detach FETCH_HEAD; fi';
    const out = await this.step(job, 'checkout', ['/bin/sh', '-c', `${checkout} && git rev-parse HEAD`, 'sh', g.ref, g.commit], env, false);
    const commit = out.stdout.trim().split('\n').pop() ?? '';
    if (!/^([0-9a-f]{40}|[0-9a-f]{64})$/.test(commit)) throw new SourceError('INTERNAL', 'checkout', 'git rev-parse HEAD printed no commit id');
    if (g.commit && commit !== g.commit) throw new SourceError('NOT_FOUND', 'checkout', `HEAD is ${commit}, not the commit asked for`);

    if (g.submodules) {
      progress.phase = 'submodules';
      report();
      await this.step(job, 'submodules', ['git', 'submodule', 'update', '--init', '--recursive', '--progress', ...(g.depth ? [`--depth=${g.depth}`] : [])], env, true);
    }
    progress.phase = 'ready';
    report();
    return { commit, objectsFetched: progress.objectsTotal };
  }

  /** One step that must succeed (no retry). */
  private async step(job: PopulateJob, step: SourceStep, argv: string[], env: Record<string, string>, network: boolean): Promise<GitResult> {
    const r = await this.run(job, step, argv, env, network);
    if (r.exitCode !== 0) {
      const failure = classify(r, job.git.token);
      throw new SourceError(failure.code, step, failure.message);
    }
    return r;
  }

  private run(job: PopulateJob, step: SourceStep, argv: string[], env: Record<string, string>, network: boolean, onStderr?: (text: string) => void): Promise<GitResult> {
    const forwards = network && job.git.url.startsWith('git:') ? [{ localPort: GIT_FORWARD_PORT, ...remoteEndpoint(job.git.url) }] : [];
    return this.sandbox.run({
      workspaceId: job.workspaceId, step, wsDir: this.o.workspaceDir(job.workspaceId), uidBase: job.uidBase, argv, env,
      ...(network ? { network: { forwards } } : {}),
      ...(onStderr ? { onStderr } : {}),
      timeoutMs: this.o.stepTimeoutMs ?? DEFAULT_STEP_TIMEOUT_MS,
    });
  }
}

/**
 * git's environment in the sandbox. Settings go through GIT_CONFIG_COUNT/KEY/VALUE (git-config(1),
 * "ENVIRONMENT"): they reach every git process the command starts (submodules too) and no file holds them.
 */
export function gitEnvironment(g: GitSourceSpec, hasCaFile: boolean, restored = false): Record<string, string> {
  const config: Array<[string, string]> = [
    ['core.hooksPath', '/dev/null'],          // no hook runs, whatever a template or snapshot put in .git/hooks
    ['core.fsmonitor', 'false'],              // CVE-2022-24765 class: a config-named program run by status/checkout
    ['core.sshCommand', '/bin/false'],        // ssh is not a transport the fetch offers
    ['credential.helper', ''],                // no helper: nothing asks, nothing stores a credential
    ['http.followRedirects', 'false'],        // the token's header is never sent where a redirect points
    ['http.proxy', `socks5h://127.0.0.1:${SOCKS_PORT}`],  // the name is resolved (and checked) by the daemon
    ['transfer.fsckObjects', 'true'],         // malformed objects (.gitmodules tricks, CVE-2018-17456 class) are refused
    ['submodule.recurse', 'false'],
    ['protocol.file.allow', 'never'],
    ['protocol.ext.allow', 'never'],
    ['gc.auto', '0'],
    ['maintenance.auto', 'false'],
    ['advice.detachedHead', 'false'],
  ];
  if (hasCaFile) config.push(['http.sslCAInfo', CA_IN_SANDBOX]);
  // A restored snapshot's files have new inodes and ctimes: with the full stat check, checkout would
  // read and hash every file again to learn that none changed (git-config(1), core.checkStat).
  if (restored) config.push(['core.checkStat', 'minimal'], ['core.trustctime', 'false']);
  const u = new URL(g.url);
  if (u.protocol === 'git:') {
    // git:// knows no proxy: the remote's host is rewritten to the daemon's forwarder on the sandbox loopback.
    const { host, port } = remoteEndpoint(g.url);
    const bracketed = host.includes(':') ? `[${host}]` : host;
    config.push([`url.git://127.0.0.1:${GIT_FORWARD_PORT}/.insteadOf`, `git://${bracketed}:${port}/`]);
    if (port === 9418) config.push([`url.git://127.0.0.1:${GIT_FORWARD_PORT}/.insteadOf`, `git://${bracketed}/`]);
  }
  if (g.token) config.push([`http.${u.origin}/.extraHeader`, `Authorization: Basic ${basicCredential(g.token)}`]);
  const env: Record<string, string> = {
    PATH: '/usr/bin:/bin',
    HOME: '/home',                            // empty and read-only: no ~/.gitconfig, no credential store
    LANG: 'C',
    LC_ALL: 'C',
    GIT_CONFIG_NOSYSTEM: '1',
    GIT_CONFIG_GLOBAL: '/dev/null',
    GIT_TERMINAL_PROMPT: '0',
    GIT_ASKPASS: '/bin/false',
    SSH_ASKPASS: '/bin/false',
    GIT_ALLOW_PROTOCOL: 'https:http:git',     // git(1): overrides protocol.allow; file, ext and ssh are absent
    GIT_PROTOCOL_FROM_USER: '0',
    GIT_AUTHOR_NAME: 'tetrix', GIT_AUTHOR_EMAIL: 'tetrix@localhost',
    GIT_COMMITTER_NAME: 'tetrix', GIT_COMMITTER_EMAIL: 'tetrix@localhost',
    GIT_CONFIG_COUNT: String(config.length),
  };
  config.forEach(([key, value], i) => {
    env[`GIT_CONFIG_KEY_${i}`] = key;
    env[`GIT_CONFIG_VALUE_${i}`] = value;
  });
  return env;
}

/** GitHub, GitLab and Gitea take a token as the password of HTTP Basic with any user name. */
function basicCredential(token: string): string {
  return Buffer.from(`x-access-token:${token}`).toString('base64');
}

const PROGRESS = /(Receiving objects|Unpacking objects):\s+\d+% \((\d+)\/(\d+)\)/g;

/** The last object counts git printed (it rewrites its progress line with \r). */
export function parseProgress(stderr: string): { objectsReceived: number; objectsTotal: number } | undefined {
  let last: RegExpMatchArray | undefined;
  for (const m of stderr.matchAll(PROGRESS)) last = m;
  return last ? { objectsReceived: Number(last[2]), objectsTotal: Number(last[3]) } : undefined;
}

interface Failure {
  code: ErrorCode;
  transient: boolean;
  message: string;
}

const NOT_FOUND = /couldn't find remote ref|not our ref|unknown revision|remote branch .* not found|does not appear to be a git repository|repository '.*' not found|HTTP 404|not a valid object name|did not match any|reference is not a tree/i;
const DENIED = /Authentication failed|HTTP 40[13]|could not read Username|could not read Password|terminal prompts disabled|access denied/i;
const FULL = /No space left on device|Out of diskspace|Disk quota exceeded|File too large/i;
const TRANSIENT = /Connection refused|Connection reset|Could not resolve|early EOF|unexpected disconnect|hung up unexpectedly|timed out|RPC failed|HTTP 50[0234]|SSL_read|SSL_ERROR|Failed to connect|Empty reply|Recv failure|Send failure|unable to access|invalid index-pack output|protocol error: bad pack header|Can't connect to SOCKS|Connection closed/i;

/** What went wrong, from git's stderr and the proxy's counts; the message carries no token. */
export function classify(r: GitResult, token: string): Failure {
  const text = scrub(r.stderr, token);
  const message = summary(text) || (r.timedOut ? 'timed out' : r.signal ? `git ended by ${r.signal}` : `git exited ${r.exitCode}`);
  if (r.timedOut) return { code: 'UNAVAILABLE', transient: false, message: `timed out: ${message}` };
  if (r.refused > 0) return { code: 'PERMISSION_DENIED', transient: false, message: `the fetch may not reach that address (docs/source.md): ${message}` };
  if (r.unreachable && r.exitCode !== 0 && !DENIED.test(text) && !NOT_FOUND.test(text)) return { code: 'UNAVAILABLE', transient: true, message: `the remote did not answer (${r.unreachable}): ${message}` };
  if (FULL.test(text)) return { code: 'RESOURCE_EXHAUSTED', transient: false, message };
  if (DENIED.test(text)) return { code: 'PERMISSION_DENIED', transient: false, message: `the remote refused the credentials: ${message}` };
  if (NOT_FOUND.test(text)) return { code: 'NOT_FOUND', transient: false, message };
  if (TRANSIENT.test(text) || r.signal) return { code: 'UNAVAILABLE', transient: true, message };
  return { code: 'FAILED_PRECONDITION', transient: false, message };
}

/** The lines that say what failed (fatal:, error:), without progress noise, at most 400 characters. */
function summary(stderr: string): string {
  const lines = stderr.split(/[\r\n]+/).map((l) => l.trim()).filter(Boolean);
  const telling = lines.filter((l) => /^(fatal|error|warning: redirecting|remote: (error|fatal))/i.test(l));
  const chosen = (telling.length > 0 ? telling : lines).slice(-3).join('; ');
  return chosen.length > 400 ? `${chosen.slice(0, 397)}...` : chosen;
}

/** Removes the token (and its Basic form) from text that may reach a client or a log. */
export function scrub(text: string, token: string): string {
  if (!token) return text;
  let out = text.split(token).join('***');
  const basic = basicCredential(token);
  out = out.split(basic).join('***');
  return out;
}
