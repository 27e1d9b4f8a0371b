"""The lifter's frames: normalising 2D keypoints, lifting them to 3D, and the rotated views of eq. 1.

2D keypoints are root-centred (root of the keypoint set: the hip midpoint for ``coco17``, the pelvis
for ``joints24``; see :func:`bodyjax.skeletons.root_point` for the visibility fall-backs) and divided
by their RMS distance from the root over the visible keypoints. The RMS distance is used rather
than the 2D trunk length because (a) it is defined for any visibility pattern, while the trunk needs
all four shoulder/hip keypoints; (b) it never degenerates for a foreshortened torso; (c) the rotated
projections are renormalised the same way, so real and fake 2D poses have exactly the same scale
statistic (RMS = 1) and the discriminator cannot use size to tell them apart. Depths are predicted in
the same normalised units, relative to the root, so that ``depth_pixels = z · rms``.

Camera frame (project conventions): x right, y DOWN, z away from the camera. The vertical axis is
therefore y, and :func:`rotate_about_vertical` uses ``R_y(φ) = [[c, 0, s], [0, 1, 0], [-s, 0, c]]``.
"""
from __future__ import annotations

from typing import Tuple, Union

import jax.numpy as jnp

from bodyjax import skeletons
from bodyjax.skeletons import KeypointSet

Array = jnp.ndarray
KeypointSetLike = Union[str, KeypointSet, None]

_RMS_EPS = 1e-8  # added to the mean squared distance before the sqrt (input units squared)


# Keypoints labelled only when seen (the face), per keypoint set; see ``discriminator_mask``.
_VIEW_DEPENDENT = {"coco17": ("nose", "left_eye", "right_eye", "left_ear", "right_ear")}


def discriminator_mask(keypoint_set: KeypointSetLike, which: str = "body") -> Array:
    """``(N,)`` 1 for the keypoints the discriminator sees, 0 for the others.

    ``which='all'``: every keypoint. ``which='body'``: every keypoint except those whose labels
    depend on the view (the face of ``coco17``: nose, eyes, ears; ``joints24`` has none).
    """
    ks = skeletons.get_keypoint_set(keypoint_set)
    if which == "all":
        return jnp.ones((ks.num_keypoints,), jnp.float32)
    if which != "body":
        raise ValueError(f"which must be 'all' or 'body', got {which!r}")
    hidden = set(_VIEW_DEPENDENT.get(ks.name, ()))
    return jnp.asarray([0.0 if n in hidden else 1.0 for n in ks.names], jnp.float32)


def normalize_keypoints2d(keypoints2d: Array, visibility: Array,
                          keypoint_set: KeypointSetLike = None) -> Tuple[Array, Array, Array]:
    """Root-centres and scale-normalises 2D keypoints (the lifter's input frame).

    ``normalized = (u - root) / rms`` with ``root`` from :func:`bodyjax.skeletons.root_point`
    (visibility-weighted) and ``rms`` the RMS distance of the visible keypoints from the root, so
    the visible keypoints of ``normalized`` have RMS norm 1. Invisible keypoints are set to 0.

    Args:
      keypoints2d: ``(..., N, 2)`` (any units, e.g. pixels).
      visibility: ``(..., N)`` 1 visible / 0 invisible (float or bool).
      keypoint_set: name or :class:`KeypointSet`; ``None`` infers it from N.
    Returns:
      ``(normalized (..., N, 2), root (..., 2), rms (...))``.
    """
    ks = skeletons.resolve(keypoint_set, keypoints2d.shape[-2])
    vis = jnp.broadcast_to(jnp.asarray(visibility, keypoints2d.dtype), keypoints2d.shape[:-1])
    root = skeletons.root_point(keypoints2d, ks, vis)
    d = (keypoints2d - root[..., None, :]) * vis[..., None]
    count = jnp.maximum(jnp.sum(vis, axis=-1), 1.0)
    mean_sq = jnp.sum(jnp.sum(jnp.square(d), axis=-1), axis=-1) / count
    rms = jnp.sqrt(mean_sq + _RMS_EPS)
    return d / rms[..., None, None], root, rms


def normalize_joints3d(joints3d: Array, keypoints2d: Array, visibility: Array,
                       keypoint_set: KeypointSetLike = None) -> Array:
    """Brings 3D joint targets (eq. 5) into the lifter's normalised frame.

    The targets are root-centred with their OWN 3D root (same visibility-weighted definition as the
    lifted pose, whose depth is root-relative) and divided by the 2D scale of ``keypoints2d`` (the
    generator's input), exactly the factor :func:`predict_depths` multiplies by. Hence a generator
    that matches the normalised targets makes :func:`predict_depths` return the targets'
    root-relative depths in pixels. Invisible joints are set to 0 (they are masked out of eq. 5).

    Args:
      joints3d: ``(..., N, 3)`` in the units of ``keypoints2d`` (pixels):
        ``(x_img, y_img, s*depth)``, e.g. :func:`weak_perspective_joints3d` of the
        registration's keypoints.
      keypoints2d: ``(..., N, 2)`` the 2D input the generator sees for the same example.
      visibility: ``(..., N)``.
      keypoint_set: name or :class:`KeypointSet`; ``None`` infers it from N.
    Returns:
      ``(..., N, 3)`` normalised targets.
    """
    ks = skeletons.resolve(keypoint_set, joints3d.shape[-2])
    vis = jnp.broadcast_to(jnp.asarray(visibility, joints3d.dtype), joints3d.shape[:-1])
    _, _, rms = normalize_keypoints2d(keypoints2d, vis, ks)
    root = skeletons.root_point(joints3d, ks, vis)
    return (joints3d - root[..., None, :]) * vis[..., None] / rms[..., None, None]


def weak_perspective_joints3d(points3d: Array, scale: Array, translation: Array) -> Array:
    """Camera-frame 3D points (metres) -> pixel-unit 3D joints ``(s x + t_x, s y + t_y, s z)``.

    Args:
      points3d: ``(..., N, 3)`` ``R X`` in the camera frame (e.g. ``BodyOutput.keypoints``).
      scale: ``(...)`` weak-perspective scale s (pixels per metre).
      translation: ``(..., 2)`` t (pixels).
    Returns:
      ``(..., N, 3)``: x, y equal the projected keypoints, z the depth used by the losses (eq. 9).
    """
    scale = jnp.asarray(scale, points3d.dtype)
    t = jnp.concatenate([translation, jnp.zeros_like(translation[..., :1])], axis=-1)
    return scale[..., None, None] * points3d + t[..., None, :]


def lift_normalized(depths: Array, normalized2d: Array, visibility: Array,
                    keypoint_set: KeypointSetLike = None) -> Array:
    """Concatenates normalised 2D keypoints with root-relative depths into a 3D pose.

    Args:
      depths: ``(..., N)`` raw generator output.
      normalized2d: ``(..., N, 2)`` the generator's input (root at the origin).
      visibility: ``(..., N)``.
      keypoint_set: name or :class:`KeypointSet`; ``None`` infers it from N.
    Returns:
      ``(..., N, 3)``: ``(x, y, z - z_root)``, invisible keypoints zeroed.
    """
    ks = skeletons.resolve(keypoint_set, depths.shape[-1])
    vis = jnp.asarray(visibility, depths.dtype)
    z_root = skeletons.root_point(depths[..., None], ks, vis)
    z = (depths - z_root) * vis
    return jnp.concatenate([normalized2d * vis[..., None], z[..., None]], axis=-1)


def rotate_about_vertical(points3d: Array, angle: Array) -> Array:
    """Rotates 3D points about the vertical (image y) axis through the origin.

    ``R_y(phi) = [[cos, 0, sin], [0, 1, 0], [-sin, 0, cos]]``: ``x' = cos x + sin z``, ``y' = y``,
    ``z' = -sin x + cos z``. ``phi = pi`` maps ``(x, y, z) -> (-x, y, -z)``.

    Args:
      points3d: ``(..., N, 3)``.
      angle: radians, shape broadcastable to ``(...)`` (the batch dims of ``points3d``).
    Returns:
      ``(..., N, 3)`` (batch dims broadcast against ``angle``).
    """
    angle = jnp.asarray(angle, points3d.dtype)
    c = jnp.cos(angle)[..., None]
    s = jnp.sin(angle)[..., None]
    x, y, z = points3d[..., 0], points3d[..., 1], points3d[..., 2]
    y = jnp.broadcast_to(y, jnp.broadcast_shapes(y.shape, c.shape))
    return jnp.stack([c * x + s * z, y, -s * x + c * z], axis=-1)


def project_views(points3d: Array, visibility: Array, angles: Array,
                  keypoint_set: KeypointSetLike = None) -> Array:
    """The ``f(u, G(u); phi)`` of eq. 1 for every angle: rotate, drop z, renormalise.

    Args:
      points3d: ``(..., N, 3)`` lifted poses in the normalised frame.
      visibility: ``(..., N)``; invisible keypoints are zeroed in the output.
      angles: radians, ``(A,)`` (same angles for every pose) or ``(..., A)`` (per pose).
      keypoint_set: name or :class:`KeypointSet`; ``None`` infers it from N.
    Returns:
      ``(..., A, N, 2)`` projections normalised like the input (:func:`normalize_keypoints2d`).
    """
    ks = skeletons.resolve(keypoint_set, points3d.shape[-2])
    rotated = rotate_about_vertical(points3d[..., None, :, :], angles)
    vis = jnp.broadcast_to(jnp.asarray(visibility, points3d.dtype)[..., None, :],
                           rotated.shape[:-1])
    return normalize_keypoints2d(rotated[..., :2], vis, ks)[0]
