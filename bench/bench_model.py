"""Speed and memory of one model on one dataset: corpus build, training epochs, dev+test evaluation.

Prints one JSON line. Run one model per process so peak RSS is that model's alone:

    python bench/bench_model.py --model_name KDA --dataset Office --path ../shared/data \
        --include_attr 1 --num_heads 4 --num_layers 5 --freq_rand 1 --bench_epochs 3

``--bench_batches N`` times only the first N training batches and extrapolates to the epoch
(reported as ``epoch_s_extrapolated``), for datasets too large to time whole epochs.
``--bench_eval_batches N`` likewise times only the first N dev evaluation batches (scoring and ranking)
and extrapolates to the whole dev set (``dev_eval_s_extrapolated``); the test set is then not evaluated.
"""
from __future__ import annotations

import json
import os
import resource
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'src'))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import main  # noqa: E402
from utils import metrics as metric_utils  # noqa: E402
from utils import train_state  # noqa: E402
from utils.corpus_cache import load_corpus  # noqa: E402
from utils.runtime import configure_cpu, init_seed, pick_device  # noqa: E402


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2


def bench(argv: list[str]) -> dict:
    bench_epochs, bench_batches, bench_eval_batches = 2, 0, 0
    rest = []
    it = iter(argv)
    for a in it:
        if a == '--bench_epochs':
            bench_epochs = int(next(it))
        elif a == '--bench_batches':
            bench_batches = int(next(it))
        elif a == '--bench_eval_batches':
            bench_eval_batches = int(next(it))
        else:
            rest.append(a)
    parser, model_cls, reader_cls, runner_cls = main.build_parser(rest)
    args = parser.parse_args(rest)
    configure_cpu(args)
    args.device = pick_device(args.gpu)
    args.model_path = args.model_path or os.path.join(tempfile.mkdtemp(), 'bench.pt')
    init_seed(args.random_seed)
    result = {'model': args.model_name, 'dataset': args.dataset, 'device': str(args.device),
              'threads': torch.get_num_threads(), 'batch_size': args.batch_size, 'autocast': args.autocast,
              'sparse_embeddings': args.sparse_embeddings}

    t = time.perf_counter()
    args.regenerate = 1
    corpus = load_corpus(reader_cls, args)
    result['corpus_build_s'] = round(time.perf_counter() - t, 2)
    result['rss_after_corpus_gb'] = round(peak_rss_gb(), 3)

    t = time.perf_counter()
    model = model_cls(args, corpus).to(args.device)
    data = {p: model_cls.Dataset(model, corpus, p) for p in ['train', 'dev', 'test']}
    for d in data.values():
        d.prepare()
    result['model_and_datasets_s'] = round(time.perf_counter() - t, 2)
    runner = runner_cls(args)
    model.actions_before_train()
    model.optimizer = runner._build_optimizer(model)

    epoch_s, data_s, batch_s, sample_s_list = [], [], [], []
    train = data['train']
    n_batches = int(np.ceil(len(train) / args.batch_size))
    for epoch in range(bench_epochs):
        if bench_batches:
            t = time.perf_counter()
            train.actions_before_epoch()
            sample_s = time.perf_counter() - t
            model.train()
            loader = iter(runner._loader(train, args.batch_size, shuffle=True))
            t = time.perf_counter()
            for _ in range(min(bench_batches, n_batches)):
                batch = next(loader)
                model.optimizer.zero_grad()
                loss = model.loss(model(batch))
                loss.backward()
                model.optimizer.step()
            per_batch = (time.perf_counter() - t) / min(bench_batches, n_batches)
            epoch_s.append(sample_s + per_batch * n_batches)
            batch_s.append(per_batch)
            sample_s_list.append(sample_s)
        else:
            t = time.perf_counter()
            runner.fit(train, epoch=epoch + 1)
            epoch_s.append(time.perf_counter() - t)
            data_s.append(runner.data_seconds)
    key = 'epoch_s_extrapolated' if bench_batches else 'epoch_s_median'
    result[key] = round(float(np.median(epoch_s)), 2)
    if batch_s:
        result['train_batch_s'] = round(float(np.median(batch_s)), 4)
        result['epoch_sampling_s'] = round(float(np.median(sample_s_list)), 2)
    if data_s:
        result['data_share_of_epoch'] = round(float(np.median(np.array(data_s) / np.array(epoch_s))), 3)
    result['train_batches'] = n_batches

    if bench_eval_batches:
        dev = data['dev']
        n_eval = int(np.ceil(len(dev) / runner.eval_batch_size))
        timed = min(bench_eval_batches, n_eval)
        predictions = runner.predict_batches(dev)
        t = time.perf_counter()
        for _ in range(timed):
            _, prediction = next(predictions)
            metric_utils.rank_of_truth(prediction)
        per_batch = (time.perf_counter() - t) / max(timed, 1)
        predictions.close()
        result['dev_eval_s_extrapolated'] = round(per_batch * n_eval, 2)
        result['dev_eval_batch_s'] = round(per_batch, 4)
        result['dev_eval_batches'] = n_eval
    else:
        t = time.perf_counter()
        runner.evaluate(data['dev'], runner.topk, runner.metrics)
        result['dev_eval_s'] = round(time.perf_counter() - t, 2)
        t = time.perf_counter()
        runner.evaluate(data['test'], runner.topk, runner.metrics)
        result['dev_plus_test_eval_s'] = round(result['dev_eval_s'] + time.perf_counter() - t, 2)
    runner.epochs_run = bench_epochs  # the per-epoch training state that --resume 1 reads
    t = time.perf_counter()
    runner._save_state(model, data, [], [], '')
    result['state_save_s'] = round(time.perf_counter() - t, 3)
    result['state_mb'] = round(os.path.getsize(train_state.state_path(args.model_path)) / 2 ** 20, 2)
    result['peak_rss_gb'] = round(peak_rss_gb(), 3)
    result['params'] = model.count_variables()
    return result


if __name__ == '__main__':
    print(json.dumps(bench(sys.argv[1:])))
