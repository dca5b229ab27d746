"""Tables of results: Table-3-style mean ± std over seeds, relative improvement and paired t-tests.

The paired t-test compares an LRD model with its backbone seed by seed (``scipy.stats.ttest_rel``, two-sided),
on the seeds both selected configurations have; † marks p ≤ 0.05 and ‡ p ≤ 0.01, as in the paper.
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

from utils.results_csv import CAVEATS, TEXT_VARIANTS, outlier_seeds, short_config, stop_caveats

PAPER_ORDER = ['Caser', 'GRU4Rec', 'SASRec', 'TiSASRec', 'RCF', 'RCF_LRD', 'KDA', 'KDA_LRD']
DAGGER, DOUBLE_DAGGER = '†', '‡'


# --------------------------------------------------------------------------- statistics

def paired_ttest(a: dict, b: dict) -> tuple[float, float, int]:
    """Paired t-test of ``b`` vs ``a`` (dicts seed → value) on their common seeds: ``(t, p, n)``.

    ``t`` > 0 when ``b`` is larger. Fewer than 2 common seeds, or ``a == b`` on every seed, give ``p = nan``
    (no test possible).
    """
    seeds = sorted(set(a) & set(b))
    n = len(seeds)
    if n < 2:
        return float('nan'), float('nan'), n
    x = np.array([a[s] for s in seeds], dtype=float)
    y = np.array([b[s] for s in seeds], dtype=float)
    d = y - x
    if not np.any(d):
        return float('nan'), float('nan'), n  # identical results: nothing to test
    result = stats.ttest_rel(y, x)
    return float(result.statistic), float(result.pvalue), n


def seeds_for_power(t: float, n: int, alpha: float = 0.05, power: float = 0.8, max_n: int = 1000) -> int | None:
    """Paired seeds at which a two-sided paired t-test at ``alpha`` detects, with probability ``power``, the mean
    difference that a test over ``n`` seeds gave statistic ``t`` for (effect size t/√n, noncentral t).

    A planning figure for "should I run more seeds?": it takes the observed difference and spread for the true
    ones, which few seeds measure loosely. ``None`` when no test was possible, or more than ``max_n`` seeds.
    """
    if n < 2 or not np.isfinite(t) or t == 0:
        return None
    sizes = np.arange(2, max_n + 1)
    df = sizes - 1
    critical = stats.t.ppf(1 - alpha / 2, df)
    shift = abs(t) / math.sqrt(n) * np.sqrt(sizes)
    reached = stats.nct.sf(critical, df, shift) + stats.nct.cdf(-critical, df, shift) >= power
    return int(sizes[reached.argmax()]) if reached.any() else None


def significance_mark(p: float) -> str:
    """‡ for p ≤ 0.01, † for p ≤ 0.05, '' otherwise (and for nan)."""
    if p is None or not np.isfinite(p):
        return ''
    if p <= 0.01:
        return DOUBLE_DAGGER
    if p <= 0.05:
        return DAGGER
    return ''


def relative_improvement(new: float, old: float) -> float:
    return (new - old) / old if old else float('nan')


def paired_improvement(a: dict, b: dict) -> float:
    """Relative improvement of ``b``'s mean over ``a``'s (dicts seed → value) on their common seeds, the seeds the
    t-test pairs: with 5 backbone seeds and 2 LRD seeds, comparing all-seed means would mix seed luck into the gain.
    Without a common seed, the means over all seeds."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return relative_improvement(float(np.mean(list(b.values()))), float(np.mean(list(a.values()))))
    return relative_improvement(float(np.mean([b[s] for s in seeds])), float(np.mean([a[s] for s in seeds])))


# --------------------------------------------------------------------------- table data

@dataclass
class Entry:
    dataset: str
    model: str
    config: str
    seeds: list[int]
    values: dict[str, dict[int, float]]          # metric → seed → test value
    mean: dict[str, float] = field(default_factory=dict)
    std: dict[str, float] = field(default_factory=dict)
    dev: float = float('nan')                    # mean of the selection metric
    baseline: str = ''                           # for X_LRD, X+TF, X+TI, ...: the model X it is compared with
    improv: dict[str, float] = field(default_factory=dict)
    t: dict[str, float] = field(default_factory=dict)
    p: dict[str, float] = field(default_factory=dict)
    n_pairs: int = 0
    power_seeds: dict[str, int | None] = field(default_factory=dict)  # metric → seeds_for_power
    caveats: dict[str, list[int]] = field(default_factory=dict)  # CAVEATS key → seeds whose run it applies to


def _parts(model: str) -> tuple[str, bool, tuple[bool, ...]]:
    """``KDA_LRD+TF`` → ``('KDA', True, (False, True))``: backbone, LRD or not, which TEXT_VARIANTS."""
    flags = []
    for _, suffix in reversed(TEXT_VARIANTS):
        flags.append(model.endswith(suffix))
        model = model.removesuffix(suffix)
    lrd = model.endswith('_LRD')
    return model.removesuffix('_LRD'), lrd, tuple(reversed(flags))


def backbone_of(model: str) -> str:
    """The model an LRD or text variant is compared with: ``KDA`` for KDA_LRD, KDA+TF, KDA_LRD+TI+TF."""
    return _parts(model)[0]


def model_order(models: Iterable[str]) -> list[str]:
    """The paper's order, others alphabetically after; each backbone X followed by X_LRD, then its text variants
    (X+TF, X_LRD+TF, ...)."""
    models = list(dict.fromkeys(models))
    backbones = list(dict.fromkeys(backbone_of(m) for m in models))
    rank = {m: i for i, m in enumerate([b for b in PAPER_ORDER if b in backbones]
                                       + sorted(b for b in backbones if b not in PAPER_ORDER))}

    def key(model: str):
        backbone, lrd, flags = _parts(model)
        return rank[backbone], any(flags), flags[0], lrd, flags[1:], model  # text_init groups, then LRD
    return sorted(models, key=key)


def build_table(rows: pd.DataFrame, best: pd.DataFrame, metrics: list[str], by: str = 'dev_NDCG@5') -> list[Entry]:
    """Entries (dataset by dataset, models in :func:`model_order`) of the selected configurations' test metrics."""
    for metric in metrics:
        if f'test_{metric}' not in rows.columns:
            raise ValueError(f'no column test_{metric} in the results')
    entries = []
    for dataset in dict.fromkeys(best['dataset']):
        chosen = best[best['dataset'] == dataset].set_index('model')
        for model in model_order(chosen.index):
            config = chosen.loc[model, 'config']
            runs = rows[(rows['model'] == model) & (rows['dataset'] == dataset) & (rows['config'] == config)]
            seeds = sorted(int(s) for s in runs['seed'])
            values = {m: {int(s): float(v) for s, v in zip(runs['seed'], runs[f'test_{m}'])} for m in metrics}
            dev = float(chosen.loc[model, f'{by}_mean']) if f'{by}_mean' in chosen.columns else float('nan')
            entry = Entry(dataset, model, config, seeds, values, dev=dev)
            for seed, caveat in zip(runs['seed'], stop_caveats(runs)):
                if caveat:
                    entry.caveats.setdefault(caveat, []).append(int(seed))
            outliers = outlier_seeds(runs[by]) if by in runs.columns else pd.Series(False, index=runs.index)
            if outliers.any():
                entry.caveats['outlier'] = sorted(int(s) for s in runs.loc[outliers, 'seed'])
            for m in metrics:
                v = np.array(list(values[m].values()), dtype=float)
                entry.mean[m] = float(v.mean())
                entry.std[m] = float(v.std(ddof=1)) if len(v) > 1 else 0.0
            entries.append(entry)
        by_model = {e.model: e for e in entries if e.dataset == dataset}
        for entry in by_model.values():
            if backbone_of(entry.model) != entry.model and backbone_of(entry.model) in by_model:
                base = by_model[backbone_of(entry.model)]
                entry.baseline = base.model
                for m in metrics:
                    entry.improv[m] = paired_improvement(base.values[m], entry.values[m])
                    entry.t[m], entry.p[m], entry.n_pairs = paired_ttest(base.values[m], entry.values[m])
                    entry.power_seeds[m] = seeds_for_power(entry.t[m], entry.n_pairs)
    return entries


# --------------------------------------------------------------------------- rendering

def _fmt(value: float, digits: int) -> str:
    return 'n/a' if value is None or not np.isfinite(value) else f'{value:.{digits}f}'


def _fmt_p(p: float) -> str:
    if p is None or not np.isfinite(p):
        return 'n/a'
    return f'{p:.2g}' if p < 0.001 else f'{p:.3f}'


def markdown_table(df: pd.DataFrame, floatfmt: str = '.4f') -> str:
    """A DataFrame as a GitHub markdown table ('|' in cells escaped)."""
    def cell(v):
        if isinstance(v, float):
            return '' if math.isnan(v) else format(v, floatfmt)
        return str(v).replace('|', '\\|').replace('\n', ' ')
    lines = ['| ' + ' | '.join(str(c) for c in df.columns) + ' |',
             '|' + '|'.join('---' for _ in df.columns) + '|']
    lines += ['| ' + ' | '.join(cell(v) for v in row) + ' |' for row in df.itertuples(index=False)]
    return '\n'.join(lines) + '\n'


def _best_means(entries: list[Entry], metrics: list[str]) -> dict[tuple[str, str], float]:
    best = {}
    for e in entries:
        for m in metrics:
            key = (e.dataset, m)
            best[key] = max(best.get(key, -np.inf), e.mean[m])
    return best


def _caveat_note(entry: Entry) -> str:
    """`` (budget: seeds 1, 3)`` for the seeds cell; '' when every run of the entry converged."""
    parts = [f'{c}: seed{"s" if len(entry.caveats[c]) > 1 else ""} {", ".join(map(str, sorted(entry.caveats[c])))}'
             for c in CAVEATS if c in entry.caveats]
    return f' ({"; ".join(parts)})' if parts else ''


def _power_note(entries: list[Entry], metrics: list[str]) -> list[str]:
    """A sentence under a dataset's table giving, for each comparison some metric of which is not significant,
    the seeds :func:`seeds_for_power` asks for; no lines when every comparison is significant or untestable."""
    parts = []
    for e in entries:
        if e.baseline and any(np.isfinite(e.t[m]) and e.p[m] > 0.05 for m in metrics):
            counts = ', '.join(f'{m} {e.power_seeds[m] or "> 1000"}' for m in metrics if np.isfinite(e.t[m]))
            parts.append(f'{e.model} vs {e.baseline}: {counts}')
    if not parts:
        return []
    return ['Seeds for 80 % power (a paired t-test at p ≤ 0.05 detecting the mean difference these seeds show, '
            'if it and its spread were the true ones; a planning figure, itself loose with few seeds): '
            + '; '.join(parts) + '.', '']


def render_markdown(entries: list[Entry], metrics: list[str], digits: int = 4, by: str = 'dev_NDCG@5',
                    source: str = '', level: int = 1, notes: Iterable[str] = ()) -> str:
    """One table per dataset: mean ± std of test metrics; the best mean per column in bold; an
    "Improv." row under each X_LRD (and X+TF, X+TI, ...) with the relative improvement over X and the paired t-test
    p-value.
    ``level`` is the heading level of the title (2 or more to nest the table in a page); ``notes`` are sentences
    printed under the tables (which models the selection left out, ...)."""
    best = _best_means(entries, metrics)
    title, sub = '#' * level, '#' * (level + 1)
    out = [f'{title} Overall performance (test set)', '',
           f'Source: `{source}`. Each model\'s configuration is the one with the best mean {by} over seeds; '
           'cells are mean ± std of the test metric over that configuration\'s seeds. '
           f'"Improv." is the relative improvement of X_LRD over X (also of X+TF, X\'s scores fused with the '
           'text similarity by --text_fusion 1, and X+TI, X started from the texts by --text_init 1), of the means '
           'over the seeds both have; p is a two-sided paired t-test over those seeds (scipy.stats.ttest_rel); '
           f'{DAGGER} p ≤ 0.05, {DOUBLE_DAGGER} p ≤ 0.01. '
           'Bold: best mean per column.', '']
    for dataset in dict.fromkeys(e.dataset for e in entries):
        out += [f'{sub} {dataset}', '', '| Model | ' + ' | '.join(metrics) + ' | seeds |',
                '|---|' + '---:|' * len(metrics) + '---:|']
        for e in (x for x in entries if x.dataset == dataset):
            cells = []
            for m in metrics:
                text = f'{_fmt(e.mean[m], digits)} ± {_fmt(e.std[m], digits)}'
                if np.isclose(e.mean[m], best[(dataset, m)]):
                    text = f'**{text}**'
                cells.append(text + significance_mark(e.p.get(m, float('nan'))))
            out.append(f'| {e.model} | ' + ' | '.join(cells) + f' | {len(e.seeds)}{_caveat_note(e)} |')
            if e.baseline:
                cells = [f'{e.improv[m]:+.2%} (p={_fmt_p(e.p[m])}){significance_mark(e.p[m])}' for m in metrics]
                out.append(f'| Improv. vs {e.baseline} | ' + ' | '.join(cells) + f' | {e.n_pairs} paired |')
        out.append('')
        out += _power_note([x for x in entries if x.dataset == dataset], metrics)
    used = [c for c in CAVEATS if any(c in e.caveats for e in entries)]
    if used:
        out += ['Seeds marked ' + '; '.join(f'*{c}*: {CAVEATS[c]}' for c in used) + '.', '']
    out += [line for note in notes for line in (note, '')]
    out += [f'{sub} Selected configurations', '',
            '| Dataset | Model | seeds | ' + f'{by} (mean) | arguments (non-default) |', '|---|---|---|---:|---|']
    for e in entries:
        out.append(f'| {e.dataset} | {e.model} | {",".join(map(str, e.seeds))} | {_fmt(e.dev, digits)} | '
                   f'{short_config(e.config)} |')
    return '\n'.join(out) + '\n'


def _latex_model(name: str) -> str:
    backbone, lrd, flags = _parts(name)
    suffixes = ''.join(suffix for (_, suffix), on in zip(TEXT_VARIANTS, flags) if on)
    return backbone.replace('_', r'\_') + (r'$_{\mathrm{LRD}}$' if lrd else '') + suffixes


def render_latex(entries: list[Entry], metrics: list[str], digits: int = 4) -> str:
    """A booktabs table with the datasets as column groups (the paper's Table 3 layout)."""
    datasets = list(dict.fromkeys(e.dataset for e in entries))
    best = _best_means(entries, metrics)
    short = {m: m.replace('NDCG', 'N').replace('HR', 'H') for m in metrics}
    marks = {DAGGER: r'$^{\dagger}$', DOUBLE_DAGGER: r'$^{\ddagger}$', '': ''}
    lines = [r'\begin{table*}[t]', r'\centering',
             r'\caption{Overall performance (test set, mean $\pm$ std over seeds). Improv.: relative improvement '
             r'of the LRD (or +TF, text-fusion) model over its backbone; $^{\dagger}$/$^{\ddagger}$: '
             r'$p \le 0.05$/$p \le 0.01$ in a paired t-test over seeds.}',
             r'\begin{tabular}{l' + ('c' * len(metrics)) * len(datasets) + '}', r'\toprule',
             'Datasets & ' + ' & '.join(rf'\multicolumn{{{len(metrics)}}}{{c}}{{{d}}}' for d in datasets) + r' \\',
             ''.join(rf'\cmidrule(lr){{{2 + i * len(metrics)}-{1 + (i + 1) * len(metrics)}}}'
                     for i in range(len(datasets))),
             'Metrics & ' + ' & '.join(short[m] for _ in datasets for m in metrics) + r' \\', r'\midrule']
    models = model_order(e.model for e in entries)
    lookup = {(e.dataset, e.model): e for e in entries}
    for model in models:
        cells, improv, has_base = [], [], False
        for d in datasets:
            e = lookup.get((d, model))
            for m in metrics:
                if e is None:
                    cells.append('--')
                    improv.append('')
                    continue
                text = f'{e.mean[m]:.{digits}f}' + r'{\scriptsize$\pm$' + f'{e.std[m]:.{digits}f}' + '}'
                if np.isclose(e.mean[m], best[(d, m)]):
                    text = r'\textbf{' + text + '}'
                cells.append(text + marks[significance_mark(e.p.get(m, float('nan')))])
                if e.baseline:
                    has_base = True
                    improv.append(f'{e.improv[m] * 100:+.2f}\\%')
                else:
                    improv.append('')
        lines.append(_latex_model(model) + ' & ' + ' & '.join(cells) + r' \\')
        if has_base:
            lines.append('Improv. & ' + ' & '.join(improv) + r' \\')
    lines += [r'\bottomrule', r'\end{tabular}', r'\end{table*}']
    return '\n'.join(lines) + '\n'
