"""Input checks of the public surface: shapes and dtypes, validated once, outside jit.

Every public entry point (``body.forward``, ``smpl.smpl_forward``, ``registration.register``, the
regressor's ``predict``, the loaders) calls these on its arguments before tracing, so a wrong input
raises a ``ValueError`` that names the argument and field, the shape found and the shape expected,
instead of a broadcasting error deep inside jit or a silently wrongly shaped result.

Shapes are written as tuples of ints and dimension names, e.g. ``("B", "N", 2)``. Names are bound
on first use within one :class:`Shapes` and must agree afterwards, so ``dense_xy (B, N, 2)`` and
``dense_vertex (B, N)`` of the same batch are checked against each other. ``"..."`` as the first
entry matches any leading batch shape (bound like a name).

Shapes are static under jit, so the checks also run (once, at trace time) when a checked function is
called inside a caller's ``jax.jit``.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import numpy as np

Dim = Union[int, str]


def _fmt(shape: Sequence[Dim]) -> str:
    inner = ", ".join(str(d) for d in shape)
    return f"({inner},)" if len(shape) == 1 else f"({inner})"


class Shapes:
    """Binds named dimensions across several checked arrays.

    Args:
      where: the function or object being checked, for the message (e.g. ``"register"``).
      **known: dimensions known in advance (e.g. ``K=17``).
    """

    def __init__(self, where: str, **known: Any):
        self.where = where
        self.dims: dict = {k: (tuple(v) if isinstance(v, tuple) else int(v)) for k, v in known.items()}

    def check(self, name: str, value: Any, shape: Sequence[Dim], dtype: Optional[str] = None) -> Any:
        """Checks ``value``'s shape (and dtype kind) and returns it unchanged.

        Args:
          name: the argument and field, e.g. ``"batch.dense_xy"``.
          value: an array (anything with ``.shape``/``.dtype``, or convertible by NumPy).
          shape: expected shape; ints must match, names bind (see the module docstring).
          dtype: ``"float"``, ``"int"``, ``"bool"``, ``"uint8"`` or ``None`` (not checked).

        Raises:
          ValueError: naming ``where``, ``name``, the shape found and the shape expected.
        """
        got = tuple(value.shape) if hasattr(value, "shape") else tuple(np.shape(value))
        expected = list(shape)
        lead: tuple = ()
        if expected and expected[0] == "...":
            n_rest = len(expected) - 1
            if len(got) < n_rest:
                self._fail(name, got, shape)
            lead, got_rest = got[:len(got) - n_rest], got[len(got) - n_rest:]
            if "..." in self.dims and self.dims["..."] != lead:
                self._fail(name, got, shape, f"leading shape {lead} differs from {self.dims['...']}")
            self.dims.setdefault("...", lead)
            expected = expected[1:]
        else:
            got_rest = got
        if len(got_rest) != len(expected):
            self._fail(name, got, shape)
        for g, e in zip(got_rest, expected):
            if isinstance(e, str):
                if e in self.dims and self.dims[e] != g:
                    self._fail(name, got, shape, f"{e} = {self.dims[e]} elsewhere")
                self.dims.setdefault(e, g)
            elif g != int(e):
                self._fail(name, got, shape)
        if dtype is not None:
            check_dtype(f"{self.where}: {name}", value, dtype)
        return value

    def _fail(self, name, got, shape, why: str = "") -> None:
        bound = {k: v for k, v in self.dims.items() if k != "..."}
        expected = _fmt([self.dims.get(d, d) if isinstance(d, str) and d != "..." else d for d in shape])
        extra = f" ({why})" if why else (f" (with {bound})" if bound else "")
        raise ValueError(f"{self.where}: {name} has shape {got}, expected {expected}{extra}")


_KINDS = {"float": "f", "int": "iu", "bool": "b", "uint8": None}


def check_dtype(name: str, value: Any, kind: str) -> None:
    """Raises ``ValueError`` unless ``value``'s dtype is of ``kind`` (see :meth:`Shapes.check`)."""
    dt = np.dtype(value.dtype if hasattr(value, "dtype") else np.asarray(value).dtype)
    if kind == "uint8":
        ok = dt == np.uint8
    elif kind == "float":
        ok = dt.kind == "f" or dt.name == "bfloat16"
    else:
        ok = dt.kind in _KINDS[kind]
    if not ok:
        raise ValueError(f"{name} has dtype {dt}, expected {kind}")


def check_finite(name: str, value: Any) -> None:
    """Raises ``ValueError`` naming ``name`` and the first bad index if a concrete array is not finite.

    Use only on concrete (host) values; under tracing the check is skipped.
    """
    try:
        arr = np.asarray(value)
    except Exception:  # noqa: BLE001 - a tracer: nothing to check at trace time
        return
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        idx = tuple(int(i) for i in np.argwhere(~np.isfinite(arr))[0])
        raise ValueError(f"{name} has a non-finite value {arr[idx]} at index {idx}")


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> None:
    """Raises ``ValueError`` unless ``value`` is one of ``choices``."""
    if value not in tuple(choices):
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")
