"""--resume 1: a run continued from its per-epoch training state retraces the uninterrupted run."""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / 'src'))

import main  # noqa: E402
from tiny_data import make_tiny_dataset  # noqa: E402
from utils import corpus_cache, train_state  # noqa: E402

N_ITEMS = 40
ARGS = {'SASRec': ['--dropout', '0.3'],
        'KDA_LRD': ['--include_attr', '1', '--include_val', '1', '--emb_size', '16', '--num_heads', '2',
                    '--num_layers', '1', '--history_max', '5', '--plm_name', 'feat:test', '--latent_relation_num', '2']}


@pytest.fixture(scope='module')
def tiny_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp('data')
    folder = make_tiny_dataset(root, n_items=N_ITEMS)
    items = np.arange(1, N_ITEMS + 1)[:, None]  # a deterministic text-feature file for the LRD model
    np.savetxt(folder / 'Tiny.feat.test', np.sin(items * np.arange(1, 7)), fmt='%.6f')
    return root


@pytest.fixture(autouse=True)
def corpus_cache_in_tmp(monkeypatch, tiny_root):
    monkeypatch.setattr(corpus_cache, 'REPO_DIR', tiny_root)


def run(model: str, root: Path, model_path: Path, *extra: str) -> dict:
    try:
        return main.main(['--model_name', model, '--path', str(root), '--dataset', 'Tiny', '--gpu', '',
                          '--batch_size', '16', '--eval_batch_size', '16', '--early_stop', '0',
                          '--save_final_results', '0', '--log_file', str(model_path.with_suffix('.txt')),
                          '--model_path', str(model_path), *ARGS[model], *extra])
    finally:  # main leaves its log file open on the root logger
        for handler in logging.root.handlers[:]:
            if isinstance(handler, logging.FileHandler):
                handler.close()
                logging.root.removeHandler(handler)


@pytest.mark.parametrize('model', ['SASRec', 'KDA_LRD'])  # KDA_LRD: KG and LRD negatives have their own RNGs
def test_resumed_run_retraces_the_uninterrupted_one(model, tiny_root, tmp_path):
    straight = run(model, tiny_root, tmp_path / 'straight.pt', '--epoch', '3')
    first = run(model, tiny_root, tmp_path / 'split.pt', '--epoch', '1')
    assert first['epochs'] == 1 and first['stop_reason'] == 'max_epoch'
    resumed = run(model, tiny_root, tmp_path / 'split.pt', '--epoch', '3', '--resume', '1')

    a = train_state.load(str(tmp_path / 'straight.state.pt'))
    b = train_state.load(str(tmp_path / 'split.state.pt'))
    assert a['epoch'] == b['epoch'] == 3
    assert a['main_metric'] == b['main_metric']  # all three dev evaluations, the first from the first run
    assert a['model'].keys() == b['model'].keys()
    for name in a['model']:
        assert torch.equal(a['model'][name], b['model'][name]), name
    assert resumed['epochs'] == straight['epochs'] == 3 and resumed['best_epoch'] == straight['best_epoch']
    assert resumed['train_s'] > first['train_s'] > 0  # the training time of the first process is carried over
    assert resumed['train_s'] == round(b['train_s'], 1)
    for split in ('dev', 'test'):
        assert resumed[split] == straight[split]
    assert len(b['rng']) == 1 and 'train.rng' in b['rng'][0]['numpy']  # one process; the sampler's generator
    if model == 'KDA_LRD':
        assert 'train.lrd_rng' in b['rng'][0]['numpy']


def test_resume_without_state_trains_from_scratch_and_a_finished_run_is_not_trained_again(tiny_root, tmp_path):
    path = tmp_path / 'm.pt'
    fresh = run('SASRec', tiny_root, path, '--epoch', '2', '--resume', '1')
    assert fresh['epochs'] == 2
    state = Path(train_state.state_path(str(path)))
    before = state.stat().st_mtime_ns
    again = run('SASRec', tiny_root, path, '--epoch', '2', '--resume', '1')
    assert state.stat().st_mtime_ns == before  # no epoch ran
    assert again['epochs'] == 2 and again['stop_reason'] == 'max_epoch' and again['test'] == fresh['test']
    assert again['train_s'] == fresh['train_s'] > 0  # read back from the state, not the (empty) loop of this call


def test_an_early_stopped_run_continues_only_under_a_longer_patience(tiny_root, tmp_path):
    """How a run that stopped on the start-up plateau is continued: --resume 1 with a larger --early_stop (0 = none)."""
    path = tmp_path / 'm.pt'
    stopped = run('SASRec', tiny_root, path, '--epoch', '4', '--early_stop', '1')
    assert stopped['stop_reason'] == 'early_stop' and stopped['epochs'] == 2
    same = run('SASRec', tiny_root, path, '--epoch', '4', '--early_stop', '1', '--resume', '1')
    assert same['epochs'] == 2 and same['stop_reason'] == 'early_stop' and same['test'] == stopped['test']
    longer = run('SASRec', tiny_root, path, '--epoch', '4', '--early_stop', '0', '--resume', '1')
    assert longer['epochs'] == 4 and longer['stop_reason'] == 'max_epoch'
    assert 'continuing with epoch 3' in path.with_suffix('.txt').read_text()


def test_broken_state_file_is_refused_with_the_way_out(tiny_root, tmp_path):
    path = tmp_path / 'm.pt'
    Path(train_state.state_path(str(path))).write_bytes(b'not a torch file')
    with pytest.raises(ValueError, match=r'm\.state\.pt: not a readable training state .*delete it'):
        run('SASRec', tiny_root, path, '--epoch', '1', '--resume', '1')


def test_state_path_and_generators():
    run = 'model/KDA/KDA__Office__0__lr=0.001'
    assert train_state.state_path(run + '.pt') == run + '.state.pt'
    assert train_state.state_path('ckpt') == 'ckpt.state.pt'

    class Holder:
        def __init__(self):
            self.rng, self.other = np.random.default_rng(1), 3

    net = torch.nn.Sequential(torch.nn.Linear(2, 2))
    net[0].noise = np.random.default_rng(2)
    found = train_state.generators({'model': net, 'train': Holder()})
    assert sorted(found) == ['model.0.noise', 'train.rng']
    state = train_state.rng_state({'model': net, 'train': Holder()})
    expected = found['train.rng'].random(3)
    holder = Holder()
    holder.rng.random(10)  # moved on; restoring puts it back where the saved one was
    assert train_state.set_rng_state(state, {'model': net, 'train': holder}) == []
    assert np.array_equal(holder.rng.random(3), expected)
