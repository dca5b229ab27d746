"""BaseModel → GeneralModel → SequentialModel, with ReChorus' hooks and a vectorised data path.

A model's inner ``Dataset`` builds feed dicts. ReChorus builds one per instance and collates a list;
ours build a whole batch from an index array in one go (``@batched`` on ``_get_feed_dict``), which
removes the per-instance Python loop from every epoch. A model file written for ReChorus, whose
``_get_feed_dict`` takes a single index, still works: the undecorated method is called per instance
and ``collate_batch`` stacks the results as ReChorus does.
"""
from __future__ import annotations

import argparse
import logging
import os
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import Dataset as TorchDataset

from utils import torch_file
from utils.sampling import sample_excluding

if TYPE_CHECKING:
    from helpers.BaseRunner import BaseRunner


def batched(method: Callable) -> Callable:
    """Mark a ``_get_feed_dict`` that takes an index array and returns batch arrays."""
    method.batched = True
    return method


class BaseModel(nn.Module):
    reader, runner = None, None  # names of the reader and runner classes in src/helpers
    extra_log_args: list[str] = []
    paper_args = ''  # main.py arguments of the paper's Table-3 protocol, run by `exp.py table3` ('' = none)

    @staticmethod
    def parse_model_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        parser.add_argument('--model_path', type=str, default='',
                            help='Model save path.')
        parser.add_argument('--buffer', type=int, default=0,
                            help='Whether to buffer dev/test batches (batches are built vectorised, so '
                                 'this only helps models with a per-instance _get_feed_dict).')
        return parser

    @staticmethod
    def init_weights(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=0.01)
            if getattr(m, 'bias', None) is not None:
                nn.init.normal_(m.bias, mean=0.0, std=0.01)

    def __init__(self, args: argparse.Namespace, corpus):
        super().__init__()
        self.device = getattr(args, 'device', torch.device('cpu'))
        self.model_path = args.model_path
        self.buffer = args.buffer
        self.random_seed = getattr(args, 'random_seed', 0)
        self.optimizer = None
        self.check_list: list = []

    def _define_params(self) -> None:
        pass

    def forward(self, feed_dict: dict) -> dict:
        """Return ``{'prediction': B × n_candidates}``; column 0 is the ground-truth item."""
        raise NotImplementedError

    def loss(self, out_dict: dict) -> torch.Tensor:
        """BPR over multiple negatives, softmax-weighted toward hard negatives (ReChorus' default)."""
        predictions = out_dict['prediction']
        pos_pred, neg_pred = predictions[:, 0], predictions[:, 1:]
        neg_softmax = (neg_pred - neg_pred.max()).softmax(dim=1)
        neg_pred = (neg_pred * neg_softmax).sum(dim=1)
        return F.softplus(-(pos_pred - neg_pred)).mean()

    def customize_parameters(self) -> list[dict]:
        """No weight decay on biases."""
        weight_p, bias_p = [], []
        for name, p in self.named_parameters():
            if p.requires_grad:
                (bias_p if 'bias' in name else weight_p).append(p)
        return [{'params': weight_p}, {'params': bias_p, 'weight_decay': 0}]

    def save_model(self, model_path: str | None = None) -> None:
        model_path = model_path or self.model_path
        torch_file.save(model_path, self.state_dict())
        logging.info('Save model to ' + model_path)

    def load_model(self, model_path: str | None = None) -> None:
        """Errors name the checkpoint and the likely cause instead of torch's pages of missing keys."""
        model_path = model_path or self.model_path
        if not os.path.exists(model_path):
            raise FileNotFoundError(f'{model_path}: no checkpoint there; train one first (--train 1) or give '
                                    f'--model_path')
        state = torch_file.load(model_path, 'checkpoint')
        try:
            self.load_state_dict(state)
        except RuntimeError as exc:
            detail = '; '.join(line.strip() for line in str(exc).splitlines()[1:4])
            raise torch_file.BadFile(f'{model_path}: does not fit {type(self).__name__} built from these arguments '
                                     f'(saved by another model, dataset or --emb_size?): {detail}') from exc
        logging.info('Load model from ' + model_path)

    def count_variables(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def actions_before_train(self) -> None:
        pass

    def actions_after_train(self) -> None:
        pass

    def calibrate(self, runner: BaseRunner, dev: BaseModel.Dataset) -> bool:
        """Fit post-training parameters on the dev set (e.g. ``--text_fusion``'s weight) before the final
        evaluation; True when something was fitted, so that the checkpoint is saved again with it."""
        return False

    def epoch_summary(self) -> str:
        """A line the runner logs after each training epoch (then resets): statistics a model gathers
        while training, e.g. where LRD's relation distribution q puts its mass. Empty: nothing logged."""
        return ''

    class Dataset(TorchDataset):
        def __init__(self, model: 'BaseModel', corpus, phase: str):
            self.model, self.corpus, self.phase = model, corpus, phase
            df = corpus.data_df[phase]
            self.data = {c: df[c].to_numpy() for c in df.columns if c != 'neg_items'}
            if phase in corpus.neg_matrix:
                self.data['neg_items'] = corpus.neg_matrix[phase]
            self.buffer = bool(model.buffer) and phase != 'train'
            self.buffer_dict: dict = {}
            self.rng = np.random.default_rng(model.random_seed + {'train': 0, 'dev': 1, 'test': 2}[phase])
            self.batched = getattr(type(self)._get_feed_dict, 'batched', False)

        def __len__(self) -> int:
            return len(next(iter(self.data.values()))) if self.data else 0

        def __getitem__(self, index):
            """An int gives one instance's feed dict (ReChorus); a list of ints gives a collated batch."""
            if np.isscalar(index):
                return self._get_feed_dict(int(index))
            key = (int(index[0]), len(index)) if self.buffer else None
            if key is not None and key in self.buffer_dict:
                return self.buffer_dict[key]
            index = np.asarray(index, dtype=np.int64)
            if self.batched:
                batch = self._to_tensors(self._get_feed_dict(index), len(index))
            else:
                batch = self.collate_batch([self._get_feed_dict(int(i)) for i in index])
            if key is not None:
                self.buffer_dict[key] = batch
            return batch

        def prepare(self) -> None:
            """ReChorus calls this after construction; model-specific preparation goes in ``_prepare``."""
            self._prepare()

        def _prepare(self) -> None:
            pass

        def _get_feed_dict(self, index):
            raise NotImplementedError

        def actions_before_epoch(self) -> None:
            pass

        def _to_tensors(self, arrays: dict, batch_size: int) -> dict:
            feed_dict = {k: (torch.from_numpy(np.ascontiguousarray(v)) if isinstance(v, np.ndarray) else v)
                         for k, v in arrays.items()}
            feed_dict['batch_size'] = batch_size
            feed_dict['phase'] = self.phase
            return feed_dict

        def collate_batch(self, feed_dicts: list[dict]) -> dict:
            """ReChorus' collation of per-instance feed dicts: stack, right-pad ragged sequences."""
            feed_dict = {}
            for key in feed_dicts[0]:
                values = [np.asarray(d[key]) for d in feed_dicts]
                if values[0].ndim > 0 and len({v.shape for v in values}) > 1:
                    feed_dict[key] = pad_sequence([torch.from_numpy(v) for v in values], batch_first=True)
                else:
                    feed_dict[key] = torch.from_numpy(np.stack(values))
            feed_dict['batch_size'] = len(feed_dicts)
            feed_dict['phase'] = self.phase
            return feed_dict


class GeneralModel(BaseModel):
    reader, runner = 'BaseReader', 'BaseRunner'

    @staticmethod
    def parse_model_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        parser.add_argument('--num_neg', type=int, default=1,
                            help='The number of negative items during training.')
        parser.add_argument('--dropout', type=float, default=0,
                            help='Dropout probability for each deep layer')
        parser.add_argument('--test_all', type=int, default=0,
                            help='Whether testing on all the items (full ranking, clicked items masked).')
        return BaseModel.parse_model_args(parser)

    def __init__(self, args: argparse.Namespace, corpus):
        super().__init__(args, corpus)
        self.user_num = corpus.n_users
        self.item_num = corpus.n_items
        self.num_neg = args.num_neg
        self.dropout = args.dropout
        self.test_all = args.test_all

    class Dataset(BaseModel.Dataset):
        def _prepare(self) -> None:
            self.neg_items = None if self.phase == 'train' else self.data['neg_items']
            super()._prepare()

        @batched
        def _get_feed_dict(self, index):
            """``item_id`` is B × (1 + negatives): the target first, then its negatives."""
            target = self.data['item_id'][index]
            if self.phase != 'train' and self.model.test_all:
                all_items = np.arange(1, self.corpus.n_items)
                candidates = np.concatenate([np.atleast_1d(target)[:, None],
                                             np.broadcast_to(all_items, (np.size(target), len(all_items)))], axis=1)
                candidates = candidates if np.ndim(target) else candidates[0]
            else:
                negs = self.neg_items[index]
                candidates = np.concatenate([np.expand_dims(target, -1), negs], axis=-1)
            return {'user_id': self.data['user_id'][index], 'item_id': candidates}

        def actions_before_epoch(self) -> None:
            """Draw this epoch's negatives for every instance at once (uniform, never a training click)."""
            self.neg_items = sample_excluding(self.data['user_id'], self.model.num_neg, 1, self.corpus.n_items,
                                              self.corpus.train_clicked_keys, self.corpus.n_items, self.rng)


class SequentialModel(GeneralModel):
    reader = 'SeqReader'

    @staticmethod
    def parse_model_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        parser.add_argument('--history_max', type=int, default=20,
                            help='Maximum length of history.')
        return GeneralModel.parse_model_args(parser)

    def __init__(self, args: argparse.Namespace, corpus):
        super().__init__(args, corpus)
        self.history_max = args.history_max

    class Dataset(GeneralModel.Dataset):
        def _prepare(self) -> None:
            keep = self.data['position'] > 0  # an instance needs at least one history item
            self.data = {k: v[keep] for k, v in self.data.items()}
            super()._prepare()

        @batched
        def _get_feed_dict(self, index):
            """Adds right-padded ``history_items``/``history_times`` (B × L, chronological) and ``lengths``."""
            feed_dict = GeneralModel.Dataset._get_feed_dict(self, index)
            single = np.ndim(index) == 0
            idx = np.atleast_1d(index)
            items, times, lengths = self.corpus.gather_history(
                self.data['user_id'][idx], self.data['position'][idx], self.model.history_max)
            if single:
                items, times, lengths = items[0, :lengths[0]], times[0, :lengths[0]], int(lengths[0])
            feed_dict.update(history_items=items, history_times=times, lengths=lengths)
            return feed_dict
