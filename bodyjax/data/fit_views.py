"""New views of the fitted bodies: extra (label map, θ) pairs for the two-stage regressor.

EXTENSION (not in the papers). The two-stage regressor (Neural Body Fitting's design, see
:mod:`bodyjax.regressor.network`) reads a part / IUV map, not the image, and a map of a body is a
rendering of its surface. So every fit θ_fit of a training image gives more training pairs for the
regressor: the fitted body turned about its vertical axis and, optionally, with some of its limbs'
joint rotations taken from another fit, rendered into the record's ``iuv`` label format with its
keypoints and dense correspondences. No ground truth enters: the pairs are made from the fits, as
the fits themselves are. Measured on the synthetic default (BENCHMARKS.md, "The regressor's
compute and the rendered views"): at equal compute no better than more epochs on the images, so the
default leaves it off.

Layer: data (NumPy rendering through :mod:`bodyjax.data.synthetic.surface`); the loop calls
:func:`make_records` once per round with the round's fits.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import numpy as np

from bodyjax import body
from bodyjax.data import sample as sample_lib
from bodyjax.data.synthetic import rotations64, surface

#: Joints (SMPL order, :data:`bodyjax.body.JOINT_NAMES`) whose local rotations move together when a
#: limb is taken from another fit.
LIMBS = {
    "left_leg": (1, 4, 7, 10),
    "right_leg": (2, 5, 8, 11),
    "left_arm": (13, 16, 18, 20, 22),
    "right_arm": (14, 17, 19, 21, 23),
    "head": (12, 15),
}


@dataclasses.dataclass(frozen=True)
class FitViewsConfig:
    """How many new views of the fits the regressor trains on, and how they differ from the fits.

    Attributes:
      per_fit: views rendered per trusted fit and round (0: off, the paper). Fractions allowed.
      yaw_deg: each view turns the fitted body about its vertical axis by an angle drawn uniformly
        from ``[-yaw_deg, yaw_deg]`` (180: all round).
      limb_mix: probability that each limb of :data:`LIMBS` takes its joint rotations from another
        (random) fit.
    """

    per_fit: float = 0.0
    yaw_deg: float = 180.0
    limb_mix: float = 0.5

    def __post_init__(self):
        if not (np.isfinite(self.per_fit) and self.per_fit >= 0):
            raise ValueError(f"FitViewsConfig.per_fit must be >= 0, got {self.per_fit}")
        if not 0.0 <= self.yaw_deg <= 180.0:
            raise ValueError(f"FitViewsConfig.yaw_deg must be in [0, 180], got {self.yaw_deg}")
        if not 0.0 <= self.limb_mix <= 1.0:
            raise ValueError(f"FitViewsConfig.limb_mix must be in [0, 1], got {self.limb_mix}")


def up_axis(template: body.BodyTemplate) -> np.ndarray:
    """The body's vertical in its model frame: the unit vector from the pelvis to the neck at rest."""
    joints = np.asarray(template.joints, np.float64)
    up = joints[body.JOINT_NAMES.index("neck")] - joints[body.JOINT_NAMES.index("pelvis")]
    return up / np.linalg.norm(up)


def new_bodies(template: body.BodyTemplate, fits: body.BodyParams, num: int, rng: np.random.Generator,
               config: FitViewsConfig, weights: Optional[np.ndarray] = None) -> body.BodyParams:
    """``num`` new bodies from the fits: turned about the vertical, limbs exchanged between fits.

    Args:
      template: the body (its rest joints give the vertical).
      fits: pixel-unit :class:`~bodyjax.body.BodyParams` ``(M,)`` of the training images.
      num: bodies to make.
      rng: the draws (which fit, which angle, which limbs from which other fit).
      config: a :class:`FitViewsConfig`.
      weights: optional ``(M,)`` non-negative weights of the fits (0: never used, e.g. flagged).

    Returns:
      Pixel-unit :class:`~bodyjax.body.BodyParams` ``(num,)`` (NumPy float32): each keeps its base
      fit's segment scales, scale and translation; its rotation is the base fit's (orthonormalised)
      times a turn about the model's vertical, so the body turns in place.
    """
    fits = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), fits)
    m = fits.pose.shape[0]
    p = np.ones(m) if weights is None else np.asarray(weights, np.float64)
    if p.shape != (m,) or not np.all(np.isfinite(p)) or np.any(p < 0) or p.sum() <= 0:
        raise ValueError(f"new_bodies: weights must be ({m},), non-negative with a positive sum")
    p = p / p.sum()
    base = rng.choice(m, size=num, p=p)
    pose = fits.pose[base].copy()
    for joints in LIMBS.values():
        donor = rng.choice(m, size=num, p=p)
        take = rng.random(num) < config.limb_mix
        idx = np.asarray(joints)
        pose[np.ix_(take, idx)] = fits.pose[donor[take]][:, idx]
    yaw = np.radians(rng.uniform(-config.yaw_deg, config.yaw_deg, size=num))
    turn = rotations64.axis_angle_to_matrix(yaw[:, None] * up_axis(template))
    rotation = rotations64.gram_schmidt(fits.rotation[base]) @ turn
    return body.BodyParams(pose=pose.astype(np.float32),
                           segment_scales=fits.segment_scales[base].astype(np.float32),
                           rotation=rotation.astype(np.float32), scale=fits.scale[base].astype(np.float32),
                           translation=fits.translation[base].astype(np.float32))


_forward = jax.jit(body.forward)


def render_records(template: body.BodyTemplate, params: body.BodyParams, image_size: int,
                   max_points: int, rng: np.random.Generator, chunk: int = 256) -> dict:
    """Renders bodies into training records with their own θ as the target.

    Args:
      template: the body (its faces, parts and charts draw the map).
      params: pixel-unit :class:`~bodyjax.body.BodyParams` ``(B,)``.
      image_size: side of the square records, pixels.
      max_points: the records' dense-correspondence capacity.
      rng: draws which visible vertices become the dense correspondences.
      chunk: bodies per jitted forward pass.

    Returns:
      ``{key: (B, ...)}`` records with the fields of :func:`bodyjax.data.sample.sample_spec` that the
      regressor reads: a black ``image``, the rendered ``iuv`` labels, up to ``max_points`` visible
      vertices at their projections as dense correspondences, every keypoint at its projection
      (visible when inside the image), ``has_gt`` 0, and the ``target_*`` fields (``params``) with
      ``target_weight`` 1.
    """
    params = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float32), params)
    body.check_params(params, "fit_views.render_records: params", template.joints.shape[0])
    n = params.pose.shape[0]
    k = template.num_keypoints
    mesh = surface.mesh_arrays(template)
    out = {
        "image": np.zeros((n, image_size, image_size, 3), np.uint8),
        "iuv": np.zeros((n, image_size, image_size, 3), np.uint8),
        "dense_xy": np.zeros((n, max_points, 2), np.float32),
        "dense_vertex": np.zeros((n, max_points), np.int32),
        "dense_mask": np.zeros((n, max_points), np.float32),
        "keypoints": np.zeros((n, k, 2), np.float32),
        "keypoint_visible": np.zeros((n, k), np.float32),
        "has_gt": np.zeros(n, np.float32),
    }
    for lo in range(0, n, chunk):
        idx = np.arange(lo, lo + chunk) % n          # one compiled shape
        posed = _forward(template, jax.tree_util.tree_map(lambda a: a[idx], params))
        vertices = np.asarray(posed.vertices, np.float64)
        keypoints = np.asarray(posed.keypoints[..., :2], np.float64)
        for j in range(min(chunk, n - lo)):
            i = lo + j
            s, t = float(params.scale[i]), params.translation[i].astype(np.float64)
            xy = vertices[j, :, :2] * s + t
            frame, surf = surface.rasterise(mesh, xy, vertices[j, :, 2], image_size)
            out["iuv"][i] = surface.iuv_labels(frame, surf)
            seen = np.unique(frame.vid)
            chosen = rng.permutation(seen)[:max_points]
            out["dense_xy"][i, :len(chosen)] = xy[chosen]
            out["dense_vertex"][i, :len(chosen)] = chosen
            out["dense_mask"][i, :len(chosen)] = 1.0
            kp = keypoints[j] * s + t
            out["keypoints"][i] = kp
            out["keypoint_visible"][i] = np.all((kp >= -0.5) & (kp <= image_size - 0.5), axis=-1)
    out.update(sample_lib.params_to_record(params, "target"))
    out["target_weight"] = np.ones(n, np.float32)
    return out


def make_records(template: body.BodyTemplate, fits: body.BodyParams, weights: np.ndarray,
                 image_size: int, max_points: int, seed: int, config: FitViewsConfig) -> Optional[dict]:
    """This round's new views (:func:`new_bodies` rendered by :func:`render_records`), or ``None``.

    ``round(config.per_fit × number of fits with a positive weight)`` views, drawn from ``seed``
    (the same seed gives the same records, so a resumed stage trains on the same data).
    """
    weights = np.asarray(weights, np.float64)
    num = int(round(config.per_fit * int(np.sum(weights > 0))))
    if num == 0:
        return None
    if int(image_size) <= 0 or int(max_points) <= 0:
        raise ValueError(f"fit_views.make_records: image_size and max_points must be positive, got "
                         f"{image_size} and {max_points}")
    rng = np.random.default_rng(seed)
    params = new_bodies(template, fits, num, rng, config, weights)
    return render_records(template, params, image_size, max_points, rng)


__all__ = ["LIMBS", "FitViewsConfig", "up_axis", "new_bodies", "render_records",
           "make_records"]
