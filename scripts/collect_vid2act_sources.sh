#!/usr/bin/env bash
# Collects the offline source datasets of the Vid2Act baseline (docs/vid2act.md, "Commands" and "Design") into
# $DATA/<task>/, the layout `dreamer.py --method_name vid2act --offline_dir $DATA --source_tasks a,b,...` reads
# (actions and rewards included).
#
#   scripts/collect_vid2act_sources.sh                                     # the release's DMC sources, random policy
#   EPISODES=4 DATA=/tmp/D TASKS="finger_spin cheetah_run" scripts/collect_vid2act_sources.sh --time_limit 100
#   POLICY_walker_walk=runs/walker/checkpoint.pt scripts/collect_vid2act_sources.sh   # expert data for one task
#
# The release's sources (its configs.yaml):
#   DMC:        cheetah_run hopper_stand walker_walk walker_run      (target: quadruped_walk / quadruped_run)
#   Meta-World: door-close faucet-open handle-press plate-slide reach-wall window-close   (target: door-lock)
# Only the DMC ones can be collected here: this project's `env` package has only the DrawerWorld tasks of Meta-World
# (metaworld_drawer-{open,close}-{v1,v3}), so the six Meta-World sources (and the door-lock target) are not available;
# adding them is env work, not collection work. Their data would go to $DATA/<task>/ the same way.
# Vid2Act's sources are expert trajectories ([R]: "purely expert behavior"); the default random policy only gives a
# quick dataset. For expert data train a DreamerV2 agent per task and pass its checkpoint with POLICY_<task>.
#
# Environment variables:
#   POLICY          policy of every task: 'random' (default) or a run's checkpoint.pt
#   POLICY_<task>   policy of one task, overriding POLICY (POLICY_hopper_stand=... or POLICY_HOPPER_STAND=...)
#   EPISODES        episodes per task (default 100: 501 frames each with the dmc2gym preset, ~600 MiB per task)
#   TASKS           space-separated DMC tasks (default: cheetah_run hopper_stand walker_walk walker_run)
#   SEED            seed of the envs, colours and random actions (default 0)
#   DATA            destination root (default: data/vid2act in the repository)
#   PYTHON          interpreter (default: the repository's .venv, else python)
# Any further arguments are passed to scripts/collect_videos.py for every task (e.g. --time_limit 1000).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# The collection loop is scripts/collect_sources.sh's, with this baseline's defaults and layout ($DATA/<task>/).
export TASKS="${TASKS:-cheetah_run hopper_stand walker_walk walker_run}"
export EPISODES="${EPISODES:-100}"
export DATA="${DATA:-$ROOT/data/vid2act}"
OUT_SUBDIR='' bash "$ROOT/scripts/collect_sources.sh" --save_actions True "$@"
echo "Done. Pretrain the teacher with:"
echo "  python dreamer.py --configs defaults dmc2gym --task dmc2gym_quadruped_walk --method_name vid2act \\"
echo "    --vid2act_pretrain True --source_tasks $(echo $TASKS | tr ' ' ',') --offline_dir $DATA --logdir runs/vid2act_teacher"
