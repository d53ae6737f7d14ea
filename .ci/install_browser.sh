#!/usr/bin/env bash
# Install the browser the browser tests (tests/browser) drive: Debian's `chromium` package.
# Idempotent: does nothing when chromium is already installed. Nothing else downloads a browser
# (never `playwright install`); the Python side (playwright, voila) comes from `pip install -e ".[test]"`.
set -euo pipefail

if command -v chromium >/dev/null 2>&1; then
  echo "install_browser: $(chromium --version 2>/dev/null | head -n 1) already installed"
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install_browser: no apt-get here; install Chromium with your package manager" \
       "and point QLEARN_CHROMIUM at its executable" >&2
  exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update
$SUDO apt-get install -y chromium
echo "install_browser: $(chromium --version 2>/dev/null | head -n 1) installed"
