"""One line on how far a running main.py child has come, read from its stdout: exp.py prints it every few
minutes so that a grid of hour-long runs is not silent until the first run ends. For display only; the
results CSV never takes a number from a log."""
from __future__ import annotations

import re

EPOCH_LINE = re.compile(r'^Epoch\s+(\d+)\s.*?dev=\(([\w@]+):([0-9.]+)[^)]*\).*?(\*?)\s*$', re.M)


def epoch_progress(log_text: str, elapsed_s: float) -> str:
    """``'epoch 8 (1.8 min each), dev NDCG@5 0.1773, best 0.1773 at 8'`` from the runner's epoch lines
    (``*`` marks a new best on dev); ``''`` before the first epoch. A resumed run's log starts at a later
    epoch, so the time per epoch counts only the epochs in this log."""
    epochs = EPOCH_LINE.findall(log_text)
    if not epochs:
        return ''
    first, last = int(epochs[0][0]), int(epochs[-1][0])
    epoch, metric, value, _ = epochs[-1]
    best = [e for e in epochs if e[3]]
    line = f'epoch {epoch} ({elapsed_s / 60 / (last - first + 1):.1f} min each), dev {metric} {float(value):.4f}'
    if best:
        line += f', best {float(best[-1][2]):.4f} at {best[-1][0]}'
    return line
