"""Time MiniLM on the 2,420 Office item texts: a cold run that encodes and caches, then a run that hits the cache.

Usage (from the repo root): python bench/bench_text_encoder.py [--device cpu] [--batch_size 64]
"""
from __future__ import annotations

import argparse
import csv
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault('HF_HUB_OFFLINE', '1')
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'src'))

from utils.text_encoders import item_text_features  # noqa: E402


def read_texts(path: Path) -> list[str]:
    """Item texts in file order behind an empty padding text; the order does not matter for timing."""
    with open(path, newline='', encoding='utf-8') as f:
        rows = list(csv.DictReader(f, delimiter='\t', quoting=csv.QUOTE_NONE))
    return [''] + [row['text'] or '' for row in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--text_file', default=str(ROOT / '../shared/data/Office/Office.text'))
    parser.add_argument('--encoder', default='minilm')
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--batch_size', type=int, default=64)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    texts = read_texts(Path(args.text_file))
    with tempfile.TemporaryDirectory() as cache_dir:
        start = time.perf_counter()
        first = item_text_features(texts, args.encoder, cache_dir=cache_dir, device=args.device,
                                   batch_size=args.batch_size)
        cold = time.perf_counter() - start
        start = time.perf_counter()
        second = item_text_features(texts, args.encoder, cache_dir=cache_dir, device=args.device,
                                    batch_size=args.batch_size)
        warm = time.perf_counter() - start
    assert (first == second).all()
    print(f'{args.encoder} on {args.device}: {len(texts) - 1} texts -> {first.shape} {first.dtype}')
    print(f'first run (encode + cache): {cold:.2f} s')
    print(f'second run (cache hit):     {warm:.3f} s')


if __name__ == '__main__':
    main()
