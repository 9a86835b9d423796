#!/usr/bin/env bash
# Figure 4: every method on the six source -> target pairs (1M env steps each by default).
# A thin wrapper around scripts/sweep.py (the experiment table lives in scripts/experiments.py); every option of
# sweep.py works here, e.g.
#   SEEDS="0 1 2" scripts/finetune_fig4.sh --dry-run
#   scripts/finetune_fig4.sh --launcher local --jobs 2 --methods diswm
#   scripts/finetune_fig4.sh --launcher slurm --partition gpu --time 2880
#   scripts/finetune_fig4.sh --preset debug --steps 2000 -- --threads 1     # flags after -- go to dreamer.py
# Environment: SEEDS (default "0 1 2"), STEPS, PRESETS, EXTRA, JOBS, LAUNCHER, CUDA_VISIBLE_DEVICES, PYTHON.
set -euo pipefail
exec "$(dirname "${BASH_SOURCE[0]}")/sweep.sh" fig4 "$@"
