#!/usr/bin/env bash
# Runs every check CI runs: formatting, lints, and the whole test suite (unit tests, the emulator's
# ISA tests, and end-to-end boots of the pulled Debian image). Needs scripts/setup.sh once.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -q -- -D warnings
cargo test --workspace
