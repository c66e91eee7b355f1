#!/usr/bin/env bash
# Builds and runs the start benchmark (bench/start/run.ts): Tetrix's StartWorkspace (NONE, ISOLATED)
# against `crun run` with the same rootfs, namespaces and seccomp profile. Needs crun; run as root.
# BENCH_RUNS=100 bench/start/run.sh   for 100 runs per candidate instead of 50.
set -euo pipefail
cd "$(dirname "$0")/../.."
npx tsc -p tsconfig.json >/dev/null || true   # emit even if an unrelated file has a type error
test -f dist/bench/start/run.js
test -f dist/src/main.js
exec node dist/bench/start/run.js
