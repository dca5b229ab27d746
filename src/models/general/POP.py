"""POP: scores every candidate by its number of training interactions, the same for every user.

Reference: the most-popular baseline of top-N recommendation (e.g. Paolo Cremonesi, Yehuda Koren and
Roberto Turrin, "Performance of Recommender Algorithms on Top-N Recommendation Tasks", RecSys 2010).
Run it without training, as ReChorus does: ``--model_name POP --train 0`` (no hyperparameters).

There is nothing to learn, but a run with ``--train 1`` must still work: the runner builds an optimizer
(which refuses an empty parameter list) and calls ``loss.backward()`` (which needs a graph). A single
zero parameter, added to the scores times 0, provides both; its gradient is always 0 and it starts at 0,
so Adam and its weight decay leave it at 0 and the scores stay the popularity counts.
"""
from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn as nn

from models.BaseModel import GeneralModel


class POP(GeneralModel):
    reader, runner = 'BaseReader', 'BaseRunner'
    extra_log_args: list[str] = []

    def __init__(self, args: argparse.Namespace, corpus):
        super().__init__(args, corpus)
        counts = np.bincount(corpus.data_df['train']['item_id'].to_numpy(), minlength=corpus.n_items)
        self.register_buffer('popularity', torch.from_numpy(counts.astype(np.float32)))  # n_items
        self._define_params()
        self.apply(self.init_weights)

    def _define_params(self) -> None:
        self.dummy = nn.Parameter(torch.zeros(1))  # lets the runner's optimizer and backward() run; see above

    def forward(self, feed_dict: dict) -> dict:
        prediction = self.popularity[feed_dict['item_id']] + 0 * self.dummy  # B × C
        return {'prediction': prediction.view(feed_dict['batch_size'], -1)}
