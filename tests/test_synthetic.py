"""The synthetic Electronics-like generator at a tiny scale: format, counts, determinism and negatives."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / 'data'), str(REPO / 'src')]

import make_synthetic  # noqa: E402
from utils.io import int_column, parse_fixed_lists, parse_id_lists, read_table  # noqa: E402

SCALE = 0.002  # 385 users, 126 items, 3,365 interactions
COUNTS = {name: round(count * SCALE) for name, count in make_synthetic.ELECTRONICS.items()}


def generate(out: Path, seed: int = 0, name: str = 'Syn') -> Path:
    make_synthetic.main(['--scale', str(SCALE), '--seed', str(seed), '--out', str(out), '--dataset', name,
                         '--n_brands', '300', '--n_leaves', '200'])
    return out / name


def read_split(directory: Path, name: str) -> pd.DataFrame:
    path = str(directory / name)
    columns = ['user_id', 'item_id', 'time'] + (['neg_items'] if name != 'train.csv' else [])
    table = read_table(path, '\t', columns)
    out = pd.DataFrame({c: int_column(table, c, path) for c in columns[:3]})
    if name != 'train.csv':
        out['neg_items'] = list(parse_fixed_lists(table['neg_items'], path, 'neg_items'))
    return out


@pytest.fixture(scope='module')
def dataset(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp('syn'))


def test_counts_and_five_core(dataset):
    splits = {n: read_split(dataset, f'{n}.csv') for n in ('train', 'dev', 'test')}
    events = pd.concat([s[['user_id', 'item_id', 'time']] for s in splits.values()])
    assert len(events) == COUNTS['interactions']
    assert sorted(events['user_id'].unique()) == list(range(1, COUNTS['users'] + 1))
    assert sorted(events['item_id'].unique()) == list(range(1, COUNTS['items'] + 1))
    assert events.groupby('user_id').size().min() >= 5 and events.groupby('item_id').size().min() >= 5
    assert not events.duplicated(['user_id', 'item_id']).any()
    assert (events['time'] % 86_400 == 0).all()
    assert len(splits['dev']) == len(splits['test']) == COUNTS['users']
    assert splits['train']['user_id'].value_counts().min() >= 3
    # skew: the most active user and the most popular item are far above the median
    assert events.groupby('user_id').size().max() > 3 * events.groupby('user_id').size().median()
    assert events.groupby('item_id').size().max() > 3 * events.groupby('item_id').size().median()


def test_split_is_leave_one_out_in_time_order(dataset):
    train, dev, test = (read_split(dataset, f'{n}.csv') for n in ('train', 'dev', 'test'))
    last_train = train.groupby('user_id')['time'].max()
    dev_time = dev.set_index('user_id')['time']
    test_time = test.set_index('user_id')['time']
    assert (dev_time.reindex(last_train.index) >= last_train).all()
    assert (test_time.reindex(dev_time.index) >= dev_time).all()
    assert train['time'].is_monotonic_increasing and dev['time'].is_monotonic_increasing


def test_negatives_follow_the_rules(dataset):
    splits = {n: read_split(dataset, f'{n}.csv') for n in ('train', 'dev', 'test')}
    history = set(zip(*(pd.concat([s['user_id'] for s in splits.values()]),
                        pd.concat([s['item_id'] for s in splits.values()]))))
    for name in ('dev', 'test'):
        negatives = np.stack(splits[name]['neg_items'].to_list())
        assert negatives.shape == (COUNTS['users'], 99)
        assert negatives.min() >= 1 and negatives.max() <= COUNTS['items']
        users = np.repeat(splits[name]['user_id'].to_numpy(), 99)
        assert not any((u, i) in history for u, i in zip(users, negatives.ravel()))


def test_item_meta_text_and_index(dataset):
    path = str(dataset / 'item_meta.csv')
    meta = read_table(path, '\t', ['item_id', 'i_category', 'i_brand', 'r_complement', 'r_substitute'])
    item_id = int_column(meta, 'item_id', path)
    assert sorted(item_id) == list(range(1, COUNTS['items'] + 1)) and list(item_id) != sorted(item_id)
    for column in ('i_category', 'i_brand'):
        codes = int_column(meta, column, path, positive=False)
        used = np.unique(codes[codes > 0])
        assert list(used) == list(range(1, len(used) + 1)) and (codes == 0).any()
    brand = int_column(meta, 'i_brand', path, positive=False)
    seen = brand[brand > 0]
    assert list(pd.unique(seen)) == list(range(1, len(np.unique(seen)) + 1))  # codes by first appearance
    for column in ('r_complement', 'r_substitute'):
        values, offsets = parse_id_lists(meta[column], path, column)
        assert values.min() >= 1 and values.max() <= COUNTS['items']
        rows = np.repeat(item_id, np.diff(offsets))
        assert not (rows == values).any() and not pd.DataFrame({'a': rows, 'b': values}).duplicated().any()
        assert np.diff(offsets).max() <= 40 and (np.diff(offsets) == 0).any()
    index = pd.read_csv(dataset / 'Syn.item2index', sep='\t', header=None, names=['asin', 'id'])
    assert index['id'].tolist() == list(range(1, COUNTS['items'] + 1))
    assert index['asin'].str.fullmatch(r'B00[0-9A-Z]{7}').all()
    lines = (dataset / 'Syn.text').read_text(encoding='utf-8').split('\n')
    assert lines[0] == 'id\ttext' and lines[-1] == ''
    text = dict(line.split('\t', 1) for line in lines[1:-1])
    assert set(text) == set(index['asin']) and list(text) == list(index.set_index('id')['asin'][item_id])
    assert all(t.strip() for t in text.values())


def test_same_seed_same_files_other_seed_other_files(dataset, tmp_path):
    again, other = generate(tmp_path / 'a'), generate(tmp_path / 'b', seed=1)
    files = ['train.csv', 'dev.csv', 'test.csv', 'item_meta.csv', 'Syn.text', 'Syn.item2index', 'Syn.user2index']
    assert all((again / f).read_bytes() == (dataset / f).read_bytes() for f in files)
    assert (other / 'train.csv').read_bytes() != (dataset / 'train.csv').read_bytes()


def test_impossible_counts_are_a_clear_error():
    with pytest.raises(ValueError, match='cannot give 100 values 5..'):
        make_synthetic.generate(n_users=100, n_items=50, n_interactions=400)
