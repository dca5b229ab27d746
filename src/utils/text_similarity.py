"""A learned-weight text-similarity term in the score: w · max over history items h of cos(x_h, x_c).

Why: in the paper and the authors' code the language features reach the ranking only through the LRD
reconstruction gradient. On Office that path gave no gain (docs/results.md), yet fusing a trained KDA's scores
with this similarity after training raised test HR@5 on every seed (bench/probe_text_fusion.py): the texts
know something the ID embeddings do not learn, and this term hands it to the ranking directly.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

INITIAL_WEIGHT = 1.0  # similar texts are a plausible prior; training moves it (Adam takes ~1e-3 per step)


class TextSimilarity(nn.Module):
    def __init__(self, features: np.ndarray):
        super().__init__()
        unit = F.normalize(torch.from_numpy(np.asarray(features, dtype=np.float32)), dim=-1)  # row 0 stays 0
        self.register_buffer('unit', unit, persistent=False)
        self.weight = nn.Parameter(torch.tensor(INITIAL_WEIGHT))

    def similarity(self, history: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """B × C: the highest cosine between each candidate and any history item (0 for an empty history)."""
        cosine = self.unit[candidates] @ self.unit[history].transpose(-1, -2)  # B × C × H
        cosine = cosine.masked_fill((history == 0)[:, None, :], -torch.inf).max(dim=-1).values
        return torch.where(torch.isfinite(cosine), cosine, torch.zeros_like(cosine))

    def forward(self, history: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        return self.weight * self.similarity(history, candidates)
