// native/channel.c: socket pairs, pipes and fd passing (the prebuild task channel).
import type { NativePart } from './part';

export interface ChannelNative {
  /** A connected pair of AF_UNIX stream sockets, both close-on-exec. */
  socketPair(): [number, number];
  /** pipe2(O_CLOEXEC): [read end, write end]. */
  pipe(): [number, number];
  /** All of data on a stream socket, fds attached to its first byte (SCM_RIGHTS); the fds stay the caller's.
   *  NativeError `sendmsg` (EPIPE: the peer is gone; ETIMEDOUT: it stopped reading). */
  sendWithFds(socketFd: number, data: Buffer, fds: number[]): void;
}

export const channelPart: NativePart<ChannelNative> = {
  file: 'native/channel.c',
  functions: { socketPair: true, pipe: true, sendWithFds: true },
};
