#!/usr/bin/env bash
# The main job: replay a recorded bad-canary release through the judge, then a good one.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
for stream in bad-canary good-canary; do
    echo "== coalmine replay: sandbox/streams/$stream.jsonl"
    coalmine replay --policy sandbox/policies/replay-demo.yaml \
        --samples "sandbox/streams/$stream.jsonl"
    echo
done
