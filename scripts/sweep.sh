#!/usr/bin/env bash
# Runs scripts/sweep.py with $PYTHON, else the repository's .venv interpreter, else python3. The experiment wrappers
# (finetune_*.sh, pretrain_all.sh, vid2act_sweep.sh) call it with their experiment names; so can you:
#   scripts/sweep.sh fig4 tableA --dry-run
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="${PYTHON:-}"
if [[ -z "$python" ]]; then
  if [[ -x "$here/../.venv/bin/python" ]]; then python="$here/../.venv/bin/python"; else python=python3; fi
fi
exec "$python" "$here/sweep.py" "$@"
