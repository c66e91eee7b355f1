#!/usr/bin/env bash
# Builds and runs the image benchmark (bench/images/run.ts): cold pull against skopeo+umoci, cached-image
# start against builtin:busybox, downloads per layer for 4 concurrent cold starts. Root; needs
# docker-registry, umoci, skopeo, openssl. BENCH_RUNS=40 bench/images/run.sh for 40 starts per candidate.
set -euo pipefail
cd "$(dirname "$0")/../.."
npx tsc -p tsconfig.json >/dev/null || true   # emit even if an unrelated file has a type error
test -f dist/bench/images/run.js
exec node dist/bench/images/run.js
