#!/usr/bin/env bash
# Builds and runs the storage benchmark (bench/storage/run.ts) as root: encrypted, size-limited workspace
# volumes against plain workspace directories. bench/storage/measure.ts holds the kernel measurements.
set -euo pipefail
cd "$(dirname "$0")/../.."
npx tsc -p tsconfig.json >/dev/null || true   # emit even if an unrelated file has a type error
test -f dist/bench/storage/run.js && test -f dist/src/main.js
exec node dist/bench/storage/run.js
