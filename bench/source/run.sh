#!/usr/bin/env bash
# Builds and runs the source benchmark (bench/source/run.ts): a fresh git checkout start against `git clone`,
# and a start from a prebuild snapshot + 5 new commits against a fresh checkout. Needs git (deploy/packages.txt).
# TETRIX_BENCH_FILES=5000 bench/source/run.sh   for a smaller repository than the default 30,000 files.
set -euo pipefail
cd "$(dirname "$0")/../.."
npx tsc -p tsconfig.json >/dev/null || true   # emit even if an unrelated file has a type error
test -f dist/bench/source/run.js
exec node dist/bench/source/run.js
