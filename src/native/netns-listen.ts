// native/netns-listen.c: a listening socket on the loopback of another process's network namespace.
import type { NativePart } from './part';

export interface NetnsListenNative {
  /** A non-blocking, close-on-exec TCP socket listening on 127.0.0.1:port in /proc/<pid>/ns/net, owned by
   *  the caller. Throws NativeError (`netns listen: setns: EPERM`, `netns listen: bind 127.0.0.1: EADDRINUSE`). */
  listenInNetns(pid: number, port: number): number;
}

export const netnsListenPart: NativePart<NetnsListenNative> = {
  file: 'native/netns-listen.c',
  functions: { listenInNetns: true },
};
