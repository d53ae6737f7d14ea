#!/usr/bin/env bash
# The sandbox the grader runs every submission in (qlearn/grading/sandbox.py): Debian's `bubblewrap`
# (the `bwrap` command). tests/test_grading_hostile.py attacks it; without bwrap the grader refuses to
# grade unless told --unsafe-no-sandbox.
set -euo pipefail
exec bash "$(dirname "$0")/install_debian.sh" bwrap bubblewrap
