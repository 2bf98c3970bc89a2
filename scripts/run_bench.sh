#!/usr/bin/env bash
# Runs every benchmark under bench/ (each prints a ratio against a peer measured in the same run).
# Benchmarks are not part of make test: these machines are noisy, so speed is never asserted in tests.
set -uo pipefail
cd "$(dirname "$0")/.."
status=0
for bench in bench/bench_*.py; do
  echo "== $bench"
  .venv/bin/python "$bench" "$@" || { echo "$bench failed" >&2; status=1; }
done
exit $status
