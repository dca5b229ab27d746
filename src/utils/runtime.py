"""Process-level plumbing shared by the entry points: paths, seeding, devices, batches."""
from __future__ import annotations

import argparse
import os
import random
from pathlib import Path

import numpy as np
import torch

SRC_DIR = Path(__file__).resolve().parents[1]
REPO_DIR = SRC_DIR.parent


def init_seed(seed: int) -> None:
    """Seed every RNG a run touches, so a run is repeatable for a given seed."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def configure_cpu(args: argparse.Namespace) -> None:
    """Threads from OMP_NUM_THREADS, and subnormal floats flushed to zero unless ``--flush_denormal 0``.

    Subnormals (|x| < 1.2e-38) take a slow microcode path on x86: a few of them in trained weights
    doubled KDA_LRD's CPU evaluation time. Flushing them changes no metric we report.
    """
    torch.set_num_threads(int(os.environ.get('OMP_NUM_THREADS', torch.get_num_threads())))
    torch.set_flush_denormal(bool(getattr(args, 'flush_denormal', 1)))


def pick_device(gpu: str) -> torch.device:
    """``--gpu ''`` means CPU; otherwise the first visible CUDA device if there is one."""
    if gpu != '' and torch.cuda.is_available():
        return torch.device('cuda', int(os.environ.get('LOCAL_RANK', 0)))
    return torch.device('cpu')


def batch_to_device(batch: dict, device: torch.device) -> dict:
    """Move every tensor of a feed dict to ``device`` (non-blocking when pinned)."""
    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


def check_dir(file_path: str) -> None:
    """Create the parent folder of ``file_path`` if needed."""
    parent = os.path.dirname(file_path)
    if parent:
        os.makedirs(parent, exist_ok=True)
