#!/usr/bin/env bash
# Installs everything tetrixd needs on a fresh Debian machine (as root): the Debian packages in
# deploy/packages.txt, the npm dependencies, the native addon and the compiled TypeScript, then puts
# `tetrixd` and `tetrixctl` on PATH as two small wrappers in /usr/local/bin (TETRIX_BIN_DIR) that run
# this checkout's dist/ (`npx tetrixctl` works only inside the checkout: elsewhere npm looks for a
# package of that name on the registry).
# Safe to run again. It changes nothing outside the package lists, this checkout, node_modules,
# /etc/modules-load.d/tetrix.conf (the overlay module, where the kernel has it as a module) and the two
# wrappers. `install.sh --wrappers-only` writes just the wrappers (the checkout must be built).
set -euo pipefail
cd "$(dirname "$0")/.."
checkout=$(pwd -P)
bin_dir=${TETRIX_BIN_DIR:-/usr/local/bin}

# A wrapper is rewritten only when its content changes, through a temporary file and a rename, so a
# tetrixctl running at that moment never reads half a script.
write_wrapper() {
  local name=$1 body=$2 file="$bin_dir/$1"
  if [ -f "$file" ] && [ "$(cat "$file")" = "$body" ]; then return; fi
  mkdir -p "$bin_dir"
  printf '%s\n' "$body" > "$file.tmp.$$"
  chmod 0755 "$file.tmp.$$"
  mv -f "$file.tmp.$$" "$file"
  echo "install.sh: wrote $file"
}

install_wrappers() {
  local node flags env
  node=$(command -v node)
  [ -f "$checkout/dist/src/main.js" ] || { echo "install.sh: $checkout is not built (npm run build)" >&2; exit 1; }
  # The daemon's Node flags and environment, from the one place that defines them (src/node-flags.ts).
  flags=$("$node" -p "require('$checkout/dist/src/node-flags.js').DAEMON_NODE_FLAGS.join(' ')")
  env=$("$node" -p "Object.entries(require('$checkout/dist/src/node-flags.js').DAEMON_ENV).map(([k, v]) => k + '=' + v).join(' ')")
  write_wrapper tetrixd "#!/bin/sh
# Written by $checkout/deploy/install.sh: tetrixd from that checkout, with the daemon's Node flags.
exec env $env $node $flags $checkout/dist/src/main.js \"\$@\""
  write_wrapper tetrixctl "#!/bin/sh
# Written by $checkout/deploy/install.sh: tetrixctl from that checkout.
exec $node $checkout/dist/src/cli/tetrixctl.js \"\$@\""
}

if [ "${1:-}" = "--wrappers-only" ]; then
  install_wrappers
  exit 0
fi

if [ "$(id -u)" != 0 ]; then
  echo "install.sh: run as root (tetrixd creates namespaces, mounts and cgroups)" >&2
  exit 1
fi

mapfile -t packages < <(grep -v -E '^\s*(#|$)' deploy/packages.txt)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "install.sh: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# Workspaces boot from an overlay; Debian's kernel builds it as a module, loaded on demand only by a
# mount, while tetrixd's preflight looks in /proc/filesystems first. Load it now and at every boot.
if ! grep -qw overlay /proc/filesystems; then
  modprobe overlay
  echo overlay > /etc/modules-load.d/tetrix.conf
fi

command -v node >/dev/null || { echo "install.sh: Node.js 20 is required" >&2; exit 1; }
major=$(node -p 'process.versions.node.split(".")[0]')
[ "$major" -ge 20 ] || { echo "install.sh: Node.js >= 20 is required (found $(node --version))" >&2; exit 1; }

# npm ci empties node_modules first, following a symlink: a node_modules shared with another checkout
# would be wiped for every checkout using it. Such a checkout is already installed; only build it.
if [ -L node_modules ]; then
  echo "install.sh: node_modules is a symlink to $(readlink node_modules); not running npm ci over it" >&2
  npm run install
else
  # npm ci runs the package's install script: node-gyp builds native/ (addon + static init).
  npm ci --no-audit --no-fund
fi
npm run build
install_wrappers
echo "install.sh: done. Start the daemon with: tetrixd   (tetrixd --help, tetrixctl --help)"
