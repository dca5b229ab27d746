"""Analyses of LRD (paper §4.3–4.5): each sub-command writes a PNG plus the numbers behind it (CSV, markdown).

    python src/analyze.py ablation    --csv results/office_ablation.csv                       # Fig. 2
    python src/analyze.py heatmap     --model_name KDA_LRD --dataset Office --model_path M.pt [model args]  # Fig. 3
    python src/analyze.py pairs       --model_name KDA_LRD --dataset Office --model_path M.pt [model args]  # Fig. 4
    python src/analyze.py case        --model_name KDA_LRD --dataset Office --model_path M.pt \\
                                      --baseline_path KDA.pt [--user_id U] [model args]       # Fig. 5
    python src/analyze.py sensitivity --csv results/office.csv                                # Fig. 6

The model sub-commands take main.py's arguments (the model must be built exactly as trained), or ``--csv
results.csv`` to take the arguments and checkpoint of the best configuration there (by ``--by``, seed
``--seed``); main.py arguments given as well override those. Outputs go to ``--out_dir`` (docs/figures).
See docs/analyses.md.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from utils import experiments as ex  # noqa: E402
from utils import figures  # noqa: E402
from utils import results_csv as rc  # noqa: E402
from utils.reports import backbone_of, markdown_table  # noqa: E402
from utils.runtime import REPO_DIR  # noqa: E402

if TYPE_CHECKING:
    from helpers.BaseReader import BaseReader
    from models.BaseModel import BaseModel

DEFAULT_OUT_DIR = str(REPO_DIR / 'docs' / 'figures')
MODEL_COMMANDS = ('heatmap', 'pairs', 'case')
CSV_COMMANDS = ('ablation', 'sensitivity')


# --------------------------------------------------------------------------- parsers

def _common(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument('--out_dir', type=str, default=DEFAULT_OUT_DIR, help='Folder for the PNG, CSV and markdown.')
    parser.add_argument('--name', type=str, default='', help='File name stem of the outputs (default: per analysis).')
    return parser


def _model_source(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument('--csv', type=str, default='',
                        help='Results CSV of exp.py: load the best configuration of --model_name (its arguments '
                             'and checkpoint) instead of passing them.')
    parser.add_argument('--by', type=str, default='dev_NDCG@5', help='Dev metric that picks the configuration.')
    parser.add_argument('--seed', type=int, default=None,
                        help='Which seed\'s checkpoint of that configuration (default: the lowest).')
    parser.add_argument('--min_seeds', type=int, default=1,
                        help='Only configurations with at least this many finished seeds are eligible.')
    parser.add_argument('--where', type=str, action='append', default=[],
                        help='Filter the CSV rows (name=value), as in exp.py select.')
    return parser


def _pool(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument('--pool', type=str, default=','.join(rc.RESOURCE_ARGS),
                        help='Arguments left out of a configuration, as in exp.py report: seeds run with different '
                             "budgets (or data paths, with 'path' added) count as one; '' keeps every argument.")
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='analyze.py', description=__doc__.split('\n')[0], allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest='command', required=True)

    p = _pool(_common(sub.add_parser('ablation', allow_abbrev=False,
                                     help='Fig. 2: full model vs w/o LLM, KGE, LRD loss, LRD.')))
    p.add_argument('--csv', type=str, nargs='+', required=True,
                   help='Results CSV(s) of exp.py holding the variants (and the backbone), read as one table.')
    p.add_argument('--by', type=str, default='dev_NDCG@5', help='Dev metric that picks each variant\'s configuration.')
    p.add_argument('--min_seeds', type=int, default=1,
                   help='Only configurations with at least this many finished seeds are eligible.')
    p.add_argument('--metrics', type=str, default='NDCG@5,HR@5', help='Test metrics to plot.')
    p.add_argument('--split', type=str, default='test', choices=['test', 'dev'], help='Split of the plotted metrics.')
    p.add_argument('--models', type=str, default='', help='LRD models to analyse (default: every *_LRD model).')
    p.add_argument('--where', type=str, action='append', default=[], help='Filter rows (name=value).')

    p = _common(_model_source(sub.add_parser(
        'heatmap', allow_abbrev=False, help='Fig. 3: cosine similarity of the relation embeddings.')))

    p = _common(_model_source(sub.add_parser(
        'pairs', allow_abbrev=False, help='Fig. 4: top item pairs per relation, by q and by DistMult.')))
    p.add_argument('--top_n', type=int, default=5, help='Pairs per relation and score.')
    p.add_argument('--pair_source', type=str, default='observed', choices=['observed', 'all'],
                   help='observed: (history item, target) pairs of the training sequences; all: every item pair '
                        '(small catalogues only, see --max_pairs).')
    p.add_argument('--max_pairs', type=int, default=10_000_000,
                   help='Refuse --pair_source all above this many pairs.')
    p.add_argument('--chunk_size', type=int, default=65536, help='Pairs scored at a time.')
    p.add_argument('--relations', type=str, default='', help='Comma-separated relation ids to list (default: all).')

    p = _common(_model_source(sub.add_parser(
        'case', allow_abbrev=False, help="Fig. 5: one user's test instance, with and without LRD.")))
    p.add_argument('--user_id', type=int, default=None,
                   help='Internal user id (default: the test user whose target rank LRD improves most).')
    p.add_argument('--baseline_path', type=str, default='', help='Checkpoint of the model without LRD.')
    p.add_argument('--baseline_model_name', type=str, default='',
                   help='Model class of the baseline checkpoint (default: the model name without _LRD).')
    p.add_argument('--baseline_args', type=str, default='',
                   help="main.py arguments of the baseline beyond the shared ones, e.g. '--num_layers 5'.")

    p = _pool(_common(sub.add_parser('sensitivity', allow_abbrev=False,
                                     help='Fig. 6: metric vs K (averaged over λ) and vs λ (averaged over K).')))
    p.add_argument('--csv', type=str, nargs='+', required=True,
                   help='Results CSV(s) of exp.py with a K × λ grid, read as one table.')
    p.add_argument('--metric', type=str, default='test_NDCG@5', help='Plotted metric column.')
    p.add_argument('--by', type=str, default='dev_NDCG@5',
                   help='Dev metric that picks the other hyper-parameters within each (K, λ) cell.')
    p.add_argument('--models', type=str, default='', help='LRD models (default: every model with K and λ).')
    p.add_argument('--where', type=str, action='append', default=[], help='Filter rows (name=value).')
    return parser


# --------------------------------------------------------------------------- loading trained models

@dataclass
class Trained:
    model: BaseModel
    corpus: BaseReader
    args: argparse.Namespace
    model_cls: type
    argv: list[str]


def load_trained(main_argv: list[str], model_path: str | None = None, strict: bool = True) -> Trained:
    """Build the model main.py would build from ``main_argv`` (on CPU) and load its checkpoint."""
    import torch
    import main
    from utils.corpus_cache import load_corpus
    from utils.runtime import configure_cpu
    parser, model_cls, reader_cls, _ = main.build_parser(main_argv)
    args = parser.parse_args(main_argv) if strict else parser.parse_known_args(main_argv)[0]
    configure_cpu(args)
    path = model_path or args.model_path
    if not path:
        raise ValueError(f'{args.model_name}: give the checkpoint with --model_path (or use --csv)')
    if not os.path.exists(path):
        raise FileNotFoundError(f'checkpoint {path} not found')
    args.gpu, args.device, args.model_path = '', torch.device('cpu'), path
    corpus = load_corpus(reader_cls, args)
    model = model_cls(args, corpus)
    model.load_model(path)
    model.eval()
    return Trained(model, corpus, args, model_cls, list(main_argv))


def argv_from_csv(csv: str, model_name: str, dataset: str | None, by: str, seed: int | None,
                  where: list[str] | None = None, min_seeds: int = 1) -> list[str]:
    """main.py arguments (checkpoint included) of the best configuration of ``model_name`` in a results CSV."""
    rows = rc.filter_rows(rc.read_results(csv), where, models=[model_name], datasets=[dataset] if dataset else None)
    best = rc.select_best(rows, by, min_seeds)
    if best.empty:
        raise ValueError(f'no finished {model_name} runs in {csv}' + (f' on {dataset}' if dataset else ''))
    if len(best) > 1:
        raise ValueError(f'{csv} has {model_name} runs on several datasets ({", ".join(best["dataset"])}): '
                         'pick one with --dataset')
    runs = rows[rows['config'] == best['config'].iloc[0]].sort_values('seed')
    if seed is not None:
        runs = runs[runs['seed'] == seed]
        if runs.empty:
            raise ValueError(f'the best {model_name} configuration in {csv} has no run with seed {seed}')
    return shlex.split(runs['argv'].iloc[0])


def trained_from_cli(opts: argparse.Namespace, extra: list[str]) -> Trained:
    model_name = ex.peek_arg(extra, 'model_name')
    if opts.csv:
        if not model_name:
            raise ValueError('with --csv, name the model: --model_name KDA_LRD')
        argv = argv_from_csv(opts.csv, model_name, ex.peek_arg(extra, 'dataset'), opts.by, opts.seed, opts.where,
                             opts.min_seeds) + extra
    else:
        argv = extra
        if not model_name:
            raise ValueError('name the model and its checkpoint: --model_name KDA_LRD --dataset Office '
                             '--model_path model/....pt [model arguments as trained]')
    return load_trained(argv)


# --------------------------------------------------------------------------- helpers

def relation_labels(model: BaseModel, corpus: BaseReader) -> list[str]:
    """``0 virtual``, ``1 complement`` ... (the corpus' r_ then i_ columns), then ``5 latent 1`` ..."""
    names = ['virtual'] + [c[2:] for c in getattr(corpus, 'item_relations', [])] \
        + [c[2:] for c in getattr(corpus, 'attr_relations', [])]
    n_pre = model.n_predefined_relations
    if len(names) != n_pre:  # a reader with other relation names
        names = (names + [f'predefined {i}' for i in range(len(names), n_pre)])[:n_pre]
    names += [f'latent {k + 1}' for k in range(model.relation_num - n_pre)]
    return [f'{i} {name}' for i, name in enumerate(names)]


def item_texts(corpus: BaseReader) -> list[str]:
    """Item texts by id when the dataset has them (any reader), else ids as text."""
    from helpers.LRDReader import LRDReader
    try:
        return LRDReader.item_texts(corpus, 'empty')
    except Exception:  # no <Dataset>.text / .item2index
        return [f'item {i}' for i in range(corpus.n_items)]


def _short(text: str, width: int = 70) -> str:
    text = ' '.join(str(text).split())
    return text if len(text) <= width else text[:width - 1] + '…'


def _stem(opts: argparse.Namespace, default: str) -> str:
    os.makedirs(opts.out_dir, exist_ok=True)
    return os.path.join(opts.out_dir, opts.name or default)


def _sources(opts: argparse.Namespace) -> str:
    return ' '.join(opts.csv)


def _write(path: str, text: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, 'w') as f:
        f.write(text)
    return path


def _require_relational(trained: Trained) -> None:
    for attr in ('relation_embeddings', 'entity_embeddings', 'n_predefined_relations', 'relation_num'):
        if not hasattr(trained.model, attr):
            raise ValueError(f'{trained.args.model_name} is not a relation-aware model (no {attr}); '
                             'use RCF, KDA or their _LRD versions')


# --------------------------------------------------------------------------- ablation (Fig. 2)

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
    backbone (KDA for KDA_LRD). ``pool``: arguments left out of a configuration (:func:`rc.pool_configs`).
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
            if parts['w/o LRD'].empty:  # the backbone itself is "w/o LRD"
                sources['w/o LRD'] = backbone_of(model)
                parts['w/o LRD'] = rows[(rows['model'] == backbone_of(model)) & (rows['dataset'] == dataset)
                                        & (rows['variant'] == 'full')]
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


def cmd_ablation(opts: argparse.Namespace) -> dict:
    metrics = [m.strip() for m in opts.metrics.split(',') if m.strip()]
    summary = ablation_summary(rc.read_many(opts.csv), opts.by, metrics, opts.split,
                               [m for m in opts.models.split(',') if m] or None, opts.where, opts.min_seeds,
                               rc.parse_pool(opts.pool))
    if summary.empty:
        raise ValueError(f'no finished runs of the variants in {_sources(opts)} (min_seeds={opts.min_seeds})')
    stem = _stem(opts, 'ablation')
    summary.to_csv(stem + '.csv', index=False)
    figures.ablation_bars(summary, metrics, stem + '.png')
    stats = [f'{m}_{s}' for m in metrics for s in ('mean', 'std')]
    table = summary[['group', 'variant', 'source_model', 'n_seeds'] + stats + ['config']]
    _write(stem + '.md', f'# Ablation ({opts.split} set, mean ± std over seeds)\n\nSource: `{_sources(opts)}`; each '
           f'variant\'s configuration has the best mean {opts.by}.\n\n' + markdown_table(table))
    return {'png': stem + '.png', 'csv': stem + '.csv', 'md': stem + '.md'}


# --------------------------------------------------------------------------- heatmap (Fig. 3)

def relation_similarity(model: BaseModel) -> np.ndarray:
    weight = model.relation_embeddings.weight.detach().cpu().double().numpy()
    unit = weight / np.clip(np.linalg.norm(weight, axis=1, keepdims=True), 1e-12, None)
    return unit @ unit.T


def cmd_heatmap(opts: argparse.Namespace, extra: list[str]) -> dict:
    trained = trained_from_cli(opts, extra)
    _require_relational(trained)
    model, args = trained.model, trained.args
    labels = relation_labels(model, trained.corpus)
    sim = relation_similarity(model)
    n_pre = model.n_predefined_relations
    stem = _stem(opts, f'heatmap_{args.model_name}_{args.dataset}')
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
    _write(stem + '.md', text)
    return {'png': stem + '.png', 'csv': stem + '.csv', 'md': stem + '.md', 'similarity': sim, 'labels': labels}


# --------------------------------------------------------------------------- pairs (Fig. 4)

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


def cmd_pairs(opts: argparse.Namespace, extra: list[str]) -> dict:
    trained = trained_from_cli(opts, extra)
    _require_relational(trained)
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
    stem = _stem(opts, f'pairs_{args.model_name}_{args.dataset}')
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
                                 'text i': [_short(t) for t in sub['text_i']],
                                 'item j': sub['item_j'], 'text j': [_short(t) for t in sub['text_j']],
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
    _write(stem + '.md', '\n'.join(lines))
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


# --------------------------------------------------------------------------- case study (Fig. 5)

def test_dataset(trained: Trained) -> BaseModel.Dataset:
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


def cmd_case(opts: argparse.Namespace, extra: list[str]) -> dict:
    trained = trained_from_cli(opts, extra)
    _require_relational(trained)
    model, corpus, args = trained.model, trained.corpus, trained.args
    data = test_dataset(trained)
    b_argv = baseline_argv(opts, trained)
    base = load_trained(b_argv, strict=False) if b_argv else None
    base_data = test_dataset(base) if base else None
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
    stem = _stem(opts, f'case_{args.model_name}_{args.dataset}_u{user}')
    table.to_csv(stem + '.csv', index=False)
    rank_line = f'{args.model_name} ranks the target {scores["rank"]} of {scores["n_candidates"]}'
    if base_scores is not None:
        rank_line += f'; {base.args.model_name} ranks it {base_scores["rank"]}'
    panels = {name: scores[key] for key, name in (('attention', 'attention ω (Eq. 12)'),
                                                  ('triplet', 'triplet score'), ('q', 'q(r | i, target)'))
              if key in scores}
    figures.case_panels([f'{p + 1}: {_short(texts[i], 28)}' for p, i in enumerate(history)], labels, panels,
                        model.n_predefined_relations, stem + '.png',
                        title=f'User {user}, target {scores["target"]}: '
                              f'{_short(texts[scores["target"]], 50)}\n{rank_line}')
    summary_cols = ['position', 'item_id', 'text'] + [c for c in table.columns if c.startswith('strongest_')
                                                      or c.startswith('baseline_')]
    show = table[summary_cols].copy()
    show['text'] = [_short(t) for t in show['text']]
    text = (f'# Case study: user {user} on {args.dataset}\n\nTarget: item {scores["target"]} — '
            f'{texts[scores["target"]]}\n\n{rank_line} (rank 1 = top; ties count against the target).\n\n'
            f'Checkpoints: `{args.model_path}`' + (f', baseline `{base.args.model_path}`' if base else '') + '.\n\n'
            'Strongest relation of each history item to the target: argmax over relations of the attention ω '
            '(Eq. 12, softmax over the history per relation), of the triplet score (its pre-softmax DistMult '
            'logit) and of q (the relation extractor).\n\n' + markdown_table(show))
    _write(stem + '.md', text)
    return {'png': stem + '.png', 'csv': stem + '.csv', 'md': stem + '.md', 'user': user, 'scores': scores,
            'baseline_scores': base_scores, 'table': table}


# --------------------------------------------------------------------------- sensitivity (Fig. 6)

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


def cmd_sensitivity(opts: argparse.Namespace) -> dict:
    if not opts.metric.startswith(('dev_', 'test_')):
        raise ValueError(f'--metric {opts.metric}: use a dev_ or test_ metric column, e.g. test_NDCG@5')
    cells, curves, backbones = sensitivity_tables(rc.read_many(opts.csv), opts.metric, opts.by,
                                                  [m for m in opts.models.split(',') if m] or None, opts.where,
                                                  rc.parse_pool(opts.pool))
    stem = _stem(opts, 'sensitivity')
    curves.to_csv(stem + '.csv', index=False)
    cells.to_csv(stem + '_cells.csv', index=False)
    figures.sensitivity_lines(curves, opts.metric, stem + '.png', cells, backbones)
    text = (f'# Hyper-parameter sensitivity ({opts.metric})\n\nSource: `{_sources(opts)}`. Each (K, λ) cell is the '
            f'configuration with the best mean {opts.by} (other hyper-parameters) and its mean {opts.metric} over '
            'seeds; curves average the cells over the other parameter, as in the paper. The figure shows the cells '
            'as faint dots and the backbone (X for X_LRD, its best configuration in the same results) as a dashed '
            'line.\n\n## vs K\n\n'
            + markdown_table(curves[curves['param'] == 'latent_relation_num'].drop(columns='param'))
            + '\n## vs λ\n\n' + markdown_table(curves[curves['param'] == 'lamda'].drop(columns='param'))
            + '\n## Cells\n\n' + markdown_table(cells.drop(columns='group'))
            + '\n## Backbone\n\n' + (markdown_table(backbones.drop(columns='group')) if not backbones.empty
                                        else 'No runs of the backbone in these results.\n'))
    _write(stem + '.md', text)
    return {'png': stem + '.png', 'csv': stem + '.csv', 'md': stem + '.md', 'cells': cells, 'curves': curves,
            'backbones': backbones}


# --------------------------------------------------------------------------- entry point

def run(argv: list[str] | None = None) -> dict:
    """Parse and run one analysis; returns the written paths (and the numbers, for tests)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if argv and argv[0] in MODEL_COMMANDS:
        opts, extra = parser.parse_known_args(argv)
    else:
        opts, extra = parser.parse_args(argv), []
    if opts.command in MODEL_COMMANDS:
        return {'heatmap': cmd_heatmap, 'pairs': cmd_pairs, 'case': cmd_case}[opts.command](opts, extra)
    return {'ablation': cmd_ablation, 'sensitivity': cmd_sensitivity}[opts.command](opts)


def main(argv: list[str] | None = None) -> int:
    try:
        out = run(argv)
    except (ValueError, FileNotFoundError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    for kind in ('png', 'csv', 'md'):
        if kind in out:
            print(f'{kind}: {out[kind]}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
