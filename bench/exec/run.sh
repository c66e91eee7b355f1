#!/usr/bin/env bash
# Builds and runs the exec benchmark (bench/exec/run.ts): ExecWorkspace of /bin/true against `crun exec`
# into a running crun container with the same seccomp profile, keystroke echo through a pty session, and
# the daemon's memory per terminal session. Needs crun; run as root.
set -euo pipefail
cd "$(dirname "$0")/../.."
npx tsc -p tsconfig.json >/dev/null || true   # emit even if an unrelated file has a type error
test -f dist/bench/exec/run.js
test -f dist/src/main.js
exec node dist/bench/exec/run.js
