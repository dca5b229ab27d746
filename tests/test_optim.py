"""--sparse_embeddings: lazy Adam on large tables only moves the rows a batch used."""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'src'))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import main  # noqa: E402
from utils import optim  # noqa: E402
from tiny_data import make_tiny_dataset  # noqa: E402


def build(root: Path, *extra: str):
    argv = ['--model_name', 'SASRec', '--path', str(root), '--dataset', 'Tiny', '--gpu', '', *extra]
    parser, model_cls, reader_cls, runner_cls = main.build_parser(argv)
    args = parser.parse_args(argv)
    args.device = torch.device('cpu')
    torch.manual_seed(0)
    corpus = reader_cls(args)
    model = model_cls(args, corpus)
    data = model_cls.Dataset(model, corpus, 'train')
    data.prepare()
    data.actions_before_epoch()
    return model, data, runner_cls(args)


def user_batches(data, n: int = 4):
    """Two batches of training instances whose users do not overlap."""
    users = data.data['user_id']
    first = np.flatnonzero(np.isin(users, np.unique(users)[:2]))[:n]
    second = np.flatnonzero(np.isin(users, np.unique(users)[2:4]))[:n]
    return data[list(first)], data[list(second)], users[first]


@pytest.mark.parametrize('sparse_rows, moves', [('0', True), ('1', False)])
def test_untouched_rows_move_only_with_dense_adam(tmp_path, sparse_rows, moves):
    root = tmp_path / 'data'
    make_tiny_dataset(root, n_users=12, n_items=30, n_neg=5)
    model, data, runner = build(root, '--sparse_embeddings', sparse_rows, '--lr', '0.1')
    model.optimizer = runner._build_optimizer(model)
    assert isinstance(model.optimizer, optim.CombinedOptimizer) == (sparse_rows == '1')
    first, second, first_users = user_batches(data)
    item_table = model.i_embeddings.weight
    for batch in (first, second):
        model.optimizer.zero_grad()
        model.loss(model(batch)).backward()
        model.optimizer.step()
        if batch is first:
            rows_after_first = item_table.detach().clone()
    used_by_second = np.unique(np.concatenate([second['item_id'].numpy().ravel(),
                                               second['history_items'].numpy().ravel()]))
    untouched = np.setdiff1d(np.arange(item_table.shape[0]), used_by_second)
    changed = not torch.equal(item_table.detach()[untouched], rows_after_first[untouched])
    assert changed == moves  # dense Adam keeps moving rows through its momentum; lazy Adam does not


def test_one_epoch_with_sparse_embeddings(tmp_path):
    root = tmp_path / 'data'
    make_tiny_dataset(root, n_users=12, n_items=30, n_neg=5)
    try:
        result = main.main(['--model_name', 'KDA', '--path', str(root), '--dataset', 'Tiny', '--gpu', '',
                            '--epoch', '1', '--include_attr', '1', '--sparse_embeddings', '10',
                            '--batch_size', '8', '--log_file', str(tmp_path / 'log.txt'),
                            '--model_path', str(tmp_path / 'model.pt')])
    finally:
        for handler in logging.root.handlers[:]:
            handler.close()
            logging.root.removeHandler(handler)
    assert 0 <= result['test']['HR@5'] <= 1
    assert 'SparseAdam for 3 embedding table(s)' in (tmp_path / 'log.txt').read_text()
