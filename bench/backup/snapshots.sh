#!/usr/bin/env bash
# Snapshot backups against restic (bench/backup/snapshots.ts). Needs restic (deploy/packages.txt).
# TETRIX_BENCH_BYTES=268435456 bench/backup/snapshots.sh   for a 256 MiB tree instead of 1 GiB.
set -euo pipefail
cd "$(dirname "$0")/../.."
npx tsc -p tsconfig.json >/dev/null || true
test -f dist/bench/backup/snapshots.js
exec node dist/bench/backup/snapshots.js
