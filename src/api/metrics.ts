// Prometheus metrics: what the lifecycle did (latencies, failures, OOM kills), what the node holds
// (workspaces by state), and the daemon process itself. Served over plain HTTP on a host:port the
// operator chooses; labels carry states, reasons and kinds only, never workspace ids or owners, so
// the series count stays bounded however many workspaces come and go.
import type { EventEmitter } from 'node:events';
import http from 'node:http';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { State, WorkspaceRecord } from '../workspace/types';

/** What the metrics read from the workspace service: its events and its current records. */
export interface WorkspaceSource {
  readonly events: EventEmitter;
  list(): WorkspaceRecord[];
}

const MISNAMED_DEFAULT_GAUGES = ['nodejs_active_handles_total', 'nodejs_active_requests_total', 'nodejs_active_resources_total'];

const STATES: readonly State[] = ['CREATING', 'RUNNING', 'STOPPING', 'STOPPED', 'FAILED', 'SUCCEEDED'];

/** Workspaces that ended without being asked to: every FAILED, and stops the workload did not choose. */
const FAILURE_REASONS_OF_STOPPED = new Set(['OOM_KILLED', 'LOST']);

export class DaemonMetrics {
  readonly registry = new Registry();
  private readonly startSeconds: Histogram;
  private readonly stopSeconds: Histogram;
  private readonly backupSeconds: Histogram;
  private readonly backupBytes: Counter;
  private readonly failures: Counter<'reason'>;
  private readonly oomKills: Counter;
  private readonly cleanups: Counter<'kind'>;
  private readonly byState: Gauge<'state'>;
  private readonly diskUsed: Gauge;
  private readonly diskLimit: Gauge;
  private readonly disksFull: Gauge;
  /** The last state seen per workspace, to act on transitions only (a record is announced more than once). */
  private readonly lastState = new Map<string, State>();
  /** When a stop began (STOPPING seen); the record itself keeps no such time. */
  private readonly stoppingSince = new Map<string, number>();
  private readonly onChanged = (record: WorkspaceRecord): void => this.observe(record);
  private readonly onRemoved = (id: string): void => {
    this.lastState.delete(id);
    this.stoppingSince.delete(id);
  };

  private source?: WorkspaceSource;

  constructor() {
    const registers = [this.registry];
    collectDefaultMetrics({ register: this.registry });
    // prom-client names three gauges *_total, which `promtool check metrics` refuses (only counters may
    // end in _total); their per-type twins (nodejs_active_handles, ...) carry the same counts.
    for (const name of MISNAMED_DEFAULT_GAUGES) this.registry.removeSingleMetric(name);
    this.startSeconds = new Histogram({
      name: 'tetrix_workspace_start_seconds',
      help: 'Time from StartWorkspace accepted to the workload running',
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
      registers,
    });
    this.stopSeconds = new Histogram({
      name: 'tetrix_workspace_stop_seconds',
      help: 'Time from a stop request to the workspace recorded STOPPED (its exit and its whole log; the release of mounts and cgroups follows)',
      buckets: [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60],
      registers,
    });
    this.backupSeconds = new Histogram({
      name: 'tetrix_backup_seconds',
      help: 'Duration of workspace content backups',
      buckets: [0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800],
      registers,
    });
    this.backupBytes = new Counter({ name: 'tetrix_backup_bytes_total', help: 'Bytes written to backup storage', registers });
    this.failures = new Counter({
      name: 'tetrix_workspace_failures_total',
      help: 'Workspaces that failed or ended without a request (reason: SPAWN_FAILED, TASK_FAILED, OOM_KILLED, LOST, ...)',
      labelNames: ['reason'],
      registers,
    });
    this.oomKills = new Counter({ name: 'tetrix_workspace_oom_kills_total', help: "Workspaces ended by the kernel's OOM killer", registers });
    this.cleanups = new Counter({
      name: 'tetrix_leaked_resource_cleanups_total',
      help: 'Resources found without an owner (after a crash) and removed, by kind',
      labelNames: ['kind'],
      registers,
    });
    this.byState = new Gauge({
      name: 'tetrix_workspaces',
      help: 'Workspaces this node holds, by state',
      labelNames: ['state'],
      registers,
      collect: () => this.countByState(),
    });
    // Sums and a count, not one series per workspace (ids stay out of labels): GetWorkspace has each one's.
    this.diskUsed = new Gauge({
      name: 'tetrix_workspace_disk_used_bytes',
      help: 'Bytes in use on all workspace volumes (src/storage)',
      registers,
      collect: () => this.collectDiskUsage(),
    });
    this.diskLimit = new Gauge({
      name: 'tetrix_workspace_disk_limit_bytes',
      help: 'What all workspace volumes hold for files, in bytes',
      registers,
    });
    this.disksFull = new Gauge({
      name: 'tetrix_workspace_disks_full',
      help: 'Workspace volumes at 95% or more of their bytes or inodes',
      registers,
    });
  }

  private collectDiskUsage(): void {
    let used = 0;
    let limit = 0;
    let full = 0;
    for (const { status } of this.source?.list() ?? []) {
      const disk = status.disk;
      if (!disk) continue;
      used += disk.usedBytes;
      limit += disk.limitBytes;
      if (disk.usedBytes >= 0.95 * disk.limitBytes || disk.usedInodes >= 0.95 * disk.limitInodes) full++;
    }
    this.diskUsed.set(used);
    this.diskLimit.set(limit);
    this.disksFull.set(full);
  }


  /** Follows the lifecycle of source from now on (one source; created before it, so the sandbox can count cleanups). */
  watch(source: WorkspaceSource): void {
    if (this.source) throw new Error('metrics: already watching a workspace service');
    this.source = source;
    // Records that exist already (adopted after a restart) are transitions we did not see begin.
    for (const record of source.list()) this.lastState.set(record.spec.id, record.status.state);
    source.events.on('changed', this.onChanged);
    source.events.on('removed', this.onRemoved);
  }

  observeBackup(seconds: number, bytes: number): void {
    this.backupSeconds.observe(seconds);
    this.backupBytes.inc(bytes);
  }

  /** kind names the resource: cgroup, mount, workspace_dir, netns, veth, nft_element, id_range, ... */
  /** tetrix_image_store_bytes: file bytes in the OCI layer store (src/images), read at each scrape. */
  imageStoreBytes(read: () => Promise<number>): void {
    new Gauge({
      name: 'tetrix_image_store_bytes', help: 'Bytes of file data in the unpacked OCI layer store', registers: [this.registry],
      async collect() {
        this.set(await read());
      },
    });
  }

  countCleanup(kind: string, count = 1): void {
    this.cleanups.inc({ kind }, count);
  }

  metrics(): Promise<string> {
    return this.registry.metrics();
  }

  get contentType(): string {
    return this.registry.contentType;
  }

  /** Stops listening to the service (the registry stays readable). */
  close(): void {
    this.source?.events.off('changed', this.onChanged);
    this.source?.events.off('removed', this.onRemoved);
  }

  private countByState(): void {
    const counts = new Map<State, number>(STATES.map((s) => [s, 0]));
    for (const record of this.source?.list() ?? []) counts.set(record.status.state, (counts.get(record.status.state) ?? 0) + 1);
    for (const [state, n] of counts) this.byState.set({ state }, n);
  }

  private observe(record: WorkspaceRecord): void {
    const id = record.spec.id;
    const { status } = record;
    const previous = this.lastState.get(id);
    if (previous === status.state) return;
    this.lastState.set(id, status.state);
    switch (status.state) {
      case 'RUNNING':
        if (previous === 'CREATING' && status.startedMs >= status.createdMs && status.createdMs > 0) {
          this.startSeconds.observe((status.startedMs - status.createdMs) / 1000);
        }
        break;
      case 'STOPPING':
        this.stoppingSince.set(id, Date.now());
        break;
      case 'STOPPED':
      case 'FAILED':
      case 'SUCCEEDED':
        this.observeEnd(id, record);
        break;
      default:
        break;
    }
  }

  private observeEnd(id: string, { status }: WorkspaceRecord): void {
    const since = this.stoppingSince.get(id);
    this.stoppingSince.delete(id);
    if (since !== undefined) this.stopSeconds.observe(Math.max(0, (status.finishedMs || Date.now()) - since) / 1000);
    if (status.reason === 'OOM_KILLED') this.oomKills.inc();
    if (status.state === 'FAILED' || FAILURE_REASONS_OF_STOPPED.has(status.reason)) this.failures.inc({ reason: status.reason });
  }
}

export interface MetricsServer {
  readonly host: string;
  readonly port: number;       // the bound port (useful with port 0)
  close(): Promise<void>;
}

/** Splits "host:port" ("[::1]:9464" for IPv6). */
export function parseListen(listen: string): { host: string; port: number } {
  const at = listen.lastIndexOf(':');
  const host = listen.slice(0, at).replace(/^\[(.*)\]$/, '$1');
  const port = Number(listen.slice(at + 1));
  if (at <= 0 || host === '' || !Number.isInteger(port) || port < 0 || port > 65535) {
    throw new Error(`metrics: expected host:port, got "${listen}"`);
  }
  return { host, port };
}

/** Serves GET /metrics on listen (host:port) and nothing else. */
export async function startMetricsServer(metrics: DaemonMetrics, listen: string): Promise<MetricsServer> {
  const { host, port } = parseListen(listen);
  const server = http.createServer((req, res) => {
    const url = (req.url ?? '').split('?')[0];
    if (url !== '/metrics') {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('not found\n');
      return;
    }
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { allow: 'GET, HEAD', 'content-type': 'text/plain' }).end('method not allowed\n');
      return;
    }
    metrics.metrics().then(
      (body) => res.writeHead(200, { 'content-type': metrics.contentType }).end(req.method === 'HEAD' ? undefined : body),
      () => res.writeHead(500, { 'content-type': 'text/plain' }).end('metrics unavailable\n'),
    );
  });
  // A scraper that stalls must not hold sockets forever.
  server.requestTimeout = 10_000;
  server.headersTimeout = 5_000;
  server.keepAliveTimeout = 5_000;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const bound = server.address();
  return {
    host,
    port: typeof bound === 'object' && bound ? bound.port : port,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
