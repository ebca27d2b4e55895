#!/usr/bin/env bash
# Installs Node.js and npm for the TypeScript client library (sdk/js) when they are missing:
# Node 18 or newer (for `node --test` and WebCrypto), from the distribution's packages
# (Debian 12 ships Node 18, Ubuntu 24.04 Node 18, Debian 13 Node 20). Safe to run again.
set -euo pipefail

need_major=18
have_major=0
if command -v node >/dev/null 2>&1; then
  have_major=$(node -p 'process.versions.node.split(".")[0]')
fi

if [ "$have_major" -lt "$need_major" ] || ! command -v npm >/dev/null 2>&1; then
  echo "install-node: installing nodejs and npm (need Node >= $need_major, have ${have_major})" >&2
  sudo_cmd=""
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "install-node: need root or sudo to apt-get install nodejs npm" >&2; exit 1; }
    sudo_cmd=sudo
  fi
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq nodejs npm >/dev/null
  have_major=$(node -p 'process.versions.node.split(".")[0]')
  if [ "$have_major" -lt "$need_major" ]; then
    echo "install-node: the distribution's Node is $(node --version); sdk/js needs $need_major or newer (see https://nodejs.org/en/download/package-manager)" >&2
    exit 1
  fi
fi
