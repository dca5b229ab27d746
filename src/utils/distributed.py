"""Distributed data-parallel plumbing for ``torchrun`` launches (see docs/distributed.md).

Everything here is a no-op, or the identity, in an ordinary single-process run, so the callers need
no ``if distributed`` around every use. A run counts as distributed when a launcher such as
``torchrun`` sets ``WORLD_SIZE`` > 1 (with ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``);
``torchrun --nproc_per_node 1`` is an ordinary run.

Conventions:
- Training: every rank draws the same per-epoch negatives (the datasets' RNGs are seeded by
  ``--random_seed``) and the same epoch-seeded permutation of the training instances; each global
  step takes ``batch_size × world_size`` instances of that permutation and rank r trains on the
  r-th strided part (:class:`ShardedBatchSampler`), so the shards of an epoch are disjoint and cover
  the training set, and every rank runs the same number of steps.
- Evaluation: rank r scores a contiguous slice of the dev/test instances (:func:`shard_range`);
  per-instance results are gathered (:func:`all_gather_array`) in instance order, so the metrics are
  those of a single-process evaluation.
- Rank 0 alone writes files (log, checkpoint, corpus cache, top-k CSVs) and decides early stopping.
"""
from __future__ import annotations

import argparse
import datetime
import logging
import os
import time

import numpy as np
import torch
import torch.distributed as dist

ENV_VARS = ('WORLD_SIZE', 'RANK', 'LOCAL_RANK', 'MASTER_ADDR', 'MASTER_PORT')
PEER_FAILURE_GRACE_S = 3.0  # a rank that fails because a peer died waits this long before exiting
# After destroy_process_group, Gloo's threads still wind down for a moment; a process whose interpreter
# finalises in that window dies with SIGABRT ("terminate called without an active exception") after a
# finished run: 12 of 60 two-process CPU runs on torch 2.13, none of 140 with a 0.1-0.5 s pause (docs/distributed.md).
TEARDOWN_SETTLE_S = 0.5

_backend: str | None = None
_failed = False


def parse_ddp_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument('--ddp_backend', type=str, default='auto', choices=['auto', 'nccl', 'gloo'],
                        help='torchrun only: torch.distributed backend (auto: NCCL on GPUs, Gloo on CPU).')
    parser.add_argument('--ddp_timeout', type=float, default=1800,
                        help='torchrun only: seconds a rank waits for the others at init and in any '
                             'collective (barrier, all-reduce) before failing.')
    return parser


# --------------------------------------------------------------------------- detection and ranks

def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, '')
    return int(value) if value.strip() else default


def launched() -> bool:
    """True when a launcher asked for more than one process (``WORLD_SIZE`` > 1)."""
    return _env_int('WORLD_SIZE', 1) > 1


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    """This process' global rank: from the process group, else from the environment (0 when not launched)."""
    if is_initialized():
        return dist.get_rank()
    return _env_int('RANK', 0) if launched() else 0


def get_world_size() -> int:
    if is_initialized():
        return dist.get_world_size()
    return _env_int('WORLD_SIZE', 1) if launched() else 1


def get_local_rank() -> int:
    return _env_int('LOCAL_RANK', get_rank()) if launched() else 0


def is_main() -> bool:
    """Whether this process writes files and logs (rank 0, or the only process)."""
    return get_rank() == 0


def backend() -> str | None:
    return _backend if is_initialized() else None


# --------------------------------------------------------------------------- init and teardown

def init(device: torch.device, backend_name: str = 'auto', timeout_s: float = 1800) -> str:
    """Join the process group of a launched run (env:// rendezvous); returns the backend's name."""
    global _backend, _failed
    missing = [v for v in ENV_VARS if v not in os.environ and v != 'LOCAL_RANK']
    if missing:
        raise RuntimeError(f'WORLD_SIZE={os.environ.get("WORLD_SIZE")} asks for a distributed run, but '
                           f'{", ".join(missing)} is not set: launch with torchrun (see docs/distributed.md)')
    if backend_name == 'auto':
        backend_name = 'nccl' if device.type == 'cuda' else 'gloo'
    if backend_name == 'nccl' and device.type != 'cuda':
        raise ValueError('--ddp_backend nccl needs GPUs: pass --gpu with a device, or use gloo on CPU')
    if device.type == 'cuda':
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend_name, timeout=datetime.timedelta(seconds=timeout_s))
    _backend, _failed = backend_name, False
    return backend_name


def teardown() -> None:
    """Leave the process group (abort it after a failure on NCCL, where a destroy can block)."""
    global _backend
    if not is_initialized():
        return
    try:
        if _failed and _backend == 'nccl' and hasattr(dist.distributed_c10d, '_abort_process_group'):
            dist.distributed_c10d._abort_process_group()
        else:
            dist.destroy_process_group()
            time.sleep(TEARDOWN_SETTLE_S)
    except Exception as e:  # noqa: BLE001 - tearing down after a failure must not mask it
        logging.warning(f'[rank {get_rank()}] process group teardown failed: {e}')
    _backend = None


def is_peer_failure(exc: BaseException) -> bool:
    """Whether an exception is a collective failing because another rank went away."""
    if isinstance(exc, getattr(dist, 'DistError', ())):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and any(s in text for s in (
        'Connection closed by peer', 'Connection reset by peer', 'Broken pipe', 'NCCL communicator was aborted',
        'Socket Timeout', 'Timed out waiting'))


def report_failure(exc: BaseException) -> None:
    """Log an exception with this rank's number and hand it to torchrun's error file.

    A rank whose collective failed because a peer died waits a moment before exiting, so that the
    launcher sees the rank that failed first and names it (with its error) as the root cause.
    """
    global _failed
    _failed = True
    rank = get_rank()
    if isinstance(exc, KeyboardInterrupt):
        logging.warning(f'[rank {rank}] interrupted (Ctrl-C): stopping')
        return
    if isinstance(exc, SystemExit) and exc.code in (0, None):
        return
    # rank 0 logs the traceback into the run's log file too; Python prints it to stderr on every rank
    logging.error(f'[rank {rank}] failed: {type(exc).__name__}: {exc}', exc_info=exc if rank == 0 else None)
    if is_peer_failure(exc):
        time.sleep(PEER_FAILURE_GRACE_S)
        return
    from torch.distributed.elastic.multiprocessing.errors import ErrorHandler
    ErrorHandler().record_exception(exc)  # writes $TORCHELASTIC_ERROR_FILE under torchrun, else nothing


# --------------------------------------------------------------------------- collectives

def _comm_device() -> torch.device:
    return torch.device('cuda', torch.cuda.current_device()) if _backend == 'nccl' else torch.device('cpu')


def barrier() -> None:
    if is_initialized():
        if _backend == 'nccl':
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


def broadcast_object(obj: object, src: int = 0) -> object:
    """Rank ``src``'s value of a picklable object, on every rank."""
    if not is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj: object) -> list:
    """Every rank's value of a picklable object, in rank order (``[obj]`` outside torchrun)."""
    if not is_initialized():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def all_reduce_sum(values: np.ndarray | list[float]) -> np.ndarray:
    """Element-wise sum over ranks of a small float vector (float64)."""
    array = np.asarray(values, dtype=np.float64)
    if not is_initialized():
        return array
    tensor = torch.from_numpy(array.copy()).to(_comm_device())
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.cpu().numpy()


def all_gather_array(array: np.ndarray) -> np.ndarray:
    """Concatenate every rank's array along axis 0, in rank order.

    The arrays may differ in their first dimension (and, for empty ones, in the others); all ranks
    must pass the same dtype and number of dimensions.
    """
    array = np.ascontiguousarray(array)
    if not is_initialized():
        return array
    device, world = _comm_device(), dist.get_world_size()
    shape = torch.tensor(array.shape, dtype=torch.int64, device=device)
    shapes = [torch.empty_like(shape) for _ in range(world)]
    dist.all_gather(shapes, shape)
    shapes = [tuple(int(x) for x in s.cpu()) for s in shapes]
    sizes = [int(np.prod(s)) for s in shapes]
    flat = torch.zeros(max(max(sizes), 1), dtype=torch.from_numpy(array[:0].reshape(-1)).dtype, device=device)
    flat[:array.size] = torch.from_numpy(array.reshape(-1)).to(device)
    gathered = [torch.empty_like(flat) for _ in range(world)]
    dist.all_gather(gathered, flat)
    parts = [g[:n].cpu().numpy().reshape(s) for g, n, s in zip(gathered, sizes, shapes)]
    non_empty = [p for p in parts if p.shape[0] > 0]
    return np.concatenate(non_empty) if non_empty else parts[0]


def broadcast_state(module: torch.nn.Module, src: int = 0) -> None:
    """Overwrite every parameter and buffer of the state dict with rank ``src``'s values."""
    if not is_initialized():
        return
    with torch.no_grad():
        for tensor in module.state_dict().values():
            if tensor.is_contiguous():
                dist.broadcast(tensor, src=src)
            else:
                copy = tensor.contiguous()
                dist.broadcast(copy, src=src)
                tensor.copy_(copy)


# --------------------------------------------------------------------------- sharding

def shard_range(n: int, rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """Contiguous slice ``[start, stop)`` of ``n`` instances that ``rank`` evaluates (all when not distributed)."""
    rank = get_rank() if rank is None else rank
    world_size = get_world_size() if world_size is None else world_size
    return rank * n // world_size, (rank + 1) * n // world_size


class ShardedBatchSampler:
    """Per-rank batches of index lists over an epoch-seeded permutation shared by all ranks.

    Global step g covers ``perm[g·B·W : (g+1)·B·W]`` (B = per-rank batch size, W = world size) and
    rank r takes its strided part ``[r::W]``; a last global batch with fewer than W instances is
    merged into the previous one, so every rank gets at least one instance in every step. Over an
    epoch the ranks' shards are disjoint and cover all instances, and all ranks run ``len(self)``
    steps (DDP needs the same number of backward passes on every rank). Call :meth:`set_epoch`
    before each epoch, as with ``DistributedSampler``.
    """

    def __init__(self, n: int, batch_size: int, rank: int | None = None, world_size: int | None = None,
                 seed: int = 0, shuffle: bool = True):
        self.n, self.batch_size, self.seed, self.shuffle = n, batch_size, seed, shuffle
        self.rank = get_rank() if rank is None else rank
        self.world_size = get_world_size() if world_size is None else world_size
        if batch_size < 1:
            raise ValueError(f'batch size must be positive, got {batch_size}')
        if n < self.world_size:
            raise ValueError(f'{n} training instance(s) cannot be shared by {self.world_size} ranks: '
                             'use fewer processes')
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def global_batches(self) -> list[np.ndarray]:
        order = (np.random.default_rng([self.seed, self.epoch]).permutation(self.n) if self.shuffle
                 else np.arange(self.n))
        step = self.batch_size * self.world_size
        chunks = [order[i:i + step] for i in range(0, self.n, step)]
        if len(chunks) > 1 and len(chunks[-1]) < self.world_size:
            chunks[-2:] = [np.concatenate(chunks[-2:])]
        return chunks

    def __iter__(self):
        for chunk in self.global_batches():
            yield chunk[self.rank::self.world_size].tolist()

    def __len__(self) -> int:
        steps = -(-self.n // (self.batch_size * self.world_size))
        last = self.n - (steps - 1) * self.batch_size * self.world_size
        return steps - 1 if steps > 1 and last < self.world_size else steps
