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
- :func:`checkpoint_specs`: finished runs evaluated again from their checkpoints (``exp.py run --checkpoints``).
- :func:`result_row` and :func:`run_paths`: a run's CSV row and the log and checkpoint it writes.

Running the specs as child processes is :mod:`utils.run_pool`; the CSV itself (columns, reading, selection)
lives in :mod:`utils.results_csv`.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import itertools
import json
import os
import re
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from utils import train_state
from utils.results_csv import patience_of, stop_caveats

# Arguments that never change a run's numbers: left out of the run key (they still get CSV columns).
IGNORED_IN_KEY = frozenset({
    'gpu', 'verbose', 'log_file', 'model_path', 'num_workers', 'pin_memory', 'eval_batch_size',
    'save_final_results', 'regenerate', 'buffer', 'plm_device', 'plm_batch_size', 'check_epoch',
    'test_epoch', 'random_seed', 'ddp_backend', 'ddp_timeout', 'snapshot_early_stop'})
# Always part of the key, even at their default value.
ALWAYS_IN_KEY = ('model_name', 'dataset')
# Argument columns that duplicate a fixed column.
RENAMED_ARGS = {'model_name': 'model', 'dataset': 'dataset', 'random_seed': 'seed'}


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


def plain_scalar(value):
    """JSON-friendly python scalar (numpy ints and floats become int and float)."""
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
    values = {k: plain_scalar(v) for k, v in vars(args).items()}
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


def longer_patience(rows: pd.DataFrame, early_stop: int) -> pd.Series:
    """Per run, whether ``early_stop`` (0 = none) is a longer patience than the one it ran with."""
    return (early_stop == 0) | (patience_of(rows) < early_stop)


def _finished(df: pd.DataFrame, models: list[str] | None) -> pd.DataFrame:
    """The runs of ``df`` (of ``models``) that finished."""
    rows = df[df['status'] == 'ok']
    return rows[rows['model'].isin(models)] if models else rows


def _on_disk(rows: pd.DataFrame, resumable: bool) -> np.ndarray:
    """Per run, whether the checkpoint of its ``--model_path`` (with ``resumable``, its training state) exists."""
    paths = [peek_arg(shlex.split(str(argv)), 'model_path') or '' for argv in rows['argv']]
    return np.array([os.path.isfile(train_state.state_path(p) if resumable and p else p) for p in paths], dtype=bool)


def runs_with_checkpoints(df: pd.DataFrame, models: list[str] | None = None, resumable: bool = False,
                          early_stop: int | None = None) -> tuple[pd.DataFrame, list[str]]:
    """Finished runs (of ``models``) whose checkpoint, the ``--model_path`` of their arguments, is on disk; and the
    run ids of the finished runs whose checkpoint is not. With ``resumable``: the runs whose training state
    (``--resume 1``, utils/train_state.py) is on disk and that did not stop early; with a new ``early_stop`` (0 =
    none) larger than theirs, also those that stopped early on the start-up plateau (results_csv.stop_caveats),
    which the longer patience may let out of it. Converged runs are never continued."""
    rows = _finished(df, models)
    if resumable:
        stopped = rows['stop_reason'].fillna('') == 'early_stop'
        if early_stop is not None:
            stopped &= ~(longer_patience(rows, early_stop) & (stop_caveats(rows) == 'plateau'))
        rows = rows[~stopped]
    present = _on_disk(rows, resumable)
    return rows[present], [str(r) for r in rows.loc[~present, 'run_id']]


def own_arguments(argv: list[str]) -> list[str]:
    """A recorded run's arguments without the log and model paths and the seed exp.py gave it, to run it again on top
    of other arguments."""
    own, i = [], 0
    while i < len(argv):
        if argv[i] in ('--log_file', '--model_path', '--random_seed'):
            i += 2
            continue
        own.append(argv[i])
        i += 1
    return own


def last_wins(argv: list[str]) -> list[str]:
    """``argv`` with each ``--option`` once, at its last place and with its last value (the one argparse keeps), so
    that a run continued several times does not carry every ``--time_budget`` it was ever given."""
    pairs, i = [], 0
    while i < len(argv):
        takes_value = argv[i].startswith('--') and '=' not in argv[i] and i + 1 < len(argv) \
            and not argv[i + 1].startswith('--')
        pairs.append(argv[i:i + 2] if takes_value else argv[i:i + 1])
        i += len(pairs[-1])
    keys = [pair[0].split('=', 1)[0] if pair[0].startswith('--') else None for pair in pairs]
    last = {key: n for n, key in enumerate(keys) if key is not None}
    return [token for n, (key, pair) in enumerate(zip(keys, pairs)) if key is None or last[key] == n
            for token in pair]


def converged_runs(df: pd.DataFrame, base: list[str], models: list[str] | None = None) -> pd.DataFrame:
    """The early-stopped runs (of ``models``) with a training state on disk that ``--resume_runs`` leaves alone as
    converged although ``base`` asks for a longer ``--early_stop``: their best dev epoch came after their patience,
    so the plateau rule passes them, but a slow climber looks the same, and only the user can tell the two apart."""
    patience = peek_arg(list(base), 'early_stop')
    if patience is None:
        return df.iloc[:0]
    rows = _finished(df, models)
    rows = rows[(rows['stop_reason'].fillna('') == 'early_stop') & longer_patience(rows, int(patience))
                & (stop_caveats(rows) != 'plateau')]
    return rows[_on_disk(rows, resumable=True)]


def continue_command(row: pd.Series, base: list[str], out: str) -> str:
    """The ``exp.py run`` command that continues one finished run from its training state with ``base`` on top of
    its own arguments: a run of its own, recorded in ``out`` beside the run it continues."""
    tokens = shlex.split(str(row['argv']))
    argv = last_wins(own_arguments(tokens) + list(base)
                     + ['--resume', '1', '--model_path', peek_arg(tokens, 'model_path')])
    return (f'python src/exp.py run --base {shlex.quote(shlex.join(argv))} --n_seeds 1 --seed0 {int(row["seed"])} '
            f'--out {shlex.quote(out)}')


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
        checkpoint, own = peek_arg(tokens, 'model_path'), own_arguments(tokens)
        for point in expand_grid(grid or []):
            argv = last_wins(own + list(base or []) + point + mode + ['--model_path', checkpoint])
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


# --------------------------------------------------------------------------- where a run writes

def run_paths(spec: RunSpec, log_dir: str | os.PathLike, model_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Log file and checkpoint of a run: ``<dir>/<Model>/<run_id>/<run_name>.{txt,pt}``.

    main.py names files after model, dataset, seed, lr, l2 and the model's ``extra_log_args`` only, so two
    grid points differing in another argument (``--include_kge 0``, ``--lrd_feature id``) would share a
    checkpoint; the run id keeps them apart (main.py also puts the rec-*.csv files next to the log).
    """
    name = spec.run_name or spec.run_id
    folder = f'{_slug(spec.model)}/{spec.run_id}'
    return Path(log_dir) / folder / f'{name}.txt', Path(model_dir) / folder / f'{name}.pt'
