"""Streaming access to the 2014 Amazon review dumps (McAuley et al.): download and line-by-line parsing.

The review files are gzipped JSON lines; the metadata files are gzipped lines in a loose Python-literal
style (single-quoted dicts). Both are read one line at a time, never the whole file, and never with
``eval``: JSON first, ``ast.literal_eval`` as the fallback. Every error names the file and the line.
"""
from __future__ import annotations

import ast
import gzip
import hashlib
import http.client
import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.error import HTTPError, URLError
from urllib.request import Request, urlopen

import numpy as np
import pandas as pd
from tqdm import tqdm

DEFAULT_BASE_URL = 'http://snap.stanford.edu/data/amazon/productGraph/categoryFiles'
REVIEW_FIELDS = ('reviewerID', 'asin', 'unixReviewTime')


class RawDataError(ValueError):
    """A raw file is truncated, corrupt or malformed; the message names the file and the line."""


class DownloadError(RuntimeError):
    """A download failed or does not match its expected checksum."""


def review_file_name(category: str) -> str:
    return f'reviews_{category}_5.json.gz'


def meta_file_name(category: str) -> str:
    return f'meta_{category}.json.gz'


def iter_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """Yield ``(line_number, line)`` of a gzip (or plain) file, 1-based, skipping blank lines.

    A truncated or corrupt gzip stream raises :class:`RawDataError` naming the last good line, so a
    broken download is reported instead of silently yielding a shorter dataset.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == '.gz' else open
    lineno = 0
    try:
        with opener(path, 'rb') as f:
            for lineno, line in enumerate(f, start=1):
                if line.strip():
                    yield lineno, line
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise RawDataError(f'{path}: gzip stream is truncated or corrupt after line {lineno} ({e}); '
                           f'delete the file and download it again') from e


def parse_record(line: bytes, path: Path, lineno: int) -> dict:
    """One line as a dict: strict JSON, else a Python literal (the metadata style); never ``eval``."""
    try:
        record = json.loads(line)
    except ValueError:
        try:
            record = ast.literal_eval(line.decode('utf-8').strip())
        except (ValueError, SyntaxError, UnicodeDecodeError, MemoryError, RecursionError) as e:
            raise RawDataError(f'{path} line {lineno}: neither JSON nor a Python literal '
                               f'({type(e).__name__}: {e}): {line[:80]!r}') from None
    if not isinstance(record, dict):
        raise RawDataError(f'{path} line {lineno}: expected a record like {{...}}, got {type(record).__name__}')
    return record


def read_reviews(path: Path) -> pd.DataFrame:
    """The review file as a frame ``user, item, time`` (reviewerID, asin, unixReviewTime), in file order."""
    users: list[str] = []
    items: list[str] = []
    times: list[int] = []
    for lineno, line in iter_lines(path):
        record = parse_record(line, path, lineno)
        missing = [k for k in REVIEW_FIELDS if k not in record]
        if missing:
            raise RawDataError(f'{path} line {lineno}: review is missing field(s) {missing}')
        user, item, time = record['reviewerID'], record['asin'], record['unixReviewTime']
        if not isinstance(user, str) or not isinstance(item, str):
            raise RawDataError(f'{path} line {lineno}: reviewerID and asin must be strings, '
                               f'got {user!r} and {item!r}')
        if isinstance(time, bool) or not isinstance(time, int):
            raise RawDataError(f'{path} line {lineno}: unixReviewTime {time!r} is not an integer')
        users.append(user)
        items.append(item)
        times.append(time)
    if not users:
        raise RawDataError(f'{path}: no reviews found')
    return pd.DataFrame({'user': users, 'item': items, 'time': np.asarray(times, dtype=np.int64)})


@dataclass
class SkipStats:
    """Bad metadata lines skipped under ``skip_bad``: how many, and the first few messages."""
    count: int = 0
    examples: list[str] = field(default_factory=list)

    def add(self, message: str) -> None:
        self.count += 1
        if len(self.examples) < 5:
            self.examples.append(message)


def iter_metadata(path: Path, skip_bad: bool = False, stats: SkipStats | None = None) -> Iterator[dict]:
    """Yield metadata records (each with a string ``asin``) in file order.

    With ``skip_bad`` a malformed line is counted in ``stats`` and skipped (the 2014 metadata dumps
    are large and hand-made; one odd line should not cost a rebuild). A truncated gzip is always fatal.
    """
    for lineno, line in iter_lines(path):
        try:
            record = parse_record(line, path, lineno)
            if not isinstance(record.get('asin'), str):
                raise RawDataError(f'{path} line {lineno}: metadata record has no string field asin')
        except RawDataError as e:
            if not skip_bad:
                raise
            if stats is not None:
                stats.add(str(e))
            continue
        yield record


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            digest.update(chunk)
    return digest.hexdigest()


def fetch(url: str, dest: Path, sha256: str | None = None, progress: bool = True, timeout: float = 60) -> Path:
    """Download ``url`` to ``dest`` unless already there; resumable and optionally checksummed.

    Bytes go to ``dest.part`` first; a rerun continues it with an HTTP Range request (a server that
    ignores Range sends the whole file and the part is restarted). The finished file is renamed into
    place only when complete and, if ``sha256`` is given, matching.
    """
    dest = Path(dest)
    if dest.exists():
        if sha256 and (actual := sha256_of(dest)) != sha256.lower():
            raise DownloadError(f'{dest}: sha256 {actual} does not match the expected {sha256}; '
                                f'delete it to download again')
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + '.part')
    offset = part.stat().st_size if part.exists() else 0
    headers = {'Range': f'bytes={offset}-'} if offset else {}
    try:
        response = urlopen(Request(url, headers=headers), timeout=timeout)
    except HTTPError as e:
        if e.code != 416 or not offset:
            raise DownloadError(f'{url}: HTTP {e.code} {e.reason}') from e
        if not (e.headers.get('Content-Range') or '').endswith(f'/{offset}'):
            part.unlink()
            raise DownloadError(f'{url}: {part} does not match the remote file; removed it, rerun to download') from e
        response = None  # the part already holds the whole file
    except URLError as e:
        raise DownloadError(f'{url}: {e.reason} (offline? pass --raw_dir with the downloaded files)') from e
    if response is not None:
        with response:
            if offset and response.status != 206:
                offset = 0
            length = response.headers.get('Content-Length')
            total = offset + int(length) if length is not None else None
            with open(part, 'ab' if offset else 'wb') as out, \
                    tqdm(total=total, initial=offset, unit='B', unit_scale=True, desc=dest.name,
                         disable=not progress) as bar:
                try:
                    for chunk in iter(lambda: response.read(1 << 20), b''):
                        out.write(chunk)
                        bar.update(len(chunk))
                except (OSError, http.client.HTTPException) as e:
                    raise DownloadError(f'{url}: connection lost at byte {out.tell()} ({e}); '
                                        f'rerun to resume from {part}') from e
            if total is not None and part.stat().st_size != total:
                raise DownloadError(f'{url}: got {part.stat().st_size} of {total} bytes; rerun to resume')
    if sha256:
        actual = sha256_of(part)
        if actual != sha256.lower():
            part.unlink()
            raise DownloadError(f'{url}: sha256 {actual} does not match the expected {sha256}; '
                                f'the partial file was removed')
    part.replace(dest)
    return dest
