#!/usr/bin/env bash
# Collects colour-distracted videos of the four DisWM source tasks (docs/method.md, "Stage 1") into
# data/<task>/train_eps, ready for `dreamer.py --beta_vae_pretrain True --pretrain_datasets_path data/<task>/train_eps`.
#
#   scripts/collect_sources.sh                                   # random policy, EPISODES per task
#   EPISODES=20 scripts/collect_sources.sh --time_limit 200      # a quick small set; extra flags go to every task
#   POLICY_walker_walk=runs/walker/checkpoint.pt TASKS=walker_walk scripts/collect_sources.sh --sample_actions True
#
# Environment variables:
#   POLICY          policy of every task: 'random' (default) or a run's checkpoint.pt
#   POLICY_<task>   policy of one task, overriding POLICY (e.g. POLICY_cheetah_run=runs/cheetah/checkpoint.pt;
#                   POLICY_CHEETAH_RUN works too)
#   EPISODES        episodes per task (default 2000: with the dmc2gym preset an episode is 501 frames, so about the
#                   paper's 1M frames per task; at ~30 ms per agent step on a CPU that is ~8 h per task)
#   TASKS           space-separated DMC tasks (default: cheetah_run finger_spin reacher_easy walker_walk)
#   SEED            seed of the envs, colours and random actions (default 0)
#   DATA            destination root (default: data/ in the repository)
#   PYTHON          interpreter (default: the repository's .venv, else python)
#   OUT_SUBDIR      folder below $DATA/<task> that receives the episodes (default train_eps; empty: $DATA/<task>)
# Any further arguments are passed to scripts/collect_videos.py for every task (e.g. --color.max_delta 0.2).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON=python
TASKS="${TASKS:-cheetah_run finger_spin reacher_easy walker_walk}"
EPISODES="${EPISODES:-2000}"
SEED="${SEED:-0}"
DATA="${DATA:-$ROOT/data}"
OUT_SUBDIR="${OUT_SUBDIR-train_eps}"
export MUJOCO_GL="${MUJOCO_GL:-egl}"

for task in $TASKS; do
  lower="POLICY_${task}"
  upper="POLICY_${task^^}"
  policy="${!lower:-${!upper:-${POLICY:-random}}}"
  out="$DATA/$task${OUT_SUBDIR:+/$OUT_SUBDIR}"
  echo "== $task: policy $policy, $EPISODES episodes -> $out"
  "$PYTHON" "$ROOT/scripts/collect_videos.py" --task "dmc2gym_${task}" --policy "$policy" \
    --episodes "$EPISODES" --out "$out" --seed "$SEED" "$@"
done
