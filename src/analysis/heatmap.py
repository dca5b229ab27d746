"""Fig. 3: cosine similarity of the relation embeddings of a trained model, predefined against latent."""
from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from analysis.output import out_stem, write_text
from analysis.trained import relation_labels, require_relational, trained_from_cli
from utils import figures
from utils.reports import markdown_table

if TYPE_CHECKING:
    from models.BaseModel import BaseModel


def relation_similarity(model: BaseModel) -> np.ndarray:
    """Cosine similarity of every pair of relation embeddings, R × R (float64)."""
    weight = model.relation_embeddings.weight.detach().cpu().double().numpy()
    unit = weight / np.clip(np.linalg.norm(weight, axis=1, keepdims=True), 1e-12, None)
    return unit @ unit.T


def command(opts: argparse.Namespace, extra: list[str]) -> dict:
    """``analyze.py heatmap``: the similarity matrix as PNG and CSV, block means in markdown."""
    trained = trained_from_cli(opts, extra)
    require_relational(trained)
    model, args = trained.model, trained.args
    labels = relation_labels(model, trained.corpus)
    sim = relation_similarity(model)
    n_pre = model.n_predefined_relations
    stem = out_stem(opts, f'heatmap_{args.model_name}_{args.dataset}')
    pd.DataFrame(sim, index=labels, columns=labels).rename_axis('relation').to_csv(stem + '.csv')
    figures.relation_heatmap(sim, labels, n_pre, stem + '.png',
                             title=f'{args.model_name} on {args.dataset}: cosine similarity of relation embeddings')
    off = ~np.eye(len(labels), dtype=bool)
    blocks = {'predefined × predefined': (slice(0, n_pre), slice(0, n_pre)),
              'latent × latent': (slice(n_pre, None), slice(n_pre, None)),
              'predefined × latent': (slice(0, n_pre), slice(n_pre, None))}
    stats_rows = []
    for name, (rs, cs) in blocks.items():
        values = sim[rs, cs][off[rs, cs]]
        stats_rows.append({'block': name, 'pairs': int(values.size),
                           'mean cosine': float(values.mean()) if values.size else float('nan')})
    text = (f'# Relation embeddings of {args.model_name} on {args.dataset}\n\nCheckpoint: `{args.model_path}`. '
            f'{n_pre} predefined relations (0 = virtual sequence relation), {len(labels) - n_pre} latent.\n\n'
            '## Mean off-diagonal cosine similarity by block\n\n' + markdown_table(pd.DataFrame(stats_rows))
            + '\n## Cosine similarity\n\n' + markdown_table(pd.DataFrame(sim, columns=labels).assign(
                relation=labels)[['relation'] + labels], floatfmt='.2f'))
    write_text(stem + '.md', text)
    return {'png': stem + '.png', 'csv': stem + '.csv', 'md': stem + '.md', 'similarity': sim, 'labels': labels}
