"""Matplotlib figures of the analyses (paper Fig. 2–6). Every function takes plain arrays/DataFrames and a path,
writes a PNG and returns the path; the numbers behind each figure are written by ``src/analyze.py``."""
from __future__ import annotations

import os

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

VARIANT_COLORS = ['#3b6ea8', '#e08e2b', '#5aa55a', '#c9483c', '#8b6bb1', '#7f7f7f']


def _save(fig, path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=150, bbox_inches='tight')
    plt.close(fig)
    return path


def ablation_bars(summary: pd.DataFrame, metrics: list[str], path: str) -> str:
    """Fig. 2: one panel per metric; groups = model/dataset, bars = variants, error bars = std over seeds.

    ``summary`` has columns ``group``, ``variant``, ``<metric>_mean``, ``<metric>_std`` and optionally ``n_seeds``,
    printed under each bar's value when the bars do not all average the same number of seeds.
    """
    groups = list(dict.fromkeys(summary['group']))
    variants = list(dict.fromkeys(summary['variant']))
    show_n = 'n_seeds' in summary.columns and summary['n_seeds'].nunique() > 1
    width = max(4.0, 1.2 + 1.1 * len(variants) * len(groups)) * len(metrics) / 1.5
    fig, axes = plt.subplots(1, len(metrics), figsize=(width, 3.4), squeeze=False)
    width = 0.8 / max(1, len(variants))
    for ax, metric in zip(axes[0], metrics):
        for v_idx, variant in enumerate(variants):
            sub = summary[summary['variant'] == variant].set_index('group')
            xs, means, stds, labels = [], [], [], []
            for g_idx, group in enumerate(groups):
                if group in sub.index:
                    xs.append(g_idx + (v_idx - (len(variants) - 1) / 2) * width)
                    means.append(sub.loc[group, f'{metric}_mean'])
                    stds.append(sub.loc[group, f'{metric}_std'])
                    n = f"\nn={int(sub.loc[group, 'n_seeds'])}" if show_n else ''
                    labels.append(f'{means[-1]:.3f}{n}')
            bars = ax.bar(xs, means, width * 0.95, yerr=stds, capsize=3, label=variant,
                          color=VARIANT_COLORS[v_idx % len(VARIANT_COLORS)])
            for bar, label in zip(bars, labels):  # the value at the bar's foot, clear of the error bar
                ax.annotate(label, (bar.get_x() + bar.get_width() / 2, 0), xytext=(0, 4),
                            textcoords='offset points', ha='center', va='bottom', fontsize=7, color='white')
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels(groups)
        ax.set_ylabel(metric)
        ax.set_title(metric)
        tops = (summary[f'{metric}_mean'] + summary[f'{metric}_std'].fillna(0)).to_numpy(dtype=float)
        if len(tops) and np.isfinite(tops).any():  # bars start at 0: a cut axis exaggerates small gaps
            ax.set_ylim(0.0, np.nanmax(tops) * 1.08)
        ax.grid(axis='y', alpha=0.3)
    axes[0][-1].legend(fontsize=8, loc='upper left', bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    return _save(fig, path)


def relation_heatmap(similarity: np.ndarray, labels: list[str], n_predefined: int, path: str, title: str = '') -> str:
    """Fig. 3: cosine similarity of relation embeddings; a line separates predefined from latent relations."""
    n = len(labels)
    size = max(4.5, 0.45 * n + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(similarity, cmap='RdBu_r', vmin=-1, vmax=1)
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    ax.set_xticklabels(labels, rotation=60, ha='right', fontsize=8)
    ax.set_yticklabels(labels, fontsize=8)
    if 0 < n_predefined < n:
        for pos in (n_predefined - 0.5,):
            ax.axhline(pos, color='black', linewidth=2)
            ax.axvline(pos, color='black', linewidth=2)
        ax.text(n_predefined / 2 - 0.5, -0.9, 'predefined', ha='center', va='bottom', fontsize=9)
        ax.text((n_predefined + n) / 2 - 0.5, -0.9, 'latent', ha='center', va='bottom', fontsize=9)
    if n <= 16:
        for i in range(n):
            for j in range(n):
                ax.text(j, i, f'{similarity[i, j]:.2f}', ha='center', va='center', fontsize=6,
                        color='white' if abs(similarity[i, j]) > 0.6 else 'black')
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label='cosine similarity')
    if title:
        ax.set_title(title, pad=30)
    fig.tight_layout()
    return _save(fig, path)


def relation_usage(labels: list[str], panels: dict[str, np.ndarray], n_predefined: int, path: str,
                   title: str = '') -> str:
    """Bars per relation (e.g. share of pairs whose most likely relation is r; mean q), latent ones shaded."""
    fig, axes = plt.subplots(len(panels), 1, figsize=(max(5.0, 0.5 * len(labels) + 2), 2.6 * len(panels)),
                             squeeze=False)
    colors = ['#3b6ea8' if i < n_predefined else '#e08e2b' for i in range(len(labels))]
    for ax, (name, values) in zip(axes[:, 0], panels.items()):
        ax.bar(range(len(labels)), values, color=colors)
        ax.set_ylabel(name, fontsize=8)
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels, rotation=60, ha='right', fontsize=8)
        ax.grid(axis='y', alpha=0.3)
    if title:
        axes[0, 0].set_title(title)
    fig.tight_layout()
    return _save(fig, path)


def case_panels(history_labels: list[str], relation_labels: list[str], panels: dict[str, np.ndarray],
                n_predefined: int, path: str, title: str = '') -> str:
    """Fig. 5: per history item (rows) × relation (columns) heatmaps, the row maximum boxed."""
    fig, axes = plt.subplots(1, len(panels), figsize=((0.3 * len(relation_labels) + 2.8) * len(panels),
                                                      max(2.5, 0.4 * len(history_labels) + 1.8)), squeeze=False)
    for idx, (ax, (name, matrix)) in enumerate(zip(axes[0], panels.items())):
        image = ax.imshow(matrix, cmap='viridis', aspect='auto')
        ax.set_xticks(range(len(relation_labels)))
        ax.set_xticklabels(relation_labels, rotation=60, ha='right', fontsize=7)
        ax.set_yticks(range(len(history_labels)))
        ax.set_yticklabels(history_labels if idx == 0 else [''] * len(history_labels), fontsize=7)
        if 0 < n_predefined < len(relation_labels):
            ax.axvline(n_predefined - 0.5, color='white', linewidth=1.5)
        for row, col in enumerate(np.argmax(matrix, axis=1)):
            ax.add_patch(plt.Rectangle((col - 0.5, row - 0.5), 1, 1, fill=False, edgecolor='red', linewidth=1.5))
        ax.set_title(name, fontsize=9)
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def sensitivity_lines(curves: pd.DataFrame, metric: str, path: str, cells: pd.DataFrame | None = None,
                      backbones: pd.DataFrame | None = None) -> str:
    """Fig. 6: ``metric`` vs K (averaged over λ) and vs λ (averaged over K), one line per model/dataset.

    ``curves`` has columns ``param`` ('latent_relation_num' or 'lamda'), ``value``, ``group``, ``mean``. The
    ``cells`` (``group``, ``latent_relation_num``, ``lamda``, ``mean``) each curve point averages are drawn as
    faint dots, so that a reader sees the spread behind a small difference of means; ``backbones`` (``group``,
    ``model``, ``mean``) as dashed lines: is any setting better than the model without LRD?
    """
    params = [('latent_relation_num', 'K (number of latent relations), averaged over λ'),
              ('lamda', 'λ (weight of the LRD loss), averaged over K')]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for ax, (param, label) in zip(axes, params):
        sub = curves[curves['param'] == param]
        for g_idx, (group, rows) in enumerate(sub.groupby('group', sort=False)):
            color = VARIANT_COLORS[g_idx % len(VARIANT_COLORS)]
            rows = rows.sort_values('value')
            ax.plot(rows['value'].to_numpy(dtype=float), rows['mean'], marker='o', label=f'{group} (mean)',
                    color=color)
            if cells is not None:
                own = cells[cells['group'] == group]
                ax.scatter(own[param].to_numpy(dtype=float), own['mean'], s=12, color=color, alpha=0.35,
                           label=f'{group} (cells)')
            if backbones is not None:
                for _, base in backbones[backbones['group'] == group].iterrows():
                    ax.axhline(base['mean'], color=color, linestyle='--', linewidth=1,
                               label=f'{base["model"]} (backbone)')
        values = sub['value'].to_numpy(dtype=float)
        if param == 'lamda' and len(values) and (values > 0).all():
            ax.set_xscale('log')  # the paper's grid 0.1, 1, 5, 10
        elif param == 'lamda' and len(values) and (values > 0).any():
            low = values[values > 0].min()
            ax.set_xscale('symlog', linthresh=low)  # λ = 0 beside the paper's log grid
            ax.set_xlim(-low / 2, values.max() * 1.6)
        if len(values):
            ticks = np.unique(values)
            ax.set_xticks(ticks)
            ax.set_xticklabels([f'{v:g}' for v in ticks])
            ax.minorticks_off()
        ax.set_xlabel(label, fontsize=8)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    handles, names = axes[0].get_legend_handles_labels()
    if handles:
        axes[1].legend(handles, names, fontsize=8, loc='upper left', bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    return _save(fig, path)
