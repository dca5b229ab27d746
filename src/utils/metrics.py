"""Ranking metrics. Ties count against the true item, as in ReChorus: a model that scores every
candidate equally ranks the truth last, not first."""
from __future__ import annotations

import numpy as np


def rank_of_truth(predictions: np.ndarray) -> np.ndarray:
    """1-based rank of column 0 among each row's candidates, ties counted against it."""
    return (predictions >= predictions[:, :1]).sum(axis=1)


def ranking_metrics(ranks: np.ndarray, topk: list[int], metrics: list[str]) -> dict[str, float]:
    """HR@K and NDCG@K from the truth's ranks (one relevant item per row)."""
    ranks = np.asarray(ranks)
    results = {}
    for k in topk:
        hit = ranks <= k
        for metric in metrics:
            key = f'{metric}@{k}'
            if metric == 'HR':
                results[key] = float(hit.mean())
            elif metric == 'NDCG':
                results[key] = float((hit / np.log2(ranks + 1)).mean())
            else:
                raise ValueError(f'undefined evaluation metric {metric!r}: use HR or NDCG')
    return results


def format_metrics(results: dict[str, float]) -> str:
    """ReChorus' one-line rendering: ``HR@5:0.4027,NDCG@5:0.2751``."""
    return ','.join(f'{k}:{v:<.4f}' for k, v in results.items())
