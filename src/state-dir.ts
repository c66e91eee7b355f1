// The state directory belongs to one tetrixd at a time, and holds the node's small secrets.
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { DomainError } from './errors';

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * A pid file taken with O_EXCL. A lock left by a dead daemon (kill -9) is taken over; one held by a
 * live process is refused, so two daemons never drive the same workspaces.
 */
export function acquireStateLock(stateDir: string): () => void {
  const file = path.join(stateDir, 'tetrixd.pid');
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      const fd = fs.openSync(file, 'wx', 0o600);
      fs.writeSync(fd, `${process.pid}\n`);
      fs.closeSync(fd);
      return () => fs.rmSync(file, { force: true });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      const holder = Number(fs.readFileSync(file, 'utf8').trim());
      if (Number.isInteger(holder) && holder > 0 && holder !== process.pid && isAlive(holder)) {
        throw new DomainError('FAILED_PRECONDITION', `state directory ${stateDir} is held by another tetrixd (pid ${holder})`);
      }
      fs.rmSync(file, { force: true });
    }
  }
  throw new DomainError('FAILED_PRECONDITION', `could not lock state directory ${stateDir}`);
}

/** 32 random bytes kept 0600 in the state directory, created on first use. */
export function loadOrCreateSecret(file: string): Buffer {
  try {
    const st = fs.statSync(file);
    if ((st.mode & 0o077) !== 0) throw new DomainError('FAILED_PRECONDITION', `${file} is readable by group or others; chmod 600 it`);
    return fs.readFileSync(file);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  const secret = crypto.randomBytes(32);
  const tmp = `${file}.tmp-${process.pid}`;
  fs.writeFileSync(tmp, secret, { mode: 0o600 });
  fs.renameSync(tmp, file);
  return secret;
}
