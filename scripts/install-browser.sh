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
exec "$(dirname "$0")/apt-install.sh" install-browser "${missing[@]}" fonts-liberation
