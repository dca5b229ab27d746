"""The temporal weight of a saved KDA or KDA_LRD model: a checkpoint (``.pt``) or a training state
(``.state.pt``), without its data. For each file, one JSON line: the epoch (training states only), the mean of
the clamped decay over a grid of log-scaled gaps (every relation alike), the share clamped to 0, and each
relation's mean. A run whose mean has fallen towards 0 ignores the history (docs/results.md, *The collapsed
temporal kernel*).

    python bench/temporal_kernel.py model/KDA_LRD/*/*.state.pt --max_gap 20
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'src'))

from models.sequential.KDA import KDA  # noqa: E402
from utils import torch_file  # noqa: E402


def kernel_summary(path: str, max_gap: float, points: int = 201) -> dict:
    """The clamped decay of the model saved at ``path`` over ``points`` gaps from 0 to ``max_gap``."""
    try:
        saved = torch_file.load(path, 'checkpoint or training state')
    except torch_file.BadFile as exc:
        raise SystemExit(str(exc)) from exc
    state = saved['model'] if isinstance(saved, dict) and 'model' in saved else saved
    if 'freq_real.weight' not in state:
        raise SystemExit(f'{path}: no freq_real.weight, not a KDA or KDA_LRD model')
    real, imag = state['freq_real.weight'].float(), state['freq_imag.weight'].float()
    gaps = torch.linspace(0, max_gap, points)
    decay = KDA.inverse_dft(real, imag, KDA.frequencies(real.shape[1]), gaps).clamp(0, 1)  # points × R
    return {'file': path, 'epoch': saved.get('epoch') if state is not saved else None,
            'mean': float(decay.mean()), 'clamped_to_0': float((decay == 0).float().mean()),
            'relation_means': [round(float(m), 6) for m in decay.mean(0)]}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('files', nargs='+', help='Checkpoints or training states of KDA / KDA_LRD runs.')
    parser.add_argument('--max_gap', type=float, default=20.,
                        help='Largest log2-scaled gap of the grid (Office gaps reach about 20 with --t_scalar 60).')
    args = parser.parse_args(argv)
    rows = [kernel_summary(f, args.max_gap) for f in args.files]
    for row in rows:
        print(json.dumps(row))
    return rows


if __name__ == '__main__':
    main()
