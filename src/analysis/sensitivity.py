"""Fig. 6: a metric against K (averaged over λ) and against λ (averaged over K), with the cells behind each mean and
the backbone as the line to beat."""
from __future__ import annotations

import argparse
from collections.abc import Iterable

import pandas as pd

from analysis.output import csv_sources, out_stem, write_text
from utils import figures
from utils import results_csv as rc
from utils.reports import backbone_of, markdown_table


def sensitivity_tables(df: pd.DataFrame, metric: str, by: str, models: list[str] | None = None,
                       where: list[str] | None = None, pool: Iterable[str] = rc.RESOURCE_ARGS
                       ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """``(cells, curves, backbones)``: per (model, dataset, K, λ) the configuration with the best mean ``by`` and
    its mean ``metric``; then the metric vs K averaged over λ and vs λ averaged over K (the paper's Fig. 6); and
    the best configuration of each LRD model's backbone (X for X_LRD) in the same results, the line to beat."""
    pooled = rc.pool_configs(rc.filter_rows(df, where, keep_variants=('lamda',)), pool)
    for column in ('latent_relation_num', 'lamda', metric):
        if column not in pooled.columns:
            raise ValueError(f'no column {column!r} in the results (needs runs of *_LRD models)')
    rows = pooled[pooled['latent_relation_num'].notna() & pooled['lamda'].notna()]
    if models:
        rows = rows[rows['model'].isin(models)]
    if rows.empty:
        raise ValueError('no finished runs with latent_relation_num and lamda')
    records = []
    for (model, dataset, k, lam), part in rows.groupby(['model', 'dataset', 'latent_relation_num', 'lamda']):
        best = rc.select_best(part, by).iloc[0]
        records.append({'model': model, 'dataset': dataset, 'latent_relation_num': int(k), 'lamda': float(lam),
                        'n_seeds': int(best['n_seeds']), 'mean': best[f'{metric}_mean'], 'std': best[f'{metric}_std'],
                        'config': rc.short_config(best['config'])})
    cells = pd.DataFrame(records)
    several = cells['dataset'].nunique() > 1
    cells['group'] = [f'{m} / {d}' if several else m for m, d in zip(cells['model'], cells['dataset'])]
    curves = []
    for param, other in (('latent_relation_num', 'lamda'), ('lamda', 'latent_relation_num')):
        for (group, value), part in cells.groupby(['group', param], sort=False):
            curves.append({'group': group, 'param': param, 'value': value, 'mean': part['mean'].mean(),
                           'n_cells': len(part),
                           'averaged_over': f'{other} ∈ {{{", ".join(f"{v:g}" for v in sorted(part[other]))}}}'})
    curves = pd.DataFrame(curves).sort_values(['param', 'group', 'value'], kind='stable').reset_index(drop=True)
    backbones = []
    for (model, dataset, group), _ in cells.groupby(['model', 'dataset', 'group'], sort=False):
        base = pooled[(pooled['model'] == backbone_of(model)) & (pooled['dataset'] == dataset)]
        if backbone_of(model) != model and not base.empty:
            best = rc.select_best(base, by).iloc[0]
            backbones.append({'group': group, 'model': best['model'], 'n_seeds': int(best['n_seeds']),
                              'mean': best[f'{metric}_mean'], 'std': best[f'{metric}_std'],
                              'config': rc.short_config(best['config'])})
    return cells, curves, pd.DataFrame(backbones, columns=['group', 'model', 'n_seeds', 'mean', 'std', 'config'])


def command(opts: argparse.Namespace) -> dict:
    """``analyze.py sensitivity``: curves and cells (PNG, CSVs) and their tables in markdown."""
    if not opts.metric.startswith(('dev_', 'test_')):
        raise ValueError(f'--metric {opts.metric}: use a dev_ or test_ metric column, e.g. test_NDCG@5')
    cells, curves, backbones = sensitivity_tables(rc.read_many(opts.csv), opts.metric, opts.by,
                                                  [m for m in opts.models.split(',') if m] or None, opts.where,
                                                  rc.parse_pool(opts.pool))
    stem = out_stem(opts, 'sensitivity')
    curves.to_csv(stem + '.csv', index=False)
    cells.to_csv(stem + '_cells.csv', index=False)
    figures.sensitivity_lines(curves, opts.metric, stem + '.png', cells, backbones)
    text = (f'# Hyper-parameter sensitivity ({opts.metric})\n\nSource: `{csv_sources(opts)}`. Each (K, λ) cell is the '
            f'configuration with the best mean {opts.by} (other hyper-parameters) and its mean {opts.metric} over '
            'seeds; curves average the cells over the other parameter, as in the paper. The figure shows the cells '
            'as faint dots and the backbone (X for X_LRD, its best configuration in the same results) as a dashed '
            'line.\n\n## vs K\n\n'
            + markdown_table(curves[curves['param'] == 'latent_relation_num'].drop(columns='param'))
            + '\n## vs λ\n\n' + markdown_table(curves[curves['param'] == 'lamda'].drop(columns='param'))
            + '\n## Cells\n\n' + markdown_table(cells.drop(columns='group'))
            + '\n## Backbone\n\n' + (markdown_table(backbones.drop(columns='group')) if not backbones.empty
                                        else 'No runs of the backbone in these results.\n'))
    write_text(stem + '.md', text)
    return {'png': stem + '.png', 'csv': stem + '.csv', 'md': stem + '.md', 'cells': cells, 'curves': curves,
            'backbones': backbones}
