"""Adds chronological user histories, stored flat (CSR) so batches gather them with array indexing."""
from __future__ import annotations

import argparse
import logging

import numpy as np

from helpers.BaseReader import BaseReader


class SeqReader(BaseReader):
    def __init__(self, args: argparse.Namespace):
        super().__init__(args)
        self._append_his_info()

    def _append_his_info(self) -> None:
        """Sort interactions by (time, user) like ReChorus, give each row its position in the user's history.

        ``his_items[his_start[u]:his_start[u + 1]]`` is user u's whole sequence; a row at ``position`` p
        has the history ``his_items[his_start[u]:his_start[u] + p]``.
        """
        logging.info('Appending history info...')
        order = np.lexsort((self.all_df['user_id'].to_numpy(), self.all_df['time'].to_numpy()))  # stable
        sorted_df = self.all_df.iloc[order]
        by_user = np.argsort(sorted_df['user_id'].to_numpy(), kind='stable')
        seq_df = sorted_df.iloc[by_user]
        users = seq_df['user_id'].to_numpy()
        self.his_start = self.clicked_start  # same rows per user as BaseReader's CSR, here in time order
        self.his_items = seq_df['item_id'].to_numpy().astype(np.int64)
        self.his_times = seq_df['time'].to_numpy().astype(np.int64)
        position = np.arange(len(seq_df), dtype=np.int64) - self.his_start[users]
        row_position = np.empty(len(self.all_df), dtype=np.int64)
        row_position[seq_df.index.to_numpy()] = position
        offset = 0
        for phase in ['train', 'dev', 'test']:
            n = len(self.data_df[phase])
            self.data_df[phase]['position'] = row_position[offset:offset + n]
            offset += n

    @property
    def user_his(self) -> dict[int, list[tuple[int, int]]]:
        """ReChorus-compatible ``{user: [(item, time), ...]}`` view, built on demand."""
        return {u: list(zip(self.his_items[s:e].tolist(), self.his_times[s:e].tolist()))
                for u, (s, e) in enumerate(zip(self.his_start[:-1], self.his_start[1:])) if e > s}

    def gather_history(self, users: np.ndarray, positions: np.ndarray, history_max: int
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Right-padded histories for a batch: items and times ``B × L`` (0 = padding) and lengths ``B``."""
        lengths = positions if history_max <= 0 else np.minimum(positions, history_max)
        width = max(int(lengths.max()) if len(lengths) else 0, 1)
        first = self.his_start[users] + positions - lengths
        grid = first[:, None] + np.arange(width)[None, :]
        valid = np.arange(width)[None, :] < lengths[:, None]
        grid = np.where(valid, grid, 0)
        items = np.where(valid, self.his_items[grid], 0)
        times = np.where(valid, self.his_times[grid], 0)
        return items, times, lengths
