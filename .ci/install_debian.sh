#!/usr/bin/env bash
# Install one Debian package that provides COMMAND, unless COMMAND is already on the PATH (idempotent).
# Usage: bash .ci/install_debian.sh COMMAND PACKAGE. Nothing else downloads a program: the test suite's
# browser (chromium) and the grader's sandbox (bubblewrap) come from Debian's archive.
set -euo pipefail
cmd="$1" pkg="$2"
if command -v "$cmd" >/dev/null 2>&1; then
  echo "install $pkg: $("$cmd" --version 2>/dev/null | head -n 1) already installed"
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install $pkg: no apt-get here; install $pkg with your package manager" >&2
  exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update
$SUDO apt-get install -y "$pkg"
echo "install $pkg: $("$cmd" --version 2>/dev/null | head -n 1) installed"
