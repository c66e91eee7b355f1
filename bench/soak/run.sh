#!/usr/bin/env bash
# Builds and runs the soak (bench/soak/run.ts) as root against a daemon of its own.
#   bench/soak/run.sh [--cycles 1000] [--parallel 4] [--keep]
set -euo pipefail
cd "$(dirname "$0")/../.."
npx tsc -p tsconfig.json >/dev/null || true   # emit even if an unrelated file has a type error
test -f dist/bench/soak/run.js && test -f dist/src/main.js
exec node dist/bench/soak/run.js "$@"
