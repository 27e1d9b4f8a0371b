"""Natural poses and body proportions: joint limits, pose archetypes, segment scales.

A pose is drawn from a mixture of archetypes (:data:`ARCHETYPES`: standing, walking, reaching /
arms raised, sitting, crouching, bending) with per-joint perturbations, always inside the joint-limit
table :data:`JOINT_LIMITS` (elbows and knees bend one way only, along ``template.hinge_axes``).
Segment scales are ``1 ± a few %``, smooth along the kinematic tree and nearly left/right symmetric.

A draw has two steps: the random numbers (:func:`draw_pose`, plain Python on a NumPy generator) and
the rotation algebra of a whole block of people in one call (:func:`poses_from_draws`, through
:mod:`bodyjax.rotations` in float64), so drawing many people costs little more than their random
numbers.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional

import numpy as np

from bodyjax import body
from bodyjax.data.synthetic import rotations64
from bodyjax.data.synthetic.config import ARCHETYPES, SyntheticConfig

_DEG = math.pi / 180.0

# ----------------------------------------------------------------------------------------------
# Joint limits
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
# Composite rotations are applied right to left as listed in `_factors`.

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


class Rig(NamedTuple):
    """Template-dependent axes used by the pose sampler (left side)."""

    elbow_axis: np.ndarray      # (3,) left elbow flexion axis, unit
    hinge_axes: np.ndarray      # (24, 3)
    arm_dir: np.ndarray         # (3,) rest direction of the left upper arm
    forearm_side: np.ndarray    # (3,) left forearm side axis (wrist deviation)
    arm_rest_abduct: float      # degrees: rest abduction of the upper arm
    leg_rest_abduct: float      # degrees: rest abduction of the thigh


def template_rig(template: body.BodyTemplate) -> Rig:
    """The :class:`Rig` of ``template``."""
    joints = np.asarray(template.joints, np.float64)
    hinge = np.asarray(template.hinge_axes, np.float64)
    upper = joints[_J["L_elbow"]] - joints[_J["L_shoulder"]]
    fore = joints[_J["L_wrist"]] - joints[_J["L_elbow"]]
    side = np.cross(fore, hinge[_J["L_elbow"]])
    thigh = joints[_J["L_knee"]] - joints[_J["L_hip"]]
    elbow = hinge[_J["L_elbow"]]
    return Rig(elbow / np.linalg.norm(elbow), hinge, upper / np.linalg.norm(upper),
                side / max(np.linalg.norm(side), 1e-12),
                math.degrees(math.atan2(abs(upper[0]), upper[1])),
                math.degrees(math.atan2(abs(thigh[0]), thigh[1])))


_X, _Y, _Z = np.eye(3)


_X, _Y, _Z = np.eye(3)
#: Joints whose rotation is a hinge (elbows, knees) and joints mirrored from the left-side rule.
_HINGE = np.array([_JOINT_GROUP[n][0] in ("elbow", "knee") for n in body.JOINT_NAMES])
_MIRRORED = np.array([_JOINT_GROUP[n][1] == "R" for n in body.JOINT_NAMES])
#: Most factors of a composite joint rotation (shorter products are padded with the identity).
_MAX_FACTORS = 3
#: ``(joint, index, group, [(angle, lo, hi, noise std), ...])`` in the order of the draws.
_ANGLE_TABLE = [(joint, _J[joint], group, [(angle, lo, hi, POSE_NOISE[group][angle])
                                           for angle, (lo, hi) in JOINT_LIMITS[group].items()])
                for joint, (group, _) in _JOINT_GROUP.items()]
_NUM_ANGLES = sum(len(limits) for *_, limits in _ANGLE_TABLE)


def _factors(group: str, a: dict, rig: Rig) -> list:
    """``[(unit axis, degrees), ...]`` of a left-side / midline joint from its anatomical angles
    (degrees): its rotation is the product of the factors' rotations, left to right."""
    if group in ("spine", "neck", "head"):
        return [(_X, a["flex"]), (_Z, a["side"]), (_Y, a["twist"])]
    if group == "collar":
        return [(_Z, -a["elevate"]), (_Y, a["protract"])]
    if group == "shoulder":
        return [(_X, -a["flex"]), (_Z, -(a["abduct"] - rig.arm_rest_abduct)), (rig.arm_dir, a["twist"])]
    if group == "wrist":
        return [(rig.elbow_axis, a["flex"]), (rig.forearm_side, a["deviate"])]
    if group == "hand":
        return [(rig.elbow_axis, a["flex"])]
    if group == "hip":
        return [(_X, -a["flex"]), (_Z, -(a["abduct"] - rig.leg_rest_abduct)), (_Y, a["twist"])]
    if group == "ankle":
        return [(_X, -a["dorsiflex"]), (_Z, a["invert"])]
    if group == "foot":
        return [(_X, -a["flex"])]
    if group == "root":
        return [(_X, a["lean"])]
    raise ValueError(group)


def _mirror(aa: np.ndarray) -> np.ndarray:
    """Axis-angle ``(..., 3)`` of the mirror image (x -> -x) of a rotation: ``(a_x, -a_y, -a_z)``."""
    return aa * np.array([1.0, -1.0, -1.0])


# ----------------------------------------------------------------------------------------------
# Archetypes


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


# ----------------------------------------------------------------------------------------------
# The pose sampler


class PoseDraw(NamedTuple):
    """The random numbers of one pose, before the rotation algebra.

    Attributes:
      factors: ``(24, 3, 3)`` float64 axis-angle factors (radians) of each composite joint; its
        rotation is their product, left to right (unused factors are zero, the identity).
      hinge: ``(24, 3)`` float64 axis-angles of the hinge joints (zero elsewhere).
    """

    factors: np.ndarray
    hinge: np.ndarray


def draw_pose(rng: np.random.Generator, rig: Rig, archetype_weights, noise: float,
               archetype: Optional[str] = None) -> PoseDraw:
    """The random part of :func:`sample_pose`: all of its generator draws, in order (``rig`` from
    :func:`template_rig`)."""
    w = np.asarray(archetype_weights, np.float64)
    k = rng.choice(len(ARCHETYPES), p=w / w.sum())
    name = archetype if archetype is not None else ARCHETYPES[k]
    means = _archetype_angles(rng, name)
    factors = np.zeros((24, _MAX_FACTORS, 3))
    hinge = np.zeros((24, 3))
    eps = rng.standard_normal(_NUM_ANGLES).tolist()   # one perturbation per angle, table order
    e = 0
    for joint, j, group, limits in _ANGLE_TABLE:
        angles = {}
        for angle, lo, hi, std in limits:
            value = means.get((joint, angle), 0.0) + noise * std * eps[e]
            angles[angle] = min(max(value, lo), hi)
            e += 1
        if _HINGE[j]:
            hinge[j] = angles["flex"] * _DEG * rig.hinge_axes[j]
            continue
        for f, (axis, deg) in enumerate(_factors(group, angles, rig)):
            factors[j, f] = axis * (deg * _DEG)
    return PoseDraw(factors, hinge)


def poses_from_draws(factors: np.ndarray, hinge: np.ndarray) -> np.ndarray:
    """``(n, 24, 3)`` float32 poses of stacked :class:`PoseDraw` fields ``(n, 24, 3, 3)``, ``(n, 24, 3)``."""
    composed = rotations64.compose(factors)
    composed = np.where(_MIRRORED[:, None], _mirror(composed), composed)
    return np.where(_HINGE[:, None], hinge, composed).astype(np.float32)


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
      x, e.g. the pelvis tilt of a person bending over);
      :func:`~bodyjax.data.synthetic.scene.sample_params` folds it into the global rotation ``R``
      and sets it to zero.
    """
    draw = draw_pose(rng, template_rig(template), archetype_weights, noise, archetype)
    return poses_from_draws(draw.factors[None], draw.hinge[None])[0]


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
# Segment scales

def segment_scale_operator(template: body.BodyTemplate) -> np.ndarray:
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


def sample_segment_scales(rng: np.random.Generator, template: body.BodyTemplate,
                          cfg: SyntheticConfig = SyntheticConfig()) -> np.ndarray:
    """Draws segment scales ``(24,)`` float32: ``exp`` of smooth, symmetric normal noise (std
    ``cfg.scale_spread``) plus a shared body size (``cfg.global_scale_spread``) and a small
    asymmetric part (``cfg.scale_asymmetry``), clipped to ``cfg.scale_clip``."""
    return draw_segment_scales(rng, segment_scale_operator(template), cfg)


def draw_segment_scales(rng: np.random.Generator, op: np.ndarray, cfg: SyntheticConfig) -> np.ndarray:
    """:func:`sample_segment_scales` with the operator ``op (24, 24)`` of the template."""
    n = op.shape[0]
    log_s = (cfg.scale_spread * (op @ rng.normal(size=n)) + cfg.global_scale_spread * rng.normal()
             + cfg.scale_asymmetry * rng.normal(size=n))
    return np.clip(np.exp(log_s), *cfg.scale_clip).astype(np.float32)
