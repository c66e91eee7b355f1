// native/notify.c: systemd's notify socket and the peer of a unix socket.
import type { NativePart } from './part';

export interface NotifyNative {
  /** sd_notify(3): false when NOTIFY_SOCKET is unset. */
  sdNotify(state: string): boolean;
  /** The pid serving the unix stream socket at path (SO_PEERCRED), 0 when nothing answers (ENOENT, ECONNREFUSED). */
  unixSocketPeerPid(path: string): number;
}

export const notifyPart: NativePart<NotifyNative> = {
  file: 'native/notify.c',
  functions: { sdNotify: true, unixSocketPeerPid: true },
};
