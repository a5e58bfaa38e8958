#!/usr/bin/env bash
# Every test: the fast unit tests and the lab tests (two container hosts and a VM, deployed for real).
# Arguments go to pytest, e.g. `./test.sh -m "not lab"` for the unit tests alone.
set -euo pipefail
cd "$(dirname "$0")"
./setup.sh
trap '.venv/bin/python -m lab down >/dev/null 2>&1 || true' EXIT
.venv/bin/pytest "$@"
