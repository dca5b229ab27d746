"""Does the text encoder know something a trained model does not? Late fusion on the dev/test candidates.

LRD can only help if the item texts carry preference signal that the ID embeddings fail to learn from the
interactions. This probe measures that directly, without training: for a trained checkpoint it ranks the
evaluation candidates by

    z(model score) + beta * z(text score),   text score = max over history items h of cos(x_h, x_candidate)

(z = standardised over each instance's candidates), picks beta on dev NDCG@5 and reports test. A control
fuses the model with the same similarity computed on its own ID entity embeddings, so a gain from text that
the ID control does not also give is signal the model lacks.

    python bench/probe_text_fusion.py --features data/Office/Office.feat.minilm -- \
        --model_name KDA --dataset Office --path data --include_attr 1 --include_val 1 --freq_rand 1 \
        --num_heads 4 --num_layers 5 --model_path model/KDA/.../KDA__Office__....pt
    python bench/probe_text_fusion.py --features data/Office/Office.feat.minilm \
        --csv docs/runs/kda_cpu_session3.csv \
        --csv docs/runs/kda_cpu_session4.csv --model_name KDA --dataset Office

Arguments after ``--`` are main.py's, exactly as the model was trained; with ``--csv`` every finished run of
the model whose checkpoint still exists is probed (exp.py's results CSV holds each run's arguments) and a
paired t-test over the runs (one per seed when the CSVs hold one configuration) compares fused with plain
test metrics. Prints one JSON line per signal and run.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'src'))

from analysis.trained import Trained, load_trained  # noqa: E402
from utils import experiments as ex  # noqa: E402
from utils import results_csv as rc  # noqa: E402
from utils.metrics import rank_of_truth, ranking_metrics  # noqa: E402
from utils.reports import paired_ttest  # noqa: E402
from utils.text_encoders import load_feature_file  # noqa: E402
from utils.text_fusion import BETAS, TextFusion, fuse  # noqa: E402


def split_scores(trained: Trained, split: str, signals: dict[str, np.ndarray],
                 batch: int = 256) -> dict[str, np.ndarray]:
    """Model scores and each signal's similarity (max cosine to a history item, as ``--text_fusion``
    computes it) for every instance of ``split``."""
    dataset = trained.model_cls.Dataset(trained.model, trained.corpus, split)
    dataset.prepare()
    similarity = {name: TextFusion(vectors).similarity for name, vectors in signals.items()}
    parts: dict[str, list[np.ndarray]] = {'model': [], **{name: [] for name in signals}}
    with torch.no_grad():
        for start in range(0, len(dataset), batch):
            feed = dataset[list(range(start, min(start + batch, len(dataset))))]
            parts['model'].append(trained.model(feed)['prediction'].float().numpy())
            for name in signals:
                parts[name].append(similarity[name](feed['history_items'], feed['item_id']).numpy())
    return {name: np.concatenate(chunks) for name, chunks in parts.items()}


def metrics(scores: np.ndarray) -> dict[str, float]:
    return ranking_metrics(rank_of_truth(scores), [5, 10], ['HR', 'NDCG'])


def fused_metrics(model: np.ndarray, signal: np.ndarray, beta: float) -> dict[str, float]:
    return metrics(fuse(torch.from_numpy(model), torch.from_numpy(signal), beta).numpy())


def probe(features_path: str, main_argv: list[str]) -> list[dict]:
    """One JSON row per signal for the checkpoint ``main_argv`` names."""
    trained = load_trained(main_argv)
    text = load_feature_file(features_path, trained.corpus.n_items).astype(np.float32)
    ids = trained.model.entity_embeddings.weight.detach().float().numpy()[:trained.corpus.n_items]
    signals = {'text': text, 'id_embedding': ids}
    scores = {split: split_scores(trained, split, signals) for split in ('dev', 'test')}
    rows = []
    for name in signals:
        dev = {beta: fused_metrics(scores['dev']['model'], scores['dev'][name], beta)['NDCG@5'] for beta in BETAS}
        best = max(BETAS, key=lambda b: (dev[b], -b))
        rows.append({'signal': name, 'alone_test': _round(metrics(scores['test'][name])),
                     'dev_NDCG@5_by_beta': _round(dev), 'beta': best,
                     'model_test': _round(metrics(scores['test']['model'])),
                     'fused_test': _round(fused_metrics(scores['test']['model'], scores['test'][name], best))})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def _round(values: dict) -> dict:
    return {str(k): round(v, 4) for k, v in values.items()}


def runs_with_checkpoints(csvs: list[str], model_name: str, dataset: str) -> list[tuple[str, int, list[str]]]:
    """(run id, seed, main.py argv) of every finished run in the CSVs whose checkpoint is still on disk."""
    rows, _ = ex.runs_with_checkpoints(rc.read_many(csvs), [model_name])
    rows = rows[rows['dataset'] == dataset]
    runs = [(run_id, int(seed), shlex.split(argv))
            for run_id, seed, argv in zip(rows['run_id'], rows['seed'], rows['argv'])]
    if not runs:
        raise ValueError(f'{", ".join(csvs)}: no finished {model_name} run on {dataset} with its checkpoint on disk')
    return sorted(runs, key=lambda run: (run[1], run[0]))


def run_summary(by_run: dict[str, list[dict]]) -> list[dict]:
    """Per signal and test metric: plain and fused mean ± std over the runs, paired t-test of fused vs plain."""
    out = []
    for i, first in enumerate(next(iter(by_run.values()))):
        for metric in first['model_test']:
            plain = {run: rows[i]['model_test'][metric] for run, rows in by_run.items()}
            fused = {run: rows[i]['fused_test'][metric] for run, rows in by_run.items()}
            t, p, n = paired_ttest(plain, fused)
            out.append({'signal': first['signal'], 'metric': metric, 'runs': n,
                        'plain': f'{np.mean(list(plain.values())):.4f} ± {np.std(list(plain.values()), ddof=1):.4f}',
                        'fused': f'{np.mean(list(fused.values())):.4f} ± {np.std(list(fused.values()), ddof=1):.4f}',
                        't': round(t, 3), 'p': round(p, 5)})
            print(json.dumps(out[-1]), flush=True)
    return out


if __name__ == '__main__':
    argv = sys.argv[1:]
    split = argv.index('--') if '--' in argv else len(argv)
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--features', required=True,
                        help='Item feature matrix in the <Dataset>.feat.<name> format (row = item id).')
    parser.add_argument('--csv', action='append', default=[],
                        help='exp.py results CSV (repeatable): probe every seed of --model_name on --dataset.')
    parser.add_argument('--model_name', help='With --csv: the model whose runs are probed.')
    parser.add_argument('--dataset', help='With --csv: the dataset.')
    opts = parser.parse_args(argv[:split])
    if opts.csv:
        results = {}
        for run_id, seed, main_argv in runs_with_checkpoints(opts.csv, opts.model_name, opts.dataset):
            print(f'# {run_id} (seed {seed})', flush=True)
            results[run_id] = probe(opts.features, main_argv)
        if len(results) > 1:  # a t-test needs two runs
            run_summary(results)
    else:
        probe(opts.features, argv[split + 1:])
