"""Optimisers for large catalogues: sparse gradients and lazy Adam on the big embedding tables.

A dense Adam step touches every row of every embedding table, so on Electronics-size data each step
costs in proportion to the number of users and items, and an epoch grows quadratically with the
data. With ``--sparse_embeddings N`` tables of at least N rows get sparse gradients and
``torch.optim.SparseAdam`` (moments of a row are only updated when the row is used), the rest keeps
the chosen optimiser. Opt-in, because lazy moments differ from the Adam the paper used and weight
decay (``--l2``) does not apply to those tables.
"""
from __future__ import annotations

import torch
import torch.nn as nn


class CombinedOptimizer:
    """Steps a dense and a sparse optimiser together, behind the one-optimiser interface the runner uses."""

    def __init__(self, dense: torch.optim.Optimizer, sparse: torch.optim.Optimizer):
        self.dense, self.sparse = dense, sparse

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.dense.zero_grad(set_to_none=set_to_none)
        self.sparse.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        self.dense.step()
        self.sparse.step()

    def state_dict(self) -> dict:
        return {'dense': self.dense.state_dict(), 'sparse': self.sparse.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.dense.load_state_dict(state['dense'])
        self.sparse.load_state_dict(state['sparse'])


def make_tables_sparse(model: nn.Module, min_rows: int) -> list[nn.Parameter]:
    """Switch embedding tables with at least ``min_rows`` rows to sparse gradients; return their weights."""
    tables = [m for m in model.modules()
              if isinstance(m, nn.Embedding) and m.num_embeddings >= min_rows and m.weight.requires_grad]
    for table in tables:
        table.sparse = True
    return [table.weight for table in tables]


def without(groups: list[dict], excluded: list[nn.Parameter]) -> list[dict]:
    """Parameter groups with the ``excluded`` parameters removed (empty groups dropped)."""
    ids = {id(p) for p in excluded}
    kept = [{**g, 'params': [p for p in g['params'] if id(p) not in ids]} for g in groups]
    return [g for g in kept if g['params']]
