#!/usr/bin/env bash
# The main job of the README: the whole DisWM pipeline at toy scale (about 6 minutes on a 2-core CPU).
#   1. collect colour-distracted reacher_easy videos with a random policy   (stage-1 data; no actions needed)
#   2. pretrain the action-free beta-VAE video model on them                (stage 1)
#   3. finetune DisWM on cheetah_run with latent distillation from it       (stages 2-3), colour switch at half
# Set OUT=... to write elsewhere, DEVICE=cuda to use a GPU. Rerunning resumes every stage.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh
OUT="${OUT:-runs/demo}"
DEVICE="${DEVICE:-auto}"
VIDEOS="$OUT/videos/reacher_easy"

echo "== 1/3 collecting reacher_easy videos into $VIDEOS"
if [ "$(ls "$VIDEOS" 2>/dev/null | grep -c '\.npz$')" -lt 20 ]; then
  rm -rf "$VIDEOS"
  python scripts/collect_videos.py --task dmc2gym_reacher_easy --policy random --episodes 20 --out "$VIDEOS" \
    --seed 0 --time_limit 200 --progress False
fi

echo "== 2/3 pretraining the action-free beta-VAE video model (stage 1)"
python dreamer.py --configs defaults dmc2gym --task dmc2gym_reacher_easy --logdir "$OUT/pretrain" --seed 0 \
  --beta_vae_pretrain True --beta_vae True --pretrain_action_num 2 --pretrain_datasets_path "$VIDEOS" \
  --pretrain_steps 4800 --batch_size 16 --batch_length 16 --pretrain_save_every 100 --device "$DEVICE"

echo "== 3/3 finetuning DisWM on cheetah_run (stages 2-3)"
python dreamer.py --configs defaults dmc2gym debug --task dmc2gym_cheetah_run --logdir "$OUT/diswm_cheetah_run" \
  --seed 0 --pretrain_checkpoint_path "$OUT/pretrain" --beta_vae True --method_name diswm --distillation True \
  --cross_domain False --source_action_num 2 --action_num_gap 4 --traverse True --color_distractor True \
  --steps 4000 --distill_decay 1000 --device "$DEVICE"

echo
echo "== Done. Where things are:"
echo "  video dataset:          $VIDEOS"
echo "  pretrained video model: $OUT/pretrain/{encoder,decoder,rssm}.pt, meta.json"
echo "  pretraining traversal:  $OUT/pretrain/traverse.png"
echo "  DisWM run:              $OUT/diswm_cheetah_run (metrics.jsonl, checkpoint.pt, train_eps/, eval_eps/)"
echo "  DisWM traversals:       $OUT/diswm_cheetah_run/traversals/"
echo "  TensorBoard:            tensorboard --logdir $OUT"
