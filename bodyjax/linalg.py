"""Norms and normalisation that stay finite at zero: the one place for them.

Layer: pure math. Both functions take any leading shape and reduce the last axis (or ``axis``).
"""
from __future__ import annotations

import jax.numpy as jnp

Array = jnp.ndarray

#: Default floor of :func:`normalize`: vectors shorter than this are divided by it instead.
NORMALIZE_EPS = 1e-8


def safe_norm(x: Array, axis: int = -1, keepdims: bool = False, eps: float = 0.0) -> Array:
    """The Euclidean norm with a finite gradient at the origin.

    With ``eps = 0`` (default) the value is exact and the gradient at the origin is zero. With
    ``eps > 0`` it is ``sqrt(|x|² + eps)``: never zero, for use as a divisor (bone lengths of
    possibly collapsed skeletons).

    Args:
      x: ``(..., D)`` vectors.
      axis: the reduced axis.
      keepdims: keep the reduced axis with size one.
      eps: added under the square root.

    Returns:
      ``(...)`` norms (``(..., 1)`` with ``keepdims``).
    """
    if eps > 0:
        return jnp.sqrt(jnp.sum(jnp.square(x), axis=axis, keepdims=keepdims) + eps)
    sq = jnp.sum(x * x, axis=axis, keepdims=keepdims)
    positive = sq > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)


def normalize(x: Array, axis: int = -1, eps: float = NORMALIZE_EPS) -> Array:
    """``x / sqrt(max(|x|², eps²))``: unit vectors; a zero vector maps to zero, gradients finite.

    Args:
      x: ``(..., D)`` vectors.
      axis: the axis holding the vector components.
      eps: the floor of the divisor.

    Returns:
      ``(..., D)``.
    """
    return x / jnp.sqrt(jnp.maximum(jnp.sum(x * x, axis=axis, keepdims=True), eps * eps))
