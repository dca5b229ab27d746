"""Office, batch 256, on this machine: SASRec, KDA and KDA_LRD side by side (issues 2–4 figures).

Each model runs in its own process (so peak RSS is its own) via ``bench_model.py``:

    python bench/bench_office.py [--path ../shared/data] [--epochs 2] [--threads 2] [--autocast bf16]

Prints one JSON line per model and a markdown table to paste into docs/performance.md.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
RELATION_ARGS = ['--include_attr', '1', '--include_val', '1', '--l2', '1e-6', '--num_heads', '4',
                 '--num_layers', '5', '--gamma', '-1', '--history_max', '20']
MODELS = {
    'SASRec': ['--model_name', 'SASRec', '--l2', '1e-6', '--num_heads', '4', '--history_max', '20'],
    'KDA': ['--model_name', 'KDA', '--freq_rand', '1', '--lr', '1e-3'] + RELATION_ARGS,
    'KDA_LRD': ['--model_name', 'KDA_LRD', '--freq_rand', '1', '--lr', '1e-3',
                '--latent_relation_num', '8'] + RELATION_ARGS,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--path', default=os.path.join(HERE, '..', '..', 'shared', 'data'))
    parser.add_argument('--dataset', default='Office')
    parser.add_argument('--epochs', type=int, default=2)
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--autocast', default='')
    parser.add_argument('--gpu', default='')
    parser.add_argument('--models', default=','.join(MODELS))
    args = parser.parse_args()
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    rows = []
    for name in args.models.split(','):
        cmd = [sys.executable, os.path.join(HERE, 'bench_model.py'), *MODELS[name], '--dataset', args.dataset,
               '--path', args.path, '--gpu', args.gpu, '--batch_size', '256', '--bench_epochs', str(args.epochs),
               '--autocast', args.autocast]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if out.returncode != 0:
            print(f'{name} failed:\n{out.stderr[-2000:]}', file=sys.stderr)
            continue
        row = json.loads(out.stdout.strip().splitlines()[-1])
        print(json.dumps(row), flush=True)
        rows.append(row)
    print('\n| model | corpus build s | train epoch s (median) | data share | dev eval s | dev+test eval s '
          '| peak RSS GB |')
    print('|---|---|---|---|---|---|---|')
    for r in rows:
        print(f"| {r['model']} | {r['corpus_build_s']} | {r['epoch_s_median']} | {r.get('data_share_of_epoch', '')} | "
              f"{r['dev_eval_s']} | {r['dev_plus_test_eval_s']} | {r['peak_rss_gb']} |")


if __name__ == '__main__':
    main()
