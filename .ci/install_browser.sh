#!/usr/bin/env bash
# The browser the browser tests (tests/browser) drive: Debian's `chromium` package (never `playwright
# install`; the Python side, playwright and voila, comes from `pip install -e ".[test]"`). Point
# QLEARN_CHROMIUM at another Chromium where there is no apt-get.
set -euo pipefail
exec bash "$(dirname "$0")/install_debian.sh" chromium chromium
