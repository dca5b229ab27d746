"""The training state written after every epoch, so that a run stopped by ``--time_budget``, a crash or Ctrl-C
continues where it stopped (``--resume 1``) instead of starting over.

The file sits next to the checkpoint (``<run name>.state.pt``; the checkpoint keeps the best epoch's weights):
the last epoch's weights, the optimizer and learning-rate scheduler states, the dev history, and every random
generator that draws during training (torch's, and each numpy Generator the model and its datasets hold), so a
resumed run retraces the uninterrupted one.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from utils import torch_file

KEYS = ('epoch', 'model', 'optimizer', 'schedulers', 'main_metric', 'dev_results', 'stop_reason', 'rng')


def _beside(model_path: str, suffix: str) -> str:
    """``dir/name.pt`` → ``dir/name<suffix>`` (a path without ``.pt`` gets ``suffix`` appended)."""
    path = Path(model_path)
    return str(path.with_name(path.stem + suffix) if path.suffix == '.pt' else Path(model_path + suffix))


def state_path(model_path: str) -> str:
    """``dir/name.pt`` → ``dir/name.state.pt``."""
    return _beside(model_path, '.state.pt')


def snapshot_path(model_path: str, patience: int) -> str:
    """``dir/name.pt`` → ``dir/name.early_stop<patience>.pt`` (the ``--snapshot_early_stop`` copy)."""
    return _beside(model_path, f'.early_stop{patience}.pt')


def generators(objects: dict[str, object]) -> dict[str, np.random.Generator]:
    """Every numpy Generator held as an attribute of the named objects (of every submodule, for a module)."""
    found = {}
    for name, obj in objects.items():
        parts = obj.named_modules() if isinstance(obj, torch.nn.Module) else [('', obj)]
        for sub, part in parts:
            for attr, value in vars(part).items():
                if isinstance(value, np.random.Generator):
                    found['.'.join(p for p in (name, sub, attr) if p)] = value
    return found


def rng_state(objects: dict[str, object]) -> dict:
    """The state of torch's CPU (and CUDA) generators and of the objects' numpy Generators."""
    return {'torch': torch.get_rng_state(),
            'cuda': torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            'numpy': {name: gen.bit_generator.state for name, gen in generators(objects).items()}}


def set_rng_state(state: dict, objects: dict[str, object]) -> list[str]:
    """Restore :func:`rng_state`; returns the saved numpy generators the objects no longer hold (not restored)."""
    torch.set_rng_state(state['torch'])
    if state['cuda'] and torch.cuda.is_available() and len(state['cuda']) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state['cuda'])
    current = generators(objects)
    for name, saved in state['numpy'].items():
        if name in current:
            current[name].bit_generator.state = saved
    return sorted(set(state['numpy']) - set(current))


def save(path: str, state: dict) -> None:
    """Write atomically: a run killed while saving keeps the previous epoch's state."""
    torch_file.save(path, state)


def load(path: str) -> dict:
    """Read a state file; an unreadable or incomplete one is an error that says how to start over."""
    state = torch_file.load(path, 'training state', '; delete it to train from scratch')
    missing = [k for k in KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise torch_file.BadFile(f'{path}: training state without {missing}; delete it to train from scratch')
    return state
