#!/usr/bin/env bash
# Table A: reacher_easy -> cheetah_run and walker_walk -> humanoid_walk, every method.
# A thin wrapper around scripts/sweep.py (the experiment table lives in scripts/experiments.py); every option of
# sweep.py works here, e.g.
#   SEEDS="0 1 2" scripts/finetune_tableA.sh --dry-run
#   scripts/finetune_tableA.sh --launcher local --jobs 2 --methods diswm
#   scripts/finetune_tableA.sh --launcher slurm --partition gpu --time 2880
#   scripts/finetune_tableA.sh --preset debug --steps 2000 -- --threads 1     # flags after -- go to dreamer.py
# Environment: SEEDS (default "0 1 2"), STEPS, PRESETS, EXTRA, JOBS, LAUNCHER, CUDA_VISIBLE_DEVICES, PYTHON.
set -euo pipefail
exec "$(dirname "${BASH_SOURCE[0]}")/sweep.sh" tableA "$@"
