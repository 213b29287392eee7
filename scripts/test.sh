#!/usr/bin/env bash
# Every check: lint, format, types, layering contracts, and the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# the dashboard's browser test drives Debian's chromium; under CI a missing browser fails
if ! scripts/install-browser.sh; then
    if [ "${CI:-}" = "true" ]; then exit 1; fi
    echo "warning: no chromium/chromedriver: the dashboard's browser test will be skipped" >&2
fi
# the alert rules' tests run Debian's promtool and a real Prometheus; under CI they must
if ! scripts/install-prometheus.sh; then
    if [ "${CI:-}" = "true" ]; then exit 1; fi
    echo "warning: no prometheus/promtool: the alert rules' tests will be skipped" >&2
fi
export PATH="$PWD/.venv/bin:$PATH"
echo "== ruff check"; ruff check .
echo "== ruff format --check"; ruff format --check .
echo "== mypy"; mypy
echo "== import-linter"; lint-imports
echo "== pytest"; pytest "$@"
