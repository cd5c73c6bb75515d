#!/usr/bin/env bash
# Tests the daemon's REST API against its own OpenAPI document with schemathesis: generated
# requests (valid and invalid) to every route; it fails on a 5xx, an answer the document does
# not describe, a status the document does not list, or a schema-violating request accepted.
# The daemon runs with the fake VMM (crates/daemon/src/bin/fake-vireo.rs), so starts are
# cheap, on TCP with a bearer token. Needs scripts/setup.sh (schemathesis from PyPI).
#
# The generator asks for pools on whatever absolute paths it picks, and may forget them with
# their volumes' files kept (force): the daemon runs with --pool-root in the scratch directory,
# so every file the run makes is there and goes with it.
#
# Left out: the check that every schema-valid request is accepted. A definition can be
# schema-valid and still not runnable (a kernel path that does not exist, an image that is
# not pulled, `--memory 0`); those are refused with 422 by design.
#
# Usage: scripts/api-check.sh [EXAMPLES_PER_ROUTE]   (default 30)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/tools.sh
[ -x "$SCHEMATHESIS" ] || { echo "api-check: schemathesis is missing at $SCHEMATHESIS: run scripts/setup.sh" >&2; exit 1; }
cargo build -q -p vireo-daemon --bin fake-vireo
dir=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$dir/token"
target/debug/fake-vireo daemon --state-dir "$dir/state" --socket "$dir/api.sock" \
  --listen "tcp:127.0.0.1:$port" --token-file "$dir/token" --cgroup-parent "vireo-api-check-$$" \
  --pool-root "$dir" \
  >"$dir/daemon.log" 2>&1 &
daemon=$!
cleanup() {
  kill "$daemon" 2>/dev/null || true
  wait "$daemon" 2>/dev/null || true
  pkill -f "fake-vireo vmm .*$dir" 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT
for _ in $(seq 100); do
  [ -S "$dir/api.sock" ] && break
  sleep 0.1
done
# VMs under the names the generator picks most, so that the per-VM routes meet real ones, one
# of them running (on the fake VMM).
for name in 0 a; do
  curl -sf --unix-socket "$dir/api.sock" -H 'Content-Type: application/json' \
    -d "{\"name\": \"$name\", \"spec\": {\"kernel\": \"$PWD/README.md\"}}" http://vireo/vms >/dev/null
done
curl -sf --unix-socket "$dir/api.sock" -X POST http://vireo/vms/0/start >/dev/null
# And volumes and a pool under those names, so that the storage routes meet real ones too.
curl -sf --unix-socket "$dir/api.sock" -H 'Content-Type: application/json' \
  -d "{\"name\": \"a\", \"path\": \"$dir/pool-a\"}" http://vireo/pools >/dev/null
for pool in default a; do
  for name in 0 a; do
    curl -sf --unix-socket "$dir/api.sock" -H 'Content-Type: application/json' \
      -d "{\"name\": \"$name\", \"size_bytes\": 1048576}" "http://vireo/pools/$pool/volumes" >/dev/null
  done
done
# GET /events?follow=true and GET /vms/{name}/logs?follow=true are streams that do not end
# while the VM runs: the generator would only see them time out. The API tests
# (crates/daemon/tests/api.rs) cover both.
# From the scratch directory: schemathesis keeps a cache where it runs.
cd "$dir"
"$SCHEMATHESIS" run "http://127.0.0.1:$port/openapi.json" \
  --exclude-path /events --exclude-path '/vms/{name}/logs' \
  -H "Authorization: Bearer $(cat "$dir/token")" \
  --phases examples,coverage,fuzzing \
  --exclude-checks positive_data_acceptance \
  -n "${1:-30}" --request-timeout 10 --no-color
