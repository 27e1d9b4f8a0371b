"""Weak-perspective camera of the paper, eq. (1): ``x = s · Π(R X) + t``."""
from __future__ import annotations

from typing import Optional

import jax.numpy as jnp

Array = jnp.ndarray


def weak_perspective(points: Array, rotation: Optional[Array] = None, scale=1.0,
                     translation=(0.0, 0.0)) -> Array:
    """Projects 3D points with a weak-perspective camera.

    Args:
      points: ``(..., N, 3)`` points in metres (model or camera frame).
      rotation: optional ``(..., 3, 3)`` rotation applied first (``None``: the points are already in
        the camera frame). It is used as given: orthonormalise it beforehand if needed.
      scale: ``(...)`` pixels per metre.
      translation: ``(..., 2)`` pixels.

    Returns:
      ``(..., N, 2)`` image points ``s · (R X)[:2] + t`` (x right, y down).
    """
    if rotation is not None:
        points = jnp.matmul(points, jnp.swapaxes(rotation, -1, -2))
    scale = jnp.asarray(scale, points.dtype)
    translation = jnp.asarray(translation, points.dtype)
    return points[..., :2] * scale[..., None, None] + translation[..., None, :]
