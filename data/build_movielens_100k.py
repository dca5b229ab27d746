"""Build the paper's MovieLens-100k dataset in ReChorus format from raw GroupLens data.

    python data/build_movielens_100k.py --out data [--source DIR|recbole|download] [--seed 0]

writes ``<out>/MovieLens_100k/``: ``train.csv``, ``dev.csv``, ``test.csv`` (99 negatives each),
``item_meta.csv`` (``i_year`` + 19 genre flags), ``MovieLens_100k.text`` and
``MovieLens_100k.item2index``. The recipe reproduces the paper's statistics (943 users, 1,349 items,
99,287 interactions) and the reference copy's positives exactly; see ``data/README.md``.

Raw data comes from the first source that exists: a GroupLens folder (``u.data`` + ``u.item``),
the ml-100k copy inside the ``recbole==1.2.1`` wheel (located on disk, never imported), or a
checksum-verified download of the GroupLens zip.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import re
import sys
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

REPO_DIR = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_DIR / 'src'))
from utils.io import DataFormatError, format_id_lists  # noqa: E402
from utils.sampling import sample_excluding, sorted_pair_keys  # noqa: E402

DATASET = 'MovieLens_100k'
GENRES = ('unknown', 'Action', 'Adventure', 'Animation', "Children's", 'Comedy', 'Crime', 'Documentary',
          'Drama', 'Fantasy', 'Film-Noir', 'Horror', 'Musical', 'Mystery', 'Romance', 'Sci-Fi', 'Thriller',
          'War', 'Western')  # GroupLens order of the u.item flags
# i_year codes: 1 = before 1940, 2..5 = 1940s..1970s, 6 = 1980-84, 7 = 1985-89, 8..16 = 1990..1998; 0 = unknown.
YEAR_EDGES = (1940, 1950, 1960, 1970, 1980, 1985, *range(1990, 1999))
K_CORE = 5
N_NEGATIVES = 99

GROUPLENS_URL = 'https://files.grouplens.org/datasets/movielens/ml-100k.zip'
# sha256 of the official zip (4,924,029 bytes), as recorded in TensorFlow Datasets' url_checksums/movielens.txt.
GROUPLENS_SHA256 = '50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229'
DEFAULT_GROUPLENS_DIRS = (REPO_DIR / 'data' / 'ml-100k', REPO_DIR.parent / 'shared' / 'data' / 'ml-100k-grouplens')
RECBOLE_UNKNOWN = 'unkonwn'  # recbole's spelling of GroupLens' "unknown" title (movie 267)


@dataclass
class RawMovieLens:
    """Raw data in one shape whatever the source; ids are the original GroupLens ids."""

    interactions: pd.DataFrame  # user, item, time
    movies: pd.DataFrame  # movie, title (with year), year (float, NaN = unknown), one 0/1 column per genre
    source: str  # human-readable origin, for logs


@dataclass
class MovieLensDataset:
    """Everything written to ``<out>/MovieLens_100k/``, as frames."""

    train: pd.DataFrame
    dev: pd.DataFrame
    test: pd.DataFrame
    item_meta: pd.DataFrame
    text: pd.DataFrame
    item2index: pd.DataFrame


# ---------------------------------------------------------------- raw readers (validated, line-numbered errors)

def _split_lines(path: Path, sep: str, n_fields: int, encoding: str, skip: int = 0) -> pd.DataFrame:
    """Split a delimited text file into string fields; the index is the 1-based line number.

    Blank lines are ignored; any other line without exactly ``n_fields`` fields is an error naming it.
    """
    if not path.is_file():
        raise FileNotFoundError(f'{path}: file not found')
    try:
        text = path.read_text(encoding=encoding)
    except UnicodeDecodeError as e:
        line = path.read_bytes()[:e.start].count(b'\n') + 1
        raise DataFormatError(f'{path} line {line}: not valid {encoding} text ({e.reason})') from e
    lines = pd.Series(text.split('\n'), dtype=object).str.removesuffix('\r')  # not splitlines: Latin-1 has \x85
    lines.index = np.arange(1, len(lines) + 1)
    lines = lines.iloc[skip:]
    lines = lines[lines.str.strip() != '']
    if lines.empty:
        raise DataFormatError(f'{path}: no data lines')
    counts = lines.str.count(re.escape(sep)) + 1
    bad = counts != n_fields
    if bad.any():
        line = int(bad.idxmax())
        raise DataFormatError(f'{path} line {line}: expected {n_fields} fields separated by {sep!r}, '
                              f'found {counts[line]}: {lines[line][:80]!r}')
    return lines.str.split(sep, regex=False, expand=True)


def _int_field(fields: pd.DataFrame, column: int, path: Path, name: str, pattern: str = r'\d+') -> np.ndarray:
    """One field as int64; ``pattern`` says what a valid value looks like (recbole writes ``123.0``)."""
    values = fields[column].str.strip()
    ok = values.str.fullmatch(pattern)
    if not ok.all():
        line = int(ok.idxmin())
        raise DataFormatError(f'{path} line {line}: field {column + 1} ({name}) should be a non-negative '
                              f'integer, found {fields.at[line, column]!r}')
    return values.astype(float).astype(np.int64).to_numpy()


def _interactions(fields: pd.DataFrame, columns: tuple[int, int, int], path: Path,
                  pattern: str = r'\d+') -> pd.DataFrame:
    user, item, time = (_int_field(fields, c, path, n, pattern) for c, n in zip(columns, ('user', 'item', 'time')))
    return pd.DataFrame({'user': user, 'item': item, 'time': time})


def _check_unique_movies(movies: pd.DataFrame, path: Path) -> None:
    dup = movies['movie'].duplicated()
    if dup.any():
        raise DataFormatError(f'{path} line {int(dup.idxmax())}: movie id {movies["movie"][dup].iloc[0]} '
                              f'appears twice')


def read_grouplens(folder: Path) -> RawMovieLens:
    """Read ``u.data`` (tab-separated user, item, rating, time) and ``u.item`` (pipe-separated, Latin-1).

    ``year`` is the release-date year: that is what the reference ``i_year`` was built from.
    """
    folder = Path(folder)
    data_path, item_path = folder / 'u.data', folder / 'u.item'
    interactions = _interactions(_split_lines(data_path, '\t', 4, 'latin-1'), (0, 1, 3), data_path)

    fields = _split_lines(item_path, '|', 5 + len(GENRES), 'latin-1')
    release = fields[2].str.strip()
    date = pd.to_datetime(release, format='%d-%b-%Y', errors='coerce')
    bad_date = (release != '') & date.isna()
    if bad_date.any():
        line = int(bad_date.idxmax())
        raise DataFormatError(f'{item_path} line {line}: field 3 (release date) should look like 01-Jan-1995 '
                              f'or be empty, found {release[line]!r}')
    flags = fields.iloc[:, 5:].apply(lambda c: c.str.strip())
    bad_flag = ~flags.isin(['0', '1']).all(axis=1)
    if bad_flag.any():
        line = int(bad_flag.idxmax())
        raise DataFormatError(f'{item_path} line {line}: fields 6-24 (genre flags) should be 0 or 1, '
                              f'found {"|".join(fields.loc[line, 5:])!r}')
    movies = pd.DataFrame({'movie': _int_field(fields, 0, item_path, 'movie id'),
                           'title': fields[1].to_numpy(),
                           'year': date.dt.year.astype(float).to_numpy()}, index=fields.index)
    genres = pd.DataFrame(flags.astype(np.int64).to_numpy(), columns=list(GENRES), index=fields.index)
    movies = pd.concat([movies, genres], axis=1)
    _check_unique_movies(movies, item_path)
    return RawMovieLens(interactions, movies.reset_index(drop=True), f'GroupLens folder {folder}')


def find_recbole_folder() -> Path | None:
    """The ml-100k folder shipped in an installed recbole wheel, found without importing recbole."""
    spec = importlib.util.find_spec('recbole')
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        folder = Path(location) / 'dataset_example' / 'ml-100k'
        if (folder / 'ml-100k.inter').is_file() and (folder / 'ml-100k.item').is_file():
            return folder
    return None


def _recbole_header(path: Path, expected: tuple[str, ...]) -> None:
    if not path.is_file():
        raise FileNotFoundError(f'{path}: file not found')
    with path.open(encoding='utf-8') as f:
        header = tuple(h.split(':')[0] for h in f.readline().rstrip('\r\n').split('\t'))
    if header != expected:
        raise DataFormatError(f'{path} line 1: expected header fields {list(expected)} (with :type suffixes), '
                              f'found {list(header)}')


def read_recbole(folder: Path) -> RawMovieLens:
    """Read recbole's ``ml-100k.inter`` / ``ml-100k.item`` (same interactions as ``u.data``).

    recbole has no release date: its ``release_year`` is the year in the title, split off the GroupLens
    title at the last parenthesis. The title is rejoined as ``title (release_year)``, which restores the
    GroupLens title; ``year`` is the last ``(yyyy)`` in it, so ``i_year`` differs from the release-date
    year of the reference for 99 of the 1,349 kept movies.
    """
    folder = Path(folder)
    inter_path, item_path = folder / 'ml-100k.inter', folder / 'ml-100k.item'
    _recbole_header(inter_path, ('user_id', 'item_id', 'rating', 'timestamp'))
    fields = _split_lines(inter_path, '\t', 4, 'utf-8', skip=1)
    interactions = _interactions(fields, (0, 1, 3), inter_path, pattern=r'\d+(?:\.0*)?')

    _recbole_header(item_path, ('item_id', 'movie_title', 'release_year', 'class'))
    fields = _split_lines(item_path, '\t', 4, 'utf-8', skip=1)
    unknown = fields[1] == RECBOLE_UNKNOWN
    title = (fields[1] + ' (' + fields[2] + ')').where(~unknown, 'unknown')
    year = title.str.extract(r'.*\((\d{4})\)', expand=False).astype(float)
    genres = fields[3].str.get_dummies(sep=' ')
    strange = genres.columns.difference(GENRES)
    if len(strange):
        line = int(genres[strange[0]].idxmax())
        raise DataFormatError(f'{item_path} line {line}: field 4 (class) should list genres from {list(GENRES)}, '
                              f'found {strange[0]!r}')
    movies = pd.DataFrame({'movie': _int_field(fields, 0, item_path, 'item id'), 'title': title.to_numpy(),
                           'year': year.to_numpy()}, index=fields.index)
    movies = pd.concat([movies, genres.reindex(columns=list(GENRES), fill_value=0).astype(np.int64)], axis=1)
    _check_unique_movies(movies, item_path)
    return RawMovieLens(interactions, movies.reset_index(drop=True), f'recbole wheel files in {folder}')


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open('rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            digest.update(chunk)
    return digest.hexdigest()


def download_grouplens(cache_dir: Path, url: str = GROUPLENS_URL, sha256: str = GROUPLENS_SHA256) -> Path:
    """Download (once; the zip is cached) and verify the GroupLens zip; return the folder with u.data/u.item.

    A cached zip whose checksum no longer matches is downloaded again; a download that does not match
    is deleted and reported, so a truncated or tampered file is never used.
    """
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    zip_path = cache_dir / 'ml-100k.zip'
    if not (zip_path.is_file() and _sha256(zip_path) == sha256):
        part = zip_path.with_suffix('.zip.part')
        with urllib.request.urlopen(url, timeout=60) as response, part.open('wb') as f:
            total = int(response.headers.get('Content-Length') or 0) or None
            with tqdm(total=total, unit='B', unit_scale=True, desc=f'download {url}') as bar:
                for chunk in iter(lambda: response.read(1 << 16), b''):
                    f.write(chunk)
                    bar.update(len(chunk))
        got = _sha256(part)
        if got != sha256:
            part.unlink()
            raise ValueError(f'{url}: sha256 {got} does not match the expected {sha256}; download removed')
        part.replace(zip_path)
    folder = cache_dir / 'ml-100k'
    folder.mkdir(exist_ok=True)
    with zipfile.ZipFile(zip_path) as archive:
        for name in ('u.data', 'u.item'):  # read by name: only these two members are written, never a zip path
            member = f'ml-100k/{name}'
            if member not in archive.namelist():
                raise DataFormatError(f'{zip_path}: no member {member!r} (is this the ml-100k zip?)')
            (folder / name).write_bytes(archive.read(member))
    return folder


def load_raw(source: str | None = None, cache_dir: Path | None = None, url: str = GROUPLENS_URL,
             sha256: str = GROUPLENS_SHA256) -> RawMovieLens:
    """Raw data from ``source`` (a GroupLens folder, ``'recbole'`` or ``'download'``) or the first that exists."""
    cache_dir = Path(cache_dir) if cache_dir is not None else REPO_DIR / 'data' / '.cache'
    if source == 'recbole':
        folder = find_recbole_folder()
        if folder is None:
            raise FileNotFoundError('recbole ml-100k files not found: pip install --no-deps recbole==1.2.1')
        return read_recbole(folder)
    if source == 'download':
        return read_grouplens(download_grouplens(cache_dir, url, sha256))
    if source is not None:
        return read_grouplens(Path(source))
    for folder in DEFAULT_GROUPLENS_DIRS:
        if (folder / 'u.data').is_file() and (folder / 'u.item').is_file():
            return read_grouplens(folder)
    folder = find_recbole_folder()
    if folder is not None:
        return read_recbole(folder)
    return read_grouplens(download_grouplens(cache_dir, url, sha256))


# ---------------------------------------------------------------- the paper's recipe

def preprocess(interactions: pd.DataFrame, k: int = K_CORE) -> pd.DataFrame:
    """Deduplicate, stable-sort by (time, user), iterate the k-core, and map ids by sorted original id.

    The row order after the sort is kept throughout: it decides which of two same-second
    interactions is a user's last (test) one, exactly as in the reference.
    """
    df = interactions[['user', 'item', 'time']].drop_duplicates()
    df = df.sort_values(['time', 'user'], kind='stable')
    while True:
        size = len(df)
        df = df[df.groupby('user')['user'].transform('size') >= k]
        df = df[df.groupby('item')['item'].transform('size') >= k]
        if len(df) == size:
            break
    users, items = np.unique(df['user']), np.unique(df['item'])
    return pd.DataFrame({'user': df['user'].to_numpy(), 'item': df['item'].to_numpy(),
                         'user_id': np.searchsorted(users, df['user']) + 1,
                         'item_id': np.searchsorted(items, df['item']) + 1,
                         'time': df['time'].to_numpy()})


def leave_one_out(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Each user's last interaction is test, the second-last dev, the rest train (rows in time order)."""
    from_end = df.groupby('user_id').cumcount(ascending=False).to_numpy()
    cols = ['user_id', 'item_id', 'time']
    return (df.loc[from_end >= 2, cols].reset_index(drop=True), df.loc[from_end == 1, cols].reset_index(drop=True),
            df.loc[from_end == 0, cols].reset_index(drop=True))


def sample_negatives(users: np.ndarray, history: pd.DataFrame, n_items: int, rng: np.random.Generator,
                     n_negatives: int = N_NEGATIVES) -> np.ndarray:
    """``n_negatives`` ids per row, uniform over 1..n_items with replacement, none in the user's full history."""
    excluded = sorted_pair_keys(history['user_id'].to_numpy(), history['item_id'].to_numpy(), n_items + 1)
    return sample_excluding(users, n_negatives, 1, n_items + 1, excluded, n_items + 1, rng)


def year_codes(year: pd.Series) -> np.ndarray:
    """Bucket years into the reference's ``i_year`` codes (see ``YEAR_EDGES``); NaN -> 0."""
    codes = np.searchsorted(YEAR_EDGES, year.fillna(0).to_numpy(), side='right') + 1
    return np.where(year.isna().to_numpy(), 0, codes).astype(np.int64)


def build(raw: RawMovieLens, seed: int = 0) -> MovieLensDataset:
    """Apply the paper's recipe to raw data; ``seed`` only affects the dev/test negatives."""
    df = preprocess(raw.interactions)
    train, dev, test = leave_one_out(df)
    n_items = int(df['item_id'].max())
    negatives = sample_negatives(np.concatenate([dev['user_id'], test['user_id']]), df, n_items,
                                 np.random.default_rng(seed))
    dev['neg_items'] = format_id_lists(negatives[:len(dev)])
    test['neg_items'] = format_id_lists(negatives[len(dev):])

    item2index = df[['item', 'item_id']].drop_duplicates().sort_values('item_id')
    movies = item2index.merge(raw.movies, left_on='item', right_on='movie', how='left')
    missing = movies['movie'].isna()
    if missing.any():
        raise DataFormatError(f'{raw.source}: rated movie id(s) {movies["item"][missing].head(5).tolist()} '
                              f'have no row in the movie file')
    flags = movies[list(GENRES)].to_numpy(dtype=np.int64)
    item_meta = pd.DataFrame(flags, columns=[f'i_{g}' for g in GENRES])
    item_meta.insert(0, 'i_year', year_codes(movies['year']))
    item_meta.insert(0, 'item_id', movies['item_id'].to_numpy())

    genre_words = np.where(flags.astype(bool), np.array([f' {g}' for g in GENRES], dtype=object), '').sum(axis=1)
    text = (movies['title'] + genre_words).str.split().str.join(' ')
    return MovieLensDataset(train=train, dev=dev, test=test, item_meta=item_meta,
                            text=pd.DataFrame({'id': movies['item'].to_numpy(), 'text': text.to_numpy()}),
                            item2index=pd.DataFrame({'movie': movies['item'].to_numpy(),
                                                     'item_id': movies['item_id'].to_numpy()}))


def write(dataset: MovieLensDataset, out_dir: Path) -> Path:
    """Write the ReChorus files into ``out_dir/MovieLens_100k`` and return that folder."""
    folder = Path(out_dir) / DATASET
    folder.mkdir(parents=True, exist_ok=True)
    for name in ('train', 'dev', 'test', 'item_meta'):
        getattr(dataset, name).to_csv(folder / f'{name}.csv', sep='\t', index=False)
    dataset.text.to_csv(folder / f'{DATASET}.text', sep='\t', index=False)
    dataset.item2index.to_csv(folder / f'{DATASET}.item2index', sep='\t', index=False, header=False)
    return folder


def main(argv: list[str] | None = None) -> Path:
    """CLI entry point; returns the written dataset folder so tests can drive it like a user."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--out', type=Path, default=REPO_DIR / 'data', help='parent folder of MovieLens_100k/')
    parser.add_argument('--source', help="GroupLens folder with u.data/u.item, 'recbole' or 'download' "
                                         '(default: first available in that order)')
    parser.add_argument('--seed', type=int, default=0, help='seed of the dev/test negatives')
    parser.add_argument('--cache', type=Path, help='download cache folder (default: <out>/.cache)')
    parser.add_argument('--url', default=GROUPLENS_URL, help='GroupLens zip URL')
    parser.add_argument('--sha256', default=GROUPLENS_SHA256, help='expected sha256 of the zip')
    args = parser.parse_args(argv)
    raw = load_raw(args.source, args.cache or args.out / '.cache', args.url, args.sha256)
    dataset = build(raw, args.seed)
    folder = write(dataset, args.out)
    n = len(dataset.train) + len(dataset.dev) + len(dataset.test)
    print(f'{raw.source} -> {folder}: {len(dataset.test)} users, {len(dataset.item_meta)} items, {n} interactions '
          f'(train {len(dataset.train)} / dev {len(dataset.dev)} / test {len(dataset.test)})')
    return folder


if __name__ == '__main__':
    main()
