"""Fig. 2: the full LRD model against its ablations (w/o LLM, w/o KGE, w/o LRD loss, w/o LRD), from results CSVs."""
from __future__ import annotations

import argparse
from collections.abc import Iterable

import pandas as pd

from analysis.output import csv_sources, out_stem, write_text
from utils import figures
from utils import results_csv as rc
from utils.reports import backbone_of, markdown_table


def variant_of(row: pd.Series) -> str | None:
    """'full', or the ablation's name ('w/o LRD', 'w/o KGE', 'w/o LLM', 'w/o LRD loss'); None for several."""
    found = rc.ablations_of(row)
    if len(found) > 1:
        return None
    return found[0] if found else 'full'


def ablation_summary(df: pd.DataFrame, by: str, metrics: list[str], split: str = 'test',
                     models: list[str] | None = None, where: list[str] | None = None,
                     min_seeds: int = 1, pool: Iterable[str] = rc.RESOURCE_ARGS) -> pd.DataFrame:
    """Per (LRD model, dataset, variant): the best configuration by mean ``by`` and its metrics over seeds.

    "w/o LRD" comes from the LRD model's ``--include_lrd 0`` runs, or, when there are none, from runs of its
    backbone (KDA for KDA_LRD). "w/o LRD, w/o KGE" is the backbone's ``--include_kge 0`` runs, when there are any:
    the control that tells whether what w/o KGE loses is the backbone's loss or the LRD model's.
    ``pool``: arguments left out of a configuration (:func:`rc.pool_configs`).
    """
    rows = rc.pool_configs(rc.filter_rows(df, where, keep_variants=True), pool)
    rows = rows.assign(variant=[variant_of(r) for _, r in rows.iterrows()])
    lrd_models = models or sorted(m for m in rows['model'].unique() if m.endswith('_LRD'))
    if not lrd_models:
        raise ValueError('no *_LRD runs in the CSV')
    records = []
    for model in lrd_models:
        for dataset in rows.loc[rows['model'] == model, 'dataset'].unique():
            own = rows[(rows['model'] == model) & (rows['dataset'] == dataset)]
            parts = {v: own[own['variant'] == v] for v in ('full', 'w/o LLM', 'w/o KGE', 'w/o LRD loss', 'w/o LRD')}
            sources = dict.fromkeys(parts, model)
            backbone = rows[(rows['model'] == backbone_of(model)) & (rows['dataset'] == dataset)]
            if parts['w/o LRD'].empty:  # the backbone itself is "w/o LRD"
                sources['w/o LRD'] = backbone_of(model)
                parts['w/o LRD'] = backbone[backbone['variant'] == 'full']
            parts['w/o LRD, w/o KGE'] = backbone[backbone['variant'] == 'w/o KGE']
            sources['w/o LRD, w/o KGE'] = backbone_of(model)
            for variant, part in parts.items():
                best = rc.select_best(part, by, min_seeds) if not part.empty else part
                if best.empty:
                    continue
                summary = best.iloc[0]
                record = {'model': model, 'dataset': dataset, 'group': f'{model} / {dataset}',
                          'variant': model if variant == 'full' else variant, 'source_model': sources[variant],
                          'n_seeds': int(summary['n_seeds']), 'seeds': summary['seeds'],
                          f'{by}_mean': summary[f'{by}_mean'], 'config': rc.short_config(summary['config'])}
                for m in metrics:
                    record[f'{m}_mean'] = summary[f'{split}_{m}_mean']
                    record[f'{m}_std'] = summary[f'{split}_{m}_std']
                records.append(record)
    return pd.DataFrame(records)


def command(opts: argparse.Namespace) -> dict:
    """``analyze.py ablation``: bars per variant (PNG), the summary (CSV) and a markdown table."""
    metrics = [m.strip() for m in opts.metrics.split(',') if m.strip()]
    summary = ablation_summary(rc.read_many(opts.csv), opts.by, metrics, opts.split,
                               [m for m in opts.models.split(',') if m] or None, opts.where, opts.min_seeds,
                               rc.parse_pool(opts.pool))
    if summary.empty:
        raise ValueError(f'no finished runs of the variants in {csv_sources(opts)} (min_seeds={opts.min_seeds})')
    stem = out_stem(opts, 'ablation')
    summary.to_csv(stem + '.csv', index=False)
    figures.ablation_bars(summary, metrics, stem + '.png')
    stats = [f'{m}_{s}' for m in metrics for s in ('mean', 'std')]
    table = summary[['group', 'variant', 'source_model', 'n_seeds'] + stats + ['config']]
    write_text(stem + '.md', f'# Ablation ({opts.split} set, mean ± std over seeds)\n\nSource: '
               f'`{csv_sources(opts)}`; each variant\'s configuration has the best mean {opts.by}.\n\n'
               + markdown_table(table))
    return {'png': stem + '.png', 'csv': stem + '.csv', 'md': stem + '.md'}
