"""Fig. 4: the item pairs each relation scores highest (by q and by DistMult), how often each relation wins,
and what the pairs of each relation share in the catalogue; pairs are streamed, never all held at once."""
from __future__ import annotations

import argparse
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from analysis.output import out_stem, short, write_text
from analysis.trained import item_texts, relation_labels, require_relational, trained_from_cli
from utils import figures
from utils.reports import markdown_table

if TYPE_CHECKING:
    from helpers.BaseReader import BaseReader
    from models.BaseModel import BaseModel


def observed_pairs(corpus: BaseReader, history_max: int, block: int = 200_000) -> np.ndarray:
    """Unique (history item, target) pairs of the training instances (history window ``history_max``), P × 2."""
    train = corpus.data_df['train']
    users = train['user_id'].to_numpy()
    positions = train['position'].to_numpy()
    keep = positions > 0
    users, positions, targets = users[keep], positions[keep], train['item_id'].to_numpy()[keep]
    n = np.int64(corpus.n_items)
    keys = []
    for start in range(0, len(users), block):
        items, _, _ = corpus.gather_history(users[start:start + block], positions[start:start + block], history_max)
        target = np.broadcast_to(targets[start:start + block, None], items.shape)
        valid = (items > 0) & (items != target)
        keys.append(np.unique(items[valid].astype(np.int64) * n + target[valid]))
    keys = np.unique(np.concatenate(keys)) if keys else np.zeros(0, dtype=np.int64)
    return np.stack([keys // n, keys % n], axis=1)


def all_pairs_chunks(n_items: int, chunk: int) -> Iterator[np.ndarray]:
    """Every ordered pair (i, j) of distinct items 1..n_items-1, in chunks (never materialised at once)."""
    m = n_items - 1
    for start in range(0, m * m, chunk):
        flat = np.arange(start, min(start + chunk, m * m), dtype=np.int64)
        i, j = flat // m + 1, flat % m + 1
        keep = i != j
        yield np.stack([i[keep], j[keep]], axis=1)


def score_pairs(model: BaseModel, pairs: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
    """Scores of pairs under every relation: ``(q, phi)``, each P × R (q None without LRD)."""
    import torch
    with torch.no_grad():
        i = torch.as_tensor(pairs[:, 0], dtype=torch.long)
        j = torch.as_tensor(pairs[:, 1], dtype=torch.long)
        entity = model.entity_embeddings
        phi = (entity(i) * entity(j)) @ model.relation_embeddings.weight.T  # DistMult <v_i, r, v_j>
        lrd = getattr(model, 'lrd', None)
        q = lrd.relation_distribution(i, j) if lrd is not None else None
    return (q.numpy() if q is not None else None), phi.numpy()


def pair_relations(corpus: BaseReader, pairs: np.ndarray) -> np.ndarray:
    """P × (predefined relations) bools: which known relations link each pair (i, j). Item-item relations (the
    ``r_`` columns) in either direction; attribute relations when i and j have the same, known value. Column 0
    (the virtual sequence relation) is False: every observed pair has it."""
    i, j = pairs[:, 0].astype(np.int64), pairs[:, 1].astype(np.int64)
    holds = np.zeros((len(pairs), corpus.n_relations), dtype=bool)
    for r in range(1, corpus.n_relations):
        if r <= len(corpus.item_relations):
            holds[:, r] = corpus.has_triplets(i, r, j) | corpus.has_triplets(j, r, i)
        else:
            value = corpus.item_val[i, r]
            holds[:, r] = (value != 0) & (value == corpus.item_val[j, r])
    return holds


class TopK:
    """Running top-n rows per column of streamed score matrices."""

    def __init__(self, n: int, columns: int):
        self.n = n
        self.values = np.full((0, columns), -np.inf)
        self.pairs = np.zeros((0, columns, 2), dtype=np.int64)

    def update(self, scores: np.ndarray, pairs: np.ndarray) -> None:
        values = np.concatenate([self.values, scores])
        candidates = np.concatenate([self.pairs, np.broadcast_to(pairs[:, None, :], (len(pairs), scores.shape[1], 2))])
        keep = min(self.n, len(values))
        order = np.argsort(-values, axis=0, kind='stable')[:keep]
        self.values = np.take_along_axis(values, order, axis=0)
        self.pairs = np.take_along_axis(candidates, order[:, :, None], axis=0)


def top_pairs(model: BaseModel, corpus: BaseReader, source: str = 'observed', top_n: int = 5, chunk_size: int = 65536,
              max_pairs: int = 10_000_000, history_max: int = 20) -> dict:
    """Top-n pairs per relation by q and by φ, plus per-relation usage over all scored pairs."""
    R = model.relation_num
    if source == 'all':
        total = (corpus.n_items - 1) ** 2
        if total > max_pairs:
            raise ValueError(f'--pair_source all would score {total:,} pairs (> --max_pairs {max_pairs:,}); '
                             'use --pair_source observed')
        chunks = all_pairs_chunks(corpus.n_items, chunk_size)
    else:
        pairs = observed_pairs(corpus, history_max)
        chunks = (pairs[s:s + chunk_size] for s in range(0, len(pairs), chunk_size))
    has_q = getattr(model, 'lrd', None) is not None
    top = {'phi': TopK(top_n, R)}
    if has_q:
        top['q'] = TopK(top_n, R)
    usage = {'argmax_q': np.zeros(R), 'sum_q': np.zeros(R), 'argmax_phi': np.zeros(R)}
    shared = {'q': np.zeros((R, corpus.n_relations)), 'all': np.zeros(corpus.n_relations)}
    n_pairs = 0
    for chunk in chunks:
        if not len(chunk):
            continue
        q, phi = score_pairs(model, chunk)
        n_pairs += len(chunk)
        top['phi'].update(phi, chunk)
        usage['argmax_phi'] += np.bincount(phi.argmax(1), minlength=R)
        if q is not None:
            top['q'].update(q, chunk)
            usage['argmax_q'] += np.bincount(q.argmax(1), minlength=R)
            usage['sum_q'] += q.sum(0)
            holds = pair_relations(corpus, chunk).astype(np.float64)
            shared['q'] += q.astype(np.float64).T @ holds
            shared['all'] += holds.sum(0)
    return {'top': top, 'usage': usage, 'shared': shared, 'n_pairs': n_pairs, 'has_q': has_q}


def command(opts: argparse.Namespace, extra: list[str]) -> dict:
    """``analyze.py pairs``: top pairs with their texts (CSV, markdown), relation usage (PNG, CSV)."""
    trained = trained_from_cli(opts, extra)
    require_relational(trained)
    model, corpus, args = trained.model, trained.corpus, trained.args
    labels = relation_labels(model, corpus)
    found = top_pairs(model, corpus, opts.pair_source, opts.top_n, opts.chunk_size, opts.max_pairs,
                      history_max=args.history_max)
    texts = item_texts(corpus)
    wanted = [int(r) for r in opts.relations.split(',') if r.strip()] or list(range(model.relation_num))
    records = []
    for score in ('q', 'phi'):
        if score not in found['top']:
            continue
        tk = found['top'][score]
        for r in wanted:
            chosen = tk.pairs[:, r]
            if not len(chosen):
                continue
            q, phi = score_pairs(model, chosen)
            for rank, (i, j) in enumerate(chosen, start=1):
                records.append({'relation_id': r, 'relation': labels[r], 'ranked_by': score, 'rank': rank,
                                'item_i': int(i), 'item_j': int(j),
                                'q': float(q[rank - 1, r]) if q is not None else float('nan'),
                                'phi': float(phi[rank - 1, r]), 'text_i': texts[i], 'text_j': texts[j]})
    table = pd.DataFrame(records)
    stem = out_stem(opts, f'pairs_{args.model_name}_{args.dataset}')
    table.to_csv(stem + '.csv', index=False)
    n = max(found['n_pairs'], 1)
    usage = pd.DataFrame({'relation': labels, 'share_argmax_phi': found['usage']['argmax_phi'] / n})
    panels = {'share of pairs, argmax φ': usage['share_argmax_phi'].to_numpy()}
    if found['has_q']:
        usage['share_argmax_q'] = found['usage']['argmax_q'] / n
        usage['mean_q'] = found['usage']['sum_q'] / n
        panels = {'share of pairs, argmax q': usage['share_argmax_q'].to_numpy(),
                  'mean q': usage['mean_q'].to_numpy(), **panels}
    usage.to_csv(stem + '_usage.csv', index=False)
    shared = shared_relations(found, labels, model.n_predefined_relations)
    if shared is not None:
        shared.to_csv(stem + '_shared.csv', index=False)
    figures.relation_usage(labels, panels, model.n_predefined_relations, stem + '.png',
                           title=f'{args.model_name} on {args.dataset}: relations over {found["n_pairs"]:,} '
                                 f'{opts.pair_source} item pairs')
    lines = [f'# Top item pairs per relation: {args.model_name} on {args.dataset}', '',
             f'Checkpoint: `{args.model_path}`. Scored {found["n_pairs"]:,} item pairs: '
             + ('the (history item, target) pairs of the training sequences' if opts.pair_source == 'observed'
                else 'all ordered pairs of distinct items')
             + ('. q = q(r | i, j) of the relation extractor (Eq. 4)' if found['has_q'] else '')
             + '; φ = DistMult ⟨v_i, r, v_j⟩ on the ID embeddings.', '']
    for r in wanted:
        lines += [f'## Relation {labels[r]}', '']
        for score, title in (('q', 'by q'), ('phi', 'by φ')):
            sub = table[(table['relation_id'] == r) & (table['ranked_by'] == score)] if len(table) else table
            if sub.empty:
                continue
            show = pd.DataFrame({'#': sub['rank'], 'item i': sub['item_i'],
                                 'text i': [short(t) for t in sub['text_i']],
                                 'item j': sub['item_j'], 'text j': [short(t) for t in sub['text_j']],
                                 'q': sub['q'], 'φ': sub['phi']})
            if not found['has_q']:
                show = show.drop(columns='q')
            lines += [f'Top {opts.top_n} {title}:', '', markdown_table(show)]
    lines += ['## Relation usage over all scored pairs', '', markdown_table(usage)]
    if shared is not None:
        lines += ['## What the pairs of each relation share', '',
                  'Of the q mass each relation gets, the share on pairs that a known relation links (item-item '
                  'relations in either direction; attribute relations: the same known value); the first row is '
                  'the share of all scored pairs. A relation whose row equals the first row tells those pairs '
                  'apart no better than chance.', '', markdown_table(shared, floatfmt='.3f')]
    write_text(stem + '.md', '\n'.join(lines))
    return {'png': stem + '.png', 'csv': stem + '.csv', 'md': stem + '.md', 'table': table, 'usage': usage,
            'shared': shared, 'n_pairs': found['n_pairs']}


def shared_relations(found: dict, labels: list[str], n_pre: int) -> pd.DataFrame | None:
    """Per relation r: Σ q_r · [pair linked by known relation p] / Σ q_r, for each predefined p ≥ 1; first
    row: the share of all pairs. Why: whether q separates pairs by something the catalogue knows is the
    plainest test that LRD discovered anything (a q that is the same for every pair gives the first row)."""
    if not found['has_q'] or n_pre < 2:
        return None
    columns = [f'linked by {label}' for label in labels[1:n_pre]]
    mass = found['usage']['sum_q']
    rows = np.vstack([found['shared']['all'][None, 1:] / max(found['n_pairs'], 1),
                      found['shared']['q'][:, 1:] / np.clip(mass[:, None], 1e-12, None)])
    table = pd.DataFrame(rows, columns=columns)
    table.insert(0, 'q mass', np.concatenate([[float(found['n_pairs'])], mass]) / max(found['n_pairs'], 1))
    table.insert(0, 'relation', ['all scored pairs'] + labels)
    return table
