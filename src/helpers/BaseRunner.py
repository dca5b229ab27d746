"""Training loop, evaluation and reporting (ReChorus' BaseRunner, with vectorised evaluation).

Evaluation never materialises a users × candidates score matrix: each batch is scored, ranked and
dropped, so full ranking on large catalogues stays within memory.

Under ``torchrun`` (see docs/distributed.md and ``utils/distributed.py``) the same runner trains with
DistributedDataParallel: each rank trains on its shard of every epoch, evaluates a slice of dev/test
whose per-instance ranks are gathered (the metrics equal a single-process evaluation), and only
rank 0 saves checkpoints, writes result files and decides when to stop.
"""
from __future__ import annotations

import argparse
import gc
import inspect
import logging
import os
import shutil
import time
from collections.abc import Iterator

import numpy as np
import pandas as pd
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler
from tqdm import tqdm

from models.BaseModel import BaseModel
from utils import distributed as dist_utils
from utils import metrics as metric_utils
from utils import optim
from utils import train_state
from utils.atomic_write import atomic_write
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
        parser.add_argument('--snapshot_early_stop', type=int, default=0,
                            help='Also keep the model a run with --early_stop N would end with: when that '
                                 'patience first stops, the best checkpoint so far is copied to <run '
                                 'name>.early_stopN.pt. One run with a longer --early_stop then yields both '
                                 'protocols (evaluate the copy with --train 0 --load 1 --model_path <copy>); '
                                 'training is unchanged. 0 = off.')
        parser.add_argument('--time_budget', type=float, default=0,
                            help='Stop training (as early stopping does: best dev checkpoint restored, then '
                                 'the final report) before an epoch that would end after this many seconds '
                                 'of the training loop; for grids with a deadline. 0 = no limit.')
        parser.add_argument('--resume', type=int, default=0,
                            help='1: continue training from the state the last completed epoch wrote next to the '
                                 'checkpoint (<run name>.state.pt: weights, optimizer, dev history, random '
                                 'generators), e.g. after --time_budget, a crash or Ctrl-C; raise --epoch to train '
                                 'past it. Starts from scratch when there is no state file.')
        parser.add_argument('--lr', type=float, default=1e-3,
                            help='Learning rate.')
        parser.add_argument('--l2', type=float, default=0,
                            help='Weight decay in optimizer.')
        parser.add_argument('--lr_scheduler', type=str, default='', choices=['', 'plateau'],
                            help='plateau: multiply the learning rate by --lr_factor when the dev main metric has '
                                 'not improved for --lr_patience epochs (torch ReduceLROnPlateau), so a high '
                                 'starting --lr can escape the start-up plateau and still converge; '
                                 'empty = constant --lr, as the paper.')
        parser.add_argument('--lr_factor', type=float, default=0.5, help='Factor of each --lr_scheduler reduction.')
        parser.add_argument('--lr_patience', type=int, default=2,
                            help='Epochs without a new best dev result before --lr_scheduler reduces the rate.')
        parser.add_argument('--min_lr', type=float, default=1e-5, help='Floor of --lr_scheduler reductions.')
        parser.add_argument('--batch_size', type=int, default=256,
                            help='Batch size during training. Under torchrun it is per process: a step '
                                 'trains on batch_size x WORLD_SIZE instances, so scale --lr with the world '
                                 'size (linear scaling rule; see docs/distributed.md).')
        parser.add_argument('--eval_batch_size', type=int, default=0,
                            help='Batch size during testing (per process under torchrun); 0: 256 on a GPU, 32 '
                                 'on the CPU, where the 100-candidate relation contexts of smaller batches stay in '
                                 'cache (KDA_LRD Office dev+test: 28 %% less time, half the peak memory; '
                                 'docs/performance.md).')
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
        parser.add_argument('--sparse_embeddings', type=int, default=0,
                            help='Embedding tables with at least this many rows get sparse gradients and lazy '
                                 'Adam (SparseAdam), so a step costs in proportion to the batch, not the '
                                 'catalogue; --l2 then skips them. 0 = off (dense Adam, as the paper).')
        parser.add_argument('--autocast', type=str, default='', choices=['', 'bf16', 'fp16'],
                            help='Mixed precision for forward passes (bf16 pays off on CPUs with AVX-512-BF16 '
                                 'and on GPUs); empty = full fp32.')
        parser.add_argument('--ddp_find_unused', type=int, default=0,
                            help='torchrun only: DistributedDataParallel(find_unused_parameters=...). Set 1 '
                                 'for a model whose training forward leaves some parameters without a '
                                 'gradient (the built-in models use all of theirs).')
        return parser

    def __init__(self, args: argparse.Namespace):
        self.train_models = args.train
        self.epoch = args.epoch
        self.check_epoch = args.check_epoch
        self.test_epoch = args.test_epoch
        self.early_stop = args.early_stop
        self.time_budget = args.time_budget
        self.snapshot_early_stop = getattr(args, 'snapshot_early_stop', 0)
        self.resume = bool(getattr(args, 'resume', 0))
        self.epochs_run = 0
        self.stop_reason = ''
        self.train_s = 0.0  # the training loop's seconds, epochs before a --resume included
        self.learning_rate = args.lr
        self.lr_scheduler = args.lr_scheduler
        self.lr_factor, self.lr_patience, self.min_lr = args.lr_factor, args.lr_patience, args.min_lr
        self.batch_size = args.batch_size
        if args.eval_batch_size < 0:
            raise ValueError(f'--eval_batch_size {args.eval_batch_size}: give a size, or 0 for the device default')
        self.eval_batch_size = args.eval_batch_size or self.default_eval_batch_size(getattr(args, 'device', None))
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
        self.random_seed = getattr(args, 'random_seed', 0)
        self.ddp_find_unused = bool(getattr(args, 'ddp_find_unused', 0))
        self.sparse_embeddings = args.sparse_embeddings
        self._ddp = None  # the DistributedDataParallel wrapper of the trained model (torchrun only)
        self._fit_calls = 0
        self._scheduled, self._schedulers = None, []  # the optimizer the --lr_scheduler schedulers drive

    @staticmethod
    def _progress_kwargs() -> dict:
        """Progress bars on rank 0 only; elsewhere tqdm's own defaults (so TQDM_DISABLE=1 works)."""
        return {} if dist_utils.is_main() else {'disable': True}

    def _autocast(self, device: torch.device):
        """Mixed-precision context for a forward pass (a no-op without ``--autocast``)."""
        return torch.autocast(device.type, dtype=self.autocast_dtype or torch.float32,
                              enabled=self.autocast_dtype is not None)

    @staticmethod
    def default_eval_batch_size(device: torch.device | None) -> int:
        """What ``--eval_batch_size 0`` means: large batches keep a GPU busy, small ones keep a CPU's caches warm."""
        return 256 if device is not None and device.type == 'cuda' else 32

    def _check_time(self, start: bool = False) -> float:
        if self.time is None or start:
            self.time = [time.time()] * 2
            return self.time[0]
        tmp_time = self.time[1]
        self.time[1] = time.time()
        return self.time[1] - tmp_time

    def _build_optimizer(self, model: BaseModel) -> torch.optim.Optimizer | optim.CombinedOptimizer:
        if not hasattr(torch.optim, self.optimizer_name):
            raise ValueError(f'unknown optimizer {self.optimizer_name!r}: use a torch.optim class name')
        optimizer_cls = getattr(torch.optim, self.optimizer_name)
        kwargs = {'lr': self.learning_rate, 'weight_decay': self.l2}
        # The fused kernel updates all parameters in one pass: the dense updates of large embedding
        # tables (192k users x 64 on Electronics) cost ~7x less than with the default implementation.
        if 'fused' in inspect.signature(optimizer_cls).parameters:
            kwargs['fused'] = True
        logging.info(f'Optimizer: {self.optimizer_name} ({"fused" if kwargs.get("fused") else "default"} kernel)')
        groups = model.customize_parameters()
        sparse = []
        if self.sparse_embeddings > 0:
            if dist_utils.is_initialized():
                raise ValueError('--sparse_embeddings is not supported under torchrun (DDP reduces dense gradients)')
            sparse = optim.make_tables_sparse(model, self.sparse_embeddings)
            groups = optim.without(groups, sparse)
            logging.info(f'Sparse gradients and SparseAdam for {len(sparse)} embedding table(s) with '
                         f'>= {self.sparse_embeddings} rows')
        try:
            dense = optimizer_cls(groups, **kwargs)
        except (RuntimeError, ValueError):  # a device or dtype the fused kernel does not support
            kwargs.pop('fused', None)
            dense = optimizer_cls(groups, **kwargs)
        if not sparse:
            return dense
        return optim.CombinedOptimizer(dense, torch.optim.SparseAdam(sparse, lr=self.learning_rate))

    def _loader(self, dataset: BaseModel.Dataset, batch_size: int, shuffle: bool, epoch: int = 0) -> DataLoader:
        """Batches are index lists; the dataset turns each into a collated feed dict.

        Under torchrun, training batches are this rank's shard of an ``epoch``-seeded permutation
        (:class:`utils.distributed.ShardedBatchSampler`) and evaluation batches cover this rank's
        contiguous slice (:func:`utils.distributed.shard_range`).
        """
        if not dist_utils.is_initialized():
            base = RandomSampler(dataset) if shuffle else SequentialSampler(dataset)
            sampler = BatchSampler(base, batch_size, drop_last=False)
        elif shuffle:
            sampler = dist_utils.ShardedBatchSampler(len(dataset), batch_size, seed=self.random_seed)
            sampler.set_epoch(epoch)
        else:
            sampler = BatchSampler(range(*dist_utils.shard_range(len(dataset))), batch_size, drop_last=False)
        return DataLoader(dataset, sampler=sampler, batch_size=None,
                          collate_fn=_identity, num_workers=self.num_workers, pin_memory=self.pin_memory)

    def _training_module(self, model: BaseModel) -> torch.nn.Module:
        """The module whose forward trains: the model itself, or its DDP wrapper under torchrun.

        The wrapper is used for the forward pass only (that is what synchronises gradients); the
        model's own methods (``loss``, ``optimizer``, ``save_model``, evaluation) act on the model.
        """
        if not dist_utils.is_initialized() or not any(p.requires_grad for p in model.parameters()):
            return model
        if self._ddp is None or self._ddp.module is not model:
            device_ids = [model.device.index] if model.device.type == 'cuda' else None
            # buffers are constants (text features, frequency grids): no broadcast of them at every step
            no_buffer_sync = ({'forward_sync_buffers': False}
                              if 'forward_sync_buffers' in inspect.signature(DistributedDataParallel).parameters
                              else {'broadcast_buffers': False})  # the older name, deprecated in newer torch
            self._ddp = DistributedDataParallel(model, device_ids=device_ids,
                                                find_unused_parameters=self.ddp_find_unused, **no_buffer_sync)
        return self._ddp

    def train(self, data_dict: dict[str, BaseModel.Dataset]) -> None:
        model = data_dict['train'].model
        distributed = dist_utils.is_initialized()
        main_metric_results, dev_results = [], []
        loop_start = self._check_time(start=True)
        self.stop_reason = 'max_epoch'
        first_epoch = self._resume(model, data_dict, main_metric_results, dev_results) if self.resume else 0
        if self.snapshot_early_stop > 0 and dist_utils.is_main():
            self._check_snapshot(model, main_metric_results)
        train_s_before = self.train_s
        try:
            for epoch in range(first_epoch, self.epoch):
                self._check_time()
                gc.collect()
                loss = self.fit(data_dict['train'], epoch=epoch + 1)
                if dist_utils.broadcast_object(bool(np.isnan(loss))):  # rank 0 decides
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
                if dist_utils.broadcast_object(max(main_metric_results) == main_metric_results[-1]):
                    if dist_utils.is_main():
                        model.save_model()
                    dist_utils.barrier()
                    logging_str += ' *'
                logging.info(logging_str)
                for line in model.epoch_summary().splitlines():
                    logging.info(f'            {line}')
                self._step_lr(model, main_metric_results[-1], epoch + 1)
                self.epochs_run = epoch + 1
                stop = ''
                if dist_utils.broadcast_object(self.early_stop > 0 and self.eval_termination(main_metric_results)):
                    logging.info(f'Early stop at {epoch + 1} based on dev result.')  # rank 0 decided for all
                    stop = 'early_stop'
                    self._warn_if_never_improved(main_metric_results)
                elif epoch + 1 < self.epoch and dist_utils.broadcast_object(
                        self._out_of_time(loop_start, epoch + 1 - first_epoch)):
                    best = self.best_epoch_of(main_metric_results)
                    state = ('still improving, not converged' if best == epoch + 1
                             else 'early stopping had not triggered')
                    logging.info(f'Stopped by --time_budget {self.time_budget:g} s after epoch {epoch + 1} '
                                 f'(best dev epoch {best}: {state}; --resume 1 continues it).')
                    stop = 'time_budget'
                if self.snapshot_early_stop > 0 and dist_utils.is_main():
                    self._snapshot(model, main_metric_results)
                self.train_s = dist_utils.broadcast_object(train_s_before + time.time() - loop_start)  # rank 0's
                self._save_state(model, data_dict, main_metric_results, dev_results,
                                 stop or ('max_epoch' if epoch + 1 == self.epoch else ''))
                if stop:
                    self.stop_reason = stop
                    break
        except KeyboardInterrupt:
            if distributed:  # ranks interrupted at different points cannot agree on more collectives
                logging.warning(f'Interrupted (Ctrl-C): stopping all ranks; the best model so far is '
                                f'{model.model_path}')
                raise
            logging.info('Early stop manually (Ctrl-C): reporting the best model so far.')
            self.stop_reason = 'interrupted'

        if main_metric_results:
            self.best_epoch = self.best_epoch_of(main_metric_results)
            best_dev = metric_utils.format_metrics(dev_results[self.best_epoch - 1])
            logging.info(f'\nBest Iter(dev)={self.best_epoch:>5}\t dev=({best_dev}) '
                         f'[{self.time[1] - self.time[0]:<.1f} s] ')
        if not distributed:
            if os.path.exists(model.model_path):
                model.load_model()
        elif dist_utils.broadcast_object(os.path.exists(model.model_path)):  # rank 0's checkpoint
            if dist_utils.is_main():
                model.load_model()
            dist_utils.broadcast_state(model)  # every rank continues with rank 0's best model

    def _lr_schedulers(self, model: BaseModel) -> list:
        """The ``--lr_scheduler`` schedulers of the model's current optimizer (none without the option)."""
        if self.lr_scheduler and self._scheduled is not model.optimizer:
            opts = ([model.optimizer.dense, model.optimizer.sparse]
                    if isinstance(model.optimizer, optim.CombinedOptimizer) else [model.optimizer])
            self._schedulers = [torch.optim.lr_scheduler.ReduceLROnPlateau(
                o, mode='max', factor=self.lr_factor, patience=self.lr_patience, min_lr=self.min_lr) for o in opts]
            self._scheduled = model.optimizer
        return self._schedulers

    def _step_lr(self, model: BaseModel, dev_metric: float, epoch: int) -> None:
        """Feed the dev main metric to ``--lr_scheduler`` (every rank sees the same value) and log changes."""
        if not self.lr_scheduler:
            return
        schedulers = self._lr_schedulers(model)
        before = schedulers[0].optimizer.param_groups[0]['lr']
        for scheduler in schedulers:
            scheduler.step(dev_metric)
        after = schedulers[0].optimizer.param_groups[0]['lr']
        if after != before:
            logging.info(f'Learning rate {before:.3g} -> {after:.3g} after epoch {epoch} '
                         f'(no better dev {self.main_metric} for {self.lr_patience + 1} epochs).')

    @staticmethod
    def _rng_objects(model: BaseModel, data_dict: dict[str, BaseModel.Dataset]) -> dict[str, object]:
        """Where the random generators that draw during training live (see utils/train_state.py)."""
        return {'model': model, **data_dict}

    def _save_state(self, model: BaseModel, data_dict: dict[str, BaseModel.Dataset], main_metric_results: list,
                    dev_results: list, stop_reason: str) -> None:
        """Write the training state of the epoch just finished (rank 0; every rank's generators)."""
        rng = train_state.rng_state(self._rng_objects(model, data_dict))
        rngs = dist_utils.all_gather_object(rng)
        if dist_utils.is_main():
            train_state.save(train_state.state_path(model.model_path), {
                'epoch': self.epochs_run, 'model': model.state_dict(), 'optimizer': model.optimizer.state_dict(),
                'schedulers': [s.state_dict() for s in self._lr_schedulers(model)],
                'main_metric': list(main_metric_results), 'dev_results': list(dev_results),
                'stop_reason': stop_reason, 'rng': rngs, 'train_s': self.train_s})

    def _resume(self, model: BaseModel, data_dict: dict[str, BaseModel.Dataset], main_metric_results: list,
                dev_results: list) -> int:
        """Load the state the last completed epoch wrote (rank 0 reads, every rank gets it); returns the number of
        epochs already trained, or ``self.epoch`` when the saved run has nothing left to train."""
        path = train_state.state_path(model.model_path)
        state = None
        if dist_utils.is_main() and os.path.exists(path):
            state = train_state.load(path)
        state = dist_utils.broadcast_object(state)
        if state is None:
            logging.info(f'--resume 1: no training state at {path}; training from scratch.')
            return 0
        model.load_state_dict(state['model'])
        model.optimizer = self._build_optimizer(model)
        model.optimizer.load_state_dict(state['optimizer'])
        for scheduler, saved in zip(self._lr_schedulers(model), state['schedulers']):
            scheduler.load_state_dict(saved)
        main_metric_results.extend(state['main_metric'])
        dev_results.extend(state['dev_results'])
        self.train_s = float(state.get('train_s', 0.0))  # states written before this field: unknown, counted as 0
        rngs = state['rng']
        rank = dist_utils.get_rank()
        if len(rngs) == dist_utils.get_world_size():
            lost = train_state.set_rng_state(rngs[rank], self._rng_objects(model, data_dict))
            if lost:
                logging.warning(f'--resume 1: random generators {lost} of the saved run do not exist here.')
        else:
            logging.warning(f'--resume 1: the state was saved by {len(rngs)} processes, this run has '
                            f'{dist_utils.get_world_size()}; continuing with fresh random generators.')
        self.epochs_run, saved_reason = int(state['epoch']), str(state['stop_reason'])
        best = self.best_epoch_of(main_metric_results)
        done = self.epochs_run >= self.epoch or bool(self.early_stop > 0 and main_metric_results
                                                     and self.eval_termination(main_metric_results))
        logging.info(f'--resume 1: {path} after epoch {self.epochs_run} (best dev epoch {best}, stopped by '
                     f'{saved_reason or "an interruption"}); '
                     + ('nothing left to train under --epoch and --early_stop.' if done
                        else f'continuing with epoch {self.epochs_run + 1}.'))
        if done:
            self.stop_reason = saved_reason or self.stop_reason
            return self.epoch
        return self.epochs_run

    def _check_snapshot(self, model: BaseModel, criterion: list[float]) -> None:
        """Before training: a snapshot left by another run at this path is removed; one this (resumed) run should have
        made but did not, because it passed that patience's stop without --snapshot_early_stop, is reported."""
        path = train_state.snapshot_path(model.model_path, self.snapshot_early_stop)
        passed = self.first_stop_epoch(criterion, self.snapshot_early_stop)
        if not passed and os.path.exists(path):
            os.remove(path)
            logging.info(f'Removed {path}: another run\'s --snapshot_early_stop copy.')
        elif passed and not os.path.exists(path):
            logging.warning(f'--snapshot_early_stop {self.snapshot_early_stop}: that patience stopped this run at '
                            f'epoch {passed}, before the option was given, so its checkpoint was not kept.')

    def _snapshot(self, model: BaseModel, criterion: list[float]) -> None:
        """Copy the best checkpoint at the epoch where ``--early_stop snapshot_early_stop`` first stops."""
        patience = self.snapshot_early_stop
        if self.first_stop_epoch(criterion, patience) != len(criterion):
            return
        path = train_state.snapshot_path(model.model_path, patience)
        with open(model.model_path, 'rb') as best:
            atomic_write(path, lambda f: shutil.copyfileobj(best, f))
        logging.info(f'--early_stop {patience} would stop here (best dev epoch {self.best_epoch_of(criterion)}): '
                     f'its model is copied to {path}')

    def _out_of_time(self, loop_start: float, epochs_done: int) -> bool:
        """True when one more epoch (at the mean epoch time so far) would end past ``--time_budget``."""
        if self.time_budget <= 0:
            return False
        elapsed = time.time() - loop_start
        return elapsed + elapsed / epochs_done > self.time_budget

    def _warn_if_never_improved(self, criterion: list[float]) -> None:
        """Early stopping right after the first epochs often means the run never left the start-up plateau of the
        relational models (docs/results.md): its metrics are then near chance, not a converged result."""
        best = self.best_epoch_of(criterion)
        if best <= self.early_stop:
            logging.warning(f'The best dev {self.main_metric} ({max(criterion):.4f}) came at epoch {best}, within the '
                            f'first --early_stop {self.early_stop} epochs. If that is near chance (a random order of '
                            '100 candidates gives HR@5 0.05, NDCG@5 0.03), the run stopped on the start-up plateau, '
                            'not at convergence: continue it with --resume 1 and a larger --early_stop (rerunning it '
                            'with the same arguments stops the same way on the CPU).')

    @staticmethod
    def best_epoch_of(criterion: list[float]) -> int:
        """1-based epoch of the best dev value (the first on ties); 0 before any epoch."""
        return criterion.index(max(criterion)) + 1 if criterion else 0

    def eval_termination(self, criterion: list[float], patience: int | None = None) -> bool:
        """ReChorus' rule: stop after ``early_stop`` (or ``patience``) non-increasing epochs or as many without a
        new best."""
        patience = self.early_stop if patience is None else patience
        tail = criterion[-patience:]
        if len(criterion) > patience and all(a >= b for a, b in zip(tail, tail[1:])):
            return True
        return len(criterion) - self.best_epoch_of(criterion) >= patience

    def first_stop_epoch(self, criterion: list[float], patience: int) -> int:
        """1-based epoch at which a run with ``--early_stop patience`` would have stopped; 0 if it would not yet."""
        return next((n for n in range(1, len(criterion) + 1) if self.eval_termination(criterion[:n], patience)), 0)

    def fit(self, dataset: BaseModel.Dataset, epoch: int = -1) -> float:
        """One epoch; returns the mean batch loss (over all ranks' batches under torchrun)."""
        model = dataset.model
        if model.optimizer is None:
            model.optimizer = self._build_optimizer(model)
        self._fit_calls += 1
        module = self._training_module(model)
        tick = time.perf_counter()
        dataset.actions_before_epoch()  # identical on every rank: same seeds, same negatives
        model.train()
        loss_lst = []
        self.data_seconds = time.perf_counter() - tick  # sampling + batch building + transfers
        tick = time.perf_counter()
        loader = self._loader(dataset, self.batch_size, shuffle=True, epoch=epoch if epoch >= 0 else self._fit_calls)
        for batch in tqdm(loader, leave=False, desc=f'Epoch {epoch:<3}', ncols=100, mininterval=1,
                          **self._progress_kwargs()):
            batch = batch_to_device(batch, model.device)
            self.data_seconds += time.perf_counter() - tick
            model.optimizer.zero_grad()
            with self._autocast(model.device):
                out_dict = module(batch)
                loss = model.loss(out_dict)
            loss.backward()
            model.optimizer.step()
            loss_lst.append(loss.detach())
            tick = time.perf_counter()
        if dist_utils.is_initialized():
            total, count = dist_utils.all_reduce_sum(
                [float(torch.stack(loss_lst).sum().cpu()) if loss_lst else 0.0, len(loss_lst)])
            return total / count if count else float('nan')
        return float(torch.stack(loss_lst).mean().cpu()) if loss_lst else float('nan')

    @torch.no_grad()
    def predict_batches(self, dataset: BaseModel.Dataset) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        """Yield ``(batch index array, scores B × C)`` with clicked items masked under full ranking.

        Under torchrun it covers this rank's slice of the instances only (``evaluate`` and
        ``save_rec_results`` gather the slices).
        """
        model = dataset.model
        model.eval()
        start = dist_utils.shard_range(len(dataset))[0]
        for batch in tqdm(self._loader(dataset, self.eval_batch_size, shuffle=False), leave=False,
                          ncols=100, mininterval=1, desc='Predict', **self._progress_kwargs()):
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
        starts, ends = corpus.clicked_start[users], corpus.clicked_start[users + 1]
        counts = ends - starts
        rows = np.repeat(np.arange(len(users)), counts)
        flat = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts) + np.repeat(starts, counts)
        prediction[rows, corpus.clicked_items[flat]] = -np.inf  # column j holds item j (column 0 the target)

    def evaluate(self, dataset: BaseModel.Dataset, topks: list[int], metrics: list[str]) -> dict[str, float]:
        """Metrics over all instances; under torchrun every rank ranks its slice and gets the gathered result."""
        parts = [metric_utils.rank_of_truth(p) for _, p in self.predict_batches(dataset)]
        return self.gathered_metrics(parts, topks, metrics)

    @staticmethod
    def gathered_metrics(parts: list[np.ndarray], topks: list[int], metrics: list[str]) -> dict[str, float]:
        """Metrics of this process' ranks (batches of ``predict_batches``), gathered over ranks under torchrun."""
        if not dist_utils.is_initialized():
            return metric_utils.ranking_metrics(np.concatenate(parts), topks, metrics)
        local = np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, dtype=np.int64)
        return metric_utils.ranking_metrics(dist_utils.all_gather_array(local), topks, metrics)

    def print_res(self, dataset: BaseModel.Dataset) -> str:
        return '(' + metric_utils.format_metrics(self.evaluate(dataset, self.topk, self.metrics)) + ')'

    def save_rec_results(self, dataset: BaseModel.Dataset, path: str, topk: int) -> None:
        """Top-k recommendation list per evaluated instance, as a CSV for later inspection.

        Under torchrun every rank must call it: the ranks' slices are gathered and rank 0 writes the file.
        """
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
            recs.append(items)
            scores.append(np.round(np.take_along_axis(prediction, top, axis=1), 4))
        if dist_utils.is_initialized():
            users, recs, scores = self._gather_rec_results(users, recs, scores)
            if not dist_utils.is_main():
                return
        check_dir(path)
        recs, scores = np.concatenate(recs), np.concatenate(scores)
        finite = np.isfinite(scores)  # full ranking masks clicked items with -inf: never list them
        pd.DataFrame({'user_id': np.concatenate(users),
                      'rec_items': [r[f].tolist() for r, f in zip(recs, finite)],
                      'rec_predictions': [s[f].tolist() for s, f in zip(scores, finite)]}
                     ).to_csv(path, sep='\t', index=False)
        logging.info(f'Saved top-{topk} recommendations to {path}')

    @staticmethod
    def _gather_rec_results(users: list, recs: list, scores: list) -> tuple[list, list, list]:
        """Every rank's top-k rows, in instance order (the slices are contiguous and in rank order)."""
        def local(parts: list, dtype, ndim: int) -> np.ndarray:
            if parts:
                return np.concatenate(parts).astype(dtype, copy=False)
            return np.zeros((0,) * ndim, dtype=dtype)
        return ([dist_utils.all_gather_array(local(users, np.int64, 1))],
                [dist_utils.all_gather_array(local(recs, np.int64, 2))],
                [dist_utils.all_gather_array(local(scores, np.float32, 2))])
