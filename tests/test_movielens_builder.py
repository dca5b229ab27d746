"""The MovieLens-100k builder reproduces the reference data from every raw source."""
from __future__ import annotations

import functools
import hashlib
import http.server
import importlib.util
import sys
import threading
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(__file__).resolve().parents[2] / 'shared' / 'data'
REFERENCE = SHARED / 'MovieLens_100k'
GROUPLENS = SHARED / 'ml-100k-grouplens'

needs_shared = pytest.mark.skipif(not (REFERENCE.is_dir() and GROUPLENS.is_dir()),
                                  reason=f'reference data not found at {SHARED} (clone the repo next to shared/)')


def _load_builder():
    spec = importlib.util.spec_from_file_location('build_movielens_100k', REPO / 'data' / 'build_movielens_100k.py')
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


ml = _load_builder()


def _read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, sep='\t', keep_default_na=False)


@pytest.fixture(scope='module')
def built(tmp_path_factory) -> Path:
    """The CLI run on the raw GroupLens folder, as written to disk."""
    out = tmp_path_factory.mktemp('grouplens')
    return ml.main(['--out', str(out), '--source', str(GROUPLENS), '--seed', '0'])


@pytest.fixture(scope='module')
def built_recbole() -> ml.MovieLensDataset:
    folder = ml.find_recbole_folder()
    if folder is None:
        pytest.skip('recbole not installed (pip install --no-deps recbole==1.2.1)')
    return ml.build(ml.read_recbole(folder), seed=0)


@needs_shared
def test_statistics_and_positives_match_reference(built):
    splits = {name: _read(built / f'{name}.csv') for name in ('train', 'dev', 'test')}
    assert [len(splits[n]) for n in ('train', 'dev', 'test')] == [97_401, 943, 943]
    everything = pd.concat(splits.values())
    assert everything['user_id'].nunique() == 943 and everything['item_id'].nunique() == 1_349
    for name, ours in splits.items():
        reference = _read(REFERENCE / f'{name}.csv')
        assert list(ours.columns) == list(reference.columns)
        pd.testing.assert_frame_equal(ours[['user_id', 'item_id', 'time']], reference[['user_id', 'item_id', 'time']])
    assert (built / 'MovieLens_100k.item2index').read_bytes() == (REFERENCE / 'MovieLens_100k.item2index').read_bytes()


@needs_shared
def test_item_meta_equals_reference_positionally_with_correct_genre_names(built):
    ours, reference = _read(built / 'item_meta.csv'), _read(REFERENCE / 'item_meta.csv')
    assert list(ours.columns) == ['item_id', 'i_year'] + [f'i_{g}' for g in ml.GENRES]
    assert ours.columns[2] == 'i_unknown' and reference.columns[2] == 'i_Action'  # the reference's shifted labels
    np.testing.assert_array_equal(ours.to_numpy(), reference.to_numpy())
    assert set(ours['i_year']) == set(range(17))


@needs_shared
def test_text_uses_titles_and_correct_genre_words(built):
    text = _read(built / 'MovieLens_100k.text').set_index('id')['text']
    reference = _read(REFERENCE / 'MovieLens_100k.text')
    assert text.index.tolist() == reference['id'].tolist()
    assert text[1] == "Toy Story (1995) Animation Children's Comedy"
    assert text[2] == 'GoldenEye (1995) Action Adventure Thriller'
    assert text[50] == 'Star Wars (1977) Action Adventure Romance Sci-Fi War'
    assert text[267] == 'unknown unknown'
    assert text[1128] == 'Heidi Fleiss: Hollywood Madam (1995) Documentary'  # whitespace normalised


@needs_shared
def test_negatives_are_valid_and_seeded(built):
    history = pd.concat([_read(built / f'{n}.csv') for n in ('train', 'dev', 'test')])
    seen = set(zip(history['user_id'], history['item_id']))
    for name in ('dev', 'test'):
        split = _read(built / f'{name}.csv')
        negatives = np.array([row.strip('[]').split(', ') for row in split['neg_items']], dtype=np.int64)
        assert negatives.shape == (943, ml.N_NEGATIVES)
        assert negatives.min() >= 1 and negatives.max() <= 1_349
        users = np.repeat(split['user_id'].to_numpy(), ml.N_NEGATIVES)
        assert not any((u, i) in seen for u, i in zip(users, negatives.ravel()))
    users = history['user_id'].unique()
    draw = functools.partial(ml.sample_negatives, users, history, 1_349)
    np.testing.assert_array_equal(draw(np.random.default_rng(0)), draw(np.random.default_rng(0)))
    assert not np.array_equal(draw(np.random.default_rng(0)), draw(np.random.default_rng(1)))


@needs_shared
def test_recbole_source_gives_same_positives_and_genres(built, built_recbole):
    for name in ('train', 'dev', 'test'):
        cols = ['user_id', 'item_id', 'time']
        pd.testing.assert_frame_equal(getattr(built_recbole, name)[cols], _read(built / f'{name}.csv')[cols])
    grouplens_meta = _read(built / 'item_meta.csv')
    np.testing.assert_array_equal(built_recbole.item_meta.drop(columns='i_year').to_numpy(),
                                  grouplens_meta.drop(columns='i_year').to_numpy())
    # recbole's year is the title year, not the release-date year: documented difference
    assert (built_recbole.item_meta['i_year'] != grouplens_meta['i_year']).sum() == 99
    text = built_recbole.text.set_index('id')['text']
    assert text[1] == "Toy Story (1995) Animation Children's Comedy"
    assert text[1412] == "Land Before Time III: The Time of the Great Giving (1995) (V) Animation Children's"
    assert text[267] == 'unknown unknown'


@needs_shared
def test_download_from_loopback_server(tmp_path):
    served = tmp_path / 'served'
    served.mkdir()
    with zipfile.ZipFile(served / 'ml-100k.zip', 'w') as archive:
        for name in ('u.data', 'u.item'):
            archive.write(GROUPLENS / name, f'ml-100k/{name}')
    sha256 = hashlib.sha256((served / 'ml-100k.zip').read_bytes()).hexdigest()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f'http://127.0.0.1:{server.server_port}/ml-100k.zip'
    try:
        with pytest.raises(ValueError, match='sha256'):
            ml.download_grouplens(tmp_path / 'bad', url, sha256='0' * 64)
        assert not list((tmp_path / 'bad').iterdir())
        raw = ml.load_raw('download', tmp_path / 'cache', url, sha256)
    finally:
        server.shutdown()
        server.server_close()
    assert len(raw.interactions) == 100_000 and len(raw.movies) == 1_682
    assert (tmp_path / 'cache' / 'ml-100k' / 'u.item').read_bytes() == (GROUPLENS / 'u.item').read_bytes()
    ml.download_grouplens(tmp_path / 'cache', 'http://127.0.0.1:9/unreachable', sha256)  # cached: no request


def _grouplens_copy(tmp_path: Path) -> Path:
    folder = tmp_path / 'ml-100k'
    folder.mkdir()
    (folder / 'u.item').write_bytes((GROUPLENS / 'u.item').read_bytes())
    (folder / 'u.data').write_bytes((GROUPLENS / 'u.data').read_bytes())
    return folder


@needs_shared
@pytest.mark.parametrize('file, line, expected', [
    ('u.data', '196\t242\t3', 'expected 4 fields'),
    ('u.data', '196\tabc\t3\t881250949', r'field 2 \(item\)'),
    ('u.item', '1|Toy Story (1995)|1995-01-01||url' + '|0' * 19, 'release date'),
    ('u.item', '1|Toy Story (1995)|01-Jan-1995||url' + '|2' * 19, 'genre flags'),
])
def test_malformed_input_names_file_and_line(tmp_path, file, line, expected):
    folder = _grouplens_copy(tmp_path)
    lines = (folder / file).read_text(encoding='latin-1').splitlines()
    lines[2] = line
    (folder / file).write_text('\n'.join(lines) + '\n', encoding='latin-1')
    with pytest.raises(ml.DataFormatError, match=rf'{file} line 3: .*{expected}'):
        ml.read_grouplens(folder)
