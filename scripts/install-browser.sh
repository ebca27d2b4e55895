#!/usr/bin/env bash
# Installs Debian's Chromium for the web page's browser test (web/test/) when it is missing.
# Playwright drives it as it is (playwright-core, no browser download). Safe to run again.
set -euo pipefail

if [ -x /usr/bin/chromium ] || [ -n "${CHROMIUM:-}" ]; then
  exit 0
fi
echo "install-browser: installing chromium" >&2
sudo_cmd=""
if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null 2>&1 || { echo "install-browser: need root or sudo to apt-get install chromium" >&2; exit 1; }
  sudo_cmd=sudo
fi
$sudo_cmd apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq chromium >/dev/null
