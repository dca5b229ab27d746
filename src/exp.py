"""Experiment runner, the ReChorus way: grids × seeds → one tidy CSV; then select and report.

    python src/exp.py run --commands office.sh --n_seeds 5 --jobs 2 --out results/office.csv
    python src/exp.py run --base '--model_name KDA_LRD --dataset Office' \\
        --grid 'lr=1e-3,1e-4 lamda=0.1,1,5,10' --n_seeds 5 --out results/office.csv
    python src/exp.py run --checkpoints results/office.csv --checkpoint_models KDA \
        --base '--model_name KDA_LRD --include_lrd 0 --text_fusion 1' --out results/office_tf.csv  # no training
    python src/exp.py run --resume_runs results/office.csv --base '--time_budget 3600' \
        --out results/office_more.csv  # budget-stopped runs continue from their last epoch
    python src/exp.py select --csv results/office.csv --by dev_NDCG@5
    python src/exp.py report --csv results/office.csv --out docs/results_table.md --latex docs/results_table.tex
    python src/exp.py table3 --dataset Office --n_seeds 5 --jobs 2   # Table 3: 8 models × 5 seeds → docs/results.md
    python src/exp.py arg-docs --out docs/arguments.md          # regenerate the arguments reference

``run`` is the default sub-command (``python src/exp.py --base ... --out ...`` works too). Running the same
command again resumes: runs already in the CSV with status ok are skipped. See docs/experiments.md.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys

import pandas as pd

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from utils import experiments as ex  # noqa: E402
from utils import results_csv as rc  # noqa: E402
from utils import run_pool  # noqa: E402

SUBCOMMANDS = ('run', 'select', 'report', 'table3', 'arg-docs')


def add_progress_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--progress_s', type=float, default=300,
                        help="Seconds between progress lines, one per running run: its epoch, time per epoch and "
                             "dev metric so far, read from the run's stdout (0 = none).")


def add_run_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument('--commands', type=str, action='append', default=[],
                        help='Command file: one "python src/main.py ARGS" (or bare ARGS) per line, # comments, '
                             'as ReChorus\' run.sh. Repeatable.')
    parser.add_argument('--base', type=str, default='',
                        help="main.py arguments every run gets, e.g. '--model_name KDA_LRD --dataset Office'. "
                             'A command-file line overrides them, a grid point overrides both.')
    parser.add_argument('--grid', type=str, action='append', default=[],
                        help="Grid on top of every command: 'lr=1e-3,1e-4 lamda=0.1,1,5,10' (Cartesian product). "
                             'Repeatable.')
    parser.add_argument('--checkpoints', type=str, default='',
                        help="Evaluate the checkpoints of this results CSV's finished runs instead of training: "
                             "each run's own arguments, then --base and --grid (e.g. --base '--model_name KDA_LRD "
                             "--include_lrd 0 --text_fusion 1'), then --load 1 --train 0 on its checkpoint and seed.")
    parser.add_argument('--resume_runs', type=str, default='',
                        help="Continue training the finished runs of this results CSV that did not stop early (time "
                             "budget, Ctrl-C, --epoch reached) from their last epoch: each run's own arguments, "
                             "then --base and --grid (e.g. --base '--time_budget 3600'), then --resume 1 on its "
                             "checkpoint and seed; with a longer --early_stop in --base, also the runs that "
                             "early-stopped on the start-up plateau (and it prints the command that continues each "
                             "of the others). Reports pool it with the run it continues (--pool) and keep the latest.")
    parser.add_argument('--checkpoint_models', type=str, default='',
                        help='With --checkpoints or --resume_runs: comma-separated models whose runs are taken '
                             '(default: all).')
    parser.add_argument('--n_seeds', type=int, default=1,
                        help='Runs per configuration, with --random_seed seed0, seed0+1, ...')
    parser.add_argument('--seed0', type=int, default=0, help='First random seed.')
    parser.add_argument('--jobs', type=int, default=1,
                        help='Runs at a time, each a child process; each child gets OMP_NUM_THREADS = '
                             'cores / jobs unless the environment sets it.')
    parser.add_argument('--gpus', type=str, default='',
                        help="Comma-separated GPU ids handed round robin to the job slots as CUDA_VISIBLE_DEVICES "
                             "(e.g. '0,1' with --jobs 4); empty: children inherit the environment.")
    parser.add_argument('--out', type=str, default='results.csv',
                        help='Results CSV (one row per run); created or resumed.')
    parser.add_argument('--work_dir', type=str, default='',
                        help="Per-run result JSON, stdout and stderr (default: '<out stem>_runs' next to the CSV).")
    parser.add_argument('--log_dir', type=str, default='',
                        help='Logs go to <log_dir>/<Model>/<run_id>/<run name>.txt (default: <repo>/log), unless '
                             'the arguments set --log_file.')
    parser.add_argument('--model_dir', type=str, default='',
                        help='Checkpoints go to <model_dir>/<Model>/<run_id>/<run name>.pt (default: <repo>/model), '
                             'unless the arguments set --model_path.')
    parser.add_argument('--timeout', type=float, default=0,
                        help='Seconds after which a run is killed and recorded as failed (0 = no limit).')
    add_progress_arg(parser)
    parser.add_argument('--retry_failed', type=int, default=1,
                        help='Rerun runs the CSV records as failed (1) or leave them (0).')
    parser.add_argument('--dry_run', type=int, default=0,
                        help='List the runs (id, to run or done, arguments) without running anything.')
    return parser


def add_select_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument('--csv', type=str, nargs='+', required=True,
                        help='Results CSV(s) written by exp.py run; several are read as one table.')
    parser.add_argument('--by', type=str, default='dev_NDCG@5',
                        help='Dev metric whose mean over seeds picks the best configuration (never a test metric).')
    parser.add_argument('--min_seeds', type=int, default=1,
                        help='Only configurations with at least this many finished seeds are eligible.')
    parser.add_argument('--partial', type=int, default=0,
                        help='1: a model with no configuration of --min_seeds seeds competes with its configurations '
                             'that have the most seeds instead of being left out (a table still being filled); '
                             'reports name such models either way.')
    parser.add_argument('--where', type=str, action='append', default=[],
                        help='Keep rows with name=value (rows of models without that argument are kept). Repeatable.')
    parser.add_argument('--keep_variants', type=int, default=0,
                        help='Also consider ablation variants (include_lrd=0, include_kge=0, lrd_feature=id, lamda=0); '
                             'by default they are excluded.')
    parser.add_argument('--pool', type=str, default=','.join(rc.RESOURCE_ARGS),
                        help='Arguments left out of a configuration, so that seeds run with different budgets or '
                             'patience (or evaluated from or continued from a checkpoint) count as one; a seed run '
                             "twice keeps its latest run. '' keeps every argument.")
    parser.add_argument('--models', type=str, default='',
                        help='Comma-separated models to keep (default: all); --text_fusion/--text_init runs are '
                             'named X+TF/X+TI.')
    parser.add_argument('--datasets', type=str, default='', help='Comma-separated datasets to keep (default: all).')
    return parser


def add_report_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    add_select_args(parser)
    parser.add_argument('--out', type=str, default='docs/results_table.md', help='Markdown table to write.')
    parser.add_argument('--latex', type=str, default='', help='Also write the table as LaTeX to this file.')
    parser.add_argument('--metrics', type=str, default='HR@5,HR@10,NDCG@5,NDCG@10',
                        help='Test metrics (columns), as in the paper\'s Table 3.')
    parser.add_argument('--digits', type=int, default=4, help='Decimals of the table cells.')
    return parser


def add_table3_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    from utils.table3 import PAPER_MODELS
    parser.add_argument('--dataset', type=str, required=True, help='Dataset folder name under --path (via --base).')
    parser.add_argument('--models', type=str, default=','.join(PAPER_MODELS),
                        help="Comma-separated models, each run with its class' paper_args (the protocol its "
                             'docstring gives).')
    parser.add_argument('--n_seeds', type=int, default=5, help='Seeds per model (seed0, seed0+1, ...).')
    parser.add_argument('--seed0', type=int, default=0, help='First random seed.')
    parser.add_argument('--base', type=str, default='',
                        help="main.py arguments every run gets, e.g. \"--path data --gpu ''\" or '--time_budget 600'.")
    parser.add_argument('--jobs', type=int, default=1, help='Runs at a time (as exp.py run).')
    parser.add_argument('--gpus', type=str, default='',
                        help='GPU ids handed round robin to the job slots (as exp.py run).')
    parser.add_argument('--timeout', type=float, default=0, help='Seconds after which a run is killed (0 = no limit).')
    add_progress_arg(parser)
    parser.add_argument('--out', type=str, default='',
                        help='Results CSV, created or resumed (default: results/<dataset>_table3.csv).')
    parser.add_argument('--results_md', type=str, default='docs/results.md',
                        help='Page whose "table3 <dataset>" section is written (replaced on every call).')
    parser.add_argument('--metrics', type=str, default='HR@5,HR@10,NDCG@5,NDCG@10', help='Test metrics (columns).')
    parser.add_argument('--by', type=str, default='dev_NDCG@5', help='Dev metric shown next to each configuration.')
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='exp.py', description=__doc__.split('\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest='command')
    add_run_args(sub.add_parser('run', help='Run a grid of main.py runs into a CSV (resumable).'))
    add_select_args(sub.add_parser('select', help='Best configuration per model by mean dev metric over seeds.'))
    select = sub._name_parser_map['select']
    select.add_argument('--out', type=str, default='', help='Also write the selection as CSV.')
    select.add_argument('--commands_out', type=str, default='',
                        help='Write the selected configurations as a command file (rerun them with more seeds).')
    add_report_args(sub.add_parser('report', help='Table-3-style markdown/LaTeX of test metrics with t-tests.'))
    add_table3_args(sub.add_parser('table3', help="Table 3 in one command: every model's paper protocol × seeds, "
                                                  'then the table with its grid and wall time into docs/results.md.'))
    docs = sub.add_parser('arg-docs', help='Regenerate docs/arguments.md from the parsers.')
    docs.add_argument('--out', type=str, default='', help='Output file (default: <repo>/docs/arguments.md).')
    docs.add_argument('--check', type=int, default=0, help='Only check that the file is up to date (exit 1 if not).')
    return parser


def continued_csv(path: str) -> str:
    """Where the suggested ``--resume_runs`` command writes: beside the CSV it continues, so that the two are found
    together (the default ``--out`` is ./results.csv of whatever folder the command runs in)."""
    root, ext = os.path.splitext(path)
    return f'{root}_continued{ext or ".csv"}'


def cmd_run(args: argparse.Namespace) -> int:
    commands = []
    for path in args.commands:
        commands += ex.read_command_file(path)
    if args.commands and not commands:
        print(f'error: no runs in {args.commands}', file=sys.stderr)
        return 2
    if args.checkpoints and args.resume_runs:
        print('error: --checkpoints evaluates, --resume_runs trains on: give one of them', file=sys.stderr)
        return 2
    source = args.checkpoints or args.resume_runs
    if source:
        option, kind = ('--resume_runs', 'training state') if args.resume_runs else ('--checkpoints', 'checkpoint')
        if commands:
            print(f'error: {option} reruns runs with their own arguments; change them with --base or --grid, '
                  'not --commands', file=sys.stderr)
            return 2
        finished, models = rc.read_results(source), [m for m in args.checkpoint_models.split(',') if m] or None
        base = shlex.split(args.base)
        specs, missing = ex.checkpoint_specs(finished, base=base, grid=ex.parse_grid(args.grid), models=models,
                                             resume=bool(args.resume_runs))
        if missing:
            print(f'{len(missing)} runs of {source} have no {kind} on disk, skipped: '
                  f'{", ".join(missing[:5])}{" ..." if len(missing) > 5 else ""}', file=sys.stderr)
        left = ex.converged_runs(finished, base, models) if args.resume_runs else finished.iloc[:0]
        if len(left):
            print(f'{len(left)} run(s) of {source} early-stopped after their best dev epoch had passed their first '
                  f'--early_stop epochs, so they count as converged and are not continued ({", ".join(left["run_id"])})'
                  '; a slow climber looks the same: to continue one with the longer patience anyway, run',
                  file=sys.stderr)
            for _, row in left.iterrows():
                print('  ' + ex.continue_command(row, base, continued_csv(source)), file=sys.stderr)
        if not specs:
            print(f'error: no {kind} to {"continue" if args.resume_runs else "evaluate"} in {source}'
                  f'{" but those of the converged runs above" if len(left) else ""}', file=sys.stderr)
            return 2
    else:
        specs = ex.build_specs(commands or None, base=shlex.split(args.base), grid=ex.parse_grid(args.grid),
                               n_seeds=args.n_seeds, seed0=args.seed0)
    if args.dry_run:
        done = set()
        if os.path.exists(args.out):
            df = rc.read_results(args.out)
            done = set(df.loc[df['status'] == 'ok', 'run_id'])
        for spec in specs:
            state = 'done' if spec.run_id in done else ('invalid: ' + spec.error if spec.error else 'to run')
            print(f'{spec.run_id}\t{state}\t{shlex.join(spec.argv)}')
        print(f'{len(specs)} runs, {sum(s.run_id in done for s in specs)} done')
        return 0
    counts = run_pool.run_specs(specs, args.out, jobs=args.jobs, work_dir=args.work_dir or None,
                                log_dir=args.log_dir or None, model_dir=args.model_dir or None,
                                timeout=args.timeout or None, gpus=[g for g in args.gpus.split(',') if g] or None,
                                retry_failed=bool(args.retry_failed), progress_s=args.progress_s)
    print(f'Done: {counts["ok"]} ok, {counts["failed"]} failed, {counts["skipped"]} skipped → {args.out}')
    rows = rc.read_results(args.out)
    rows = rows[rows['run_id'].isin({s.run_id for s in specs}) & (rows['status'] == 'ok')]
    caveats = rc.stop_caveats(rows)
    resume = f'python src/exp.py run --resume_runs {args.out} --out {continued_csv(args.out)}'
    if (caveats == 'budget').any():
        print(f'{(caveats == "budget").sum()} run(s) stopped by --time_budget before early stopping, so their metrics '
              f"are lower bounds; continue them from their last epoch: {resume} --base '--time_budget SECONDS'")
    if (caveats == 'plateau').any():
        print(f'{(caveats == "plateau").sum()} run(s) early-stopped with their best dev epoch within the first '
              f'--early_stop epochs ({", ".join(rows.loc[caveats == "plateau", "run_id"])}): probably on the start-up '
              f"plateau, not converged; continue them from their last epoch with a longer patience: {resume} --base "
              "'--early_stop 30'")
    return 1 if counts['failed'] else 0


def _sources(args: argparse.Namespace) -> str:
    return ' '.join(args.csv)


def _selection(args: argparse.Namespace):
    df = rc.read_many(args.csv)
    rows = rc.filter_rows(df, args.where, bool(args.keep_variants),
                          models=[m for m in args.models.split(',') if m] or None,
                          datasets=[d for d in args.datasets.split(',') if d] or None)
    rows = rc.pool_configs(rows, rc.parse_pool(args.pool))
    return rows, rc.select_best(rows, args.by, args.min_seeds, partial=bool(args.partial))


def _seed_notes(rows: pd.DataFrame, best: pd.DataFrame, args: argparse.Namespace) -> list[str]:
    """Sentences naming the models that --min_seeds left out of the table, or that --partial let in short."""
    if args.min_seeds <= 1:
        return []
    seeds = rows.groupby(['model', 'dataset', 'config'], sort=False)['seed'].nunique()
    most = seeds.groupby(level=[0, 1], sort=False).max()  # per model: its best-seeded configuration
    chosen = dict(zip(zip(best['model'], best['dataset']), best['n_seeds']))
    left_out = [f'{m} on {d} ({n} at most)' for (m, d), n in most.items() if (m, d) not in chosen]
    short = [f'{m} on {d} ({n})' for (m, d), n in chosen.items() if n < args.min_seeds]
    notes = []
    if short:
        notes.append(f'With fewer than {args.min_seeds} seeds (`--partial 1`): {", ".join(short)}.')
    if left_out:
        notes.append(f'Not in the table, no configuration with {args.min_seeds} finished seeds (`--partial 1` '
                     f'shows them): {", ".join(left_out)}.')
    return notes


def _wall_note(rows: pd.DataFrame, best: pd.DataFrame) -> list[str]:
    """The compute behind the table: wall time summed over its runs, saying which rows count only part of it."""
    chosen = set(zip(best['model'], best['dataset'], best['config']))
    used = rows[[key in chosen for key in zip(rows['model'], rows['dataset'], rows['config'])]]
    flag = {name: (pd.to_numeric(used[name], errors='coerce') if name in used else pd.Series(dtype=float))
            for name in ('train', 'resume')}
    evaluated, resumed = int((flag['train'] == 0).sum()), int((flag['resume'] == 1).sum())
    text = f'Wall time: {used["wall_s"].sum() / 3600:.1f} h summed over the {len(used)} runs in the table'
    if resumed:
        text += f'; the rows continued with `--resume 1` ({resumed}) count only their last leg'
    if evaluated:
        text += f'; the rows that evaluate a saved model with `--train 0` ({evaluated}) count only that evaluation'
    return [text + '.']


def cmd_select(args: argparse.Namespace) -> int:
    _, best = _selection(args)
    if best.empty:
        print(f'No finished runs in {_sources(args)} match (min_seeds={args.min_seeds}).', file=sys.stderr)
        return 1
    from utils.reports import markdown_table, model_order
    rank = {m: i for i, m in enumerate(model_order(best['model']))}
    best = best.assign(_rank=best['model'].map(rank)).sort_values(['dataset', '_rank'], kind='stable').drop(
        columns='_rank').reset_index(drop=True)
    columns = ['model', 'dataset', 'n_seeds', f'{args.by}_mean', f'{args.by}_std', 'config']
    table = best[columns].copy()
    table['config'] = [rc.short_config(c) for c in table['config']]
    print(markdown_table(table, floatfmt='.4f'))
    if args.out:
        best.to_csv(args.out, index=False)
        print(f'Selection written to {args.out}')
    if args.commands_out:
        with open(args.commands_out, 'w') as f:
            f.write(f'# best configurations of {_sources(args)} by mean {args.by} over seeds\n')
            for config in best['config']:
                f.write('python src/main.py ' + shlex.join(rc.config_args(config)) + '\n')
        print(f'Command file written to {args.commands_out}')
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from utils import reports
    rows, best = _selection(args)
    if best.empty:
        print(f'No finished runs in {_sources(args)} match (min_seeds={args.min_seeds}).', file=sys.stderr)
        return 1
    metrics = [m.strip() for m in args.metrics.split(',') if m.strip()]
    table = reports.build_table(rows, best, metrics, args.by)
    markdown = reports.render_markdown(table, metrics, digits=args.digits, by=args.by, source=_sources(args),
                                       notes=_seed_notes(rows, best, args) + _wall_note(rows, best))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, 'w') as f:
        f.write(markdown)
    print(markdown)
    print(f'Markdown table written to {args.out}')
    if args.latex:
        os.makedirs(os.path.dirname(os.path.abspath(args.latex)), exist_ok=True)
        with open(args.latex, 'w') as f:
            f.write(reports.render_latex(table, metrics, digits=args.digits))
        print(f'LaTeX table written to {args.latex}')
    return 0


def cmd_table3(args: argparse.Namespace) -> int:
    from utils.table3 import run_table3
    out = args.out or os.path.join('results', f'{args.dataset}_table3.csv')
    counts = run_table3(args.dataset, out, args.results_md, models=[m for m in args.models.split(',') if m],
                        n_seeds=args.n_seeds, seed0=args.seed0, base=shlex.split(args.base), jobs=args.jobs,
                        gpus=[g for g in args.gpus.split(',') if g] or None, timeout=args.timeout or None,
                        metrics=tuple(m.strip() for m in args.metrics.split(',') if m.strip()), by=args.by,
                        command='python src/exp.py ' + shlex.join(sys.argv[1:]), progress_s=args.progress_s)
    print(f'Done: {counts["ok"]} ok, {counts["failed"]} failed, {counts["skipped"]} skipped → {out}')
    return 1 if counts['failed'] else 0


def cmd_arg_docs(args: argparse.Namespace) -> int:
    from utils import arg_docs
    out = args.out or str(arg_docs.DEFAULT_PATH)
    text = arg_docs.render()
    if args.check:
        current = open(out).read() if os.path.exists(out) else ''
        if current != text:
            print(f'{out} is out of date: regenerate it with python src/exp.py arg-docs', file=sys.stderr)
            return 1
        print(f'{out} is up to date')
        return 0
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, 'w') as f:
        f.write(text)
    print(f'Arguments reference written to {out}')
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0] not in SUBCOMMANDS and argv[0] not in ('-h', '--help')):
        argv = ['run'] + argv
    args = build_parser().parse_args(argv)
    try:
        commands = {'run': cmd_run, 'select': cmd_select, 'report': cmd_report, 'table3': cmd_table3,
                    'arg-docs': cmd_arg_docs}
        return commands[args.command](args)
    except (ex.SpecError, ValueError, FileNotFoundError, RuntimeError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == '__main__':
    sys.exit(main())
