"""The results CSV of ``exp.py``: one row per run, its columns, reading and writing it, and choosing from it.

Selection always goes through :func:`filter_rows` (status ok, ablations and text variants named) and then
:func:`select_best` (best configuration per model and dataset by the mean **dev** metric over seeds).
"""
from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Collection, Iterable

import numpy as np
import pandas as pd

from utils.atomic_write import atomic_write

# Leading CSV columns; then dev_/test_ metric columns; then one column per model argument.
FIXED_COLUMNS = ['run_id', 'model', 'dataset', 'seed', 'status', 'error', 'best_epoch', 'epochs', 'stop_reason',
                 'wall_s', 'train_s', 'finished_at', 'config', 'argv']


def metric_sort_key(column: str) -> tuple:
    """``dev_HR@5`` < ``dev_NDCG@5`` < ``dev_HR@10`` ... < ``test_HR@5`` ..."""
    split, _, metric = column.partition('_')
    name, _, k = metric.partition('@')
    return ({'dev': 0, 'test': 1}.get(split, 2), int(k) if k.isdigit() else 0, name)


def is_metric_column(column: str) -> bool:
    return bool(re.fullmatch(r'(dev|test)_[A-Za-z]+@\d+', column))


def order_columns(columns: Iterable[str]) -> list[str]:
    """Fixed columns, then metric columns, then argument columns in alphabetical order."""
    columns = list(dict.fromkeys(columns))
    metrics = sorted((c for c in columns if is_metric_column(c)), key=metric_sort_key)
    rest = sorted(c for c in columns if c not in FIXED_COLUMNS and not is_metric_column(c))
    return FIXED_COLUMNS + metrics + rest


def read_results(path: str | os.PathLike) -> pd.DataFrame:
    """The results CSV as a DataFrame (empty, with the fixed columns, if the file does not exist)."""
    if not os.path.exists(path) or os.path.getsize(path) == 0:
        return pd.DataFrame(columns=FIXED_COLUMNS)
    text_columns = ('run_id', 'status', 'error', 'stop_reason', 'config', 'argv', 'model', 'dataset', 'sep')
    df = pd.read_csv(path, keep_default_na=False, na_values=[''], dtype=dict.fromkeys(text_columns, str))
    missing = [c for c in ('run_id', 'status', 'model', 'dataset', 'seed') if c not in df.columns]
    if missing:
        raise ValueError(f'{path} is not a results CSV of exp.py: missing columns {missing}')
    for column in FIXED_COLUMNS:  # CSVs written by an earlier version lack the columns added since
        if column not in df.columns:
            df[column] = np.nan
    return df


def read_many(paths: list[str | os.PathLike]) -> pd.DataFrame:
    """Several results CSVs as one table (runs of several sessions); a run id seen twice keeps its last row."""
    frames = [read_results(p) for p in paths]
    frames = [f for f in frames if not f.empty]
    if not frames:
        return pd.DataFrame(columns=FIXED_COLUMNS)
    df = pd.concat(frames, ignore_index=True)
    return df.drop_duplicates('run_id', keep='last').reset_index(drop=True)


def write_results(path: str | os.PathLike, rows: list[dict]) -> None:
    """Rewrite the whole CSV atomically (temp file + rename), columns in :func:`order_columns` order."""
    columns = order_columns([c for row in rows for c in row] or FIXED_COLUMNS)
    df = pd.DataFrame(rows, columns=columns)
    for column in ('seed', 'best_epoch', 'epochs'):  # integers, also when some rows have none (failed runs)
        df[column] = pd.to_numeric(df[column], errors='coerce').round().astype('Int64')
    atomic_write(path, lambda f: f.write(df.to_csv(index=False).encode()))


# Ablations of an LRD model: the argument, the value that switches a part off, and the name reports give it.
# ``--lamda 0`` keeps the K extra relation types but never trains them by the discovery loss: it tells the
# relations' extra capacity apart from what the discovery adds (docs/results.md).
ABLATIONS = {'include_lrd': ('0', 'w/o LRD'), 'include_kge': ('0', 'w/o KGE'), 'lrd_feature': ('id', 'w/o LLM'),
             'lamda': ('0', 'w/o LRD loss')}
# Reports name a model that takes the texts another way by suffixes, in this order: a model of its own, compared
# with its backbone (KDA_LRD --include_lrd 0 --text_init 1 --text_fusion 1 is "KDA+TI+TF").
TEXT_VARIANTS = (('text_init', '+TI'), ('text_fusion', '+TF'))
# Arguments that stop, continue or reload a run without changing what it trains; reports pool seeds across them.
RESOURCE_ARGS = ('time_budget', 'early_stop', 'load', 'train', 'resume')


OUTLIER_RATIO = 0.8  # a seed's dev metric under this fraction of the other seeds' median is an 'outlier'

# Why a finished run's test metrics may not be a converged result; reports count such runs per cell.
CAVEATS = {'budget': 'the run was stopped by --time_budget before early stopping: its metrics are a lower bound',
           'plateau': 'the run early-stopped with its best dev epoch within the first --early_stop epochs: it '
                      'probably never left the start-up plateau (docs/results.md), so its metrics may be near chance',
           'outlier': f'the run\'s dev metric is more than {1 - OUTLIER_RATIO:.0%} below the median of its '
                      "configuration's other seeds: it converged to a poor solution (as KDA_LRD --q_balance 0.1 seed 4 "
                      'on Office, docs/results.md), which weighs on the mean'}


def patience_of(df: pd.DataFrame) -> pd.Series:
    """Each row's ``--early_stop`` (ReChorus' default 10 where a CSV lacks it)."""
    if 'early_stop' not in df.columns:
        return pd.Series(10, index=df.index)
    return pd.to_numeric(df['early_stop'], errors='coerce').fillna(10)


def stop_caveats(df: pd.DataFrame) -> pd.Series:
    """Per row, the :data:`CAVEATS` key that applies ('' for none), from the row's stop reason, best epoch and
    ``--early_stop``; the plateau rule is the one the runner warns with (BaseRunner._warn_if_never_improved)."""
    reason = df['stop_reason'].fillna('').astype(str)
    patience = patience_of(df)
    best = pd.to_numeric(df['best_epoch'], errors='coerce')
    plateau = reason.eq('early_stop') & (patience > 0) & best.le(patience)
    return pd.Series(np.select([reason.eq('time_budget').to_numpy(), plateau.to_numpy()], ['budget', 'plateau'], ''),
                     index=df.index, dtype=object)


def outlier_seeds(dev: pd.Series) -> pd.Series:
    """Per run of one configuration (``dev``: its dev selection metric), whether it is under :data:`OUTLIER_RATIO`
    of the median of the other runs: a stop-based caveat misses a run that converged, only to a poor solution. Needs
    three runs, so that the median of the others is not a single run."""
    values = pd.to_numeric(dev, errors='coerce').to_numpy(dtype=float)
    if len(values) < 3:
        return pd.Series(False, index=dev.index)
    others = np.array([np.nanmedian(np.delete(values, i)) for i in range(len(values))])
    return pd.Series(values < OUTLIER_RATIO * others, index=dev.index)


def label_text_variants(df: pd.DataFrame) -> pd.DataFrame:
    """Rows run with ``--text_init 1`` or ``--text_fusion 1`` renamed ``X+TI``, ``X+TF``, ``X_LRD+TF``, ...

    ``X_LRD --include_lrd 0`` with one of them is the backbone plus that option, so it becomes ``X+..`` and loses
    its ``include_lrd`` value: it is not the "w/o LRD" ablation.
    """
    flags = {column: pd.to_numeric(df[column], errors='coerce').fillna(0).astype(bool)
             for column, _ in TEXT_VARIANTS if column in df.columns}
    if not flags or not any(flag.any() for flag in flags.values()):
        return df
    df = df.copy()
    any_flag = np.logical_or.reduce(list(flags.values()))
    include_lrd = df['include_lrd'] if 'include_lrd' in df.columns else pd.Series(np.nan, index=df.index)
    no_lrd = any_flag & df['model'].str.endswith('_LRD') & pd.to_numeric(include_lrd, errors='coerce').eq(0)
    df.loc[no_lrd, 'model'] = df.loc[no_lrd, 'model'].str[:-len('_LRD')]
    df.loc[no_lrd, 'include_lrd'] = np.nan
    for column, suffix in TEXT_VARIANTS:
        if column in flags:
            df.loc[flags[column], 'model'] = df.loc[flags[column], 'model'] + suffix
    return df


def parse_pool(text: str) -> list[str]:
    """The ``--pool`` option of the reports: comma-separated argument names, '' for none."""
    return [name for name in text.split(',') if name]


def pool_configs(df: pd.DataFrame, ignore: Iterable[str] = RESOURCE_ARGS) -> pd.DataFrame:
    """Configs with the ``ignore`` arguments removed, so that seeds run with different budgets count as one
    configuration; a seed run more than once under the pooled config keeps its latest finished run."""
    if df.empty or not ignore:
        return df

    def pooled(key: str) -> str:
        try:
            config = json.loads(key)
        except (TypeError, json.JSONDecodeError):
            return key
        return json.dumps({k: v for k, v in config.items() if k not in ignore}, sort_keys=True)

    df = df.assign(config=[pooled(c) for c in df['config']])
    df = df.sort_values('finished_at', kind='stable', na_position='first')
    return df.drop_duplicates(['model', 'dataset', 'config', 'seed'], keep='last').sort_index()


def ablations_of(row: pd.Series) -> list[str]:
    """Names of the ablations a results row was run with; [] for the full model and for models without them."""
    return [label for column, (value, label) in ABLATIONS.items()
            if column in row.index and _is_ablation_value(row[column], value)]


def _is_ablation_value(value, ablation_value) -> bool:
    """A missing cell (a model without the argument) is not an ablation, unlike in :func:`_matches`."""
    return not _missing(value) and _matches(value, ablation_value)


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _matches(value, wanted) -> bool:
    """CSV cell vs a ``--where`` value: numbers compare numerically, the rest as strings."""
    if _missing(value):
        return True  # a model without this argument is not filtered out
    try:
        return float(value) == float(wanted)
    except (TypeError, ValueError):
        return str(value) == str(wanted)


def filter_rows(df: pd.DataFrame, where: list[str] | dict | None = None,
                keep_variants: bool | Collection[str] = False, models: list[str] | None = None,
                datasets: list[str] | None = None) -> pd.DataFrame:
    """Status-ok rows, filtered.

    ``where``: ``['name=value', ...]``; a row is dropped when it has a value for ``name`` that differs (rows of
    models without that argument are kept). Ablation variants (:data:`ABLATIONS`) are dropped, so that "best
    config of KDA_LRD" means the full model, unless ``keep_variants`` is True, names the ablation arguments
    whose variants stay (the sensitivity analysis keeps ``lamda``: λ = 0 is a point of its curve), or ``where``
    asks for the argument.
    Runs with ``--text_init``/``--text_fusion`` are named by :func:`label_text_variants` first (``models`` filters
    on those names).
    """
    conditions = {}
    if isinstance(where, dict):
        conditions.update(where)
    else:
        for item in where or []:
            if '=' not in item:
                raise ValueError(f'--where {item!r}: expected name=value')
            name, value = item.split('=', 1)
            conditions[name.lstrip('-')] = value
    out = label_text_variants(df[df['status'] == 'ok'].copy())
    if keep_variants is not True:
        kept = set(keep_variants or ()) | set(conditions)  # asking for include_kge=0 asks for that ablation
        ablated = np.zeros(len(out), dtype=bool)
        for column, (value, _) in ABLATIONS.items():
            if column in out.columns and column not in kept:
                ablated |= np.array([_is_ablation_value(v, value) for v in out[column]], dtype=bool)
        out = out[~ablated]
    for name, value in conditions.items():
        if name in out.columns:
            out = out[[_matches(v, value) for v in out[name]]]
        elif name not in ABLATIONS:
            raise ValueError(f'--where {name}={value}: no column {name!r} in the results')
    if models:
        out = out[out['model'].isin(models)]
    if datasets:
        out = out[out['dataset'].isin(datasets)]
    return out


def config_summary(df: pd.DataFrame, by: str) -> pd.DataFrame:
    """One row per (model, dataset, config): seeds, mean and std of ``by`` and of every metric."""
    if by not in df.columns:
        raise ValueError(f'no column {by!r} in the results; metric columns: '
                         f'{[c for c in df.columns if is_metric_column(c)]}')
    metrics = sorted((c for c in df.columns if is_metric_column(c)), key=metric_sort_key)
    records = []
    for (model, dataset, config), group in df.groupby(['model', 'dataset', 'config'], sort=False):
        record = {'model': model, 'dataset': dataset, 'config': config, 'n_seeds': group['seed'].nunique(),
                  'seeds': ','.join(str(int(s)) for s in sorted(group['seed']))}
        for metric in metrics:
            values = group[metric].astype(float)
            record[f'{metric}_mean'] = values.mean()
            record[f'{metric}_std'] = values.std(ddof=1) if len(values) > 1 else 0.0
        records.append(record)
    return pd.DataFrame(records)


def select_best(df: pd.DataFrame, by: str = 'dev_NDCG@5', min_seeds: int = 1, partial: bool = False) -> pd.DataFrame:
    """Best configuration per (model, dataset) by the mean of a **dev** metric over seeds (ties: more seeds).

    Only configurations with ``min_seeds`` seeds are eligible; with ``partial``, a model that has none competes with
    its configurations that have the most seeds, so that a table still being filled shows it (a one-seed grid point
    never displaces the configuration that was rerun on more seeds)."""
    if not by.startswith('dev_'):
        raise ValueError(f'--by {by}: select on a dev metric (dev_NDCG@5, ...); test metrics are for reporting only')
    summary = config_summary(df, by)
    if summary.empty:
        return summary
    most = summary.groupby(['model', 'dataset'])['n_seeds'].transform('max')
    eligible = summary['n_seeds'] >= min_seeds
    if partial:
        eligible |= (most < min_seeds) & (summary['n_seeds'] == most)
    summary = summary[eligible]
    if summary.empty:
        return summary
    summary = summary.sort_values([f'{by}_mean', 'n_seeds'], ascending=[False, False], kind='stable')
    return summary.groupby(['model', 'dataset'], sort=False).head(1).reset_index(drop=True)


def config_args(config_key: str) -> list[str]:
    """A stored config (JSON) as main.py arguments, to rerun it (e.g. with more seeds)."""
    config = json.loads(config_key)
    tokens = []
    for name, value in config.items():
        if name in ('model_name', 'dataset'):
            continue
        tokens += [f'--{name}', repr(value) if isinstance(value, float) else str(value)]
    return ['--model_name', str(config['model_name']), '--dataset', str(config.get('dataset', ''))] + tokens


def short_config(config_key: str, drop: Iterable[str] = ('model_name', 'dataset')) -> str:
    """``lr=0.001 lamda=5.0`` rendering of a stored config."""
    try:
        config = json.loads(config_key)
    except (TypeError, json.JSONDecodeError):
        return str(config_key)
    return ' '.join(f'{k}={v}' for k, v in config.items() if k not in drop) or '(defaults)'
