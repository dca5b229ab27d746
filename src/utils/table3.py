"""Table 3 as one command: each model at its paper protocol × seeds → results CSV → a section of a markdown page.

The protocol of a model is its ``paper_args`` (the settings its docstring gives); LRD models inherit their
backbone's and use the LRD defaults (K = 8, λ = 0.1, α = 0.1). The section written into the page says which
commands ran, on which machine, and how long they took, so the table carries its own provenance.
"""
from __future__ import annotations

import datetime
import os
import platform
import re
import shlex
import time
from pathlib import Path
from typing import Callable

from utils import experiments as ex
from utils.atomic_write import atomic_write
from utils import reports
from utils import results_csv as rc
from utils import run_pool

PAPER_MODELS = ('Caser', 'GRU4Rec', 'SASRec', 'TiSASRec', 'RCF', 'RCF_LRD', 'KDA', 'KDA_LRD')


def protocol_commands(dataset: str, models: tuple[str, ...] | list[str] = PAPER_MODELS) -> list[list[str]]:
    """main.py arguments of each model's Table-3 protocol on ``dataset``."""
    from utils.registry import find_model
    commands = []
    for name in models:
        paper_args = getattr(find_model(name), 'paper_args', '')
        if not paper_args:
            raise ValueError(f'{name} has no paper_args (its Table-3 protocol); '
                             'give it one or leave it out of --models')
        commands.append(['--model_name', name, '--dataset', dataset] + shlex.split(paper_args))
    return commands


def machine_description(gpus: list[str] | None) -> str:
    """The accelerator the runs used (the first of ``gpus``), else the CPU model and its cores."""
    if gpus:
        import torch
        if torch.cuda.is_available():
            return f'{torch.cuda.get_device_name(0)} (CUDA_VISIBLE_DEVICES={",".join(gpus)})'
    cpu = platform.processor() or platform.machine()
    if os.path.exists('/proc/cpuinfo'):
        found = re.search(r'^model name\s*:\s*(.+)$', Path('/proc/cpuinfo').read_text(), flags=re.M)
        cpu = found.group(1).strip() if found else cpu
    return f'CPU: {cpu}, {run_pool.default_threads(1)} cores'


def replace_section(path: str | os.PathLike, key: str, body: str) -> None:
    """Put ``body`` between ``<!-- key begin -->`` and ``<!-- key end -->`` of the page (appended if absent)."""
    path = Path(path)
    begin, end = f'<!-- {key} begin -->', f'<!-- {key} end -->'
    block = f'{begin}\n{body.rstrip()}\n{end}\n'
    text = path.read_text() if path.exists() else ''
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1].lstrip('\n')
    else:
        text = text + ('\n' if text and not text.endswith('\n\n') else '') + block
    atomic_write(path, lambda f: f.write(text.encode()))


def run_table3(dataset: str, out_csv: str | os.PathLike, results_md: str | os.PathLike,
               models: tuple[str, ...] | list[str] = PAPER_MODELS, n_seeds: int = 5, seed0: int = 0,
               base: list[str] | None = None, jobs: int = 1, gpus: list[str] | None = None,
               timeout: float | None = None, metrics: tuple[str, ...] = ('HR@5', 'HR@10', 'NDCG@5', 'NDCG@10'),
               by: str = 'dev_NDCG@5', command: str = '', echo: Callable[[str], None] = print,
               **run_kwargs: object) -> dict[str, int]:
    """Run (or resume) the protocol runs, then write the table and its provenance into ``results_md``.

    Returns run_specs' counts. The table holds the configurations with all ``n_seeds`` seeds; models
    missing some are listed under the table with their failed runs' last error line.
    """
    commands = protocol_commands(dataset, models)
    specs = ex.build_specs(commands, base=base or [], n_seeds=n_seeds, seed0=seed0)
    started = time.time()
    counts = run_pool.run_specs(specs, out_csv, jobs=jobs, gpus=gpus, timeout=timeout, echo=echo, **run_kwargs)
    elapsed = time.time() - started

    df = rc.read_results(out_csv)
    mine = df[df['run_id'].isin({s.run_id for s in specs})]
    ok = mine[mine['status'] == 'ok']
    best = rc.select_best(ok, by, min_seeds=n_seeds) if len(ok) else ok
    lines = [f'## Table 3 on {dataset} (`exp.py table3`)', '',
             f'Written {datetime.date.today().isoformat()} by `{command or "exp.py table3"}`.', '',
             f'- Machine: {machine_description(gpus)}; {jobs} run(s) at a time.',
             f'- Runs: {len(specs)} ({len(models)} models × seeds {seed0}..{seed0 + n_seeds - 1}); '
             f'{len(ok)} finished, {int((mine["status"] == "failed").sum())} failed; results in `{out_csv}`.',
             f'- Wall time: {elapsed:.0f} s for this invocation ({counts["ok"] + counts["failed"]} runs); '
             f'{ok["wall_s"].sum():.0f} s summed over the finished runs '
             f'({ok["train_s"].sum():.0f} s of training loops, resumed parts included).',
             '- Commands (each once per seed, `--random_seed` added; base arguments: '
             f'`{shlex.join(base or []) or "none"}`):', '', '```']
    lines += ['python src/main.py ' + shlex.join(c) for c in commands]
    lines += ['```', '']
    if len(best):
        table = reports.build_table(ok, best, list(metrics), by)
        lines.append(reports.render_markdown(table, list(metrics), by=by, source=str(out_csv), level=3))
    missing = [m for m in models if m not in set(best['model'])]
    if missing:
        lines.append(f'Not in the table (fewer than {n_seeds} finished seeds): {", ".join(missing)}.')
        for _, row in mine[(mine['status'] == 'failed') & mine['model'].isin(missing)].iterrows():
            error = str(row.get('error', '')).strip().splitlines()
            lines.append(f'- {row["run_id"]}: {error[-1] if error else "failed"}')
    replace_section(results_md, f'table3 {dataset}', '\n'.join(lines))
    echo(f'Table 3 on {dataset} written to {results_md} ({elapsed:.0f} s)')
    return counts
