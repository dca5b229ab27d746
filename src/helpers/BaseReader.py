"""Reads a ReChorus dataset folder (train/dev/test.csv) into validated numpy-backed frames."""
from __future__ import annotations

import argparse
import logging
import os

import numpy as np
import pandas as pd

from utils import io
from utils.sampling import sorted_pair_keys
from utils.runtime import REPO_DIR


class BaseReader:
    @staticmethod
    def parse_data_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        parser.add_argument('--path', type=str, default=str(REPO_DIR / 'data'),
                            help='Input data dir (holds one folder per dataset).')
        parser.add_argument('--dataset', type=str, default='MovieLens_100k',
                            help='Choose a dataset (a folder under --path).')
        parser.add_argument('--sep', type=str, default='\t',
                            help='sep of csv file.')
        return parser

    def __init__(self, args: argparse.Namespace):
        self.sep = args.sep
        self.prefix = args.path
        self.dataset = args.dataset
        self.data_dir = os.path.join(self.prefix, self.dataset)
        if not os.path.isdir(self.data_dir):
            found = sorted(d for d in os.listdir(self.prefix)
                           if os.path.isdir(os.path.join(self.prefix, d))) if os.path.isdir(self.prefix) else []
            raise FileNotFoundError(f'dataset {self.dataset!r} not found in {self.prefix}; '
                                    f'available: {", ".join(found) or "none"} '
                                    '(build one with the scripts in data/, see data/README.md)')
        self._read_data()

    def _read_data(self) -> None:
        logging.info(f'Reading data from "{self.prefix}", dataset = "{self.dataset}"')
        self.data_df: dict[str, pd.DataFrame] = {}
        self.neg_matrix: dict[str, np.ndarray] = {}  # dev/test negatives as n × k matrices
        for phase in ['train', 'dev', 'test']:
            path = os.path.join(self.data_dir, phase + '.csv')
            required = ['user_id', 'item_id', 'time'] + (['neg_items'] if phase != 'train' else [])
            raw = io.read_table(path, self.sep, required)
            df = pd.DataFrame({'user_id': io.int_column(raw, 'user_id', path),
                               'item_id': io.int_column(raw, 'item_id', path),
                               'time': io.int_column(raw, 'time', path, positive=False)})
            if phase != 'train':
                negs = io.parse_fixed_lists(raw['neg_items'], path, 'neg_items')
                df['neg_items'] = list(negs)  # ReChorus' per-row lists, for code that reads data_df
                self.neg_matrix[phase] = negs
            self.data_df[phase] = df

        self.all_df = pd.concat([self.data_df[p].assign(phase=p)[['user_id', 'item_id', 'time', 'phase']]
                                 for p in ['train', 'dev', 'test']], ignore_index=True)
        self.n_users = int(self.all_df['user_id'].max()) + 1
        self.n_items = int(self.all_df['item_id'].max()) + 1
        self.n_clicks = len(self.all_df)
        self._validate()
        self.train_clicked_keys = sorted_pair_keys(self.data_df['train']['user_id'].to_numpy(),
                                                   self.data_df['train']['item_id'].to_numpy(), self.n_items)
        self.all_clicked_keys = sorted_pair_keys(self.all_df['user_id'].to_numpy(),
                                                 self.all_df['item_id'].to_numpy(), self.n_items)
        # every item of each user (train/dev/test) as CSR rows, for masking under full ranking
        by_user = np.argsort(self.all_df['user_id'].to_numpy(), kind='stable')
        self.clicked_items = self.all_df['item_id'].to_numpy()[by_user]
        self.clicked_start = np.zeros(self.n_users + 1, dtype=np.int64)
        np.cumsum(np.bincount(self.all_df['user_id'].to_numpy(), minlength=self.n_users), out=self.clicked_start[1:])
        logging.info(f'"# user": {self.n_users - 1}, "# item": {self.n_items - 1}, "# entry": {self.n_clicks}')

    def _validate(self) -> None:
        """Dev/test rows must have a known user with training history and known negative ids."""
        train_users = np.zeros(self.n_users, dtype=bool)
        train_users[self.data_df['train']['user_id'].to_numpy()] = True
        for phase in ['dev', 'test']:
            path = os.path.join(self.data_dir, phase + '.csv')
            users = self.data_df[phase]['user_id'].to_numpy()
            no_history = ~train_users[users]
            if no_history.any():
                row = int(np.flatnonzero(no_history)[0])
                raise io.DataFormatError(f'{path} line {row + 2}: user_id {users[row]} has no interaction in '
                                         f'train.csv, so there is no history to rank from')
            negs = self.neg_matrix[phase]
            unknown = (negs < 1) | (negs >= self.n_items)
            if unknown.any():
                row, col = (int(x[0]) for x in np.nonzero(unknown))
                raise io.DataFormatError(f'{path} line {row + 2}: neg_items contains {negs[row, col]}, which is not '
                                         f'a known item id (1..{self.n_items - 1})')

    @property
    def train_clicked_set(self) -> dict[int, set]:
        """ReChorus-compatible view (built on demand; the framework itself uses the sorted keys)."""
        train = self.data_df['train']
        return {int(u): set(g.tolist()) for u, g in train.groupby('user_id')['item_id']}

    @property
    def residual_clicked_set(self) -> dict[int, set]:
        """ReChorus-compatible view of each user's dev/test items."""
        rest = pd.concat([self.data_df['dev'], self.data_df['test']])
        return {int(u): set(g.tolist()) for u, g in rest.groupby('user_id')['item_id']}
