"""Prepare what a GPU session carries (the device machine has no model weights and no ../shared).

Copies shared datasets into ``data/<Dataset>`` (git-ignored) and writes their MiniLM features as
``data/<Dataset>/<Dataset>.feat.minilm`` (raw float32, rows 1..n, the authors' layout), so that the
device run uses ``--plm_name feat:minilm`` and never needs the encoder. Run here, then carry the folders:

    python bench/prepare_device_data.py Office MovieLens_100k && du -sh data/Office data/MovieLens_100k
"""
from __future__ import annotations

import os
import shutil
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, '..', 'src'))

import numpy as np  # noqa: E402

from helpers.LRDReader import LRDReader  # noqa: E402
from main import build_parser  # noqa: E402


def prepare(dataset: str) -> None:
    source = os.path.join(HERE, '..', '..', 'shared', 'data', dataset)
    target = os.path.join(HERE, '..', 'data', dataset)
    os.makedirs(target, exist_ok=True)
    for name in ['train.csv', 'dev.csv', 'test.csv', 'item_meta.csv', f'{dataset}.text', f'{dataset}.item2index']:
        shutil.copy(os.path.join(source, name), os.path.join(target, name))
    argv = ['--model_name', 'KDA_LRD', '--dataset', dataset, '--path', os.path.dirname(target),
            '--include_attr', '1', '--freq_rand', '1']
    parser, *_ = build_parser(argv)
    corpus = LRDReader(parser.parse_args(argv))
    corpus.item_features[1:].astype(np.float32).tofile(os.path.join(target, f'{dataset}.feat.minilm'))
    print(f'{target}: {dataset} data and {dataset}.feat.minilm {corpus.item_features[1:].shape}')


if __name__ == '__main__':
    for name in sys.argv[1:] or ['Office']:
        prepare(name)
