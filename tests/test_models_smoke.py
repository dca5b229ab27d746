"""Every model on SeqReader/BaseReader data trains one epoch end to end; sequential models ignore padding."""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / 'src'))

import main  # noqa: E402
from models.sequential.Caser import Caser  # noqa: E402
from models.sequential.TiSASRec import SCALE_CAP, user_min_intervals  # noqa: E402
from tiny_data import make_tiny_dataset  # noqa: E402
from utils import corpus_cache  # noqa: E402

MODELS = ['SASRec', 'Caser', 'GRU4Rec', 'TiSASRec', 'BPRMF', 'POP']
SEQUENTIAL = ['SASRec', 'Caser', 'GRU4Rec', 'TiSASRec']
METRICS = [f'{m}@{k}' for k in (5, 10, 20, 50) for m in ('NDCG', 'HR')]


@pytest.fixture(scope='module')
def tiny_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp('data')
    make_tiny_dataset(root)
    return root


@pytest.fixture(autouse=True)
def corpus_cache_in_tmp(monkeypatch, tiny_root):
    """Corpus pickles of data outside the repository go to <repo>/cache; keep them in the test's tmp."""
    monkeypatch.setattr(corpus_cache, 'REPO_DIR', tiny_root)


def run_main(model: str, root: Path, out: Path, *extra: str) -> dict:
    log_file, model_path = out / 'log' / f'{model}.txt', out / 'model' / f'{model}.pt'
    try:
        results = main.main(['--model_name', model, '--path', str(root), '--dataset', 'Tiny', '--epoch', '1',
                             '--gpu', '', '--batch_size', '16', '--eval_batch_size', '16',
                             '--log_file', str(log_file), '--model_path', str(model_path), *extra])
    finally:  # main leaves its log file open on the root logger
        for handler in logging.root.handlers[:]:
            if isinstance(handler, logging.FileHandler):
                handler.close()
                logging.root.removeHandler(handler)
    assert log_file.is_file() and log_file.stat().st_size > 0
    assert model_path.is_file()
    for phase in ('dev', 'test'):
        assert set(METRICS) <= set(results[phase]), results[phase]
        for key, value in results[phase].items():
            assert np.isfinite(value) and 0 <= value <= 1, (phase, key, value)
    return results


@pytest.mark.parametrize('model', MODELS)
def test_one_epoch(model, tiny_root, tmp_path):
    results = run_main(model, tiny_root, tmp_path)
    assert results['best_epoch'] == 1
    assert len(list((tmp_path / 'log').glob('*/rec-test.csv'))) == 1
    if model == 'POP':  # the placeholder parameter never moves: scores stay the training counts
        state = torch.load(tmp_path / 'model' / 'POP.pt', weights_only=True)
        assert state['dummy'].item() == 0
        assert state['popularity'].sum().item() == len(pd.read_csv(tiny_root / 'Tiny' / 'train.csv', sep='\t'))


def test_sasrec_full_ranking(tiny_root, tmp_path):
    run_main('SASRec', tiny_root, tmp_path, '--test_all', '1')
    recs = pd.read_csv(next((tmp_path / 'log').glob('*/rec-test.csv')), sep='\t')
    interactions = pd.concat(pd.read_csv(tiny_root / 'Tiny' / f'{p}.csv', sep='\t') for p in ('train', 'dev', 'test'))
    clicked = interactions.groupby('user_id')['item_id'].apply(set)
    target = pd.read_csv(tiny_root / 'Tiny' / 'test.csv', sep='\t').set_index('user_id')['item_id']
    for user, items, scores in zip(recs['user_id'], recs['rec_items'], recs['rec_predictions']):
        finite = [int(i) for i, v in zip(items.strip('[]').split(','), scores.strip('[]').split(','))
                  if np.isfinite(float(v))]  # masked items score -inf
        assert len(finite) == 40 - len(clicked[user]) + 1  # every unclicked item and the target, nothing else
        assert set(finite) & clicked[user] == {target[user]}


def test_general_model_full_ranking(tiny_root, tmp_path):
    result = run_main('BPRMF', tiny_root, tmp_path, '--test_all', '1')
    assert 0 <= result['test']['HR@5'] <= 1


def build(model: str, root: Path, *extra: str):
    """Reader, model and dev dataset as main.run builds them, without training or caching."""
    argv = ['--model_name', model, '--path', str(root), '--dataset', 'Tiny', '--gpu', '', *extra]
    parser, model_cls, reader_cls, _ = main.build_parser(argv)
    args = parser.parse_args(argv)
    args.device = torch.device('cpu')
    torch.manual_seed(0)
    corpus = reader_cls(args)
    model_obj = model_cls(args, corpus).eval()
    dataset = model_cls.Dataset(model_obj, corpus, 'dev')
    dataset.prepare()
    return corpus, model_obj, dataset


@pytest.mark.parametrize('model', SEQUENTIAL)
@torch.no_grad()
def test_scores_ignore_padding(model, tiny_root):
    """A row scored alone (no padding) and inside a batch padded to a longer history scores the same."""
    _, model_obj, dataset = build(model, tiny_root)
    n = len(dataset)
    batch = dataset[list(range(n))]
    assert int(batch['lengths'].min()) < batch['history_items'].shape[1]  # some rows are padded
    together = model_obj(batch)['prediction']
    alone = torch.cat([model_obj(dataset[[i]])['prediction'] for i in range(n)])
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-5)


def test_caser_window_is_right_aligned(tiny_root):
    _, model_obj, _ = build('Caser', tiny_root, '--history_max', '4', '--L', '2')
    history = torch.tensor([[5, 6, 0], [7, 8, 9], [3, 0, 0]])
    window = model_obj.right_aligned_window(history, torch.tensor([2, 3, 1]))
    assert window.tolist() == [[0, 0, 5, 6], [0, 7, 8, 9], [0, 0, 0, 3]]
    assert isinstance(model_obj, Caser)


def test_caser_matmul_features_equal_its_conv2d_layers(tiny_root):
    """conv_features is the Conv2d layers' own output (max-pooled horizontal, flattened vertical)."""
    _, model_obj, _ = build('Caser', tiny_root, '--history_max', '6', '--L', '3',
                            '--num_horizon', '5', '--num_vertical', '4', '--emb_size', '8')
    image = torch.randn(7, 6, 8)
    expected = [conv(image[:, None]).squeeze(3).relu().amax(dim=2) for conv in model_obj.conv_h]
    expected.append(model_obj.conv_v(image[:, None]).flatten(1))
    got = model_obj.conv_features(image)
    assert got.shape == (7, 5 * 3 + 4 * 8)
    torch.testing.assert_close(got, torch.cat(expected, dim=1), rtol=1e-5, atol=1e-6)


def test_tisasrec_scale_matches_rechorus_definition(tiny_root):
    """ReChorus: per user, min over |t_i - t_j| with zero entries replaced by 0xFFFF."""
    users = np.array([1, 1, 1, 2, 2, 3, 4, 4, 4])
    times = np.array([50, 10, 10, 7, 7, 3, 0, 200_000, 100_000])
    assert user_min_intervals(users, times, 5).tolist() == [SCALE_CAP, 40, SCALE_CAP, SCALE_CAP, SCALE_CAP]
    corpus, _, dataset = build('TiSASRec', tiny_root)
    expected = np.full(corpus.n_users, SCALE_CAP)
    for u, group in corpus.all_df.groupby('user_id'):
        t = group['time'].to_numpy()
        gaps = np.abs(t[:, None] - t[None, :])
        expected[u] = np.min(gaps + (gaps <= 0) * SCALE_CAP)
    assert np.array_equal(corpus.user_min_interval, expected)
    batch = dataset[[0, 1, 2]]
    assert batch['user_min_intervals'].tolist() == expected[dataset.data['user_id'][:3]].tolist()


def test_tiny_dataset_guarantees(tmp_path):
    folder = make_tiny_dataset(tmp_path, name='Check', n_users=12, n_items=30, seed=3, n_neg=15)
    read = {p: pd.read_csv(folder / f'{p}.csv', sep='\t') for p in ('train', 'dev', 'test')}
    everything = pd.concat(read.values())
    assert sorted(everything['user_id'].unique()) == list(range(1, 13))
    assert sorted(read['train']['item_id'].unique()) == list(range(1, 31))
    for phase in ('dev', 'test'):
        assert read[phase]['user_id'].is_unique and len(read[phase]) == 12
    for u, group in everything.groupby('user_id'):
        assert len(group) >= 5 and group['item_id'].is_unique
        assert group.sort_values('time')['item_id'].tolist()[-1] == read['test'].set_index('user_id').loc[u, 'item_id']
        history = set(group['item_id'])
        for phase in ('dev', 'test'):
            negs = [int(x) for x in read[phase].set_index('user_id').loc[u, 'neg_items'].strip('[]').split(',')]
            assert len(negs) == len(set(negs)) == 15 and not history & set(negs)
    for u, group in read['train'].groupby('user_id'):
        assert group['time'].max() < read['dev'].set_index('user_id').loc[u, 'time'] \
            < read['test'].set_index('user_id').loc[u, 'time']
    meta = pd.read_csv(folder / 'item_meta.csv', sep='\t')
    assert sorted(meta['item_id']) == list(range(1, 31)) and meta['item_id'].tolist() != list(range(1, 31))
    assert set(meta['i_brand']) <= set(range(1, 7)) and set(meta['i_category']) <= set(range(5))
    text = pd.read_csv(folder / 'Check.text', sep='\t')
    index = pd.read_csv(folder / 'Check.item2index', sep='\t', header=None, names=['raw', 'item_id'])
    assert list(text.columns) == ['id', 'text'] and set(text['id']) == set(index['raw'])
    assert index['item_id'].tolist() == list(range(1, 31)) and text['text'].is_unique
    assert (index['raw'] != index['item_id'].map('A{:04d}'.format)).all()


@torch.no_grad()
def test_time_interval_attention_matches_reference_formula():
    """Scores q_i·(k_j + p^K_j + r^K_ij)/√d_k, causal softmax, output Σ_j α_ij (v_j + p^V_j + r^V_ij), per head."""
    from models.sequential.TiSASRec import TimeIntervalMultiHeadAttention
    torch.manual_seed(0)
    bs, seq_len, d, h = 3, 5, 8, 2
    attn = TimeIntervalMultiHeadAttention(d, h)
    seq, pos_k, pos_v = torch.randn(bs, seq_len, d), torch.randn(bs, seq_len, d), torch.randn(bs, seq_len, d)
    inter_k, inter_v = torch.randn(bs, seq_len, seq_len, d), torch.randn(bs, seq_len, seq_len, d)
    mask = torch.ones(seq_len, seq_len, dtype=torch.bool).tril()
    q, k, v = attn.q_linear(seq), attn.k_linear(seq) + pos_k, attn.v_linear(seq) + pos_v
    expected = torch.zeros(bs, seq_len, d)
    for head in range(h):
        cols = slice(head * d // h, (head + 1) * d // h)
        keys = k[:, None, :, cols] + inter_k[..., cols]  # B × Lq × Lk × d_k
        values = v[:, None, :, cols] + inter_v[..., cols]
        scores = (q[:, :, None, cols] * keys).sum(-1) / (d // h) ** 0.5
        weights = scores.masked_fill(~mask, float('-inf')).softmax(-1)
        expected[..., cols] = (weights[..., None] * values).sum(2)
    torch.testing.assert_close(attn(seq, pos_k, pos_v, inter_k, inter_v, mask), expected)


def test_time_budget_stops_after_the_epoch_that_exhausts_it(tiny_root, tmp_path):
    """A budget smaller than one epoch: the first epoch runs, the second would end past it, so training stops."""
    results = run_main('SASRec', tiny_root, tmp_path, '--epoch', '5', '--time_budget', '1e-6')
    assert (results['epochs'], results['stop_reason'], results['best_epoch']) == (1, 'time_budget', 1)
    log = (tmp_path / 'log' / 'SASRec.txt').read_text()
    assert 'Stopped by --time_budget' in log and 'Epoch 2' not in log


def test_without_budget_the_epoch_limit_ends_training(tiny_root, tmp_path):
    results = run_main('SASRec', tiny_root, tmp_path, '--epoch', '2', '--early_stop', '0')
    assert (results['epochs'], results['stop_reason']) == (2, 'max_epoch')


def script_dev_metric(monkeypatch, values: list[float]) -> None:
    """The loop's per-epoch dev check returns ``values`` in turn (NDCG@5 = HR@5); final evaluations are real."""
    from helpers.BaseRunner import BaseRunner
    dev_values, original = iter(values), BaseRunner.evaluate

    def evaluate(self, dataset, topks, metrics):
        if topks == [self.main_topk]:  # the per-epoch dev check of the training loop
            value = next(dev_values)
            return {'NDCG@5': value, 'HR@5': value}
        return original(self, dataset, topks, metrics)
    monkeypatch.setattr(BaseRunner, 'evaluate', evaluate)


def test_plateau_scheduler_halves_the_rate_when_dev_stops_improving(tiny_root, tmp_path, monkeypatch):
    """Dev NDCG@5 .5, .4, .3, .2 with patience 0: the rate halves after epochs 2, 3 and 4."""
    script_dev_metric(monkeypatch, [0.5, 0.4, 0.3, 0.2])
    run_main('SASRec', tiny_root, tmp_path, '--epoch', '4', '--early_stop', '0', '--lr', '1e-3',
             '--lr_scheduler', 'plateau', '--lr_patience', '0', '--lr_factor', '0.5')
    log = (tmp_path / 'log' / 'SASRec.txt').read_text()
    assert 'Learning rate' not in log.split('Epoch 2')[0]
    for epoch, (before, after) in zip((2, 3, 4), (('0.001', '0.0005'), ('0.0005', '0.00025'), ('0.00025', '0.000125'))):
        assert f'Learning rate {before} -> {after} after epoch {epoch}' in log


@pytest.mark.parametrize('dev, stop_epoch, warned', [([.08, .07, .07, .07], 3, True),
                                                     ([.10, .20, .30, .20], 4, False)])
def test_early_stop_on_the_first_epochs_warns_of_the_plateau(dev, stop_epoch, warned, tiny_root, tmp_path,
                                                            monkeypatch):
    """--early_stop 2: a best dev value at epoch 1 then nothing better is flagged; a best at epoch 3 is not."""
    script_dev_metric(monkeypatch, dev)
    results = run_main('SASRec', tiny_root, tmp_path, '--epoch', '10', '--early_stop', '2')
    assert (results['epochs'], results['stop_reason']) == (stop_epoch, 'early_stop')
    log = (tmp_path / 'log' / 'SASRec.txt').read_text()
    assert ('The best dev NDCG@5 (0.0800) came at epoch 1, within the first --early_stop 2 epochs' in log) == warned
    assert ('start-up plateau' in log) == warned


def test_snapshot_keeps_the_model_a_shorter_patience_ends_with(tiny_root, tmp_path, monkeypatch):
    """Dev .1 .2 .15 .17 .16 .3 .25 .27 .26: --early_stop 3 stops at epoch 5 with epoch 2's model. A run without
    early stopping but --snapshot_early_stop 3 trains on to epoch 9 and copies, at epoch 5, exactly that model; the
    rule holding again at epoch 9 (best 6) does not replace the copy."""
    dev = [.1, .2, .15, .17, .16, .3, .25, .27, .26]
    script_dev_metric(monkeypatch, dev)
    short = run_main('SASRec', tiny_root, tmp_path / 'short', '--epoch', '9', '--early_stop', '3')
    assert (short['epochs'], short['best_epoch']) == (5, 2)
    script_dev_metric(monkeypatch, dev)
    long = run_main('SASRec', tiny_root, tmp_path / 'long', '--epoch', '9', '--early_stop', '0',
                    '--snapshot_early_stop', '3')
    assert (long['epochs'], long['best_epoch']) == (9, 6)
    log = (tmp_path / 'long' / 'log' / 'SASRec.txt').read_text()
    copy = tmp_path / 'long' / 'model' / 'SASRec.early_stop3.pt'
    assert log.count('--early_stop 3 would stop here') == 1
    assert log.index('--early_stop 3 would stop here (best dev epoch 2)') > log.index('Epoch 5 ')
    expected = torch.load(tmp_path / 'short' / 'model' / 'SASRec.pt', weights_only=True)
    kept = torch.load(copy, weights_only=True)
    assert kept.keys() == expected.keys() and all(torch.equal(kept[k], expected[k]) for k in expected)
    final = torch.load(tmp_path / 'long' / 'model' / 'SASRec.pt', weights_only=True)
    assert not all(torch.equal(final[k], expected[k]) for k in expected)


def test_snapshot_left_by_another_run_is_removed_and_a_missed_one_reported(tiny_root, tmp_path, monkeypatch):
    """A from-scratch run whose shorter patience never stops must not leave another run's copy looking like its own;
    a resumed run that passed that stop before the option was given says its model was not kept."""
    stale = tmp_path / 'model' / 'SASRec.early_stop3.pt'
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b'another run')
    script_dev_metric(monkeypatch, [.1, .2])
    run_main('SASRec', tiny_root, tmp_path, '--epoch', '2', '--early_stop', '0', '--snapshot_early_stop', '3')
    assert not stale.exists()
    script_dev_metric(monkeypatch, [.15, .17, .16])
    run_main('SASRec', tiny_root, tmp_path, '--epoch', '5', '--early_stop', '0', '--resume', '1')
    script_dev_metric(monkeypatch, [.3])
    run_main('SASRec', tiny_root, tmp_path, '--epoch', '6', '--early_stop', '0', '--resume', '1',
             '--snapshot_early_stop', '3')
    log = (tmp_path / 'log' / 'SASRec.txt').read_text()
    assert ('--snapshot_early_stop 3: that patience stopped this run at epoch 5, before the option was given, so its '
            'checkpoint was not kept.') in log
    assert not stale.exists()


def test_without_scheduler_the_rate_stays(tiny_root, tmp_path):
    run_main('SASRec', tiny_root, tmp_path, '--epoch', '3', '--early_stop', '0')
    assert 'Learning rate' not in (tmp_path / 'log' / 'SASRec.txt').read_text()


def test_flush_denormal_is_on_by_default_and_can_be_turned_off(tiny_root, tmp_path):
    """Subnormal inputs read as zero after main (the fast path); --flush_denormal 0 keeps IEEE subnormals."""
    if not torch.set_flush_denormal(True):
        pytest.skip('this CPU has no flush-to-zero mode (torch.set_flush_denormal needs x86 SSE3)')
    torch.set_flush_denormal(False)
    tiny = torch.tensor([1e-39], dtype=torch.float32)
    try:
        run_main('SASRec', tiny_root, tmp_path / 'on')
        assert (tiny * 2).item() == 0.0
        run_main('SASRec', tiny_root, tmp_path / 'off', '--flush_denormal', '0')
        assert (tiny * 2).item() == pytest.approx(2e-39, rel=1e-3)
    finally:
        torch.set_flush_denormal(False)
