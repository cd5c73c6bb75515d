#!/usr/bin/env bash
# One command from a fresh Debian machine to a command run in a fresh VM:
# installs what vireo needs, builds it, pulls the riscv64 guest image from the Debian mirror the
# host's apt already uses, and boots it to run `uname -a`.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
# Build tools (cmake/make for the SoftFloat build), the riscv64 cross toolchain for the ISA tests,
# dpkg-deb/apt for image pulls, cpio to cross-check our archives, QEMU as the bench yardstick,
# passt for user-mode networking, e2fsprogs to make test disks, acpica-tools (iasl) to check the
# ACPI tables vireo generates, and mmdebstrap with qemu-user-static (binfmt-support registers it)
# to build the systemd image's Debian tree, whose riscv64 maintainer scripts run under qemu-user;
# python3-venv for the virtualenv schemathesis is installed in.
PKGS=(build-essential cmake make pkg-config cpio apt dpkg gcc-riscv64-linux-gnu e2fsprogs passt
      binutils-riscv64-linux-gnu qemu-system-misc qemu-utils ca-certificates acpica-tools
      mmdebstrap qemu-user-static binfmt-support python3-venv)
# Twice: resolving a conflict (see below) can remove a package of the list, which the second
# round puts back.
for round in 1 2; do
  missing=()
  for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing ${missing[*]}"
    $SUDO apt-get update -q
    if ! DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${missing[@]}"; then
      # A QEMU package newer than any source apt lists (a backport whose source was removed)
      # breaks the archive's other QEMU packages: take the archive's QEMU as a whole.
      pins=()
      for q in qemu-utils qemu-system-common qemu-system-data qemu-block-extra; do
        v=$(apt-cache madison "$q" 2>/dev/null | awk -F'|' 'NR==1{gsub(/ /,"",$2); print $2}')
        if [ -n "$v" ] && dpkg-query -W "$q" >/dev/null 2>&1; then pins+=("$q=$v"); fi
      done
      echo "setup: retrying with the archive's QEMU (${pins[*]})"
      DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --allow-downgrades \
        "${missing[@]}" "${pins[@]}"
    fi
  fi
done
command -v cargo >/dev/null || { echo "setup: cargo is missing: install Rust (rustup) first" >&2; exit 1; }
# The fuzz targets (scripts/fuzz.sh, and a short run in scripts/test.sh) build with nightly and
# cargo-fuzz (libFuzzer).
if ! cargo +nightly --version >/dev/null 2>&1; then
  rustup toolchain install nightly --profile minimal
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi
# schemathesis tests the daemon's API against its OpenAPI document (scripts/api-check.sh).
. scripts/tools.sh
if ! "$SCHEMATHESIS" --version >/dev/null 2>&1; then
  python3 -m venv "$VIREO_DEV_TOOLS/venv"
  "$VIREO_DEV_TOOLS/venv/bin/python" -m pip install -q schemathesis
  "$SCHEMATHESIS" --version >/dev/null || { echo "setup: schemathesis did not install into $VIREO_DEV_TOOLS/venv" >&2; exit 1; }
fi

cargo build --release -p vireo
./target/release/vireo image pull debian-riscv64
# The x86-64 image feeds the kvm accelerator's full-Linux tests (ignored by default; run them
# with `cargo test -- --ignored` on a host whose KVM delivers guest exceptions).
./target/release/vireo image pull debian-x86_64
# The systemd image (a Debian root disk, about 10 minutes to build) runs riscv64 programs on the
# host while it is built: binfmt_misc mounted (containers often lack it) and qemu-riscv64 on.
if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
  $SUDO mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
fi
$SUDO update-binfmts --enable qemu-riscv64
# mmdebstrap --mode=root needs root; the image goes to this user's cache all the same.
$SUDO env VIREO_CACHE_DIR="${VIREO_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}}" \
  ./target/release/vireo image pull debian-riscv64-rootfs
echo "setup: booting a fresh VM:"
./target/release/vireo run --image debian-riscv64 -- uname -a
