#!/usr/bin/env bash
# The GPU checks and timings of docs/benchmarks.md ("A GPU: one NVIDIA H100"), as one script with a time budget:
#   bash scripts/gpu_bench.sh [OUT_DIR] [BUDGET_SECONDS]
# 1. update timings (scripts/bench.py, DreamerV2 16 x 50, the default and official DreamerV2's model, eager and
#    torch.compile in its default and CUDA-graph modes); 2. a short protocol run on the GPU (its clocks split env
#    stepping, updates and evaluation); 3. the tests that touch the device paths, with a GPU visible.
# Each step gets a timeout from what is left of the budget; JSON lines and logs go to OUT_DIR.
# DEVICE=cpu runs the same steps on the CPU (slow: a dry run of the script itself before a GPU session).
set -u
cd "$(dirname "$0")/.."
OUT_DIR=${1:-runs/gpu_bench}
BUDGET=${2:-480}
mkdir -p "$OUT_DIR"
export MUJOCO_GL=${MUJOCO_GL:-egl} PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
START=$(date +%s)
step() {   # step MAX_SECONDS NAME command...: run with a timeout of min(MAX, what is left), log to OUT_DIR/NAME.log
  local max=$1 name=$2; shift 2
  local left=$(( BUDGET - ($(date +%s) - START) ))
  local t=$(( max < left ? max : left ))
  if (( t < 10 )); then echo "== $name: skipped (budget spent)"; return; fi
  echo "== $name (timeout ${t}s, $(( $(date +%s) - START ))s in)"
  timeout "$t" "$@" > "$OUT_DIR/$name.log" 2>&1
  echo "   rc $? after $(( $(date +%s) - START ))s"; tail -n 4 "$OUT_DIR/$name.log"
}
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo "no GPU"; } \
  | tee "$OUT_DIR/machine.txt"
$PY -c "import torch, mujoco; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'mujoco', mujoco.__version__, \
'cpus', __import__('os').cpu_count())" | tee -a "$OUT_DIR/machine.txt"
OFFICIAL="--dyn_stoch 32 --dyn_discrete 32 --cnn_depth 48 --reward_layers 4 --value_layers 4 --reward_scale 1.0 --weight_decay_step 1e-6"
BENCH="$PY scripts/bench.py --batch 16 --length 50 --device $DEVICE --threads 6 --flops False --out $OUT_DIR/bench.jsonl"
step 60 eager_default $BENCH --mode dreamerv2
step 60 eager_official $BENCH --mode dreamerv2 -- $OFFICIAL
step 150 compile_official $BENCH --mode dreamerv2 --compile True -- $OFFICIAL
step 180 cudagraphs_official $BENCH --mode dreamerv2 --compile True -- $OFFICIAL --compile_mode reduce-overhead
step 150 protocol_slice $PY scripts/learning.py --model official --tasks cheetah_run --seeds 0 --steps 3000 \
  --root "$OUT_DIR/learning" --progress False -- --device $DEVICE --threads 6
$PY - "$OUT_DIR" <<'PYEOF' | tee "$OUT_DIR/protocol_clocks.txt"
import glob, json, sys
for path in glob.glob(f'{sys.argv[1]}/learning/*/seed_*/metrics.jsonl'):
    rows = [json.loads(line) for line in open(path)]
    last = {}
    for row in rows:
        last.update(row)
    print(path, {k: last.get(k) for k in ('step', 'updates', 'time_env', 'time_update', 'time_eval', 'eval_return')})
PYEOF
step 200 tests $PY -m pytest -q -x -p no:cacheprovider -n 4 tests/test_run_folder.py tests/test_precision.py \
  tests/test_training.py tests/test_fast_paths.py tests/test_config.py
echo "== done in $(( $(date +%s) - START ))s"
