"""Build a ReChorus dataset from one category of the 2014 Amazon review data, with the paper's recipe.

    python data/build_amazon.py Office_Products --dataset Office           # downloads, then builds
    python data/build_amazon.py Electronics --raw_dir ~/amazon2014         # from local files

Recipe (the LRD authors' preprocessing, which the shared Office copy was made with): the 5-core review
file as is; interactions keep (user, item, time); exact duplicates dropped; stable sort by (time, raw
reviewer id); user and item ids 1.. by first appearance in that order; leave-one-out split (last
interaction test, second-last dev, first always train); 99 uniform negatives per dev/test row, drawn
with replacement, none in the user's whole history. Metadata is restricted to the kept items and kept in
metadata-file order: ``i_category`` is the third level of the first category path (codes in sorted
name order), ``i_brand`` the raw brand (codes in order of first appearance; an empty brand string is a
brand, as in the original), ``r_complement`` / ``r_substitute`` come from ``also_bought`` /
``also_viewed`` restricted to kept items. The item text is the title cut to 32 whitespace tokens, the
leaf of every category path under the category's root, and the brand, each HTML-unescaped.
"""
from __future__ import annotations

import argparse
import html
import logging
import sys
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'src'))
from amazon_raw import (DEFAULT_BASE_URL, SkipStats, fetch, iter_metadata, meta_file_name,  # noqa: E402
                        read_reviews, review_file_name)
from utils.io import format_id_lists  # noqa: E402
from utils.sampling import sample_excluding, sorted_pair_keys  # noqa: E402

log = logging.getLogger('build_amazon')

DEFAULT_CACHE = Path(__file__).resolve().parents[1] / 'cache' / 'amazon'
TITLE_TOKENS = 32
N_NEG = 99
RELATIONS = {'r_complement': 'also_bought', 'r_substitute': 'also_viewed'}
_TEXT_DROP = str.maketrans({'"': None, '\n': None, '\r': None, '\t': ' '})


@dataclass
class Interactions:
    """Sorted interactions with dense ids; ``user_keys[k - 1]`` is the raw key of user id ``k``."""
    frame: pd.DataFrame  # user_id, item_id, time
    user_keys: np.ndarray
    item_keys: np.ndarray


@dataclass
class ItemMeta:
    """Per kept item, in metadata-file order; relations as CSR ``(offsets, item_ids)``."""
    keys: np.ndarray
    item_ids: np.ndarray
    category: np.ndarray  # 0 = missing
    brand: np.ndarray  # 0 = missing
    relations: dict[str, tuple[np.ndarray, np.ndarray]]
    texts: list[str]


def index_interactions(users: Iterable, items: Iterable, times: Iterable) -> Interactions:
    """Drop exact duplicates, stable-sort by (time, raw user key), number users and items by first appearance."""
    df = pd.DataFrame({'user': users, 'item': items, 'time': times}).drop_duplicates(ignore_index=True)
    user_rank, _ = pd.factorize(df['user'], sort=True)
    order = np.lexsort((user_rank, df['time'].to_numpy()))  # stable: ties keep file order
    user_codes, user_keys = pd.factorize(df['user'].to_numpy()[order])
    item_codes, item_keys = pd.factorize(df['item'].to_numpy()[order])
    frame = pd.DataFrame({'user_id': user_codes.astype(np.int64) + 1, 'item_id': item_codes.astype(np.int64) + 1,
                          'time': df['time'].to_numpy(np.int64)[order]})
    return Interactions(frame, np.asarray(user_keys), np.asarray(item_keys))


def split_leave_one_out(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Each user's last interaction is test, the second-last dev, the rest train; the first is always train."""
    groups = frame.groupby('user_id', sort=False)
    position = groups.cumcount().to_numpy()
    from_end = groups.cumcount(ascending=False).to_numpy()
    test = (from_end == 0) & (position > 0)
    dev = (from_end == 1) & (position > 0)
    return (frame[~(test | dev)].reset_index(drop=True), frame[dev].reset_index(drop=True),
            frame[test].reset_index(drop=True))


def sample_negatives(users: np.ndarray, history: np.ndarray, n_items: int, n_neg: int,
                     rng: np.random.Generator) -> np.ndarray:
    """``n_neg`` uniform item ids in 1..n_items per row (with replacement), none in that user's history.

    ``history`` holds the :func:`history_keys` of all interactions.
    """
    return sample_excluding(np.asarray(users), n_neg, 1, n_items + 1, history, n_items + 1, rng)


def history_keys(frame: pd.DataFrame, n_items: int) -> np.ndarray:
    """Sorted (user, item) keys of every interaction, for :func:`sample_negatives`."""
    return sorted_pair_keys(frame['user_id'].to_numpy(), frame['item_id'].to_numpy(), n_items + 1)


def clean_text(text: str) -> str:
    """HTML-unescape and drop quotes and line breaks (tabs become spaces so the TSV stays valid)."""
    return html.unescape(text).translate(_TEXT_DROP)


def item_text(title: str | None, paths: list[list[str]], brand: str | None, root: str) -> str:
    """Title cut to its first 32 tokens, the leaf of each category path under ``root``, then the brand."""
    text = clean_text(' '.join(title.split()[:TITLE_TOKENS])) if title is not None else ''
    for path in paths:
        if path and path[0] == root:
            text += ' ' + clean_text(path[-1])
    if brand is not None:
        text += ' ' + clean_text(brand)
    return text


def _category_paths(value: object) -> list[list[str]]:
    if not isinstance(value, list):
        return []
    return [[str(level) for level in path] for path in value if isinstance(path, list)]


def _csr(lists: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    offsets = np.zeros(len(lists) + 1, dtype=np.int64)
    np.cumsum([len(x) for x in lists], out=offsets[1:])
    values = np.fromiter((v for x in lists for v in x), dtype=np.int64, count=int(offsets[-1]))
    return offsets, values


def collect_item_meta(records: Iterable[dict], item_index: dict[str, int], root: str | None = None) -> ItemMeta:
    """Keep the records of indexed items (first record per ASIN), in order, and derive codes, relations, texts.

    ``root`` is the top category whose leaves go into the text; by default the most common root of the
    kept items' first category paths (e.g. 'Office Products' for Office_Products).
    """
    keys, ids, level3, brands, titles, paths = [], [], [], [], [], []
    seen: set[int] = set()
    related_ids: dict[str, list[list[int]]] = {name: [] for name in RELATIONS}
    for record in records:
        asin = record['asin']
        item_id = item_index.get(asin)
        if item_id is None or item_id in seen:
            continue
        seen.add(item_id)
        categories = _category_paths(record.get('categories'))
        brand, title = record.get('brand'), record.get('title')
        keys.append(asin)
        ids.append(item_id)
        level3.append(categories[0][2] if categories and len(categories[0]) > 2 else None)
        brands.append(None if brand is None else str(brand))
        titles.append(None if title is None else str(title))
        paths.append(categories)
        related = record.get('related') if isinstance(record.get('related'), dict) else {}
        for name, source in RELATIONS.items():
            targets = related.get(source) or []
            related_ids[name].append([item_index[a] for a in dict.fromkeys(targets) if a in item_index])
    if root is None:
        roots = Counter(p[0][0] for p in paths if p and p[0])
        root = roots.most_common(1)[0][0] if roots else ''
    category_codes, _ = pd.factorize(pd.Series(level3, dtype=object), sort=True)
    brand_codes, _ = pd.factorize(pd.Series(brands, dtype=object))
    return ItemMeta(keys=np.asarray(keys, dtype=object), item_ids=np.asarray(ids, dtype=np.int64),
                    category=category_codes.astype(np.int64) + 1, brand=brand_codes.astype(np.int64) + 1,
                    relations={name: _csr(lists) for name, lists in related_ids.items()},
                    texts=[item_text(t, p, b, root) for t, p, b in zip(titles, paths, brands)])


def _write_rows(path: Path, header: str, rows: np.ndarray, fmt: str, chunk: int = 1 << 16) -> None:
    with open(path, 'w', encoding='utf-8') as f:
        f.write(header + '\n')
        for start in range(0, len(rows), chunk):
            f.write(''.join(fmt % tuple(row) for row in rows[start:start + chunk].tolist()))


def write_interactions(path: Path, frame: pd.DataFrame, negatives: np.ndarray | None = None) -> None:
    """``user_id item_id time`` rows, tab-separated; with ``negatives`` a ``neg_items`` list column."""
    rows = frame[['user_id', 'item_id', 'time']].to_numpy(np.int64)
    if negatives is None:
        _write_rows(path, 'user_id\titem_id\ttime', rows, '%d\t%d\t%d\n')
        return
    fmt = '%d\t%d\t%d\t[' + ', '.join(['%d'] * negatives.shape[1]) + ']\n'
    _write_rows(path, 'user_id\titem_id\ttime\tneg_items', np.hstack([rows, negatives]), fmt)


def write_item_meta(path: Path, meta: ItemMeta) -> None:
    """``item_id i_category i_brand r_complement r_substitute`` rows in metadata order, lists as ``[3, 17]``."""
    columns = {'item_id': meta.item_ids, 'i_category': meta.category, 'i_brand': meta.brand}
    for name, (offsets, values) in meta.relations.items():
        columns[name] = format_id_lists([values[a:b] for a, b in zip(offsets[:-1], offsets[1:])])
    pd.DataFrame(columns).to_csv(path, sep='\t', index=False)


def write_keyed(path: Path, keys: Iterable[str], values: Iterable, header: str | None = None) -> None:
    """``key<TAB>value`` lines, verbatim: the text and index files are plain lines, not quoted CSV."""
    with open(path, 'w', encoding='utf-8') as f:
        if header:
            f.write(header + '\n')
        f.writelines(f'{k}\t{v}\n' for k, v in zip(keys, values))


def write_rechorus(directory: Path, name: str, interactions: Interactions, meta: ItemMeta,
                   rng: np.random.Generator, n_neg: int = N_NEG) -> dict[str, int]:
    """Split, draw dev/test negatives and write every file of a ReChorus dataset; returns its counts.

    Files: train/dev/test.csv, item_meta.csv, ``<name>.text`` (``id<TAB>text`` keyed by raw item key,
    metadata order), ``<name>.item2index`` and ``<name>.user2index`` (raw key -> id, id order).
    """
    directory.mkdir(parents=True, exist_ok=True)
    frame = interactions.frame
    n_items = len(interactions.item_keys)
    train, dev, test = split_leave_one_out(frame)
    negatives = sample_negatives(np.concatenate([dev['user_id'], test['user_id']]), history_keys(frame, n_items),
                                 n_items, n_neg, rng)
    dev_neg, test_neg = negatives[:len(dev)], negatives[len(dev):]
    write_interactions(directory / 'train.csv', train)
    write_interactions(directory / 'dev.csv', dev, dev_neg)
    write_interactions(directory / 'test.csv', test, test_neg)
    write_item_meta(directory / 'item_meta.csv', meta)
    write_keyed(directory / f'{name}.text', meta.keys, meta.texts, header='id\ttext')
    write_keyed(directory / f'{name}.item2index', interactions.item_keys, range(1, n_items + 1))
    write_keyed(directory / f'{name}.user2index', interactions.user_keys, range(1, len(interactions.user_keys) + 1))
    return {'users': len(interactions.user_keys), 'items': n_items, 'interactions': len(frame),
            'train': len(train), 'dev': len(dev), 'test': len(test), 'items_with_meta': len(meta.item_ids)}


def raw_files(category: str, raw_dir: Path | None = None, base_url: str = DEFAULT_BASE_URL,
              cache_dir: Path | None = None, sha256: tuple[str | None, str | None] = (None, None),
              progress: bool = True) -> tuple[Path, Path]:
    """Paths of the review and metadata files: from ``raw_dir`` if given, else downloaded into ``cache_dir``."""
    names = (review_file_name(category), meta_file_name(category))
    if raw_dir is not None:
        paths = tuple(Path(raw_dir) / n for n in names)
        for p in paths:
            if not p.exists():
                raise FileNotFoundError(f'{p}: not found (expected the 2014 files {names[0]} and {names[1]})')
        return paths
    cache_dir = Path(cache_dir) if cache_dir is not None else DEFAULT_CACHE / category
    return tuple(fetch(f'{base_url.rstrip("/")}/{n}', cache_dir / n, h, progress) for n, h in zip(names, sha256))


def build(category: str, dataset: str | None = None, out_dir: Path = Path(__file__).resolve().parent,
          raw_dir: Path | None = None, base_url: str = DEFAULT_BASE_URL, cache_dir: Path | None = None,
          seed: int = 0, n_neg: int = N_NEG, root: str | None = None, skip_bad_meta: bool = False,
          sha256: tuple[str | None, str | None] = (None, None), progress: bool = True) -> Path:
    """Build ``<out_dir>/<dataset>/`` from the category's review and metadata files; returns that folder."""
    review_path, meta_path = raw_files(category, raw_dir, base_url, cache_dir, sha256, progress)
    reviews = read_reviews(review_path)
    interactions = index_interactions(reviews['user'], reviews['item'], reviews['time'])
    del reviews
    item_index = {key: i for i, key in enumerate(interactions.item_keys, start=1)}
    skipped = SkipStats()
    meta = collect_item_meta(iter_metadata(meta_path, skip_bad_meta, skipped), item_index, root)
    if skipped.count:
        log.warning('%s: skipped %d malformed metadata line(s), e.g. %s', meta_path, skipped.count,
                    '; '.join(skipped.examples))
    if len(meta.item_ids) < len(item_index):
        log.warning('%d of %d items have no metadata record (no item_meta row, no text)',
                    len(item_index) - len(meta.item_ids), len(item_index))
    directory = Path(out_dir) / (dataset or category)
    counts = write_rechorus(directory, dataset or category, interactions, meta, np.random.default_rng(seed), n_neg)
    log.info('%s: %s', directory, ', '.join(f'{k} {v:,}' for k, v in counts.items()))
    return directory


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('category', help='2014 category file name, e.g. Office_Products, Electronics')
    parser.add_argument('--dataset', help='output dataset name (default: the category), e.g. Office')
    parser.add_argument('--out', type=Path, default=Path(__file__).resolve().parent,
                        help='folder that receives <dataset>/ (default: this data/ folder)')
    parser.add_argument('--raw_dir', type=Path, help='folder holding the downloaded .json.gz files (no download)')
    parser.add_argument('--base_url', default=DEFAULT_BASE_URL, help='where to download the files from')
    parser.add_argument('--cache', type=Path, help='download folder (default: cache/amazon/<category> in the repo)')
    parser.add_argument('--sha256_reviews', help='expected sha256 of the review file')
    parser.add_argument('--sha256_meta', help='expected sha256 of the metadata file')
    parser.add_argument('--seed', type=int, default=0, help='seed of the dev/test negatives')
    parser.add_argument('--n_neg', type=int, default=N_NEG, help='negatives per dev/test row')
    parser.add_argument('--root', help='top category whose leaves go into the text (default: the most common)')
    parser.add_argument('--skip_bad_meta', action='store_true', help='skip and count malformed metadata lines')
    parser.add_argument('--no_progress', action='store_true', help='no download progress bar')
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    build(args.category, args.dataset, args.out, args.raw_dir, args.base_url, args.cache, args.seed, args.n_neg,
          args.root, args.skip_bad_meta, (args.sha256_reviews, args.sha256_meta), not args.no_progress)


if __name__ == '__main__':
    main()
