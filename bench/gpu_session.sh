#!/usr/bin/env bash
# One prepared device-machine session (issues 3, 4, 6, 7): GPU epoch/eval times of KDA and KDA_LRD
# on Office and on full-size synthetic Electronics, and a torchrun (DDP) run on the GPU.
# Here first: python bench/prepare_device_data.py ; then run with carry ["data/Office"]:
#   bash bench/gpu_session.sh        (writes everything under $OUT)
set -uo pipefail
OUT=${OUT:-/tmp/gpu_out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))" | tee -a "$OUT/gpu.txt"
REL="--include_attr 1 --include_val 1 --l2 1e-6 --num_heads 4 --num_layers 5 --gamma -1 --history_max 20 --freq_rand 1 --lr 1e-3"
for model in KDA KDA_LRD; do
  extra=""; [ "$model" = KDA_LRD ] && extra="--plm_name feat:minilm --lamda 1 --latent_relation_num 8"
  python3 bench/bench_model.py --model_name $model --dataset Office --path data --gpu 0 $REL $extra \
    --bench_epochs 5 2>>"$OUT/errors.txt" | tee -a "$OUT/office.jsonl"
done
python3 data/make_synthetic.py --out data --dataset Electronics_syn 2>>"$OUT/errors.txt" | tail -2 | tee "$OUT/synthetic.txt"
python3 - <<'PY' 2>>"$OUT/errors.txt"
import numpy as np, pandas as pd
n = pd.read_csv('data/Electronics_syn/train.csv', sep='\t', usecols=['item_id'])['item_id'].max()
n = max(n, pd.read_csv('data/Electronics_syn/test.csv', sep='\t', usecols=['item_id'])['item_id'].max())
np.random.default_rng(0).standard_normal((n, 384)).astype(np.float32).tofile('data/Electronics_syn/Electronics_syn.feat.rand')
PY
for model in KDA KDA_LRD; do
  extra=""; [ "$model" = KDA_LRD ] && extra="--plm_name feat:rand --lamda 1 --latent_relation_num 8"
  python3 bench/bench_model.py --model_name $model --dataset Electronics_syn --path data --gpu 0 $REL $extra \
    --bench_epochs 1 2>>"$OUT/errors.txt" | tee -a "$OUT/electronics.jsonl"
done
torchrun --nproc_per_node 1 src/main.py --model_name KDA_LRD --dataset Office --path data --gpu 0 $REL \
  --plm_name feat:minilm --lamda 1 --latent_relation_num 8 --epoch 3 --early_stop 0 \
  --log_file "$OUT/ddp_kda_lrd.txt" --model_path /tmp/ddp.pt --save_final_results 0 > "$OUT/ddp_stdout.txt" 2>&1
tail -5 "$OUT/ddp_kda_lrd.txt"
