#!/usr/bin/env bash
# Builds vireo and the bench harnesses optimised, then runs one.
# Usage: bench/run.sh [boot|io|kvm|loop|seccomp|jail|snapshot] [RUNS]   (default: boot; loop: [VMS] [AT_ONCE];
#        snapshot: [emu|kvm] [CLONES...], default both parts and 10 50 clones)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p vireo -p vireo-bench
case "${1:-boot}" in
  boot) shift || true; exec target/release/emu_boot "$@" ;;
  io) shift; exec target/release/io "$@" ;;
  kvm) shift; exec target/release/kvm_start "$@" ;;
  loop) shift; exec target/release/daemon_loop "$@" ;;
  seccomp|jail) shift; exec target/release/seccomp "$@" ;;
  snapshot) shift; exec target/release/snapshot "$@" ;;
  [0-9]*) exec target/release/emu_boot "$@" ;;
  *) echo "usage: bench/run.sh [boot|io|kvm|loop|seccomp|jail|snapshot] [RUNS]" >&2; exit 2 ;;
esac
