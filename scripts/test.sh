#!/usr/bin/env bash
# The test command of the README: sets up the environment, then runs the whole test suite (CPU, ~12 minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh
python -m pytest -q "$@"
