#!/usr/bin/env bash
# Runs every check CI runs: formatting, lints, and the whole test suite (unit tests, the emulator's
# ISA tests, end-to-end boots of the pulled Debian image, the daemon with real VMMs), the API
# against its OpenAPI document, and short fuzz runs. Needs scripts/setup.sh once.
#
# A test never passes without having run. What this host cannot run is left out by name and
# listed, with the reason, at the end:
# - `#[ignore = "reason"]` tests: the x86-64 Linux boots need a host KVM that delivers exceptions
#   to guests (nested PVM does not); run them there with `cargo test -p vireo-kvm -p vireo --
#   --ignored`.
# - Tests that need /dev/kvm fail without it. VIREO_TESTS_WITHOUT_KVM=1 leaves them out instead:
#   vireo-kvm's integration tests and every test named `kvm::...`.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -q -- -D warnings

log=$(mktemp)
trap 'rm -f "$log"' EXIT

# Lists the tests cargo's output in $log reported as ignored, with their binary and reason.
list_ignored() {
    local bin="" line
    # "     Running tests/boot.rs (target/debug/deps/boot-0123abcd)": the source and the binary.
    local running='^ +Running (unittests )?([^ ]+) \((.*/)?([^/]+)-[0-9a-f]+\)'
    local doc='^ +Doc-tests (.+)$'
    local ignored='^test (.+) \.\.\. ignored(, (.*))?$'
    while IFS= read -r line; do
        if [[ $line =~ $running ]]; then
            bin="${BASH_REMATCH[4]} (${BASH_REMATCH[2]})"
        elif [[ $line =~ $doc ]]; then
            bin="doc-tests ${BASH_REMATCH[1]}"
        elif [[ $line =~ $ignored ]]; then
            echo "  $bin: ${BASH_REMATCH[1]} (${BASH_REMATCH[3]:-no reason given})"
        fi
    done <"$log"
}

if [[ ${VIREO_TESTS_WITHOUT_KVM:-} == 1 ]]; then
    cargo test --workspace --exclude vireo-kvm -- --skip kvm:: 2>&1 | tee "$log"
    cargo test -p vireo-kvm --lib 2>&1 | tee -a "$log"
    left_out=$(
        {
            cargo test -q -p vireo-kvm --test '*' -- --list
            cargo test -q --workspace --exclude vireo-kvm -- --list kvm::
        } 2>/dev/null | sed -n 's/: test$//p'
    )
else
    cargo test --workspace 2>&1 | tee "$log"
    left_out=""
fi

# The daemon's API against its OpenAPI document (schemathesis): no 5xx, no undocumented
# answer or status, no schema-violating request accepted.
scripts/api-check.sh 30

# A short run of every fuzz target (seconds each) from its seeds: a parser that crashes on
# them, or within a few thousand mutations, fails the suite. scripts/fuzz.sh runs them long.
scripts/fuzz.sh 3

echo
echo "Not run on this host:"
ignored=$(list_ignored)
if [[ -n $ignored ]]; then
    echo "$ignored"
fi
if [[ -n $left_out ]]; then
    echo "$left_out" | sed 's/^/  /; s/$/ (needs \/dev\/kvm; left out by VIREO_TESTS_WITHOUT_KVM=1)/'
fi
if [[ -z $ignored && -z $left_out ]]; then
    echo "  nothing: every test ran"
fi
