#!/usr/bin/env bash
# Installs what building and testing Courier needs on Debian/Ubuntu, only when missing:
# clang + libclang (RocksDB's Rust bindings), a C++ compiler, make, and tmux (the CLI's
# pseudo-terminal test). Safe to run again: it does nothing when all is there.
set -euo pipefail

need=()
command -v clang >/dev/null 2>&1 || need+=(clang)
ls /usr/lib/llvm-*/lib/libclang*.so* /usr/lib/x86_64-linux-gnu/libclang*.so* >/dev/null 2>&1 || need+=(libclang-dev)
command -v g++ >/dev/null 2>&1 || need+=(g++)
command -v make >/dev/null 2>&1 || need+=(make)
command -v tmux >/dev/null 2>&1 || need+=(tmux)
command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)

if [ ${#need[@]} -gt 0 ]; then
  echo "install-deps: installing ${need[*]}" >&2
  sudo_cmd=""
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "install-deps: need root or sudo to apt-get install ${need[*]}" >&2; exit 1; }
    sudo_cmd=sudo
  fi
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${need[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "install-deps: no Rust toolchain; installing rustup (stable)" >&2
  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal -c clippy,rustfmt
  echo "install-deps: run 'source \$HOME/.cargo/env' or open a new shell, then run make again" >&2
fi
