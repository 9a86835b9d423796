#!/usr/bin/env bash
# Vid2Act's DMC setting: the multi-task teacher per target (stage `vid2act_teacher`, on the offline datasets of
# cheetah_run hopper_stand walker_walk walker_run in data/vid2act/<task>/, see scripts/collect_vid2act_sources.sh),
# then the online runs on quadruped_walk / quadruped_run of Vid2Act, DreamerV2, APV and DisWM (experiment `vid2act`;
# APV and DisWM load runs/pretrain/walker_walk, so add `pretrain` or run scripts/pretrain_all.sh first).
# A thin wrapper around scripts/sweep.py (the experiment table lives in scripts/experiments.py); every option of
# sweep.py works here, e.g.
#   SEEDS="0 1 2" scripts/vid2act_sweep.sh --dry-run
#   scripts/vid2act_sweep.sh --launcher local --jobs 2 --methods vid2act dreamerv2   # teachers first, then online
#   scripts/vid2act_sweep.sh --launcher slurm --partition gpu --time 2880            # online jobs wait for teachers
#   scripts/vid2act_sweep.sh --preset debug --steps 2000 -- --threads 1              # flags after -- go to dreamer.py
# Environment: SEEDS (default "0 1 2"), STEPS, PRETRAIN_STEPS, PRESETS, EXTRA, JOBS, LAUNCHER, CUDA_VISIBLE_DEVICES,
# PYTHON.
set -euo pipefail
exec "$(dirname "${BASH_SOURCE[0]}")/sweep.sh" vid2act_teacher vid2act "$@"
