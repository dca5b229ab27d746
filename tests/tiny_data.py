"""A tiny, valid ReChorus dataset folder for tests: every reader and model can train on it in seconds.

``make_tiny_dataset(tmp_path)`` writes ``<root>/<name>/`` and returns that folder; point the framework at
it with ``--path <root> --dataset <name>``. Import it from a test as ``from tiny_data import
make_tiny_dataset`` (pytest puts ``tests/`` on ``sys.path``).

Guarantees (for any accepted arguments, deterministic for a given ``seed``):

- ``train.csv`` (``user_id item_id time``) and ``dev.csv``/``test.csv`` (plus ``neg_items``), tab-separated.
  User ids are exactly ``1..n_users``, item ids exactly ``1..n_items``, and **every item occurs in
  train.csv**, so a reader finds ``n_users + 1`` users and ``n_items + 1`` items (0 = padding).
- Every user has between 5 and ``max_len`` interactions on **distinct** items, with strictly increasing
  integer times (seconds since the epoch; gaps of 1–20 days plus random seconds, so per-user minimum
  intervals differ). Leave-one-out: the last interaction is the user's test row, the second-last the dev
  row, the rest (at least 3) are train rows. train.csv is sorted by (time, user) like the real data.
- Sequences have learnable sequential structure: each next item is the previous one plus a small step
  (mostly +1), wrapping around the catalogue, so sequential models beat chance after an epoch or two.
- Every dev/test row has exactly ``n_neg`` distinct ``neg_items`` (a list literal ``[3, 17]``), none of
  them in that user's history (train, dev or test).
- ``item_meta.csv`` (if ``with_meta``): one row per item, **in shuffled order** (the real Office file is
  not in id order either), columns ``item_id``, ``i_category`` (codes 1..4, about 10 % are 0 = missing),
  ``i_brand`` (codes 1..6), ``r_complement`` and ``r_substitute`` (list literals of other item ids, no
  self-links, no duplicates; about a third are ``[]``; substitutes share the item's category when
  possible).
- ``<name>.text`` (if ``with_text``): header ``id<TAB>text``, one row per item in the same order as
  item_meta.csv, keyed by a raw key like ``A0007``; ``<name>.item2index``: ``raw<TAB>item_id`` without a
  header, in item-id order. Raw keys are a permutation of ``A0001..A<n_items>`` that is **not** the
  identity, so code that confuses raw keys with item ids fails. Texts are short and deterministic
  (``"red lamp for desk by Acme model 7"``, naming the item's category and brand) and differ between items.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

CATEGORY_WORDS = ['unknown', 'desk', 'paper', 'ink', 'storage']  # index = i_category code
BRAND_WORDS = ['', 'Acme', 'Bolt', 'Crest', 'Delta', 'Ember', 'Fjord']  # index = i_brand code
ADJECTIVES = ['red', 'blue', 'green', 'large', 'small', 'matte', 'glossy', 'heavy', 'light', 'smart']
NOUNS = ['lamp', 'folder', 'stapler', 'binder', 'marker', 'tray', 'clip', 'pen', 'pad', 'label', 'box']


def _id_list(ids) -> str:
    return '[' + ', '.join(str(int(i)) for i in ids) + ']'


def _sequences(rng: np.random.Generator, n_users: int, n_items: int, max_len: int) -> list[list[int]]:
    """Distinct-item walks (mostly +1 steps); then every item is forced into some user's train part."""
    seqs = []
    for _ in range(n_users):
        length = int(rng.integers(5, max_len + 1))
        item = int(rng.integers(1, n_items + 1))
        seq = [item]
        while len(seq) < length:
            step = int(rng.choice([1, 1, 1, 2, 3]))
            item = (item - 1 + step) % n_items + 1
            if item in seq:  # wrapped onto itself: jump to an unused item
                unused = np.setdiff1d(np.arange(1, n_items + 1), seq)
                item = int(rng.choice(unused))
            seq.append(item)
        seqs.append(seq)
    counts = np.zeros(n_items + 1, dtype=np.int64)
    for seq in seqs:
        np.add.at(counts, seq[:-2], 1)
    for item in np.flatnonzero(counts[1:] == 0) + 1:
        for u in rng.permutation(n_users):
            seq = seqs[u]
            if item in seq:
                continue
            spare = [p for p in range(len(seq) - 2) if counts[seq[p]] > 1]
            if spare:
                p = spare[0]
                counts[seq[p]] -= 1
                seq[p] = int(item)
                counts[item] += 1
                break
        else:
            raise ValueError(f'cannot place item {item} in any train sequence: '
                             f'n_users={n_users} is too small for n_items={n_items}')
    return seqs


def _relations(rng: np.random.Generator, n_items: int, category: np.ndarray, same_category: bool) -> list[list[int]]:
    lists = []
    for item in range(1, n_items + 1):
        if rng.random() < 1 / 3:
            lists.append([])
            continue
        pool = np.setdiff1d(np.arange(1, n_items + 1), [item])
        if same_category:
            same = pool[category[pool] == category[item]]
            pool = same if len(same) else pool
        k = int(min(len(pool), rng.integers(1, 4)))
        lists.append(sorted(int(x) for x in rng.choice(pool, size=k, replace=False)))
    return lists


def make_tiny_dataset(root: Path, name: str = 'Tiny', n_users: int = 30, n_items: int = 40, seed: int = 0,
                      with_meta: bool = True, with_text: bool = True, n_neg: int = 20) -> Path:
    """Write a tiny ReChorus dataset folder ``root/name`` (see the module docstring) and return it."""
    max_len = min(12, n_items - n_neg)
    if n_items < 3 or max_len < 5:
        raise ValueError(f'n_items={n_items} is too small for 5-interaction users with n_neg={n_neg} negatives')
    rng = np.random.default_rng(seed)
    folder = Path(root) / name
    folder.mkdir(parents=True, exist_ok=True)

    rows = {'train': [], 'dev': [], 'test': []}
    for u, seq in enumerate(_sequences(rng, n_users, n_items, max_len), start=1):
        start = 1_000_000_000 + int(rng.integers(0, 100)) * 86_400
        gaps = rng.integers(1, 21, size=len(seq)) * 86_400 + rng.integers(0, 86_400, size=len(seq))
        times = start + np.cumsum(gaps)
        unseen = np.setdiff1d(np.arange(1, n_items + 1), seq)
        for pos, (item, t) in enumerate(zip(seq, times)):
            phase = 'test' if pos == len(seq) - 1 else 'dev' if pos == len(seq) - 2 else 'train'
            row = {'user_id': u, 'item_id': item, 'time': int(t)}
            if phase != 'train':
                row['neg_items'] = _id_list(rng.choice(unseen, size=n_neg, replace=False))
            rows[phase].append(row)
    for phase, phase_rows in rows.items():
        df = pd.DataFrame(phase_rows).sort_values(['time', 'user_id'], kind='stable')
        df.to_csv(folder / f'{phase}.csv', sep='\t', index=False)

    # item side: drawn whatever the flags, so the interactions and the texts never depend on them
    order = rng.permutation(n_items) + 1  # item ids in "metadata file" order
    category = np.zeros(n_items + 1, dtype=np.int64)
    category[1:] = rng.integers(1, 5, size=n_items)
    category[1:][rng.random(n_items) < 0.1] = 0
    brand = np.zeros(n_items + 1, dtype=np.int64)
    brand[1:] = rng.integers(1, 7, size=n_items)
    complement = _relations(rng, n_items, category, same_category=False)
    substitute = _relations(rng, n_items, category, same_category=True)
    raw_number = np.roll(np.arange(1, n_items + 1), 1 + int(rng.integers(0, n_items - 1)))
    raw_key = {item: f'A{raw_number[item - 1]:04d}' for item in range(1, n_items + 1)}
    if with_meta:
        meta = pd.DataFrame({'item_id': order, 'i_category': category[order], 'i_brand': brand[order],
                             'r_complement': [_id_list(complement[i - 1]) for i in order],
                             'r_substitute': [_id_list(substitute[i - 1]) for i in order]})
        meta.to_csv(folder / 'item_meta.csv', sep='\t', index=False)
    if with_text:
        texts = [f'{ADJECTIVES[i % len(ADJECTIVES)]} {NOUNS[(i * 7) % len(NOUNS)]} for '
                 f'{CATEGORY_WORDS[category[i]]} by {BRAND_WORDS[brand[i]]} model {i}' for i in order]
        pd.DataFrame({'id': [raw_key[i] for i in order], 'text': texts}).to_csv(
            folder / f'{name}.text', sep='\t', index=False)
        pd.DataFrame({'raw': [raw_key[i] for i in range(1, n_items + 1)], 'item_id': np.arange(1, n_items + 1)}
                     ).to_csv(folder / f'{name}.item2index', sep='\t', index=False, header=False)
    return folder
