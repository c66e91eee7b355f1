// File plumbing of the log store: publishing a log's first bytes, whole writes, and reading a pipe fd.
import { randomBytes } from 'node:crypto';
import { closeSync, constants as fsConstants, createReadStream, linkSync, openSync, promises as fs, unlinkSync, writeSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { Readable } from 'node:stream';


/**
 * Writes the complete first bytes under a temp name, then link()s into place: O_EXCL, never a partial header.
 * Synchronous: a few hundred bytes on the local state dir, on every workspace start, where five thread-pool
 * round trips (open, write, close, link, unlink) cost more than the calls.
 */
export function publishFile(file: string, bytes: Buffer): void {
  const tmp = path.join(path.dirname(file), `.${path.basename(file)}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`);
  const fd = openSync(tmp, fsConstants.O_WRONLY | fsConstants.O_CREAT | fsConstants.O_EXCL | fsConstants.O_NOFOLLOW, 0o600);
  try {
    for (let off = 0; off < bytes.length;) off += writeSync(fd, bytes, off);
  } finally {
    closeSync(fd);
  }
  try {
    linkSync(tmp, file);
  } finally {
    unlinkSync(tmp);
  }
}

export async function writevAll(handle: fs.FileHandle, bufs: Buffer[], total: number): Promise<void> {
  const { bytesWritten } = await handle.writev(bufs);
  if (bytesWritten < total) await writeAll(handle, Buffer.concat(bufs).subarray(bytesWritten));
}

export async function writeAll(handle: fs.FileHandle, buf: Buffer): Promise<void> {
  for (let off = 0; off < buf.length;) {
    const { bytesWritten } = await handle.write(buf, off, buf.length - off, null);
    off += bytesWritten;
  }
}

/**
 * A pipe fd becomes a net.Socket: libuv polls it with epoll, so an idle pipe holds no threadpool thread
 * (fs.createReadStream on a pipe would park a threadpool thread in read(2)). Regular files fall back to fs.
 */
export function readableFromFd(fd: number): Readable {
  try {
    return new net.Socket({ fd, readable: true, writable: false });
  } catch {
    return createReadStream('', { fd, highWaterMark: 64 * 1024, autoClose: true });
  }
}
