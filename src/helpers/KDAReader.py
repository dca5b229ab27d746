"""Per-relation time-interval spectra for KDA's temporal decay (Wang et al., TOIS 2021).

For every relation we collect the time gaps between related items in users' training sequences,
histogram them on a log2 scale and take a DFT; KDA can initialise its frequency parameters from it
(``--freq_rand 0``). Counting is vectorised: the reference walks every pair of a user's history in
Python, we scan all sequences at once, one lag at a time, keeping only targets not yet matched.
"""
from __future__ import annotations

import argparse
import logging

import numpy as np

from helpers.KGReader import KGReader


class KDAReader(KGReader):
    @staticmethod
    def parse_data_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        parser.add_argument('--t_scalar', type=int, default=60,
                            help='Time interval scalar (seconds per unit before the log2).')
        parser.add_argument('--n_dft', type=int, default=64,
                            help='The point of DFT (raised to cover the interval histogram if needed).')
        parser.add_argument('--freq_rand', type=int, default=0,
                            help='Whether randomly initialize parameters in frequency domain.')
        return KGReader.parse_data_args(parser)

    @staticmethod
    def dft(x: np.ndarray, n_dft: int) -> np.ndarray:
        """One-sided spectrum with negative frequencies folded in (hence the factor 2)."""
        return 2 * np.fft.fft(x, n_dft)[: n_dft // 2 + 1]

    @staticmethod
    def norm_time(delta_t: np.ndarray, t_scalar: int) -> np.ndarray:
        """log2 of the gap in ``t_scalar`` units, floored at 0."""
        return np.maximum(np.log2(np.asarray(delta_t, dtype=np.float64) / t_scalar + 1e-6), 0)

    def __init__(self, args: argparse.Namespace):
        super().__init__(args)
        self.t_scalar = args.t_scalar
        self.n_dft = args.n_dft
        self.freq_rand = args.freq_rand
        self.freq_x = None
        if not self.freq_rand:
            self.freq_x = self._spectra(self._interval_counts())

    def _train_sequences(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Training interactions ordered by (user, time): users, items, times."""
        train = self.data_df['train']
        order = np.lexsort((train['time'].to_numpy(), train['user_id'].to_numpy()))
        return (train['user_id'].to_numpy()[order], train['item_id'].to_numpy()[order],
                train['time'].to_numpy()[order])

    def _interval_counts(self) -> list[np.ndarray]:
        """Time gaps per relation (index = relation id). Training data only, so dev/test times never leak."""
        users, items, times = self._train_sequences()
        same_user = users[1:] == users[:-1]
        gaps = times[1:] - times[:-1]
        intervals = [gaps[same_user & (gaps > 0)]]  # relation 0: consecutive items of a sequence

        for r_idx in range(1, len(self.item_relations) + 1):
            intervals.append(self._relation_gaps(users, items, times, r_idx))

        for a_idx, col in enumerate(self.attr_relations):
            relation_idx = len(self.item_relations) + a_idx + 1
            vals = self.item_val[items, relation_idx]
            order = np.lexsort((times, vals, users))
            u, v, t = users[order], vals[order], times[order]
            same = (u[1:] == u[:-1]) & (v[1:] == v[:-1]) & (v[1:] != 0)
            gap = t[1:] - t[:-1]
            intervals.append(gap[same & (gap > 0)])
        return intervals

    def _relation_gaps(self, users: np.ndarray, items: np.ndarray, times: np.ndarray, relation: int) -> np.ndarray:
        """For each target, the gap to the most recent earlier item it is related to (reference semantics)."""
        position = np.arange(len(users)) - np.searchsorted(users, users)  # index within the user's sequence
        active = np.flatnonzero(position > 0)
        found = []
        lag = 1
        while len(active):
            src = active - lag
            gap = times[active] - times[src]
            hit = (gap > 0) & self.has_triplets(items[src], relation, items[active])
            found.append(gap[hit])
            active = active[~hit & (position[active] > lag)]
            lag += 1
        return np.concatenate(found) if found else np.zeros(0, dtype=np.int64)

    def _spectra(self, intervals: list[np.ndarray]) -> np.ndarray:
        """Normalised log-interval histograms → DFT, one row per relation (zeros where no gap was seen)."""
        histograms = []
        for gaps in intervals:
            if len(gaps) == 0:
                histograms.append(np.zeros(1))
                continue
            counts = np.bincount(self.norm_time(gaps, self.t_scalar).astype(np.int64)).astype(np.float64)
            histograms.append(counts / counts.max())
            self.n_dft = max(self.n_dft, 2 ** (int(np.log2(len(counts))) + 1))
        logging.info(f'Interval spectra: {[len(g) for g in intervals]} gaps per relation, n_dft={self.n_dft}')
        return np.stack([self.dft(h, self.n_dft) for h in histograms])
