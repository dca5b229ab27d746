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
This file is the command line; each analysis lives in its own module of ``src/analysis/``. See docs/analyses.md.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from analysis import ablation, case, heatmap, pairs, sensitivity  # noqa: E402
from utils import results_csv as rc  # noqa: E402
from utils.runtime import REPO_DIR  # noqa: E402

DEFAULT_OUT_DIR = str(REPO_DIR / 'docs' / 'figures')
MODEL_COMMANDS = {'heatmap': heatmap, 'pairs': pairs, 'case': case}  # take main.py's arguments besides their own
CSV_COMMANDS = {'ablation': ablation, 'sensitivity': sensitivity}


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
        return MODEL_COMMANDS[opts.command].command(opts, extra)
    return CSV_COMMANDS[opts.command].command(opts)


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
