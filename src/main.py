"""Train and evaluate one model: ``python src/main.py --model_name KDA_LRD --dataset Office``.

Works from the repository root and from inside ``src/``, as ReChorus users run it.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from utils import registry  # noqa: E402
from utils.corpus_cache import load_corpus  # noqa: E402
from utils.metrics import format_metrics  # noqa: E402
from utils.runtime import REPO_DIR, check_dir, init_seed, pick_device  # noqa: E402


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
    return parser


def build_parser(argv: list[str] | None):
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


def run_name(args: argparse.Namespace, model_cls) -> str:
    """ReChorus' run name: model, dataset, seed, lr, l2 and the model's ``extra_log_args``."""
    log_args = [args.model_name + args.model_mode, args.dataset, str(args.random_seed)]
    for arg in ['lr', 'l2'] + list(model_cls.extra_log_args):
        log_args.append(f'{arg}={getattr(args, arg)}')
    return '__'.join(log_args).replace(' ', '__')


def setup_logging(args: argparse.Namespace) -> None:
    check_dir(args.log_file)
    for handler in logging.root.handlers[:]:
        logging.root.removeHandler(handler)
    logging.basicConfig(level=args.verbose, format='%(message)s',
                        handlers=[logging.FileHandler(args.log_file), logging.StreamHandler(sys.stdout)])


def run(args: argparse.Namespace, model_cls, reader_cls, runner_cls) -> dict:
    """The ReChorus lifecycle: corpus → model → datasets → train → report dev/test."""
    name = run_name(args, model_cls)
    args.log_file = args.log_file or str(REPO_DIR / 'log' / (args.model_name + args.model_mode) / f'{name}.txt')
    args.model_path = args.model_path or str(REPO_DIR / 'model' / (args.model_name + args.model_mode) / f'{name}.pt')
    setup_logging(args)
    logging.info('=' * 40 + ' Begin ' + '=' * 40)
    logging.info(' '.join(sys.argv))
    if args.gpu != '' and 'CUDA_VISIBLE_DEVICES' not in os.environ:
        os.environ['CUDA_VISIBLE_DEVICES'] = args.gpu
    args.device = pick_device(args.gpu)
    logging.info(f'Device: {args.device}')
    init_seed(args.random_seed)

    corpus = load_corpus(reader_cls, args)
    model = model_cls(args, corpus).to(args.device)
    logging.info(f'#params: {model.count_variables()}')
    logging.info(model)
    data_dict = {}
    for phase in ['train', 'dev', 'test']:
        data_dict[phase] = model_cls.Dataset(model, corpus, phase)
        data_dict[phase].prepare()
    runner = runner_cls(args)

    if args.load > 0:
        model.load_model()
    if args.train > 0:
        model.actions_before_train()
        runner.train(data_dict)
        model.actions_after_train()

    results = {}
    for phase in ['dev', 'test']:
        res = runner.evaluate(data_dict[phase], runner.topk, runner.metrics)
        results[phase] = res
        logging.info(f'{phase.capitalize()} After Training: ({format_metrics(res)})')
        if args.save_final_results:
            out = os.path.join(os.path.dirname(args.log_file), name, f'rec-{phase}.csv')
            runner.save_rec_results(data_dict[phase], out, max(runner.topk))
    results['best_epoch'] = getattr(runner, 'best_epoch', 0)
    logging.info('=' * 40 + ' End ' + '=' * 40)
    return results


def main(argv: list[str] | None = None) -> dict:
    parser, model_cls, reader_cls, runner_cls = build_parser(argv)
    args = parser.parse_args(argv)
    torch.set_num_threads(int(os.environ.get('OMP_NUM_THREADS', torch.get_num_threads())))
    return run(args, model_cls, reader_cls, runner_cls)


if __name__ == '__main__':
    main()
