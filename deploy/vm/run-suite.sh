#!/usr/bin/env bash
# Runs the test suite inside a Debian 13 (trixie) VM with a pure cgroup v2 hierarchy, the way CI runs
# it: `git clone` of this checkout's HEAD, then `CI=true bash .ci/run`. Prints the guest's output as it
# comes and exits with the suite's exit code. As root on a Debian host:
#
#   bash deploy/vm/run-suite.sh                                  # the whole suite (CI's command)
#   bash deploy/vm/run-suite.sh npx tap test/sandbox/cgroups.test.ts   # deploy/install.sh, then this
#   bash deploy/vm/run-suite.sh --rebuild                        # build the cached image again first
#
# The image is built once with debootstrap from Debian's mirror and cached in $TETRIX_VM_CACHE; each
# run boots a throwaway copy-on-write layer over it, so every run starts from the same clean machine.
# The host keeps its network as it is: the guest gets QEMU's user-mode network (slirp, plain sockets
# of the qemu process), no bridge, tap or firewall rule. The host gets no mount or loop device either:
# the image is made with `mkfs.ext4 -d`, debootstrap's own mounts live in a private mount namespace,
# and the checkout reaches the guest over a read-only 9p share.
#
# TETRIX_VM_CACHE (/var/cache/tetrix-vm), TETRIX_VM_MEMORY (MiB, 6144), TETRIX_VM_CPUS (2),
# TETRIX_VM_MIRROR (http://deb.debian.org/debian), TETRIX_VM_TIMEOUT (seconds, 21600),
# TETRIX_VM_ACCEL (kvm|tcg; default kvm, tcg when KVM does not start) override the defaults.
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
cache=${TETRIX_VM_CACHE:-/var/cache/tetrix-vm}
memory=${TETRIX_VM_MEMORY:-6144}
cpus=${TETRIX_VM_CPUS:-2}
mirror=${TETRIX_VM_MIRROR:-http://deb.debian.org/debian}
run_timeout=${TETRIX_VM_TIMEOUT:-21600}
suite=trixie
# Bump when the image recipe below changes; deploy/packages.txt is part of the image's key too.
recipe=1

say() { echo "tetrix-vm: $*" >&2; }
die() { say "$*"; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (debootstrap, /dev/kvm)"

install_host_tools() {
  local missing=()
  command -v qemu-system-x86_64 >/dev/null || missing+=(qemu-system-x86)
  command -v qemu-img >/dev/null || missing+=(qemu-utils)
  command -v debootstrap >/dev/null || missing+=(debootstrap)
  command -v mkfs.ext4 >/dev/null || missing+=(e2fsprogs)
  command -v unshare >/dev/null || missing+=(util-linux)
  [ -r /usr/share/keyrings/debian-archive-keyring.gpg ] || missing+=(debian-archive-keyring)
  [ "${#missing[@]}" -eq 0 ] && return
  say "installing ${missing[*]} on the host (only for this VM; the main install does not need them)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

# Packages the guest has besides deploy/packages.txt: a systemd boot with Debian's kernel, and what the
# README expects on the machine already (Node.js 20 from Debian, git to clone). libnode-dev gives
# node-gyp the headers it would otherwise download from nodejs.org.
guest_packages() {
  echo linux-image-amd64 initramfs-tools systemd systemd-sysv udev dbus kmod procps iproute2
  echo ca-certificates git nodejs npm libnode-dev
  # HEAD's list, as HEAD is what the guest tests.
  git -C "$repo" show HEAD:deploy/packages.txt | grep -v -E '^\s*(#|$)'
}

image_key() {
  { echo "$suite $recipe"; guest_packages; } | sha256sum | cut -c1-12
}

# Runs in a private mount namespace (see build_image), so the /proc it mounts vanishes with it.
populate_rootfs() {
  local root=$1 packages
  packages=$(guest_packages | sort -u | tr '\n' ' ')
  debootstrap --variant=minbase --components=main "$suite" "$root" "$mirror"
  cat >"$root/etc/apt/sources.list.d/debian.sources" <<SOURCES
Types: deb
URIs: $mirror
Suites: $suite $suite-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: ${mirror%/debian}/debian-security
Suites: $suite-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
  : >"$root/etc/apt/sources.list"
  # No service may start inside the build chroot.
  printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
  chmod 755 "$root/usr/sbin/policy-rc.d"
  mount -t proc proc "$root/proc"
  chroot "$root" apt-get update -qq
  # shellcheck disable=SC2086
  DEBIAN_FRONTEND=noninteractive chroot "$root" apt-get install -y -qq --no-install-recommends $packages
  chroot "$root" apt-get clean
  umount "$root/proc"
  rm -f "$root/usr/sbin/policy-rc.d"
}

configure_guest() {
  local root=$1
  echo tetrix-vm >"$root/etc/hostname"
  printf '127.0.0.1 localhost\n127.0.1.1 tetrix-vm\n::1 localhost ip6-localhost ip6-loopback\n' >"$root/etc/hosts"
  echo '/dev/vda / ext4 rw,errors=remount-ro 0 1' >"$root/etc/fstab"
  # QEMU's user-mode network has fixed addresses: guest 10.0.2.15, gateway 10.0.2.2, DNS 10.0.2.3.
  mkdir -p "$root/etc/systemd/network"
  printf '[Match]\nType=ether\n\n[Network]\nAddress=10.0.2.15/24\nGateway=10.0.2.2\nDNS=10.0.2.3\n' \
    >"$root/etc/systemd/network/10-slirp.network"
  rm -f "$root/etc/resolv.conf"
  echo 'nameserver 10.0.2.3' >"$root/etc/resolv.conf"
  chroot "$root" systemctl enable systemd-networkd.service >/dev/null 2>&1
  # Nobody logs in: the serial console carries the run's output only.
  chroot "$root" passwd -l root >/dev/null
  chroot "$root" systemctl mask serial-getty@ttyS0.service getty@tty1.service >/dev/null 2>&1
  # The host's npmrc points node-gyp at the installed headers too (no download from nodejs.org).
  printf 'nodedir=/usr\nfund=false\naudit=false\nupdate-notifier=false\n' >"$root/root/.npmrc"
  install -m 755 /dev/stdin "$root/usr/local/sbin/tetrix-vm-run" <<'RUN'
#!/bin/sh
# Mounts the host's read-only share and runs the script the host put there (deploy/vm/guest-run.sh).
set -e
mkdir -p /mnt/tetrix-run
mount -t 9p -o trans=virtio,version=9p2000.L,ro tetrix /mnt/tetrix-run
exec bash /mnt/tetrix-run/guest-run.sh
RUN
  # Delegate=yes as in deploy/tetrixd.service: the suite owns the cgroup subtree it runs in.
  cat >"$root/etc/systemd/system/tetrix-vm-run.service" <<'UNIT'
[Unit]
Description=Tetrix: run the test suite from the host's share, then power off
Wants=network-online.target
After=network-online.target systemd-networkd-wait-online.service
SuccessAction=poweroff
FailureAction=poweroff

[Service]
Type=oneshot
Delegate=yes
ExecStart=/usr/local/sbin/tetrix-vm-run
StandardOutput=tty
StandardError=tty
TTYPath=/dev/ttyS0
TTYReset=no
TimeoutStartSec=infinity

[Install]
WantedBy=multi-user.target
UNIT
  chroot "$root" systemctl enable tetrix-vm-run.service >/dev/null 2>&1
}

build_image() {
  local dir=$1 work
  work=$(mktemp -d "$cache/build.XXXXXX")
  say "building the $suite image in $work (debootstrap from $mirror; takes a while)"
  export -f populate_rootfs guest_packages
  export suite mirror repo
  # debootstrap and apt mount /proc inside the target: keep those mounts out of the host's namespace.
  unshare --mount --propagation private bash -c 'set -euo pipefail; populate_rootfs "$1"' _ "$work/root"
  configure_guest "$work/root"
  mkdir -p "$work/image"
  local kernel
  kernel=$(find "$work/root/boot" -name 'vmlinuz-*' | sort -V | tail -n 1)
  cp "$kernel" "$work/image/vmlinuz"
  cp "$work/root/boot/initrd.img-${kernel##*/vmlinuz-}" "$work/image/initrd.img"
  truncate -s 24G "$work/image/root.img"
  mkfs.ext4 -q -F -L tetrix-root -d "$work/root" "$work/image/root.img"
  rm -rf "$work/root"
  rm -rf "$dir"
  mv "$work/image" "$dir"
  rmdir "$work"
  # Images for older package lists: a run still using one keeps its open file.
  find "$cache" -mindepth 1 -maxdepth 1 -name "$suite-*" ! -path "$dir" -exec rm -rf {} +
  say "image ready: $dir"
}

# Boots Debian's kernel with KVM and no init: reaching "Kernel panic" means KVM runs it. A /dev/kvm that
# opens is not enough: inside some cloud VMs (Firecracker with nested_pvm, module kvm_pvm) KVM runs only
# PVM-enlightened guest kernels; a stock kernel's privileged code is emulated, boots for minutes and
# stops on instructions the emulator lacks ("KVM internal error. Suberror: 1 ... emulation failure").
kvm_runs_kernel() {
  local log=$1
  : >"$log"
  : >"$log.err"
  timeout 60 qemu-system-x86_64 -machine q35,accel=kvm -cpu "$kvm_cpu" -m 512 -nodefaults -display none \
    -no-reboot -kernel "$image/vmlinuz" -append "console=ttyS0 panic=-1 rdinit=/tetrix-no-init" \
    -serial file:"$log" -monitor none </dev/null >>"$log.err" 2>&1 || true
  grep -q 'Kernel panic' "$log"
}

install_host_tools
mkdir -p "$cache"
chmod 700 "$cache"
image="$cache/$suite-$(image_key)"
if [ "${1:-}" = --rebuild ]; then shift; rm -rf "$image"; fi
[ -f "$image/root.img" ] || build_image "$image"

# -arch-capabilities: nested, KVM may refuse that MSR ("failed to set MSR 0x10a").
kvm_cpu=host,-arch-capabilities
accel=${TETRIX_VM_ACCEL:-kvm}
if [ "$accel" = kvm ] && ! kvm_runs_kernel "$cache/kvm-probe.log"; then
  say "KVM did not boot the kernel within 60 s ($(grep -m1 -h -E 'KVM|kvm|error' "$cache/kvm-probe.log.err" 2>/dev/null || echo 'no panic seen'));"
  say "falling back to TCG emulation, many times slower (probe output: $cache/kvm-probe.log*)"
  accel=tcg
else
  rm -f "$cache/kvm-probe.log" "$cache/kvm-probe.log.err"
fi
if [ "$accel" = kvm ]; then cpu=$kvm_cpu; else cpu=max; fi

run=$(mktemp -d "$cache/run.XXXXXX")
qemu_pid=
cleanup() {
  if [ -n "$qemu_pid" ] && kill -0 "$qemu_pid" 2>/dev/null; then kill "$qemu_pid"; wait "$qemu_pid" 2>/dev/null || true; fi
  rm -rf "$run"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The share the guest reads: HEAD as a git bundle, the guest script, and how this host reaches the
# mirror and the registry (their addresses if /etc/hosts pins them, extra CAs of an HTTPS proxy,
# proxy variables). It lives only for this run.
mkdir -p "$run/share/ca"
git -C "$repo" bundle create -q "$run/share/repo.bundle" HEAD
git -C "$repo" rev-parse HEAD >"$run/share/head"
cp "$repo/deploy/vm/guest-run.sh" "$run/share/guest-run.sh"
if [ "$#" -gt 0 ]; then printf '%q ' "$@" >"$run/share/command"; fi
for host in "$(echo "$mirror" | sed -E 's#^[a-z]+://([^/:]+).*#\1#')" registry.npmjs.org; do
  grep -E "^[^#]*[[:space:]]$host([[:space:]]|$)" /etc/hosts | awk -v h="$host" '{print $1, h}' || true
done >"$run/share/hosts"
cp /usr/local/share/ca-certificates/*.crt "$run/share/ca/" 2>/dev/null || true
env | grep -E '^(http_proxy|https_proxy|no_proxy|HTTP_PROXY|HTTPS_PROXY|NO_PROXY)=' >"$run/share/env" || true
chmod -R go-rwx "$run/share"

qemu-img create -q -f qcow2 -F raw -b "$image/root.img" "$run/disk.qcow2"
: >"$run/result"
say "booting ($accel, $cpus vCPUs, $memory MiB) and running: $(cat "$run/share/command" 2>/dev/null || echo 'CI=true bash .ci/run')"
timeout "$run_timeout" qemu-system-x86_64 \
  -machine q35,accel="$accel" -cpu "$cpu" -smp "$cpus" -m "$memory" \
  -nodefaults -display none -no-reboot \
  -kernel "$image/vmlinuz" -initrd "$image/initrd.img" \
  -append "root=/dev/vda rw console=ttyS0,115200 quiet loglevel=3 systemd.show_status=false panic=-1" \
  -drive file="$run/disk.qcow2",format=qcow2,if=virtio,cache=unsafe \
  -netdev user,id=net0 -device virtio-net-pci,netdev=net0 \
  -virtfs local,path="$run/share",mount_tag=tetrix,security_model=none,readonly=on \
  -device virtio-rng-pci \
  -chardev stdio,id=console,signal=off,logfile="$cache/last-console.log" -serial chardev:console \
  -serial file:"$run/result" \
  </dev/null &
qemu_pid=$!
set +e
wait "$qemu_pid"
qemu_code=$?
set -e
qemu_pid=
code=$(tr -dc '0-9' <"$run/result")
if [ -z "$code" ]; then
  [ "$qemu_code" = 124 ] && say "timed out after $run_timeout s"
  say "the guest reported no result (qemu exited with $qemu_code); console log: $cache/last-console.log"
  exit 3
fi
say "suite exit code: $code (console log: $cache/last-console.log)"
exit "$code"
