#!/usr/bin/env bash
# One device-machine call: exp.py grids run at once on one GPU (MPS when it starts), each run ending by
# --time_budget so that everything is back before the call's limit. Here first:
#   python bench/prepare_device_data.py Office
# then, with carry ["data/Office"]:
#   BUDGET=420 DEADLINE=560 bench/gpu_grid.sh office_main.txt:5:0 office_variants.txt:3:0
# Each argument is GRID_FILE:N_SEEDS:SEED0 (files in bench/grids/, on top of office_kda_base.txt);
# all runs of all grids start at once. Results under $OUT: gpu.txt, <grid>.csv, logs.tgz, exp.txt, and
# with KEEP_MODELS='*-s0-*' (a find -path pattern) models.tgz with those checkpoints, not their .state.pt
# (for the analyses; a KDA_LRD checkpoint is ~2 MB and a returned file may hold 16 MiB). With FUSE=1, once
# the grids are done, every trained checkpoint is evaluated again with --text_fusion 1 (no training: exp.py run --checkpoints;
# KDA/RCF as KDA_LRD/RCF_LRD --include_lrd 0, i.e. KDA+TF in the report) into <grid>_tf_<model>.csv.
set -uo pipefail
OUT=${OUT:-/tmp/gpu_out}; mkdir -p "$OUT" results
BUDGET=${BUDGET:-420}      # seconds of training loop per run
DEADLINE=${DEADLINE:-560}  # seconds after start when results are packed, finished or not
BASE=${BASE:-bench/grids/office_kda_base.txt}
T0=$(date +%s)
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))"; nproc; } > "$OUT/gpu.txt" 2>&1
if command -v nvidia-cuda-mps-control >/dev/null; then  # lets the small kernels of all runs share the GPU
  export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps_pipe CUDA_MPS_LOG_DIRECTORY=/tmp/mps_log
  mkdir -p /tmp/mps_pipe /tmp/mps_log
  if timeout 10 nvidia-cuda-mps-control -d && timeout 30 python3 -c \
      "import torch; print('mps probe', (torch.ones(8, device='cuda') * 2).sum().item())" >> "$OUT/gpu.txt" 2>&1; then
    echo "MPS on" >> "$OUT/gpu.txt"
  else
    echo quit | timeout 10 nvidia-cuda-mps-control; unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY
    echo "MPS off (failed to start)" >> "$OUT/gpu.txt"
  fi
fi
cat "$OUT/gpu.txt"
base="$(grep -v '^#' "$BASE") --time_budget $BUDGET"
total=0; names=()
for spec in "$@"; do
  IFS=: read -r file n seed0 <<< "$spec"; name=${file%.txt}; names+=("$name")
  jobs=$(( n * $(grep -cv '^#' "bench/grids/$file") )); total=$(( total + jobs ))
  python3 src/exp.py run --commands "bench/grids/$file" --base "$base" --n_seeds "$n" --seed0 "$seed0" \
    --jobs "$jobs" --timeout $(( BUDGET + 120 )) --out "results/$name.csv" >> "$OUT/exp.txt" 2>&1 &
done
echo "$total runs started"
while [ -n "$(jobs -rp)" ] && [ $(( $(date +%s) - T0 )) -lt "$DEADLINE" ]; do
  sleep 10; [ $(( ($(date +%s) - T0) % 60 )) -lt 10 ] && nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader
done
echo "elapsed $(( $(date +%s) - T0 )) s; still running: $(jobs -rp | wc -l)"
if [ -n "${FUSE:-}" ] && [ -z "$(jobs -rp)" ]; then
  for name in "${names[@]}"; do
    for m in KDA RCF KDA_LRD RCF_LRD; do
      if [[ $m == *_LRD ]]; then fuse="--text_fusion 1"
      else fuse="--model_name ${m}_LRD --include_lrd 0 --text_fusion 1 --plm_name feat:minilm"; fi
      grep -q "^[^,]*,$m," "results/$name.csv" 2>/dev/null || continue
      python3 src/exp.py run --checkpoints "results/$name.csv" --checkpoint_models "$m" --base "$fuse" \
        --jobs 16 --out "results/${name}_tf_$m.csv" >> "$OUT/exp.txt" 2>&1 &
    done
  done
  while [ -n "$(jobs -rp)" ] && [ $(( $(date +%s) - T0 )) -lt "$DEADLINE" ]; do sleep 5; done
  echo "text fusion done at $(( $(date +%s) - T0 )) s; still running: $(jobs -rp | wc -l)"
fi
tar czf "$OUT/logs.tgz" log results 2>/dev/null; cp results/*.csv "$OUT/" 2>/dev/null
[ -n "${KEEP_MODELS:-}" ] && find model -path "$KEEP_MODELS" -name '*.pt' ! -name '*.state.pt' -print0 | tar czf "$OUT/models.tgz" --null -T -
python3 - <<'PY'
import glob, pandas as pd
for path in sorted(glob.glob('results/*.csv')):
    df = pd.read_csv(path)
    cols = [c for c in ['model', 'seed', 'status', 'epochs', 'best_epoch', 'stop_reason', 'dev_NDCG@5', 'test_HR@5', 'test_NDCG@5'] if c in df]
    print(path); print(df[cols].to_string())
PY
