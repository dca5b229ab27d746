"""The Amazon builder: raw-file parsing, resumable download, the recipe on a hand-checked tiny category,
and a round trip through the shared Office data (regenerated as raw files, served over local HTTP)."""
from __future__ import annotations

import functools
import gzip
import hashlib
import heapq
import html
import json
import sys
import threading
from collections import defaultdict
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
OFFICE = Path(__file__).resolve().parents[2] / 'shared' / 'data' / 'Office'
sys.path[:0] = [str(REPO / 'data'), str(REPO / 'src')]

import amazon_raw  # noqa: E402
import build_amazon  # noqa: E402
from utils.io import int_column, parse_fixed_lists, parse_id_lists, read_table  # noqa: E402

ROOT = 'Office Products'


# ---------------------------------------------------------------- helpers

def write_gz(path: Path, lines: list[str]) -> Path:
    with gzip.open(path, 'wt', encoding='utf-8') as f:
        f.writelines(line + '\n' for line in lines)
    return path


def review_line(user: str, item: str, time: int) -> str:
    return json.dumps({'reviewerID': user, 'asin': item, 'reviewerName': 'Someone', 'helpful': [0, 0],
                       'reviewText': 'Works "fine".', 'overall': 5.0, 'summary': 'ok', 'unixReviewTime': int(time),
                       'reviewTime': '01 1, 2010'})


def read_split(directory: Path, name: str) -> pd.DataFrame:
    """A built split through the project's own validated reader functions."""
    path = str(directory / name)
    columns = ['user_id', 'item_id', 'time'] + (['neg_items'] if name != 'train.csv' else [])
    table = read_table(path, '\t', columns)
    out = pd.DataFrame({c: int_column(table, c, path) for c in columns[:3]})
    if 'neg_items' in columns:
        out['neg_items'] = list(parse_fixed_lists(table['neg_items'], path, 'neg_items'))
    return out


def read_index(path: Path) -> pd.Series:
    """``key<TAB>id`` file as a Series key -> id."""
    df = pd.read_csv(path, sep='\t', header=None, names=['key', 'id'], dtype={'key': str}, keep_default_na=False)
    return df.set_index('key')['id']


def keys_by_id(path: Path) -> pd.Series:
    """``key<TAB>id`` file as a Series id -> key."""
    index = read_index(path)
    return pd.Series(index.index, index=index.to_numpy())


def read_text(path: Path) -> pd.Series:
    lines = path.read_text(encoding='utf-8').split('\n')
    assert lines[0] == 'id\ttext' and lines[-1] == ''
    pairs = [line.split('\t', 1) for line in lines[1:-1]]
    return pd.Series([t for _, t in pairs], index=[k for k, _ in pairs])


def relation_lists(directory: Path, column: str) -> list[list[int]]:
    table = read_table(str(directory / 'item_meta.csv'), '\t', ['item_id', column])
    values, offsets = parse_id_lists(table[column], 'item_meta.csv', column)
    return [values[a:b].tolist() for a, b in zip(offsets[:-1], offsets[1:])]


def assert_negatives_valid(directory: Path, n_items: int, n_neg: int = 99) -> None:
    """Every dev/test row has ``n_neg`` ids in 1..n_items, none in that user's full history."""
    splits = {n: read_split(directory, n) for n in ('train.csv', 'dev.csv', 'test.csv')}
    everything = pd.concat([s[['user_id', 'item_id']] for s in splits.values()])
    history = set(zip(everything['user_id'], everything['item_id']))
    for name in ('dev.csv', 'test.csv'):
        negatives = np.stack(splits[name]['neg_items'].to_list())
        assert negatives.shape == (len(splits[name]), n_neg)
        assert negatives.min() >= 1 and negatives.max() <= n_items
        users = np.repeat(splits[name]['user_id'].to_numpy(), n_neg)
        assert not any((u, i) in history for u, i in zip(users, negatives.ravel()))


class RangeHandler(SimpleHTTPRequestHandler):
    """Static files with optional HTTP Range support; records (path, Range header) of each request."""

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        self.server.requests.append((self.path, self.headers.get('Range')))
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        sent = len(data) // 2 if self.server.drop_after_half else len(data)
        start = 0
        requested = self.headers.get('Range')
        if requested and self.server.ranges:
            start = int(requested.removeprefix('bytes=').split('-')[0])
            if start >= len(data):
                self.send_response(416)
                self.send_header('Content-Range', f'bytes */{len(data)}')
                self.end_headers()
                return
            self.send_response(206)
            self.send_header('Content-Range', f'bytes {start}-{len(data) - 1}/{len(data)}')
        else:
            self.send_response(200)
        self.send_header('Content-Length', str(len(data) - start))
        self.end_headers()
        self.wfile.write(data[start:sent])
        self.close_connection = True


@pytest.fixture(scope='module')
def server(tmp_path_factory):
    """A local HTTP server on 127.0.0.1 serving a temporary folder; yields (base_url, folder, server)."""
    folder = tmp_path_factory.mktemp('served')
    httpd = ThreadingHTTPServer(('127.0.0.1', 0), functools.partial(RangeHandler, directory=str(folder)))
    httpd.requests, httpd.ranges, httpd.drop_after_half = [], True, False
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f'http://127.0.0.1:{httpd.server_port}', folder, httpd
    httpd.shutdown()
    thread.join()


# ---------------------------------------------------------------- parser

def test_truncated_gzip_is_reported_with_file_and_line(tmp_path):
    lines = [review_line(f'U{i}', f'I{i % 7}', 1000 + i) for i in range(3000)]
    path = write_gz(tmp_path / 'reviews_X_5.json.gz', lines)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    with pytest.raises(amazon_raw.RawDataError, match=r'reviews_X_5\.json\.gz: gzip .* truncated .* after line \d+'):
        amazon_raw.read_reviews(path)


def test_review_missing_field_names_the_line(tmp_path):
    lines = [review_line('U1', 'I1', 10), review_line('U2', 'I1', 11), json.dumps({'reviewerID': 'U3', 'asin': 'I2'})]
    path = write_gz(tmp_path / 'reviews.json.gz', lines)
    with pytest.raises(amazon_raw.RawDataError, match=r'reviews\.json\.gz line 3: .*missing .*unixReviewTime'):
        amazon_raw.read_reviews(path)


def test_review_time_must_be_an_integer(tmp_path):
    path = write_gz(tmp_path / 'reviews.json.gz', [review_line('U1', 'I1', 10).replace('10,', '"10",')])
    with pytest.raises(amazon_raw.RawDataError, match=r'line 1: unixReviewTime .* not an integer'):
        amazon_raw.read_reviews(path)


def test_metadata_python_literals_parse_and_bad_lines_are_reported_never_executed(tmp_path):
    canary = tmp_path / 'pwned'
    lines = [
        "{'asin': 'B1', 'title': 'It\\'s a \\u00e9 \"pen\"', 'categories': [['Office Products', 'Pens']], 'x': None}",
        "{'asin': 'B2', 'title': __import__('pathlib').Path(%r).touch()}" % str(canary),
        json.dumps({'asin': 'B3', 'brand': 'Acme'}),
        "{'title': 'no asin'}",
        "['B4']",
    ]
    path = write_gz(tmp_path / 'meta.json.gz', lines)
    records = amazon_raw.iter_metadata(path)
    assert next(records) == {'asin': 'B1', 'title': 'It\'s a \u00e9 "pen"',
                             'categories': [['Office Products', 'Pens']], 'x': None}
    with pytest.raises(amazon_raw.RawDataError, match=r'meta\.json\.gz line 2: neither JSON nor a Python literal'):
        next(records)
    stats = amazon_raw.SkipStats()
    assert [r['asin'] for r in amazon_raw.iter_metadata(path, skip_bad=True, stats=stats)] == ['B1', 'B3']
    assert stats.count == 3 and 'line 4' in stats.examples[1] and 'line 5' in stats.examples[2]
    assert not canary.exists()


# ---------------------------------------------------------------- download

def test_fetch_resumes_restarts_and_checks_sha256(server, tmp_path):
    base_url, folder, httpd = server
    payload = np.random.default_rng(0).bytes(300_000)
    (folder / 'blob.bin').write_bytes(payload)
    digest = hashlib.sha256(payload).hexdigest()
    dest = tmp_path / 'blob.bin'
    part = tmp_path / 'blob.bin.part'

    part.write_bytes(payload[:1000])  # an interrupted download
    httpd.requests.clear()
    assert amazon_raw.fetch(f'{base_url}/blob.bin', dest, sha256=digest, progress=False).read_bytes() == payload
    assert httpd.requests == [('/blob.bin', 'bytes=1000-')] and not part.exists()

    httpd.requests.clear()  # already there: no request
    amazon_raw.fetch(f'{base_url}/blob.bin', dest, sha256=digest, progress=False)
    assert httpd.requests == []

    dest.unlink()  # the connection drops half way: a clear error, and the rerun resumes
    httpd.drop_after_half = True
    try:
        with pytest.raises(amazon_raw.DownloadError, match='rerun to resume'):
            amazon_raw.fetch(f'{base_url}/blob.bin', dest, progress=False)
    finally:
        httpd.drop_after_half = False
    assert 0 < part.stat().st_size < len(payload)
    assert amazon_raw.fetch(f'{base_url}/blob.bin', dest, sha256=digest, progress=False).read_bytes() == payload

    dest.rename(part)  # the part is already complete: the server answers 416 and the part is kept
    assert amazon_raw.fetch(f'{base_url}/blob.bin', dest, sha256=digest, progress=False).read_bytes() == payload

    dest.unlink()  # a server without Range support: the part is restarted, not appended to
    part.write_bytes(b'garbage')
    httpd.ranges = False
    try:
        assert amazon_raw.fetch(f'{base_url}/blob.bin', dest, progress=False).read_bytes() == payload
    finally:
        httpd.ranges = True

    dest.unlink()
    with pytest.raises(amazon_raw.DownloadError, match='sha256 .* does not match'):
        amazon_raw.fetch(f'{base_url}/blob.bin', dest, sha256='0' * 64, progress=False)
    assert not dest.exists() and not part.exists()
    with pytest.raises(amazon_raw.DownloadError, match='HTTP 404'):
        amazon_raw.fetch(f'{base_url}/missing.bin', tmp_path / 'missing.bin', progress=False)


# ---------------------------------------------------------------- the recipe on a tiny category

TINY_REVIEWS = [('U_b', 'I1', 100), ('U_a', 'I2', 100), ('U_a', 'I3', 200), ('U_a', 'I3', 200),
                ('U_a', 'I1', 300), ('U_b', 'I4', 300), ('U_b', 'I2', 300), ('U_a', 'I5', 400),
                ('U_b', 'I3', 400), ('U_c', 'I6', 150), ('U_c', 'I2', 150), ('U_c', 'I4', 500),
                ('U_a', 'I3', 500)]
LONG_TITLE = ' '.join(f'w{i}' for i in range(40))
TINY_META = [
    repr({'asin': 'I9', 'title': 'Not reviewed', 'brand': 'Zeta', 'categories': [['Tiny Things', 'A', 'Aardvark']]}),
    repr({'asin': 'I3', 'title': 'Lamp &amp; Shade   "Deluxe"', 'brand': 'Beta',
          'categories': [['Tiny Things', 'Home', 'Lamps', 'Desk Lamps'], ['Other Root', 'X'], ['Tiny Things', 'Gifts']],
          'related': {'also_bought': ['I1', 'I9', 'I1', 'I4'], 'also_viewed': ['I5'], 'bought_together': ['I2']}}),
    json.dumps({'asin': 'I1', 'title': LONG_TITLE, 'categories': [['Tiny Things', 'Home']], 'price': 3.5}),
    repr({'asin': 'I2', 'brand': '', 'categories': [['Tiny Things', 'Toys', 'Blocks']]}),
    repr({'asin': 'I4', 'title': 'Widget', 'brand': 'Beta',
          'categories': [['Tiny Things', 'Toys', 'Action Figures', 'Heroes']],
          'related': {'also_viewed': ['I3', 'I2']}}),
    repr({'asin': 'I3', 'title': 'Duplicate record', 'brand': 'Gamma'}),
    repr({'asin': 'I6', 'title': "Gadget's box", 'brand': 'Gamma', 'salesRank': {'Toys': 5},
          'categories': [['Tiny Things', 'Toys', 'Blocks', 'Wooden']]}),
]


@pytest.fixture
def tiny_raw(tmp_path):
    raw = tmp_path / 'raw'
    raw.mkdir()
    write_gz(raw / 'reviews_Tiny_Things_5.json.gz', [review_line(*r) for r in TINY_REVIEWS])
    write_gz(raw / 'meta_Tiny_Things.json.gz', TINY_META)
    return raw


def test_tiny_category_follows_the_recipe(tiny_raw, tmp_path):
    build_amazon.main(['Tiny_Things', '--dataset', 'Tiny', '--raw_dir', str(tiny_raw), '--out', str(tmp_path)])
    out = tmp_path / 'Tiny'
    # ids by first appearance after a stable (time, raw user) sort; the exact duplicate is gone
    assert read_index(out / 'Tiny.user2index').to_dict() == {'U_a': 1, 'U_b': 2, 'U_c': 3}
    assert read_index(out / 'Tiny.item2index').to_dict() == {'I2': 1, 'I1': 2, 'I6': 3, 'I3': 4, 'I4': 5, 'I5': 6}
    rows = lambda df: list(df[['user_id', 'item_id', 'time']].itertuples(index=False, name=None))  # noqa: E731
    assert rows(read_split(out, 'train.csv')) == [(1, 1, 100), (2, 2, 100), (3, 3, 150), (1, 4, 200), (1, 2, 300),
                                                  (2, 5, 300)]
    assert rows(read_split(out, 'dev.csv')) == [(3, 1, 150), (2, 1, 300), (1, 6, 400)]
    assert rows(read_split(out, 'test.csv')) == [(2, 4, 400), (1, 4, 500), (3, 5, 500)]
    assert_negatives_valid(out, n_items=6)
    # metadata: kept items only, first record per ASIN, file order; sorted category codes, brand codes by first
    # appearance ('' is a brand), relations restricted to kept items and de-duplicated
    meta = pd.read_csv(out / 'item_meta.csv', sep='\t')
    assert meta.columns.tolist() == ['item_id', 'i_category', 'i_brand', 'r_complement', 'r_substitute']
    assert meta[['item_id', 'i_category', 'i_brand']].values.tolist() == [[4, 3, 1], [2, 0, 0], [1, 2, 2], [5, 1, 1],
                                                                          [3, 2, 3]]
    assert relation_lists(out, 'r_complement') == [[2, 5], [], [], [], []]
    assert relation_lists(out, 'r_substitute') == [[6], [], [], [4, 1], []]
    assert read_text(out / 'Tiny.text').to_dict() == {
        'I3': 'Lamp & Shade Deluxe Desk Lamps Gifts Beta',
        'I1': ' '.join(f'w{i}' for i in range(32)) + ' Home',
        'I2': ' Blocks ',
        'I4': 'Widget Heroes Beta',
        'I6': "Gadget's box Wooden Gamma",
    }


def test_tiny_build_is_deterministic_per_seed(tiny_raw, tmp_path):
    outputs = [build_amazon.build('Tiny_Things', out_dir=tmp_path / name, raw_dir=tiny_raw, seed=seed)
               for name, seed in (('a', 3), ('b', 3), ('c', 4))]
    same = [(o / 'dev.csv').read_text() + (o / 'test.csv').read_text() for o in outputs]
    assert same[0] == same[1] and same[0] != same[2]


def test_missing_raw_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match='reviews_Nope_5.json.gz: not found'):
        build_amazon.build('Nope', out_dir=tmp_path, raw_dir=tmp_path)


# ---------------------------------------------------------------- round trip through the shared Office data

def reviewer_order(events: pd.DataFrame, splits: dict[str, pd.DataFrame]) -> pd.Series:
    """Rank per user id such that sorting by (time, rank, asin) reproduces the shared files' row and id order.

    The shared ids come from a stable sort by (time, raw reviewer id) of an ASIN-sorted file; the reviewer
    ids are not shipped, so we find an order consistent with the row order of each split, the user ids
    (first appearance) and the item ids (first appearance), repairing it where an item would appear early.
    """
    users = sorted(events['user_id'].unique())
    edges: dict[int, set[int]] = defaultdict(set)

    def chain(seq) -> None:
        for a, b in zip(seq[:-1], seq[1:]):
            if a != b:
                edges[a].add(b)

    for split in splits.values():
        for _, group in split.groupby('time', sort=False):
            chain(list(dict.fromkeys(group['user_id'])))
    first_time = events.groupby('user_id')['time'].min()
    for _, group in first_time.groupby(first_time):
        chain(sorted(group.index))
    for _ in range(100):
        indegree = defaultdict(int)
        for targets in edges.values():
            for b in targets:
                indegree[b] += 1
        ready = [u for u in users if indegree[u] == 0]
        heapq.heapify(ready)
        order = []
        while ready:
            u = heapq.heappop(ready)
            order.append(u)
            for b in edges[u]:
                indegree[b] -= 1
                if indegree[b] == 0:
                    heapq.heappush(ready, b)
        assert len(order) == len(users), 'inconsistent reviewer order constraints'
        rank = pd.Series(np.arange(len(order)), index=order)
        ordered = events.assign(rank=events['user_id'].map(rank)).sort_values(['time', 'rank', 'asin'], kind='stable')
        first = ordered.drop_duplicates('item_id')
        wrong = np.flatnonzero(first['item_id'].to_numpy() != np.arange(1, len(first) + 1))
        if not len(wrong):
            return rank
        early = first.iloc[wrong[0]]
        due = ordered[(ordered['item_id'] == wrong[0] + 1) & (ordered['time'] == early['time'])]
        assert len(due), 'cannot repair the reviewer order'
        edges[due['user_id'].iloc[0]].add(early['user_id'])
    raise AssertionError('reviewer order did not settle')


def escape(text: str) -> str:
    """HTML-escape, with non-ASCII whitespace (e.g. a no-break space) as a character reference: the recipe
    splits the title on whitespace before unescaping, so such characters sit inside tokens."""
    return ''.join(f'&#{ord(c)};' if c.isspace() and c != ' ' else c for c in html.escape(text))


def brand_names(texts: list[str], codes: np.ndarray) -> dict[int, tuple[str, str]]:
    """Per brand code: (text, raw string), such that every text of the brand ends with the text.

    The text is the shortest common token suffix not used by another code. Where the shared data has two
    codes whose cleaned brands read the same, the raw strings differ only in HTML escaping (as in the
    real metadata), so the codes stay apart and the texts still reproduce.
    """
    by_code: dict[int, list[list[str]]] = defaultdict(list)
    for text, code in zip(texts, codes):
        if code:
            by_code[code].append(text.split(' '))
    names: dict[int, tuple[str, str]] = {}
    for code in sorted(by_code):
        tokens = by_code[code]
        shortest = min(len(t) for t in tokens)
        suffixes = [' '.join(tokens[0][-k:]) for k in range(1, shortest)
                    if all(t[-k:] == tokens[0][-k:] for t in tokens)]
        used = [text for text, _ in names.values()]
        if all(t[-1] == '' for t in tokens):
            text = ''
        elif suffixes:
            text = next((x for x in suffixes if x not in used), suffixes[0])
        else:
            text = f'Generated Brand {code}'
        twins = used.count(text)  # encode the first `twins` characters as references
        names[code] = (text, ''.join(f'&#{ord(c)};' for c in text[:twins]) + escape(text[twins:]))
    return names


def office_reviews(splits: dict[str, pd.DataFrame], asin_of: pd.Series) -> tuple[list[str], pd.Series]:
    """Review-file lines (ASIN-sorted like the real file, a few exact duplicates) and the reviewer per user id."""
    events = pd.concat([s[['user_id', 'item_id', 'time']] for s in splits.values()], ignore_index=True)
    events['asin'] = events['item_id'].map(asin_of)
    reviewer = reviewer_order(events, splits).map(lambda r: f'A{r:06d}Q').rename('reviewer')
    events['reviewer'] = events['user_id'].map(reviewer)
    ordered = events.sort_values(['asin', 'time', 'reviewer'], kind='stable')
    lines = [review_line(u, a, t) for u, a, t in ordered[['reviewer', 'asin', 'time']].itertuples(index=False)]
    return [line for i, line in enumerate(lines) for _ in range(2 if i % 997 == 0 else 1)], reviewer


def office_metadata(meta: pd.DataFrame, text: pd.Series, asin_of: pd.Series) -> tuple[list[str], pd.Series]:
    """Metadata lines whose fields give back the shared codes, relations and texts, and the text each must give.

    Each shared text is split into title, category leaves and brand; the title gets HTML escapes, irregular
    spaces and (at 32 tokens) words past the cut; some items get two leaves or a path under another root;
    ghost items outside the 5-core and ASINs outside it in the related lists must change nothing.
    """
    names = brand_names(text.tolist(), meta['i_brand'].to_numpy())
    related_ids = {c: meta[c].map(lambda cell: [int(x) for x in cell.strip('[]').split(',') if x.strip()])
                   for c in ('r_complement', 'r_substitute')}
    records, expected = [], {}
    for row, (asin, original) in enumerate(text.items()):
        category, brand = int(meta['i_category'].iloc[row]), int(meta['i_brand'].iloc[row])
        brand_text, brand_raw = names.get(brand, (None, None))
        middle = original[:-len(brand_text) - 1] if brand and original.endswith(' ' + brand_text) else original
        tokens = middle.split(' ')
        n_leaf = max(1, len(tokens) - 32) if len(tokens) > 1 else 0
        title, leaf = tokens[:len(tokens) - n_leaf], tokens[len(tokens) - n_leaf:]
        leaves = [' '.join(leaf[:-1]), leaf[-1]] if n_leaf > 1 and row % 4 == 0 else [' '.join(leaf)] if leaf else []
        level3 = [f'Category {category:02d}'] if category else []  # a path's third level is the category
        first = [ROOT, 'Office & School Supplies', *level3] if category else [ROOT]
        paths = [first + leaves[:1] if leaves else ['Elsewhere', 'Misc', *level3]]
        paths += [[ROOT, 'Office & School Supplies', 'More', extra] for extra in leaves[1:]]
        if row % 5 == 0:
            paths.append(['Electronics', 'Computers & Accessories', 'Not in the text'])
        title_raw = (' ' if row % 3 == 0 else '') + escape(' '.join(title))
        if len(title) == 32:
            title_raw += ' words beyond the thirty-second token'
        record = {'asin': asin, 'title': title_raw, 'categories': [[escape(p) for p in path] for path in paths],
                  'imUrl': 'http://example.invalid/x.jpg', 'salesRank': {ROOT: row}}
        if brand:
            record['brand'] = brand_raw
        outside = [f'ZZ{row:05d}{k}' for k in range(row % 3)]
        record['related'] = {key: outside + asin_of[related_ids[c].iloc[row]].tolist()
                             for key, c in (('also_bought', 'r_complement'), ('also_viewed', 'r_substitute'))}
        record['related']['bought_together'] = [asin]
        records.append(json.dumps(record) if row % 7 == 0 else repr(record))
        if row % 50 == 0:
            records.append(repr({'asin': f'ZZGHOST{row}', 'title': 'ghost', 'brand': f'Ghost {row}',
                                 'categories': [[ROOT, 'Office & School Supplies', 'AAA first category']]}))
        expected[asin] = ' '.join([' '.join(title), *leaves] + ([brand_text] if brand else []))
    return records, pd.Series(expected)


@pytest.fixture(scope='module')
def office(server, tmp_path_factory):
    """Shared Office files -> raw 2014-style review/metadata files on the HTTP server -> our builder."""
    if not (OFFICE / 'train.csv').exists():
        pytest.skip(f'shared Office data not found at {OFFICE}')
    base_url, folder, _ = server
    splits = {n: pd.read_csv(OFFICE / f'{n}.csv', sep='\t') for n in ('train', 'dev', 'test')}
    meta = pd.read_csv(OFFICE / 'item_meta.csv', sep='\t')
    text = read_text(OFFICE / 'Office.text')
    asin_of = keys_by_id(OFFICE / 'Office.item2index')
    reviews, reviewer = office_reviews(splits, asin_of)
    write_gz(folder / 'reviews_Office_Products_5.json.gz', reviews)
    records, expected_text = office_metadata(meta, text, asin_of)
    write_gz(folder / 'meta_Office_Products.json.gz', records)
    out = tmp_path_factory.mktemp('built')
    directory = build_amazon.build('Office_Products', 'Office', out, base_url=base_url, cache_dir=out / 'cache',
                                   seed=0, progress=False)
    return {'dir': directory, 'splits': splits, 'meta': meta, 'text': text, 'asin_of': asin_of,
            'reviewer': reviewer, 'expected_text': expected_text}


def facts(splits: dict[str, pd.DataFrame], user_key: pd.Series, item_key: pd.Series) -> pd.DataFrame:
    """(split, reviewer, ASIN, time) rows, sorted, independent of id numbering."""
    rows = [pd.DataFrame({'split': name, 'user': s['user_id'].map(user_key).to_numpy(),
                          'item': s['item_id'].map(item_key).to_numpy(), 'time': s['time'].to_numpy()})
            for name, s in splits.items()]
    return pd.concat(rows).sort_values(['split', 'user', 'item', 'time']).reset_index(drop=True)


def test_office_interactions_and_split_round_trip(office):
    out = office['dir']
    built = {n: read_split(out, f'{n}.csv') for n in ('train', 'dev', 'test')}
    expected = facts(office['splits'], office['reviewer'], office['asin_of'])
    pd.testing.assert_frame_equal(facts(built, keys_by_id(out / 'Office.user2index'),
                                        keys_by_id(out / 'Office.item2index')), expected)
    assert {n: len(s) for n, s in built.items()} == {'train': 43448, 'dev': 4905, 'test': 4905}
    # with reviewer ids in a consistent order, even the ids and the row order are the paper's
    assert (out / 'Office.item2index').read_text() == (OFFICE / 'Office.item2index').read_text()
    assert (out / 'train.csv').read_text() == (OFFICE / 'train.csv').read_text()
    for name in ('dev', 'test'):
        cols = ['user_id', 'item_id', 'time']
        pd.testing.assert_frame_equal(built[name][cols], office['splits'][name][cols])


def test_office_metadata_round_trip(office):
    out = office['dir']
    built = pd.read_csv(out / 'item_meta.csv', sep='\t')
    asin_built = keys_by_id(out / 'Office.item2index')
    shared = office['meta']
    assert built['item_id'].map(asin_built).tolist() == shared['item_id'].map(office['asin_of']).tolist()  # file order

    def triplets(table: pd.DataFrame, asin_of: pd.Series, column: str) -> set[tuple[str, str]]:
        return {(asin_of[i], asin_of[int(j)]) for i, cell in zip(table['item_id'], table[column])
                for j in cell.strip('[]').split(',') if j.strip()}

    for column, count in (('r_complement', 38071), ('r_substitute', 18345)):
        expected = triplets(shared, office['asin_of'], column)
        assert len(expected) == count
        assert triplets(built, asin_built, column) == expected

    def groups(table: pd.DataFrame, asin_of: pd.Series, column: str) -> set[frozenset[str]]:
        asins = table['item_id'].map(asin_of)
        return {frozenset(asins[table[column] == code]) for code in table[column].unique() if code}

    for column, n_values in (('i_category', 39), ('i_brand', 341)):
        assert groups(built, asin_built, column) == groups(shared, office['asin_of'], column)
        assert built[column].nunique() - 1 == n_values
        assert built[column].tolist() == shared[column].tolist()  # same code numbering rules as the paper's
    assert (out / 'item_meta.csv').read_bytes() == (OFFICE / 'item_meta.csv').read_bytes()  # relation order kept too


def test_office_texts_follow_the_recipe(office):
    built = read_text(office['dir'] / 'Office.text')
    assert built.index.tolist() == office['text'].index.tolist()  # metadata order, keyed by ASIN
    wrong = built[built != office['expected_text']]
    assert wrong.empty, f'{len(wrong)} texts differ from the recipe, e.g. {wrong.head(3).to_dict()}'
    wrong = built[built != office['text']]
    assert wrong.empty, f'{len(wrong)} shared Office texts not reproduced, e.g. {wrong.head(3).to_dict()}'
    assert (office['dir'] / 'Office.text').read_bytes() == (OFFICE / 'Office.text').read_bytes()


def test_office_negatives_follow_the_rules(office):
    assert_negatives_valid(office['dir'], n_items=2420)
