"""Ranking metrics (ties against the truth), full-ranking masking and the vectorised negative sampler."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / 'src'))

import main  # noqa: E402
from helpers.BaseRunner import BaseRunner  # noqa: E402
from helpers.SeqReader import SeqReader  # noqa: E402
from models.sequential.SASRec import SASRec  # noqa: E402
from tiny_data import make_tiny_dataset  # noqa: E402
from utils import metrics, sampling  # noqa: E402


# --------------------------------------------------------------------------- metrics

def test_rank_of_truth_counts_ties_against_the_truth():
    scores = np.array([[3.0, 1.0, 2.0],    # truth strictly best → 1
                       [1.0, 2.0, 3.0],    # truth worst → 3
                       [2.0, 2.0, 2.0],    # all equal → rank = number of candidates
                       [1.0, 1.0, 0.0],    # one tie → 2
                       [0.5, 0.7, 0.5]])   # one better, one tie → 3
    np.testing.assert_array_equal(metrics.rank_of_truth(scores), [1, 3, 3, 2, 3])


def test_all_equal_scores_rank_the_truth_last():
    scores = np.zeros((4, 100))
    ranks = metrics.rank_of_truth(scores)
    np.testing.assert_array_equal(ranks, [100] * 4)
    res = metrics.ranking_metrics(ranks, [5, 10], ['HR', 'NDCG'])
    assert res == {'HR@5': 0.0, 'NDCG@5': 0.0, 'HR@10': 0.0, 'NDCG@10': 0.0}


def test_hr_ndcg_hand_computed():
    ranks = np.array([1, 3, 6, 11])
    res = metrics.ranking_metrics(ranks, [1, 5, 10], ['HR', 'NDCG'])
    assert list(res) == ['HR@1', 'NDCG@1', 'HR@5', 'NDCG@5', 'HR@10', 'NDCG@10']
    assert res['HR@1'] == pytest.approx(1 / 4)
    assert res['NDCG@1'] == pytest.approx(1 / 4)
    assert res['HR@5'] == pytest.approx(2 / 4)
    assert res['NDCG@5'] == pytest.approx((1 + 1 / np.log2(4)) / 4)
    assert res['HR@10'] == pytest.approx(3 / 4)
    assert res['NDCG@10'] == pytest.approx((1 + 1 / np.log2(4) + 1 / np.log2(7)) / 4)


def test_ndcg_of_rank_three_is_one_over_log2_four():
    scores = np.array([[0.5, 0.9, 0.8, 0.1, 0.2]])
    rank = metrics.rank_of_truth(scores)
    assert rank.tolist() == [3]
    res = metrics.ranking_metrics(rank, [2, 3], ['NDCG', 'HR'])
    assert res['NDCG@3'] == pytest.approx(1 / np.log2(4)) and res['NDCG@3'] == pytest.approx(0.5)
    assert res['HR@3'] == 1.0 and res['HR@2'] == 0.0 and res['NDCG@2'] == 0.0


def test_unknown_metric_and_formatting():
    with pytest.raises(ValueError, match="undefined evaluation metric 'MRR': use HR or NDCG"):
        metrics.ranking_metrics(np.array([1]), [5], ['MRR'])
    assert metrics.format_metrics({'HR@5': 0.40271, 'NDCG@5': 0.27509}) == 'HR@5:0.4027,NDCG@5:0.2751'


# --------------------------------------------------------------------------- runner evaluation and masking

@pytest.fixture(scope='module')
def tiny_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp('data')
    make_tiny_dataset(root, n_users=12, n_items=30, n_neg=10)
    return root


def parse(model: str, root: Path, *extra: str) -> argparse.Namespace:
    argv = ['--model_name', model, '--path', str(root), '--dataset', 'Tiny', '--gpu', '', *extra]
    parser, *_ = main.build_parser(argv)
    return parser.parse_args(argv)


class ZeroSASRec(SASRec):
    """SASRec whose scores are all equal: every evaluation rank is decided by ties and masking."""

    def forward(self, feed_dict: dict) -> dict:
        return {'prediction': torch.zeros(feed_dict['item_id'].shape) + 0 * self.i_embeddings.weight.sum()}


@pytest.fixture(scope='module')
def corpus(tiny_root):
    return SeqReader(parse('SASRec', tiny_root))


def interactions(root: Path) -> pd.DataFrame:
    return pd.concat([pd.read_csv(root / 'Tiny' / f'{p}.csv', sep='\t') for p in ('train', 'dev', 'test')])


def test_full_ranking_candidates_are_target_then_every_item(tiny_root, corpus):
    args = parse('SASRec', tiny_root, '--test_all', '1')
    model = SASRec(args, corpus)
    data = SASRec.Dataset(model, corpus, 'test')
    data.prepare()
    batch = data[np.arange(len(data))]
    assert batch['item_id'].shape == (len(data), corpus.n_items)
    np.testing.assert_array_equal(batch['item_id'][:, 0].numpy(), data.data['item_id'])
    np.testing.assert_array_equal(batch['item_id'][:, 1:].numpy(),
                                  np.broadcast_to(np.arange(1, corpus.n_items), (len(data), corpus.n_items - 1)))


@pytest.mark.parametrize('phase', ['dev', 'test'])
def test_mask_clicked_masks_every_interacted_item_but_column_0(tiny_root, corpus, phase):
    args = parse('SASRec', tiny_root, '--test_all', '1')
    model = SASRec(args, corpus)
    data = SASRec.Dataset(model, corpus, phase)
    data.prepare()
    clicked = interactions(tiny_root).groupby('user_id')['item_id'].apply(set)
    index = np.array([3, 0, 5, 7])  # not in order, to catch row mix-ups
    rng = np.random.default_rng(0)
    prediction = rng.normal(size=(len(index), corpus.n_items))
    original = prediction.copy()
    BaseRunner._mask_clicked(data, index, prediction)
    for row, i in enumerate(index):
        user = data.data['user_id'][i]
        items = clicked[user]
        assert data.data['item_id'][i] in items
        masked = np.flatnonzero(np.isneginf(prediction[row]))
        assert set(masked.tolist()) == items, (user, masked, items)
        keep = np.setdiff1d(np.arange(corpus.n_items), sorted(items))
        assert 0 in keep
        np.testing.assert_array_equal(prediction[row, keep], original[row, keep])


def test_full_ranking_evaluation_with_equal_scores(tiny_root, corpus):
    """All-equal scores under --test_all 1: rank = 1 + number of items the user never interacted with."""
    args = parse('SASRec', tiny_root, '--test_all', '1', '--topk', '1,5,50', '--metric', 'HR,NDCG')
    model = ZeroSASRec(args, corpus)
    data = SASRec.Dataset(model, corpus, 'test')
    data.prepare()
    runner = BaseRunner(args)
    ranks = np.concatenate([metrics.rank_of_truth(p) for _, p in runner.predict_batches(data)])
    clicked = interactions(tiny_root).groupby('user_id')['item_id'].apply(set)
    expected = np.array([1 + (corpus.n_items - 1 - len(clicked[u])) for u in data.data['user_id']])
    np.testing.assert_array_equal(ranks, expected)
    res = runner.evaluate(data, [1, 5, 50], ['HR', 'NDCG'])
    assert res['HR@50'] == 1.0 and res['HR@1'] == 0.0
    assert res['NDCG@50'] == pytest.approx(np.mean(1 / np.log2(expected + 1)))


def test_sampled_evaluation_with_equal_scores_ranks_truth_last(tiny_root, corpus):
    args = parse('SASRec', tiny_root)
    model = ZeroSASRec(args, corpus)
    data = SASRec.Dataset(model, corpus, 'dev')
    data.prepare()
    res = BaseRunner(args).evaluate(data, [5, 10, 11], ['HR', 'NDCG'])
    # 1 truth + 10 negatives, all tied: the truth is 11th
    assert res['HR@5'] == 0.0 and res['HR@10'] == 0.0 and res['HR@11'] == 1.0
    assert res['NDCG@11'] == pytest.approx(1 / np.log2(12))


# --------------------------------------------------------------------------- sampling

def test_pair_keys_and_contains():
    keys = sampling.sorted_pair_keys(np.array([2, 1, 2, 2]), np.array([3, 4, 3, 0]), n_items=5)
    np.testing.assert_array_equal(keys, [9, 10, 13])  # duplicates removed, sorted
    np.testing.assert_array_equal(sampling.contains(keys, np.array([[9, 8], [13, 14]])), [[True, False], [True, False]])
    assert not sampling.contains(np.zeros(0, dtype=np.int64), np.array([0, 1])).any()


def test_sample_excluding_never_returns_excluded_pairs():
    n_items = 12
    groups = np.array([1, 2, 3, 1, 4])
    excluded = {1: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 2: [11], 3: list(range(1, 12, 2)), 4: []}
    g = np.concatenate([[u] * len(v) for u, v in excluded.items()]).astype(np.int64)
    it = np.concatenate([v for v in excluded.values()]).astype(np.int64)
    keys = sampling.sorted_pair_keys(g, it, n_items)
    out = sampling.sample_excluding(groups, 200, 1, n_items, keys, n_items, np.random.default_rng(0))
    assert out.shape == (5, 200) and out.dtype == np.int64
    assert out.min() >= 1 and out.max() < n_items
    for row, u in enumerate(groups):
        assert not set(out[row].tolist()) & set(excluded[u]), u
    assert set(out[0].tolist()) == {11} and set(out[3].tolist()) == {11}  # the only id left for group 1
    assert set(out[4].tolist()) == set(range(1, 12))  # nothing excluded: all ids reachable


def test_sample_excluding_is_deterministic_for_a_seed():
    keys = sampling.sorted_pair_keys(np.array([0, 0, 1]), np.array([1, 2, 3]), 10)
    groups = np.array([0, 1, 1, 0])
    a = sampling.sample_excluding(groups, 7, 1, 10, keys, 10, np.random.default_rng(42))
    b = sampling.sample_excluding(groups, 7, 1, 10, keys, 10, np.random.default_rng(42))
    c = sampling.sample_excluding(groups, 7, 1, 10, keys, 10, np.random.default_rng(43))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_sample_excluding_fails_when_a_group_excludes_everything():
    keys = sampling.sorted_pair_keys(np.array([5] * 4), np.array([1, 2, 3, 4]), 5)
    with pytest.raises(RuntimeError, match=r'did not converge after 20 rounds: some group has \(almost\) every id '
                                           r'in \[1, 5\) excluded'):
        sampling.sample_excluding(np.array([4, 5]), 3, 1, 5, keys, 5, np.random.default_rng(0), max_rounds=20)


def test_training_negatives_are_never_training_clicks(tiny_root, corpus):
    args = parse('SASRec', tiny_root, '--num_neg', '4')
    model = SASRec(args, corpus)
    data = SASRec.Dataset(model, corpus, 'train')
    data.prepare()
    data.actions_before_epoch()
    assert data.neg_items.shape == (len(data), 4)
    train = pd.read_csv(tiny_root / 'Tiny' / 'train.csv', sep='\t').groupby('user_id')['item_id'].apply(set)
    for u, negs in zip(data.data['user_id'], data.neg_items):
        assert not set(negs.tolist()) & train[u]
    batch = data[np.arange(5)]
    np.testing.assert_array_equal(batch['item_id'][:, 1:].numpy(), data.neg_items[:5])
