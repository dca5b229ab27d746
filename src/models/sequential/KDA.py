"""KDA: RCF whose relation-wise attention decays with the time since each history item, per relation.

Reference: Chenyang Wang et al., "Toward Dynamic User Intention: Temporal Evolutionary Effects of
Item Relations in Sequential Recommendation", TOIS 2021. The decay of relation r at gap Δt is the
inverse DFT of learnable frequency coefficients (optionally initialised from the interval spectra
of ``KDAReader``, ``--freq_rand 0``), clamped to [0, 1].
Paper protocol: --emb_size 64 --include_attr 1 --include_val 1 --freq_rand 1 --lr 1e-3 --l2 1e-6
--num_heads 4 --num_layers 5 --gamma -1 --history_max 20.
"""
from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn as nn

from helpers.KDAReader import KDAReader
from models.BaseModel import batched
from models.sequential.RCF import RCF


COLLAPSED_DECAY = 1e-5  # mean temporal weight: N(0, 0.01) coefficients start near 3e-4, trained runs reach ~0.06


class KDA(RCF):
    reader = 'KDAReader'
    extra_log_args = RCF.extra_log_args + ['freq_rand']
    paper_args = ('--emb_size 64 --include_attr 1 --include_val 1'
                  ' --freq_rand 1 --lr 1e-3 --l2 1e-6 --num_heads 4 --num_layers 5 --gamma -1 --history_max 20')

    @staticmethod
    def parse_model_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        parser.add_argument('--decay_init', type=float, default=0.,
                            help="Raise every relation's starting temporal weight by this (its zero-frequency "
                                 'coefficient), on top of the random or spectral start. 0: the reference, whose '
                                 'N(0, 0.01) coefficients start the weight near 3e-4, half of it clamped to 0.')
        return RCF.parse_model_args(parser)

    def __init__(self, args: argparse.Namespace, corpus):
        self.decay_init = args.decay_init
        self.freq_x = corpus.freq_x
        self.freq_dim = corpus.n_dft // 2 + 1
        self.freq_rand = args.freq_rand
        super().__init__(args, corpus)
        self.decay_stats: torch.Tensor | None = None

    def _define_params(self) -> None:
        super()._define_params()
        self.freq_real = nn.Embedding(self.relation_num, self.freq_dim)
        self.freq_imag = nn.Embedding(self.relation_num, self.freq_dim)
        self.register_buffer('freqs', self.frequencies(self.freq_dim), persistent=False)

    def actions_before_train(self) -> None:
        """``--freq_rand 0``: start the predefined relations from their interval spectra; ``--decay_init``: lift
        every relation's kernel by a constant, so that the history counts from the first batch."""
        with torch.no_grad():
            if not self.freq_rand and self.freq_x is not None:
                n = self.freq_x.shape[0]
                self.freq_real.weight[:n].copy_(torch.from_numpy(np.real(self.freq_x)).float())
                self.freq_imag.weight[:n].copy_(torch.from_numpy(np.imag(self.freq_x)).float())
            # the conjugate-symmetric spectrum counts the zero frequency twice over 2 * freq_dim terms (inverse_dft)
            self.freq_real.weight[:, 0] += self.decay_init * 2 * self.freq_dim

    @staticmethod
    def frequencies(freq_dim: int) -> torch.Tensor:
        """The 2F frequencies of the coefficients: F from 0 to 1/2, then their negatives."""
        freq = np.linspace(0, 1, freq_dim) / 2.
        return torch.from_numpy(np.concatenate((freq, -freq))).float()

    @staticmethod
    def inverse_dft(freq_real: torch.Tensor, freq_imag: torch.Tensor, freqs: torch.Tensor,
                    delta_t: torch.Tensor) -> torch.Tensor:
        """Real inverse DFT of R relations' F coefficients at the (log-scaled) gaps: … × R, before the clamp.
        A static function, so that a saved state dict can be inspected without the data (bench/temporal_kernel.py)."""
        x_real = torch.cat([freq_real, freq_real], dim=-1)  # conjugate symmetric
        x_imag = torch.cat([freq_imag, -freq_imag], dim=-1)
        w = 2. * np.pi * freqs * delta_t.unsqueeze(-1)  # … × 2F
        return (w.cos() @ x_real.T - w.sin() @ x_imag.T) / (2. * x_real.shape[-1])

    def idft_decay(self, delta_t: torch.Tensor) -> torch.Tensor:
        """Each relation's decay at the (log-scaled) gaps, before the clamp: B × H × R."""
        return self.inverse_dft(self.freq_real.weight, self.freq_imag.weight, self.freqs, delta_t)

    def history_weights(self, feed_dict: dict) -> torch.Tensor:
        attention = self.relational_attention(feed_dict)  # B × C × H × R
        valid = (feed_dict['history_items'] > 0)[:, :, None]
        decay = self.idft_decay(feed_dict['history_delta_t']).clamp(0, 1).masked_fill(~valid, 0.)
        if self.training:
            self._record_decay(decay, valid.expand_as(decay))
        return attention * decay[:, None]

    def _record_decay(self, decay: torch.Tensor, cells: torch.Tensor) -> None:
        """Accumulate on decay's device the sums behind ``epoch_summary``: the weights, those clamped to 0, the cells."""
        with torch.no_grad():
            stats = torch.stack([decay.sum(), ((decay == 0) & cells).sum(), cells.sum()]).double()
            self.decay_stats = stats if self.decay_stats is None else self.decay_stats + stats

    def epoch_summary(self) -> str:
        """The temporal weight the history got over the epoch's training batches. Coefficients drawn from N(0, 0.01)
        start it near 3e-4, half of it clamped to 0, so the history barely counts at first; a run whose weight then
        falls towards 0 everywhere ignores the history for good (docs/results.md, *the collapsed temporal kernel*)."""
        if self.decay_stats is None or not float(self.decay_stats[2]):
            return ''
        total, zero, cells = self.decay_stats.tolist()
        self.decay_stats = None
        mean = total / cells
        return (f'KDA temporal weight over {int(cells):,} (history item, relation) cells: mean {mean:.3g}, '
                f'{zero / cells:.1%} clamped to 0'
                + ('; near 0 everywhere: the history is switched off' if mean < COLLAPSED_DECAY else ''))

    class Dataset(RCF.Dataset):
        @batched
        def _get_feed_dict(self, index):
            feed_dict = RCF.Dataset._get_feed_dict(self, index)
            gaps = np.expand_dims(self.data['time'][index], -1) - feed_dict['history_times']
            feed_dict['history_delta_t'] = KDAReader.norm_time(gaps, self.corpus.t_scalar).astype(np.float32)
            return feed_dict
