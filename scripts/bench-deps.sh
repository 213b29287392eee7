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
if ! command -v apt-get >/dev/null 2>&1; then
    echo "bench-deps: ${missing[*]} missing and apt-get is not available;" \
        "install ${missing[*]} with your package manager" >&2
    exit 1
fi
sudo=()
if [ "$(id -u)" -ne 0 ]; then
    if ! command -v sudo >/dev/null 2>&1; then
        echo "bench-deps: installing ${missing[*]} needs root (or sudo)" >&2
        exit 1
    fi
    sudo=(sudo)
fi
echo "bench-deps: installing ${missing[*]}" >&2
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
