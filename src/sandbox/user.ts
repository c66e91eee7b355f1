// Who the workload runs as: NAME[:GROUP] or UID[:GID] (the request's user, or an OCI image's User), resolved
// as runc does through the image's /etc/passwd and /etc/group, read from the prepared rootfs before anything
// has run in it. Those files are read without following a symlink anywhere: a restored upper layer or a
// hostile image could make /etc or /etc/passwd a link to a host path. Ids must lie inside the workspace's
// range (below idCount), where they map to the workspace's own host ids.
import fs from 'node:fs';
import path from 'node:path';
import { DomainError, invalidArgument } from '../errors';

export interface ResolvedUser {
  uid: number;
  gid: number;
  groups: number[]; // supplementary: the /etc/group entries naming the user, inside the range (at most 32)
  home?: string;
}

const MAX_GROUPS = 32;

const MAX_DB_BYTES = 1 << 20;
const NUMERIC = /^\d{1,10}$/;

export async function resolveUser(rootfs: string, user: string, idCount: number): Promise<ResolvedUser> {
  const [name, group] = user.split(':', 2) as [string, string | undefined];
  const passwd = NUMERIC.test(name) && (group === undefined || NUMERIC.test(group)) ? undefined : readDb(rootfs, 'passwd');
  let uid: number;
  let gid: number;
  let home: string | undefined;
  let userName: string | undefined;
  if (NUMERIC.test(name)) {
    uid = Number(name);
    const entry = (passwd ?? tryReadDb(rootfs, 'passwd')).find((e) => e[2] === name);
    gid = entry ? Number(entry[3]) : 0;
    home = entry?.[5];
    userName = entry?.[0];
  } else {
    const entry = passwd!.find((e) => e[0] === name);
    if (!entry) throw invalidArgument('user', `"${name}" is not in the image's /etc/passwd`);
    uid = Number(entry[2]);
    gid = Number(entry[3]);
    home = entry[5];
    userName = name;
  }
  if (group !== undefined) {
    if (NUMERIC.test(group)) gid = Number(group);
    else {
      const entry = readDb(rootfs, 'group').find((e) => e[0] === group);
      if (!entry) throw invalidArgument('user', `group "${group}" is not in the image's /etc/group`);
      gid = Number(entry[2]);
    }
  }
  for (const [what, id] of [['uid', uid], ['gid', gid]] as const) {
    if (!Number.isSafeInteger(id) || id < 0 || id >= idCount) throw invalidArgument('user', `${what} ${id} is outside the workspace's range 0-${idCount - 1}`);
  }
  // As runc's GetAdditionalGroups: every group that lists the user by name (ids outside the range dropped).
  const groups = userName === undefined ? [] : tryReadDb(rootfs, 'group')
    .filter((e) => (e[3] ?? '').split(',').includes(userName!))
    .map((e) => Number(e[2]))
    .filter((g, i, all) => Number.isSafeInteger(g) && g >= 0 && g < idCount && g !== gid && all.indexOf(g) === i)
    .slice(0, MAX_GROUPS);
  return { uid, gid, groups, ...(home && home.startsWith('/') ? { home } : {}) };
}

function tryReadDb(rootfs: string, file: 'passwd' | 'group'): string[][] {
  try {
    return readDb(rootfs, file);
  } catch {
    return [];
  }
}

/** /etc/<file> split into colon fields; /etc must be a directory and the file a regular one, neither a link. */
function readDb(rootfs: string, file: 'passwd' | 'group'): string[][] {
  const etc = path.join(rootfs, 'etc');
  const refuse = (why: string) => new DomainError('FAILED_PRECONDITION', `user: the image's /etc/${file} ${why}`);
  const dir = fs.lstatSync(etc, { throwIfNoEntry: false });
  if (!dir) throw refuse('does not exist');
  if (!dir.isDirectory()) throw refuse('is not readable: /etc is not a directory (a symlink?)');
  let fd: number;
  try {
    // O_NONBLOCK: a FIFO there must not hang the start; O_NOFOLLOW: nor may a symlink lead out.
    fd = fs.openSync(path.join(etc, file), fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW | fs.constants.O_NONBLOCK);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw refuse(code === 'ELOOP' ? 'is a symlink' : code === 'ENOENT' ? 'does not exist' : `cannot be opened (${code})`);
  }
  try {
    const st = fs.fstatSync(fd);
    if (!st.isFile()) throw refuse('is not a regular file');
    if (st.size > MAX_DB_BYTES) throw refuse(`is larger than ${MAX_DB_BYTES} bytes`);
    const text = fs.readFileSync(fd, 'utf8');
    return text.split('\n').filter((l) => l !== '' && !l.startsWith('#')).map((l) => l.split(':'));
  } finally {
    fs.closeSync(fd);
  }
}
