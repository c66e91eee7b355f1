#!/usr/bin/env bash
# Builds and runs the network benchmark (bench/network/run.ts): Tetrix attach+detach per workspace
# against spawned `ip link add ... type veth` (the anchor). Needs iproute2 and nftables; run as root.
# TETRIX_BENCH_COUNT=200 bench/network/run.sh   for 200 workspaces per round instead of 100.
set -euo pipefail
cd "$(dirname "$0")/../.."
npx tsc -p tsconfig.json >/dev/null || true   # emit even if an unrelated file has a type error
test -f dist/bench/network/run.js
exec node dist/bench/network/run.js
