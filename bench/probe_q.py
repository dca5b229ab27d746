"""Where does LRD's q put its mass in the first epochs? Training only, no evaluation, so a setting can be
checked for collapse in a minute or two per epoch on a CPU instead of a full run.

    python bench/probe_q.py --probe_epochs 3 --model_name KDA_LRD --dataset Office --path data \
        --include_attr 1 --freq_rand 1 --num_heads 4 --num_layers 5 --lrd_relations latent --q_balance 0.1

Every other argument goes to the model as main.py would parse it. Prints one JSON line per epoch: the
mean training loss, the seconds it took and the model's epoch summary (``LRD q over N pairs: mean max …``).
"""
from __future__ import annotations

import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'src'))

import main  # noqa: E402
from utils.corpus_cache import load_corpus  # noqa: E402
from utils.runtime import configure_cpu, init_seed, pick_device  # noqa: E402


def probe(argv: list[str]) -> list[dict]:
    epochs = 3
    if '--probe_epochs' in argv:
        i = argv.index('--probe_epochs')
        epochs, argv = int(argv[i + 1]), argv[:i] + argv[i + 2:]
    parser, model_cls, reader_cls, runner_cls = main.build_parser(argv)
    args = parser.parse_args(argv)
    configure_cpu(args)
    init_seed(args.random_seed)
    args.device = pick_device(args.gpu)
    corpus = load_corpus(reader_cls, args)
    model = model_cls(args, corpus).to(args.device)
    data = model_cls.Dataset(model, corpus, 'train')
    data.prepare()
    runner = runner_cls(args)
    model.actions_before_train()
    rows = []
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        loss = runner.fit(data, epoch=epoch)
        rows.append({'epoch': epoch, 'loss': round(loss, 4), 'seconds': round(time.perf_counter() - start, 1),
                     'summary': model.epoch_summary()})
        print(json.dumps(rows[-1]), flush=True)
    return rows


if __name__ == '__main__':
    probe(sys.argv[1:])
