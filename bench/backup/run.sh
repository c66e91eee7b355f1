#!/usr/bin/env bash
# Builds and runs the backup benchmark (bench/backup/run.ts). Needs tar, zstd, openssl (deploy/packages.txt).
# TETRIX_BENCH_BYTES=268435456 bench/backup/run.sh   for a 256 MiB tree instead of 1 GiB.
set -euo pipefail
cd "$(dirname "$0")/../.."
npx tsc -p tsconfig.json >/dev/null || true   # emit even if an unrelated file has a type error
test -f dist/bench/backup/run.js
exec node dist/bench/backup/run.js
