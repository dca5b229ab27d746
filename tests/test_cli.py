"""Entry point and registry: model resolution by name, ReChorus defaults, --help from the repo root and from
src/, run names, and the early-stopping rule."""
from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / 'src'))

import main  # noqa: E402
from helpers.BaseRunner import BaseRunner  # noqa: E402
from tiny_data import make_tiny_dataset  # noqa: E402
from utils import corpus_cache, registry  # noqa: E402

EXPECTED_MODELS = {'SASRec', 'RCF', 'KDA', 'RCF_LRD', 'KDA_LRD', 'Caser', 'GRU4Rec', 'TiSASRec'}


def subprocess_env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONDONTWRITEBYTECODE='1')
    env.pop('PYTHONPATH', None)  # main.py must find its own modules
    return env


# --------------------------------------------------------------------------- registry

@pytest.mark.parametrize('name, module, reader', [
    ('SASRec', 'models.sequential.SASRec', 'SeqReader'),
    ('RCF', 'models.sequential.RCF', 'KGReader'),
    ('KDA', 'models.sequential.KDA', 'KDAReader'),
    ('RCF_LRD', 'models.sequential.RCF_LRD', 'LRDReader'),
    ('KDA_LRD', 'models.sequential.KDA_LRD', 'LRDReader'),
])
def test_models_resolve_by_name(name, module, reader):
    cls = registry.find_model(name)
    assert cls.__name__ == name and cls.__module__ == module
    assert cls.reader == reader and cls.runner == 'BaseRunner'
    reader_cls = registry.find_reader(cls.reader)
    assert reader_cls.__name__ == reader and reader_cls.__module__ == f'helpers.{reader}'
    assert registry.find_runner(cls.runner) is BaseRunner


def test_available_models():
    names = registry.available_models()
    assert EXPECTED_MODELS <= set(names)
    assert 'BaseModel' not in names and names == sorted(names)
    assert not any(n.startswith('_') for n in names)


def test_unknown_model_is_a_one_line_error_listing_models():
    with pytest.raises(SystemExit) as info:
        registry.find_model('KDA_LDR')
    message = str(info.value.code)
    assert '\n' not in message
    assert message == f"error: unknown model 'KDA_LDR'; available: {', '.join(registry.available_models())}"


def test_unknown_reader_and_runner():
    with pytest.raises(SystemExit, match="error: unknown reader 'NoReader'; available: .*KGReader"):
        registry.find_reader('NoReader')
    with pytest.raises(SystemExit, match="error: unknown runner 'NoRunner'; available: BaseRunner"):
        registry.find_runner('NoRunner')


def test_unknown_model_from_the_command_line_exits_with_one_line():
    proc = subprocess.run([sys.executable, 'src/main.py', '--model_name', 'Nope'], cwd=REPO, env=subprocess_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert 'Traceback' not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error: unknown model 'Nope'; available: ")
    assert 'KDA_LRD' in lines[-1] and 'SASRec' in lines[-1]


def test_missing_dataset_from_the_command_line_exits_with_one_line(tmp_path):
    (tmp_path / 'Hand').mkdir()
    proc = subprocess.run([sys.executable, 'src/main.py', '--model_name', 'KDA', '--dataset', 'Office',
                           '--path', str(tmp_path), '--gpu', ''], cwd=REPO, env=subprocess_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert 'Traceback' not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines[-1] == (f"error: dataset 'Office' not found in {tmp_path}; available: Hand "
                         "(build one with the scripts in data/, see data/README.md)")


def test_unreadable_checkpoint_is_a_one_line_error(tmp_path, monkeypatch):
    """--load 1 with a truncated checkpoint: main.cli exits with one line naming the file, no traceback."""
    monkeypatch.setattr(corpus_cache, 'REPO_DIR', tmp_path)
    make_tiny_dataset(tmp_path)
    (tmp_path / 'cut.pt').write_bytes(b'PK\x03\x04 not a whole zip')
    with pytest.raises(SystemExit) as stop:
        main.cli(['--model_name', 'SASRec', '--dataset', 'Tiny', '--path', str(tmp_path), '--gpu', '',
                  '--load', '1', '--train', '0', '--model_path', str(tmp_path / 'cut.pt'),
                  '--log_file', str(tmp_path / 'run.txt')])
    assert str(stop.value.code).startswith(f'error: {tmp_path / "cut.pt"}: not a readable checkpoint (')


# --------------------------------------------------------------------------- argument parsing

def parse(*argv: str) -> argparse.Namespace:
    parser, *_ = main.build_parser(list(argv))
    return parser.parse_args(list(argv))


def test_rechorus_defaults():
    args = parse('--model_name', 'SASRec')
    assert args.epoch == 200 and args.early_stop == 10
    assert args.lr == 1e-3 and args.l2 == 0
    assert args.batch_size == 256 and args.eval_batch_size == 0  # 0: chosen per device by the runner
    assert args.topk == '5,10,20,50' and args.metric == 'NDCG,HR' and args.main_metric == ''
    assert args.optimizer == 'Adam' and args.test_epoch == -1
    assert args.history_max == 20 and args.num_neg == 1 and args.test_all == 0 and args.dropout == 0
    assert args.random_seed == 0 and args.gpu == '0' and args.sep == '\t'
    assert args.load == 0 and args.train == 1 and args.regenerate == 0 and args.buffer == 0
    assert args.model_name == 'SASRec' and args.model_mode == ''
    runner = BaseRunner(args)
    assert runner.topk == [5, 10, 20, 50] and runner.metrics == ['NDCG', 'HR']
    assert runner.main_metric == 'NDCG@5' and runner.main_topk == 5


def test_eval_batch_size_zero_means_256_on_a_gpu_and_32_on_the_cpu():
    args = parse('--model_name', 'SASRec')
    for device, size in ((torch.device('cuda', 1), 256), (torch.device('cpu'), 32), (None, 32)):
        args.device = device
        assert BaseRunner(args).eval_batch_size == size
    args = parse('--model_name', 'SASRec', '--eval_batch_size', '100')
    args.device = torch.device('cuda', 0)
    assert BaseRunner(args).eval_batch_size == 100  # an explicit size wins


def test_main_metric_follows_first_metric_and_k():
    runner = BaseRunner(parse('--model_name', 'SASRec', '--metric', 'hr,ndcg', '--topk', '10,20'))
    assert runner.metrics == ['HR', 'NDCG'] and runner.main_metric == 'HR@10' and runner.main_topk == 10
    runner = BaseRunner(parse('--model_name', 'SASRec', '--main_metric', 'HR@20'))
    assert runner.main_metric == 'HR@20' and runner.main_topk == 20


def test_lrd_model_arguments_chain_through_every_parent():
    args = parse('--model_name', 'KDA_LRD', '--latent_relation_num', '5', '--lamda', '10')
    # reader chain: BaseReader → SeqReader → KGReader → KDAReader → LRDReader
    assert args.dataset and args.include_attr == 0 and args.t_scalar == 60 and args.n_dft == 64
    assert args.freq_rand == 0 and args.include_lrd == 1 and args.plm_name == 'minilm'
    # model chain: BaseModel → GeneralModel → SequentialModel → RCF → KDA → KDA_LRD
    assert args.history_max == 20 and args.num_neg == 1 and args.emb_size == 64 and args.gamma == -1
    assert args.include_val == 1 and args.include_kge == 1 and args.num_layers == 1 and args.num_heads == 1
    assert args.latent_relation_num == 5 and args.lamda == 10 and args.alpha == 0.1
    assert args.lrd_loss == 'code' and args.entropy_sign == 'code' and args.leave_one_latent == 1
    assert args.lrd_feature == 'llm' and args.lrd_relations == 'all' and args.q_balance == 0


def test_model_only_arguments_are_rejected_for_other_models():
    with pytest.raises(SystemExit):
        parse('--model_name', 'SASRec', '--latent_relation_num', '5')


def test_run_name():
    args = parse('--model_name', 'KDA_LRD', '--dataset', 'Office', '--random_seed', '3', '--lr', '0.01')
    full = ('KDA_LRD__Office__3__lr=0.01__l2=0__emb_size=64__num_layers=1__num_heads=1__gamma=-1__'
            'include_val=1__freq_rand=0__latent_relation_num=8__lamda=0.1__alpha=0.1__lrd_loss=code__'
            'entropy_sign=code__leave_one_latent=1__lrd_relations=all__q_balance=0.0__relation_diversity=0.0__'
            'q_attention=0__text_fusion=0__text_init=0__lrd_feature=llm__include_lrd=1__include_kge=1__plm_name=minilm')
    name = main.run_name(args, registry.find_model('KDA_LRD'))
    assert len(name) <= main.MAX_RUN_NAME
    assert name == ('KDA_LRD__Office__3__lr=0.01__l2=0__emb_size=64__num_layers=1__num_heads=1__gamma=-1__'
                    'include_val=1__freq_rand=0__latent_relation_num=8__lamda=0.1__'
                    + hashlib.sha1(full.encode()).hexdigest()[:8])  # cut after the last whole arg=value
    ablation = main.run_name(parse('--model_name', 'KDA_LRD', '--dataset', 'Office', '--random_seed', '3',
                                   '--lr', '0.01', '--plm_name', 'st:other'), registry.find_model('KDA_LRD'))
    assert ablation != name and ablation[:-8] == name[:-8]
    assert main.run_name(parse('--model_name', 'SASRec', '--dataset', 'Tiny'), registry.find_model('SASRec')) == \
        'SASRec__Tiny__0__lr=0.001__l2=0__emb_size=64__num_layers=1__num_heads=4'


@pytest.mark.parametrize('cwd, script', [('.', 'src/main.py'), ('src', 'main.py')])
def test_help_from_repo_root_and_from_src(cwd, script):
    proc = subprocess.run([sys.executable, script, '--model_name', 'SASRec', '--help'], cwd=REPO / cwd,
                          env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for flag in ('--history_max', '--emb_size', '--num_heads', '--epoch', '--early_stop', '--dataset', '--path',
                 '--topk', '--metric', '--test_all', '--num_neg', '--regenerate', '--model_name'):
        assert flag in proc.stdout, flag
    assert '--latent_relation_num' not in proc.stdout


# --------------------------------------------------------------------------- early stopping

def runner_with_patience(patience: int) -> BaseRunner:
    return BaseRunner(parse('--model_name', 'SASRec', '--early_stop', str(patience)))


@pytest.mark.parametrize('curve, stop', [
    ([0.1, 0.2, 0.3], False),                 # still improving
    ([0.1, 0.2, 0.3, 0.3], False),            # a plateau shorter than the patience
    ([0.1, 0.3, 0.2, 0.25], False),           # 2 epochs without a new best, patience 3
    ([0.1, 0.3, 0.2, 0.25, 0.29], True),      # 3 epochs without a new best
    ([0.1, 0.2, 0.3, 0.2, 0.1], True),        # last 3 values non-increasing, more than 3 epochs run
    ([0.3, 0.2, 0.1], False),                 # non-increasing but only 3 epochs: not more than the patience
    ([0.3, 0.2, 0.1, 0.05], True),
    ([0.2, 0.2, 0.2, 0.2], True),             # flat for longer than the patience
    ([0.1, 0.2, 0.1, 0.3, 0.1, 0.2], False),  # best at epoch 4, two epochs since, tail not monotone
])
def test_eval_termination(curve, stop):
    assert runner_with_patience(3).eval_termination(curve) is stop


def test_patience_ten_needs_ten_epochs_without_a_new_best():
    runner = runner_with_patience(10)
    curve = [0.5] + [0.4, 0.45] * 4 + [0.41]  # best at epoch 1, then 9 epochs below it
    assert len(curve) == 10 and not runner.eval_termination(curve)
    assert runner.eval_termination(curve + [0.42])  # the 10th epoch without a new best stops
