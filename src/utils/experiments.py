"""Experiment grids the ReChorus way: command files, ``key=v1,v2`` grids, seeds, resumable runs, one tidy CSV.

Used by ``src/exp.py`` (see ``docs/experiments.md``). The pieces:

- :func:`read_command_file` / :func:`parse_command_line`: ReChorus ``run.sh``-style lines
  (``python src/main.py --model_name SASRec ...`` or a bare argument list; ``#`` comments,
  ``\\`` continuations).
- :func:`parse_grid` / :func:`expand_grid`: ``'lr=1e-3,1e-4 lamda=0.1,1'`` → the Cartesian product.
- :func:`build_specs`: base args < command-file line < grid point, times ``n_seeds`` seeds, each
  normalised (:func:`normalise`) into a run key: the arguments that differ from the model's parser
  defaults (after type conversion, so ``--lr 0.001`` = ``--lr 1e-3`` = nothing), minus arguments that
  cannot change results (paths of logs, devices, workers ...), plus the seed.
- :func:`run_specs`: runs what the CSV does not already hold with status ``ok``, sequentially or
  ``jobs`` at a time, each as a child process (:data:`CHILD_CODE` → :func:`child_main`, which calls
  ``main.main(argv)`` and writes its returned dict as JSON), so a crash only fails that run.
- :func:`checkpoint_specs`: finished runs evaluated again from their checkpoints (``exp.py run --checkpoints``).

The CSV itself (columns, reading, selection) lives in :mod:`utils.results_csv`.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import itertools
import json
import math
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from utils import train_state
from utils.atomic_write import atomic_write
from utils.results_csv import patience_of, read_results, stop_caveats, write_results
from utils.run_progress import epoch_progress
from utils.runtime import REPO_DIR, SRC_DIR

# Arguments that never change a run's numbers: left out of the run key (they still get CSV columns).
IGNORED_IN_KEY = frozenset({
    'gpu', 'verbose', 'log_file', 'model_path', 'num_workers', 'pin_memory', 'eval_batch_size',
    'save_final_results', 'regenerate', 'buffer', 'plm_device', 'plm_batch_size', 'check_epoch',
    'test_epoch', 'random_seed', 'ddp_backend', 'ddp_timeout'})
# Always part of the key, even at their default value.
ALWAYS_IN_KEY = ('model_name', 'dataset')
# Argument columns that duplicate a fixed column.
RENAMED_ARGS = {'model_name': 'model', 'dataset': 'dataset', 'random_seed': 'seed'}
ERROR_LINES = 15
ERROR_CHARS = 2000

# The child process: ``python -c CHILD_CODE <result.json> <main.py arguments...>``.
CHILD_CODE = ('import sys; sys.path.insert(0, {src!r}); from utils.experiments import child_main; '
              'sys.exit(child_main(sys.argv[1:]))').format(src=str(SRC_DIR))


def child_command() -> list[str]:
    """Command prefix of a child run; the result path and the main.py arguments follow."""
    return [sys.executable, '-c', CHILD_CODE]


def child_main(argv: list[str]) -> int:
    """Child entry point: ``argv = [result_json, *main_argv]``. Runs ``main.main`` and writes its dict as JSON."""
    result_path, main_argv = argv[0], argv[1:]
    import main  # noqa: WPS433 (imported here: the parent never needs torch for this)
    sys.argv = ['main.py', *main_argv]  # main logs ' '.join(sys.argv) as the command line
    results = main.main(main_argv)
    atomic_write(result_path, lambda f: f.write(json.dumps(_jsonable(results), indent=1).encode()))
    return 0


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    return obj


# --------------------------------------------------------------------------- command files and grids

class SpecError(ValueError):
    """A command file, grid or argument list that cannot be understood."""


def parse_command_line(line: str, where: str = '') -> list[str] | None:
    """One run.sh line → main.py arguments; None for blank lines and comments.

    Accepts ``python src/main.py ARGS``, ``python3 main.py ARGS``, ``ENV=1 python main.py ARGS``, ``main.py ARGS``
    or bare ``ARGS`` (starting with ``--``); a trailing ``&`` (background job in run.sh) is dropped.
    """
    try:
        tokens = shlex.split(line, comments=True)
    except ValueError as e:
        raise SpecError(f'{where}cannot parse {line!r}: {e}') from e
    if not tokens:
        return None
    while tokens and re.fullmatch(r'[A-Za-z_][A-Za-z0-9_]*=.*', tokens[0]):
        tokens = tokens[1:]  # environment assignments: the runner sets the child's environment itself
    if tokens and os.path.basename(tokens[0]).startswith('python'):
        tokens = tokens[1:]
        while tokens and tokens[0].startswith('-') and not tokens[0].startswith('--'):
            tokens = tokens[1:]  # interpreter flags such as -u
    if tokens and tokens[0].endswith('main.py'):
        tokens = tokens[1:]
    if tokens and tokens[-1] == '&':
        tokens = tokens[:-1]
    if tokens and not tokens[0].startswith('-'):
        raise SpecError(f'{where}expected "python src/main.py --arg value ..." or "--arg value ...", got {line!r}')
    return tokens


def read_command_file(path: str | os.PathLike) -> list[list[str]]:
    """Every run of a ReChorus-style command file (``#`` comments, ``\\`` line continuations)."""
    commands, pending, start = [], '', 0
    with open(path) as f:
        for number, raw in enumerate(f, start=1):
            line = raw.rstrip('\n').rstrip('\r')
            if not pending:
                start = number
            if line.rstrip().endswith('\\') and not line.lstrip().startswith('#'):
                pending += line.rstrip()[:-1] + ' '
                continue
            tokens = parse_command_line(pending + line, where=f'{path} line {start}: ')
            pending = ''
            if tokens is not None:
                commands.append(tokens)
    if pending.strip():
        tokens = parse_command_line(pending, where=f'{path} line {start}: ')
        if tokens is not None:
            commands.append(tokens)
    return commands


def parse_grid(specs: str | list[str] | None) -> list[tuple[str, list[str]]]:
    """``'lr=1e-3,1e-4 lamda=0.1,1'`` (or several such strings) → ``[('lr', ['1e-3', '1e-4']), ...]``."""
    if not specs:
        return []
    if isinstance(specs, str):
        specs = [specs]
    grid, seen = [], set()
    for spec in specs:
        for token in shlex.split(spec):
            if '=' not in token:
                raise SpecError(f'grid entry {token!r}: expected name=value1,value2,...')
            name, values = token.split('=', 1)
            name = name.lstrip('-')
            if not re.fullmatch(r'[A-Za-z_][A-Za-z0-9_]*', name):
                raise SpecError(f'grid entry {token!r}: {name!r} is not an argument name')
            if name in seen:
                raise SpecError(f'grid names {name!r} twice')
            items = values.split(',')
            if any(v == '' for v in items):
                raise SpecError(f'grid entry {token!r} has an empty value')
            seen.add(name)
            grid.append((name, items))
    return grid


def expand_grid(grid: list[tuple[str, list[str]]]) -> list[list[str]]:
    """Cartesian product as argument lists, the first grid name varying slowest; ``[[]]`` for no grid."""
    if not grid:
        return [[]]
    names = [n for n, _ in grid]
    return [[tok for name, value in zip(names, combo) for tok in (f'--{name}', value)]
            for combo in itertools.product(*(values for _, values in grid))]


# --------------------------------------------------------------------------- normalised run specs

@dataclass
class RunSpec:
    argv: list[str]                 # main.py arguments, seed included (exp's own log/model paths are added at launch)
    seed: int
    model: str
    dataset: str
    config: dict                    # normalised arguments without the seed
    args: dict = field(default_factory=dict)  # every parsed argument (CSV columns); empty if unparseable
    error: str = ''                 # why the arguments could not be parsed ('' = fine)
    run_name: str = ''              # main.run_name of the run ('' if unparseable)

    @property
    def config_key(self) -> str:
        return json.dumps(self.config, sort_keys=True)

    @property
    def run_id(self) -> str:
        digest = hashlib.sha1(f'{self.config_key}|seed={self.seed}'.encode()).hexdigest()[:10]
        return f'{_slug(self.model)}-{_slug(self.dataset)}-s{self.seed}-{digest}'


def _slug(text: str) -> str:
    return re.sub(r'[^A-Za-z0-9_.]+', '-', str(text))[:40] or 'x'


def _plain(value):
    """JSON-friendly python scalar."""
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    return value


def normalise(argv: list[str]) -> tuple[dict, dict, str, str]:
    """``(config, all_args, run_name, error)`` for main.py arguments (seed excluded from ``config``).

    ``config`` keeps :data:`ALWAYS_IN_KEY` and every argument whose parsed value differs from the parser
    default, minus :data:`IGNORED_IN_KEY`. Arguments main.py rejects (unknown model, bad value) give
    ``error`` and a config built from the raw tokens, so the run is still recorded (as failed).
    """
    import main  # the model registry and parsers; imports torch
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            parser, model_cls, _, _ = main.build_parser(argv)
            args = parser.parse_args(argv)
    except SystemExit as e:
        message = err.getvalue().strip().splitlines()[-1:] or [str(e.code)]
        if not isinstance(e.code, int) and e.code is not None:
            message = [str(e.code)]
        return _raw_config(argv), {}, '', message[0]
    except Exception as e:  # a model whose module fails to import
        return _raw_config(argv), {}, '', f'{type(e).__name__}: {e}'
    values = {k: _plain(v) for k, v in vars(args).items()}
    config = {}
    for action in parser._actions:
        dest = action.dest
        if dest == 'help' or dest not in values or dest in IGNORED_IN_KEY:
            continue
        if dest in ALWAYS_IN_KEY or values[dest] != action.default:
            config[dest] = values[dest]
    return config, values, main.run_name(args, model_cls), ''


def _raw_config(argv: list[str]) -> dict:
    """Fallback key of an unparseable argument list: last value of each ``--name``, seed removed."""
    config, name = {}, None
    for token in argv:
        if token.startswith('--'):
            name = token[2:]
            config[name] = True
        elif name is not None:
            config[name] = token
            name = None
    config.pop('random_seed', None)
    for key in IGNORED_IN_KEY:
        config.pop(key, None)
    config.setdefault('model_name', 'SASRec')
    return config


def build_specs(commands: list[list[str]] | None, base: list[str] | None = None,
                grid: list[tuple[str, list[str]]] | None = None, n_seeds: int = 1, seed0: int = 0) -> list[RunSpec]:
    """Every run: for each command line (or just ``base``), each grid point and each seed.

    Later arguments win (argparse keeps the last value): ``base`` < command line < grid point < seed.
    Runs with the same key are listed once.
    """
    if n_seeds < 1:
        raise SpecError(f'--n_seeds must be >= 1, got {n_seeds}')
    specs, seen = [], set()
    for command in (commands or [[]]):
        for point in expand_grid(grid or []):
            argv = list(base or []) + list(command) + point
            for i in range(n_seeds):
                spec = _spec(argv, seed0 + i)
                if spec.run_id not in seen:
                    seen.add(spec.run_id)
                    specs.append(spec)
    return specs


def _spec(argv: list[str], seed: int) -> RunSpec:
    full = argv + ['--random_seed', str(seed)]
    config, values, run_name, error = normalise(full)
    return RunSpec(argv=full, seed=seed, model=str(config.get('model_name', '?')),
                   dataset=str(values.get('dataset', config.get('dataset', '?'))), config=config, args=values,
                   error=error, run_name=run_name)


def peek_arg(argv: list[str], name: str) -> str | None:
    """The value ``argv`` gives ``--name`` (the last one, as argparse keeps), or None."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument(f'--{name}', type=str, default=None)
    return getattr(parser.parse_known_args(argv)[0], name)


def runs_with_checkpoints(df: pd.DataFrame, models: list[str] | None = None, resumable: bool = False,
                          early_stop: int | None = None) -> tuple[pd.DataFrame, list[str]]:
    """Finished runs (of ``models``) whose checkpoint, the ``--model_path`` of their arguments, is on disk; and the
    run ids of the finished runs whose checkpoint is not. With ``resumable``: the runs whose training state
    (``--resume 1``, utils/train_state.py) is on disk and that did not stop early; with a new ``early_stop`` (0 =
    none) larger than theirs, also those that stopped early on the start-up plateau (results_csv.stop_caveats),
    which the longer patience may let out of it. Converged runs are never continued."""
    rows = df[df['status'] == 'ok']
    if models:
        rows = rows[rows['model'].isin(models)]
    if resumable:
        stopped = rows['stop_reason'].fillna('') == 'early_stop'
        if early_stop is not None:
            longer = (early_stop == 0) | (patience_of(rows) < early_stop)
            stopped &= ~(longer & (stop_caveats(rows) == 'plateau'))
        rows = rows[~stopped]
    paths = [peek_arg(shlex.split(str(argv)), 'model_path') or '' for argv in rows['argv']]
    present = np.array([os.path.isfile(train_state.state_path(p) if resumable and p else p) for p in paths], dtype=bool)
    return rows[present], [str(r) for r in rows.loc[~present, 'run_id']]


def checkpoint_specs(df: pd.DataFrame, base: list[str] | None = None, grid: list[tuple[str, list[str]]] | None = None,
                     models: list[str] | None = None, resume: bool = False) -> tuple[list[RunSpec], list[str]]:
    """Runs that evaluate trained checkpoints again instead of training (e.g. with ``--text_fusion 1``), or, with
    ``resume``, continue training the runs that did not stop early (e.g. with a new ``--time_budget``), and those that
    stopped on the start-up plateau when ``base`` gives a longer ``--early_stop``.

    For each such run of ``df`` (of ``models``) whose checkpoint (training state) is on disk: its own arguments
    (without the log and model paths exp.py gave it), then ``base``, then each grid point, then ``--load 1 --train 0``
    (``--resume 1``) and ``--model_path <its checkpoint>``, with its seed. Returns the specs and the run ids whose
    checkpoint (training state) is missing.
    """
    patience = peek_arg(list(base or []), 'early_stop')
    rows, missing = runs_with_checkpoints(df, models, resumable=resume,
                                          early_stop=int(patience) if patience is not None else None)
    mode = ['--resume', '1'] if resume else ['--load', '1', '--train', '0']
    specs, seen = [], set()
    for _, row in rows.iterrows():
        tokens = shlex.split(str(row['argv']))
        checkpoint, own = peek_arg(tokens, 'model_path'), []
        i = 0
        while i < len(tokens):
            if tokens[i] in ('--log_file', '--model_path', '--random_seed'):
                i += 2
                continue
            own.append(tokens[i])
            i += 1
        for point in expand_grid(grid or []):
            argv = own + list(base or []) + point + mode + ['--model_path', checkpoint]
            spec = _spec(argv, int(row['seed']))
            if spec.run_id not in seen:
                seen.add(spec.run_id)
                specs.append(spec)
    return specs, missing


# --------------------------------------------------------------------------- one CSV row

def result_row(spec: RunSpec, status: str, error: str = '', results: dict | None = None,
               wall_s: float = float('nan'), argv: list[str] | None = None) -> dict:
    """One CSV row: fixed columns, ``dev_``/``test_`` metrics, and every parsed argument."""
    row = {'run_id': spec.run_id, 'model': spec.model, 'dataset': spec.dataset, 'seed': spec.seed,
           'status': status, 'error': error, 'best_epoch': None, 'epochs': None,
           'stop_reason': '', 'wall_s': round(wall_s, 2), 'train_s': None,
           'finished_at': time.strftime('%Y-%m-%d %H:%M:%S'), 'config': spec.config_key,
           'argv': shlex.join(argv if argv is not None else spec.argv)}
    for name, value in spec.args.items():
        if name not in RENAMED_ARGS:
            row[name] = value
    used = argv if argv is not None else spec.argv
    for name in ('log_file', 'model_path'):  # the paths the run actually used (exp.py sets them per run)
        value = peek_arg(used, name) if spec.args else None
        if value is not None:
            row[name] = value
    if results:
        row['best_epoch'] = results.get('best_epoch')
        row['epochs'] = results.get('epochs')
        row['stop_reason'] = results.get('stop_reason', '')
        row['train_s'] = results.get('train_s')
        for split in ('dev', 'test'):
            for metric, value in (results.get(split) or {}).items():
                row[f'{split}_{metric}'] = value
    return row


# --------------------------------------------------------------------------- running

def run_paths(spec: RunSpec, log_dir: str | os.PathLike, model_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Log file and checkpoint of a run: ``<dir>/<Model>/<run_id>/<run_name>.{txt,pt}``.

    main.py names files after model, dataset, seed, lr, l2 and the model's ``extra_log_args`` only, so two
    grid points differing in another argument (``--include_kge 0``, ``--lrd_feature id``) would share a
    checkpoint; the run id keeps them apart (main.py also puts the rec-*.csv files next to the log).
    """
    name = spec.run_name or spec.run_id
    folder = f'{_slug(spec.model)}/{spec.run_id}'
    return Path(log_dir) / folder / f'{name}.txt', Path(model_dir) / folder / f'{name}.pt'


def tail_text(text: str, lines: int = ERROR_LINES, chars: int = ERROR_CHARS) -> str:
    """Last lines of a child's stderr, progress-bar carriage returns resolved, at most ``chars`` long."""
    cleaned = [line.split('\r')[-1].rstrip() for line in text.replace('\r\n', '\n').split('\n')]
    cleaned = [line for line in cleaned if line.strip()]
    out = '\n'.join(cleaned[-lines:])
    return out[-chars:]


def default_threads(jobs: int) -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, jobs))


def contention_warning(jobs: int, load: float | None = None, cores: int | None = None) -> str | None:
    """A warning when cores / jobs threads per child would oversubscribe a machine that is already busy.

    Two exp.py side by side each hand their children all the cores; OpenMP threads then spin-wait on
    each other (a 22 s GRU4Rec epoch took 477 s on 2 cores). ``load`` defaults to the 1-minute load average.
    """
    if load is None:
        if not hasattr(os, 'getloadavg'):
            return None
        load = os.getloadavg()[0]
    cores = cores or default_threads(1)
    if load < 0.5 * cores:
        return None
    return (f'warning: the load average is {load:.1f} on {cores} cores before any run starts; each of the '
            f'{jobs} job(s) gets {default_threads(jobs)} OpenMP threads, which will compete with the other '
            f'processes. Set OMP_NUM_THREADS (e.g. 1) for this exp.py to avoid oversubscription.')


@dataclass
class _Running:
    spec: RunSpec
    proc: subprocess.Popen
    slot: int
    started: float
    result: Path
    stdout: Path
    stderr: Path
    argv: list[str]


class _CsvLock:
    """An exclusive lock on ``<csv>.lock`` so that two exp.py processes never write the same CSV."""

    def __init__(self, csv_path: Path):
        self.path = csv_path.with_name(csv_path.name + '.lock')
        self.file = None

    def __enter__(self):
        import fcntl
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(self.path, 'w')
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.file.close()
            raise RuntimeError(f'{self.path} is locked: another exp.py is writing this CSV') from None
        return self

    def __exit__(self, *exc):
        import fcntl
        fcntl.flock(self.file, fcntl.LOCK_UN)
        self.file.close()
        with contextlib.suppress(OSError):
            self.path.unlink()


def run_specs(specs: list[RunSpec], out_csv: str | os.PathLike, jobs: int = 1,
              work_dir: str | os.PathLike | None = None, log_dir: str | os.PathLike | None = None,
              model_dir: str | os.PathLike | None = None,
              child_cmd: list[str] | None = None, timeout: float | None = None, gpus: list[str] | None = None,
              retry_failed: bool = True, echo: Callable[[str], None] = print,
              poll_s: float = 0.2, progress_s: float = 300.0) -> dict[str, int]:
    """Run every spec the CSV does not hold with status ok; record each as it finishes.

    Returns counts ``{'ok', 'failed', 'skipped'}``. Each child gets ``OMP_NUM_THREADS`` = cores / jobs unless
    the environment sets it, ``TQDM_DISABLE=1``, and with ``gpus`` a ``CUDA_VISIBLE_DEVICES`` of its own
    (round robin over the job slots). Ctrl-C terminates the running children and keeps what finished.
    Every ``progress_s`` seconds (0: never) one line per running run says its epoch and dev metric.
    """
    out_csv = Path(out_csv)
    work_dir = Path(work_dir) if work_dir else out_csv.with_name(out_csv.stem + '_runs')
    log_dir = Path(log_dir) if log_dir else REPO_DIR / 'log'
    model_dir = Path(model_dir) if model_dir else REPO_DIR / 'model'
    child_cmd = child_cmd or child_command()
    jobs = max(1, int(jobs))
    counts = {'ok': 0, 'failed': 0, 'skipped': 0}
    with _CsvLock(out_csv):
        rows = read_results(out_csv).to_dict('records')
        rows = [{k: v for k, v in r.items() if not (isinstance(v, float) and math.isnan(v))} for r in rows]
        index = {r['run_id']: i for i, r in enumerate(rows)}
        finished = {r['run_id'] for r in rows if r.get('status') == 'ok' or (not retry_failed and r.get('status'))}
        todo = []
        for spec in specs:
            if spec.run_id in finished:
                counts['skipped'] += 1
            else:
                todo.append(spec)
        echo(f'{len(specs)} runs: {counts["skipped"]} already in {out_csv}, {len(todo)} to run, {jobs} at a time')

        def record(row: dict) -> None:
            if row['run_id'] in index:
                rows[index[row['run_id']]] = row
            else:
                index[row['run_id']] = len(rows)
                rows.append(row)
            write_results(out_csv, rows)
            counts[row['status']] += 1
            done = counts['ok'] + counts['failed']
            metric = next((f' {k}={row[k]:.4f}' for k in ('dev_NDCG@5', 'dev_HR@5') if k in row), '')
            echo(f'[{done}/{len(todo)}] {row["status"]:6} {row["run_id"]} ({row["wall_s"]:.1f} s){metric}'
                 + (f'\n    {row["error"].splitlines()[-1] if row["error"] else ""}' if row['status'] != 'ok' else ''))

        # arguments main.py rejects fail here, without a child
        for spec in [s for s in todo if s.error]:
            record(result_row(spec, 'failed', error=spec.error, wall_s=0.0))
        queue = [s for s in todo if not s.error]
        work_dir.mkdir(parents=True, exist_ok=True)
        env_base = dict(os.environ, TQDM_DISABLE='1', PYTHONUNBUFFERED='1')
        if 'OMP_NUM_THREADS' not in env_base and queue and (warning := contention_warning(jobs)):
            echo(warning)
        env_base.setdefault('OMP_NUM_THREADS', str(default_threads(jobs)))
        running: list[_Running] = []
        previous = _raise_on_sigterm()
        last_progress = time.time()
        try:
            while queue or running:
                if progress_s and running and time.time() - last_progress >= progress_s:
                    last_progress = time.time()
                    for job in running:
                        echo(_progress(job))
                free = sorted(set(range(jobs)) - {r.slot for r in running})
                while queue and free:
                    running.append(_launch(queue.pop(0), free.pop(0), work_dir, log_dir, model_dir, child_cmd,
                                           env_base, gpus))
                time.sleep(poll_s)
                for job in list(running):
                    elapsed = time.time() - job.started
                    if job.proc.poll() is None:
                        if timeout and elapsed > timeout:
                            job.proc.kill()
                            job.proc.wait()
                            running.remove(job)
                            record(_finish(job, time.time() - job.started, timed_out=timeout))
                        continue
                    running.remove(job)
                    record(_finish(job, elapsed))
        except KeyboardInterrupt:
            for job in running:
                job.proc.terminate()
            for job in running:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    job.proc.wait(timeout=10)
                if job.proc.poll() is None:
                    job.proc.kill()
            echo(f'Interrupted: {len(running)} running and {len(queue)} queued runs not recorded; '
                 f'run the same command again to resume.')
            raise
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
    return counts


def _raise_on_sigterm():
    """Treat SIGTERM (a scheduler stopping the job) like Ctrl-C, so the children are terminated too."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):
        raise KeyboardInterrupt(f'signal {signum}')
    return signal.signal(signal.SIGTERM, handler)


def _launch(spec: RunSpec, slot: int, work_dir: Path, log_dir: Path, model_dir: Path, child_cmd: list[str],
            env_base: dict, gpus: list[str] | None) -> _Running:
    argv = list(spec.argv)
    log_file, model_path = run_paths(spec, log_dir, model_dir)
    if '--log_file' not in argv:
        argv += ['--log_file', str(log_file)]
    if '--model_path' not in argv:
        argv += ['--model_path', str(model_path)]
    trains = peek_arg(argv, 'train') in (None, '1')
    if trains and '--resume' not in argv and os.path.isfile(train_state.state_path(peek_arg(argv, 'model_path'))):
        argv += ['--resume', '1']  # an earlier attempt (interrupted, timed out, crashed) continues from its last epoch
    result = work_dir / f'{spec.run_id}.json'
    stdout, stderr = work_dir / f'{spec.run_id}.stdout', work_dir / f'{spec.run_id}.stderr'
    with contextlib.suppress(FileNotFoundError):
        result.unlink()
    env = dict(env_base)
    if gpus:
        env['CUDA_VISIBLE_DEVICES'] = str(gpus[slot % len(gpus)])
    with open(stderr, 'wb') as err, open(stdout, 'wb') as out:
        # own session: a Ctrl-C in the terminal reaches exp.py only (main.py would catch it and report a
        # half-trained model as finished); exp.py then terminates the children itself
        proc = subprocess.Popen(child_cmd + [str(result)] + argv, stdout=out, stderr=err, env=env,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    return _Running(spec, proc, slot, time.time(), result, stdout, stderr, argv)


def _progress(job: _Running) -> str:
    elapsed = time.time() - job.started
    text = job.stdout.read_text(errors='replace') if job.stdout.exists() else ''
    return f'    running {job.spec.run_id}: {elapsed / 60:.0f} min' + \
        (f', {progress}' if (progress := epoch_progress(text, elapsed)) else '')


def _finish(job: _Running, wall_s: float, timed_out: float | None = None) -> dict:
    stderr = job.stderr.read_text(errors='replace') if job.stderr.exists() else ''
    if timed_out:
        return result_row(job.spec, 'failed', error=f'timed out after {timed_out:g} s\n' + tail_text(stderr, 5),
                          wall_s=wall_s, argv=job.argv)
    code = job.proc.returncode
    if code == 0 and job.result.exists():
        try:
            results = json.loads(job.result.read_text())
            if isinstance(results, dict) and 'test' in results and 'dev' in results:
                return result_row(job.spec, 'ok', results=results, wall_s=wall_s, argv=job.argv)
            problem = f'result JSON without dev/test metrics: {str(results)[:200]}'
        except json.JSONDecodeError as e:
            problem = f'unreadable result JSON {job.result}: {e}'
    else:
        problem = f'exit code {code}' + ('' if code != 0 else f' but no result file {job.result}')
    tail = tail_text(stderr)
    return result_row(job.spec, 'failed', error=(tail or problem) if code != 0 else problem + '\n' + tail,
                      wall_s=wall_s, argv=job.argv)
