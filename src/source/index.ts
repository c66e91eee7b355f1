// The source room (issue 17): git content for /workspace, fetched in a sandbox of its own through the
// daemon's checked proxy. docs/source.md.
import type { Logger } from 'pino';
import type { Config } from '../config/config';
import { listOf } from '../config/config';
import { workspaceDir } from '../layout';
import type { LaunchSpec, Launched } from '../sandbox/launch';
import { GitCheckout, type PopulateJob, type PopulateResult } from './checkout';
import { EgressPolicy } from './fetch-proxy';
import { GitSandbox } from './git-sandbox';

export { SourceError } from './checkout';

export interface SourceDeps {
  launch(spec: LaunchSpec): Promise<Launched>;
  listenInNetns(pid: number, port: number): number;
  outputPipe(capacity: number): { readFd: number; writeFd: number; keepFd: number };
}

export function createSource(config: Config, log: Logger, deps: SourceDeps): { populate(job: PopulateJob): Promise<PopulateResult> } {
  const policy = new EgressPolicy({
    deniedCidrs: [config.networkSubnet, config.networkSubnet6, ...listOf(config.networkDenied)].filter(Boolean),
    allowed: listOf(config.sourceAllowedDestinations),
  });
  const sandbox = new GitSandbox({ ...deps, policy, log, caFile: config.sourceCaFile });
  const checkout = new GitCheckout(sandbox, { attempts: config.sourceFetchAttempts, retryBaseMs: config.sourceRetryBaseMs, hasCaFile: config.sourceCaFile !== '', workspaceDir: (id) => workspaceDir(config.stateDir, id) });
  return { populate: (job) => checkout.populate(job) };
}
