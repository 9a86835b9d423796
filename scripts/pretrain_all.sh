#!/usr/bin/env bash
# Stage 1 of every experiment: action-free beta-VAE video pretraining on each source task
# (cheetah_run, finger_spin, reacher_easy, walker_walk); needs the episodes in data/<source>/train_eps.
# A thin wrapper around scripts/sweep.py (the experiment table lives in scripts/experiments.py); every option of
# sweep.py works here, e.g.
#   SEEDS="0 1 2" scripts/pretrain_all.sh --dry-run
#   scripts/pretrain_all.sh --launcher local --jobs 2 --methods diswm
#   scripts/pretrain_all.sh --launcher slurm --partition gpu --time 2880
#   scripts/pretrain_all.sh --preset debug --steps 2000 -- --threads 1     # flags after -- go to dreamer.py
# Environment: SEEDS (default "0 1 2"), STEPS, PRESETS, EXTRA, JOBS, LAUNCHER, CUDA_VISIBLE_DEVICES, PYTHON.
set -euo pipefail
exec "$(dirname "${BASH_SOURCE[0]}")/sweep.sh" pretrain "$@"
