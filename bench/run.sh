#!/usr/bin/env bash
# Builds vireo and the bench harness optimised, then runs the emu boot benchmark against QEMU.
# Usage: bench/run.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p vireo -p vireo-bench
exec target/release/emu_boot "$@"
