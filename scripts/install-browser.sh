#!/usr/bin/env bash
# The headless browser the dashboard's browser test drives: Debian's chromium and
# chromium-driver (chromedriver), with a font for readable screenshots. Installs
# whichever is missing with apt-get; does nothing when both are there. Needs root (or
# sudo) and apt-get.
set -euo pipefail
missing=()
[ -x /usr/bin/chromium ] || command -v chromium >/dev/null 2>&1 || missing+=(chromium)
[ -x /usr/bin/chromedriver ] || command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
if [ "${#missing[@]}" -eq 0 ]; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-browser: ${missing[*]} missing and apt-get is not available;" \
        "install chromium and chromedriver with your package manager" >&2
    exit 1
fi
sudo=()
if [ "$(id -u)" -ne 0 ]; then
    if ! command -v sudo >/dev/null 2>&1; then
        echo "install-browser: installing ${missing[*]} needs root (or sudo)" >&2
        exit 1
    fi
    sudo=(sudo)
fi
echo "install-browser: installing ${missing[*]}" >&2
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends "${missing[@]}" fonts-liberation
