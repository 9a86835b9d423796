#!/usr/bin/env bash
# The test command of the README: sets up the environment, then runs the whole test suite on the CPU, its test files
# spread over TEST_WORKERS processes (default 2; most tests run dreamer.py in a single-threaded subprocess, so two
# workers keep both cores of a 2-core machine busy). TEST_WORKERS=0 runs everything in one process.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh
workers="${TEST_WORKERS:-2}"
if [ "$workers" = "0" ]; then
  python -m pytest -q "$@"
else
  python -m pytest -q -n "$workers" --dist loadfile "$@"
fi
