"""The regressor's head: the layout of its outputs and the representation eq. 14 compares.

With the paper's quaternion pose head the head has 132 outputs, laid out as

    ========================  =====  =====================================================
    slice                     size   meaning
    ========================  =====  =====================================================
    pose                      24×4   one quaternion (w, x, y, z) per joint; entry 0 (the root) is
                                     output only to keep the paper's count: the root orientation
                                     is R, so it is excluded from the loss and decoded as zero
    log segment scales        24     S = exp(u) (positive; u = 0 ⇔ S = 1)
    rotation                  9      R, row-major, made a rotation by Gram–Schmidt (columns)
    log weak-perspective s    1      s = exp(u) (positive), NORMALISED units
    translation               2      t, NORMALISED units
    ========================  =====  =====================================================

The alternative pose heads change only the pose slice: ``'rot6d'`` (SPIN; Zhou et al.) outputs
24×6 numbers made a rotation by Gram–Schmidt of two columns (180 outputs), ``'matrix_svd'`` (Neural
Body Fitting) 24×9 numbers projected to the closest rotation by SVD (252 outputs). The global R is
the paper's 9 numbers + Gram–Schmidt in every head. Every output decodes to valid rotations and
positive scales (:mod:`bodyjax.rotations`' decoders have fallbacks for degenerate inputs).

Units: NORMALISED image units (:mod:`bodyjax.camera`), so every output is O(1) and does not depend
on the resolution. Positivity: the segment scales and ``s`` are ``exp(clip(u, −c, c))`` (the
log-scale is the natural, symmetric coordinate of a scale, and eq. 14 compares ``u`` with
``log θ_fit`` linearly).

Eq. 14 compares (:func:`regression_vectors`): for the quaternion head the raw 4 numbers of each joint
against the unit quaternion of θ_fit, with the sign ambiguity ``q ≡ −q`` resolved per joint by
taking whichever of ``±q_fit`` is closer to the prediction (no gradient through the choice); for the
``rot6d`` / ``matrix_svd`` heads the decoded matrices against θ_fit's, as SPIN and NBF do; the log
segment scales and log ``s`` against the targets' logs, the raw 9 numbers of R against θ_fit's
orthonormalised R (eq. 14 literally), and ``t`` against the target's.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from bodyjax import body
from bodyjax.rotations import (axis_angle_to_matrix, axis_angle_to_quaternion, gram_schmidt,
                               matrix_to_axis_angle, quaternion_to_axis_angle, rot6d_to_matrix,
                               standardize_quaternion, svd_orthogonalize)

Array = jnp.ndarray

NUM_JOINTS = body.NUM_JOINTS
POSE_HEADS = ("quaternion", "rot6d", "matrix_svd")
POSE_DIMS = {"quaternion": 4, "rot6d": 6, "matrix_svd": 9}


def head_size(pose_head: str = "quaternion") -> int:
    """Number of head outputs: ``24 · d + 24 + 9 + 1 + 2`` (132 for quaternions, d = 4)."""
    return NUM_JOINTS * POSE_DIMS[pose_head] + NUM_JOINTS + 12


class HeadOutput(NamedTuple):
    """The head's raw outputs split by meaning (shapes for a batch ``...``).

    Attributes:
      pose: ``(..., 24, d)`` (d = 4, 6 or 9 by pose head).
      log_segment_scales: ``(..., 24)``.
      rotation: ``(..., 9)`` raw R, row-major.
      log_scale: ``(...)`` log of the normalised weak-perspective scale.
      translation: ``(..., 2)`` normalised translation.
    """

    pose: Array
    log_segment_scales: Array
    rotation: Array
    log_scale: Array
    translation: Array


def split_head(out: Array, pose_head: str = "quaternion") -> HeadOutput:
    """Splits ``(..., head_size(pose_head))`` into a :class:`HeadOutput`."""
    d = POSE_DIMS[pose_head]
    if out.shape[-1] != head_size(pose_head):
        raise ValueError(f"head output has {out.shape[-1]} numbers, expected {head_size(pose_head)} "
                         f"for pose_head={pose_head!r}")
    n = NUM_JOINTS * d
    return HeadOutput(
        pose=out[..., :n].reshape(out.shape[:-1] + (NUM_JOINTS, d)),
        log_segment_scales=out[..., n:n + NUM_JOINTS],
        rotation=out[..., n + NUM_JOINTS:n + NUM_JOINTS + 9],
        log_scale=out[..., n + NUM_JOINTS + 9],
        translation=out[..., n + NUM_JOINTS + 10:n + NUM_JOINTS + 12],
    )


def rest_head(pose_head: str = "quaternion", typical_scale: float = 1.0) -> np.ndarray:
    """``(head_size,)`` head output of the rest body: identity joints, S = 1, R = I, s = typical, t = 0."""
    ident = {"quaternion": [1.0, 0, 0, 0], "rot6d": [1.0, 0, 0, 0, 1, 0],
             "matrix_svd": list(np.eye(3).reshape(-1))}[pose_head]
    return np.concatenate([np.tile(np.asarray(ident, np.float32), NUM_JOINTS),
                           np.zeros(NUM_JOINTS, np.float32), np.eye(3, dtype=np.float32).reshape(-1),
                           np.asarray([np.log(typical_scale)], np.float32),
                           np.zeros(2, np.float32)]).astype(np.float32)


def pose_rotations(raw_pose: Array, pose_head: str) -> Array:
    """Joint rotation matrices ``(..., 24, 3, 3)`` of the raw pose slice ``(..., 24, d)``."""
    if pose_head == "quaternion":
        return axis_angle_to_matrix(quaternion_to_axis_angle(raw_pose))
    if pose_head == "rot6d":
        return rot6d_to_matrix(raw_pose)
    if pose_head == "matrix_svd":
        return svd_orthogonalize(raw_pose.reshape(raw_pose.shape[:-1] + (3, 3)))
    raise ValueError(f"unknown pose_head {pose_head!r}")


def _pose_axis_angle(raw_pose: Array, pose_head: str) -> Array:
    if pose_head == "quaternion":
        aa = quaternion_to_axis_angle(raw_pose)   # normalises (zero -> identity) and takes w >= 0
    else:
        aa = matrix_to_axis_angle(pose_rotations(raw_pose, pose_head))
    return aa.at[..., 0, :].set(0.0)


def decode_head(out: Array, pose_head: str = "quaternion", log_clip: float = 5.0) -> body.BodyParams:
    """Head output ``(..., head_size)`` → NORMALISED :class:`~bodyjax.body.BodyParams` ``(...)``.

    Pose: axis-angles of the decoded joint rotations (root entry 0); segment scales
    ``exp(clip(u))``; rotation: Gram–Schmidt of the 9 numbers (orthonormal); scale ``exp(clip(u))``;
    translation as is.
    """
    raw = split_head(out, pose_head)
    return body.BodyParams(
        pose=_pose_axis_angle(raw.pose, pose_head),
        segment_scales=jnp.exp(jnp.clip(raw.log_segment_scales, -log_clip, log_clip)),
        rotation=gram_schmidt(raw.rotation),
        scale=jnp.exp(jnp.clip(raw.log_scale, -log_clip, log_clip)),
        translation=raw.translation,
    )


def encode_head(params: body.BodyParams, pose_head: str = "quaternion") -> Array:
    """The head output ``(..., head_size)`` that decodes to NORMALISED ``params`` (inverse of decoding).

    Quaternions are standardised (``w >= 0``), 6D is the first two columns, the SVD head gets the
    matrix itself, the 9 numbers of R its Gram–Schmidt orthonormalisation.
    """
    mats = axis_angle_to_matrix(params.pose)
    pose = {"quaternion": lambda: standardize_quaternion(axis_angle_to_quaternion(params.pose)),
            "rot6d": lambda: jnp.concatenate([mats[..., :, 0], mats[..., :, 1]], axis=-1),
            "matrix_svd": lambda: mats.reshape(mats.shape[:-2] + (9,))}[pose_head]()
    batch = jnp.shape(params.scale)
    return jnp.concatenate([pose.reshape(batch + (-1,)), jnp.log(params.segment_scales),
                            gram_schmidt(params.rotation).reshape(batch + (9,)),
                            jnp.log(params.scale)[..., None], params.translation], axis=-1)


def regression_vectors(raw: HeadOutput, target: body.BodyParams, pose_head: str,
                       ) -> tuple[Array, Array, Array]:
    """The vectors compared by eq. (14): ``(pred (..., P), target (..., P), mask (..., P))``.

    Args:
      raw: the head's :class:`HeadOutput`.
      target: NORMALISED target parameters ``(...)``.
      pose_head: the head's pose representation (see the module docstring for the comparison).

    Returns:
      Three ``(..., P)`` arrays; the mask is 0 on the root joint's pose entries.
    """
    d_pose = 9 if pose_head != "quaternion" else 4
    if pose_head == "quaternion":
        q_t = standardize_quaternion(axis_angle_to_quaternion(target.pose))
        flip = jnp.sum(jax.lax.stop_gradient(raw.pose) * q_t, axis=-1, keepdims=True) < 0
        pose_t = jnp.where(flip, -q_t, q_t)
        pose_p = raw.pose
    else:
        pose_p = pose_rotations(raw.pose, pose_head).reshape(raw.pose.shape[:-1] + (9,))
        pose_t = axis_angle_to_matrix(target.pose).reshape(pose_p.shape)
    batch = raw.log_scale.shape
    flat = lambda x: x.reshape(batch + (-1,))  # noqa: E731
    pred = jnp.concatenate([flat(pose_p), raw.log_segment_scales, raw.rotation,
                            raw.log_scale[..., None], raw.translation], axis=-1)
    tgt = jnp.concatenate([
        flat(pose_t), jnp.log(jnp.maximum(target.segment_scales, 1e-3)),
        flat(gram_schmidt(target.rotation)), jnp.log(jnp.maximum(target.scale, 1e-6))[..., None],
        target.translation], axis=-1)
    mask = jnp.ones(pred.shape[-1], pred.dtype).at[:d_pose].set(0.0)
    return pred, tgt, jnp.broadcast_to(mask, pred.shape)
