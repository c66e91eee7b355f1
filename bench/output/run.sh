#!/usr/bin/env bash
# Builds and runs the output benchmark (bench/output/run.ts) as root against a daemon of its own:
# what draining a workspace's stdout costs the daemon, against what the workload itself spends.
#   BENCH_SECONDS=10 bench/output/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
npx tsc -p tsconfig.json >/dev/null || true   # emit even if an unrelated file has a type error
test -f dist/bench/output/run.js && test -f dist/src/main.js
exec node dist/bench/output/run.js "$@"
