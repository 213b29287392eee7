#!/usr/bin/env bash
# Every check: lint, format, types, layering contracts, and the test suite.
# --fast (first argument): the same checks, and the tests that are not marked slow,
# browser, statistical or install; no Debian packages installed (the alert rules'
# promtool tests run when promtool is there, and are skipped otherwise).
# Any other argument goes to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
fast=false
if [ "${1:-}" = "--fast" ]; then
    fast=true
    shift
fi
scripts/setup.sh
# the dashboard's browser test drives Debian's chromium; under CI a missing browser fails
if ! $fast && ! scripts/install-browser.sh; then
    if [ "${CI:-}" = "true" ]; then exit 1; fi
    echo "warning: no chromium/chromedriver: the dashboard's browser test will be skipped" >&2
fi
# the alert rules' tests run Debian's promtool and a real Prometheus; under CI they must
if ! $fast && ! scripts/install-prometheus.sh; then
    if [ "${CI:-}" = "true" ]; then exit 1; fi
    echo "warning: no prometheus/promtool: the alert rules' tests will be skipped" >&2
fi
export PATH="$PWD/.venv/bin:$PATH"
echo "== ruff check"; ruff check .
echo "== ruff format --check"; ruff format --check .
echo "== mypy"; mypy
echo "== import-linter"; lint-imports
if $fast; then
    echo "== pytest (fast)"
    pytest -m "not slow and not browser and not statistical and not install" "$@"
else
    echo "== pytest"; pytest "$@"
fi
