"""TiSASRec: SASRec whose attention also sees the (scaled, clipped) time interval between every two items.

Reference: Jiacheng Li, Yujing Wang and Julian McAuley, "Time Interval Aware Self-Attention for
Sequential Recommendation", WSDM 2020.
Hyperparameters (paper Table 3 protocol): --emb_size 64 --num_layers 1 --num_heads 4 --time_max 512
--lr 1e-3 --l2 1e-6 --history_max 20, i.e. this framework's SASRec settings, so that the two models differ
only by the intervals (ReChorus publishes --num_heads 1 --lr 1e-4; both lr values lie in the paper's
grid); batch 256, Adam, ReChorus defaults otherwise.

Interval of items i, j of user u (paper Eq. 3): ``r_ij = min(floor(|t_i - t_j| / s_u), time_max)``, where
the scale ``s_u`` is u's smallest non-zero gap between two of its interactions (train, dev and test, as
ReChorus computes it). ReChorus caps ``s_u`` at 0xFFFF seconds (its min runs over a matrix whose zero
entries are replaced by 0xFFFF); we keep that cap so results match ReChorus. It matters for day-granular
data such as Amazon, where every user's smallest gap (86,400 s) exceeds the cap and all users share
the scale 65,535 s.
"""
from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn as nn

from models.BaseModel import batched
from models.sequential.SASRec import SASRec
from utils import layers

SCALE_CAP = 0xFFFF  # ReChorus' cap on the per-user interval scale, in time units (seconds)


def user_min_intervals(user_ids: np.ndarray, times: np.ndarray, n_users: int, cap: int = SCALE_CAP) -> np.ndarray:
    """Per-user scale ``s_u`` (int64, length ``n_users``): smallest positive time gap, at most ``cap``.

    Users without two distinct timestamps get ``cap`` (their intervals are all 0 anyway).
    """
    user_ids, times = np.asarray(user_ids, dtype=np.int64), np.asarray(times, dtype=np.int64)
    order = np.lexsort((times, user_ids))
    users, sorted_times = user_ids[order], times[order]
    gaps = np.diff(sorted_times)  # the smallest positive pairwise gap is a gap between sorted neighbours
    keep = (users[1:] == users[:-1]) & (gaps > 0)
    scale = np.full(n_users, cap, dtype=np.int64)
    np.minimum.at(scale, users[1:][keep], gaps[keep])
    return scale


class TiSASRec(SASRec):
    extra_log_args = ['emb_size', 'num_layers', 'num_heads', 'time_max']
    paper_args = ('--emb_size 64 --num_layers 1 --num_heads 4 --time_max 512'
                  ' --lr 1e-3 --l2 1e-6 --history_max 20')

    @staticmethod
    def parse_model_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        parser.add_argument('--time_max', type=int, default=512, help='Max time intervals (larger ones are clipped).')
        return SASRec.parse_model_args(parser)

    def __init__(self, args: argparse.Namespace, corpus):
        self.max_time = args.time_max  # read by _define_params, which SASRec.__init__ calls
        super().__init__(args, corpus)

    def _define_params(self) -> None:
        self.i_embeddings = nn.Embedding(self.item_num, self.emb_size)
        self.p_k_embeddings = nn.Embedding(self.max_his + 1, self.emb_size)
        self.p_v_embeddings = nn.Embedding(self.max_his + 1, self.emb_size)
        self.t_k_embeddings = nn.Embedding(self.max_time + 1, self.emb_size)
        self.t_v_embeddings = nn.Embedding(self.max_time + 1, self.emb_size)
        self.transformer_block = nn.ModuleList([
            TimeIntervalTransformerLayer(d_model=self.emb_size, d_ff=self.emb_size, n_heads=self.num_heads,
                                         dropout=self.dropout, kq_same=False)
            for _ in range(self.num_layers)])

    def forward(self, feed_dict: dict) -> dict:
        i_ids = feed_dict['item_id']  # B × C
        history = feed_dict['history_items']  # B × L
        times = feed_dict['history_times']  # B × L
        scale = feed_dict['user_min_intervals']  # B
        lengths = feed_dict['lengths']  # B
        batch_size, seq_len = history.shape
        valid_his = (history > 0).long()
        position = (lengths[:, None] - self.len_range[None, :seq_len]) * valid_his  # most recent = 1, pad = 0
        pos_k, pos_v = self.p_k_embeddings(position), self.p_v_embeddings(position)  # B × L × d
        interval = (times[:, :, None] - times[:, None, :]).abs()  # B × L × L
        interval = torch.div(interval, scale[:, None, None], rounding_mode='floor').clamp(0, self.max_time)
        inter_k, inter_v = self.t_k_embeddings(interval), self.t_v_embeddings(interval)  # B × L × L × d

        his_vectors = self.i_embeddings(history)
        causality_mask = torch.ones(seq_len, seq_len, dtype=torch.bool, device=history.device).tril()
        for block in self.transformer_block:
            his_vectors = block(his_vectors, pos_k, pos_v, inter_k, inter_v, causality_mask)
        his_vectors = his_vectors * valid_his[:, :, None].float()
        his_vector = his_vectors[torch.arange(batch_size, device=history.device), lengths - 1]  # B × d
        prediction = (his_vector[:, None, :] * self.i_embeddings(i_ids)).sum(-1)
        return {'prediction': prediction.view(batch_size, -1)}

    class Dataset(SASRec.Dataset):
        def _prepare(self) -> None:
            """The per-user scales are computed once per corpus and shared by the three phases."""
            scale = getattr(self.corpus, 'user_min_interval', None)
            if not isinstance(scale, np.ndarray) or len(scale) != self.corpus.n_users:
                all_df = self.corpus.all_df
                self.corpus.user_min_interval = user_min_intervals(
                    all_df['user_id'].to_numpy(), all_df['time'].to_numpy(), self.corpus.n_users)
            super()._prepare()

        @batched
        def _get_feed_dict(self, index):
            feed_dict = super()._get_feed_dict(index)
            feed_dict['user_min_intervals'] = self.corpus.user_min_interval[self.data['user_id'][index]]
            return feed_dict


class TimeIntervalMultiHeadAttention(layers.MultiHeadAttention):
    """Attention whose keys and values carry position embeddings and, per (query, key) pair, interval ones."""

    def forward(self, seq: torch.Tensor, pos_k: torch.Tensor, pos_v: torch.Tensor, inter_k: torch.Tensor,
                inter_v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``mask`` (L × L or broadcastable to B × h × L × L) is true where attention is allowed."""
        bs, seq_len = seq.shape[:2]
        heads = (bs, seq_len, self.h, self.d_k)
        q = (self.k_linear if self.kq_same else self.q_linear)(seq).view(heads)  # B × L × h × d_k
        k = (self.k_linear(seq) + pos_k).view(heads)
        v = (self.v_linear(seq) + pos_v).view(heads)
        inter_k = inter_k.view(bs, seq_len, seq_len, self.h, self.d_k)  # B × Lq × Lk × h × d_k
        inter_v = inter_v.view(bs, seq_len, seq_len, self.h, self.d_k)
        # paper Eq. 4: e_ij = q_i · (k_j + p^K_j + r^K_ij) / sqrt(d_k); the pair terms are broadcast
        # products over the contiguous B × Lq × Lk × h × d_k tensors (batched matmuls of 1-row matrices
        # or permuted copies of these tensors are several times slower on CPU)
        scores = q.transpose(1, 2) @ k.permute(0, 2, 3, 1)  # B × h × Lq × Lk
        scores = scores + (q[:, :, None] * inter_k).sum(-1).permute(0, 3, 1, 2)
        scores = (scores / self.d_k ** 0.5).masked_fill(~mask.bool(), float('-inf'))
        weights = scores.softmax(dim=-1)  # B × h × Lq × Lk
        # paper Eq. 2: z_i = Σ_j α_ij (v_j + p^V_j + r^V_ij)
        output = (weights @ v.transpose(1, 2)).transpose(1, 2)  # B × Lq × h × d_k
        output = output + (weights.permute(0, 2, 3, 1)[..., None] * inter_v).sum(2)
        return output.reshape(bs, seq_len, self.d_model)


class TimeIntervalTransformerLayer(layers.TransformerLayer):
    """``layers.TransformerLayer`` around the interval-aware attention."""

    attention_cls = TimeIntervalMultiHeadAttention

    def forward(self, seq: torch.Tensor, pos_k: torch.Tensor, pos_v: torch.Tensor, inter_k: torch.Tensor,
                inter_v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.add_and_feed_forward(seq, self.masked_attn_head(seq, pos_k, pos_v, inter_k, inter_v, mask))
