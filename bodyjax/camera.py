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


# ----------------------------------------------------------------------------------------------
# Normalised image units
#
# The registration and the regressor work in NORMALISED image units, where the paper's loss
# weights balance and every number is O(1) whatever the resolution: with an ``(H, W)`` image,
# ``centre = ((W − 1)/2, (H − 1)/2)`` and ``half = max(H, W)/2``, a pixel point ``x`` is
# ``(x − centre) / half``, a weak-perspective scale ``s`` is ``s / half`` and a translation ``t`` is
# ``(t − centre) / half``.


def image_frame(image_size) -> tuple[Array, float]:
    """``(centre (2,), half)`` of an ``(H, W)`` image (see above)."""
    h, w = image_size
    return jnp.asarray([(w - 1) / 2.0, (h - 1) / 2.0], jnp.float32), max(h, w) / 2.0


def normalize_points(points: Array, image_size) -> Array:
    """Pixel points ``(..., 2)`` of an ``(H, W)`` image → normalised units."""
    centre, half = image_frame(image_size)
    return (points - centre) / half


def normalize_params(params, image_size):
    """Pixel-unit body parameters (anything with ``scale``, ``translation`` and ``replace``, e.g.
    :class:`bodyjax.body.BodyParams`) → normalised units (``s / half``, ``(t − centre) / half``)."""
    centre, half = image_frame(image_size)
    return params.replace(scale=params.scale / half, translation=(params.translation - centre) / half)


def denormalize_params(params, image_size):
    """Inverse of :func:`normalize_params`: normalised → pixels of an ``(H, W)`` image."""
    centre, half = image_frame(image_size)
    return params.replace(scale=params.scale * half, translation=params.translation * half + centre)
