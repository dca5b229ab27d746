#!/usr/bin/env bash
# One device-machine call (issues 3, 4): Office KDA vs KDA_LRD over 5 seeds and two LRD variants over
# 3 seeds, all at once on one GPU through exp.py, each run ending by --time_budget so that everything
# is back before the call's limit. Here first:
#   python bench/prepare_device_data.py Office MovieLens_100k
# then run with carry ["data/Office", "data/MovieLens_100k"]:  bash bench/gpu_experiments.sh
# Results under $OUT: gpu.txt, smoke.txt, office_main.csv, office_variants.csv, logs.tgz, exp.txt.
set -uo pipefail
OUT=${OUT:-/tmp/gpu_out}; mkdir -p "$OUT"
BUDGET=${BUDGET:-420}      # seconds of training loop per run
DEADLINE=${DEADLINE:-560}  # seconds after start when results are packed, finished or not
T0=$(date +%s)
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1
pack() { tar czf "$OUT/logs.tgz" log results 2>/dev/null; cp results/*.csv "$OUT/" 2>/dev/null; }
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))"
  nproc; } > "$OUT/gpu.txt" 2>&1
if command -v nvidia-cuda-mps-control >/dev/null; then  # concurrent kernels from the 16 processes
  export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps_pipe CUDA_MPS_LOG_DIRECTORY=/tmp/mps_log
  mkdir -p /tmp/mps_pipe /tmp/mps_log
  if timeout 10 nvidia-cuda-mps-control -d && timeout 30 python3 -c \
      "import torch; print('mps probe', (torch.ones(8, device='cuda') * 2).sum().item())" >> "$OUT/gpu.txt" 2>&1; then
    echo "MPS on" >> "$OUT/gpu.txt"
  else
    echo quit | timeout 10 nvidia-cuda-mps-control; unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY
    echo "MPS off (failed to start)" >> "$OUT/gpu.txt"
  fi
else
  echo "MPS off (no nvidia-cuda-mps-control)" >> "$OUT/gpu.txt"
fi
cat "$OUT/gpu.txt"
KDA="--emb_size 64 --include_attr 1 --include_val 1 --freq_rand 1 --lr 1e-3 --l2 1e-6 --num_heads 4 --num_layers 5 --gamma -1 --history_max 20 --path data --gpu 0 --save_final_results 0"
# Smoke test and solo timing (also builds the corpus caches the runs share): one KDA_LRD epoch.
timeout 120 python3 src/main.py --model_name KDA_LRD --dataset Office $KDA --plm_name feat:minilm --epoch 1 \
  --log_file log/smoke.txt --model_path /tmp/smoke.pt > "$OUT/smoke.txt" 2>&1
rc=$?; grep -E "Epoch|Test After|Error|error" "$OUT/smoke.txt" | tail -5
if [ $rc -ne 0 ]; then tail -30 "$OUT/smoke.txt"; pack; exit 1; fi
mkdir -p results
printf '%s\n' "--model_name KDA" "--model_name KDA_LRD --plm_name feat:minilm" > results/office_main.sh
printf '%s\n' "--model_name KDA_LRD --plm_name feat:minilm --lrd_feature id" \
              "--model_name KDA_LRD --plm_name feat:minilm --lamda 0.1" > results/office_variants.sh
COMMON="--base '--dataset Office $KDA --time_budget $BUDGET' --timeout $((BUDGET + 120))"
eval python3 src/exp.py run --commands results/office_main.sh $COMMON --n_seeds 5 --jobs 10 \
  --out results/office_main.csv > "$OUT/exp.txt" 2>&1 &
eval python3 src/exp.py run --commands results/office_variants.sh $COMMON --n_seeds 3 --jobs 6 \
  --out results/office_variants.csv >> "$OUT/exp.txt" 2>&1 &
while [ -n "$(jobs -rp)" ] && [ $(( $(date +%s) - T0 )) -lt "$DEADLINE" ]; do
  sleep 10; [ $(( ($(date +%s) - T0) % 60 )) -lt 10 ] && nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader
done
echo "elapsed $(( $(date +%s) - T0 )) s; running: $(jobs -rp | wc -l)"
pack
grep -h "Stopped by\|Early stop at\|Best Iter" -r log --include=*.txt | sort | uniq -c | sort -rn | head -5
python3 - <<'PY'
import glob, pandas as pd
for path in sorted(glob.glob('results/*.csv')):
    df = pd.read_csv(path)
    cols = [c for c in ['model', 'seed', 'status', 'epochs', 'best_epoch', 'stop_reason', 'wall_s', 'dev_NDCG@5', 'test_HR@5', 'test_NDCG@5'] if c in df]
    print(path); print(df[cols].to_string())
PY
