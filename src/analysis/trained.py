"""A trained model rebuilt exactly as main.py built it (from its arguments, or from the best run of a results
CSV), and the relation names and item texts the figures label it with."""
from __future__ import annotations

import argparse
import os
import shlex
from dataclasses import dataclass
from typing import TYPE_CHECKING

from utils import experiments as ex
from utils import results_csv as rc

if TYPE_CHECKING:
    from helpers.BaseReader import BaseReader
    from models.BaseModel import BaseModel


@dataclass
class Trained:
    """A checkpoint's model in eval mode, with its corpus and the arguments that built it."""

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
    results = rc.read_results(csv)
    datasets = [dataset] if dataset else None
    rows = rc.filter_rows(results, where, models=[model_name], datasets=datasets)
    best = rc.select_best(rows, by, min_seeds)
    if best.empty:
        ablated = rc.filter_rows(results, where, keep_variants=True, models=[model_name], datasets=datasets)
        where_of = {label: f'--where {column}={value}' for column, (value, label) in rc.ABLATIONS.items()}
        asks = sorted({where_of[label] for _, row in ablated.iterrows() for label in rc.ablations_of(row)})
        raise ValueError(f'no finished {model_name} runs in {csv}' + (f' on {dataset}' if dataset else '')
                         + (f'; its ablation runs are taken only when asked for: {" or ".join(asks)}' if asks else ''))
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
    """The model a sub-command names: main.py arguments in ``extra``, or the best run of ``--csv``."""
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
    """Item texts by id when the dataset has them (any reader), else ids as text; a text file that is there but
    malformed is an error, not a silent fallback to ids."""
    from helpers.LRDReader import LRDReader
    try:
        return LRDReader.item_texts(corpus, 'empty')
    except FileNotFoundError:  # no <Dataset>.text / .item2index
        return [f'item {i}' for i in range(corpus.n_items)]


def require_relational(trained: Trained) -> None:
    """Refuse models without relation embeddings (the figures are about relations)."""
    for attr in ('relation_embeddings', 'entity_embeddings', 'n_predefined_relations', 'relation_num'):
        if not hasattr(trained.model, attr):
            raise ValueError(f'{trained.args.model_name} is not a relation-aware model (no {attr}); '
                             'use RCF, KDA or their _LRD versions')
