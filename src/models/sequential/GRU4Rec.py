"""GRU4Rec: a GRU reads the history; its last hidden state, projected, scores the candidates.

Reference: Balázs Hidasi, Alexandros Karatzoglou, Linas Baltrunas and Domonkos Tikk, "Session-based
Recommendations with Recurrent Neural Networks", ICLR 2016.
Hyperparameters (paper Table 3 protocol): --emb_size 64 --hidden_size 100 --lr 1e-3 --l2 1e-4
--history_max 20 (ReChorus' published GRU4Rec settings, and the hidden size of the LRD authors' copy;
lr and l2 lie in the paper's grid); batch 256, Adam, ReChorus defaults otherwise.
"""
from __future__ import annotations

import argparse

import torch.nn as nn
from torch.nn.utils.rnn import pack_padded_sequence

from models.BaseModel import SequentialModel


class GRU4Rec(SequentialModel):
    reader, runner = 'SeqReader', 'BaseRunner'
    extra_log_args = ['emb_size', 'hidden_size']
    paper_args = ('--emb_size 64 --hidden_size 100 --lr 1e-3 --l2 1e-4'
                  ' --history_max 20')

    @staticmethod
    def parse_model_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        parser.add_argument('--emb_size', type=int, default=64, help='Size of embedding vectors.')
        parser.add_argument('--hidden_size', type=int, default=64, help='Size of hidden vectors in GRU.')
        return SequentialModel.parse_model_args(parser)

    def __init__(self, args: argparse.Namespace, corpus):
        super().__init__(args, corpus)
        self.emb_size = args.emb_size
        self.hidden_size = args.hidden_size
        self._define_params()
        self.apply(self.init_weights)

    def _define_params(self) -> None:
        self.i_embeddings = nn.Embedding(self.item_num, self.emb_size)
        self.rnn = nn.GRU(input_size=self.emb_size, hidden_size=self.hidden_size, batch_first=True)
        self.out = nn.Linear(self.hidden_size, self.emb_size)

    def forward(self, feed_dict: dict) -> dict:
        i_ids = feed_dict['item_id']  # B × C
        history = feed_dict['history_items']  # B × L, right-padded
        lengths = feed_dict['lengths']  # B, all ≥ 1
        # packing stops the GRU at each row's last real item; enforce_sorted=False sorts and
        # unsorts internally, so the final hidden state comes back in batch order
        packed = pack_padded_sequence(self.i_embeddings(history), lengths.cpu(), batch_first=True,
                                      enforce_sorted=False)
        _, hidden = self.rnn(packed)  # 1 × B × hidden
        his_vector = self.out(hidden[-1])  # B × d
        prediction = (his_vector[:, None, :] * self.i_embeddings(i_ids)).sum(-1)
        return {'prediction': prediction.view(feed_dict['batch_size'], -1)}
