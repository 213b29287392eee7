#!/usr/bin/env bash
# Install Debian packages with apt-get (through sudo when not root), for the scripts that
# need system tools: scripts/apt-install.sh WHO PACKAGE... (WHO names the caller in
# messages). Fails with a one-line reason when apt-get or the rights are missing.
set -euo pipefail
who="$1"
shift
if ! command -v apt-get >/dev/null 2>&1; then
    echo "$who: $* missing and apt-get is not available; install them with your package manager" >&2
    exit 1
fi
sudo=()
if [ "$(id -u)" -ne 0 ]; then
    if ! command -v sudo >/dev/null 2>&1; then
        echo "$who: installing $* needs root (or sudo)" >&2
        exit 1
    fi
    sudo=(sudo)
fi
echo "$who: installing $*" >&2
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
