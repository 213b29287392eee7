#!/usr/bin/env bash
# System tools the proxy benchmark needs: nginx (the reference proxy) and wrk (maximum
# throughput). Installs whichever is missing with apt-get; does nothing when both are
# there. Needs root (or sudo) and apt-get.
set -euo pipefail
missing=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
if [ "${#missing[@]}" -eq 0 ]; then
    exit 0
fi
exec "$(dirname "$0")/apt-install.sh" bench-deps "${missing[@]}"
