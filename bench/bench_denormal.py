"""Scoring speed of a trained checkpoint with subnormal floats kept (IEEE) and flushed to zero.

    python bench/bench_denormal.py --model_name KDA_LRD --dataset Office --path data --include_attr 1 \
        --freq_rand 1 --num_heads 4 --num_layers 5 --model_path model/KDA_LRD/.../X.pt --bench_users 1024

Prints one JSON line: seconds to score the first ``--bench_users`` dev users with the flag off and on,
the number of subnormal parameters, the largest score difference and whether the true items' ranks agree.
"""
from __future__ import annotations

import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'src'))

import torch  # noqa: E402

from analysis.trained import load_trained  # noqa: E402
from utils import metrics as metric_utils  # noqa: E402

SUBNORMAL = torch.finfo(torch.float32).tiny


def bench(argv: list[str]) -> dict:
    users = 1024
    if '--bench_users' in argv:
        i = argv.index('--bench_users')
        users, argv = int(argv[i + 1]), argv[:i] + argv[i + 2:]
    trained = load_trained(argv)  # the model main.py builds, on the CPU, checkpoint loaded, eval mode
    model, args = trained.model, trained.args
    dev = trained.model_cls.Dataset(model, trained.corpus, 'dev')
    dev.prepare()
    users = min(users, len(dev))
    subnormal = sum(int(((p.abs() > 0) & (p.abs() < SUBNORMAL)).sum()) for p in model.parameters())
    result = {'model': args.model_name, 'dataset': args.dataset, 'threads': torch.get_num_threads(),
              'users': users, 'subnormal_parameters': subnormal}
    scores = {}
    with torch.no_grad():
        for flush in (False, True):
            torch.set_flush_denormal(flush)
            start = time.perf_counter()
            scores[flush] = torch.cat([model(dev[list(range(i, min(i + 256, users)))])['prediction']
                                       for i in range(0, users, 256)])
            result[f'seconds_flush_{int(flush)}'] = round(time.perf_counter() - start, 2)
    result['max_score_difference'] = float((scores[True] - scores[False]).abs().max())
    result['same_ranks'] = bool((metric_utils.rank_of_truth(scores[True]) ==
                                 metric_utils.rank_of_truth(scores[False])).all())
    return result


if __name__ == '__main__':
    print(json.dumps(bench(sys.argv[1:])))
