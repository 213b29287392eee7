#!/usr/bin/env bash
# The main job: a bad prompt rolled back by itself, then a good one promoted through every
# step, end to end on loopback (Langfuse emulator, agents, proxy, controller, evaluator,
# users). No account, no cluster. Pass --speed N to go faster, --json for a summary.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
status=0
for scenario in bad-canary good-canary; do
    echo "== coalmine demo --scenario $scenario"
    coalmine demo --scenario "$scenario" "$@" || status=1
    echo
done
exit "$status"
