#!/usr/bin/env bash
# System tools the proxy benchmarks need: nginx (the reference proxy), wrk (maximum
# throughput) and valgrind (instructions per request). Installs whichever is missing
# with apt-get; does nothing when all are there. Needs root (or sudo) and apt-get.
set -euo pipefail
missing=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v valgrind >/dev/null 2>&1 || missing+=(valgrind)
if [ "${#missing[@]}" -eq 0 ]; then
    exit 0
fi
exec "$(dirname "$0")/apt-install.sh" bench-deps "${missing[@]}"
