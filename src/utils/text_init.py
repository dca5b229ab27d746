"""Item ID embeddings initialised from the language features (``--text_init 1``).

The item rows of the backbone's entity embedding table start as the features' top principal components
(sklearn PCA over the items, padding row excluded), scaled as a whole so that their standard deviation is the
random initialisation's (0.01): dot products of the initial embeddings follow the texts' similarity, and the
model starts where the text fusion showed the signal is (docs/lrd.md), then trains as usual.

Why: the language features help a trained KDA when fused after training, while LRD, which reaches the ID
embeddings only through its reconstruction gradient, does not deliver that gain; this puts the features into the
ID embeddings before the first step.
"""
from __future__ import annotations

import numpy as np
from sklearn.decomposition import PCA

INIT_STD = 0.01


def text_item_embeddings(features: np.ndarray, dim: int, std: float = INIT_STD) -> np.ndarray:
    """``(n_items - 1) × dim`` embeddings of items 1.. from their ``n_items × d`` features (row 0 = padding).

    Fewer informative components than ``dim`` (tiny data, or d < dim) leave the remaining columns at zero.
    """
    x = np.asarray(features[1:], dtype=np.float64)
    n_components = min(dim, x.shape[0], x.shape[1])
    projected = PCA(n_components=n_components, svd_solver='full').fit_transform(x)
    out = np.zeros((x.shape[0], dim))
    out[:, :n_components] = projected
    scale = out.std()
    return (out * (std / scale if scale > 0 else 0.0)).astype(np.float32)
