// Which unix socket tetrixctl talks to: --socket, else $TETRIX_SOCKET_PATH (the daemon's own setting of
// the same name, so one variable points both at one socket), else the daemon's default.
// TETRIX_SOCKET, the name tetrixctl alone read before, is still accepted in this release, with a warning.
import { defaults } from '../config/config';

export const SOCKET_ENV = 'TETRIX_SOCKET_PATH';
export const OLD_SOCKET_ENV = 'TETRIX_SOCKET';

export function socketPathOf(flag: string | undefined, env: NodeJS.ProcessEnv, warn: (line: string) => void): string {
  const old = env[OLD_SOCKET_ENV];
  if (old !== undefined) {
    warn(env[SOCKET_ENV] !== undefined
      ? `tetrixctl: ${OLD_SOCKET_ENV} is ignored: ${SOCKET_ENV} is set (${OLD_SOCKET_ENV} goes away in the next release)\n`
      : `tetrixctl: ${OLD_SOCKET_ENV} is deprecated and goes away in the next release; set ${SOCKET_ENV}, as tetrixd reads it\n`);
  }
  return flag ?? env[SOCKET_ENV] ?? old ?? defaults().socketPath;
}
