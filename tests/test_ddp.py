"""Distributed training under torchrun: 2 CPU processes on Gloo, tiny data.

Each launch runs ``python -m torch.distributed.run --nproc_per_node 2 tests/test_ddp.py <main args>``:
run as a script, this file is the worker. It patches the framework from outside (no test hooks in
the framework itself) to dump, per rank, the model's state after every epoch, the training batches
it drew, which ranks built the corpus or encoded texts, and ``main``'s results; the tests read them.
Environment variables of the worker: ``DDP_TEST_DUMP`` (folder for the dumps), ``DDP_TEST_ROOT``
(where the corpus cache goes), ``DDP_TEST_FAIL`` (``rank:epoch``: raise in that rank's fit).
"""
from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / 'src'))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import main  # noqa: E402
from tiny_data import make_tiny_dataset  # noqa: E402
from utils import corpus_cache, text_encoders  # noqa: E402
from utils.distributed import ShardedBatchSampler  # noqa: E402

LAUNCH_TIMEOUT_S = 90
FEATURE_DIM = 8


# --------------------------------------------------------------------------- the worker (torchrun runs this file)

class FakeEncoder:
    """A deterministic text encoder that leaves a marker when it runs (the real ones are slow)."""
    identity = 'fake-ddp:v1'

    def __init__(self, marker_dir: Path):
        self.marker_dir = marker_dir

    def encode(self, texts):
        (self.marker_dir / f'encoded_rank{os.environ.get("RANK", "single")}_{os.getpid()}').touch()
        return np.stack([np.random.default_rng(sum(t.encode())).normal(size=FEATURE_DIM) for t in texts])


def worker_main(argv: list[str]) -> None:
    from helpers.BaseReader import BaseReader
    from helpers.BaseRunner import BaseRunner
    from utils import distributed

    dump, rank = Path(os.environ['DDP_TEST_DUMP']), int(os.environ['RANK'])
    corpus_cache.REPO_DIR = Path(os.environ['DDP_TEST_ROOT'])  # corpus cache out of the repository
    text_encoders.make_encoder = lambda *args, **kwargs: FakeEncoder(dump)
    fail_rank, fail_epoch = (int(x) for x in os.environ.get('DDP_TEST_FAIL', '-1:-1').split(':'))
    batches: list[list[int]] = []

    reader_init = BaseReader.__init__

    def counting_reader_init(self, args):
        (dump / f'built_rank{rank}_{os.getpid()}').touch()
        reader_init(self, args)

    sampler_iter = ShardedBatchSampler.__iter__

    def recording_iter(self):
        for batch in sampler_iter(self):
            batches.append(list(batch))
            yield batch

    fit = BaseRunner.fit

    def dumping_fit(self, dataset, epoch=-1):
        if (rank, epoch) == (fail_rank, fail_epoch):
            raise RuntimeError(f'injected failure on rank {rank} in epoch {epoch}')
        batches.clear()
        loss = fit(self, dataset, epoch)
        torch.save(dataset.model.state_dict(), dump / f'state_rank{rank}_epoch{epoch}.pt')
        (dump / f'batches_rank{rank}_epoch{epoch}.json').write_text(json.dumps(batches))
        return loss

    BaseReader.__init__ = counting_reader_init
    distributed.ShardedBatchSampler.__iter__ = recording_iter
    BaseRunner.fit = dumping_fit
    results = main.main(argv)
    (dump / f'results_rank{rank}.json').write_text(json.dumps(results))


# --------------------------------------------------------------------------- launching

def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def launch(root: Path, out: Path, model: str, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    dump = out / 'dump'
    dump.mkdir(parents=True, exist_ok=True)
    args = ['--model_name', model, '--path', str(root), '--dataset', 'Tiny', '--gpu', '', '--epoch', '2',
            '--batch_size', '8', '--eval_batch_size', '8', '--log_file', str(out / 'log' / 'run.txt'),
            '--model_path', str(out / 'model' / 'run.pt'), '--ddp_timeout', '60', *extra]
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2', '--master_addr', '127.0.0.1',
           '--master_port', str(free_port()), '--monitor_interval', '0.2', __file__, *args]
    full_env = {**os.environ, 'OMP_NUM_THREADS': '1', 'DDP_TEST_DUMP': str(dump), 'DDP_TEST_ROOT': str(root),
                'PYTHONUNBUFFERED': '1', **(env or {})}
    for name in ('WORLD_SIZE', 'RANK', 'LOCAL_RANK', 'MASTER_ADDR', 'MASTER_PORT'):
        full_env.pop(name, None)
    if 'lo' in {name for _, name in socket.if_nameindex()}:  # Gloo on loopback: no reliance on the host name
        full_env.setdefault('GLOO_SOCKET_IFNAME', 'lo')
    proc = subprocess.Popen(cmd, env=full_env, cwd=str(REPO), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)  # its own process group: a hang kills all of it
    try:
        stdout, stderr = proc.communicate(timeout=LAUNCH_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        pytest.fail(f'torchrun did not finish within {LAUNCH_TIMEOUT_S} s:\n{stdout[-2000:]}\n{stderr[-4000:]}')
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


def run_single(root: Path, out: Path, model: str, *extra: str) -> dict:
    """A single-process run in this process (the non-distributed path)."""
    try:
        return main.main(['--model_name', model, '--path', str(root), '--dataset', 'Tiny', '--gpu', '',
                          '--eval_batch_size', '8', '--log_file', str(out / 'log' / 'single.txt'), *extra])
    finally:  # main leaves its log file open on the root logger
        for handler in logging.root.handlers[:]:
            if isinstance(handler, logging.FileHandler):
                handler.close()
                logging.root.removeHandler(handler)


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob('*') if p.is_file())


@pytest.fixture(scope='module')
def tiny_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp('data')
    make_tiny_dataset(root)
    return root


@pytest.fixture(autouse=True)
def corpus_cache_in_tmp(monkeypatch, tiny_root):
    monkeypatch.setattr(corpus_cache, 'REPO_DIR', tiny_root)


@pytest.fixture(scope='module')
def sasrec_run(tiny_root, tmp_path_factory):
    out = tmp_path_factory.mktemp('sasrec')
    proc = launch(tiny_root, out, 'SASRec', '--test_all', '1', '--dropout', '0.1')
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc


def n_train_instances(root: Path) -> int:
    train = pd.read_csv(root / 'Tiny' / 'train.csv', sep='\t')
    positions = train.sort_values(['user_id', 'time']).groupby('user_id').cumcount()
    return int((positions > 0).sum())  # sequential datasets drop instances without history


def load_state(out: Path, rank: int, epoch: int) -> dict:
    return torch.load(out / 'dump' / f'state_rank{rank}_epoch{epoch}.pt', weights_only=True)


def assert_same_metrics(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for key in a:
        assert abs(a[key] - b[key]) <= 1e-6, (key, a[key], b[key])


# --------------------------------------------------------------------------- tests

@pytest.mark.parametrize('n,batch_size,world', [(61, 8, 2), (16, 8, 2), (17, 8, 2), (33, 4, 4), (5, 256, 4), (9, 2, 3)])
def test_sharded_batches_are_disjoint_cover_and_equal_in_steps(n, batch_size, world):
    for epoch in (1, 2):
        per_rank = []
        for rank in range(world):
            sampler = ShardedBatchSampler(n, batch_size, rank=rank, world_size=world, seed=3)
            sampler.set_epoch(epoch)
            per_rank.append(list(sampler))
            assert len(per_rank[-1]) == len(sampler)
            assert all(batch for batch in per_rank[-1])  # no rank ever gets an empty step
        assert len({len(b) for b in per_rank}) == 1  # same number of steps on every rank
        flat = [i for batches in per_rank for batch in batches for i in batch]
        assert sorted(flat) == list(range(n))  # disjoint and covering
    first = ShardedBatchSampler(n, batch_size, rank=0, world_size=world, seed=3)
    second = ShardedBatchSampler(n, batch_size, rank=0, world_size=world, seed=3)
    second.set_epoch(1)
    assert list(first) != list(second) or n < 2 * world  # the permutation changes with the epoch


def test_ranks_hold_identical_parameters_after_each_epoch(sasrec_run):
    out, _ = sasrec_run
    for epoch in (1, 2):
        state0, state1 = load_state(out, 0, epoch), load_state(out, 1, epoch)
        assert state0.keys() == state1.keys()
        for key in state0:
            assert torch.equal(state0[key], state1[key]), (epoch, key)
    assert any(not torch.equal(load_state(out, 0, 1)[k], load_state(out, 0, 2)[k]) for k in load_state(out, 0, 1))


def test_resume_under_torchrun_retraces_the_uninterrupted_run(sasrec_run, tiny_root, tmp_path):
    straight, _ = sasrec_run
    out = tmp_path / 'split'
    for extra in (['--epoch', '1'], ['--resume', '1']):  # one epoch, then continue to launch()'s --epoch 2
        proc = launch(tiny_root, out, 'SASRec', '--test_all', '1', '--dropout', '0.1', *extra)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert 'after epoch 1 (best dev epoch 1, stopped by max_epoch); continuing with epoch 2' in \
        (out / 'log' / 'run.txt').read_text()
    saved = torch.load(out / 'model' / 'run.state.pt', weights_only=True)
    assert saved['epoch'] == 2 and len(saved['rng']) == 2  # each rank's generators
    assert not torch.equal(saved['rng'][0]['torch'], saved['rng'][1]['torch'])
    for rank in (0, 1):
        resumed, uninterrupted = load_state(out, rank, 2), load_state(straight, rank, 2)
        for key in uninterrupted:
            assert torch.equal(resumed[key], uninterrupted[key]), (rank, key)


def test_training_shards_are_disjoint_and_cover_the_data(sasrec_run, tiny_root):
    out, _ = sasrec_run
    n = n_train_instances(tiny_root)
    orders = []
    for epoch in (1, 2):
        shards = [json.loads((out / 'dump' / f'batches_rank{r}_epoch{epoch}.json').read_text()) for r in (0, 1)]
        assert len(shards[0]) == len(shards[1]) > 1  # same number of steps
        assert all(len(b) <= 8 + 1 for shard in shards for b in shard)  # --batch_size is per rank
        flat = [sorted(i for b in shard for i in b) for shard in shards]
        assert not set(flat[0]) & set(flat[1])
        assert sorted(flat[0] + flat[1]) == list(range(n))
        orders.append(shards[0])
    assert orders[0] != orders[1]  # each epoch has its own shuffle


def test_only_rank_zero_writes_and_logs(sasrec_run):
    out, proc = sasrec_run
    files = files_under(out)
    assert [f for f in files if not f.startswith('dump')] == sorted([
        'log/run.txt', 'model/run.pt', 'model/run.state.pt',
        *(f'log/{d.name}/rec-{p}.csv' for d in (out / 'log').iterdir() if d.is_dir() for p in ('dev', 'test'))])
    assert len([f for f in files if f.endswith('.csv')]) == 2
    log = (out / 'log' / 'run.txt').read_text()
    assert 'Distributed: 2 processes, backend gloo, global batch 16' in log
    assert log.count('Epoch 1 ') == 1 and log.count('Epoch 2 ') == 1 and 'Test After Training' in log
    assert '[rank 1]' not in proc.stdout + proc.stderr  # rank 1 has nothing to warn about
    results = [json.loads((out / 'dump' / f'results_rank{r}.json').read_text()) for r in (0, 1)]
    assert results[0] == results[1]


def test_distributed_evaluation_equals_single_process(sasrec_run, tiny_root, tmp_path):
    out, _ = sasrec_run
    ddp = json.loads((out / 'dump' / 'results_rank0.json').read_text())
    single = run_single(tiny_root, tmp_path, 'SASRec', '--test_all', '1', '--dropout', '0.1', '--train', '0',
                        '--load', '1', '--model_path', str(out / 'model' / 'run.pt'))
    for phase in ('dev', 'test'):
        assert_same_metrics(ddp[phase], single[phase])
        ddp_csv = pd.read_csv(next(out.glob(f'log/*/rec-{phase}.csv')), sep='\t')
        single_csv = pd.read_csv(next(tmp_path.glob(f'log/*/rec-{phase}.csv')), sep='\t')
        pd.testing.assert_frame_equal(ddp_csv, single_csv)
    assert ddp['best_epoch'] in (1, 2)


def fusion_beta(log: Path) -> float:
    line = next(line for line in log.read_text().splitlines() if 'Text fusion: beta ' in line)
    return float(line.split('Text fusion: beta ')[1].split()[0])


def test_text_fusion_calibrates_on_the_gathered_dev_set(tmp_path, monkeypatch):
    """Each rank ranks its slice of dev; β and the fused metrics equal a single process on the same model."""
    root, out = tmp_path / 'data', tmp_path / 'ddp'  # own data and caches: other tests count encoder calls
    make_tiny_dataset(root)
    monkeypatch.setattr(corpus_cache, 'REPO_DIR', root)
    args = ('--include_lrd', '0', '--text_fusion', '1', '--include_attr', '1', '--num_heads', '2', '--epoch', '1')
    proc = launch(root, out, 'KDA_LRD', *args)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ddp = json.loads((out / 'dump' / 'results_rank0.json').read_text())
    assert json.loads((out / 'dump' / 'results_rank1.json').read_text()) == ddp
    monkeypatch.setattr(text_encoders, 'make_encoder', lambda *a, **k: FakeEncoder(tmp_path))
    single = run_single(root, tmp_path, 'KDA_LRD', *args, '--train', '0', '--load', '1',
                        '--model_path', str(out / 'model' / 'run.pt'))
    assert fusion_beta(out / 'log' / 'run.txt') == fusion_beta(tmp_path / 'log' / 'single.txt')
    for phase in ('dev', 'test'):
        assert_same_metrics(ddp[phase], single[phase])


@pytest.fixture(scope='module')
def failing_kda_lrd_run(tiny_root, tmp_path_factory):
    """KDA_LRD (KG and LRD branches, text features) whose rank 1 raises at the start of epoch 2."""
    out = tmp_path_factory.mktemp('kda_lrd')
    start = time.monotonic()
    proc = launch(tiny_root, out, 'KDA_LRD', '--regenerate', '1', '--include_attr', '1', '--num_heads', '2',
                  '--latent_relation_num', '2', env={'DDP_TEST_FAIL': '1:2'})
    return out, proc, time.monotonic() - start


def test_kda_lrd_builds_corpus_and_text_features_once_and_syncs(failing_kda_lrd_run):
    out, _, _ = failing_kda_lrd_run
    markers = [p.name.rsplit('_', 1)[0] for p in (out / 'dump').iterdir() if p.name.startswith(('built', 'encoded'))]
    assert sorted(markers) == ['built_rank0', 'encoded_rank0']  # rank 1 waited, then loaded rank 0's cache
    state0, state1 = load_state(out, 0, 1), load_state(out, 1, 1)
    assert state0.keys() == state1.keys() and any('lrd' in k for k in state0)
    for key in state0:
        assert torch.equal(state0[key], state1[key]), key


def test_failure_on_one_rank_ends_every_process_with_its_error(failing_kda_lrd_run):
    out, proc, elapsed = failing_kda_lrd_run
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert 'RuntimeError: injected failure on rank 1 in epoch 2' in output
    root_cause = output[output.index('Root Cause'):]  # torchrun's summary names the rank that failed first
    assert re.search(r'rank\s*:\s*1\b', root_cause.split('traceback')[0]), root_cause[:1500]
    assert 'injected failure on rank 1' in root_cause
    assert elapsed < LAUNCH_TIMEOUT_S
    assert not list((out / 'dump').glob('results_rank*.json'))  # no rank carried on alone
    assert not (out / 'dump' / 'state_rank0_epoch2.pt').exists()


if __name__ == '__main__':
    worker_main(sys.argv[1:])
