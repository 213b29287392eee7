#!/usr/bin/env bash
# Benchmarks: decision quality against the incumbents' rules, and replay throughput.
# Results go to bench/out/ and the tables to docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
python -m bench.harness "$@"
python -m bench.replay_speed
