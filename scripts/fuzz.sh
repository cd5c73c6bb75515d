#!/usr/bin/env bash
# Fuzzes every guest-facing parser with cargo-fuzz (libFuzzer, nightly toolchain): the targets
# in fuzz/fuzz_targets, each started from its checked-in seeds (fuzz/corpus/TARGET, read only:
# what a run finds goes to a scratch corpus). Fails on any crash, timeout or out-of-memory, with
# the input left in fuzz/artifacts/TARGET/ to turn into a regression test.
#
# Usage: scripts/fuzz.sh [SECONDS] [TARGET...]   (default: 60 s for each target, all targets)
# scripts/test.sh runs it with 3 s a target; long runs are for finding bugs.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs=${1:-60}
shift || true
targets=("$@")
if [[ ${#targets[@]} -eq 0 ]]; then
    mapfile -t targets < <(cargo +nightly fuzz list)
fi
if ! out=$(cargo +nightly fuzz build -O 2>&1); then
    echo "$out" >&2
    exit 1
fi
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
# The targets' own scratch files (a disk image, a vsock socket) go with it.
export TMPDIR="$scratch"
total=0
for t in "${targets[@]}"; do
    mkdir -p "$scratch/$t"
    log="$scratch/$t.log"
    # -timeout: one input running a second is a hang; -rss_limit_mb: a guest must not make the
    # host allocate without bound.
    if ! cargo +nightly fuzz run -O "$t" "$scratch/$t" "corpus/$t" -- \
        -max_total_time="$secs" -timeout=1 -rss_limit_mb=2048 -max_len=16384 \
        -print_final_stats=1 >"$log" 2>&1; then
        # Without cargo-fuzz's dump of the input as a byte list, which would fill the tail.
        sed '/^Output of `std::fmt::Debug`:/,/^Reproduce with:/d' "$log" | tail -60
        mkdir -p "artifacts/$t"
        cp "$log" "artifacts/$t/fuzz.log"
        echo "fuzz: $t failed (input and log in fuzz/artifacts/$t/)" >&2
        exit 1
    fi
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1)
    printf 'fuzz: %-16s %10s executions in %s s, %s, no crash\n' "$t" "${runs:-?}" "$secs" "$cov"
    total=$((total + ${runs:-0}))
done
echo "fuzz: $total executions over ${#targets[@]} targets, no crash, timeout or out-of-memory"
