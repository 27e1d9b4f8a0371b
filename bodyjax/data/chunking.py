"""Fixed-size chunks: the one helper that runs a jitted function over any number of rows.

Layer: orchestration (host-side loops over data). Every chunk has exactly ``chunk_size`` rows (the
last one padded by wrapping around to the first rows), so a jitted consumer compiles once whatever
the number of rows, and each row's result does not depend on the other rows of its chunk.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator, Optional, Sequence, Tuple

import jax
import numpy as np


def chunks(source, chunk_size: int, keys: Optional[Sequence[str]] = None) -> Iterator[Tuple[np.ndarray, dict]]:
    """The records of ``source`` in order, ``chunk_size`` at a time, as stacked arrays.

    The last chunk (and a source smaller than one chunk) is padded by wrapping around to the first
    records, so every chunk has exactly ``chunk_size`` rows (one compilation for a jitted consumer,
    whatever the split's size); the yielded index array tells the real records.

    Yields:
      ``(indices (n,), {key: (chunk_size, ...) array})`` with ``n <= chunk_size`` real records first.
    """
    m = len(source)
    if m == 0:
        raise ValueError("chunks: the source is empty")
    size = max(1, int(chunk_size))
    for lo in range(0, m, size):
        idx = np.arange(lo, lo + size) % m
        yield np.arange(lo, min(lo + size, m)), read(source, idx, keys)


def read(source, indices, keys: Optional[Sequence[str]] = None) -> dict:
    """The records ``indices`` of ``source`` stacked into ``{key: (n, ...) array}`` (``keys`` only)."""
    indices = [int(i) for i in np.asarray(indices).reshape(-1)]
    records = (source.__getitems__(indices) if hasattr(source, "__getitems__")
               else [source[i] for i in indices])
    keys = list(records[0]) if keys is None else list(keys)
    return {k: np.stack([np.asarray(r[k]) for r in records]) for k in keys}


def map_chunks(fn: Callable[[Any], Any], arrays: Any, chunk_size: int):
    """Applies ``fn`` to chunks of exactly ``chunk_size`` rows of in-memory arrays; concatenates.

    The last chunk (and an input smaller than one chunk) is padded by wrapping around to the first
    rows, so ``fn`` always sees one shape (one compilation) and each row's result does not depend on
    how many rows there are; the padding's results are dropped.

    Args:
      fn: maps a pytree of ``(chunk_size, ...)`` arrays to a pytree of ``(chunk_size, ...)`` arrays.
      arrays: a pytree of arrays with a common leading axis ``M >= 1`` (e.g. a dict, a BodyParams).
      chunk_size: rows per call.

    Returns:
      ``fn``'s pytree with leading axis ``M``, as NumPy arrays.
    """
    leaves = jax.tree_util.tree_leaves(arrays)
    m = len(leaves[0]) if leaves else 0
    if m == 0:
        raise ValueError("map_chunks: no rows")
    size = max(1, int(chunk_size))
    outs = []
    for lo in range(0, m, size):
        idx = np.arange(lo, lo + size) % m
        n = min(size, m - lo)
        out = jax.tree_util.tree_map(np.asarray, fn(jax.tree_util.tree_map(lambda a: np.asarray(a)[idx], arrays)))
        outs.append(jax.tree_util.tree_map(lambda a, n=n: a[:n], out))
    return concatenate(outs)


def concatenate(trees: Sequence[Any]):
    """Concatenates a list of pytrees of arrays along their leading axis (NumPy on the host)."""
    return jax.tree_util.tree_map(lambda *xs: np.concatenate([np.asarray(x) for x in xs]), *trees)
