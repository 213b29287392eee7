#!/usr/bin/env bash
# Benchmarks: decision quality against the incumbents' rules (both traffic splits),
# replay throughput, emulator speed and proxy speed (next to nginx; scripts/bench-deps.sh
# installs nginx and wrk with apt-get when they are missing), controller and cluster
# speed, and the span exporter and the notification queue against the libraries that
# could replace them (about 7 minutes of the total), the proxy's capacity on one core and
# its upstream transport against httpx, httpcore and aiohttp (about 12 minutes). Raw
# results go to bench/out/, the tables to docs/benchmarks.md.
# Takes about 40 minutes on 2 cores; RUNS=300 scripts/bench.sh for a quicker look.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
RUNS="${RUNS:-2000}"
python -m bench.harness --runs "$RUNS" --traffic 10/90 --out bench/out/1090
python -m bench.harness --runs "$RUNS" --traffic 50/50 --out bench/out/5050
python -m bench.harness --runs "$RUNS" --traffic 50/50 --sampled-from 10000 --out bench/out/sampled
python -m bench.replay_speed --lines 1000000 --out bench/out
python -m bench.emulator_speed --out bench/out
scripts/bench-deps.sh
python -m bench.proxy_speed --out bench/out
python -m bench.proxy_capacity --out bench/out
python -m bench.proxy_instructions --out bench/out
python -m bench.transport_choice --out bench/out
python -m bench.controller_speed --out bench/out
python -m bench.controller_memory --out bench/out
python -m bench.controller_memory --from-proxies --rate 10000 --hours 24 --out bench/out
python -m bench.sampled_reads --out bench/out
python -m bench.scale --out bench/out
python -m bench.paired_shadow --runs 2000 --dataset-runs 2000 --workers 2 --out bench/out
python -m bench.cluster_speed --out bench/out
python -m bench.gateway_rollback --out bench/out
python -m bench.span_export --out bench/out
python -m bench.notify_queue --out bench/out
python -m bench.summary --out bench/out --doc docs/benchmarks.md
