"""SASRec: a causal self-attention encoder over the history; the last position scores candidates.

Reference: Wang-Cheng Kang and Julian McAuley, "Self-Attentive Sequential Recommendation", ICDM 2018.
Hyperparameters (paper Table 3 protocol): --emb_size 64 --num_layers 1 --num_heads 4 --lr 1e-3
--l2 1e-6 --history_max 20; ReChorus defaults otherwise.
"""
from __future__ import annotations

import argparse

import torch
import torch.nn as nn

from models.BaseModel import SequentialModel
from utils import layers


class SASRec(SequentialModel):
    reader, runner = 'SeqReader', 'BaseRunner'
    extra_log_args = ['emb_size', 'num_layers', 'num_heads']
    paper_args = ('--emb_size 64 --num_layers 1 --num_heads 4 --lr 1e-3'
                  ' --l2 1e-6 --history_max 20')

    @staticmethod
    def parse_model_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        parser.add_argument('--emb_size', type=int, default=64, help='Size of embedding vectors.')
        parser.add_argument('--num_layers', type=int, default=1, help='Number of self-attention layers.')
        parser.add_argument('--num_heads', type=int, default=4, help='Number of attention heads.')
        return SequentialModel.parse_model_args(parser)

    def __init__(self, args: argparse.Namespace, corpus):
        super().__init__(args, corpus)
        self.emb_size = args.emb_size
        self.max_his = args.history_max
        self.num_layers = args.num_layers
        self.num_heads = args.num_heads
        self.register_buffer('len_range', torch.arange(max(self.max_his, 1) + 1), persistent=False)
        self._define_params()
        self.apply(self.init_weights)

    def _define_params(self) -> None:
        self.i_embeddings = nn.Embedding(self.item_num, self.emb_size)
        self.p_embeddings = nn.Embedding(self.max_his + 1, self.emb_size)
        self.transformer_block = nn.ModuleList([
            layers.TransformerLayer(d_model=self.emb_size, d_ff=self.emb_size, n_heads=self.num_heads,
                                    dropout=self.dropout, kq_same=False)
            for _ in range(self.num_layers)])

    def forward(self, feed_dict: dict) -> dict:
        i_ids = feed_dict['item_id']  # B × C
        history = feed_dict['history_items']  # B × L
        lengths = feed_dict['lengths']  # B
        batch_size, seq_len = history.shape
        valid_his = (history > 0).long()
        # position counts back from the most recent item: lengths [2] → positions [2, 1, 0(pad)]
        position = (lengths[:, None] - self.len_range[None, :seq_len]) * valid_his
        his_vectors = self.i_embeddings(history) + self.p_embeddings(position)
        causality_mask = torch.ones(seq_len, seq_len, dtype=torch.bool, device=history.device).tril()
        for block in self.transformer_block:
            his_vectors = block(his_vectors, causality_mask)
        his_vectors = his_vectors * valid_his[:, :, None].float()
        his_vector = his_vectors[torch.arange(batch_size, device=history.device), lengths - 1]  # B × d
        prediction = (his_vector[:, None, :] * self.i_embeddings(i_ids)).sum(-1)
        return {'prediction': prediction.view(batch_size, -1)}
