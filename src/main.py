"""Train and evaluate one model: ``python src/main.py --model_name KDA_LRD --dataset Office``.

Works from the repository root and from inside ``src/``, as ReChorus users run it. Launched by
``torchrun --nproc_per_node N src/main.py ...`` it trains with DistributedDataParallel
(docs/distributed.md).
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from utils import distributed as dist_utils  # noqa: E402
from utils import registry, torch_file  # noqa: E402
from utils.corpus_cache import load_corpus  # noqa: E402
from utils.io import DataFormatError  # noqa: E402
from utils.metrics import format_metrics  # noqa: E402
from utils.runtime import REPO_DIR, check_dir, configure_cpu, init_seed, pick_device  # noqa: E402

MAX_RUN_NAME = 160  # file systems allow 255 bytes; leave room for suffixes like '.txt'


def parse_global_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument('--gpu', type=str, default='0',
                        help='Set CUDA_VISIBLE_DEVICES, default value is 0; empty string for CPU.')
    parser.add_argument('--verbose', type=int, default=logging.INFO,
                        help='Logging Level, 0, 10, ..., 50')
    parser.add_argument('--log_file', type=str, default='',
                        help='Logging file path')
    parser.add_argument('--random_seed', type=int, default=0,
                        help='Random seed of numpy and pytorch')
    parser.add_argument('--load', type=int, default=0,
                        help='Whether load model and continue to train')
    parser.add_argument('--train', type=int, default=1,
                        help='To train the model or not.')
    parser.add_argument('--save_final_results', type=int, default=1,
                        help='To save the final validation and test results or not.')
    parser.add_argument('--regenerate', type=int, default=0,
                        help='Whether to regenerate intermediate files')
    parser.add_argument('--flush_denormal', type=int, default=1,
                        help='Treat subnormal floats as zero on the CPU (torch.set_flush_denormal): trained '
                             'KDA_LRD weights hold a few, which made CPU epochs and evaluation about 2x slower '
                             '(docs/performance.md). 0 = IEEE subnormals. No effect on GPUs.')
    return dist_utils.parse_ddp_args(parser)


def build_parser(argv: list[str] | None) -> tuple[argparse.ArgumentParser, type, type, type]:
    """Two-stage parsing: the model name picks the classes whose arguments make up the full parser."""
    init_parser = argparse.ArgumentParser(description='Model', add_help=False)
    init_parser.add_argument('--model_name', type=str, default='SASRec', help='Choose a model to run.')
    init_parser.add_argument('--model_mode', type=str, default='', help='Model mode (ReChorus compatibility).')
    init_args, _ = init_parser.parse_known_args(argv)
    model_cls = registry.find_model(init_args.model_name)
    reader_cls = registry.find_reader(model_cls.reader)
    runner_cls = registry.find_runner(model_cls.runner)
    parser = argparse.ArgumentParser(parents=[init_parser])
    parser = parse_global_args(parser)
    parser = reader_cls.parse_data_args(parser)
    parser = runner_cls.parse_runner_args(parser)
    parser = model_cls.parse_model_args(parser)
    return parser, model_cls, reader_cls, runner_cls


def run_name(args: argparse.Namespace, model_cls: type) -> str:
    """ReChorus' run name: model, dataset, seed, lr, l2 and the model's ``extra_log_args``.

    Names that would not fit a file name are cut after the last whole ``arg=value`` that fits (a value cut
    in the middle would read as another value, ``lamda=0`` for ``lamda=0.1``) and end in a hash of the
    full name, so runs that differ only in their last arguments still get different files.
    """
    log_args = [args.model_name + args.model_mode, args.dataset, str(args.random_seed)]
    for arg in ['lr', 'l2'] + list(model_cls.extra_log_args):
        log_args.append(f'{arg}={getattr(args, arg)}')
    name = '__'.join(log_args).replace(' ', '__').replace(os.sep, '_')
    if len(name) > MAX_RUN_NAME:
        head = name[:MAX_RUN_NAME - 9]  # room for '__' and 8 hash digits; one extra char tells a whole field
        name = head[:head.rindex('__')] + '__' + hashlib.sha1(name.encode()).hexdigest()[:8]
    return name


def setup_logging(args: argparse.Namespace) -> None:
    """The log file and stdout; under torchrun only rank 0 does that, the others print warnings to stderr."""
    for handler in logging.root.handlers[:]:
        logging.root.removeHandler(handler)
        handler.close()
    if not dist_utils.is_main():
        handler = logging.StreamHandler(sys.stderr)
        handler.setLevel(logging.WARNING)
        logging.basicConfig(level=args.verbose, format=f'[rank {dist_utils.get_rank()}] %(levelname)s: %(message)s',
                            handlers=[handler])
        return
    check_dir(args.log_file)
    logging.basicConfig(level=args.verbose, format='%(message)s',
                        handlers=[logging.FileHandler(args.log_file), logging.StreamHandler(sys.stdout)])


def set_visible_gpus(args: argparse.Namespace) -> None:
    """``--gpu`` sets CUDA_VISIBLE_DEVICES unless it is set already. Under torchrun each rank uses
    GPU LOCAL_RANK among the visible ones, so only a list (``--gpu 0,1,2,3``) restricts them there;
    a single id such as the default ``0`` would hide the other ranks' GPUs and is not applied."""
    if args.gpu == '' or 'CUDA_VISIBLE_DEVICES' in os.environ:
        return
    if dist_utils.launched() and ',' not in args.gpu:
        return
    os.environ['CUDA_VISIBLE_DEVICES'] = args.gpu


def load_corpus_once(reader_cls: type, args: argparse.Namespace) -> object:
    """Under torchrun the corpus (and the text embeddings a reader computes) is built once per node,
    by its local rank 0; the other ranks wait on a barrier and then hit the cache it wrote."""
    if not dist_utils.is_initialized():
        return load_corpus(reader_cls, args)
    corpus = load_corpus(reader_cls, args) if dist_utils.get_local_rank() == 0 else None
    dist_utils.barrier()
    if corpus is None:
        cached = copy.copy(args)
        cached.regenerate = 0  # the local rank 0 has just (re)built it
        corpus = load_corpus(reader_cls, cached)
    return corpus


def run(args: argparse.Namespace, model_cls: type, reader_cls: type, runner_cls: type) -> dict:
    """The ReChorus lifecycle: corpus → model → datasets → train → report dev/test."""
    name = run_name(args, model_cls)
    args.log_file = args.log_file or str(REPO_DIR / 'log' / (args.model_name + args.model_mode) / f'{name}.txt')
    args.model_path = args.model_path or str(REPO_DIR / 'model' / (args.model_name + args.model_mode) / f'{name}.pt')
    setup_logging(args)
    logging.info('=' * 40 + ' Begin ' + '=' * 40)
    logging.info(' '.join(sys.argv))
    set_visible_gpus(args)
    args.device = pick_device(args.gpu)
    logging.info(f'Device: {args.device}')
    if dist_utils.launched():
        if args.device.type == 'cuda' and args.device.index >= torch.cuda.device_count():
            raise RuntimeError(f'LOCAL_RANK {args.device.index} has no GPU: {torch.cuda.device_count()} visible')
        backend = dist_utils.init(args.device, args.ddp_backend, args.ddp_timeout)
        logging.info(f'Distributed: {dist_utils.get_world_size()} processes, backend {backend}, '
                     f'global batch {args.batch_size * dist_utils.get_world_size()}')
    init_seed(args.random_seed)

    corpus = load_corpus_once(reader_cls, args)
    model = model_cls(args, corpus).to(args.device)
    if dist_utils.is_initialized():  # same initial weights (DDP syncs rank 0's), different dropout per rank
        torch.manual_seed(args.random_seed + dist_utils.get_rank())
    logging.info(f'#params: {model.count_variables()}')
    logging.info(model)
    data_dict = {}
    for phase in ['train', 'dev', 'test']:
        data_dict[phase] = model_cls.Dataset(model, corpus, phase)
        data_dict[phase].prepare()
    runner = runner_cls(args)

    if args.load > 0:
        if dist_utils.is_main():
            model.load_model()
        dist_utils.broadcast_state(model)  # rank 0's checkpoint on every rank
    if args.train > 0:
        model.actions_before_train()
        runner.train(data_dict)
        model.actions_after_train()
    if model.calibrate(runner, data_dict['dev']) and args.train > 0 and dist_utils.is_main():
        model.save_model()

    results = {}
    for phase in ['dev', 'test']:
        res = runner.evaluate(data_dict[phase], runner.topk, runner.metrics)
        results[phase] = res
        logging.info(f'{phase.capitalize()} After Training: ({format_metrics(res)})')
        if args.save_final_results:
            out = os.path.join(os.path.dirname(args.log_file), name, f'rec-{phase}.csv')
            runner.save_rec_results(data_dict[phase], out, max(runner.topk))
    results['best_epoch'] = getattr(runner, 'best_epoch', 0)
    results['epochs'] = runner.epochs_run
    results['stop_reason'] = runner.stop_reason
    results['train_s'] = round(runner.train_s, 1)
    logging.info('=' * 40 + ' End ' + '=' * 40)
    return results


def main(argv: list[str] | None = None) -> dict:
    parser, model_cls, reader_cls, runner_cls = build_parser(argv)
    args = parser.parse_args(argv)
    configure_cpu(args)
    if not dist_utils.launched():
        return run(args, model_cls, reader_cls, runner_cls)
    try:  # a failing rank reports its error and leaves the group; torchrun then stops the others
        return run(args, model_cls, reader_cls, runner_cls)
    except BaseException as e:
        dist_utils.report_failure(e)
        raise
    finally:
        dist_utils.teardown()


def cli(argv: list[str] | None = None) -> dict:
    """main() for the command line: bad input is one line that names the file (exit 1), not a traceback."""
    try:
        return main(argv)
    except (FileNotFoundError, DataFormatError, torch_file.BadFile) as e:
        sys.exit(f'error: {e}')


if __name__ == '__main__':
    cli()
