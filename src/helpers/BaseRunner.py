"""Training loop, evaluation and reporting (ReChorus' BaseRunner, with vectorised evaluation).

Evaluation never materialises a users × candidates score matrix: each batch is scored, ranked and
dropped, so full ranking on large catalogues stays within memory.
"""
from __future__ import annotations

import argparse
import gc
import logging
import os
import time

import numpy as np
import pandas as pd
import torch
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler
from tqdm import tqdm

from models.BaseModel import BaseModel
from utils import metrics as metric_utils
from utils.runtime import batch_to_device, check_dir


def _identity(batch):
    return batch


class BaseRunner:
    @staticmethod
    def parse_runner_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        parser.add_argument('--epoch', type=int, default=200,
                            help='Number of epochs.')
        parser.add_argument('--check_epoch', type=int, default=1,
                            help='Check some tensors every check_epoch.')
        parser.add_argument('--test_epoch', type=int, default=-1,
                            help='Print test results every test_epoch (-1 means no print).')
        parser.add_argument('--early_stop', type=int, default=10,
                            help='The number of epochs when dev results drop continuously.')
        parser.add_argument('--lr', type=float, default=1e-3,
                            help='Learning rate.')
        parser.add_argument('--l2', type=float, default=0,
                            help='Weight decay in optimizer.')
        parser.add_argument('--batch_size', type=int, default=256,
                            help='Batch size during training.')
        parser.add_argument('--eval_batch_size', type=int, default=256,
                            help='Batch size during testing.')
        parser.add_argument('--optimizer', type=str, default='Adam',
                            help='optimizer: any torch.optim class name, e.g. SGD, Adam, AdamW, Adagrad')
        parser.add_argument('--num_workers', type=int, default=0,
                            help='Number of processes when preparing batches (batches are vectorised, '
                                 'so 0 is usually fastest).')
        parser.add_argument('--pin_memory', type=int, default=0,
                            help='pin_memory in DataLoader')
        parser.add_argument('--topk', type=str, default='5,10,20,50',
                            help='The number of items recommended to each user.')
        parser.add_argument('--metric', type=str, default='NDCG,HR',
                            help='metrics: NDCG, HR')
        parser.add_argument('--main_metric', type=str, default='',
                            help='Main metric to determine the best model (default: first metric at first k).')
        parser.add_argument('--autocast', type=str, default='', choices=['', 'bf16', 'fp16'],
                            help='Mixed precision for forward passes (bf16 pays off on CPUs with AVX-512-BF16 '
                                 'and on GPUs); empty = full fp32.')
        return parser

    def __init__(self, args: argparse.Namespace):
        self.train_models = args.train
        self.epoch = args.epoch
        self.check_epoch = args.check_epoch
        self.test_epoch = args.test_epoch
        self.early_stop = args.early_stop
        self.learning_rate = args.lr
        self.batch_size = args.batch_size
        self.eval_batch_size = args.eval_batch_size
        self.l2 = args.l2
        self.optimizer_name = args.optimizer
        self.num_workers = args.num_workers
        self.pin_memory = bool(args.pin_memory)
        self.topk = [int(x) for x in args.topk.split(',')]
        self.metrics = [m.strip().upper() for m in args.metric.split(',')]
        self.main_metric = args.main_metric or f'{self.metrics[0]}@{self.topk[0]}'
        self.main_topk = int(self.main_metric.split('@')[1])
        self.autocast_dtype = {'': None, 'bf16': torch.bfloat16, 'fp16': torch.float16}[args.autocast]
        self.time = None
        self.data_seconds = 0.0

    def _autocast(self, device: torch.device):
        """Mixed-precision context for a forward pass (a no-op without ``--autocast``)."""
        return torch.autocast(device.type, dtype=self.autocast_dtype or torch.float32,
                              enabled=self.autocast_dtype is not None)

    def _check_time(self, start: bool = False) -> float:
        if self.time is None or start:
            self.time = [time.time()] * 2
            return self.time[0]
        tmp_time = self.time[1]
        self.time[1] = time.time()
        return self.time[1] - tmp_time

    def _build_optimizer(self, model: BaseModel) -> torch.optim.Optimizer:
        if not hasattr(torch.optim, self.optimizer_name):
            raise ValueError(f'unknown optimizer {self.optimizer_name!r}: use a torch.optim class name')
        logging.info('Optimizer: ' + self.optimizer_name)
        return getattr(torch.optim, self.optimizer_name)(
            model.customize_parameters(), lr=self.learning_rate, weight_decay=self.l2)

    def _loader(self, dataset: BaseModel.Dataset, batch_size: int, shuffle: bool) -> DataLoader:
        """Batches are index lists; the dataset turns each into a collated feed dict."""
        base = RandomSampler(dataset) if shuffle else SequentialSampler(dataset)
        return DataLoader(dataset, sampler=BatchSampler(base, batch_size, drop_last=False), batch_size=None,
                          collate_fn=_identity, num_workers=self.num_workers, pin_memory=self.pin_memory)

    def train(self, data_dict: dict[str, BaseModel.Dataset]) -> None:
        model = data_dict['train'].model
        main_metric_results, dev_results = [], []
        self._check_time(start=True)
        try:
            for epoch in range(self.epoch):
                self._check_time()
                gc.collect()
                loss = self.fit(data_dict['train'], epoch=epoch + 1)
                if np.isnan(loss):
                    logging.info(f'Loss is Nan. Stop training at {epoch + 1}.')
                    break
                training_time = self._check_time()
                if model.check_list and self.check_epoch > 0 and epoch % self.check_epoch == 0:
                    for name, tensor in model.check_list:
                        logging.info(f'{name}: {tensor.detach().cpu().numpy()}')
                dev_result = self.evaluate(data_dict['dev'], [self.main_topk], self.metrics)
                dev_results.append(dev_result)
                main_metric_results.append(dev_result[self.main_metric])
                logging_str = (f'Epoch {epoch + 1:<5} loss={loss:<.4f} [{training_time:<3.1f} s, data '
                               f'{self.data_seconds:.1f} s]    dev=({metric_utils.format_metrics(dev_result)})')
                if self.test_epoch > 0 and epoch % self.test_epoch == 0:
                    test_result = self.evaluate(data_dict['test'], self.topk[:1], self.metrics)
                    logging_str += f' test=({metric_utils.format_metrics(test_result)})'
                testing_time = self._check_time()
                logging_str += f' [{testing_time:<.1f} s]'
                if max(main_metric_results) == main_metric_results[-1]:
                    model.save_model()
                    logging_str += ' *'
                logging.info(logging_str)
                if self.early_stop > 0 and self.eval_termination(main_metric_results):
                    logging.info(f'Early stop at {epoch + 1} based on dev result.')
                    break
        except KeyboardInterrupt:
            logging.info('Early stop manually (Ctrl-C): reporting the best model so far.')

        if main_metric_results:
            best_epoch = main_metric_results.index(max(main_metric_results))
            logging.info(f'\nBest Iter(dev)={best_epoch + 1:>5}\t dev=({metric_utils.format_metrics(dev_results[best_epoch])}) '
                         f'[{self.time[1] - self.time[0]:<.1f} s] ')
            self.best_epoch = best_epoch + 1
        if os.path.exists(model.model_path):
            model.load_model()

    def eval_termination(self, criterion: list[float]) -> bool:
        """ReChorus' rule: stop after ``early_stop`` non-increasing epochs or as many without a new best."""
        tail = criterion[-self.early_stop:]
        if len(criterion) > self.early_stop and all(a >= b for a, b in zip(tail, tail[1:])):
            return True
        return len(criterion) - criterion.index(max(criterion)) > self.early_stop

    def fit(self, dataset: BaseModel.Dataset, epoch: int = -1) -> float:
        model = dataset.model
        if model.optimizer is None:
            model.optimizer = self._build_optimizer(model)
        tick = time.perf_counter()
        dataset.actions_before_epoch()
        model.train()
        loss_lst = []
        self.data_seconds = time.perf_counter() - tick  # sampling + batch building + transfers
        tick = time.perf_counter()
        for batch in tqdm(self._loader(dataset, self.batch_size, shuffle=True), leave=False,
                          desc=f'Epoch {epoch:<3}', ncols=100, mininterval=1):
            batch = batch_to_device(batch, model.device)
            self.data_seconds += time.perf_counter() - tick
            model.optimizer.zero_grad()
            with self._autocast(model.device):
                out_dict = model(batch)
                loss = model.loss(out_dict)
            loss.backward()
            model.optimizer.step()
            loss_lst.append(loss.detach())
            tick = time.perf_counter()
        return float(torch.stack(loss_lst).mean().cpu()) if loss_lst else float('nan')

    @torch.no_grad()
    def predict_batches(self, dataset: BaseModel.Dataset):
        """Yield ``(batch index array, scores B × C)`` with clicked items masked under full ranking."""
        model = dataset.model
        model.eval()
        start = 0
        for batch in tqdm(self._loader(dataset, self.eval_batch_size, shuffle=False), leave=False,
                          ncols=100, mininterval=1, desc='Predict'):
            n = batch['batch_size']
            index = np.arange(start, start + n)
            start += n
            with self._autocast(model.device):
                prediction = model(batch_to_device(batch, model.device))['prediction']
            prediction = prediction.float().cpu().numpy()
            if getattr(model, 'test_all', 0):
                self._mask_clicked(dataset, index, prediction)
            yield index, prediction

    @staticmethod
    def _mask_clicked(dataset: BaseModel.Dataset, index: np.ndarray, prediction: np.ndarray) -> None:
        """Full ranking: every item the user interacted with (train/dev/test) is removed, except column 0."""
        corpus = dataset.corpus
        users = dataset.data['user_id'][index]
        starts, ends = corpus.his_start[users], corpus.his_start[users + 1]
        counts = ends - starts
        rows = np.repeat(np.arange(len(users)), counts)
        flat = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts) + np.repeat(starts, counts)
        prediction[rows, corpus.his_items[flat]] = -np.inf  # column j holds item j (column 0 the target)

    def evaluate(self, dataset: BaseModel.Dataset, topks: list[int], metrics: list[str]) -> dict[str, float]:
        ranks = np.concatenate([metric_utils.rank_of_truth(p) for _, p in self.predict_batches(dataset)])
        return metric_utils.ranking_metrics(ranks, topks, metrics)

    def print_res(self, dataset: BaseModel.Dataset) -> str:
        return '(' + metric_utils.format_metrics(self.evaluate(dataset, self.topk, self.metrics)) + ')'

    def save_rec_results(self, dataset: BaseModel.Dataset, path: str, topk: int) -> None:
        """Top-k recommendation list per evaluated instance, as a CSV for later inspection."""
        users, recs, scores = [], [], []
        for index, prediction in self.predict_batches(dataset):
            candidates = dataset.data['neg_items'][index] if not dataset.model.test_all else None
            k = min(topk, prediction.shape[1])
            top = np.argsort(-prediction, axis=1, kind='stable')[:, :k]
            if candidates is None:
                items = np.where(top == 0, dataset.data['item_id'][index][:, None], top)
            else:
                all_candidates = np.concatenate([dataset.data['item_id'][index][:, None], candidates], axis=1)
                items = np.take_along_axis(all_candidates, top, axis=1)
            users.append(dataset.data['user_id'][index])
            recs.extend(items.tolist())
            scores.extend(np.round(np.take_along_axis(prediction, top, axis=1), 4).tolist())
        check_dir(path)
        pd.DataFrame({'user_id': np.concatenate(users), 'rec_items': recs, 'rec_predictions': scores}
                     ).to_csv(path, sep='\t', index=False)
        logging.info(f'Saved top-{topk} recommendations to {path}')
