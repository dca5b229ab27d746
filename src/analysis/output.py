"""Where an analysis writes its files (``--out_dir``, ``--name``) and how item texts are shortened for tables."""
from __future__ import annotations

import argparse
import os


def short(text: str, width: int = 70) -> str:
    """One line of at most ``width`` characters, so that tables stay readable."""
    text = ' '.join(str(text).split())
    return text if len(text) <= width else text[:width - 1] + '…'


def out_stem(opts: argparse.Namespace, default: str) -> str:
    """``--out_dir``/``--name`` (or ``default``) without extension; creates the folder."""
    os.makedirs(opts.out_dir, exist_ok=True)
    return os.path.join(opts.out_dir, opts.name or default)


def csv_sources(opts: argparse.Namespace) -> str:
    """The results CSVs an analysis read, as its markdown names them."""
    return ' '.join(opts.csv)


def write_text(path: str, text: str) -> str:
    """Write ``text`` to ``path`` (creating its folder) and return the path."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, 'w') as f:
        f.write(text)
    return path
