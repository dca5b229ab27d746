"""The corpus pickle ReChorus keeps next to the data, made safe against staleness.

The cache key holds the reader class, every argument the reader's parser defines, and the size and
mtime of every input file, so editing a CSV or changing ``--history_max``-like reader arguments
rebuilds the corpus instead of silently reusing an old one.
"""
from __future__ import annotations

import argparse
import hashlib
import logging
import os
import pickle

from utils.atomic_write import atomic_write
from utils.runtime import REPO_DIR


def reader_arg_names(reader_cls: type) -> list[str]:
    """Names of the arguments a reader's ``parse_data_args`` chain defines."""
    parser = argparse.ArgumentParser(add_help=False)
    reader_cls.parse_data_args(parser)
    return sorted(a.dest for a in parser._actions)


# reader arguments that change how a corpus is computed, not what it contains
NOT_SHAPING = {'path', 'regenerate', 'plm_device', 'plm_batch_size'}


def input_files(data_dir: str, dataset: str) -> list[str]:
    """The files a reader may read: derived files (caches, embeddings) written next to them are not inputs."""
    if not os.path.isdir(data_dir):
        return []  # nothing to key on: the reader then says which datasets exist
    fixed = {'train.csv', 'dev.csv', 'test.csv', 'item_meta.csv', f'{dataset}.text', f'{dataset}.item2index'}
    return sorted(n for n in os.listdir(data_dir)
                  if n in fixed or n.startswith(f'{dataset}.feat.'))


def cache_key(reader_cls: type, args: argparse.Namespace) -> dict:
    """Everything that shapes a corpus: reader, its arguments, and the input files' size and mtime."""
    data_dir = os.path.join(args.path, args.dataset)
    files = {}
    for name in input_files(data_dir, args.dataset):
        stat = os.stat(os.path.join(data_dir, name))
        files[name] = (stat.st_size, stat.st_mtime_ns)
    arg_values = {k: getattr(args, k, None) for k in reader_arg_names(reader_cls) if k not in NOT_SHAPING}
    return {'reader': reader_cls.__name__, 'data_dir': os.path.realpath(data_dir), 'args': arg_values,
            'files': files, 'version': 1}


def cache_dir(data_dir: str, dataset: str) -> str:
    """Where derived files (corpus pickle, text embeddings) go: next to the data for datasets inside
    this repository (ReChorus' place); datasets elsewhere, such as a shared read-only copy, are never
    written to, their derived files go under ``<repo>/cache/<dataset>-<hash of the folder path>``."""
    real = os.path.realpath(data_dir)
    if real.startswith(str(REPO_DIR) + os.sep) and os.access(real, os.W_OK):
        return real
    folder_id = hashlib.sha1(real.encode()).hexdigest()[:8]  # two folders with one dataset name never share
    return os.path.join(REPO_DIR, 'cache', f'{dataset}-{folder_id}')


def cache_path(reader_cls: type, args: argparse.Namespace) -> str:
    return os.path.join(cache_dir(os.path.join(args.path, args.dataset), args.dataset),
                        reader_cls.__name__ + '.pkl')


def load_corpus(reader_cls: type, args: argparse.Namespace) -> object:
    """Return the cached corpus when its key matches, otherwise build and cache a fresh one."""
    path = cache_path(reader_cls, args)
    key = cache_key(reader_cls, args)
    if not args.regenerate and os.path.exists(path):
        try:
            with open(path, 'rb') as f:
                stored = pickle.load(f)
            if isinstance(stored, tuple) and len(stored) == 2 and stored[0] == key:
                corpus = stored[1]
                logging.info(f'Load corpus from {path}')
                return corpus
            logging.info(f'Corpus cache {path} is stale (inputs or reader arguments changed): rebuilding')
        except (pickle.UnpicklingError, EOFError, AttributeError, ValueError, ImportError, TypeError) as e:
            logging.warning(f'Corpus cache {path} is unreadable ({e}): rebuilding')
    corpus = reader_cls(args)
    atomic_write(path, lambda f: pickle.dump((key, corpus), f, protocol=pickle.HIGHEST_PROTOCOL))
    logging.info(f'Save corpus to {path}')
    return corpus
