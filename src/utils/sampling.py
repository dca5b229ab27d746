"""Vectorised negative sampling: one sampler for training negatives, KG corruption and dataset builders.

Membership in a set of (group, item) pairs is tested with sorted int64 keys and ``np.searchsorted``,
so a whole epoch of negatives is drawn with a handful of array operations instead of a Python loop
per instance (the reference code's main cost).
"""
from __future__ import annotations

import numpy as np


def pair_keys(groups: np.ndarray, items: np.ndarray, n_items: int) -> np.ndarray:
    """Encode (group, item) pairs as one int64 key each: ``group * n_items + item``."""
    return np.asarray(groups, dtype=np.int64) * np.int64(n_items) + np.asarray(items, dtype=np.int64)


def sorted_unique(keys: np.ndarray) -> np.ndarray:
    """Sorted distinct int64 keys (a sort and a mask: ``np.unique`` is far slower on large arrays)."""
    keys = np.sort(np.asarray(keys, dtype=np.int64))
    if len(keys) == 0:
        return keys
    return keys[np.concatenate(([True], keys[1:] != keys[:-1]))]


def sorted_pair_keys(groups: np.ndarray, items: np.ndarray, n_items: int) -> np.ndarray:
    """Sorted, de-duplicated keys of a set of (group, item) pairs, ready for :func:`contains`."""
    return sorted_unique(pair_keys(groups, items, n_items))


def contains(sorted_keys: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Boolean mask: which ``keys`` occur in ``sorted_keys`` (must be sorted ascending)."""
    keys = np.asarray(keys, dtype=np.int64)
    if len(sorted_keys) == 0:
        return np.zeros(keys.shape, dtype=bool)
    pos = np.searchsorted(sorted_keys, keys)
    pos = np.minimum(pos, len(sorted_keys) - 1)
    return sorted_keys[pos] == keys


def sample_excluding(groups: np.ndarray, n_samples: int, low: int, high: int, excluded_keys: np.ndarray,
                     n_items: int, rng: np.random.Generator, max_rounds: int = 1000) -> np.ndarray:
    """Draw ``n_samples`` ids in ``[low, high)`` per group, none of them paired with its group in ``excluded_keys``.

    ``excluded_keys`` are sorted keys from :func:`sorted_pair_keys`. Draws are uniform with replacement
    (as ReChorus does); rejected draws are redrawn in bulk until none remain.
    Returns an int64 array of shape ``len(groups) × n_samples``.
    """
    groups = np.asarray(groups, dtype=np.int64)
    out = rng.integers(low, high, size=(len(groups), n_samples), dtype=np.int64)
    group_grid = np.broadcast_to(groups[:, None], out.shape)
    bad = contains(excluded_keys, pair_keys(group_grid, out, n_items))
    for _ in range(max_rounds):
        n_bad = int(bad.sum())
        if n_bad == 0:
            return out
        redraw = rng.integers(low, high, size=n_bad, dtype=np.int64)
        out[bad] = redraw
        still_bad = contains(excluded_keys, pair_keys(group_grid[bad], redraw, n_items))
        bad[bad] = still_bad
    raise RuntimeError(f'negative sampling did not converge after {max_rounds} rounds: '
                       f'some group has (almost) every id in [{low}, {high}) excluded')
