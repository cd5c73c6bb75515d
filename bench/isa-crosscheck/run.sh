#!/bin/sh
# Cross-checks vireo's emulator against QEMU on every Zba/Zbb/Zbc/Zbs/Zicond/Zfa instruction:
# crosscheck.S (written by gen.py) runs each instruction on 4096 pseudo-random inputs and prints
# one hash per instruction (results and fflags). It runs as M-mode firmware under
# `vireo run --firmware` and as a static Linux program under qemu-riscv64 (user mode, `-cpu max`);
# the two outputs must be identical.
#
# QEMU 7.2 (bookworm) lacks Zicond and Zfa, so the script takes qemu-user from Debian trixie
# (static binaries), fetched from the mirror the host's apt configuration names, into
# $VIREO_CACHE (default ~/.cache/vireo/qemu-user). Usage: bench/isa-crosscheck/run.sh
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cache=${VIREO_CACHE:-$HOME/.cache/vireo}/qemu-user
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

qemu=$cache/usr/bin/qemu-riscv64
if [ ! -x "$qemu" ]; then
    mirror=$(sed -n 's/^URIs:[[:space:]]*//p' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -1)
    [ -n "$mirror" ] || mirror=$(awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /:\/\//) { print $i; exit } }' /etc/apt/sources.list)
    [ -n "$mirror" ] || { echo "no Debian mirror in the host's apt configuration" >&2; exit 2; }
    mkdir -p "$work/apt/lists/partial" "$work/apt/cache/archives/partial" "$cache"
    echo "deb [arch=amd64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror trixie main" >"$work/apt/sources.list"
    opts="-o Dir::Etc::SourceList=$work/apt/sources.list -o Dir::Etc::SourceParts=- -o Dir::State::Lists=$work/apt/lists -o Dir::Cache=$work/apt/cache -o APT::Architecture=amd64 -o Debug::NoLocking=1 -o APT::Sandbox::User=root"
    # shellcheck disable=SC2086
    apt-get $opts -qq update
    # shellcheck disable=SC2086
    (cd "$work" && apt-get $opts -qq download qemu-user)
    dpkg-deb -x "$work"/qemu-user_*.deb "$cache"
fi

cc="riscv64-linux-gnu-gcc -march=rv64gc_zba_zbb_zbc_zbs -mabi=lp64d -nostdlib -static"
$cc -o "$work/cc-linux" "$here/crosscheck.S"
$cc -DBARE -mno-relax -Wl,--build-id=none -Wl,--no-warn-rwx-segments \
    -T "$root/crates/riscv/tests/isa/link.ld" -o "$work/cc-bare.elf" "$here/crosscheck.S"
vireo=${VIREO:-$root/target/release/vireo}
"$vireo" run --firmware "$work/cc-bare.elf" >"$work/vireo.txt"
"$qemu" -cpu max "$work/cc-linux" >"$work/qemu.txt"
lines=$(wc -l <"$work/qemu.txt")
if diff -u "$work/qemu.txt" "$work/vireo.txt"; then
    echo "isa-crosscheck: $lines instructions (4096 inputs each, fli: all 64 entries) agree with $("$qemu" --version | head -1)"
else
    echo "isa-crosscheck: vireo and QEMU disagree (- qemu, + vireo)" >&2
    exit 1
fi
