"""Caser: horizontal and vertical convolutions over the embedding "image" of the recent history.

Reference: Jiaxi Tang and Ke Wang, "Personalized Top-N Sequential Recommendation via Convolutional
Sequence Embedding", WSDM 2018 (reference code: github.com/graytowne/caser_pytorch).
Hyperparameters (paper Table 3 protocol): --emb_size 64 --L 5 --num_horizon 64 --num_vertical 32
--lr 1e-3 --l2 1e-4 --history_max 20 (ReChorus' published Caser settings; lr and l2 lie in the paper's
grid); batch 256, Adam, ReChorus defaults otherwise.

As in ReChorus: horizontal filters have heights 1..L (not 1..history_max) to keep the layer count small,
and training instances are the usual one-target-per-interaction ones (the paper's T = 1, no sliding
window). Unlike ReChorus, which pads the right-padded history further on the right, the window here is
right-aligned (zeros on the left, as in the authors' code): the vertical filters weight positions by
recency, so the most recent item must always sit in the last row whatever the history length.
"""
from __future__ import annotations

import argparse

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.BaseModel import SequentialModel


class Caser(SequentialModel):
    reader, runner = 'SeqReader', 'BaseRunner'
    extra_log_args = ['emb_size', 'num_horizon', 'num_vertical', 'L']
    paper_args = ('--emb_size 64 --L 5 --num_horizon 64 --num_vertical 32'
                  ' --lr 1e-3 --l2 1e-4 --history_max 20')

    @staticmethod
    def parse_model_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        parser.add_argument('--emb_size', type=int, default=64, help='Size of embedding vectors.')
        parser.add_argument('--num_horizon', type=int, default=16, help='Number of horizontal convolution kernels.')
        parser.add_argument('--num_vertical', type=int, default=8, help='Number of vertical convolution kernels.')
        parser.add_argument('--L', type=int, default=4, help='Union window size (tallest horizontal filter).')
        return SequentialModel.parse_model_args(parser)

    def __init__(self, args: argparse.Namespace, corpus):
        super().__init__(args, corpus)
        self.emb_size = args.emb_size
        self.max_his = args.history_max
        self.num_horizon = args.num_horizon
        self.num_vertical = args.num_vertical
        self.l = args.L
        if self.max_his <= 0 or not 1 <= self.l <= self.max_his:
            raise ValueError(f'Caser needs a fixed window: 1 <= --L ({self.l}) <= --history_max ({self.max_his})')
        if self.num_horizon <= 0 and self.num_vertical <= 0:
            raise ValueError('Caser needs --num_horizon > 0 or --num_vertical > 0')
        self.register_buffer('len_range', torch.arange(self.max_his), persistent=False)
        self._define_params()
        self.apply(self.init_weights)

    def _define_params(self) -> None:
        self.u_embeddings = nn.Embedding(self.user_num, self.emb_size)
        self.i_embeddings = nn.Embedding(self.item_num, self.emb_size, padding_idx=0)
        self.conv_h = nn.ModuleList([nn.Conv2d(1, self.num_horizon, kernel_size=(h, self.emb_size))
                                     for h in range(1, self.l + 1)] if self.num_horizon > 0 else [])
        self.conv_v = nn.Conv2d(1, self.num_vertical, kernel_size=(self.max_his, 1)) if self.num_vertical > 0 else None
        fc_dim_in = self.num_horizon * len(self.conv_h) + max(self.num_vertical, 0) * self.emb_size
        self.conv_dropout = nn.Dropout(self.dropout)
        self.fc = nn.Linear(fc_dim_in, self.emb_size)
        self.out = nn.Linear(self.emb_size * 2, self.emb_size)

    def right_aligned_window(self, history: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Right-padded B × W history → B × history_max window with the most recent item last, 0 on the left."""
        source = self.len_range[None, :] - (self.max_his - lengths)[:, None]  # B × L_max; < 0 → padding
        window = history.gather(1, source.clamp(0, history.shape[1] - 1))
        return window.masked_fill(source < 0, 0)

    def conv_features(self, image: torch.Tensor) -> torch.Tensor:
        """The Conv2d layers' outputs computed as matmuls over unfolded windows (same parameters, same values).

        A full-width Conv2d over a 20 × 64 image is a GEMM in disguise; on CPU the convolution kernels run it
        about twice as slowly as one batched matmul, forward and backward, which made Caser the slowest baseline.
        """
        batch, length, dim = image.shape
        features = []
        for height, conv in enumerate(self.conv_h, start=1):  # B × (L_max - h + 1) windows, max-pooled
            windows = image.unfold(1, height, 1).transpose(2, 3).reshape(batch, length - height + 1, height * dim)
            features.append(F.linear(windows, conv.weight.flatten(1), conv.bias).relu().amax(dim=1))
        if self.conv_v is not None:  # B × n_v × d: weighted sums of the rows
            vertical = torch.einsum('bld,vl->bvd', image, self.conv_v.weight.flatten(1))
            features.append((vertical + self.conv_v.bias[None, :, None]).flatten(1))
        return torch.cat(features, dim=1)

    def forward(self, feed_dict: dict) -> dict:
        u_ids = feed_dict['user_id']  # B
        i_ids = feed_dict['item_id']  # B × C
        window = self.right_aligned_window(feed_dict['history_items'], feed_dict['lengths'])  # B × L_max
        # B × L_max × d; padding rows are exactly zero (init_weights does not keep padding_idx's zeros)
        image = self.i_embeddings(window) * (window > 0)[:, :, None].float()

        z = self.fc(self.conv_dropout(self.conv_features(image))).relu()  # B × d
        his_vector = self.out(torch.cat([z, self.u_embeddings(u_ids)], dim=1))  # B × d
        prediction = (his_vector[:, None, :] * self.i_embeddings(i_ids)).sum(-1)
        return {'prediction': prediction.view(feed_dict['batch_size'], -1)}
