// Shared by the prebuild tests that drive a real daemon (not a test file itself).
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import type { LogChunk__Output } from '../../src/generated/tetrix/agent/v1/LogChunk';
import type { StartWorkspaceRequest } from '../../src/generated/tetrix/agent/v1/StartWorkspaceRequest';
import type { Daemon } from '../helpers/daemon';

export interface TaskDef {
  name: string;
  script: string;
  env?: Record<string, string>;
}

export const marker = (what: string): string => `${what}${crypto.randomBytes(10).toString('hex').toUpperCase()}`;

export const prebuildRequest = (id: string, tasks: TaskDef[], env: Record<string, string> = {}): StartWorkspaceRequest => ({
  id,
  ownerId: 'alice',
  teamId: 'team-a',
  kind: 'WORKSPACE_KIND_PREBUILD',
  image: 'builtin:busybox',
  source: { repositoryUrl: 'https://git.example.test/acme/app.git', revision: '0123456789abcdef' },
  tasks: tasks.map((t) => ({ name: t.name, command: ['/bin/sh', '-c', t.script], workingDir: '/workspace', env: t.env ?? {} })),
  env,
});

/** Every chunk of a workspace's log, as the operator (the unix socket) reads it. */
export function logChunks(d: Daemon, id: string): Promise<LogChunk__Output[]> {
  return new Promise((resolve, reject) => {
    const chunks: LogChunk__Output[] = [];
    const s = d.clients.workspaces.StreamLogs({ id, follow: false });
    s.on('data', (c: LogChunk__Output) => chunks.push(c));
    s.on('error', reject);
    s.on('end', () => resolve(chunks));
  });
}

export const logText = (chunks: LogChunk__Output[]): Buffer => Buffer.concat(chunks.map((c) => c.data));

export const isFinalState = (state: string): boolean =>
  ['WORKSPACE_STATE_SUCCEEDED', 'WORKSPACE_STATE_FAILED', 'WORKSPACE_STATE_STOPPED'].includes(state);

/** Every regular file below dir whose bytes contain one of the needles, as "file: needle". */
export function filesContaining(dir: string, needles: string[]): string[] {
  const found: string[] = [];
  const walk = (d: string): void => {
    for (const entry of fs.readdirSync(d, { withFileTypes: true })) {
      const p = path.join(d, entry.name);
      if (entry.isDirectory()) walk(p);
      else if (entry.isFile()) {
        const bytes = fs.readFileSync(p);
        for (const n of needles) if (bytes.includes(Buffer.from(n))) found.push(`${path.relative(dir, p)}: ${n}`);
      }
    }
  };
  walk(dir);
  return found;
}
