#!/usr/bin/env bash
# Builds and runs the density benchmark (bench/density/run.ts) as root against a daemon of its own.
#   bench/density/run.sh [--count 200] [--keep]
set -euo pipefail
cd "$(dirname "$0")/../.."
npx tsc -p tsconfig.json >/dev/null || true   # emit even if an unrelated file has a type error
test -f dist/bench/density/run.js && test -f dist/src/main.js
exec node dist/bench/density/run.js "$@"
