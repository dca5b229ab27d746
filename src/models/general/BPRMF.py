"""BPRMF: matrix factorisation trained with the BPR pairwise loss; ignores the order of interactions.

Reference: Steffen Rendle, Christoph Freudenthaler, Zeno Gantner and Lars Schmidt-Thieme, "BPR: Bayesian
Personalized Ranking from Implicit Feedback", UAI 2009.
Hyperparameters (ReChorus' published settings, inside the paper's grid): --emb_size 64 --lr 1e-3
--l2 1e-6; batch 256, Adam, ReChorus defaults otherwise. Not a Table 3 baseline.
"""
from __future__ import annotations

import argparse

import torch.nn as nn

from models.BaseModel import GeneralModel


class BPRMF(GeneralModel):
    reader, runner = 'BaseReader', 'BaseRunner'
    extra_log_args = ['emb_size']

    @staticmethod
    def parse_model_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        parser.add_argument('--emb_size', type=int, default=64, help='Size of embedding vectors.')
        return GeneralModel.parse_model_args(parser)

    def __init__(self, args: argparse.Namespace, corpus):
        super().__init__(args, corpus)
        self.emb_size = args.emb_size
        self._define_params()
        self.apply(self.init_weights)

    def _define_params(self) -> None:
        self.u_embeddings = nn.Embedding(self.user_num, self.emb_size)
        self.i_embeddings = nn.Embedding(self.item_num, self.emb_size)

    def forward(self, feed_dict: dict) -> dict:
        u_vectors = self.u_embeddings(feed_dict['user_id'])  # B × d
        i_vectors = self.i_embeddings(feed_dict['item_id'])  # B × C × d
        prediction = (u_vectors[:, None, :] * i_vectors).sum(-1)  # B × C
        return {'prediction': prediction.view(feed_dict['batch_size'], -1)}
