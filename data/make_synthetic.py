"""Electronics-scale synthetic dataset in the ReChorus format, for benchmarks (never unit tests at full size).

    python data/make_synthetic.py                       # 192,403 users, 63,001 items, 1,682,498 interactions
    python data/make_synthetic.py --scale 0.125 --dataset Electronics_syn_0.125

The real Amazon Electronics 5-core data cannot ship with the project; this stands in for it where only
size and shape matter (epoch time, memory, sampling cost). Seeded and vectorised with numpy: heavy-tailed
user activity and item popularity (every user and item >= 5 interactions, no repeated user-item pair),
daily timestamps with same-day ties, Zipf-skewed categories and brands, popularity-biased complement and
substitute lists that mostly stay within the category, and item texts made like the Amazon ones. The
files go through the same split, negative sampling and writers as ``build_amazon.py``.
"""
from __future__ import annotations

import argparse
import logging
import resource
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from build_amazon import N_NEG, Interactions, ItemMeta, index_interactions, item_text, write_rechorus  # noqa: E402

log = logging.getLogger('make_synthetic')

ELECTRONICS = {'users': 192_403, 'items': 63_001, 'interactions': 1_682_498}
MIN_COUNT = 5  # the 5-core: every user and every item has at least five interactions
ROOT = 'Electronics'
DAY = 86_400
FIRST_DAY, LAST_DAY = 10_743, 16_274  # 1999-06-01 .. 2014-07-23, the span of the 2014 Electronics 5-core

_ALPHABET = np.frombuffer(b'0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ', dtype='S1')
_SYLLABLES = ('ka ro ti mex an vo lu sen dar qui nel tor ba fi zon pra gel hy om tec vi sa lo den mar cor '
              'ix el jo un').split()
_QUALIFIERS = ('Audio Camera Car Computer Digital Home Mobile Network Office Portable Power Smart Studio '
               'Video Wireless Gaming Outdoor Security Storage Travel').split()
_NOUNS = ('Accessories Adapters Amplifiers Antennas Batteries Cables Cases Chargers Controllers Drives Docks '
          'Filters Headphones Hubs Keyboards Lenses Mice Microphones Monitors Mounts Players Printers Projectors '
          'Receivers Routers Scanners Speakers Stands Switches Tripods').split()
_WORDS = ('Ultra Slim Pro Max Mini HD 4K USB 3.0 Bluetooth Stereo Compact Premium Universal Dual Rechargeable '
          'Black Silver White Noise-Cancelling Waterproof Fast High-Speed Long Ergonomic Heavy-Duty Adjustable '
          'Wireless Optical Digital Portable Replacement Kit Pack Edition Series for with and').split()


def _base36(values: np.ndarray, width: int) -> np.ndarray:
    """Fixed-width base-36 strings, so lexicographic order equals numeric order."""
    values = np.asarray(values, dtype=np.int64).copy()
    chars = np.empty((len(values), width), dtype='S1')
    for position in range(width - 1, -1, -1):
        chars[:, position] = _ALPHABET[values % 36]
        values //= 36
    return np.ascontiguousarray(chars).view(f'S{width}').ravel().astype(str)


def _zipf_weights(n: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Popularity weights ``rank^-exponent`` over a random permutation of ``n`` values."""
    weights = np.arange(1, n + 1, dtype=np.float64) ** -exponent
    return rng.permutation(weights / weights.sum())


def degree_sequence(n: int, total: int, minimum: int, maximum: int, tail: float,
                    rng: np.random.Generator) -> np.ndarray:
    """``n`` heavy-tailed counts in ``[minimum, maximum]`` summing to ``total`` (Pareto weights, index ``tail``)."""
    if not n * minimum <= total <= n * maximum:
        raise ValueError(f'cannot give {n:,} values {minimum}..{maximum} interactions each summing to {total:,}; '
                         f'change the counts or the scale')
    weights = rng.pareto(tail, n) + 1.0
    counts = minimum + rng.multinomial(total - n * minimum, weights / weights.sum())
    while (excess := int(np.maximum(counts - maximum, 0).sum())) > 0:
        counts = np.minimum(counts, maximum)
        room = np.where(counts < maximum, weights, 0.0)
        counts += rng.multinomial(excess, room / room.sum())
    return counts.astype(np.int64)


def pair_without_repeats(user_counts: np.ndarray, item_counts: np.ndarray, rng: np.random.Generator,
                         max_rounds: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """Configuration model: match user slots to item slots so no (user, item) pair repeats.

    Both degree sequences are kept exactly: repeated pairs are re-shuffled together with as many random
    slots until none is left (a few rounds at Electronics density).
    """
    n_items = len(item_counts)
    users = np.repeat(np.arange(len(user_counts), dtype=np.int64), user_counts)
    items = rng.permutation(np.repeat(np.arange(n_items, dtype=np.int64), item_counts))
    for _ in range(max_rounds):
        keys = users * n_items + items
        order = np.argsort(keys, kind='stable')
        repeated = order[1:][np.diff(keys[order]) == 0]
        if not len(repeated):
            return users, items
        slots = np.union1d(repeated, rng.choice(len(items), size=len(repeated), replace=False))
        items[slots] = rng.permutation(items[slots])
    raise RuntimeError(f'could not avoid repeated user-item pairs in {max_rounds} rounds; '
                       f'the requested data is too dense (more items per user or fewer users per item)')


def interaction_days(users: np.ndarray, n_users: int, rng: np.random.Generator) -> np.ndarray:
    """Daily timestamps: each user is active in a window ending near the data's end (growth over time)."""
    end = LAST_DAY - np.floor(rng.exponential(450.0, n_users)).astype(np.int64)
    span = np.floor(rng.exponential(300.0, n_users)).astype(np.int64) + 1
    end = np.clip(end, FIRST_DAY + span, LAST_DAY)
    days = end[users] - np.floor(rng.random(len(users)) * span[users]).astype(np.int64)
    return np.maximum(days, FIRST_DAY)


def related_items(category: np.ndarray, popularity: np.ndarray, p_empty: float, mean: float, max_len: int,
                  p_same_category: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """CSR lists of related items: popularity-biased, mostly within the item's category, no self, no repeats."""
    n = len(category)
    lengths = np.minimum(1 + np.floor(rng.exponential(mean - 1, n)), max_len).astype(np.int64)
    lengths[rng.random(n) < p_empty] = 0
    source = np.repeat(np.arange(n), lengths)
    # global popularity CDF, and the same CDF with items grouped by category (category 0 = missing)
    global_cdf = np.cumsum(popularity)
    by_category = np.argsort(category, kind='stable')
    category_cdf = np.cumsum(popularity[by_category])
    n_categories = int(category.max()) + 1
    upper = np.zeros(n_categories)
    np.maximum.at(upper, category[by_category], category_cdf)
    lower = np.concatenate([[0.0], np.maximum.accumulate(upper)[:-1]])
    own = category[source]
    same = (rng.random(len(source)) < p_same_category) & (own > 0)
    u = rng.random(len(source))
    within = np.searchsorted(category_cdf, lower[own] + u * (upper[own] - lower[own]), side='right')
    targets = by_category[np.minimum(within, n - 1)]
    anywhere = np.minimum(np.searchsorted(global_cdf, u * global_cdf[-1], side='right'), n - 1)
    targets = np.where(same, targets, anywhere)
    keep = targets != source
    source, targets = source[keep], targets[keep]
    keys = source * n + targets
    order = np.argsort(keys, kind='stable')
    first = np.sort(order[np.concatenate([[True], np.diff(keys[order]) != 0])])
    source, targets = source[first], targets[first]  # first draw of each pair, in drawing order
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(source, minlength=n), out=offsets[1:])
    return offsets, targets


def _names(count: int, parts: list[tuple[str, ...]], rng: np.random.Generator, joiner: str = ' ') -> np.ndarray:
    """``count`` distinct names, each combining one entry of every part."""
    sizes = [len(p) for p in parts]
    if count > np.prod(sizes):
        raise ValueError(f'at most {int(np.prod(sizes)):,} distinct names of this kind; asked for {count:,}')
    picks = rng.choice(int(np.prod(sizes)), size=count, replace=False)
    digits = np.unravel_index(picks, sizes)
    names = [joiner.join(part[d] for part, d in zip(parts, combo)) for combo in zip(*digits)]
    return np.array(names, dtype=object)


def generate(n_users: int, n_items: int, n_interactions: int, seed: int = 0, n_categories: int = 120,
             n_leaves: int = 800, n_brands: int = 8000) -> tuple[Interactions, ItemMeta]:
    """Interactions and item metadata of a synthetic Amazon-like category (raw keys: ASINs, reviewer ids)."""
    rng = np.random.default_rng(seed)
    # tail index 1.2 gives Amazon-like medians (6-7 per user, ~11 per item); the caps (~525 per user and
    # ~4,800 per item at Electronics size) stand in for the real maxima
    user_cap = min(n_items // 2, max(n_items // 120, 5 * -(-n_interactions // n_users)))
    item_cap = min(n_users // 2, max(n_users // 40, 5 * -(-n_interactions // n_items)))
    user_counts = degree_sequence(n_users, n_interactions, MIN_COUNT, max(MIN_COUNT, user_cap), 1.2, rng)
    item_counts = degree_sequence(n_items, n_interactions, MIN_COUNT, max(MIN_COUNT, item_cap), 1.2, rng)
    users, items = pair_without_repeats(user_counts, item_counts, rng)
    days = interaction_days(users, n_users, rng)
    interactions = index_interactions(users, items, days * DAY)  # integer keys sort like the raw ids below
    asins = np.char.add('B00', _base36(rng.choice(36 ** 7, size=n_items, replace=False), 7)).astype(object)
    reviewers = np.char.add('A', _base36(np.arange(n_users), 13)).astype(object)
    item_id = np.empty(n_items, dtype=np.int64)
    item_id[interactions.item_keys.astype(np.int64)] = np.arange(1, n_items + 1)

    category = 1 + rng.choice(n_categories, size=n_items, p=_zipf_weights(n_categories, 1.0, rng))
    category[rng.random(n_items) < 0.03] = 0
    has_brand = rng.random(n_items) >= 0.25
    # every brand at least once (while items last), the rest Zipf-skewed
    n_branded = int(has_brand.sum())
    brand = np.zeros(n_items, dtype=np.int64)
    brand[has_brand] = rng.permutation(np.concatenate([
        rng.permutation(n_brands)[:n_branded],
        rng.choice(n_brands, size=max(0, n_branded - n_brands), p=_zipf_weights(n_brands, 1.0, rng))]))
    leaf_names = _names(n_leaves, [tuple(_WORDS[:16]), tuple(_QUALIFIERS), tuple(_NOUNS)], rng)
    brand_names = [name.capitalize() for name in _names(n_brands, [tuple(_SYLLABLES)] * 3, rng, joiner='')]
    leaf_category = np.sort(rng.integers(1, n_categories + 1, n_leaves))  # leaves grouped under categories
    first_leaf = np.searchsorted(leaf_category, np.arange(n_categories + 2))
    leaf_count = np.diff(first_leaf)
    own = np.where(leaf_count[category] > 0, category, 0)
    leaf = np.where(own > 0, first_leaf[own] + np.floor(rng.random(n_items) ** 2 * leaf_count[own]).astype(np.int64),
                    rng.integers(0, n_leaves, n_items))
    popularity = item_counts.astype(np.float64)
    relations = {'r_complement': related_items(category, popularity, 0.17, 20.0, 40, 0.4, rng),
                 'r_substitute': related_items(category, popularity, 0.34, 11.0, 40, 0.8, rng)}

    meta_order = np.argsort(asins)  # the metadata file is sorted by ASIN, unlike the ids
    n_words = rng.integers(3, 12, n_items)
    words = rng.choice(np.array(_WORDS, dtype=object), size=(n_items, 11))
    model = _base36(rng.integers(0, 36 ** 5, n_items), 5)
    texts = []
    for i in meta_order.tolist():
        brand_name = brand_names[brand[i]] if has_brand[i] else None
        title = ' '.join([brand_name or 'Generic', *words[i, :n_words[i]], model[i]])
        texts.append(item_text(title, [[ROOT, leaf_names[leaf[i]]]], brand_name, ROOT))
    # codes as the recipe makes them: 1.. over the categories in use, brands by first appearance in the file
    used_categories = np.unique(category[category > 0])
    category_code = np.where(category > 0, np.searchsorted(used_categories, category) + 1, 0)
    meta_brand, meta_has_brand = brand[meta_order], has_brand[meta_order]
    brand_code = np.zeros(n_items, dtype=np.int64)
    brand_code[meta_has_brand] = pd.factorize(meta_brand[meta_has_brand])[0] + 1
    meta = ItemMeta(keys=asins[meta_order], item_ids=item_id[meta_order], category=category_code[meta_order],
                    brand=brand_code, texts=texts,
                    relations={name: _reorder(offsets, targets, meta_order, item_id)
                               for name, (offsets, targets) in relations.items()})
    keyed = Interactions(interactions.frame, reviewers[interactions.user_keys.astype(np.int64)],
                         asins[interactions.item_keys.astype(np.int64)])
    return keyed, meta


def _reorder(offsets: np.ndarray, targets: np.ndarray, order: np.ndarray,
             item_id: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """CSR rows taken in ``order``, targets mapped from internal index to item id."""
    lengths = np.diff(offsets)[order]
    new_offsets = np.zeros(len(order) + 1, dtype=np.int64)
    np.cumsum(lengths, out=new_offsets[1:])
    take = np.repeat(offsets[:-1][order] - new_offsets[:-1], lengths) + np.arange(new_offsets[-1])
    return new_offsets, item_id[targets[take]]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--dataset', default='Electronics_synthetic', help='output folder name')
    parser.add_argument('--out', type=Path, default=Path(__file__).resolve().parent,
                        help='folder that receives <dataset>/ (default: this data/ folder)')
    parser.add_argument('--scale', type=float, default=1.0, help="multiplies Electronics' three counts")
    for name, count in ELECTRONICS.items():
        parser.add_argument(f'--{name}', type=int, help=f'exact count instead of scale x {count:,}')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--n_categories', type=int, default=120,
                        help='third-level categories (i_category); Electronics has about 120')
    parser.add_argument('--n_leaves', type=int, default=800, help='category leaves, which the texts name')
    parser.add_argument('--n_brands', type=int, default=8000, help='brands: each used once, the rest Zipf')
    parser.add_argument('--n_neg', type=int, default=N_NEG, help='negatives per dev/test row')
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    counts = {name: getattr(args, name) or max(1, round(count * args.scale)) for name, count in ELECTRONICS.items()}
    start = time.perf_counter()
    interactions, meta = generate(counts['users'], counts['items'], counts['interactions'], args.seed,
                                  args.n_categories, args.n_leaves, args.n_brands)
    directory = args.out / args.dataset
    written = write_rechorus(directory, args.dataset, interactions, meta, np.random.default_rng(args.seed), args.n_neg)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    log.info('%s: %s in %.1f s, peak RSS %.0f MiB', directory, ', '.join(f'{k} {v:,}' for k, v in written.items()),
             time.perf_counter() - start, peak_mib)


if __name__ == '__main__':
    main()
