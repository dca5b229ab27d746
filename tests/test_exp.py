"""exp.py: command files, grids, run keys, the results CSV, resume, failures, selection, Table-3 reports."""
from __future__ import annotations

import json
import logging
import math
import re
import shlex
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / 'src'))

import exp  # noqa: E402
from tiny_data import make_tiny_dataset  # noqa: E402
from utils import arg_docs, corpus_cache, reports  # noqa: E402
from utils import experiments as ex  # noqa: E402
from utils import results_csv as rc  # noqa: E402
from utils import run_pool  # noqa: E402
from utils import train_state  # noqa: E402
from utils.run_progress import epoch_progress  # noqa: E402

METRICS = [f'{m}@{k}' for k in (5, 10, 20, 50) for m in ('HR', 'NDCG')]

# A stand-in for the child process: records its arguments, writes metrics that depend on lr, lamda and the
# seed, crashes like a Python traceback for --optimizer Crash, and stops at best epoch 3 by early stopping
# (--optimizer Plateau) or by its budget (--optimizer Budget).
FAKE_CHILD = r'''
import json, os, sys, time
result, argv = sys.argv[1], sys.argv[2:]
with open(os.environ['FAKE_CHILD_LOG'], 'a') as f:
    f.write(json.dumps({'argv': argv, 'omp': os.environ.get('OMP_NUM_THREADS'),
                        'cuda': os.environ.get('CUDA_VISIBLE_DEVICES')}) + '\n')
args = dict(zip(argv[::2], argv[1::2]))
if args.get('--optimizer') == 'Crash':
    print('Epoch 1 :   0%|     | 0/3\r', file=sys.stderr)
    print('Traceback (most recent call last):\n  File "main.py", line 1\nValueError: unknown optimizer Crash',
          file=sys.stderr)
    sys.exit(1)
if args.get('--optimizer') == 'Sleep':
    time.sleep(60)
if args.get('--optimizer') == 'Epochs':  # two epochs as the runner logs them, the second not a new best
    print('Epoch 1     loss=0.5819 [33.0 s, data 0.2 s]    dev=(NDCG@5:0.2500,HR@5:0.3000) [73.4 s] *', flush=True)
    print('Epoch 2     loss=0.5204 [29.5 s, data 0.2 s]    dev=(NDCG@5:0.2000,HR@5:0.2900) [67.0 s]', flush=True)
    time.sleep(1.5)
base = float(args.get('--lr', 1e-3)) * 10 + float(args.get('--lamda', 1)) / 100 + int(args['--random_seed']) / 1000
metrics = {f'{m}@{k}': base + k / 1000 + (0.001 if m == 'HR' else 0) for k in (5, 10, 20, 50) for m in ('NDCG', 'HR')}
with open(result, 'w') as f:
    json.dump({'dev': metrics, 'test': {k: v + 0.0001 for k, v in metrics.items()}, 'best_epoch': 3,
               'stop_reason': {'Plateau': 'early_stop', 'Budget': 'time_budget'}.get(args.get('--optimizer'), '')}, f)
'''


@pytest.fixture
def fake_child(tmp_path, monkeypatch):
    script = tmp_path / 'fake_child.py'
    script.write_text(FAKE_CHILD)
    log = tmp_path / 'calls.jsonl'
    monkeypatch.setenv('FAKE_CHILD_LOG', str(log))

    def calls(key: str = 'argv') -> list:
        return [json.loads(line)[key] for line in log.read_text().splitlines()] if log.exists() else []
    return [sys.executable, str(script)], calls


def run_quiet(specs, out, child, tmp_path, **kw):
    """run_specs with the fake child, folders in tmp_path and fast polling; its lines go to ``echo`` (default: none)."""
    kw.setdefault('echo', lambda *a: None)
    return run_pool.run_specs(specs, out, child_cmd=child, work_dir=tmp_path / 'work', log_dir=tmp_path / 'log',
                        model_dir=tmp_path / 'model', poll_s=0.02, **kw)


# --------------------------------------------------------------------------- command files and grids

def test_command_file_lines(tmp_path):
    path = tmp_path / 'run.sh'
    path.write_text('# Office, ReChorus style\n'
                    'python main.py --model_name SASRec --dataset Office --lr 1e-3  # tuned\n'
                    '\n'
                    'CUDA_VISIBLE_DEVICES=1 python3 -u src/main.py --model_name KDA \\\n'
                    '    --dataset "Office" --l2 1e-6 &\n'
                    '--model_name Caser --emb_size 64\n'
                    '   # indented comment\n')
    assert ex.read_command_file(path) == [
        ['--model_name', 'SASRec', '--dataset', 'Office', '--lr', '1e-3'],
        ['--model_name', 'KDA', '--dataset', 'Office', '--l2', '1e-6'],
        ['--model_name', 'Caser', '--emb_size', '64']]
    with pytest.raises(ex.SpecError, match='line 1'):
        bad = tmp_path / 'bad.sh'
        bad.write_text('cd src && python main.py\n')
        ex.read_command_file(bad)


def test_grid_expansion_order_and_errors():
    grid = ex.parse_grid('lr=1e-3,1e-4 --lamda=0.1,1,5')
    assert grid == [('lr', ['1e-3', '1e-4']), ('lamda', ['0.1', '1', '5'])]
    points = ex.expand_grid(grid)
    assert len(points) == 6
    assert points[0] == ['--lr', '1e-3', '--lamda', '0.1']
    assert points[1] == ['--lr', '1e-3', '--lamda', '1']  # the first name varies slowest
    assert points[-1] == ['--lr', '1e-4', '--lamda', '5']
    assert ex.expand_grid(ex.parse_grid(['lr=1', 'l2=0,1e-6'])) == [['--lr', '1', '--l2', '0'],
                                                                 ['--lr', '1', '--l2', '1e-6']]
    assert ex.expand_grid([]) == [[]]
    for bad in ('lr', 'lr=', 'lr=1,,2', 'lr=1 lr=2', '1x=3'):
        with pytest.raises(ex.SpecError):
            ex.parse_grid(bad)


def test_specs_normalise_keys_seeds_and_precedence():
    base = ['--model_name', 'KDA_LRD', '--dataset', 'Office', '--lr', '1e-2']
    specs = ex.build_specs([['--lr', '0.001'], ['--lr', '1e-3', '--gpu', '1'], ['--include_kge', '0']], base=base,
                           grid=ex.parse_grid('lamda=0.1,5'), n_seeds=2, seed0=3)
    # lines 1 and 2 are the same run (--lr 0.001 == 1e-3, --gpu does not count); line 3 keeps the base lr
    assert len(specs) == 2 * 2 * 2
    assert [s.seed for s in specs[:2]] == [3, 4]
    first = specs[0]
    assert first.config == {'model_name': 'KDA_LRD', 'dataset': 'Office'}  # lr 1e-3 and lamda 0.1 are defaults
    assert first.argv[-2:] == ['--random_seed', '3'] and first.args['random_seed'] == 3
    assert first.args['lr'] == 0.001 and first.args['lamda'] == 0.1
    kge = [s for s in specs if s.config.get('include_kge') == 0]
    assert len(kge) == 4 and all(s.config['lr'] == 0.01 for s in kge)
    assert len({s.run_id for s in specs}) == len(specs)
    assert len({s.config_key for s in specs}) == 4  # seeds share a config
    assert all(s.run_name.startswith(f'KDA_LRD__Office__{s.seed}__') for s in specs)
    # the stored config reruns as the same key
    again = ex.build_specs([rc.config_args(kge[0].config_key)], n_seeds=1, seed0=kge[0].seed)
    assert again[0].run_id == kge[0].run_id


def test_unparseable_arguments_give_an_error_not_an_exception():
    spec, = ex.build_specs([['--model_name', 'NoSuchModel', '--dataset', 'Office']])
    assert 'NoSuchModel' in spec.error and spec.model == 'NoSuchModel' and spec.args == {}
    spec, = ex.build_specs([['--model_name', 'SASRec', '--no_such_arg', '3']])
    assert 'no_such_arg' in spec.error


@pytest.mark.parametrize('grid', sorted(p.name for p in (REPO / 'bench' / 'grids').glob('*.txt')
                                         if p.name != 'office_kda_base.txt'))
def test_bench_grid_files_parse(grid):
    """The GPU grids run where a typo costs a device session: every line must parse (office_* grids on top of
    office_kda_base.txt, as bench/gpu_grid.sh runs them; the others stand alone)."""
    base, = ex.read_command_file(REPO / 'bench' / 'grids' / 'office_kda_base.txt')
    specs = ex.build_specs(ex.read_command_file(REPO / 'bench' / 'grids' / grid),
                           base=base if grid.startswith('office_') else None)
    assert specs and all(spec.error == '' for spec in specs), [spec.error for spec in specs]


# --------------------------------------------------------------------------- statistics and marks

def test_paired_ttest_matches_scipy_and_hand_computation():
    kda = {0: 0.3127, 1: 0.3101, 2: 0.3150, 3: 0.3098, 4: 0.3133}
    lrd = {0: 0.3403, 1: 0.3350, 2: 0.3390, 3: 0.3377, 4: 0.3366, 9: 0.5}  # seed 9 has no partner
    t, p, n = reports.paired_ttest(kda, lrd)
    x = np.array([kda[s] for s in range(5)])
    y = np.array([lrd[s] for s in range(5)])
    d = y - x
    t_hand = d.mean() / (d.std(ddof=1) / math.sqrt(5))
    assert n == 5
    assert t == pytest.approx(t_hand, rel=1e-10)
    ref = stats.ttest_rel(y, x)
    assert t == pytest.approx(ref.statistic) and p == pytest.approx(ref.pvalue)
    assert p == pytest.approx(2 * stats.t.sf(abs(t_hand), df=4), rel=1e-10)
    assert math.isnan(reports.paired_ttest({0: 1.0}, {0: 2.0})[1])  # one pair: no test
    assert math.isnan(reports.paired_ttest({0: 1.0, 1: 2.0}, {0: 1.0, 1: 2.0})[1])  # identical: no test


def test_seeds_for_power_matches_published_sample_sizes():
    # two-sided paired t-test, alpha .05, power .8: effect size d_z .5 needs 34 pairs, .8 needs 15, 1.0 needs 10
    # (Cohen's tables, G*Power); d_z = t / sqrt(n) of the test over the seeds at hand
    for d_z, needed in ((0.5, 34), (0.8, 15), (1.0, 10)):
        assert reports.seeds_for_power(d_z * math.sqrt(5), 5) == needed
        assert reports.seeds_for_power(-d_z * math.sqrt(8), 8) == needed  # a drop is detected as readily
    assert reports.seeds_for_power(0.01, 5) is None  # beyond max_n
    assert reports.seeds_for_power(float('nan'), 5) is None and reports.seeds_for_power(3.0, 1) is None


def test_improvement_is_over_the_seeds_the_test_pairs():
    kda = {0: 0.40, 1: 0.50, 2: 0.30, 3: 0.30}  # all-seed mean .375; seeds 0-1 mean .45
    lrd = {0: 0.45, 1: 0.54}                     # mean .495
    assert reports.paired_improvement(kda, lrd) == pytest.approx(0.495 / 0.45 - 1)
    assert reports.paired_improvement({0: 0.4}, {7: 0.5}) == pytest.approx(0.25)  # no common seed: all-seed means


def test_significance_marks():
    assert reports.significance_mark(0.0001) == '‡'
    assert reports.significance_mark(0.01) == '‡'
    assert reports.significance_mark(0.0100001) == '†'
    assert reports.significance_mark(0.05) == '†'
    assert reports.significance_mark(0.051) == ''
    assert reports.significance_mark(float('nan')) == ''


# --------------------------------------------------------------------------- running: schema, resume, failures

def test_csv_schema_one_row_per_run(tmp_path, fake_child, monkeypatch):
    child, calls = fake_child
    monkeypatch.delenv('OMP_NUM_THREADS', raising=False)
    monkeypatch.delenv('CUDA_VISIBLE_DEVICES', raising=False)
    out = tmp_path / 'results.csv'
    specs = ex.build_specs(None, base=['--model_name', 'KDA_LRD', '--dataset', 'Office'],
                           grid=ex.parse_grid('lamda=1,5'), n_seeds=2)
    counts = run_quiet(specs, out, child, tmp_path, jobs=2, gpus=['3', '5'])
    assert counts == {'ok': 4, 'failed': 0, 'skipped': 0}
    df = pd.read_csv(out)
    assert list(df.columns[:len(rc.FIXED_COLUMNS)]) == rc.FIXED_COLUMNS
    metric_columns = [f'{split}_{m}' for split in ('dev', 'test') for m in
                      ['HR@5', 'NDCG@5', 'HR@10', 'NDCG@10', 'HR@20', 'NDCG@20', 'HR@50', 'NDCG@50']]
    assert list(df.columns[len(rc.FIXED_COLUMNS):len(rc.FIXED_COLUMNS) + 16]) == metric_columns
    args = list(df.columns[len(rc.FIXED_COLUMNS) + 16:])
    assert args == sorted(args)
    for name in ('lr', 'l2', 'lamda', 'latent_relation_num', 'include_kge', 'lrd_feature', 'emb_size', 'history_max'):
        assert name in args
    assert not {'model_name', 'random_seed'} & set(args)
    assert len(df) == 4 and set(df['status']) == {'ok'} and df['run_id'].is_unique
    assert sorted(df['seed']) == [0, 0, 1, 1] and set(df['model']) == {'KDA_LRD'} and set(df['dataset']) == {'Office'}
    assert sorted(df['lamda']) == [1.0, 1.0, 5.0, 5.0]
    assert (df['best_epoch'] == 3).all() and (df['wall_s'] >= 0).all()
    row = df[(df['lamda'] == 5.0) & (df['seed'] == 1)].iloc[0]
    assert row['dev_NDCG@5'] == pytest.approx(0.001 * 10 + 0.05 + 0.001 + 0.005)
    assert row['test_HR@10'] == pytest.approx(0.01 + 0.05 + 0.001 + 0.010 + 0.001 + 0.0001)
    # each child got its own log file and checkpoint under its run id
    run_ids = {s.run_id for s in specs}
    for argv in calls():
        model_path, log_file = argv[argv.index('--model_path') + 1], argv[argv.index('--log_file') + 1]
        assert Path(model_path).parent.name in run_ids and Path(log_file).parent.name == Path(model_path).parent.name
    assert len({a[a.index('--model_path') + 1] for a in calls()}) == 4
    # threads split between the jobs, one GPU per job slot
    assert set(calls('omp')) == {str(run_pool.default_threads(2))}
    assert set(calls('cuda')) <= {'3', '5'} and len(set(calls('cuda'))) == 2


def test_contention_warning_only_on_a_busy_machine():
    assert run_pool.contention_warning(2, load=0.4, cores=4) is None
    warning = run_pool.contention_warning(2, load=3.0, cores=4)
    assert 'load average is 3.0 on 4 cores' in warning and 'OMP_NUM_THREADS' in warning


def test_resume_skips_finished_runs_and_retries_failed(tmp_path, fake_child):
    child, calls = fake_child
    out = tmp_path / 'results.csv'
    base = ['--model_name', 'SASRec', '--dataset', 'Office']
    first = ex.build_specs(None, base=base, grid=ex.parse_grid('lr=1e-3,1e-2'), n_seeds=2)
    run_quiet(first, out, child, tmp_path)
    assert len(calls()) == 4
    before = pd.read_csv(out)
    # mark one finished run as failed in the CSV, as an interrupted/crashed grid would leave it
    failed_id = first[1].run_id
    edited = before.copy()
    edited.loc[edited['run_id'] == failed_id, 'status'] = 'failed'
    edited.to_csv(out, index=False)
    # the grid grows by one lr value and one seed: 3 x 3 = 9 runs, 3 finished ok already
    grown = ex.build_specs(None, base=base, grid=ex.parse_grid('lr=0.001,1e-2,1e-4'), n_seeds=3)
    counts = run_quiet(grown, out, child, tmp_path)
    assert counts == {'ok': 6, 'failed': 0, 'skipped': 3}
    new_calls = calls()[4:]
    assert len(new_calls) == 6
    seeds_lrs = {(a[a.index('--random_seed') + 1], a[a.index('--lr') + 1]) for a in new_calls}
    assert ('1', '1e-3') in seeds_lrs or ('1', '0.001') in seeds_lrs  # the failed one was retried
    assert ('0', '0.001') not in seeds_lrs and ('0', '1e-2') not in seeds_lrs
    after = pd.read_csv(out)
    assert len(after) == 9 and after['run_id'].is_unique and set(after['status']) == {'ok'}
    # a third identical call runs nothing
    assert run_quiet(grown, out, child, tmp_path) == {'ok': 0, 'failed': 0, 'skipped': 9}
    assert len(calls()) == 10


def test_run_ends_with_what_to_do_about_unconverged_runs(tmp_path, fake_child, monkeypatch, capsys):
    child, _ = fake_child
    monkeypatch.setattr(run_pool, 'child_command', lambda: child)
    out = tmp_path / 'r.csv'
    assert exp.main(['run', '--base', '--model_name SASRec --dataset Office', '--grid', 'optimizer=Plateau,Budget,Adam',
                     '--n_seeds', '1', '--out', str(out), '--work_dir', str(tmp_path / 'work'),
                     '--log_dir', str(tmp_path / 'log'), '--model_dir', str(tmp_path / 'model')]) == 0
    text = capsys.readouterr().out
    plateau = rc.read_results(out).query('optimizer == "Plateau"')['run_id'].item()
    assert (f'1 run(s) early-stopped with their best dev epoch within the first --early_stop epochs ({plateau}): '
            in text)
    assert '1 run(s) stopped by --time_budget before early stopping' in text


def test_failures_are_recorded_and_the_grid_continues(tmp_path, fake_child):
    child, calls = fake_child
    out = tmp_path / 'results.csv'
    specs = ex.build_specs([['--model_name', 'NoSuchModel', '--dataset', 'Office'],
                            ['--model_name', 'SASRec', '--dataset', 'Office', '--optimizer', 'Crash'],
                            ['--model_name', 'SASRec', '--dataset', 'Office'],
                            ['--model_name', 'GRU4Rec', '--dataset', 'Office']])
    counts = run_quiet(specs, out, child, tmp_path, jobs=2)
    assert counts == {'ok': 2, 'failed': 2, 'skipped': 0}
    assert len(calls()) == 3  # the unknown model never starts a child
    df = pd.read_csv(out, keep_default_na=False)
    unknown = df[df['model'] == 'NoSuchModel'].iloc[0]
    assert unknown['status'] == 'failed' and 'NoSuchModel' in unknown['error']
    crash = df[(df['model'] == 'SASRec') & (df['optimizer'] == 'Crash')].iloc[0]
    assert crash['status'] == 'failed'
    assert crash['error'].splitlines()[-1] == 'ValueError: unknown optimizer Crash'
    assert 'Traceback' in crash['error'] and '\r' not in crash['error']
    assert crash['dev_NDCG@5'] == '' and crash['wall_s'] != ''
    assert set(df.loc[df['error'] == '', 'status']) == {'ok'} and len(df) == 4


def test_timeout_kills_and_records(tmp_path, fake_child):
    child, calls = fake_child
    specs = ex.build_specs([['--model_name', 'SASRec', '--optimizer', 'Sleep'], ['--model_name', 'SASRec']])
    counts = run_quiet(specs, tmp_path / 'r.csv', child, tmp_path, jobs=2, timeout=1.5)
    assert counts == {'ok': 1, 'failed': 1, 'skipped': 0}
    df = pd.read_csv(tmp_path / 'r.csv', keep_default_na=False)
    slow = df[df['optimizer'] == 'Sleep'].iloc[0]
    assert slow['status'] == 'failed' and slow['error'].startswith('timed out after 1.5 s') and slow['wall_s'] < 30


def test_progress_line_from_the_runners_epoch_lines():
    log = ('Namespace(...)\n'
           'Epoch 4     loss=0.58 [33.0 s, data 0.2 s]    dev=(NDCG@5:0.1000,HR@5:0.2000) [73.4 s] *\n'
           '            LRD q over 307,659 pairs: mean max 0.599\n'
           'Epoch 5     loss=0.52 [29.5 s, data 0.2 s]    dev=(NDCG@5:0.1200,HR@5:0.2100) [67.0 s] *\n'
           'Epoch 6     loss=0.50 [29.5 s, data 0.2 s]    dev=(NDCG@5:0.1100,HR@5:0.2300) [67.0 s]\n')
    # a resumed log starting at epoch 4: 3 epochs in 9 minutes
    assert epoch_progress(log, 540) == 'epoch 6 (3.0 min each), dev NDCG@5 0.1100, best 0.1200 at 5'
    assert epoch_progress(log.replace(' *', ''), 540) == 'epoch 6 (3.0 min each), dev NDCG@5 0.1100'
    assert epoch_progress('Namespace(...)\nLoad corpus\n', 30) == ''


def test_running_runs_report_progress(tmp_path, fake_child):
    child, _ = fake_child
    lines = []
    specs = ex.build_specs([['--model_name', 'SASRec', '--optimizer', 'Epochs']])
    counts = run_quiet(specs, tmp_path / 'r.csv', child, tmp_path, echo=lines.append, progress_s=0.5)
    assert counts['ok'] == 1
    progress = [line for line in lines if line.lstrip().startswith('running ')]
    assert progress and progress[-1].startswith(f'    running {specs[0].run_id}: ')
    assert progress[-1].endswith('min each), dev NDCG@5 0.2000, best 0.2500 at 1')
    quiet = []
    run_quiet(specs, tmp_path / 'q.csv', child, tmp_path, echo=quiet.append, progress_s=0)
    assert not [line for line in quiet if 'running ' in line]


@pytest.fixture
def tiny_outside_repo(tmp_path):
    """Tiny data outside the repository; real children cache its corpus under <repo>/cache/, removed afterwards."""
    name = 'TinyExpTest'
    folder = make_tiny_dataset(tmp_path / 'data', name=name, n_users=20, n_items=30, n_neg=10)
    yield name
    cache = Path(corpus_cache.cache_dir(str(folder), name))
    if REPO / 'cache' in cache.parents:
        shutil.rmtree(cache, ignore_errors=True)


def test_real_children_ok_and_crash(tmp_path, tiny_outside_repo, monkeypatch):
    """Two real main.py children at once: one trains an epoch, one crashes; both end up in the CSV."""
    monkeypatch.delenv('OMP_NUM_THREADS', raising=False)
    name = tiny_outside_repo
    commands = tmp_path / 'run.sh'
    common = f"--dataset {name} --path {tmp_path / 'data'} --epoch 1 --gpu '' --batch_size 64 --emb_size 8 --topk 5,10"
    commands.write_text(f'python src/main.py --model_name SASRec {common}\n'
                        f'python src/main.py --model_name SASRec {common} --optimizer NoSuchOptimizer\n')
    out = tmp_path / 'results.csv'
    code = exp.main(['run', '--commands', str(commands), '--jobs', '2', '--out', str(out),
                     *run_dirs(tmp_path)])
    assert code == 1  # some run failed
    df = pd.read_csv(out, keep_default_na=False)
    ok = df[df['status'] == 'ok'].iloc[0]
    failed = df[df['status'] == 'failed'].iloc[0]
    assert ok['optimizer'] == 'Adam' and failed['optimizer'] == 'NoSuchOptimizer'
    assert 'NoSuchOptimizer' in failed['error'].splitlines()[-1]
    assert 0 <= float(ok['test_NDCG@5']) <= 1 and int(ok['best_epoch']) == 1
    assert {'dev_HR@5', 'dev_NDCG@10', 'test_HR@10'} <= set(df.columns) and 'test_HR@20' not in df.columns
    assert Path(ok['model_path']).is_file() and Path(ok['log_file']).is_file()
    result = json.loads((tmp_path / 'results_runs' / f'{ok["run_id"]}.json').read_text())
    assert result['test']['NDCG@5'] == pytest.approx(float(ok['test_NDCG@5']))


def run_dirs(tmp_path: Path) -> list[str]:
    """exp.py's log and checkpoint folders inside the test's tmp folder."""
    return ['--log_dir', str(tmp_path / 'log'), '--model_dir', str(tmp_path / 'model')]


def train_seeds(out: Path, n_seeds: int, base: str) -> tuple[Path, pd.DataFrame]:
    """``exp.py run --base BASE --n_seeds N`` into ``out`` (logs and checkpoints next to it); its rows."""
    assert exp.main(['run', '--base', base, '--n_seeds', str(n_seeds), '--out', str(out), *run_dirs(out.parent)]) == 0
    return out, rc.read_results(out)


def test_resume_runs_continue_the_unfinished_runs_from_their_training_state(tmp_path, tiny_outside_repo,
                                                                           monkeypatch, capsys):
    """exp.py run --resume_runs: runs that did not stop early continue on their own checkpoint path; an
    early-stopped run and a run without a state file are left alone; reports keep the continued run."""
    monkeypatch.setenv('OMP_NUM_THREADS', '1')
    paths = run_dirs(tmp_path)
    first, df = train_seeds(tmp_path / 'first.csv', 3, f'--model_name SASRec --dataset {tiny_outside_repo} --path '
                            f"{tmp_path / 'data'} --epoch 3 --time_budget 0.001 --gpu '' --batch_size 64 --emb_size 8")
    assert (df['stop_reason'] == 'time_budget').all() and (df['epochs'] == 1).all()
    assert (f'3 run(s) stopped by --time_budget before early stopping, so their metrics are lower bounds; continue '
            f'them from their last epoch: python src/exp.py run --resume_runs {first} --out '
            f"{tmp_path / 'first_continued.csv'} --base '--time_budget SECONDS'") in capsys.readouterr().out
    df.loc[df['seed'] == 2, 'stop_reason'] = 'early_stop'  # converged: never continued
    rc.write_results(first, df.to_dict('records'))
    Path(train_state.state_path(df.loc[df['seed'] == 1, 'model_path'].iloc[0])).unlink()
    more = tmp_path / 'more.csv'
    assert exp.main(['run', '--resume_runs', str(first), '--base', '--time_budget 0', '--out', str(more)] + paths) == 0
    cont = rc.read_results(more)
    assert list(cont['seed']) == [0] and int(cont['epochs'][0]) == 3 and cont['stop_reason'][0] == 'max_epoch'
    assert int(cont['resume'][0]) == 1
    assert cont['model_path'][0] == df.loc[df['seed'] == 0, 'model_path'].iloc[0]
    # train_s counts the first process's epoch too; wall_s is the continuing child's own time
    assert cont['train_s'][0] > df.loc[df['seed'] == 0, 'train_s'].iloc[0] > 0
    assert 'continuing with epoch 2' in Path(cont['log_file'][0]).read_text()
    pooled = rc.pool_configs(rc.filter_rows(rc.read_many([first, more])))
    assert sorted(pooled['seed']) == [0, 1, 2] and int(pooled.loc[pooled['seed'] == 0, 'epochs'].iloc[0]) == 3
    assert exp.main(['run', '--resume_runs', str(first), '--checkpoints', str(first), '--out', str(more)]) == 2


def ok_row(argv: list[str], results: dict, **kw) -> dict:
    """The results row exp.py records for a finished run of main.py ``argv`` (model, Office, ``--random_seed``)."""
    config, values, run_name, _ = ex.normalise(argv)
    seed = int(argv[argv.index('--random_seed') + 1])
    spec = ex.RunSpec(argv, seed, config['model_name'], 'Office', config, values, '', run_name)
    return ex.result_row(spec, 'ok', results=results, **kw)


def stopped_runs(path: Path, model: str, cases: dict[int, tuple[str, int, list[str]]]) -> pd.DataFrame:
    """A results CSV of ``model`` on Office, one finished run per seed: ``seed → (stop_reason, best_epoch, extra
    arguments)``, every metric 0.3; its rows as read back."""
    rows = []
    for seed, (reason, best, extra) in cases.items():
        argv = ['--model_name', model, '--dataset', 'Office', '--random_seed', str(seed)] + extra
        results = {'dev': {m: 0.3 for m in METRICS}, 'test': {m: 0.3 for m in METRICS}, 'best_epoch': best,
                   'stop_reason': reason}
        rows.append(ok_row(argv, results))
    rc.write_results(path, rows)
    return rc.read_results(path)


def test_a_longer_patience_continues_only_the_runs_that_stopped_on_the_plateau(tmp_path):
    """--resume_runs with a larger --early_stop picks the early-stopped runs whose best epoch came within their
    patience (the start-up plateau), besides the budget-stopped ones; a converged run is never continued."""
    cases = {}
    for seed, (reason, best) in enumerate([('early_stop', 3), ('early_stop', 40), ('time_budget', 26)]):
        model_path = tmp_path / f's{seed}.pt'
        Path(train_state.state_path(str(model_path))).write_bytes(b'state')
        cases[seed] = (reason, best, ['--model_path', str(model_path)])
    df = stopped_runs(tmp_path / 'r.csv', 'SASRec', cases)

    def resumed(base: str) -> list[int]:
        specs, missing = ex.checkpoint_specs(df, base=shlex.split(base), resume=True)
        assert not missing
        return sorted(spec.seed for spec in specs)
    assert resumed('--time_budget 600') == [2]
    assert resumed('--early_stop 10') == [2]  # not longer than the patience it stopped with
    assert resumed('--early_stop 30') == [0, 2]
    assert resumed('--early_stop 0') == [0, 2]
    assert ex.converged_runs(df, ['--time_budget', '600']).empty
    assert ex.converged_runs(df, ['--early_stop', '10']).empty
    converged = ex.converged_runs(df, ['--early_stop', '30'])
    assert list(converged['seed']) == [1]
    command = shlex.split(ex.continue_command(converged.iloc[0], ['--early_stop', '30'], 'more.csv'))
    assert command[-6:] == ['--n_seeds', '1', '--seed0', '1', '--out', 'more.csv']
    assert shlex.split(command[command.index('--base') + 1]) == [
        '--model_name', 'SASRec', '--dataset', 'Office', '--early_stop', '30', '--resume', '1',
        '--model_path', str(tmp_path / 's1.pt')]


def test_last_wins_keeps_each_option_once_with_the_value_argparse_keeps():
    """A run continued twice carries each --time_budget it was given; the command built from it keeps only the last
    one, in the last one's place, and leaves negative values, flags and --key=value forms intact."""
    argv = ['--model_name', 'KDA', '--time_budget', '7800', '--gamma', '-1', '--time_budget', '1800',
            '--early_stop=10', '--resume', '1', '--early_stop', '30', '--time_budget', '8400', '--dry']
    assert ex.last_wins(argv) == ['--model_name', 'KDA', '--gamma', '-1', '--resume', '1', '--early_stop', '30',
                                  '--time_budget', '8400', '--dry']
    assert ex.last_wins([]) == []


def test_a_resumed_run_is_resumed_again_with_each_option_once(tmp_path):
    """Resuming a run whose own arguments already hold --time_budget and --resume gives one of each."""
    model_path = tmp_path / 's0.pt'
    Path(train_state.state_path(str(model_path))).write_bytes(b'state')
    extra = ['--time_budget', '7800', '--resume', '1', '--time_budget', '1800', '--model_path', str(model_path)]
    df = stopped_runs(tmp_path / 'r.csv', 'SASRec', {0: ('time_budget', 26, extra)})
    (spec,), missing = ex.checkpoint_specs(df, base=['--time_budget', '600'], resume=True)
    assert not missing
    assert spec.argv == ['--model_name', 'SASRec', '--dataset', 'Office', '--time_budget', '600', '--resume', '1',
                         '--model_path', str(model_path), '--random_seed', '0']


def test_resume_runs_names_the_converged_runs_a_longer_patience_leaves_alone(tmp_path, capsys):
    """A run that early-stopped after its patience is not continued, but the user who asked for a longer one learns
    which runs were left alone and the command that continues each anyway (a slow climber looks converged)."""
    model_path = tmp_path / 's0.pt'
    Path(train_state.state_path(str(model_path))).write_bytes(b'state')
    stopped_runs(tmp_path / 'r.csv', 'SASRec', {0: ('early_stop', 40, ['--model_path', str(model_path)])})
    assert exp.main(['run', '--resume_runs', str(tmp_path / 'r.csv'), '--base', '--early_stop 30',
                     '--out', str(tmp_path / 'more.csv')]) == 2
    err = capsys.readouterr().err
    assert '1 run(s) of ' in err and 'count as converged and are not continued (SASRec-Office-s0-' in err
    assert f"--seed0 0 --out {tmp_path / 'r_continued.csv'}" in err
    assert 'but those of the converged runs above' in err


def test_a_run_started_again_continues_its_earlier_attempt(tmp_path, tiny_outside_repo, monkeypatch):
    """A run exp.py did not record (grid interrupted, run timed out) left a training state on its checkpoint path;
    running the grid again continues it from its last epoch instead of starting over."""
    monkeypatch.setenv('OMP_NUM_THREADS', '1')
    name, data = tiny_outside_repo, tmp_path / 'data'
    base = f"--model_name SASRec --dataset {name} --path {data} --epoch 3 --gpu '' --batch_size 64 --emb_size 8"
    spec = ex.build_specs(None, base=shlex.split(base))[0]
    log_file, model_path = ex.run_paths(spec, tmp_path / 'log', tmp_path / 'model')
    run_pool.child_main([str(tmp_path / 'attempt.json'), *spec.argv, '--time_budget', '0.001', '--log_file',
                   str(tmp_path / 'attempt.txt'), '--model_path', str(model_path)])  # the attempt: one epoch
    for handler in logging.root.handlers[:]:  # main leaves its log file open on the root logger
        if isinstance(handler, logging.FileHandler):
            handler.close()
            logging.root.removeHandler(handler)
    out = tmp_path / 'grid.csv'
    assert exp.main(['run', '--base', base, '--out', str(out), *run_dirs(tmp_path)]) == 0
    row = rc.read_results(out).iloc[0]
    assert row['run_id'] == spec.run_id and int(row['epochs']) == 3 and row['argv'].endswith('--resume 1')
    assert 'after epoch 1 (best dev epoch 1, stopped by time_budget); continuing with epoch 2' in log_file.read_text()


def test_checkpoints_are_evaluated_again_with_text_fusion(tmp_path, tiny_outside_repo, monkeypatch):
    """exp.py run --checkpoints: each trained KDA is loaded into KDA_LRD --include_lrd 0 --text_fusion 1 and
    evaluated (β fitted on dev) without training or overwriting it; the report pairs KDA+TF with KDA."""
    monkeypatch.setenv('OMP_NUM_THREADS', '1')
    name, data = tiny_outside_repo, tmp_path / 'data'
    n_items = int(pd.read_csv(data / name / 'item_meta.csv', sep='\t')['item_id'].max())
    np.savetxt(data / name / f'{name}.feat.tiny', np.random.default_rng(0).normal(size=(n_items, 6)))
    paths = run_dirs(tmp_path)
    trained, kda = train_seeds(tmp_path / 'kda.csv', 2, f"--model_name KDA --dataset {name} --path {data} --epoch 1 "
                               "--gpu '' --batch_size 64 --emb_size 8 --num_heads 2 --num_layers 1 --topk 5,10")
    before = {p: Path(p).read_bytes() for p in kda['model_path']}
    fused = tmp_path / 'tf.csv'
    argv = ['run', '--checkpoints', str(trained), '--base', '--model_name KDA_LRD --include_lrd 0 --text_fusion 1 '
            '--plm_name feat:tiny', '--out', str(fused)] + paths
    assert exp.main(argv) == 0
    tf = rc.read_results(fused)
    assert list(tf['model']) == ['KDA_LRD', 'KDA_LRD'] and sorted(tf['seed']) == [0, 1]
    assert (tf['text_fusion'] == 1).all() and (tf['train'] == 0).all() and (tf['epochs'] == 0).all()
    assert sorted(tf['model_path']) == sorted(before)  # loaded from the trained checkpoints ...
    assert not any('--resume' in argv for argv in tf['argv'])  # (their training states are not for evaluations)
    assert all(Path(p).read_bytes() == b for p, b in before.items())  # ... and left as they were
    for log in tf['log_file']:
        assert 'Text fusion: beta ' in Path(log).read_text()
    md = tmp_path / 't.md'
    assert exp.main(['report', '--csv', str(trained), str(fused), '--out', str(md)]) == 0
    assert '| Improv. vs KDA |' in md.read_text() and '| KDA+TF |' in md.read_text()
    (tmp_path / 'x.txt').write_text('--lr 1e-2\n')
    assert exp.main(argv[:3] + ['--commands', str(tmp_path / 'x.txt')] + argv[3:]) == 2
    Path(kda['model_path'][0]).unlink()
    specs, missing = ex.checkpoint_specs(kda)
    assert missing == [kda['run_id'][0]] and [s.seed for s in specs] == [1]
    assert specs[0].argv[-8:] == ['--load', '1', '--train', '0', '--model_path', kda['model_path'][1],
                                  '--random_seed', '1']
    assert '--log_file' not in specs[0].argv and specs[0].argv.count('--model_path') == 1


# --------------------------------------------------------------------------- selection and reports

def synthetic_results(path: Path) -> pd.DataFrame:
    """KDA and KDA_LRD, two configs each, three seeds; the dev-best config is not the test-best one."""
    rows = []
    rng = np.random.default_rng(0)
    for model in ('KDA', 'KDA_LRD', 'SASRec'):
        for lr in (1e-3, 1e-4):
            for seed in (0, 1, 2):
                argv = ['--model_name', model, '--dataset', 'Office', '--lr', str(lr), '--random_seed', str(seed)]
                good = lr == 1e-3
                base = {'KDA': 0.31, 'KDA_LRD': 0.34, 'SASRec': 0.27}[model]
                dev = base + (0.01 if good else 0) + seed * 0.001
                test = base + (0.0 if good else 0.02) + rng.normal(0, 0.002)
                results = {'dev': {m: dev for m in METRICS}, 'test': {m: test + 0.1 * METRICS.index(m) / 10
                                                                       for m in METRICS}, 'best_epoch': 5}
                rows.append(ok_row(argv, results, wall_s=1.0))
    # an ablation variant that would win on dev, and a failed run: neither may be selected
    argv = ['--model_name', 'KDA_LRD', '--dataset', 'Office', '--include_kge', '0', '--random_seed', '0']
    rows.append(ok_row(argv, {'dev': {m: 0.9 for m in METRICS}, 'test': {m: 0.9 for m in METRICS}}))
    argv = ['--model_name', 'KDA_LRD', '--dataset', 'Office', '--lamda', '0', '--random_seed', '0']  # w/o LRD loss
    rows.append(ok_row(argv, {'dev': {m: 0.85 for m in METRICS}, 'test': {m: 0.85 for m in METRICS}}))
    spec = ex.RunSpec(['--model_name', 'KDA', '--lr', '0.1'], 5, 'KDA', 'Office',
                      {'model_name': 'KDA', 'dataset': 'Office', 'lr': 0.1}, {}, 'boom', '')
    rows.append(ex.result_row(spec, 'failed', error='boom'))
    rc.write_results(path, rows)
    return rc.read_results(path)


def test_select_uses_mean_dev_metric_never_test(tmp_path, capsys):
    df = synthetic_results(tmp_path / 'r.csv')
    best = rc.select_best(rc.filter_rows(df), 'dev_NDCG@5')
    assert sorted(best['model']) == ['KDA', 'KDA_LRD', 'SASRec']
    assert all(json.loads(c)['model_name'] in ('KDA', 'KDA_LRD', 'SASRec') and 'lr' not in json.loads(c)
               for c in best['config'])  # lr 1e-3 (default) wins on dev although 1e-4 wins on test
    row = best[best['model'] == 'KDA'].iloc[0]
    assert row['n_seeds'] == 3 and row['dev_NDCG@5_mean'] == pytest.approx(0.32 + 0.001)
    with pytest.raises(ValueError, match='dev metric'):
        rc.select_best(df, 'test_NDCG@5')
    # variants are excluded unless asked for
    with_variants = rc.select_best(rc.filter_rows(df, keep_variants=True), 'dev_NDCG@5')
    assert json.loads(with_variants[with_variants['model'] == 'KDA_LRD']['config'].iloc[0])['include_kge'] == 0
    asked = rc.select_best(rc.filter_rows(df, where=['lamda=0']), 'dev_NDCG@5')  # asking for an ablation keeps it
    assert json.loads(asked[asked['model'] == 'KDA_LRD']['config'].iloc[0])['lamda'] == 0
    assert asked[asked['model'] == 'KDA_LRD']['dev_NDCG@5_mean'].iloc[0] == pytest.approx(0.85)
    assert rc.select_best(rc.filter_rows(df), 'dev_NDCG@5', min_seeds=4).empty
    assert exp.main(['select', '--csv', str(tmp_path / 'r.csv'), '--commands_out', str(tmp_path / 'best.sh')]) == 0
    lines = ex.read_command_file(tmp_path / 'best.sh')
    assert [line[1] for line in lines] == ['SASRec', 'KDA', 'KDA_LRD']  # the paper's order
    assert lines[1] == ['--model_name', 'KDA', '--dataset', 'Office']
    assert exp.main(['select', '--csv', str(tmp_path / 'r.csv'), '--by', 'test_NDCG@5']) == 2


def test_report_table(tmp_path):
    df = synthetic_results(tmp_path / 'r.csv')
    md, tex = tmp_path / 'table.md', tmp_path / 'table.tex'
    assert exp.main(['report', '--csv', str(tmp_path / 'r.csv'), '--out', str(md), '--latex', str(tex)]) == 0
    text = md.read_text()
    lines = text.splitlines()
    rows = [line for line in lines if line.startswith('| ')]
    names = [line.split('|')[1].strip() for line in rows]
    assert names[1:5] == ['SASRec', 'KDA', 'KDA_LRD', 'Improv. vs KDA']  # paper order, Improv. under X_LRD
    ok = df[(df['status'] == 'ok') & df['include_kge'].isin([1.0]) & df['lr'].eq(0.001) & df['lamda'].ne(0)]
    kda = ok[ok['model'] == 'KDA'].set_index('seed')['test_NDCG@5']
    lrd = ok[ok['model'] == 'KDA_LRD'].set_index('seed')['test_NDCG@5']
    cells = rows[3].split('|')
    assert f'{lrd.mean():.4f} ± {lrd.std(ddof=1):.4f}' in cells[4]  # NDCG@5 is the third metric column
    ref = stats.ttest_rel(lrd.sort_index(), kda.sort_index())
    improv = rows[4].split('|')[4]
    assert f'{(lrd.mean() - kda.mean()) / kda.mean():+.2%}' in improv
    mark = '‡' if ref.pvalue <= 0.01 else '†' if ref.pvalue <= 0.05 else ''
    assert mark and improv.strip().endswith(mark) and cells[4].strip().endswith(mark)
    assert '**' in cells[4]  # the best NDCG@5
    assert '0.9000' not in text and '0.8500' not in text  # the ablation variants are not in the table
    assert r'KDA$_{\mathrm{LRD}}$' in tex.read_text() and r'\textbf' in tex.read_text()
    assert 'Seeds for 80 % power' not in text  # every comparison is significant


def test_report_says_how_many_seeds_a_non_significant_gain_needs(tmp_path):
    """The five Office seeds of KDA and KDA_LRD (test HR@5, NDCG@5): +3.05 % HR@5 at p = .14; at that mean difference
    and spread a paired test needs 14 seeds (NDCG@5: 19) for 80 % power, which the report says under the table."""
    hr = {'KDA': [.4601, .4287, .4308, .4279, .4583], 'KDA_LRD': [.4636, .4381, .4393, .4701, .4620]}
    ndcg = {'KDA': [.3189, .3000, .2981, .2962, .3151], 'KDA_LRD': [.3191, .3025, .3016, .3205, .3183]}
    rows = []
    for model in hr:
        for seed in range(5):
            argv = ['--model_name', model, '--dataset', 'Office', '--random_seed', str(seed)]
            test = {'HR@5': hr[model][seed], 'NDCG@5': ndcg[model][seed]}
            rows.append(ok_row(argv, {'dev': dict(test), 'test': test, 'best_epoch': 9}))
    rc.write_results(tmp_path / 'r.csv', rows)
    md = tmp_path / 't.md'
    assert exp.main(['report', '--csv', str(tmp_path / 'r.csv'), '--out', str(md),
                     '--metrics', 'HR@5,NDCG@5']) == 0
    text = md.read_text()
    assert '+3.05% (p=0.138)' in text
    assert 'Seeds for 80 % power' in text and 'KDA_LRD vs KDA: HR@5 14, NDCG@5 19.' in text


def test_partial_lets_a_model_short_of_seeds_in_at_its_most_seeded_configuration(tmp_path):
    """--min_seeds 5: RCF (three seeds at lr 1e-4, and one-seed grid points that look better on dev) is left out and
    named under the table; with --partial 1 it enters at its three-seed configuration, never at a grid point, and the
    five-seed model keeps its five-seed configuration."""
    plan = [('KDA', [], seed, 0.30) for seed in range(5)] + [('KDA', ['--lr', '0.01'], 0, 0.50)]
    plan += [('RCF', ['--lr', '1e-4'], seed, 0.20) for seed in range(3)]
    plan += [('RCF', ['--lr', lr], 0, 0.40) for lr in ('1e-2', '1e-3')]
    rows = []
    for model, extra, seed, dev in plan:
        argv = ['--model_name', model, '--dataset', 'Office', '--random_seed', str(seed)] + extra
        rows.append(ok_row(argv, {'dev': {'NDCG@5': dev}, 'test': {'NDCG@5': dev}, 'best_epoch': 9}))
    rc.write_results(tmp_path / 'r.csv', rows)
    df = rc.filter_rows(rc.read_results(tmp_path / 'r.csv'))
    assert list(rc.select_best(df, min_seeds=5)['model']) == ['KDA']
    best = rc.select_best(df, min_seeds=5, partial=True).set_index('model')
    assert dict(best['n_seeds']) == {'KDA': 5, 'RCF': 3} and best.loc['RCF', 'dev_NDCG@5_mean'] == pytest.approx(0.2)
    md = tmp_path / 't.md'
    report = ['report', '--csv', str(tmp_path / 'r.csv'), '--out', str(md), '--metrics', 'NDCG@5', '--min_seeds', '5']
    assert exp.main(report) == 0
    assert 'Not in the table, no configuration with 5 finished seeds (`--partial 1` shows them): RCF on Office ' \
           '(3 at most).' in md.read_text() and '| RCF |' not in md.read_text()
    assert exp.main(report + ['--partial', '1']) == 0
    assert '| RCF | 0.2000 ± 0.0000 | 3 |' in md.read_text()
    assert 'With fewer than 5 seeds (`--partial 1`): RCF on Office (3).' in md.read_text()


def test_report_sums_the_wall_time_of_the_runs_in_the_table(tmp_path):
    """The compute behind a table: the selected runs' wall time (not the grid's losing configurations), naming the
    rows that hold only part of it: a continued run's last leg, an evaluation of a saved model."""
    plan = [([], 0, 3600.0), (['--resume', '1'], 1, 1800.0), (['--train', '0', '--load', '1'], 2, 36.0),
            (['--lr', '0.5'], 0, 7200.0)]
    rows = []
    for extra, seed, wall in plan:
        argv = ['--model_name', 'KDA', '--dataset', 'Office', '--random_seed', str(seed)] + extra
        dev = 0.1 if '--lr' in extra else 0.3
        rows.append(ok_row(argv, {'dev': {'NDCG@5': dev}, 'test': {'NDCG@5': dev}, 'best_epoch': 9}, wall_s=wall))
    rc.write_results(tmp_path / 'r.csv', rows)
    md = tmp_path / 't.md'
    assert exp.main(['report', '--csv', str(tmp_path / 'r.csv'), '--out', str(md), '--metrics', 'NDCG@5',
                     '--pool', 'resume,train,load']) == 0
    assert 'Wall time: 1.5 h summed over the 3 runs in the table; the rows continued with `--resume 1` (1) count ' \
           'only their last leg; the rows that evaluate a saved model with `--train 0` (1) count only that ' \
           'evaluation.' in md.read_text()


def test_report_marks_seeds_stopped_by_budget_or_on_the_plateau(tmp_path):
    """A budget-stopped run is a lower bound and an early stop with the best epoch within --early_stop is probably
    the start-up plateau: the table says which seeds, instead of averaging them in silently."""
    df = stopped_runs(tmp_path / 'r.csv', 'KDA', {
        0: ('early_stop', 40, []), 1: ('time_budget', 26, []), 2: ('early_stop', 3, []),
        3: ('max_epoch', 3, ['--early_stop', '0']), 4: ('early_stop', 12, ['--early_stop', '12'])})
    assert list(rc.stop_caveats(df)) == ['', 'budget', 'plateau', '', 'plateau']
    md = tmp_path / 'table.md'
    assert exp.main(['report', '--csv', str(tmp_path / 'r.csv'), '--out', str(md), '--pool', 'early_stop']) == 0
    text = md.read_text()
    kda = next(line for line in text.splitlines() if line.startswith('| KDA |'))
    assert kda.endswith('| 5 (budget: seed 1; plateau: seeds 2, 4) |')
    assert f'*budget*: {rc.CAVEATS["budget"]}; *plateau*: {rc.CAVEATS["plateau"]}.' in text


def test_report_marks_a_seed_far_below_the_others_on_dev(tmp_path):
    """A run can early-stop long after its patience and still sit at half the others' level (a poor solution, not
    the plateau): the table names that seed, judged on dev against the median of the configuration's other seeds."""
    assert list(rc.outlier_seeds(pd.Series([0.3, 0.3, 0.239]))) == [False, False, True]
    assert list(rc.outlier_seeds(pd.Series([0.3, 0.3, 0.241]))) == [False, False, False]
    assert not rc.outlier_seeds(pd.Series([0.3, 0.1])).any()  # two runs: which one is off is unknowable
    rows = []
    for seed, dev in enumerate([0.36, 0.35, 0.37, 0.20]):
        argv = ['--model_name', 'KDA', '--dataset', 'Office', '--random_seed', str(seed)]
        rows.append(ok_row(argv, {'dev': {m: dev for m in METRICS}, 'test': {m: dev for m in METRICS},
                                  'best_epoch': 40, 'stop_reason': 'early_stop'}))
    rc.write_results(tmp_path / 'r.csv', rows)
    md = tmp_path / 'table.md'
    assert exp.main(['report', '--csv', str(tmp_path / 'r.csv'), '--out', str(md)]) == 0
    text = md.read_text()
    assert next(line for line in text.splitlines() if line.startswith('| KDA |')).endswith('| 4 (outlier: seed 3) |')
    assert f'*outlier*: {rc.CAVEATS["outlier"]}.' in text


def fusion_results(tmp_path: Path) -> list[Path]:
    """Two CSVs: KDA seeds run with different budgets (seed 1 twice), then KDA_LRD --include_lrd 0
    --text_fusion 1 evaluated from those checkpoints, and a KDA_LRD with LRD and fusion on."""
    def row(argv, seed, test, finished):
        out = ok_row(argv + ['--random_seed', str(seed)], {'dev': {m: test for m in METRICS},
                                                             'test': {m: test for m in METRICS}})
        out['finished_at'] = finished
        return out
    kda = ['--model_name', 'KDA', '--dataset', 'Office']
    tf = ['--model_name', 'KDA_LRD', '--dataset', 'Office', '--include_lrd', '0', '--text_fusion', '1',
          '--load', '1', '--train', '0']
    first = [row(kda + ['--time_budget', '100'], 0, 0.30, '2026-01-01 10:00:00'),
             row(kda + ['--time_budget', '200'], 1, 0.20, '2026-01-01 11:00:00'),
             row(kda + ['--time_budget', '200'], 2, 0.32, '2026-01-01 11:00:00')]
    second = [row(kda, 1, 0.31, '2026-01-02 10:00:00'),  # seed 1 again, to convergence: supersedes 0.20
              row(tf, 0, 0.33, '2026-01-02 11:00:00'), row(tf, 1, 0.35, '2026-01-02 11:00:00'),
              row(tf, 2, 0.34, '2026-01-02 11:00:00'),
              row(['--model_name', 'KDA_LRD', '--dataset', 'Office', '--text_fusion', '1'], 0, 0.36,
                  '2026-01-02 12:00:00')]
    paths = [tmp_path / 'a.csv', tmp_path / 'b.csv']
    rc.write_results(paths[0], first)
    rc.write_results(paths[1], second)
    return paths


def test_report_pools_budgets_and_names_text_fusion(tmp_path):
    paths = fusion_results(tmp_path)
    rows = rc.filter_rows(rc.read_many(paths))
    assert sorted(set(rows['model'])) == ['KDA', 'KDA+TF', 'KDA_LRD+TF']  # fusion without LRD is not an ablation
    assert reports.model_order(['KDA_LRD+TF', 'KDA+TI+TF', 'KDA+TF', 'KDA_LRD', 'SASRec', 'KDA', 'KDA+TI']) == [
        'SASRec', 'KDA', 'KDA_LRD', 'KDA+TF', 'KDA_LRD+TF', 'KDA+TI', 'KDA+TI+TF']
    assert reports.backbone_of('KDA_LRD+TI+TF') == 'KDA'
    assert reports._latex_model('KDA_LRD+TF') == r'KDA$_{\mathrm{LRD}}$+TF'
    both = rc.label_text_variants(pd.DataFrame({'model': ['KDA_LRD', 'KDA_LRD', 'KDA'], 'include_lrd': [0, 1, np.nan],
                                                'text_init': [1, 1, np.nan], 'text_fusion': [1, 0, np.nan]}))
    assert list(both['model']) == ['KDA+TI+TF', 'KDA_LRD+TI', 'KDA']
    md = tmp_path / 't.md'
    assert exp.main(['report', '--csv', *map(str, paths), '--out', str(md), '--metrics', 'NDCG@5']) == 0
    lines = [line.split('|') for line in md.read_text().splitlines() if line.startswith('| ')]
    table = [(cells[1].strip(), cells[2].strip()) for cells in lines[1:7]]
    assert [name for name, _ in table] == ['KDA', 'KDA+TF', 'Improv. vs KDA', 'KDA_LRD+TF', 'Improv. vs KDA',
                                           'Dataset']  # then the table of selected configurations
    assert table[0][1].startswith(f'{np.mean([0.30, 0.31, 0.32]):.4f} ± 0.0100')  # 3 seeds, one config
    assert table[1][1].startswith('0.3400 ± 0.0100')
    ref = stats.ttest_rel([0.33, 0.35, 0.34], [0.30, 0.31, 0.32])
    assert table[2][1] == f'+9.68% (p={ref.pvalue:.3f})†'
    assert table[3][1].startswith('**0.3600 ± 0.0000**')  # the best mean and table[4][1].endswith('(p=n/a)')
    # without pooling, each budget is a configuration of its own: the best by dev is the unbudgeted seed 1 alone
    assert exp.main(['report', '--csv', *map(str, paths), '--out', str(md), '--metrics', 'NDCG@5',
                     '--pool', '', '--models', 'KDA']) == 0
    assert '| Office | KDA | 1 | 0.3100 | (defaults) |' in md.read_text()


DOCS_REPORTS = [shlex.split(command.replace('\\\n', ' ')) for command in
                re.findall(r'python src/exp.py (report --csv docs/runs/[^`]*?)\n```',
                           (REPO / 'docs' / 'experiments.md').read_text(), re.S)]


def report_out(argv: list[str]) -> str:
    return argv[argv.index('--out') + 1]


def test_every_results_table_in_docs_has_its_report_command():
    """The committed report tables are the ones docs/experiments.md gives commands for (none missed, none stale)."""
    outs = sorted(report_out(argv) for argv in DOCS_REPORTS)
    assert outs == sorted(f'docs/{p.name}' for p in (REPO / 'docs').glob('results_*.md'))


@pytest.mark.parametrize('argv', DOCS_REPORTS, ids=lambda argv: Path(report_out(argv)).name)
def test_results_table_in_docs_is_what_its_command_writes(argv, tmp_path, monkeypatch):
    """Each docs/results_*.md table is regenerated by the command docs/experiments.md gives, from docs/runs/."""
    argv = list(argv)
    out = argv.index('--out') + 1
    expected = REPO / argv[out]
    argv[out] = str(tmp_path / 'table.md')
    monkeypatch.chdir(REPO)
    assert exp.main(argv) == 0
    assert (tmp_path / 'table.md').read_text() == expected.read_text()


def test_from_python_example_in_docs_calls_functions_that_exist():
    """docs/experiments.md's *From Python* example calls only what its imported modules define (it once called
    filter_rows on the wrong module)."""
    text = (REPO / 'docs' / 'experiments.md').read_text()
    code = text.split('## From Python', 1)[1].split('```python\n', 1)[1].split('```', 1)[0]
    namespace: dict = {}
    exec(code.splitlines()[0], namespace)  # its import line
    calls = re.findall(r'\b(\w+)\.(\w+)\(', code)
    assert len(calls) >= 6
    for module, name in calls:
        assert hasattr(namespace[module], name), f'{module}.{name}'


# --------------------------------------------------------------------------- arguments reference

def test_arguments_reference_is_generated_and_current():
    text = arg_docs.render()
    for model in ('Caser', 'GRU4Rec', 'SASRec', 'TiSASRec', 'RCF', 'RCF_LRD', 'KDA', 'KDA_LRD'):
        assert f'## Model {model}' in text
    for arg in ('--lamda', '--latent_relation_num', '--include_kge', '--lrd_feature', '--plm_name', '--lr',
                '--history_max', '--n_seeds', '--baseline_path'):
        assert f'`{arg}`' in text
    current = (REPO / 'docs' / 'arguments.md').read_text()
    assert current == text, 'docs/arguments.md is stale: regenerate it with python src/exp.py arg-docs'


def _protocol_args(model: str) -> dict[str, str]:
    """The ``--name value`` pairs a model's docstring gives as its paper protocol."""
    module = __import__(f'models.sequential.{model}', fromlist=[model])
    text = module.__doc__.split('protocol', 1)[1].split(':', 1)[1]
    text = re.split(r'\(|;|, i\.e\.|\n\n', text)[0]
    return {name: value.rstrip('.') for name, value in re.findall(r'--(\w+) (\S+)', text)}


def test_table3_commands_in_docs_match_the_model_docstrings():
    """docs/experiments.md's Table-3 command files use each model's documented protocol settings."""
    doc = (REPO / 'docs' / 'experiments.md').read_text()
    lines = re.findall(r'^python src/main\.py (--model_name .*)$', doc, flags=re.M)
    commands = {}
    for line in lines:
        args = dict(re.findall(r'--(\w+) (\S+)', line))
        commands[args.pop('model_name')] = args
    assert set(commands) == {'Caser', 'GRU4Rec', 'SASRec', 'TiSASRec', 'RCF', 'KDA', 'RCF_LRD', 'KDA_LRD'}
    for model, args in commands.items():
        assert args.pop('dataset') == 'Office'
        backbone = model.removesuffix('_LRD')
        expected = _protocol_args(backbone)
        if model != backbone:
            expected['alpha'] = '0.1'
        assert args == expected, f'{model}: docs/experiments.md {args} != docstring {expected}'


def test_paper_args_are_the_docstring_protocol():
    from utils.registry import find_model
    for model in ('Caser', 'GRU4Rec', 'SASRec', 'TiSASRec', 'RCF', 'KDA'):
        assert dict(re.findall(r'--(\w+) (\S+)', find_model(model).paper_args)) == _protocol_args(model), model
    assert find_model('KDA_LRD').paper_args == find_model('KDA').paper_args
    assert find_model('RCF_LRD').paper_args == find_model('RCF').paper_args


def test_table3_runs_the_protocols_and_writes_a_section(tmp_path, fake_child):
    from utils import table3
    child, calls = fake_child
    page = tmp_path / 'results.md'
    page.write_text('# Results\n\nIntro kept.\n')
    out = tmp_path / 'table3.csv'
    kw = dict(child_cmd=child, work_dir=tmp_path / 'work', log_dir=tmp_path / 'log', model_dir=tmp_path / 'model',
              echo=lambda *a: None, poll_s=0.02)
    counts = table3.run_table3('Office', out, page, models=['SASRec', 'KDA', 'KDA_LRD'], n_seeds=2,
                               base=['--path', 'data'], command='exp.py table3 --dataset Office', **kw)
    assert counts == {'ok': 6, 'failed': 0, 'skipped': 0}
    argv = [a for a in calls() if a[a.index('--model_name') + 1] == 'KDA' and a[a.index('--random_seed') + 1] == '1']
    assert len(argv) == 1 and argv[0][argv[0].index('--num_layers') + 1] == '5' and '--path' in argv[0]
    text = page.read_text()
    assert text.startswith('# Results\n\nIntro kept.\n')
    section = text.split('<!-- table3 Office begin -->')[1].split('<!-- table3 Office end -->')[0]
    assert '## Table 3 on Office' in section and '### Overall performance' in section and '#### Office' in section
    assert 'python src/main.py --model_name KDA_LRD --dataset Office --emb_size 64 --include_attr 1' in section
    assert 'Runs: 6 (3 models × seeds 0..1); 6 finished, 0 failed' in section and 'Wall time:' in section
    for row in ('| SASRec |', '| KDA |', '| KDA_LRD |', '| Improv. vs KDA |'):
        assert row in section
    # a second call resumes (nothing reruns) and replaces the section; a failing dataset gets its own section
    assert table3.run_table3('Office', out, page, models=['SASRec', 'KDA', 'KDA_LRD'], n_seeds=2,
                             base=['--path', 'data'], **kw)['skipped'] == 6
    table3.run_table3('ML', out, page, models=['SASRec'], n_seeds=1, base=['--optimizer', 'Crash'], **kw)
    text = page.read_text()
    assert text.count('<!-- table3 Office begin -->') == 1 and text.count('Intro kept.') == 1
    ml = text.split('<!-- table3 ML begin -->')[1]
    assert 'Not in the table (fewer than 1 finished seeds): SASRec.' in ml
    assert 'ValueError: unknown optimizer Crash' in ml


def test_table3_refuses_a_model_without_protocol():
    from utils import table3
    with pytest.raises(ValueError, match='BPRMF has no paper_args'):
        table3.protocol_commands('Office', ['SASRec', 'BPRMF'])
