"""Where an analysis writes its files (``--out_dir``, ``--name``) and how item texts are shortened for tables."""
from __future__ import annotations

import argparse
import os


def short(text: str, width: int = 70) -> str:
    text = ' '.join(str(text).split())
    return text if len(text) <= width else text[:width - 1] + '…'


def out_stem(opts: argparse.Namespace, default: str) -> str:
    os.makedirs(opts.out_dir, exist_ok=True)
    return os.path.join(opts.out_dir, opts.name or default)


def csv_sources(opts: argparse.Namespace) -> str:
    return ' '.join(opts.csv)


def write_text(path: str, text: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, 'w') as f:
        f.write(text)
    return path
