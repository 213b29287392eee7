#!/usr/bin/env bash
# Prometheus and promtool for the alert rules' tests: Debian's prometheus package.
# Installs it with apt-get when either command is missing; does nothing otherwise.
# Needs root (or sudo) and apt-get.
set -euo pipefail
if command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1; then
    exit 0
fi
exec "$(dirname "$0")/apt-install.sh" install-prometheus prometheus
