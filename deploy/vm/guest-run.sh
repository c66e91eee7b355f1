#!/usr/bin/env bash
# Runs inside the VM (deploy/vm/run-suite.sh puts it on the read-only share /mnt/tetrix-run): clones
# the host's HEAD and runs the suite as CI does, output on the serial console, exit code on ttyS1.
set -uo pipefail
share=/mnt/tetrix-run
report() { echo "$1" >/dev/ttyS1; }
trap 'report 125' ERR
stty -F /dev/ttyS0 -opost 2>/dev/null || true

echo "tetrix-vm: $(. /etc/os-release && echo "$PRETTY_NAME"), kernel $(uname -r), node $(node --version)"
if [ "$(stat -fc %T /sys/fs/cgroup)" != cgroup2fs ]; then
  echo "tetrix-vm: /sys/fs/cgroup is not cgroup v2" >&2
  report 2
  exit 0
fi
echo "tetrix-vm: cgroup v2, controllers: $(cat /sys/fs/cgroup/cgroup.controllers); this unit's cgroup: $(cut -d: -f3 /proc/self/cgroup)"

# Reach the mirror and the registry the way the host does.
cat "$share/hosts" >>/etc/hosts
if compgen -G "$share/ca/*.crt" >/dev/null; then
  cp "$share"/ca/*.crt /usr/local/share/ca-certificates/
  update-ca-certificates >/dev/null 2>&1
fi
export NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt
set -a
# shellcheck disable=SC1091
. "$share/env"
set +a
export HOME=/root

# /opt/tetrix as in the README's systemd setup; not under /root (0700): test/ops/preflight.test.ts runs the
# daemon as nobody, which must be able to read the checkout.
git -c init.defaultBranch=main -c advice.detachedHead=false clone -q "$share/repo.bundle" /opt/tetrix
cd /opt/tetrix
git checkout -q --detach "$(cat "$share/head")"
echo "tetrix-vm: testing $(git log -1 --format='%h %s')"
trap - ERR

started=$(date +%s)
if [ -f "$share/command" ]; then
  bash deploy/install.sh && eval "$(cat "$share/command")"
else
  CI=true bash .ci/run
fi
code=$?
echo "tetrix-vm: finished with exit code $code after $(( $(date +%s) - started )) s"
report "$code"
