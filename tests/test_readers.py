"""Readers: every input error names file and line; chronological histories; the corpus cache."""
from __future__ import annotations

import argparse
import logging
import os
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / 'src'))

import main  # noqa: E402
from helpers import LRDReader as lrd_reader_module  # noqa: E402
from helpers.BaseReader import BaseReader  # noqa: E402
from helpers.KGReader import KGReader  # noqa: E402
from helpers.LRDReader import LRDReader  # noqa: E402
from helpers.SeqReader import SeqReader  # noqa: E402
from models.sequential.SASRec import SASRec  # noqa: E402
from tiny_data import make_tiny_dataset  # noqa: E402
from utils import corpus_cache, text_encoders  # noqa: E402
from utils.io import DataFormatError  # noqa: E402

HEADER = 'user_id\titem_id\ttime'
HEADER_NEG = 'user_id\titem_id\ttime\tneg_items'


def write(folder: Path, name: str, lines: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text('\n'.join(lines) + '\n')
    return path


def write_valid(folder: Path) -> Path:
    """Two users, five items. User 1: 3, 1, 4 | dev 2 | test 5; user 2: 2, 5 | dev 1 | test 3.

    train.csv is written out of chronological order on purpose.
    """
    write(folder, 'train.csv', [HEADER, '1\t4\t300', '2\t2\t150', '1\t3\t100', '2\t5\t160', '1\t1\t200'])
    write(folder, 'dev.csv', [HEADER_NEG, '1\t2\t400\t[5, 1]', '2\t1\t170\t[4, 3]'])
    write(folder, 'test.csv', [HEADER_NEG, '1\t5\t500\t[2, 4]', '2\t3\t180\t[4, 1]'])
    return folder


def reader_args(root: Path, dataset: str = 'Hand', **extra) -> argparse.Namespace:
    values = dict(path=str(root), dataset=dataset, sep='\t', include_attr=0, regenerate=0)
    values.update(extra)
    return argparse.Namespace(**values)


def read_error(root: Path) -> str:
    with pytest.raises(DataFormatError) as info:
        BaseReader(reader_args(root))
    message = str(info.value)
    assert '\n' not in message
    return message


# --------------------------------------------------------------------------- input errors

def test_valid_hand_made_dataset_reads(tmp_path):
    write_valid(tmp_path / 'Hand')
    corpus = BaseReader(reader_args(tmp_path))
    assert (corpus.n_users, corpus.n_items, corpus.n_clicks) == (3, 6, 9)
    np.testing.assert_array_equal(np.stack(corpus.data_df['dev']['neg_items'].to_numpy()), [[5, 1], [4, 3]])
    assert corpus.train_clicked_set == {1: {1, 3, 4}, 2: {2, 5}}
    assert corpus.residual_clicked_set == {1: {2, 5}, 2: {1, 3}}


def test_missing_column(tmp_path):
    folder = write_valid(tmp_path / 'Hand')
    path = write(folder, 'train.csv', ['user_id\titem_id', '1\t4', '2\t2'])
    message = read_error(tmp_path)
    assert message.startswith(f"{path} line 1: missing column(s) ['time']; found ['user_id', 'item_id']")
    assert "(is --sep '\\t' right?)" in message


def test_missing_neg_items_column_in_dev(tmp_path):
    folder = write_valid(tmp_path / 'Hand')
    path = write(folder, 'dev.csv', [HEADER, '1\t2\t400', '2\t1\t170'])
    assert read_error(tmp_path).startswith(f"{path} line 1: missing column(s) ['neg_items']")


def test_wrong_separator_is_a_missing_column(tmp_path):
    folder = write_valid(tmp_path / 'Hand')
    path = write(folder, 'train.csv', ['user_id,item_id,time', '1,4,300'])
    assert read_error(tmp_path).startswith(f"{path} line 1: missing column(s) ['user_id', 'item_id', 'time']")


def test_non_integer_id(tmp_path):
    folder = write_valid(tmp_path / 'Hand')
    path = write(folder, 'train.csv', [HEADER, '1\t4\t300', 'u2\t2\t150', '1\t3\t100'])
    assert read_error(tmp_path) == f"{path} line 3: user_id 'u2' is not an integer"


def test_non_integer_time(tmp_path):
    folder = write_valid(tmp_path / 'Hand')
    path = write(folder, 'test.csv', [HEADER_NEG, '1\t5\t500\t[2, 4]', '2\t3\t1.5e2\t[4, 1]'])
    assert read_error(tmp_path) == f"{path} line 3: time '1.5e2' is not an integer"


def test_zero_id(tmp_path):
    folder = write_valid(tmp_path / 'Hand')
    path = write(folder, 'train.csv', [HEADER, '1\t4\t300', '2\t2\t150', '1\t0\t100'])
    assert read_error(tmp_path) == f'{path} line 4: item_id 0 is not a positive id (ids start at 1; 0 is padding)'


def test_dev_rows_with_differing_numbers_of_negatives(tmp_path):
    folder = write_valid(tmp_path / 'Hand')
    path = write(folder, 'dev.csv', [HEADER_NEG, '1\t2\t400\t[5, 1]', '2\t1\t170\t[4, 3, 5]'])
    assert read_error(tmp_path) == (f'{path} line 3: neg_items has 3 items, but line 2 has 2 '
                                    f'(every row needs the same number of negatives)')


def test_negative_cell_that_is_not_a_list(tmp_path):
    folder = write_valid(tmp_path / 'Hand')
    path = write(folder, 'dev.csv', [HEADER_NEG, '1\t2\t400\t[5, 1]', '2\t1\t170\t4, 3'])
    assert read_error(tmp_path) == f"{path} line 3: neg_items '4, 3' is not a list like [1, 2, 3]"


def test_negative_that_is_not_an_integer(tmp_path):
    folder = write_valid(tmp_path / 'Hand')
    path = write(folder, 'test.csv', [HEADER_NEG, '1\t5\t500\t[2, 4]', "2\t3\t180\t[4, __import__('os')]"])
    assert read_error(tmp_path) == f"{path} line 3: neg_items contains \"__import__('os')\", which is not an integer id"


def test_negative_that_is_not_a_known_item(tmp_path):
    folder = write_valid(tmp_path / 'Hand')
    path = write(folder, 'test.csv', [HEADER_NEG, '1\t5\t500\t[2, 4]', '2\t3\t180\t[4, 9]'])
    assert read_error(tmp_path) == f'{path} line 3: neg_items contains 9, which is not a known item id (1..5)'


def test_negative_zero_is_not_a_known_item(tmp_path):
    folder = write_valid(tmp_path / 'Hand')
    path = write(folder, 'dev.csv', [HEADER_NEG, '1\t2\t400\t[0, 1]', '2\t1\t170\t[4, 3]'])
    assert read_error(tmp_path) == f'{path} line 2: neg_items contains 0, which is not a known item id (1..5)'


def test_dev_user_without_training_history(tmp_path):
    folder = write_valid(tmp_path / 'Hand')
    path = write(folder, 'dev.csv', [HEADER_NEG, '1\t2\t400\t[5, 1]', '2\t1\t170\t[4, 3]', '3\t1\t170\t[4, 3]'])
    assert read_error(tmp_path) == (f'{path} line 4: user_id 3 has no interaction in train.csv, '
                                    f'so there is no history to rank from')


def test_missing_file(tmp_path):
    folder = write_valid(tmp_path / 'Hand')
    os.remove(folder / 'test.csv')
    with pytest.raises(FileNotFoundError, match=f'{folder / "test.csv"}: file not found'):
        BaseReader(reader_args(tmp_path))


def test_unknown_dataset_lists_what_exists(tmp_path):
    write_valid(tmp_path / 'Hand')
    write_valid(tmp_path / 'Other')
    (tmp_path / 'notes.txt').write_text('not a dataset')
    with pytest.raises(FileNotFoundError) as info:
        BaseReader(reader_args(tmp_path, dataset='Office'))
    assert str(info.value) == (f"dataset 'Office' not found in {tmp_path}; available: Hand, Other "
                               "(build one with the scripts in data/, see data/README.md)")
    with pytest.raises(FileNotFoundError, match='available: none'):
        BaseReader(reader_args(tmp_path / 'nowhere', dataset='Office'))


# --------------------------------------------------------------------------- histories

def test_positions_and_sequences_are_chronological(tmp_path):
    write_valid(tmp_path / 'Hand')
    corpus = SeqReader(reader_args(tmp_path))
    np.testing.assert_array_equal(corpus.his_start, [0, 0, 5, 9])
    np.testing.assert_array_equal(corpus.his_items, [3, 1, 4, 2, 5, 2, 5, 1, 3])
    np.testing.assert_array_equal(corpus.his_times, [100, 200, 300, 400, 500, 150, 160, 170, 180])
    train = corpus.data_df['train']  # file order: (1,4) (2,2) (1,3) (2,5) (1,1)
    np.testing.assert_array_equal(train['position'], [2, 0, 0, 1, 1])
    np.testing.assert_array_equal(corpus.data_df['dev']['position'], [3, 2])
    np.testing.assert_array_equal(corpus.data_df['test']['position'], [4, 3])
    assert corpus.user_his == {1: [(3, 100), (1, 200), (4, 300), (2, 400), (5, 500)],
                               2: [(2, 150), (5, 160), (1, 170), (3, 180)]}


def test_gather_history_right_padded_and_truncated(tmp_path):
    write_valid(tmp_path / 'Hand')
    corpus = SeqReader(reader_args(tmp_path))
    items, times, lengths = corpus.gather_history(np.array([1, 2]), np.array([4, 2]), history_max=3)
    np.testing.assert_array_equal(items, [[1, 4, 2], [2, 5, 0]])  # user 1 keeps its 3 most recent items
    np.testing.assert_array_equal(times, [[200, 300, 400], [150, 160, 0]])
    np.testing.assert_array_equal(lengths, [3, 2])
    items, times, lengths = corpus.gather_history(np.array([2, 1]), np.array([3, 4]), history_max=0)
    np.testing.assert_array_equal(items, [[2, 5, 1, 0], [3, 1, 4, 2]])  # history_max 0: no truncation
    np.testing.assert_array_equal(lengths, [3, 4])
    items, _, lengths = corpus.gather_history(np.array([1, 2]), np.array([1, 1]), history_max=20)
    np.testing.assert_array_equal(items, [[3], [2]])
    np.testing.assert_array_equal(lengths, [1, 1])


def test_sequential_feed_dict_history(tmp_path):
    write_valid(tmp_path / 'Hand')
    argv = ['--model_name', 'SASRec', '--path', str(tmp_path), '--dataset', 'Hand', '--history_max', '3']
    parser, *_ = main.build_parser(argv)
    args = parser.parse_args(argv)
    corpus = SeqReader(args)
    model = SASRec(args, corpus)
    test = SASRec.Dataset(model, corpus, 'test')
    test.prepare()
    batch = test[np.arange(2)]
    np.testing.assert_array_equal(batch['history_items'].numpy(), [[1, 4, 2], [2, 5, 1]])
    np.testing.assert_array_equal(batch['lengths'].numpy(), [3, 3])
    np.testing.assert_array_equal(batch['item_id'].numpy(), [[5, 2, 4], [3, 4, 1]])
    train = SASRec.Dataset(model, corpus, 'train')
    train.prepare()  # instances at position 0 have no history and are dropped
    assert len(train) == 3
    train.actions_before_epoch()
    single = train[0]  # ReChorus' per-instance access: unpadded
    assert single['history_items'].tolist() == [3, 1] and single['lengths'] == 2


# --------------------------------------------------------------------------- corpus cache

@pytest.fixture
def fake_repo(tmp_path, monkeypatch) -> Path:
    repo = tmp_path / 'repo'
    repo.mkdir()
    monkeypatch.setattr(corpus_cache, 'REPO_DIR', repo)
    return repo


@pytest.fixture
def builds(monkeypatch) -> list:
    """Counts how often a corpus is actually built (not loaded from the cache)."""
    calls = []
    original = SeqReader._append_his_info

    def counting(self):
        calls.append(self.dataset)
        return original(self)

    monkeypatch.setattr(SeqReader, '_append_his_info', counting)
    return calls


def cache_args(root: Path, reader_cls=KGReader, *extra: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument('--regenerate', type=int, default=0)
    reader_cls.parse_data_args(parser)
    return parser.parse_args(['--path', str(root), '--dataset', 'Tiny', *extra])


def files_of(folder: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir()}


def test_cache_hit_and_outside_repo_data_never_written(tmp_path, fake_repo, builds):
    data = make_tiny_dataset(tmp_path / 'data', n_users=10, n_items=25, n_neg=5)
    before = files_of(data)
    args = cache_args(tmp_path / 'data')
    first = corpus_cache.load_corpus(KGReader, args)
    second = corpus_cache.load_corpus(KGReader, args)
    assert builds == ['Tiny']  # built once, then loaded
    assert second is not first and second.n_items == first.n_items == 26
    np.testing.assert_array_equal(second.his_items, first.his_items)
    assert files_of(data) == before  # nothing written next to the data
    assert not list(data.rglob('*.pkl'))
    assert (Path(corpus_cache.cache_dir(str(data), 'Tiny')) / 'KGReader.pkl').is_file()
    assert Path(corpus_cache.cache_dir(str(data), 'Tiny')).parent == fake_repo / 'cache'


def test_regenerate_rebuilds(tmp_path, fake_repo, builds):
    make_tiny_dataset(tmp_path / 'data', n_users=10, n_items=25, n_neg=5)
    corpus_cache.load_corpus(KGReader, cache_args(tmp_path / 'data'))
    corpus_cache.load_corpus(KGReader, cache_args(tmp_path / 'data', KGReader, '--regenerate', '1'))
    assert len(builds) == 2


def test_edited_csv_rebuilds(tmp_path, fake_repo, builds):
    data = make_tiny_dataset(tmp_path / 'data', n_users=10, n_items=25, n_neg=5)
    args = cache_args(tmp_path / 'data')
    corpus_cache.load_corpus(KGReader, args)
    train = data / 'train.csv'
    lines = train.read_text().splitlines()
    user, item, t = lines[1].split('\t')
    lines[1] = f'{user}\t{item}\t{int(t) - 1}'  # same size: only content and mtime differ
    stat = train.stat()
    train.write_text('\n'.join(lines) + '\n')
    assert train.stat().st_size == stat.st_size
    os.utime(train, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    corpus = corpus_cache.load_corpus(KGReader, args)
    assert len(builds) == 2
    assert int(t) - 1 in corpus.data_df['train']['time'].tolist()
    corpus_cache.load_corpus(KGReader, args)
    assert len(builds) == 2  # and the rebuilt corpus is cached


def test_touched_csv_rebuilds(tmp_path, fake_repo, builds):
    data = make_tiny_dataset(tmp_path / 'data', n_users=10, n_items=25, n_neg=5)
    args = cache_args(tmp_path / 'data')
    corpus_cache.load_corpus(KGReader, args)
    stat = (data / 'item_meta.csv').stat()
    os.utime(data / 'item_meta.csv', ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    corpus_cache.load_corpus(KGReader, args)
    assert len(builds) == 2


def test_changed_reader_argument_rebuilds(tmp_path, fake_repo, builds):
    make_tiny_dataset(tmp_path / 'data', n_users=10, n_items=25, n_neg=5)
    plain = corpus_cache.load_corpus(KGReader, cache_args(tmp_path / 'data'))
    with_attr = corpus_cache.load_corpus(KGReader, cache_args(tmp_path / 'data', KGReader, '--include_attr', '1'))
    assert len(builds) == 2
    assert plain.n_relations == 3 and with_attr.n_relations == 5
    assert corpus_cache.load_corpus(KGReader, cache_args(tmp_path / 'data', KGReader, '--include_attr', '1')
                                    ).n_relations == 5
    assert len(builds) == 2


@pytest.mark.parametrize('damage', ['garbage', 'truncated', 'empty'])
def test_corrupt_pickle_is_rebuilt(tmp_path, fake_repo, builds, damage, caplog):
    make_tiny_dataset(tmp_path / 'data', n_users=10, n_items=25, n_neg=5)
    args = cache_args(tmp_path / 'data')
    corpus_cache.load_corpus(KGReader, args)
    path = Path(corpus_cache.cache_path(KGReader, args))
    blob = path.read_bytes()
    path.write_bytes({'garbage': b'this is not a pickle', 'truncated': blob[:len(blob) // 2], 'empty': b''}[damage])
    with caplog.at_level(logging.WARNING):
        corpus = corpus_cache.load_corpus(KGReader, args)
    assert len(builds) == 2 and corpus.n_items == 26
    assert any('unreadable' in r.getMessage() for r in caplog.records)
    corpus_cache.load_corpus(KGReader, args)
    assert len(builds) == 2


def test_rechorus_style_pickle_is_rebuilt(tmp_path, fake_repo, builds):
    """ReChorus pickles the bare reader object at the same path (<data>/<Reader>.pkl); a drop-in user's
    existing cache file must be treated as stale and rebuilt, not crash the run."""
    make_tiny_dataset(tmp_path / 'data', n_users=10, n_items=25, n_neg=5)
    args = cache_args(tmp_path / 'data')
    corpus = corpus_cache.load_corpus(KGReader, args)
    with open(corpus_cache.cache_path(KGReader, args), 'wb') as f:
        pickle.dump(corpus, f)
    rebuilt = corpus_cache.load_corpus(KGReader, args)
    assert len(builds) == 2 and rebuilt.n_items == 26


class FakeEncoder:
    identity = 'fake:test-v1'

    def encode(self, texts):
        return np.stack([[len(t), t.count('a'), t.count('e'), 1.0] for t in texts])


@pytest.fixture
def fake_text_encoder(monkeypatch):
    def features(texts, encoder='minilm', cache_dir=None, device='cpu', batch_size=None):
        return text_encoders.item_text_features(texts, FakeEncoder(), cache_dir=cache_dir)

    monkeypatch.setattr(lrd_reader_module, 'item_text_features', features)


def test_lrd_reader_outside_repo_writes_nothing_next_to_the_data(tmp_path, fake_repo, builds, fake_text_encoder):
    data = make_tiny_dataset(tmp_path / 'data', n_users=10, n_items=25, n_neg=5)
    before = files_of(data)
    args = cache_args(tmp_path / 'data', LRDReader, '--freq_rand', '1')
    corpus = corpus_cache.load_corpus(LRDReader, args)
    assert corpus.item_features.shape == (26, 4)
    assert files_of(data) == before
    cached = sorted(p.suffix for p in Path(corpus_cache.cache_dir(str(data), 'Tiny')).iterdir())
    assert cached == ['.json', '.npy', '.pkl']
    corpus_cache.load_corpus(LRDReader, args)
    assert len(builds) == 1


def test_in_repo_dataset_second_load_hits_the_cache(tmp_path, fake_repo, builds, fake_text_encoder):
    """Datasets inside the repository keep their derived files next to the data (ReChorus' place). The text
    features LRDReader caches there are outputs, not inputs: they must not make the corpus look stale."""
    make_tiny_dataset(fake_repo / 'data', n_users=10, n_items=25, n_neg=5)
    args = cache_args(fake_repo / 'data', LRDReader, '--freq_rand', '1')
    corpus_cache.load_corpus(LRDReader, args)
    assert (fake_repo / 'data' / 'Tiny' / 'LRDReader.pkl').is_file()
    corpus_cache.load_corpus(LRDReader, args)
    assert len(builds) == 1


def test_lrd_texts_follow_item2index(tmp_path):
    make_tiny_dataset(tmp_path, n_users=10, n_items=25, n_neg=5)
    corpus = LRDReader(cache_args(tmp_path, LRDReader, '--freq_rand', '1', '--include_lrd', '0'))
    assert corpus.item_features is None
    texts = corpus.item_texts()
    assert texts[0] == '' and len(texts) == 26
    for item in range(1, 26):  # tiny_data's texts end with "model <item id>"; raw keys are not item ids
        assert texts[item].endswith(f' model {item}'), (item, texts[item])


def test_lrd_missing_text_is_an_error_unless_asked(tmp_path):
    folder = make_tiny_dataset(tmp_path, n_users=10, n_items=25, n_neg=5)
    lines = (folder / 'Tiny.text').read_text().splitlines()
    mapping = dict(line.split('\t') for line in (folder / 'Tiny.item2index').read_text().splitlines())
    dropped = lines[3].split('\t')[0]
    (folder / 'Tiny.text').write_text('\n'.join(lines[:3] + lines[4:]) + '\n')
    corpus = LRDReader(cache_args(tmp_path, LRDReader, '--freq_rand', '1', '--include_lrd', '0'))
    expected = rf'1 item\(s\) have no text in .*Tiny.text .*first ids: \[{mapping[dropped]}\]\. Add their texts'
    with pytest.raises(DataFormatError, match=expected + ', or pass --missing_text empty'):
        corpus.item_texts()
    assert corpus.item_texts('empty')[int(mapping[dropped])] == ''
