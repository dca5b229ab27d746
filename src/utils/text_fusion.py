"""Late fusion of a trained model's scores with the items' text similarity (``--text_fusion 1``).

Evaluation scores become z(model score) + β · z(s), with s = max over the history items h of cos(x_h, x_c) on
the frozen language features x and z standardising over each instance's candidates; β is chosen after training
on the dev set's main metric from ``BETAS`` (training itself is the backbone's, unchanged).

Why: LRD hands the language features to the ranking only through its reconstruction gradient, and on Office
that gave no gain, yet this fusion on five trained KDA seeds raised test HR@5 by .017 (paired t-test p .005;
docs/results.md). Adding the same similarity to the score with a weight learned during training instead kept
KDA on its start-up plateau (seed 0: best dev NDCG@5 .162 against .376), so β is fitted after training, on the
ranking metric itself.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from utils.metrics import rank_of_truth

if TYPE_CHECKING:
    from helpers.BaseRunner import BaseRunner
    from models.BaseModel import BaseModel

BETAS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)


def standardise(scores: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit standard deviation over the last dim (candidates); constant rows become 0."""
    std = scores.std(dim=-1, unbiased=False, keepdim=True)
    return (scores - scores.mean(dim=-1, keepdim=True)) / torch.where(std > 0, std, torch.ones_like(std))


def fuse(scores: torch.Tensor, similarity: torch.Tensor, beta: float) -> torch.Tensor:
    return standardise(scores) + beta * standardise(similarity) if beta else scores


class TextFusion(nn.Module):
    """The similarity, the fused score and the calibration of β; β = 0 (the model's own scores) until calibrated."""

    def __init__(self, features: np.ndarray):
        super().__init__()
        unit = F.normalize(torch.from_numpy(np.asarray(features, dtype=np.float32)), dim=-1)  # row 0 stays 0
        self.register_buffer('unit', unit, persistent=False)
        self.register_buffer('beta', torch.zeros(()))  # saved with the checkpoint once calibrated

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:
        """A checkpoint of the plain backbone has no β: load it with β = 0, so that ``--load 1 --train 0``
        fuses an already trained model (main.py then calibrates β on dev)."""
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        if prefix + 'beta' in missing_keys:
            missing_keys.remove(prefix + 'beta')
            self.beta.zero_()

    def similarity(self, history: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """B × C: the highest cosine between each candidate and any history item (0 for an empty history)."""
        cosine = self.unit[candidates] @ self.unit[history].transpose(-1, -2)  # B × C × H
        cosine = cosine.masked_fill((history == 0)[:, None, :], -torch.inf).max(dim=-1).values
        return torch.where(torch.isfinite(cosine), cosine, torch.zeros_like(cosine))

    def forward(self, scores: torch.Tensor, history: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        beta = float(self.beta)  # 0 in every dev evaluation during training: no similarity to compute then
        return fuse(scores, self.similarity(history, candidates), beta) if beta else scores

    def calibrate(self, runner: BaseRunner, dataset: BaseModel.Dataset) -> dict[float, float]:
        """Set β to the grid value with the best main metric on ``dataset`` (ties: the smaller β); returns the
        metric per β. Under torchrun every rank ranks its slice and all ranks see the gathered metric."""
        self.beta.zero_()  # the model's own scores
        ranks: dict[float, list[np.ndarray]] = {beta: [] for beta in BETAS}
        for index, prediction in runner.predict_batches(dataset):
            feed = dataset[index]
            with torch.no_grad():
                similarity = self.similarity(feed['history_items'].to(self.unit.device),
                                             feed['item_id'].to(self.unit.device)).float().cpu()
            prediction = torch.from_numpy(prediction)
            for beta in BETAS:
                ranks[beta].append(rank_of_truth(fuse(prediction, similarity, beta).numpy()))
        name = runner.main_metric.split('@')[0]
        metric = {beta: runner.gathered_metrics(ranks[beta], [runner.main_topk], [name])[runner.main_metric]
                  for beta in BETAS}
        best = max(BETAS, key=lambda b: (metric[b], -b))
        self.beta.fill_(best)
        logging.info(f'Text fusion: beta {best} chosen on dev {runner.main_metric} ({metric[0.0]:.4f} without, '
                     f'{metric[best]:.4f} with); grid ' + ', '.join(f'{b}:{m:.4f}' for b, m in metric.items()))
        return metric
