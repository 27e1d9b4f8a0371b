"""A person in front of the camera: the drawn body, its global rotation and the camera that frames it.

A person is θ = [a, S, R, s, t] (:class:`bodyjax.body.BodyParams`): the pose ``a`` and segment scales
``S`` of :mod:`~bodyjax.data.synthetic.poses`; ``R = R_tilt · R_yaw · R_lean``: the pose's whole-body
lean, then a yaw in ``cfg.yaw_range`` about the vertical (y) axis, then a tilt of up to ``cfg.tilt``
degrees about x and z; and a weak-perspective camera ``(s, t)`` fitted so that the projected body
lies inside the frame, at a random size and position.

The draws of person ``i`` come from one NumPy generator in a fixed order (pose, segment scales,
rotation, then, after the forward pass, the camera), so a person does not depend on which others are
drawn with it. The forward passes run through one jitted :func:`bodyjax.body.forward` on chunks of a
fixed size (:func:`bodyjax.data.chunking.map_chunks`), so each person's vertices are bitwise the same
whatever the batch it was posed in.
"""
from __future__ import annotations

import math
from typing import Sequence

import jax
import numpy as np

from bodyjax import body
from bodyjax.data.synthetic import poses, rotations64
from bodyjax.data.chunking import map_chunks
from bodyjax.data.synthetic.config import SyntheticConfig

_DEG = math.pi / 180.0
#: People per forward pass (one compiled shape; the fastest on a CPU for the default template).
CHUNK = 16


def draw_people(rngs: Sequence[np.random.Generator], template: body.BodyTemplate,
                cfg: SyntheticConfig = SyntheticConfig()) -> body.BodyParams:
    """Pose, segment scales and rotation of one person per generator, not yet framed.

    Each generator makes the draws of :func:`~bodyjax.data.synthetic.poses.sample_pose`, then of
    :func:`~bodyjax.data.synthetic.poses.sample_segment_scales`, then the yaw and the two tilts.

    Returns:
      :class:`~bodyjax.body.BodyParams` (NumPy float32) with leading axis ``n = len(rngs)``, scale 1
      and translation 0 (see :func:`frame`); ``pose[:, 0] = 0`` (the lean is in ``rotation``).
    """
    rig, op = poses.template_rig(template), poses.segment_scale_operator(template)
    pose_draws, scales, angles = [], [], []
    for rng in rngs:
        pose_draws.append(poses.draw_pose(rng, rig, cfg.archetype_weights, cfg.pose_noise))
        scales.append(poses.draw_segment_scales(rng, op, cfg))
        yaw = rng.uniform(*cfg.yaw_range)
        pitch, roll = rng.uniform(-cfg.tilt, cfg.tilt, size=2)
        angles.append((pitch, roll, yaw))
    pose = poses.poses_from_draws(np.stack([d.factors for d in pose_draws]),
                                  np.stack([d.hinge for d in pose_draws]))
    lean = pose[:, 0].astype(np.float64)
    pose[:, 0] = 0.0
    pitch, roll, yaw = (np.asarray(a, np.float64) * _DEG for a in zip(*angles))
    zero = np.zeros_like(pitch)
    factors = np.stack([np.stack([pitch, zero, zero], -1), np.stack([zero, zero, roll], -1),
                        np.stack([zero, yaw, zero], -1), lean], axis=1)            # (n, 4, 3)
    m = rotations64.axis_angle_to_matrix(factors)                                   # (n, 4, 3, 3)
    # R_tilt · R_yaw is rounded to float32 before the lean is applied: the data set's definition.
    tilt_yaw = (m[:, 0] @ m[:, 1] @ m[:, 2]).astype(np.float32)
    rotation = (tilt_yaw.astype(np.float64) @ m[:, 3]).astype(np.float32)
    n = len(rngs)
    return body.BodyParams(pose=pose, segment_scales=np.stack(scales), rotation=rotation,
                           scale=np.ones(n, np.float32), translation=np.zeros((n, 2), np.float32))


_forward = jax.jit(body.forward)


def pose_bodies(template: body.BodyTemplate, params: body.BodyParams) -> body.BodyOutput:
    """:func:`bodyjax.body.forward` of stacked people ``params`` (leading axis ``n``), on the host.

    Returns:
      :class:`~bodyjax.body.BodyOutput` of NumPy arrays with leading axis ``n``.
    """
    return map_chunks(lambda p: _forward(template, p), params, CHUNK)


@jax.jit
def _extent_and_keypoints(template: body.BodyTemplate, params: body.BodyParams):
    out = body.forward(template, params)
    xy = out.vertices[..., :2]
    return xy.min(-2), xy.max(-2), out.keypoints


def extent_and_keypoints(template: body.BodyTemplate, params: body.BodyParams):
    """The posed bodies' camera-frame box and keypoints, without keeping the vertices.

    Returns:
      ``(lo (n, 2), hi (n, 2), keypoints (n, K, 3))`` NumPy float32: the smallest and largest ``x, y``
      of the posed vertices and the posed keypoints (camera frame, metres).
    """
    return map_chunks(lambda p: _extent_and_keypoints(template, p), params, CHUNK)


def frame(rng: np.random.Generator, lo: np.ndarray, hi: np.ndarray,
          cfg: SyntheticConfig = SyntheticConfig()) -> tuple[np.float32, np.ndarray]:
    """Weak-perspective ``(s, t)`` that fits a posed body with camera-frame box ``lo, hi (2,)``.

    The larger side of the projected box takes a fraction ``cfg.fill`` of the image and the box is
    shifted at random but stays at least ``cfg.margin`` pixels inside (pixel centres 0..size-1).

    Returns:
      ``s`` (pixels per metre) and ``t (2,)`` (pixels), float32.
    """
    size = cfg.image_size
    lo = np.asarray(lo, np.float64)
    hi = np.asarray(hi, np.float64)
    extent = np.maximum(hi - lo, 1e-6)
    room = size - 1 - 2 * cfg.margin
    s = rng.uniform(*cfg.fill) * room / extent.max()
    free = np.maximum(room - s * extent, 0.0) / 2          # slack on each side
    centre = (size - 1) / 2 + rng.uniform(-1, 1, size=2) * free * 0.98
    t = centre - s * (lo + hi) / 2
    return np.float32(s), t.astype(np.float32)


def framed(params: body.BodyParams, scale: np.ndarray, translation: np.ndarray) -> body.BodyParams:
    """``params`` with the camera ``(scale, translation)`` of :func:`frame`."""
    return params.replace(scale=np.asarray(scale, np.float32),
                          translation=np.asarray(translation, np.float32))


def sample_params(rng: np.random.Generator, template: body.BodyTemplate,
                  cfg: SyntheticConfig = SyntheticConfig()) -> body.BodyParams:
    """Draws one person's parameters θ = [a, S, R, s, t] (NumPy float32, no batch dims).

    The draws of :func:`draw_people` followed by :func:`frame` on the posed vertices: exactly the
    person of a data-set sample made with this generator.
    """
    person = draw_people([rng], template, cfg)
    vertices = pose_bodies(template, person).vertices[0]
    s, t = frame(rng, vertices[:, :2].min(0), vertices[:, :2].max(0), cfg)
    return framed(jax.tree_util.tree_map(lambda a: a[0], person), s, t)
