"""Runs :class:`~utils.experiments.RunSpec` lists as child processes and records each in the results CSV.

Each run is ``python -c CHILD_CODE <result.json> <main.py arguments...>`` (:func:`child_main` calls
``main.main`` and writes its returned dict as JSON), so a crash fails only that run and the metrics never come
from parsing a log. :func:`run_specs` skips what the CSV already holds with status ok (an interrupted grid
resumes), runs ``jobs`` children at a time, and holds a lock on the CSV so two exp.py never write it at once.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from utils import train_state
from utils.atomic_write import atomic_write
from utils.experiments import RunSpec, peek_arg, plain_scalar, result_row, run_paths
from utils.results_csv import read_results, write_results
from utils.run_progress import epoch_progress
from utils.runtime import REPO_DIR, SRC_DIR

ERROR_LINES = 15
ERROR_CHARS = 2000

# The child process: ``python -c CHILD_CODE <result.json> <main.py arguments...>``.
CHILD_CODE = ('import sys; sys.path.insert(0, {src!r}); from utils.run_pool import child_main; '
              'sys.exit(child_main(sys.argv[1:]))').format(src=str(SRC_DIR))


def child_command() -> list[str]:
    """Command prefix of a child run; the result path and the main.py arguments follow."""
    return [sys.executable, '-c', CHILD_CODE]


def child_main(argv: list[str]) -> int:
    """Child entry point: ``argv = [result_json, *main_argv]``. Runs ``main.main`` and writes its dict as JSON."""
    result_path, main_argv = argv[0], argv[1:]
    import main  # the entry script, imported on use as in experiments.normalise (it loads the model registry)
    sys.argv = ['main.py', *main_argv]  # main logs ' '.join(sys.argv) as the command line
    results = main.main(main_argv)
    atomic_write(result_path, lambda f: f.write(json.dumps(_jsonable(results), indent=1).encode()))
    return 0


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return plain_scalar(obj)


def tail_text(text: str, lines: int = ERROR_LINES, chars: int = ERROR_CHARS) -> str:
    """Last lines of a child's stderr, progress-bar carriage returns resolved, at most ``chars`` long."""
    cleaned = [line.split('\r')[-1].rstrip() for line in text.replace('\r\n', '\n').split('\n')]
    cleaned = [line for line in cleaned if line.strip()]
    out = '\n'.join(cleaned[-lines:])
    return out[-chars:]


def default_threads(jobs: int) -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, jobs))


def contention_warning(jobs: int, load: float | None = None, cores: int | None = None) -> str | None:
    """A warning when cores / jobs threads per child would oversubscribe a machine that is already busy.

    Two exp.py side by side each hand their children all the cores; OpenMP threads then spin-wait on
    each other (a 22 s GRU4Rec epoch took 477 s on 2 cores). ``load`` defaults to the 1-minute load average.
    """
    if load is None:
        if not hasattr(os, 'getloadavg'):
            return None
        load = os.getloadavg()[0]
    cores = cores or default_threads(1)
    if load < 0.5 * cores:
        return None
    return (f'warning: the load average is {load:.1f} on {cores} cores before any run starts; each of the '
            f'{jobs} job(s) gets {default_threads(jobs)} OpenMP threads, which will compete with the other '
            f'processes. Set OMP_NUM_THREADS (e.g. 1) for this exp.py to avoid oversubscription.')


@dataclass
class _Running:
    spec: RunSpec
    proc: subprocess.Popen
    slot: int
    started: float
    result: Path
    stdout: Path
    stderr: Path
    argv: list[str]


class _CsvLock:
    """An exclusive lock on ``<csv>.lock`` so that two exp.py processes never write the same CSV."""

    def __init__(self, csv_path: Path):
        self.path = csv_path.with_name(csv_path.name + '.lock')
        self.file = None

    def __enter__(self):
        import fcntl
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(self.path, 'w')
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.file.close()
            raise RuntimeError(f'{self.path} is locked: another exp.py is writing this CSV') from None
        return self

    def __exit__(self, *exc):
        import fcntl
        fcntl.flock(self.file, fcntl.LOCK_UN)
        self.file.close()
        with contextlib.suppress(OSError):
            self.path.unlink()


def run_specs(specs: list[RunSpec], out_csv: str | os.PathLike, jobs: int = 1,
              work_dir: str | os.PathLike | None = None, log_dir: str | os.PathLike | None = None,
              model_dir: str | os.PathLike | None = None,
              child_cmd: list[str] | None = None, timeout: float | None = None, gpus: list[str] | None = None,
              retry_failed: bool = True, echo: Callable[[str], None] = print,
              poll_s: float = 0.2, progress_s: float = 300.0) -> dict[str, int]:
    """Run every spec the CSV does not hold with status ok; record each as it finishes.

    Returns counts ``{'ok', 'failed', 'skipped'}``. Each child gets ``OMP_NUM_THREADS`` = cores / jobs unless
    the environment sets it, ``TQDM_DISABLE=1``, and with ``gpus`` a ``CUDA_VISIBLE_DEVICES`` of its own
    (round robin over the job slots). Ctrl-C terminates the running children and keeps what finished.
    Every ``progress_s`` seconds (0: never) one line per running run says its epoch and dev metric.
    """
    out_csv = Path(out_csv)
    work_dir = Path(work_dir) if work_dir else out_csv.with_name(out_csv.stem + '_runs')
    log_dir = Path(log_dir) if log_dir else REPO_DIR / 'log'
    model_dir = Path(model_dir) if model_dir else REPO_DIR / 'model'
    child_cmd = child_cmd or child_command()
    jobs = max(1, int(jobs))
    counts = {'ok': 0, 'failed': 0, 'skipped': 0}
    with _CsvLock(out_csv):
        rows = read_results(out_csv).to_dict('records')
        rows = [{k: v for k, v in r.items() if not (isinstance(v, float) and math.isnan(v))} for r in rows]
        index = {r['run_id']: i for i, r in enumerate(rows)}
        finished = {r['run_id'] for r in rows if r.get('status') == 'ok' or (not retry_failed and r.get('status'))}
        todo = []
        for spec in specs:
            if spec.run_id in finished:
                counts['skipped'] += 1
            else:
                todo.append(spec)
        echo(f'{len(specs)} runs: {counts["skipped"]} already in {out_csv}, {len(todo)} to run, {jobs} at a time')

        def record(row: dict) -> None:
            if row['run_id'] in index:
                rows[index[row['run_id']]] = row
            else:
                index[row['run_id']] = len(rows)
                rows.append(row)
            write_results(out_csv, rows)
            counts[row['status']] += 1
            done = counts['ok'] + counts['failed']
            metric = next((f' {k}={row[k]:.4f}' for k in ('dev_NDCG@5', 'dev_HR@5') if k in row), '')
            echo(f'[{done}/{len(todo)}] {row["status"]:6} {row["run_id"]} ({row["wall_s"]:.1f} s){metric}'
                 + (f'\n    {row["error"].splitlines()[-1] if row["error"] else ""}' if row['status'] != 'ok' else ''))

        # arguments main.py rejects fail here, without a child
        for spec in [s for s in todo if s.error]:
            record(result_row(spec, 'failed', error=spec.error, wall_s=0.0))
        queue = [s for s in todo if not s.error]
        work_dir.mkdir(parents=True, exist_ok=True)
        env_base = dict(os.environ, TQDM_DISABLE='1', PYTHONUNBUFFERED='1')
        if 'OMP_NUM_THREADS' not in env_base and queue and (warning := contention_warning(jobs)):
            echo(warning)
        env_base.setdefault('OMP_NUM_THREADS', str(default_threads(jobs)))
        running: list[_Running] = []
        previous = _raise_on_sigterm()
        last_progress = time.time()
        try:
            while queue or running:
                if progress_s and running and time.time() - last_progress >= progress_s:
                    last_progress = time.time()
                    for job in running:
                        echo(_progress(job))
                free = sorted(set(range(jobs)) - {r.slot for r in running})
                while queue and free:
                    running.append(_launch(queue.pop(0), free.pop(0), work_dir, log_dir, model_dir, child_cmd,
                                           env_base, gpus))
                time.sleep(poll_s)
                for job in list(running):
                    elapsed = time.time() - job.started
                    if job.proc.poll() is None:
                        if timeout and elapsed > timeout:
                            job.proc.kill()
                            job.proc.wait()
                            running.remove(job)
                            record(_finish(job, time.time() - job.started, timed_out=timeout))
                        continue
                    running.remove(job)
                    record(_finish(job, elapsed))
        except KeyboardInterrupt:
            for job in running:
                job.proc.terminate()
            for job in running:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    job.proc.wait(timeout=10)
                if job.proc.poll() is None:
                    job.proc.kill()
            echo(f'Interrupted: {len(running)} running and {len(queue)} queued runs not recorded; '
                 f'run the same command again to resume.')
            raise
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
    return counts


def _raise_on_sigterm():
    """Treat SIGTERM (a scheduler stopping the job) like Ctrl-C, so the children are terminated too."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):
        raise KeyboardInterrupt(f'signal {signum}')
    return signal.signal(signal.SIGTERM, handler)


def _launch(spec: RunSpec, slot: int, work_dir: Path, log_dir: Path, model_dir: Path, child_cmd: list[str],
            env_base: dict, gpus: list[str] | None) -> _Running:
    argv = list(spec.argv)
    log_file, model_path = run_paths(spec, log_dir, model_dir)
    if '--log_file' not in argv:
        argv += ['--log_file', str(log_file)]
    if '--model_path' not in argv:
        argv += ['--model_path', str(model_path)]
    trains = peek_arg(argv, 'train') in (None, '1')
    if trains and '--resume' not in argv and os.path.isfile(train_state.state_path(peek_arg(argv, 'model_path'))):
        argv += ['--resume', '1']  # an earlier attempt (interrupted, timed out, crashed) continues from its last epoch
    result = work_dir / f'{spec.run_id}.json'
    stdout, stderr = work_dir / f'{spec.run_id}.stdout', work_dir / f'{spec.run_id}.stderr'
    with contextlib.suppress(FileNotFoundError):
        result.unlink()
    env = dict(env_base)
    if gpus:
        env['CUDA_VISIBLE_DEVICES'] = str(gpus[slot % len(gpus)])
    with open(stderr, 'wb') as err, open(stdout, 'wb') as out:
        # own session: a Ctrl-C in the terminal reaches exp.py only (main.py would catch it and report a
        # half-trained model as finished); exp.py then terminates the children itself
        proc = subprocess.Popen(child_cmd + [str(result)] + argv, stdout=out, stderr=err, env=env,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    return _Running(spec, proc, slot, time.time(), result, stdout, stderr, argv)


def _progress(job: _Running) -> str:
    elapsed = time.time() - job.started
    text = job.stdout.read_text(errors='replace') if job.stdout.exists() else ''
    return f'    running {job.spec.run_id}: {elapsed / 60:.0f} min' + \
        (f', {progress}' if (progress := epoch_progress(text, elapsed)) else '')


def _finish(job: _Running, wall_s: float, timed_out: float | None = None) -> dict:
    stderr = job.stderr.read_text(errors='replace') if job.stderr.exists() else ''
    if timed_out:
        return result_row(job.spec, 'failed', error=f'timed out after {timed_out:g} s\n' + tail_text(stderr, 5),
                          wall_s=wall_s, argv=job.argv)
    code = job.proc.returncode
    if code == 0 and job.result.exists():
        try:
            results = json.loads(job.result.read_text())
            if isinstance(results, dict) and 'test' in results and 'dev' in results:
                return result_row(job.spec, 'ok', results=results, wall_s=wall_s, argv=job.argv)
            problem = f'result JSON without dev/test metrics: {str(results)[:200]}'
        except json.JSONDecodeError as e:
            problem = f'unreadable result JSON {job.result}: {e}'
    else:
        problem = f'exit code {code}' + ('' if code != 0 else f' but no result file {job.result}')
    tail = tail_text(stderr)
    return result_row(job.spec, 'failed', error=(tail or problem) if code != 0 else problem + '\n' + tail,
                      wall_s=wall_s, argv=job.argv)
