"""Fig. 5: one user's test instance, each history item's strongest relation to the target, and the target's rank
with and without LRD."""
from __future__ import annotations

import argparse
import shlex
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from analysis.output import out_stem, short, write_text
from analysis.trained import (Trained, argv_from_csv, item_texts, load_trained, relation_labels, require_relational,
                              trained_from_cli)
from utils import figures
from utils.reports import markdown_table

if TYPE_CHECKING:
    from models.BaseModel import BaseModel


def evaluation_dataset(trained: Trained) -> BaseModel.Dataset:
    """The test instances with their candidates, exactly as the runner evaluates them."""
    dataset = trained.model_cls.Dataset(trained.model, trained.corpus, 'test')
    dataset.prepare()
    return dataset


def all_ranks(trained: Trained, dataset: BaseModel.Dataset, batch: int = 256) -> np.ndarray:
    """Rank of every test instance's target among its candidates (ties against the target)."""
    import torch
    from utils.metrics import rank_of_truth
    ranks = []
    with torch.no_grad():
        for start in range(0, len(dataset), batch):
            feed = dataset[list(range(start, min(start + batch, len(dataset))))]
            ranks.append(rank_of_truth(trained.model(feed)['prediction'].float().numpy()))
    return np.concatenate(ranks) if ranks else np.zeros(0, dtype=np.int64)


def instance(dataset: BaseModel.Dataset, user_id: int) -> tuple[int, dict]:
    """Row index and feed dict of ``user_id``'s test instance (its target in candidate column 0)."""
    rows = np.flatnonzero(dataset.data['user_id'] == user_id)
    if not len(rows):
        raise ValueError(f'user {user_id} has no test instance (test users: 1..{dataset.corpus.n_users - 1})')
    return int(rows[0]), dataset[[int(rows[0])]]


def case_scores(trained: Trained, feed: dict) -> dict:
    """For the target (candidate column 0): rank, and per history item × relation the attention ω (Eq. 12),
    the triplet score (pre-softmax DistMult logit with the relation value) and q."""
    import torch
    from utils.metrics import rank_of_truth
    model = trained.model
    with torch.no_grad():
        prediction = model(feed)['prediction'].float().numpy()
        length = int(feed['lengths'][0])
        history = feed['history_items'][0, :length]
        target = feed['item_id'][0, 0]
        out = {'rank': int(rank_of_truth(prediction)[0]), 'n_candidates': prediction.shape[1],
               'history': history.numpy(), 'target': int(target)}
        if hasattr(model, 'relational_attention'):
            out['attention'] = model.relational_attention(feed)[0, 0, :length].numpy()
            r_vectors = model.relation_vectors(feed)[0, 0] * model.entity_embeddings(target)  # R × d
            out['triplet'] = (model.entity_embeddings(history) @ r_vectors.T).numpy()
        if getattr(model, 'lrd', None) is not None:
            out['q'] = model.lrd.relation_distribution(history, target.expand(length)).numpy()
    return out


def baseline_argv(opts: argparse.Namespace, trained: Trained) -> list[str] | None:
    """main.py arguments of the model without LRD to compare with: ``--baseline_path`` with the LRD model's
    arguments, else the best backbone run of ``--csv``; None when neither is given."""
    name = opts.baseline_model_name or (trained.args.model_name[:-4] if trained.args.model_name.endswith('_LRD')
                                        else '')
    if not opts.baseline_path:
        if opts.csv and name:
            try:
                return argv_from_csv(opts.csv, name, trained.args.dataset, opts.by, opts.seed, opts.where,
                                     opts.min_seeds) + shlex.split(opts.baseline_args)
            except ValueError:
                return None
        return None
    if not name:
        raise ValueError('--baseline_model_name is needed to load --baseline_path')
    argv = list(trained.argv) + ['--model_name', name] + shlex.split(opts.baseline_args) \
        + ['--model_path', opts.baseline_path]
    return argv


def command(opts: argparse.Namespace, extra: list[str]) -> dict:
    """``analyze.py case``: one user's per-relation panels (PNG), the per-item table (CSV, markdown)."""
    trained = trained_from_cli(opts, extra)
    require_relational(trained)
    model, corpus, args = trained.model, trained.corpus, trained.args
    data = evaluation_dataset(trained)
    b_argv = baseline_argv(opts, trained)
    base = load_trained(b_argv, strict=False) if b_argv else None
    base_data = evaluation_dataset(base) if base else None
    user = opts.user_id
    if user is None:  # the user whose target LRD ranks best relative to the baseline
        ranks = all_ranks(trained, data)
        users = data.data['user_id']
        if base is not None:
            base_ranks = pd.Series(all_ranks(base, base_data), index=base_data.data['user_id'])
            gain = base_ranks.reindex(users).to_numpy() - ranks
            order = np.lexsort((ranks, -gain))
        else:
            order = np.lexsort((-data.data['position'], ranks))
        user = int(users[order[0]])
    _, feed = instance(data, user)
    scores = case_scores(trained, feed)
    base_scores = case_scores(base, instance(base_data, user)[1]) if base else None
    if base_scores is not None and base_scores['target'] != scores['target']:
        raise ValueError(f'the baseline\'s test target of user {user} differs ({base_scores["target"]} vs '
                         f'{scores["target"]}): is it trained on the same dataset?')
    labels = relation_labels(model, corpus)
    texts = item_texts(corpus)
    history = scores['history']
    records = []
    for pos, item in enumerate(history):
        record = {'position': pos + 1, 'item_id': int(item), 'text': texts[item]}
        for key in ('attention', 'triplet', 'q'):
            if key in scores:
                best = int(np.argmax(scores[key][pos]))
                record[f'strongest_{key}'] = labels[best]
                record[f'strongest_{key}_value'] = float(scores[key][pos, best])
        if base_scores is not None and 'attention' in base_scores:
            base_labels = relation_labels(base.model, base.corpus)
            best = int(np.argmax(base_scores['attention'][pos]))
            record['baseline_strongest_attention'] = base_labels[best]
        for key in ('attention', 'triplet', 'q'):
            if key in scores:
                for r, label in enumerate(labels):
                    record[f'{key}[{label}]'] = float(scores[key][pos, r])
        records.append(record)
    table = pd.DataFrame(records)
    stem = out_stem(opts, f'case_{args.model_name}_{args.dataset}_u{user}')
    table.to_csv(stem + '.csv', index=False)
    rank_line = f'{args.model_name} ranks the target {scores["rank"]} of {scores["n_candidates"]}'
    if base_scores is not None:
        rank_line += f'; {base.args.model_name} ranks it {base_scores["rank"]}'
    panels = {name: scores[key] for key, name in (('attention', 'attention ω (Eq. 12)'),
                                                  ('triplet', 'triplet score'), ('q', 'q(r | i, target)'))
              if key in scores}
    figures.case_panels([f'{p + 1}: {short(texts[i], 28)}' for p, i in enumerate(history)], labels, panels,
                        model.n_predefined_relations, stem + '.png',
                        title=f'User {user}, target {scores["target"]}: '
                              f'{short(texts[scores["target"]], 50)}\n{rank_line}')
    summary_cols = ['position', 'item_id', 'text'] + [c for c in table.columns if c.startswith('strongest_')
                                                      or c.startswith('baseline_')]
    show = table[summary_cols].copy()
    show['text'] = [short(t) for t in show['text']]
    text = (f'# Case study: user {user} on {args.dataset}\n\nTarget: item {scores["target"]} — '
            f'{texts[scores["target"]]}\n\n{rank_line} (rank 1 = top; ties count against the target).\n\n'
            f'Checkpoints: `{args.model_path}`' + (f', baseline `{base.args.model_path}`' if base else '') + '.\n\n'
            'Strongest relation of each history item to the target: argmax over relations of the attention ω '
            '(Eq. 12, softmax over the history per relation), of the triplet score (its pre-softmax DistMult '
            'logit) and of q (the relation extractor).\n\n' + markdown_table(show))
    write_text(stem + '.md', text)
    return {'png': stem + '.png', 'csv': stem + '.csv', 'md': stem + '.md', 'user': user, 'scores': scores,
            'baseline_scores': base_scores, 'table': table}
