"""Safe, validated reading of the ReChorus CSV format: one place that checks input files.

Errors name the file, the line (1-based, header = line 1) and what was expected, so a user can fix
the data instead of debugging a stack trace. List cells are parsed with plain string operations,
never ``eval``.
"""
from __future__ import annotations

import csv
import os
import warnings

import numpy as np
import pandas as pd


class DataFormatError(ValueError):
    """Malformed input file; the message says file, line and what was expected."""


def read_table(path: str, sep: str, required: list[str], quoting: int = csv.QUOTE_MINIMAL) -> pd.DataFrame:
    """Read a separated table as strings (nothing guessed) and check its required columns."""
    if not os.path.exists(path):
        raise FileNotFoundError(f'{path}: file not found')
    try:
        df = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, quoting=quoting)
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise DataFormatError(f'{path}: cannot be parsed as a {sep!r}-separated table: {e}') from e
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DataFormatError(f'{path} line 1: missing column(s) {missing}; found {list(df.columns)} '
                              f'(is --sep {sep!r} right?)')
    return df


def int_column(df: pd.DataFrame, column: str, path: str, positive: bool = True) -> np.ndarray:
    """Column as int64, with an error naming the first offending line (non-integer or, if ``positive``, < 1)."""
    values = df[column].str.strip()
    ok = values.str.fullmatch(r'[+-]?\d+')
    if not ok.all():
        row = int(np.flatnonzero(~ok.to_numpy())[0])
        raise DataFormatError(f'{path} line {row + 2}: {column} {df[column].iloc[row]!r} is not an integer')
    out = values.astype(np.int64).to_numpy()
    if positive and (out < 1).any():
        row = int(np.flatnonzero(out < 1)[0])
        raise DataFormatError(f'{path} line {row + 2}: {column} {out[row]} is not a positive id '
                              f'(ids start at 1; 0 is padding)')
    return out


def parse_id_lists(cells: pd.Series, path: str, column: str) -> tuple[np.ndarray, np.ndarray]:
    """Parse list-literal cells like ``[3, 17]`` into flat int64 values and CSR offsets (len n+1)."""
    text = cells.astype(str).str.strip()
    framed = text.str.startswith('[') & text.str.endswith(']')
    if not framed.all():
        row = int(np.flatnonzero(~framed.to_numpy())[0])
        raise DataFormatError(f'{path} line {row + 2}: {column} {text.iloc[row][:60]!r} is not a list like [1, 2, 3]')
    inner = text.str.slice(1, -1).str.strip()
    nonempty = inner != ''
    counts = np.where(nonempty, inner.str.count(',') + 1, 0).astype(np.int64)
    offsets = np.zeros(len(inner) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    if offsets[-1] == 0:
        return np.zeros(0, dtype=np.int64), offsets
    joined = ','.join(inner[nonempty])
    values = _parse_ints(joined)
    if values is not None and len(values) == offsets[-1]:
        return values, offsets
    # slow path, only to say which line is malformed
    tokens = pd.Series(joined.split(',')).str.strip()
    ok = tokens.str.fullmatch(r'[+-]?\d+').to_numpy()
    if not ok.all():
        bad = int(np.flatnonzero(~ok)[0])
        row = int(np.searchsorted(offsets, bad, side='right') - 1)
        raise DataFormatError(f'{path} line {row + 2}: {column} contains {tokens.iloc[bad]!r}, '
                              f'which is not an integer id')
    return tokens.astype(np.int64).to_numpy(), offsets


def _parse_ints(joined: str) -> np.ndarray | None:
    """Comma-separated integers parsed in C (no Python object per number: millions of negatives on
    Electronics); None when the text holds anything else."""
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        try:
            return np.fromstring(joined, dtype=np.int64, sep=',')
        except (ValueError, DeprecationWarning):
            return None


def parse_fixed_lists(cells: pd.Series, path: str, column: str) -> np.ndarray:
    """Parse list cells that must all have the same length (dev/test negatives) into an n×k matrix."""
    values, offsets = parse_id_lists(cells, path, column)
    counts = np.diff(offsets)
    if len(counts) and (counts != counts[0]).any():
        row = int(np.flatnonzero(counts != counts[0])[0])
        raise DataFormatError(f'{path} line {row + 2}: {column} has {counts[row]} items, '
                              f'but line 2 has {counts[0]} (every row needs the same number of negatives)')
    width = int(counts[0]) if len(counts) else 0
    return values.reshape(len(counts), width)


def format_id_lists(rows: list[list[int]] | np.ndarray) -> list[str]:
    """Inverse of :func:`parse_id_lists` for writing files: ``[3, 17]`` strings."""
    return ['[' + ', '.join(str(int(x)) for x in row) + ']' for row in rows]
