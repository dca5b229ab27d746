"""Find models, readers and runners by class name, the ReChorus way: one class per file, file named
like the class (``models/sequential/KDA_LRD.py`` defines ``KDA_LRD``)."""
from __future__ import annotations

import importlib

from utils.runtime import SRC_DIR


def _names(package: str, recursive: bool) -> dict[str, str]:
    """Map class name → module path for every ``*.py`` file of a package (sub-packages if recursive)."""
    root = SRC_DIR / package
    pattern = '**/*.py' if recursive else '*.py'
    found = {}
    for file in sorted(root.glob(pattern)):
        if file.stem.startswith('_'):
            continue
        module = '.'.join(file.relative_to(SRC_DIR).with_suffix('').parts)
        found.setdefault(file.stem, module)
    return found


def available_models() -> list[str]:
    return sorted(n for n in _names('models', recursive=True) if n != 'BaseModel')


def _load(kind: str, name: str, table: dict[str, str]) -> type:
    if name not in table:
        raise SystemExit(f'error: unknown {kind} {name!r}; available: {", ".join(sorted(table))}')
    module = importlib.import_module(table[name])
    if not hasattr(module, name):
        raise SystemExit(f'error: {table[name]} does not define a class named {name!r}')
    return getattr(module, name)


def find_model(name: str) -> type:
    table = {n: m for n, m in _names('models', recursive=True).items() if n != 'BaseModel'}
    return _load('model', name, table)


def find_reader(name: str) -> type:
    return _load('reader', name, {n: m for n, m in _names('helpers', recursive=False).items() if n.endswith('Reader')})


def find_runner(name: str) -> type:
    return _load('runner', name, {n: m for n, m in _names('helpers', recursive=False).items() if n.endswith('Runner')})
