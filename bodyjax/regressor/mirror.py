"""Left/right mirror of the regressor's input and output, and flip test-time averaging.

EXTENSION (not in the paper; HMR-style systems commonly report it): with
``RegressorConfig.test_flip`` the regressor predicts on its input and on the input's mirror image,
mirrors the second prediction back and averages the two (:func:`average_params`). The averaged
predictor is exactly mirror-equivariant: the prediction on a mirrored input is the mirror of the
prediction on the input. Training is unchanged.

Mirror ``M = diag(-1, 1, 1)`` (x -> -x in the camera frame; in the NORMALISED image frame of
:func:`bodyjax.camera.normalize_points` the flip ``x -> W - 1 - x`` is ``x_n -> -x_n``), as
:func:`bodyjax.data.transforms.flip_gt` writes it for pixel parameters::

    pose'[j] = (a_x, -a_y, -a_z) of pose[joint_mirror[j]]     segment_scales' = S[joint_mirror]
    R' = M R M        s' = s        t'_n = (-t_x, t_y)

Label maps (``(..., H, W, 3)`` uint8 I, U, V of :mod:`bodyjax.batch`): columns reversed, part ``p``
-> ``part_mirror[p]``, and ``U -> UV_SCALE - U`` on the charts that mirror so
(:func:`bodyjax.body.chart_mirror`); U, V of the other charts become unlabelled, as the training
flip (:func:`bodyjax.data.transforms.flip_horizontal`) makes them.

Layer: algorithms. Pure ``jax.numpy`` functions, jit- and vmap-friendly.
"""
from __future__ import annotations

import jax.numpy as jnp

from bodyjax import body
from bodyjax.batch import UNLABELLED, UV_SCALE
from bodyjax.rotations import (axis_angle_to_quaternion, matrix_to_quaternion, quaternion_to_axis_angle,
                               quaternion_to_matrix)

Array = jnp.ndarray

_MIRROR = jnp.asarray([-1.0, 1.0, 1.0], jnp.float32)


def mirror_images(images: Array) -> Array:
    """``(..., H, W, C)`` images with their columns reversed (``x -> W - 1 - x``)."""
    return jnp.asarray(images)[..., :, ::-1, :]


def mirror_maps(iuv: Array, part_mirror: Array, chart_mirror: Array) -> Array:
    """The mirror image of IUV label maps.

    Args:
      iuv: ``(..., H, W, 3)`` uint8 label maps (part id 0..P, 255 = unlabelled; U, V in
        ``0..UV_SCALE``, 255 = unlabelled).
      part_mirror: ``(P + 1,)`` int, the part of the other side (``BodyTemplate.part_mirror``).
      chart_mirror: ``(P + 1,)`` bool, the parts whose U flips as ``1 - U``
        (:func:`bodyjax.body.chart_mirror`).

    Returns:
      ``(..., H, W, 3)`` uint8; an involution where every labelled chart mirrors.
    """
    iuv = mirror_images(iuv)
    part_mirror = jnp.asarray(part_mirror, jnp.int32)
    chart_mirror = jnp.asarray(chart_mirror, bool)
    part = iuv[..., 0].astype(jnp.int32)
    labelled = part < part_mirror.shape[0]
    safe = jnp.where(labelled, part, 0)
    new_part = jnp.where(labelled, part_mirror[safe], UNLABELLED)
    u, v = iuv[..., 1].astype(jnp.int32), iuv[..., 2].astype(jnp.int32)
    mirrored = labelled & chart_mirror[safe] & (u < UNLABELLED)
    new_u = jnp.where(mirrored, UV_SCALE - jnp.minimum(u, UV_SCALE), UNLABELLED)
    new_v = jnp.where(mirrored, v, UNLABELLED)
    return jnp.stack([new_part, new_u, new_v], axis=-1).astype(jnp.uint8)


def mirror_params(params: body.BodyParams, joint_mirror: Array) -> body.BodyParams:
    """The mirror of NORMALISED body parameters (see the module docstring), any batch shape."""
    jm = jnp.asarray(joint_mirror, jnp.int32)
    m = jnp.diag(_MIRROR)
    return params.replace(
        pose=jnp.take(params.pose * jnp.asarray([1.0, -1.0, -1.0], jnp.float32), jm, axis=-2),
        segment_scales=jnp.take(params.segment_scales, jm, axis=-1),
        rotation=m @ params.rotation @ m,
        translation=params.translation * jnp.asarray([-1.0, 1.0], jnp.float32),
    )


def _midpoint(q1: Array, q2: Array) -> Array:
    """Geodesic midpoint of two unit quaternions: the normalised sum after aligning their signs."""
    q2 = jnp.where(jnp.sum(q1 * q2, axis=-1, keepdims=True) < 0, -q2, q2)
    s = q1 + q2
    return s / jnp.maximum(jnp.linalg.norm(s, axis=-1, keepdims=True), 1e-12)


def average_params(a: body.BodyParams, b: body.BodyParams) -> body.BodyParams:
    """The mean of two predictions of the same person.

    Rotations (each joint's and the global one): the geodesic midpoint (slerp at 1/2; ``rotation``
    is read as orthonormal, as the regressor's Gram–Schmidt head makes it). Segment scales and
    scale: geometric mean (the head predicts their logarithms). Translation: arithmetic mean.
    """
    pose = quaternion_to_axis_angle(_midpoint(axis_angle_to_quaternion(a.pose), axis_angle_to_quaternion(b.pose)))
    rotation = quaternion_to_matrix(_midpoint(matrix_to_quaternion(a.rotation), matrix_to_quaternion(b.rotation)))
    return body.BodyParams(pose=pose, segment_scales=jnp.sqrt(a.segment_scales * b.segment_scales),
                           rotation=rotation, scale=jnp.sqrt(a.scale * b.scale),
                           translation=0.5 * (a.translation + b.translation))
