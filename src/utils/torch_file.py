"""Reading and writing torch files in one place: tensors only on the way in (``weights_only``), atomic on the way
out, so a run killed while saving never leaves a half-written checkpoint, and a bad file is one line naming it."""
from __future__ import annotations

import torch

from utils.atomic_write import atomic_write


class BadFile(ValueError):
    """A torch file that cannot be read or does not fit what reads it; the message names the file and what to do."""


def save(path: str, obj: object) -> None:
    """torch.save through a temp file and a rename: readers see the old file or the new one, never a torn one."""
    atomic_write(path, lambda f: torch.save(obj, f))


def load(path: str, what: str, hint: str = '') -> object:
    """torch.load on the CPU, tensors only; a truncated or foreign file is one BadFile naming it and ``what``."""
    try:
        return torch.load(path, map_location='cpu', weights_only=True)
    except Exception as exc:  # torch raises several types (and pages of text) for truncated or foreign files
        raise BadFile(f'{path}: not a readable {what} ({type(exc).__name__}){hint}') from exc
