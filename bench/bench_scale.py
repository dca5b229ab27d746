"""How corpus build, training, evaluation and memory grow with data size: synthetic Electronics at 1/8 .. 1.

For each scale it generates ``Electronics_syn_<scale>`` with ``data/make_synthetic.py`` (timed), writes a
seeded random ``<Dataset>.feat.rand`` (items x 384 float32, raw ``tofile``, the authors' layout) so that
KDA_LRD reads text features with ``--plm_name feat:rand`` instead of embedding the texts with MiniLM, then
runs ``bench_model.py`` once per model in its own process (so peak RSS is that model's alone):

    OMP_NUM_THREADS=1 python bench/bench_scale.py                     # scales 0.125,0.25,0.5,1
    OMP_NUM_THREADS=1 python bench/bench_scale.py --scales 1 --models KDA_LRD --results /tmp/scale.jsonl
    python bench/bench_scale.py --results /tmp/scale.jsonl --table_only      # the table again, nothing run

Readers: SeqReader (SASRec), KDAReader with ``--include_attr 1 --freq_rand 1`` (KDA), LRDReader
(KDA_LRD). Epoch and dev-evaluation times are extrapolated from ``--bench_batches`` training and
``--bench_eval_batches`` evaluation batches. Prints one JSON line per run and a markdown table with the
growth ratio between consecutive scales (flagged when clearly super-linear). ``--results FILE`` appends the
rows to a JSON-lines file and builds the table from all rows in it, so scales run separately add up.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
ELECTRONICS = {'users': 192_403, 'items': 63_001, 'interactions': 1_682_498}
FEATURE_DIM = 384  # all-MiniLM-L6-v2's width
PAPER = ['--emb_size', '64', '--num_heads', '4', '--num_layers', '5', '--history_max', '20',
         '--batch_size', '256', '--eval_batch_size', '256']
RELATION = ['--include_attr', '1', '--include_val', '1', '--freq_rand', '1', '--gamma', '-1']
MODELS = {
    'SASRec': ['--model_name', 'SASRec'] + PAPER,
    'KDA': ['--model_name', 'KDA'] + PAPER + RELATION,
    'KDA_LRD': ['--model_name', 'KDA_LRD'] + PAPER + RELATION
               + ['--latent_relation_num', '8', '--lamda', '1', '--plm_name', 'feat:rand'],
}
READERS = {'SASRec': 'SeqReader', 'KDA': 'KDAReader', 'KDA_LRD': 'LRDReader'}
# (label, JSON key, unit); the corpus rows are the reader's, the rest the model's
STEPS = [('corpus build', 'corpus_build_s', 's'), ('RSS after corpus', 'rss_after_corpus_gb', 'GB'),
         ('model + datasets', 'model_and_datasets_s', 's'),
         ('train batch', 'train_batch_s', 's'), ('train epoch, extrapolated', 'epoch_s_extrapolated', 's'),
         ('dev eval batch', 'dev_eval_batch_s', 's'), ('dev eval, extrapolated', 'dev_eval_s_extrapolated', 's'),
         ('peak RSS', 'peak_rss_gb', 'GB')]
SUPER_LINEAR = 2.6  # growth per doubling above this is flagged (2.0 = linear; noise on a shared CPU) ...
FLAG_MIN_S = 10.0  # ... when the larger figure is at least this many seconds (smaller ones are mostly noise)
TARGETS = {'corpus_build_s': 120.0, 'rss_after_corpus_gb': 6.0}  # issue 6, at full size


def dataset_name(scale: float) -> str:
    return f'Electronics_syn_{scale:g}'


def counts(scale: float) -> dict[str, int]:
    """The counts make_synthetic.py uses for ``--scale``."""
    return {k: max(1, round(v * scale)) for k, v in ELECTRONICS.items()}


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_child(cmd: list[str], env: dict) -> tuple[subprocess.CompletedProcess, float, float]:
    """Run a command to completion: the result, its wall seconds and its CPU seconds."""
    cpu, t = children_cpu_s(), time.perf_counter()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    return out, time.perf_counter() - t, children_cpu_s() - cpu


def generate(scale: float, path: str, env: dict, seed: int) -> dict:
    name = dataset_name(scale)
    cmd = [sys.executable, os.path.join(REPO, 'data', 'make_synthetic.py'), '--scale', repr(scale),
           '--dataset', name, '--out', path, '--seed', str(seed)]
    out, wall, cpu = run_child(cmd, env)
    if out.returncode != 0:
        raise RuntimeError(f'generating {name} failed:\n{out.stderr[-3000:]}')
    return {'kind': 'generate', 'scale': scale, 'dataset': name, 'generate_s': round(wall, 2),
            'cpu_s': round(cpu, 1), 'size_mb': round(folder_mb(os.path.join(path, name)), 1), **counts(scale)}


def folder_mb(folder: str) -> float:
    return sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder)) / 1024 ** 2


def write_random_features(folder: str, dataset: str, seed: int) -> str:
    """``<Dataset>.feat.rand``: one float32 row of FEATURE_DIM per item (ids 1..n, no padding row), raw
    ``tofile`` like the authors' files; ``load_feature_file`` prepends the padding row."""
    with open(os.path.join(folder, f'{dataset}.item2index')) as f:
        n_items = sum(1 for line in f if line.strip())
    path = os.path.join(folder, f'{dataset}.feat.rand')
    rng = np.random.default_rng(seed)
    rng.standard_normal((n_items, FEATURE_DIM), dtype=np.float32).tofile(path)
    return path


def bench_one(model: str, scale: float, path: str, env: dict, bench_batches: int, bench_eval_batches: int,
              epochs: int) -> dict:
    cmd = [sys.executable, os.path.join(HERE, 'bench_model.py'), *MODELS[model], '--dataset', dataset_name(scale),
           '--path', path, '--gpu', '', '--bench_epochs', str(epochs), '--bench_batches', str(bench_batches),
           '--bench_eval_batches', str(bench_eval_batches)]
    out, wall, cpu = run_child(cmd, env)
    if out.returncode != 0:
        return {'kind': 'model', 'scale': scale, 'model': model, 'error': out.stderr[-2000:]}
    row = json.loads(out.stdout.strip().splitlines()[-1])
    row.update(kind='model', scale=scale, reader=READERS[model], process_wall_s=round(wall, 1), cpu_s=round(cpu, 1),
               bench_batches=bench_batches, bench_eval_batches=bench_eval_batches)
    return row


def fraction(scale: float) -> str:
    return {0.125: '1/8', 0.25: '1/4', 0.5: '1/2', 1.0: '1'}.get(scale, f'{scale:g}')


def ratio_cell(a, b, doublings: float, unit: str) -> str:
    if a is None or b is None or not a:
        return ''
    ratio = b / a
    per_doubling = ratio ** (1 / doublings) if doublings else ratio
    flag = ' ⚠' if per_doubling > SUPER_LINEAR and (unit != 's' or b >= FLAG_MIN_S) else ''
    return f'{ratio:.2f}×{flag}'


def table(rows: list[dict]) -> str:
    """Markdown: one row per (step, model), one column per scale, then the growth between scales."""
    gens = {r['scale']: r for r in rows if r.get('kind') == 'generate'}
    models = {(r['model'], r['scale']): r for r in rows if r.get('kind') == 'model' and 'error' not in r}
    scales = sorted(set(gens) | {s for _, s in models})
    names = [m for m in MODELS if any((m, s) in models for s in scales)]
    header = ['step', 'model'] + [f'{fraction(s)}' for s in scales] + \
             [f'{fraction(b)} / {fraction(a)}' for a, b in zip(scales, scales[1:])]
    lines = ['| scale | users | items | interactions |', '|---|---|---|---|']
    lines += [f"| {fraction(s)} | {counts(s)['users']:,} | {counts(s)['items']:,} | {counts(s)['interactions']:,} |"
              for s in scales]
    lines += ['', '| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]

    def add(label: str, who: str, values: list, unit: str) -> None:
        cells = ['' if v is None else (f'{v:.2f}' if unit == 'GB' else f'{v:.3f}' if v < 1 else f'{v:,.1f}')
                 for v in values]
        ratios = [ratio_cell(a, b, np.log2(sb / sa), unit) for (a, b), (sa, sb)
                  in zip(zip(values, values[1:]), zip(scales, scales[1:]))]
        lines.append(f'| {label} ({unit}) | {who} | ' + ' | '.join(cells + ratios) + ' |')

    add('generate data', '–', [gens[s]['generate_s'] if s in gens else None for s in scales], 's')
    for label, key, unit in STEPS:
        for m in names:
            who = f'{m} ({READERS[m]})' if key in ('corpus_build_s', 'rss_after_corpus_gb') else m
            add(label, who, [models[(m, s)].get(key) if (m, s) in models else None for s in scales], unit)
    return '\n'.join(lines)


def target_check(rows: list[dict]) -> list[str]:
    out = []
    for r in rows:
        if r.get('kind') == 'model' and r.get('scale') == 1.0 and 'error' not in r:
            for key, limit in TARGETS.items():
                ok = r[key] <= limit
                out.append(f"{'PASS' if ok else 'FAIL'}: {r['reader']} ({r['model']}) {key} = {r[key]} "
                           f"(target <= {limit:g})")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--scales', default='0.125,0.25,0.5,1')
    parser.add_argument('--models', default=','.join(MODELS))
    parser.add_argument('--path', default=os.path.join(REPO, 'data'), help='where the datasets are generated')
    parser.add_argument('--bench_batches', type=int, default=30)
    parser.add_argument('--bench_eval_batches', type=int, default=5)
    parser.add_argument('--epochs', type=int, default=1, help='epochs timed (each from --bench_batches)')
    parser.add_argument('--threads', type=int, default=int(os.environ.get('OMP_NUM_THREADS', 1)))
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--keep', action='store_true', help='keep the generated folders (deleted by default)')
    parser.add_argument('--reuse', action='store_true', help='reuse an existing folder instead of regenerating')
    parser.add_argument('--results', default='', help='JSON-lines file to append to; the table covers all of it')
    parser.add_argument('--table_only', action='store_true', help='only print the table of --results')
    args = parser.parse_args()
    if args.table_only:
        args.scales = ''
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    rows = []

    def emit(row: dict) -> None:
        print(json.dumps(row), flush=True)
        rows.append(row)
        if args.results:
            with open(args.results, 'a') as f:
                f.write(json.dumps(row) + '\n')

    for scale in (float(s) for s in args.scales.split(',') if s):
        name = dataset_name(scale)
        folder = os.path.join(args.path, name)
        if not (args.reuse and os.path.isdir(folder)):
            shutil.rmtree(folder, ignore_errors=True)
            emit(generate(scale, args.path, env, args.seed))
        if 'KDA_LRD' in args.models.split(','):
            write_random_features(folder, name, args.seed)
        try:
            for model in args.models.split(','):
                row = bench_one(model, scale, args.path, env, args.bench_batches, args.bench_eval_batches,
                                args.epochs)
                emit(row)
                if 'error' in row:
                    print(f'{model} at scale {scale:g} failed:\n{row["error"]}', file=sys.stderr)
        finally:
            if not args.keep:
                shutil.rmtree(folder, ignore_errors=True)

    if args.results:
        with open(args.results) as f:
            rows = [json.loads(line) for line in f if line.strip()]
    print(f'\nOMP_NUM_THREADS={args.threads}; train epoch from {args.bench_batches} batches of 256, dev eval from '
          f'{args.bench_eval_batches} batches of 256 (99 negatives), both extrapolated; KDA_LRD reads random '
          f'{FEATURE_DIM}-d item features (--plm_name feat:rand), no text encoding. ⚠ = more than '
          f'{SUPER_LINEAR}× per doubling (seconds: only from {FLAG_MIN_S:g} s up).\n')
    print(table(rows))
    checks = target_check(rows)
    if checks:
        print('\n' + '\n'.join(checks))
    print(f'\nCPU seconds of the generator and benchmark processes in this table: '
          f'{sum(r.get("cpu_s", 0) for r in rows):.0f}')


if __name__ == '__main__':
    main()
