#!/usr/bin/env bash
# Installs everything tetrixd needs on a fresh Debian machine (as root): the Debian packages in
# deploy/packages.txt, the npm dependencies, the native addon and the compiled TypeScript.
# Safe to run again. It changes nothing outside the package lists, this checkout, node_modules and
# /etc/modules-load.d/tetrix.conf (the overlay module, where the kernel has it as a module).
set -euo pipefail
cd "$(dirname "$0")/.."

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

# npm ci runs the package's install script: node-gyp builds native/ (addon + static init).
npm ci --no-audit --no-fund
npm run build
echo "install.sh: done. Start the daemon with: npm start   (or: node dist/src/main.js --help)"
