"""The embedded synthetic data set: the default template posed, rendered and annotated.

Every sample is a person made from the default template (or any :class:`~bodyjax.body.BodyTemplate`):

* a pose drawn from a mixture of archetypes (standing, walking, sitting, reaching / arms raised,
  crouching, bending) with per-joint perturbations, always inside the joint-limit table
  :data:`JOINT_LIMITS` (elbows and knees bend one way only, along ``template.hinge_axes``);
* segment scales ``1 ± a few %``, smooth along the kinematic tree and nearly left/right symmetric;
* a global rotation (a full turn about the vertical axis and a tilt of up to ±15°) and a
  weak-perspective camera fitted so that the whole projected body lies inside the frame;
* a z-buffered, shaded, textured RGB rendering on a random textured background;
* DensePose-like dense correspondences: pixels drawn uniformly over the person's mask, each mapped to
  the template vertex of the visible triangle with the largest barycentric weight; the image point is
  that vertex's exact projection (so the ground-truth body puts the vertex on its image point), kept
  only if the vertex itself passes the z-buffer test of :func:`vertex_visible` (it is the visible
  surface at the four pixel centres around it), deduplicated, ``cfg.num_points`` of them per image;
* keypoints with occlusion-aware visibility (the rule is documented in :func:`keypoint_visibility`).

Samples follow the record of :mod:`bodyjax.data.sample`. ``keypoints`` holds the projections of all
``K`` keypoints, hidden ones included (``keypoint_visible`` = 0 for them). The ground truth is the
exact parameter set that was rendered: ``gt_pose[0] = 0`` (the root orientation is in
``gt_rotation``, orthonormal with det +1), ``gt_joints3d`` is ``R · joints`` minus the pelvis, metres.
Sample ``i`` of seed ``s`` depends only on ``(s, i)`` (its generator is
``np.random.default_rng([s, i])``), so it is the same whatever the start, order or number of workers.

Typical use::

    template = body.default_template()
    cfg = SyntheticConfig()
    batch = make_split(template, cfg, seed=0, num_samples=256)      # stacked dict
    for sample in generate(template, cfg, seed=1, num_samples=10):    # one dict at a time
        ...
"""
from __future__ import annotations

import dataclasses
import math
import time
from typing import Iterator, NamedTuple, Optional

import cv2
import jax
import jax.numpy as jnp
import numpy as np

from bodyjax import body, render
from bodyjax.data import sample as sample_lib

_DEG = math.pi / 180.0
ARCHETYPES = ("standing", "walking", "reaching", "sitting", "crouching", "bending")

# ----------------------------------------------------------------------------------------------
# Configuration


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    """Options of the synthetic data set (plain values; a config system may build one from its own).

    Attributes:
      image_size: side of the square images, pixels.
      max_points: ``N_max`` of the record (padding length of the dense correspondences).
      num_points: ``(lo, hi)`` range of the number of dense correspondences drawn per image.
      keypoint_set: ``'coco17'`` or ``'joints24'``.
      archetype_weights: mixture weights of :data:`ARCHETYPES`, in that order.
      pose_noise: multiplier of the per-joint perturbation table :data:`POSE_NOISE`.
      scale_spread: std of the log segment scales (smoothed along the tree, symmetric part).
      global_scale_spread: std of a log scale shared by all segments (body size).
      scale_asymmetry: std of the independent (left/right asymmetric) part of the log scales.
      scale_clip: bounds of the segment scales.
      yaw_range: rotation about the vertical (y) axis, degrees.
      tilt: maximum tilt about the x and z axes, degrees.
      fill: range of the fraction of the image taken by the larger side of the projected body box.
      margin: minimum distance in pixels between the projected body and the image border.
      background: ``'mixed'`` (random choice), ``'noise'``, ``'gradient'``, ``'stripes'``,
        ``'checker'`` or ``'flat'``.
      clutter: maximum number of random shapes drawn on the background.
      part_color_weight: range of the weight of the fixed DensePose part colours in the body colour
        (the rest is a random per-sample clothing / skin palette).
      color_jitter: per-part random colour offset (std, in [0, 1] units).
      texture: amplitude of the per-vertex texture noise and stripes on the body.
      ambient: range of the ambient light level.
      pixel_noise: range of the std of the Gaussian pixel noise (0..255 units).
      blur_prob: probability of a 3×3 Gaussian blur of the final image.
      visibility_tolerance: depth tolerance of the vertex z-buffer test, metres.
    """

    image_size: int = 128
    max_points: int = 160
    num_points: tuple = (100, 160)
    keypoint_set: str = "coco17"
    archetype_weights: tuple = (0.22, 0.2, 0.2, 0.12, 0.1, 0.16)
    pose_noise: float = 1.0
    scale_spread: float = 0.05
    global_scale_spread: float = 0.04
    scale_asymmetry: float = 0.01
    scale_clip: tuple = (0.8, 1.25)
    yaw_range: tuple = (-180.0, 180.0)
    tilt: float = 15.0
    fill: tuple = (0.7, 0.92)
    margin: float = 2.0
    background: str = "mixed"
    clutter: int = 4
    part_color_weight: tuple = (0.15, 0.45)
    color_jitter: float = 0.06
    texture: float = 0.12
    ambient: tuple = (0.3, 0.55)
    pixel_noise: tuple = (0.0, 6.0)
    blur_prob: float = 0.3
    visibility_tolerance: float = 0.01

    def __post_init__(self):
        if len(self.archetype_weights) != len(ARCHETYPES):
            raise ValueError(f"archetype_weights needs {len(ARCHETYPES)} entries ({ARCHETYPES}), "
                             f"got {len(self.archetype_weights)}")
        if not 0 < self.num_points[0] <= self.num_points[1] <= self.max_points:
            raise ValueError(f"num_points {self.num_points} must satisfy 0 < lo <= hi <= max_points "
                             f"({self.max_points})")
        if self.keypoint_set not in body.KEYPOINT_SETS:
            raise ValueError(f"keypoint_set {self.keypoint_set!r} not in {body.KEYPOINT_SETS}")


# ----------------------------------------------------------------------------------------------
# Joint limits and the pose sampler
#
# Poses are described by anatomical angles (degrees) of the LEFT side and of the midline joints;
# the right side uses the same names and is mirrored (x -> -x) when converted to axis-angles.
# Axes are those of the rest (camera) frame: x = the body's left, y = down, z = backwards.
#
#   group     angle      lo    hi   meaning (left side)                        rotation
#   spine     flex      -15    35   bend forwards (each of spine1..3)          R_x(+flex)
#             side      -15    15   bend towards the left                      R_z(+side)
#             twist     -20    20   turn about the spine                       R_y(+twist)
#   neck      flex      -30    40   nod forwards                               R_x, R_z, R_y as spine
#   head      flex      -20    25
#   collar    elevate   -10    25   shrug the shoulder up                      R_z(-elevate)
#             protract  -15    15   shoulder forwards                          R_y(+protract)
#   shoulder  abduct      0   170   arm away from the side in the frontal plane (0 = hanging,
#                                   90 = horizontal, 170 = overhead)           R_z(-(abduct - rest))
#             flex      -50   170   arm forwards (negative: backwards)         R_x(-flex)
#             twist     -60    60   rotation about the upper arm                about the rest arm
#   elbow     flex        0   100   hinge, along hinge_axes (rest pose is already ~45° flexed)
#   wrist     flex      -50    50   about the elbow's flexion axis
#             deviate   -20    25   about the forearm's side axis
#   hand      flex      -10    40   about the elbow's flexion axis
#   hip       flex      -20   125   thigh forwards                             R_x(-flex)
#             abduct    -15    45   thigh outwards from vertical in the frontal plane (the rest
#                                   legs are ~8° apart)                        R_z(-(abduct - rest))
#             twist     -35    35   about the thigh                            R_y(+twist)
#   knee      flex        0   140   hinge, along hinge_axes
#   ankle     dorsiflex -40    25   toes up (negative: pointing the foot)      R_x(-dorsiflex)
#             invert    -15    15                                              R_z(+invert)
#   foot      flex      -10    30   toes up                                    R_x(-flex)
#
#   root      lean      -15    90   whole-body forward lean (pelvis tilt), folded into the global
#                                   rotation R by `sample_params`            R_x(+lean)
#
# Composite rotations are applied right to left as listed in `_local_rotation`.

JOINT_LIMITS = {
    "spine": {"flex": (-15, 35), "side": (-15, 15), "twist": (-20, 20)},
    "neck": {"flex": (-30, 40), "side": (-20, 20), "twist": (-45, 45)},
    "head": {"flex": (-20, 25), "side": (-15, 15), "twist": (-30, 30)},
    "collar": {"elevate": (-10, 25), "protract": (-15, 15)},
    "shoulder": {"abduct": (0, 170), "flex": (-50, 170), "twist": (-60, 60)},
    "elbow": {"flex": (0, 100)},
    "wrist": {"flex": (-50, 50), "deviate": (-20, 25)},
    "hand": {"flex": (-10, 40)},
    "hip": {"flex": (-20, 125), "abduct": (-15, 45), "twist": (-35, 35)},
    "knee": {"flex": (0, 140)},
    "ankle": {"dorsiflex": (-40, 25), "invert": (-15, 15)},
    "foot": {"flex": (-10, 30)},
    "root": {"lean": (-15, 90)},
}

# Std (degrees) of the perturbation added to every archetype's angles before clipping to the limits.
POSE_NOISE = {
    "spine": {"flex": 3, "side": 2.5, "twist": 4},
    "neck": {"flex": 6, "side": 4, "twist": 12},
    "head": {"flex": 5, "side": 4, "twist": 8},
    "collar": {"elevate": 4, "protract": 4},
    "shoulder": {"abduct": 8, "flex": 8, "twist": 15},
    "elbow": {"flex": 8},
    "wrist": {"flex": 15, "deviate": 8},
    "hand": {"flex": 8},
    "hip": {"flex": 5, "abduct": 3, "twist": 8},
    "knee": {"flex": 5},
    "ankle": {"dorsiflex": 6, "invert": 4},
    "foot": {"flex": 5},
    "root": {"lean": 3},
}

# Joint -> (group, side). Side 'C' for midline joints; 'R' joints are mirrored from the left rule.
_JOINT_GROUP = {
    "spine1": ("spine", "C"), "spine2": ("spine", "C"), "spine3": ("spine", "C"),
    "neck": ("neck", "C"), "head": ("head", "C"),
    "L_collar": ("collar", "L"), "R_collar": ("collar", "R"),
    "L_shoulder": ("shoulder", "L"), "R_shoulder": ("shoulder", "R"),
    "L_elbow": ("elbow", "L"), "R_elbow": ("elbow", "R"),
    "L_wrist": ("wrist", "L"), "R_wrist": ("wrist", "R"),
    "L_hand": ("hand", "L"), "R_hand": ("hand", "R"),
    "L_hip": ("hip", "L"), "R_hip": ("hip", "R"),
    "L_knee": ("knee", "L"), "R_knee": ("knee", "R"),
    "L_ankle": ("ankle", "L"), "R_ankle": ("ankle", "R"),
    "L_foot": ("foot", "L"), "R_foot": ("foot", "R"),
    "pelvis": ("root", "C"),
}
_J = {name: i for i, name in enumerate(body.JOINT_NAMES)}


def _quat_axis(axis, deg: float) -> tuple:
    x, y, z = (float(c) for c in axis)
    n = math.sqrt(x * x + y * y + z * z)
    half = 0.5 * deg * _DEG
    k = math.sin(half) / n
    return (math.cos(half), k * x, k * y, k * z)


def _quat_mul(a: tuple, b: tuple) -> tuple:
    w1, x1, y1, z1 = a
    w2, x2, y2, z2 = b
    return (w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2, w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
            w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2, w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2)


def _quat_to_axis_angle(q: tuple) -> np.ndarray:
    w, x, y, z = q if q[0] >= 0 else tuple(-c for c in q)
    s = math.sqrt(x * x + y * y + z * z)
    k = 2.0 if s < 1e-12 else 2.0 * math.atan2(s, w) / s
    return np.array([k * x, k * y, k * z])


def _compose(*factors) -> np.ndarray:
    """Axis-angle ``(3,)`` of ``R_1 R_2 ... R_n`` for factors ``(axis, degrees)``."""
    q = (1.0, 0.0, 0.0, 0.0)
    for axis, deg in factors:
        q = _quat_mul(q, _quat_axis(axis, deg))
    return _quat_to_axis_angle(q)


class _Rig(NamedTuple):
    """Template-dependent axes used by the pose sampler (left side)."""

    elbow_axis: np.ndarray      # (3,) left elbow flexion axis
    hinge_axes: np.ndarray      # (24, 3)
    arm_dir: np.ndarray         # (3,) rest direction of the left upper arm
    forearm_side: np.ndarray    # (3,) left forearm side axis (wrist deviation)
    arm_rest_abduct: float      # degrees: rest abduction of the upper arm
    leg_rest_abduct: float      # degrees: rest abduction of the thigh


def _rig(template: body.BodyTemplate) -> _Rig:
    joints = np.asarray(template.joints, np.float64)
    hinge = np.asarray(template.hinge_axes, np.float64)
    upper = joints[_J["L_elbow"]] - joints[_J["L_shoulder"]]
    fore = joints[_J["L_wrist"]] - joints[_J["L_elbow"]]
    side = np.cross(fore, hinge[_J["L_elbow"]])
    thigh = joints[_J["L_knee"]] - joints[_J["L_hip"]]
    return _Rig(hinge[_J["L_elbow"]], hinge, upper / np.linalg.norm(upper),
                side / max(np.linalg.norm(side), 1e-12),
                math.degrees(math.atan2(abs(upper[0]), upper[1])),
                math.degrees(math.atan2(abs(thigh[0]), thigh[1])))


_X, _Y, _Z = np.eye(3)


def _local_rotation(group: str, a: dict, rig: _Rig) -> np.ndarray:
    """Axis-angle ``(3,)`` of a left-side / midline joint from its anatomical angles (degrees)."""
    if group in ("spine", "neck", "head"):
        return _compose((_X, a["flex"]), (_Z, a["side"]), (_Y, a["twist"]))
    if group == "collar":
        return _compose((_Z, -a["elevate"]), (_Y, a["protract"]))
    if group == "shoulder":
        return _compose((_X, -a["flex"]), (_Z, -(a["abduct"] - rig.arm_rest_abduct)),
                        (rig.arm_dir, a["twist"]))
    if group == "wrist":
        return _compose((rig.elbow_axis, a["flex"]), (rig.forearm_side, a["deviate"]))
    if group == "hand":
        return _compose((rig.elbow_axis, a["flex"]))
    if group == "hip":
        return _compose((_X, -a["flex"]), (_Z, -(a["abduct"] - rig.leg_rest_abduct)),
                        (_Y, a["twist"]))
    if group == "ankle":
        return _compose((_X, -a["dorsiflex"]), (_Z, a["invert"]))
    if group == "foot":
        return _compose((_X, -a["flex"]))
    if group == "root":
        return _compose((_X, a["lean"]))
    raise ValueError(group)


def _mirror(aa: np.ndarray) -> np.ndarray:
    """Axis-angle of the mirror image (x -> -x) of a rotation: ``(a_x, -a_y, -a_z)``."""
    return aa * np.array([1.0, -1.0, -1.0])


def _arm(rng, mode: str) -> dict:
    """Anatomical angles of one arm for an arm mode (before the per-joint noise).

    ``elbow`` is the hinge angle on top of the template's rest flexion (~45°); positive shoulder
    ``twist`` turns the forearm towards the body (internal rotation).
    """
    u = rng.uniform
    if mode == "down":       # relaxed, hands by the thighs
        return dict(abduct=u(3, 22), flex=u(-15, 20), twist=u(0, 35), elbow=u(0, 20))
    if mode == "swing":      # walking; the flexion is set by the stride
        return dict(abduct=u(3, 15), flex=0.0, twist=u(0, 30), elbow=u(0, 35))
    if mode == "front":      # hands in front of the body (holding, gesturing)
        return dict(abduct=u(5, 30), flex=u(10, 50), twist=u(0, 40), elbow=u(15, 70))
    if mode == "out":        # arms out to the side
        return dict(abduct=u(60, 105), flex=u(-10, 35), twist=u(-20, 20), elbow=u(0, 30))
    if mode == "overhead":
        return dict(abduct=u(125, 170), flex=u(-10, 35), twist=u(-20, 20), elbow=u(0, 40))
    if mode == "forward":    # reaching forwards
        return dict(abduct=u(0, 30), flex=u(60, 115), twist=u(-10, 30), elbow=u(0, 30))
    if mode == "up_front":   # reaching up and forwards
        return dict(abduct=u(10, 40), flex=u(115, 165), twist=u(-20, 20), elbow=u(0, 30))
    raise ValueError(mode)


def _archetype_angles(rng, archetype: str) -> dict:
    """Mean anatomical angles ``{(joint name, angle): degrees}`` of one draw of an archetype.

    Angles not set are 0. Right-side joints use the same (left-side) conventions. ``('pelvis',
    'lean')`` tilts the whole body forwards (it becomes part of the global rotation).
    """
    u = rng.uniform
    a = {}

    def legs_standing():
        for side in "LR":
            a[f"{side}_hip", "flex"] = u(-5, 10)
            a[f"{side}_hip", "abduct"] = u(-2, 10)
            a[f"{side}_hip", "twist"] = u(-10, 15)
            a[f"{side}_knee", "flex"] = u(0, 12)
        if rng.random() < 0.3:  # weight on one leg, the other bent
            side = "LR"[rng.integers(2)]
            a[f"{side}_hip", "flex"] = u(5, 25)
            a[f"{side}_knee", "flex"] = u(15, 45)
            a["spine1", "side"] = u(-6, 6)

    def set_arm(side, arm):
        a[f"{side}_shoulder", "abduct"] = arm["abduct"]
        a[f"{side}_shoulder", "flex"] = arm["flex"]
        a[f"{side}_shoulder", "twist"] = arm["twist"]
        a[f"{side}_elbow", "flex"] = arm["elbow"]

    def set_arms(modes):
        for side, mode in zip("LR", modes):
            set_arm(side, _arm(rng, mode))

    def pick_arms(choices, p_same=0.5):
        first = choices[rng.integers(len(choices))]
        second = first if rng.random() < p_same else choices[rng.integers(len(choices))]
        return (first, second) if rng.random() < 0.5 else (second, first)

    if archetype == "standing":
        legs_standing()
        set_arms(pick_arms(("down", "down", "front", "out"), p_same=0.6))
        a["neck", "twist"] = u(-25, 25)
    elif archetype == "walking":
        phase = u(0, 2 * math.pi)
        running = rng.random() < 0.3
        amp = u(25, 45) if running else u(12, 30)
        knee = u(50, 100) if running else u(25, 60)
        for side, sign in (("L", 1.0), ("R", -1.0)):
            hip = sign * amp * math.sin(phase)
            swing = max(0.0, sign * math.cos(phase))  # the leg moving forwards bends its knee
            a[f"{side}_hip", "flex"] = hip
            a[f"{side}_hip", "abduct"] = u(-2, 6)
            a[f"{side}_knee", "flex"] = u(3, 12) + knee * swing
            arm = _arm(rng, "swing")
            arm["flex"] = -u(0.6, 1.0) * hip                 # arms swing against the legs
            if running:
                arm["elbow"] = u(45, 90)
            set_arm(side, arm)
        a["pelvis", "lean"] = u(5, 15) if running else u(0, 5)
        a["spine2", "twist"] = -0.15 * amp * math.sin(phase)
    elif archetype == "reaching":
        legs_standing()
        raised = ("overhead", "forward", "out", "up_front")
        first = raised[rng.integers(len(raised))]
        r = rng.random()
        second = first if r < 0.4 else (("down", "front")[rng.integers(2)] if r < 0.8
                                        else raised[rng.integers(len(raised))])
        set_arms((first, second) if rng.random() < 0.5 else (second, first))
        a["spine2", "side"] = u(-8, 8)
        a["spine3", "flex"] = u(-10, 5)
        a["neck", "flex"] = u(-20, 5)
    elif archetype == "sitting":
        base_hip, base_knee = u(75, 100), u(70, 105)
        for side in "LR":
            a[f"{side}_hip", "flex"] = base_hip + u(-10, 10)
            a[f"{side}_hip", "abduct"] = u(-3, 15)
            a[f"{side}_hip", "twist"] = u(-10, 10)
            a[f"{side}_knee", "flex"] = base_knee + u(-15, 15)
            a[f"{side}_ankle", "dorsiflex"] = u(-10, 15)
        set_arms(pick_arms(("front", "front", "down", "out"), p_same=0.6))
        a["pelvis", "lean"] = u(-10, 10)
        a["spine1", "flex"] = u(-5, 15)
        a["spine2", "flex"] = u(-5, 10)
        a["neck", "twist"] = u(-25, 25)
    elif archetype == "crouching":
        base_hip, base_knee = u(95, 125), u(110, 140)
        lean = u(15, 40)
        for side in "LR":
            a[f"{side}_hip", "flex"] = base_hip + u(-8, 8)
            a[f"{side}_hip", "abduct"] = u(5, 25)
            a[f"{side}_hip", "twist"] = u(-20, 5)
            a[f"{side}_knee", "flex"] = base_knee + u(-8, 8)
            a[f"{side}_ankle", "dorsiflex"] = u(10, 25)
        arms = pick_arms(("front", "forward", "down"), p_same=0.6)
        for side, mode in zip("LR", arms):
            arm = _arm(rng, mode)
            arm["flex"] += 0.5 * lean                       # arms stay in front of the leaning trunk
            set_arm(side, arm)
        a["pelvis", "lean"] = lean
        for j in ("spine1", "spine2", "spine3"):
            a[j, "flex"] = u(0, 10)
        a["neck", "flex"] = u(-35, -10)
    elif archetype == "bending":
        trunk = 0.0
        for j in ("spine1", "spine2", "spine3"):
            a[j, "flex"] = u(5, 20)
            trunk += a[j, "flex"]
        hip = u(30, 80)
        a["pelvis", "lean"] = hip + u(-10, 5)             # legs stay about vertical
        for side in "LR":
            a[f"{side}_hip", "flex"] = hip + u(-5, 5)
            a[f"{side}_hip", "abduct"] = u(-2, 10)
            a[f"{side}_knee", "flex"] = u(0, 30)
        # Arms hang under gravity (shoulder flexion ≈ the trunk's forward bend) or reach down.
        for side in "LR":
            arm = _arm(rng, "down")
            arm["flex"] = (trunk + hip) * u(0.7, 1.05)
            arm["elbow"] = u(0, 30)
            set_arm(side, arm)
        a["neck", "flex"] = u(-35, -5)
        a["spine2", "twist"] = u(-15, 15)
    else:
        raise ValueError(f"unknown archetype {archetype!r}; expected one of {ARCHETYPES}")
    return a


def sample_pose(rng: np.random.Generator, template: body.BodyTemplate,
                archetype_weights=SyntheticConfig.archetype_weights, noise: float = 1.0,
                archetype: Optional[str] = None) -> np.ndarray:
    """Draws a natural pose: an archetype perturbed per joint, clipped to :data:`JOINT_LIMITS`.

    Args:
      rng: NumPy generator.
      template: the body (its hinge axes and rest arm direction set the joint axes).
      archetype_weights: mixture weights of :data:`ARCHETYPES`.
      noise: multiplier of the perturbation table :data:`POSE_NOISE`.
      archetype: force one archetype (the weights are then ignored, but still one draw is made).

    Returns:
      ``(24, 3)`` float32 axis-angles. The hinge joints (elbows, knees) are exactly
      ``angle * hinge_axes[j]`` with ``angle`` in ``[0, limit]`` radians. Entry 0 (which
      :func:`body.forward` ignores) holds the archetype's whole-body forward lean (a rotation about
      x, e.g. the pelvis tilt of a person bending over); :func:`sample_params` folds it into the
      global rotation ``R`` and sets it to zero.
    """
    rig = _rig(template)
    w = np.asarray(archetype_weights, np.float64)
    k = rng.choice(len(ARCHETYPES), p=w / w.sum())
    name = archetype if archetype is not None else ARCHETYPES[k]
    means = _archetype_angles(rng, name)
    pose = np.zeros((24, 3))
    for joint, (group, side) in _JOINT_GROUP.items():
        angles = {}
        limits = JOINT_LIMITS[group]
        eps = rng.standard_normal(len(limits))
        for e, (angle, (lo, hi)) in zip(eps, limits.items()):
            value = means.get((joint, angle), 0.0) + noise * POSE_NOISE[group][angle] * float(e)
            angles[angle] = min(max(value, lo), hi)
        j = _J[joint]
        if group in ("elbow", "knee"):
            pose[j] = angles["flex"] * _DEG * rig.hinge_axes[j]
            continue
        aa = _local_rotation(group, angles, rig)
        pose[j] = _mirror(aa) if side == "R" else aa
    return pose.astype(np.float32)


def hinge_angles(template: body.BodyTemplate, pose) -> np.ndarray:
    """Flexion angle of each hinge joint: the projection of its axis-angle on its flexion axis.

    Args:
      template: the body.
      pose: ``(..., 24, 3)`` axis-angles.

    Returns:
      ``(..., len(template.hinge_joints))`` radians, in ``template.hinge_joints`` order.
    """
    hinge = np.asarray(template.hinge_axes)[list(template.hinge_joints)]
    return np.einsum("...jc,jc->...j", np.asarray(pose)[..., list(template.hinge_joints), :], hinge)


# ----------------------------------------------------------------------------------------------
# Shape, rotation and camera


def _segment_scale_operator(template: body.BodyTemplate) -> np.ndarray:
    """``(24, 24)`` linear map from iid normals to smooth, symmetric, unit-variance log scales."""
    n = len(template.parents)
    adj = np.eye(n)
    for j, p in enumerate(template.parents):
        if p >= 0:
            adj[j, p] = adj[p, j] = 1.0
    smooth = adj / adj.sum(1, keepdims=True)
    mirror = np.eye(n)[np.asarray(template.joint_mirror)]
    op = smooth @ smooth @ (np.eye(n) + mirror) / math.sqrt(2.0)
    return op / np.sqrt((op ** 2).sum(1, keepdims=True))


def _sample_segment_scales(rng, template, cfg: SyntheticConfig) -> np.ndarray:
    op = _segment_scale_operator(template)
    n = op.shape[0]
    log_s = (cfg.scale_spread * (op @ rng.normal(size=n)) + cfg.global_scale_spread * rng.normal()
             + cfg.scale_asymmetry * rng.normal(size=n))
    return np.clip(np.exp(log_s), *cfg.scale_clip).astype(np.float32)


def _rotation_matrix(axis, deg: float) -> np.ndarray:
    c, s = math.cos(deg * _DEG), math.sin(deg * _DEG)
    x, y, z = axis
    k = np.array([[0, -z, y], [z, 0, -x], [-y, x, 0]], np.float64)
    return np.eye(3) + s * k + (1 - c) * (k @ k)


def _sample_rotation(rng, cfg: SyntheticConfig) -> np.ndarray:
    yaw = rng.uniform(*cfg.yaw_range)
    pitch, roll = rng.uniform(-cfg.tilt, cfg.tilt, size=2)
    r = _rotation_matrix(_X, pitch) @ _rotation_matrix(_Z, roll) @ _rotation_matrix(_Y, yaw)
    return r.astype(np.float32)


def _sample_unplaced(rng, template, cfg: SyntheticConfig) -> dict:
    """Pose, segment scales and rotation (scale 1, translation 0): the draws made before the fit."""
    pose = sample_pose(rng, template, cfg.archetype_weights, cfg.pose_noise)
    lean = pose[0].astype(np.float64)
    angle = float(np.linalg.norm(lean))
    lean_matrix = _rotation_matrix(lean / angle, angle / _DEG) if angle > 0 else np.eye(3)
    pose[0] = 0.0
    scales = _sample_segment_scales(rng, template, cfg)
    rotation = (_sample_rotation(rng, cfg).astype(np.float64) @ lean_matrix).astype(np.float32)
    return dict(pose=pose, segment_scales=scales, rotation=rotation, scale=np.float32(1.0),
                translation=np.zeros(2, np.float32))


def _place(rng, vertices: np.ndarray, cfg: SyntheticConfig) -> tuple[np.float32, np.ndarray]:
    """Weak-perspective ``(s, t)`` that fits camera-frame ``vertices (V, 3)`` in the frame.

    The larger side of the projected box takes a fraction ``cfg.fill`` of the image and the box is
    shifted at random but stays at least ``cfg.margin`` pixels inside (pixel centres 0..size-1).
    """
    size = cfg.image_size
    lo = vertices[:, :2].min(0).astype(np.float64)
    hi = vertices[:, :2].max(0).astype(np.float64)
    extent = np.maximum(hi - lo, 1e-6)
    room = size - 1 - 2 * cfg.margin
    s = rng.uniform(*cfg.fill) * room / extent.max()
    free = np.maximum(room - s * extent, 0.0) / 2          # slack on each side
    centre = (size - 1) / 2 + rng.uniform(-1, 1, size=2) * free * 0.98
    t = centre - s * (lo + hi) / 2
    return np.float32(s), t.astype(np.float32)


_CHUNK = 16
_forward = jax.jit(body.forward)


def _forward_chunked(template: body.BodyTemplate, params: dict) -> dict:
    """Batched :func:`body.forward` of stacked params (numpy dict), in fixed-size chunks.

    Always calling the same compiled program (batch of ``_CHUNK``, padded by repetition) makes each
    sample's result bitwise independent of which other samples share its batch.
    """
    n = params["scale"].shape[0]
    outs = []
    for lo in range(0, n, _CHUNK):
        idx = np.arange(lo, lo + _CHUNK)
        idx = np.where(idx < n, idx, lo)
        batch = body.BodyParams(**{k: jnp.asarray(v[idx]) for k, v in params.items()})
        out = _forward(template, batch)
        m = min(_CHUNK, n - lo)
        outs.append({"vertices": np.asarray(out.vertices)[:m], "joints": np.asarray(out.joints)[:m],
                     "keypoints": np.asarray(out.keypoints)[:m]})
    return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}


def _to_params(d: dict) -> body.BodyParams:
    return body.BodyParams(pose=np.asarray(d["pose"], np.float32),
                           segment_scales=np.asarray(d["segment_scales"], np.float32),
                           rotation=np.asarray(d["rotation"], np.float32),
                           scale=np.asarray(d["scale"], np.float32),
                           translation=np.asarray(d["translation"], np.float32))


def sample_params(rng: np.random.Generator, template: body.BodyTemplate,
                  cfg: SyntheticConfig = SyntheticConfig()) -> body.BodyParams:
    """Draws one person's parameters θ = [a, S, R, s, t] (NumPy float32, no batch dims).

    The pose comes from :func:`sample_pose`; segment scales are ``exp`` of smooth, symmetric normal
    noise; ``R = R_tilt · R_yaw · R_lean``: the pose's whole-body lean, then a yaw in ``cfg.yaw_range``
    about the vertical (y) axis, then a tilt of up to ``cfg.tilt`` degrees about x and z; ``s`` and
    ``t`` fit the projected bounding box of the posed vertices inside the frame.
    """
    d = _sample_unplaced(rng, template, cfg)
    out = _forward_chunked(template, {k: np.asarray(v)[None] for k, v in d.items()})
    d["scale"], d["translation"] = _place(rng, out["vertices"][0], cfg)
    return _to_params(d)


# ----------------------------------------------------------------------------------------------
# Rendering

# Parts on which each of the 24 joints lies (DensePose part ids), used by the keypoint visibility.
_TORSO, _HEAD = (1, 2), (23, 24)
JOINT_PARTS = {
    "pelvis": _TORSO + (7, 8, 9, 10), "L_hip": _TORSO + (8, 10), "R_hip": _TORSO + (7, 9),
    "spine1": _TORSO, "L_knee": (8, 10, 12, 14), "R_knee": (7, 9, 11, 13), "spine2": _TORSO,
    "L_ankle": (12, 14, 5), "R_ankle": (11, 13, 6), "spine3": _TORSO, "L_foot": (5,), "R_foot": (6,),
    "neck": _TORSO + _HEAD, "L_collar": _TORSO + (15, 17), "R_collar": _TORSO + (16, 18),
    "head": _HEAD, "L_shoulder": _TORSO + (15, 17), "R_shoulder": _TORSO + (16, 18),
    "L_elbow": (15, 17, 19, 21), "R_elbow": (16, 18, 20, 22), "L_wrist": (19, 21, 4),
    "R_wrist": (20, 22, 3), "L_hand": (4,), "R_hand": (3,),
}
# Largest depth (metres, template size) between a joint and the surface seen in front of it while the
# joint is still counted as visible: about the thickness of the body around the joint, measured on the
# template from many views, with a margin. A larger gap means another piece of the body is in between.
JOINT_DEPTH_RADIUS = {
    "pelvis": 0.20, "L_hip": 0.14, "R_hip": 0.14, "spine1": 0.20, "L_knee": 0.10, "R_knee": 0.10,
    "spine2": 0.18, "L_ankle": 0.09, "R_ankle": 0.09, "spine3": 0.17, "L_foot": 0.10,
    "R_foot": 0.10, "neck": 0.10, "L_collar": 0.12, "R_collar": 0.12, "head": 0.18,
    "L_shoulder": 0.11, "R_shoulder": 0.11, "L_elbow": 0.10, "R_elbow": 0.10, "L_wrist": 0.08,
    "R_wrist": 0.08, "L_hand": 0.08, "R_hand": 0.08,
}

# Clothing regions of the parts: 0 skin, 1 top, 2 bottom, 3 shoes; (sleeve / trouser choices per
# sample move the forearms and shins between regions).
_PART_REGION = np.array([0, 1, 1, 0, 0, 3, 3, 2, 2, 2, 2, 2, 2, 2, 2, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0])
_FOREARM_PARTS = np.array([19, 20, 21, 22])
_SHIN_PARTS = np.array([11, 12, 13, 14])


class _Static(NamedTuple):
    """NumPy copies of the template arrays used per sample."""

    faces: np.ndarray            # (F, 3) int64
    part_ids: np.ndarray         # (V,) int
    uv: np.ndarray               # (V, 2)
    part_colors: np.ndarray      # (25, 3)
    kp_joint: np.ndarray         # (K,) joint of a joint keypoint, -1 for surface keypoints
    kp_parts: np.ndarray         # (K, 25) bool: parts a keypoint lies on
    kp_radius: np.ndarray        # (K,) metres
    kp_vertex_ids: np.ndarray    # (K, M)
    kp_vertex_used: np.ndarray   # (K, M) bool
    edge_keys: np.ndarray        # sorted directed edge keys a * V + b


def _static(template: body.BodyTemplate) -> _Static:
    part_ids = np.asarray(template.part_ids).astype(np.int64)
    kp_jw = np.asarray(template.kp_joint_weights)
    kp_vw = np.asarray(template.kp_vertex_weights)
    k = kp_jw.shape[0]
    surface = np.abs(kp_vw).sum(1) > 0
    kp_joint = np.where(surface, -1, np.argmax(np.abs(kp_jw), axis=1))
    kp_parts = np.zeros((k, 25), bool)
    kp_radius = np.zeros(k)
    for i in range(k):
        if kp_joint[i] < 0:
            kp_parts[i, list(_HEAD)] = True
            # a surface keypoint on another part: allow the parts of its vertices
            kp_parts[i, np.unique(part_ids[np.asarray(template.kp_vertex_ids)[i][kp_vw[i] != 0]])] = True
        else:
            name = body.JOINT_NAMES[kp_joint[i]]
            kp_parts[i, list(JOINT_PARTS[name])] = True
            kp_radius[i] = JOINT_DEPTH_RADIUS[name]
    return _Static(
        faces=np.asarray(template.faces).astype(np.int64), part_ids=part_ids,
        uv=np.asarray(template.uv, np.float32), part_colors=render.part_colors(np.arange(25)),
        kp_joint=kp_joint, kp_parts=kp_parts, kp_radius=kp_radius,
        kp_vertex_ids=np.asarray(template.kp_vertex_ids).astype(np.int64),
        kp_vertex_used=kp_vw != 0,
        edge_keys=_edge_keys(np.asarray(template.faces).astype(np.int64), len(part_ids)))


def _smooth_noise(rng, size: int, cells: int, channels: int) -> np.ndarray:
    grid = rng.random((cells, cells, channels)).astype(np.float32)
    out = cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC)
    return out.reshape(size, size, channels)


def _random_color(rng, lo=0.05, hi=0.95) -> np.ndarray:
    return rng.uniform(lo, hi, size=3).astype(np.float32)


def make_background(rng: np.random.Generator, size: int, style: str = "mixed",
                    clutter: int = 4) -> np.ndarray:
    """A cheap random textured background ``(size, size, 3)`` float32 in [0, 1].

    Styles: ``'noise'`` (smooth colour noise), ``'gradient'``, ``'stripes'``, ``'checker'``,
    ``'flat'``, or ``'mixed'`` (one of them at random, sometimes blended with smooth noise); then up to
    ``clutter`` random rectangles / ellipses as distractors.
    """
    styles = ("noise", "gradient", "stripes", "checker", "flat")
    if style == "mixed":
        style = styles[rng.choice(len(styles), p=[0.35, 0.2, 0.2, 0.15, 0.1])]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    c0, c1 = _random_color(rng), _random_color(rng)
    if style == "noise":
        bg = _smooth_noise(rng, size, int(rng.integers(3, 12)), 3)
        bg = c0 + (bg - 0.5) * rng.uniform(0.4, 1.2)
    elif style in ("gradient", "stripes", "checker"):
        ang = rng.uniform(0, 2 * math.pi)
        proj = xx * math.cos(ang) + yy * math.sin(ang)
        if style == "gradient":
            m = (proj - proj.min()) / max(float(np.ptp(proj)), 1e-6)
        elif style == "stripes":
            m = 0.5 + 0.5 * np.sin(2 * math.pi * rng.uniform(2, 12) * proj + rng.uniform(0, 6.3))
            if rng.random() < 0.5:
                m = (m > 0.5).astype(np.float32)
        else:
            f = rng.uniform(3, 10)
            ortho = -xx * math.sin(ang) + yy * math.cos(ang)
            m = ((np.floor(f * proj) + np.floor(f * ortho)) % 2).astype(np.float32)
        bg = c0 + (c1 - c0) * m[..., None]
    elif style == "flat":
        bg = np.broadcast_to(c0, (size, size, 3)).copy()
    else:
        raise ValueError(f"unknown background style {style!r}")
    if rng.random() < 0.4:
        bg = bg + (_smooth_noise(rng, size, int(rng.integers(2, 6)), 3) - 0.5) * 0.3
    bg = np.ascontiguousarray(bg, dtype=np.float32)
    for _ in range(int(rng.integers(0, clutter + 1))):
        col = tuple(float(c) for c in _random_color(rng))
        cx, cy = (int(v) for v in rng.integers(0, size, 2))
        ax, ay = (int(v) for v in rng.integers(size // 16 + 1, size // 3, 2))
        if rng.random() < 0.5:
            cv2.rectangle(bg, (cx - ax, cy - ay), (cx + ax, cy + ay), col, -1)
        else:
            cv2.ellipse(bg, (cx, cy), (ax, ay), float(rng.uniform(0, 180)), 0, 360, col, -1)
    return np.clip(bg, 0.0, 1.0)


def _palette(rng, static: _Static, cfg: SyntheticConfig) -> np.ndarray:
    """Per-part base colours ``(25, 3)`` of one sample: clothing / skin mixed with part colours."""
    skin_tone = rng.uniform(0.0, 1.0)
    skin = (np.array([0.95, 0.78, 0.66]) * (1 - skin_tone) + np.array([0.38, 0.24, 0.16]) * skin_tone)
    regions = np.stack([skin, _random_color(rng), _random_color(rng), _random_color(rng, 0.02, 0.6)])
    part_region = _PART_REGION.copy()
    if rng.random() < 0.4:               # short sleeves
        part_region[_FOREARM_PARTS] = 0
    if rng.random() < 0.2:               # shorts
        part_region[_SHIN_PARTS] = 0
    base = regions[part_region]
    alpha = rng.uniform(*cfg.part_color_weight)
    colors = (1 - alpha) * base + alpha * static.part_colors
    colors = colors + rng.normal(0.0, cfg.color_jitter, size=colors.shape)
    return np.clip(colors, 0.0, 1.0).astype(np.float32)


class _Frame(NamedTuple):
    """Per-sample geometry and raster used by the annotation steps."""

    xy: np.ndarray          # (V, 2) float64 projected vertices, pixels
    z: np.ndarray           # (V,) float64 camera-frame depth, metres
    raster: render.Raster   # with face ids into the full face list
    pix: np.ndarray         # (n,) flat indices of the mask pixels
    vid: np.ndarray         # (n,) vertex of largest barycentric weight at each mask pixel
    part: np.ndarray        # (H*W,) part id per pixel (0 background)


def _edge_keys(faces: np.ndarray, num_vertices: int) -> np.ndarray:
    """Sorted ``a * V + b`` keys of the directed mesh edges (both directions)."""
    e = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    e = np.concatenate([e, e[:, ::-1]])
    return np.unique(e[:, 0] * num_vertices + e[:, 1])


def _near_surface(static: "_Static", v: np.ndarray, f: np.ndarray) -> np.ndarray:
    """Whether face ``f`` touches vertex ``v`` or one of its mesh neighbours (``(N,)`` each)."""
    fv = static.faces[f]                                           # (N, 3)
    keys = v[:, None] * len(static.part_ids) + fv
    pos = np.minimum(np.searchsorted(static.edge_keys, keys), len(static.edge_keys) - 1)
    return ((fv == v[:, None]) | (static.edge_keys[pos] == keys)).any(1)


def vertex_visible(static: "_Static", raster: render.Raster, xy: np.ndarray, z: np.ndarray,
                   ids: np.ndarray, tolerance: float, conservative: bool = True) -> np.ndarray:
    """Z-buffer visibility of the vertices ``ids``.

    A vertex is visible iff its projection lies inside the image and at each of the four pixel
    centres of the pixel cell containing it (``conservative``; otherwise at its nearest pixel centre
    only), the z-buffer shows the background, or a surface not nearer than ``z - tolerance``, or a
    triangle of the vertex's own neighbourhood (touching the vertex or one of its mesh neighbours;
    this admits its own sloping surface). The conservative test rejects vertices within a pixel of an
    occluding contour in front of them (used for the dense correspondences); the nearest-pixel test
    is used for the small facial keypoint features.

    Args:
      static: template arrays (:func:`_static`).
      raster: the z-buffer (``face`` ids into the full face list, ``depth``).
      xy: ``(V, 2)`` projected vertices, pixels; z: ``(V,)`` depths (same unit as ``tolerance``).
      ids: ``(N,)`` vertex ids to test.

    Returns:
      ``(N,)`` bool.
    """
    ids = np.asarray(ids, np.int64)
    h, w = raster.depth.shape
    p, zz = xy[ids], z[ids]
    ok = (p[:, 0] >= 0) & (p[:, 0] <= w - 1) & (p[:, 1] >= 0) & (p[:, 1] <= h - 1)
    x0 = np.floor(p[:, 0]).astype(np.int64)
    y0 = np.floor(p[:, 1]).astype(np.int64)
    if conservative:
        corners = [(np.clip(x0 + dx, 0, w - 1), np.clip(y0 + dy, 0, h - 1))
                   for dx, dy in ((0, 0), (1, 0), (0, 1), (1, 1))]
    else:
        corners = [(np.clip(np.rint(p[:, 0]).astype(np.int64), 0, w - 1),
                    np.clip(np.rint(p[:, 1]).astype(np.int64), 0, h - 1))]
    for cx, cy in corners:
        suspect = np.flatnonzero(ok & (zz > raster.depth[cy, cx] + tolerance))
        if len(suspect):
            f = raster.face[cy[suspect], cx[suspect]]
            ok[suspect] = _near_surface(static, ids[suspect], f)
    return ok


def keypoint_visibility(static: _Static, frame: _Frame, kp2d: np.ndarray, kp_depth: np.ndarray,
                        segment_scales: np.ndarray, size: int, tolerance: float) -> np.ndarray:
    """Occlusion-aware keypoint visibility ``(K,)`` float32.

    A keypoint is visible iff its projection is inside the image (pixel centres ``0..size-1``) and:

    * joint keypoints (shoulders, elbows, wrists, hips, knees, ankles, the 24 joints): the surface
      seen at its nearest pixel belongs to one of the parts the joint lies on (:data:`JOINT_PARTS`,
      e.g. the left knee needs a left upper- or lower-leg part) AND that surface is at most
      :data:`JOINT_DEPTH_RADIUS` (times the joint's segment scale) nearer than the joint, i.e. it is
      the joint's own skin and not another piece of the same part set seen through the body (the
      left hip seen from the right through the torso, an elbow behind its own forearm);
    * surface keypoints (nose, eyes, ears, defined by template vertices): a head part is seen within
      one pixel of it (3 × 3 neighbourhood: these points lie on the surface, often on the contour)
      AND at least half of the keypoint's vertices pass the (nearest-pixel) vertex z-buffer test of
      :func:`vertex_visible`, so the eyes and nose are hidden when the face is turned away or
      covered, and an ear when the head is seen from the other side.
    """
    h = w = size
    col = np.rint(kp2d[:, 0]).astype(np.int64)
    row = np.rint(kp2d[:, 1]).astype(np.int64)
    inside = (col >= 0) & (col < w) & (row >= 0) & (row < h) & np.all(np.isfinite(kp2d), axis=1)
    flat = np.clip(row, 0, h - 1) * w + np.clip(col, 0, w - 1)
    k = np.arange(len(flat))
    on_part = static.kp_parts[k, frame.part[flat]]
    near_part = np.zeros_like(on_part)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            nb = np.clip(row + dy, 0, h - 1) * w + np.clip(col + dx, 0, w - 1)
            near_part |= static.kp_parts[k, frame.part[nb]]
    surf_depth = frame.raster.depth.reshape(-1)[flat]
    joint = static.kp_joint >= 0
    radius = static.kp_radius * np.where(joint, segment_scales[np.maximum(static.kp_joint, 0)], 1.0)
    joint_ok = (kp_depth - surf_depth) <= radius
    ids = static.kp_vertex_ids
    vis = vertex_visible(static, frame.raster, frame.xy, frame.z, ids.reshape(-1), tolerance,
                         conservative=False).reshape(ids.shape)
    frac = (vis & static.kp_vertex_used).sum(1) / np.maximum(static.kp_vertex_used.sum(1), 1)
    surface_ok = frac >= 0.5
    return (inside & np.where(joint, on_part & joint_ok, near_part & surface_ok)).astype(np.float32)


class _Timer:
    """Accumulates ``[wall, process CPU]`` seconds per stage into a dict (no-op for ``None``)."""

    def __init__(self, timings: Optional[dict]):
        self.timings = timings
        if timings is not None:
            self.wall, self.cpu = time.perf_counter(), time.process_time()

    def lap(self, stage: str) -> None:
        if self.timings is not None:
            wall, cpu = time.perf_counter(), time.process_time()
            acc = self.timings.setdefault(stage, [0.0, 0.0])
            acc[0] += wall - self.wall
            acc[1] += cpu - self.cpu
            self.wall, self.cpu = wall, cpu


def _surface(static: _Static, xy: np.ndarray, z: np.ndarray, size: int) -> tuple[_Frame, dict]:
    """Z-buffer and the per-pixel surface: vertex, part and (U, V) of every mask pixel."""
    # Back faces of the closed mesh are never the nearest surface: culling halves the work.
    raster = render.rasterize(xy, z, static.faces, size, size, cull_back_faces=True)
    pix = np.flatnonzero(raster.face.reshape(-1) >= 0)
    f = raster.face.reshape(-1)[pix]
    bary = raster.bary.reshape(-1, 3)[pix]
    fv = static.faces[f]                                       # (n, 3)
    vid = fv[np.arange(len(pix)), np.argmax(bary, axis=1)]
    vpart = static.part_ids[fv]                                # (n, 3)
    part_px = static.part_ids[vid]
    # U, V interpolated over the corners of the chosen vertex's part only (charts are per part).
    same = bary * (vpart == part_px[:, None])
    same /= (same[:, 0] + same[:, 1] + same[:, 2])[:, None]
    uv = static.uv[fv]                                         # (n, 3, 2)
    uv_px = same[:, 0, None] * uv[:, 0] + same[:, 1, None] * uv[:, 1] + same[:, 2, None] * uv[:, 2]
    part = np.zeros(size * size, np.int64)
    part[pix] = part_px
    frame = _Frame(xy, z, raster, pix, vid, part)
    return frame, dict(f=f, bary=bary, fv=fv, vpart=vpart, part_px=part_px, uv_px=uv_px, uv=uv)


def _appearance(static: _Static, cfg: SyntheticConfig, frame: _Frame, surf: dict, v3: np.ndarray,
                rng: np.random.Generator) -> np.ndarray:
    """The RGB image ``(H, W, 3)`` uint8: textured, shaded body over a random background."""
    size = cfg.image_size
    fv, vpart, bary = surf["fv"], surf["vpart"], surf["bary"]
    colors = _palette(rng, static, cfg)                        # (25, 3)
    # Texture fixed on the surface: per-vertex noise and stripes along one chart axis of each part.
    freq = rng.uniform(4, 14)
    stripe_axis = int(rng.integers(2))
    phase = rng.uniform(0, 2 * math.pi, size=25).astype(np.float32)
    stripes = np.sin((2 * math.pi * freq) * surf["uv"][..., stripe_axis] + phase[vpart])
    vnoise = _hash_noise(fv, int(rng.integers(1 << 30)))
    tex = 1.0 + cfg.texture * ((0.6 * (rng.random() < 0.6)) * stripes + vnoise)   # (n, 3)
    w = bary * tex
    col = colors[vpart]                                        # (n, 3, 3) per corner
    albedo = w[:, 0, None] * col[:, 0] + w[:, 1, None] * col[:, 1] + w[:, 2, None] * col[:, 2]

    # Flat shading with the visible face's normal (faces are about a pixel at this resolution).
    a, b, c = v3[fv[:, 0]], v3[fv[:, 1]], v3[fv[:, 2]]
    e1, e2 = b - a, c - a
    nx = e1[:, 1] * e2[:, 2] - e1[:, 2] * e2[:, 1]
    ny = e1[:, 2] * e2[:, 0] - e1[:, 0] * e2[:, 2]
    nz = e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]
    light = np.array([rng.uniform(-1, 1), rng.uniform(-1, 0.6), -1.0])
    light /= np.linalg.norm(light)
    norm = np.maximum(np.sqrt(nx * nx + ny * ny + nz * nz), 1e-12)
    lambert = np.clip((nx * light[0] + ny * light[1] + nz * light[2]) / norm, 0.0, 1.0)
    ambient = rng.uniform(*cfg.ambient)
    light_color = (1.0 + rng.uniform(-0.1, 0.1, size=3)).astype(np.float32)
    gain = rng.uniform(0.85, 1.15)
    shade = (gain * (ambient + (1 - ambient) * lambert)).astype(np.float32)
    shaded = albedo * shade[:, None] * light_color

    image = make_background(rng, size, cfg.background, cfg.clutter).reshape(-1, 3)
    image[frame.pix] = shaded
    image = image.reshape(size, size, 3)
    if rng.random() < cfg.blur_prob:
        image = cv2.GaussianBlur(image, (3, 3), rng.uniform(0.4, 0.9))
    sigma = rng.uniform(*cfg.pixel_noise)
    image = image * 255.0 + 0.5
    image += rng.standard_normal(image.shape, dtype=np.float32) * np.float32(sigma)
    return np.clip(image, 0, 255).astype(np.uint8)


def _dense(static: _Static, cfg: SyntheticConfig, frame: _Frame, rng: np.random.Generator):
    """Dense correspondences: ``(dense_xy, dense_vertex, dense_mask)`` padded to ``max_points``."""
    n_target = min(int(rng.integers(cfg.num_points[0], cfg.num_points[1] + 1)), cfg.max_points)
    m = min(len(frame.pix), int(1.5 * n_target) + 16)
    chosen = np.zeros(0, np.int64)
    if m > 0:
        sel = rng.choice(len(frame.pix), size=m, replace=False)   # uniform over the mask
        cand = frame.vid[sel]
        cand = cand[vertex_visible(static, frame.raster, frame.xy, frame.z, cand,
                                   cfg.visibility_tolerance)]
        _, first = np.unique(cand, return_index=True)           # first occurrence of each vertex
        chosen = cand[np.sort(first)][:n_target]
    n = len(chosen)
    dense_xy = np.zeros((cfg.max_points, 2), np.float32)
    dense_vertex = np.zeros(cfg.max_points, np.int32)
    dense_mask = np.zeros(cfg.max_points, np.float32)
    dense_xy[:n] = frame.xy[chosen]
    dense_vertex[:n] = chosen
    dense_mask[:n] = 1.0
    return dense_xy, dense_vertex, dense_mask


def _render(static: _Static, cfg: SyntheticConfig, params: dict, out: dict,
            rng: np.random.Generator, timings: Optional[dict] = None) -> tuple[dict, dict]:
    timer = _Timer(timings)
    size = cfg.image_size
    v3 = np.asarray(out["vertices"], np.float64)
    s = float(params["scale"])
    t = np.asarray(params["translation"], np.float64)
    xy = v3[:, :2] * s + t
    z = v3[:, 2]
    frame, surf = _surface(static, xy, z, size)
    timer.lap("rasterise")

    image = _appearance(static, cfg, frame, surf, v3, rng)
    timer.lap("shading+background")

    dense_xy, dense_vertex, dense_mask = _dense(static, cfg, frame, rng)
    kp3 = np.asarray(out["keypoints"], np.float64)
    kp2d = kp3[:, :2] * s + t
    visible = keypoint_visibility(static, frame, kp2d, kp3[:, 2],
                                  np.asarray(params["segment_scales"]), size, cfg.visibility_tolerance)
    joints = np.asarray(out["joints"])
    sample = {
        "image": image,
        "dense_xy": dense_xy,
        "dense_vertex": dense_vertex,
        "dense_mask": dense_mask,
        "keypoints": kp2d.astype(np.float32),
        "keypoint_visible": visible,
        "has_gt": np.float32(1.0),
        "gt_pose": np.asarray(params["pose"], np.float32),
        "gt_segment_scales": np.asarray(params["segment_scales"], np.float32),
        "gt_rotation": _orthonormal(params["rotation"]),
        "gt_scale": np.float32(s),
        "gt_translation": np.asarray(t, np.float32),
        "gt_joints3d": (joints - joints[:1]).astype(np.float32),
    }
    iuv = np.zeros((size * size, 3), np.float32)
    iuv[frame.pix, 0] = surf["part_px"]
    iuv[frame.pix, 1:] = surf["uv_px"]
    extras = {
        "iuv": iuv.reshape(size, size, 3),
        "mask": frame.raster.face >= 0,
        "depth": frame.raster.depth,
        "face": frame.raster.face,
    }
    timer.lap("correspondences+keypoints")
    return sample, extras


def _hash_noise(ids: np.ndarray, seed: int) -> np.ndarray:
    """Cheap per-vertex pseudo-random values in [-1, 1] (a fixed function of the vertex id and seed)."""
    x = (ids.astype(np.uint64) * np.uint64(2654435761) + np.uint64(seed)) & np.uint64(0xFFFFFFFF)
    x ^= x >> np.uint64(15)
    x = (x * np.uint64(2246822519)) & np.uint64(0xFFFFFFFF)
    x ^= x >> np.uint64(13)
    return (x.astype(np.float64) / 0xFFFFFFFF) * 2.0 - 1.0


def _orthonormal(m) -> np.ndarray:
    """Gram–Schmidt of the columns (as :func:`body.forward` applies to the rotation)."""
    m = np.asarray(m, np.float64)
    c1 = m[:, 0] / np.linalg.norm(m[:, 0])
    c2 = m[:, 1] - c1 * (c1 @ m[:, 1])
    c2 /= np.linalg.norm(c2)
    c3 = m[:, 2] - c1 * (c1 @ m[:, 2]) - c2 * (c2 @ m[:, 2])
    c3 /= np.linalg.norm(c3)
    return np.stack([c1, c2, c3], axis=1).astype(np.float32)


def _params_dict(params: body.BodyParams) -> dict:
    return {k: np.asarray(getattr(params, k), np.float32)
            for k in ("pose", "segment_scales", "rotation", "scale", "translation")}


def render_sample(template: body.BodyTemplate, params: body.BodyParams,
                  cfg: SyntheticConfig = SyntheticConfig(), rng: Optional[np.random.Generator] = None,
                  output: Optional[dict] = None) -> tuple[dict, dict]:
    """Renders and annotates one person.

    Args:
      template: the body.
      params: one person's :class:`~bodyjax.body.BodyParams` (no batch dims), e.g. from
        :func:`sample_params`.
      cfg: the data-set options.
      rng: generator of the appearance and correspondence draws (default: a fixed seed).
      output: optional precomputed forward pass ``{'vertices', 'joints', 'keypoints'}`` (camera
        frame, metres) of ``params``; computed when ``None``.

    Returns:
      ``(sample, extras)``: ``sample`` follows :func:`bodyjax.data.sample.sample_spec` with
      ``(image_size, image_size)``, ``cfg.max_points`` and the template's keypoint count; ``extras``
      holds ``iuv (H, W, 3)`` float32 (part id 0..24, U, V in [0, 1]), ``mask (H, W)`` bool,
      ``depth (H, W)`` float32 (metres, +inf on the background) and ``face (H, W)`` int32 (-1 on the
      background).
    """
    template = body.with_keypoints(template, cfg.keypoint_set)
    rng = np.random.default_rng(0) if rng is None else rng
    p = _params_dict(params)
    if output is None:
        output = {k: v[0] for k, v in _forward_chunked(template, {k: v[None] for k, v in p.items()}).items()}
    return _render(_static(template), cfg, p, output, rng)


def generate(template: body.BodyTemplate, cfg: SyntheticConfig = SyntheticConfig(), seed: int = 0,
             num_samples: int = 1, start: int = 0, with_extras: bool = False,
             timings: Optional[dict] = None) -> Iterator:
    """Yields samples ``start .. start + num_samples - 1`` of the data set with this ``seed``.

    Sample ``i`` uses ``np.random.default_rng([seed, i])`` for all its draws (params then appearance,
    exactly as :func:`sample_params` followed by :func:`render_sample`), so it does not depend on
    ``start``, on the order or on how the indices are split among workers. The forward passes are
    batched (chunks of 16 through one jitted :func:`body.forward`); rasterisation is per sample.

    Args:
      template, cfg, seed: the data set.
      num_samples, start: the index range.
      with_extras: also yield the extras of :func:`render_sample`.
      timings: optional dict that accumulates ``[wall, process CPU]`` seconds per stage
        (``'params+forward'``, ``'rasterise'``, ``'shading+background'``,
        ``'correspondences+keypoints'``).

    Yields:
      sample dicts, or ``(sample, extras)`` pairs when ``with_extras``.
    """
    template = body.with_keypoints(template, cfg.keypoint_set)
    static = _static(template)
    block = 4 * _CHUNK
    for lo in range(start, start + num_samples, block):
        timer = _Timer(timings)
        idx = range(lo, min(lo + block, start + num_samples))
        rngs = [np.random.default_rng([seed, i]) for i in idx]
        drawn = [_sample_unplaced(r, template, cfg) for r in rngs]
        stacked = {k: np.stack([np.asarray(d[k]) for d in drawn]) for k in drawn[0]}
        out = _forward_chunked(template, stacked)
        timer.lap("params+forward")
        for j, (r, d) in enumerate(zip(rngs, drawn)):
            timer = _Timer(timings)
            d["scale"], d["translation"] = _place(r, out["vertices"][j], cfg)
            timer.lap("params+forward")
            one = {k: v[j] for k, v in out.items()}
            sample, extras = _render(static, cfg, d, one, r, timings)
            yield (sample, extras) if with_extras else sample


def make_split(template: body.BodyTemplate, cfg: SyntheticConfig = SyntheticConfig(), seed: int = 0,
               num_samples: int = 1) -> dict:
    """Samples ``0 .. num_samples - 1`` of ``seed`` stacked into one dict (leading axis = sample)."""
    return sample_lib.stack(list(generate(template, cfg, seed, num_samples)))
