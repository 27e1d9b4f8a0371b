"""Keypoint-set metadata shared by the lifter, the registration and the data code.

Two keypoint sets are defined (orders as in the project conventions):

``'coco17'``
    nose, left_eye, right_eye, left_ear, right_ear, left_shoulder, right_shoulder, left_elbow,
    right_elbow, left_wrist, right_wrist, left_hip, right_hip, left_knee, right_knee, left_ankle,
    right_ankle.

    * root: the hip midpoint (mean of keypoints 11 and 12).
    * trunk: from the shoulder midpoint (5, 6) to the hip midpoint (11, 12).
    * bones (``parent -> child``; the graph is NOT a tree, the nose has two "parents"):

      ======================  ===========================================================
      arms                    shoulder -> elbow (5->7, 6->8), elbow -> wrist (7->9, 8->10)
      legs                    hip -> knee (11->13, 12->14), knee -> ankle (13->15, 14->16)
      torso sides             hip -> shoulder (11->5, 12->6)
      torso widths            left -> right shoulder (5->6), left -> right hip (11->12)
      neck (nose to the       shoulder -> nose (5->0, 6->0); the "nose to shoulder midpoint"
      shoulder midpoint)      segment is modelled as one bone from each shoulder to the nose
      face                    nose -> eye (0->1, 0->2), eye -> ear (1->3, 2->4)
      ======================  ===========================================================

      Every bone except the two widths has a left/right mirror partner (``symmetric_bones``).

``'joints24'``
    The 24 body joints in SMPL order. Bones are ``(PARENTS[j], j)`` for ``j = 1..23`` (bone ``e``
    ends at joint ``e + 1``), the root is the pelvis (joint 0) and the trunk goes from the shoulder
    midpoint (16, 17) to the hip midpoint (1, 2), the same anatomical definition as for ``coco17``.

All index data are plain tuples so that a :class:`KeypointSet` is hashable and can be a static
argument of ``jax.jit``. The small geometric helpers at the end (bone lengths, trunk length, bone
ratios, root point) take arbitrary leading batch dimensions and are safe at zero (finite gradients).
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Tuple, Union

import jax.numpy as jnp

from bodyjax.linalg import safe_norm

#: Floor under the square root of bone lengths (they divide: ratios, cosines of the priors).
LENGTH_EPS = 1e-12

Array = jnp.ndarray
#: A keypoint set, its name, or None (the set is then found from the keypoint count).
KeypointSetLike = Optional[Union[str, "KeypointSet"]]

COCO17_NAMES: Tuple[str, ...] = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee",
    "right_knee", "left_ankle", "right_ankle",
)

JOINTS24_NAMES: Tuple[str, ...] = (
    "pelvis", "L_hip", "R_hip", "spine1", "L_knee", "R_knee", "spine2", "L_ankle", "R_ankle",
    "spine3", "L_foot", "R_foot", "neck", "L_collar", "R_collar", "head", "L_shoulder",
    "R_shoulder", "L_elbow", "R_elbow", "L_wrist", "R_wrist", "L_hand", "R_hand",
)

#: SMPL kinematic tree of the 24 joints (same as ``bodyjax.body``'s PARENTS).
JOINTS24_PARENTS: Tuple[int, ...] = (
    -1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21)

KEYPOINT_SET_NAMES: Tuple[str, ...] = ("coco17", "joints24")


@dataclasses.dataclass(frozen=True)
class KeypointSet:
    """Static description of a keypoint set.

    Attributes:
      name: ``'coco17'`` or ``'joints24'``.
      names: ``(N,)`` keypoint names in order.
      bones: ``(E,)`` pairs ``(parent, child)`` of keypoint indices.
      symmetric_bones: pairs ``(i, j)`` of BONE indices (into ``bones``), ``i`` the left bone and
        ``j`` its right mirror.
      trunk: two groups of keypoint indices ``(upper, lower)``; the trunk length is the distance
        between the mean of the ``upper`` keypoints and the mean of the ``lower`` keypoints.
      flip_permutation: ``(N,)`` the keypoint index that keypoint ``i`` becomes after a horizontal
        (left/right) image flip: ``flipped = points[..., flip_permutation, :]`` (with x negated).
      root: keypoint indices whose mean is the root (body centre used for root-centring).
    """

    name: str
    names: Tuple[str, ...]
    bones: Tuple[Tuple[int, int], ...]
    symmetric_bones: Tuple[Tuple[int, int], ...]
    trunk: Tuple[Tuple[int, ...], Tuple[int, ...]]
    flip_permutation: Tuple[int, ...]
    root: Tuple[int, ...]

    @property
    def num_keypoints(self) -> int:
        """N, the number of keypoints."""
        return len(self.names)

    @property
    def num_bones(self) -> int:
        """E, the number of bones."""
        return len(self.bones)

    @property
    def bone_parents(self) -> Tuple[int, ...]:
        """``(E,)`` parent keypoint of each bone."""
        return tuple(p for p, _ in self.bones)

    @property
    def bone_children(self) -> Tuple[int, ...]:
        """``(E,)`` child keypoint of each bone."""
        return tuple(c for _, c in self.bones)


def _coco17() -> KeypointSet:
    bones = (
        (5, 7), (6, 8),      # 0, 1   upper arms
        (7, 9), (8, 10),     # 2, 3   forearms
        (11, 13), (12, 14),  # 4, 5   thighs
        (13, 15), (14, 16),  # 6, 7   shins
        (11, 5), (12, 6),    # 8, 9   torso sides (hip -> shoulder)
        (5, 6),              # 10     shoulder width
        (11, 12),            # 11     hip width
        (5, 0), (6, 0),      # 12, 13 neck (shoulder -> nose)
        (0, 1), (0, 2),      # 14, 15 nose -> eyes
        (1, 3), (2, 4),      # 16, 17 eyes -> ears
    )
    symmetric = ((0, 1), (2, 3), (4, 5), (6, 7), (8, 9), (12, 13), (14, 15), (16, 17))
    flip = (0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15)
    return KeypointSet(
        name="coco17", names=COCO17_NAMES, bones=bones, symmetric_bones=symmetric,
        trunk=((5, 6), (11, 12)), flip_permutation=flip, root=(11, 12))


def _joints24() -> KeypointSet:
    bones = tuple((JOINTS24_PARENTS[j], j) for j in range(1, 24))
    # Left/right joint pairs (left index first); the bone ending at joint j has index j - 1.
    lr_joints = ((1, 2), (4, 5), (7, 8), (10, 11), (13, 14), (16, 17), (18, 19), (20, 21), (22, 23))
    symmetric = tuple((l - 1, r - 1) for l, r in lr_joints)
    flip = list(range(24))
    for l, r in lr_joints:
        flip[l], flip[r] = r, l
    return KeypointSet(
        name="joints24", names=JOINTS24_NAMES, bones=bones, symmetric_bones=symmetric,
        trunk=((16, 17), (1, 2)), flip_permutation=tuple(flip), root=(0,))


_SETS = {"coco17": _coco17(), "joints24": _joints24()}

COCO17: KeypointSet = _SETS["coco17"]
JOINTS24: KeypointSet = _SETS["joints24"]


def get_keypoint_set(name: Union[str, KeypointSet]) -> KeypointSet:
    """Returns the :class:`KeypointSet` called ``name`` (``'coco17'`` or ``'joints24'``).

    A :class:`KeypointSet` passed in is returned unchanged. Raises ``KeyError`` for unknown names.
    """
    if isinstance(name, KeypointSet):
        return name
    try:
        return _SETS[name]
    except KeyError:
        raise KeyError(f"unknown keypoint set {name!r}; known: {KEYPOINT_SET_NAMES}") from None


def keypoint_set_for(num_keypoints: int) -> KeypointSet:
    """The keypoint set with ``num_keypoints`` keypoints (17 -> coco17, 24 -> joints24)."""
    for ks in _SETS.values():
        if ks.num_keypoints == num_keypoints:
            return ks
    raise ValueError(f"no keypoint set has {num_keypoints} keypoints")


# ---------------------------------------------------------------------------------------------
# Small geometric helpers (pure jnp, arbitrary leading dims, 2D or 3D points).


def bone_vectors(points: Array, keypoint_set: KeypointSet) -> Array:
    """``(..., N, D) -> (..., E, D)``: child minus parent for every bone."""
    ks = get_keypoint_set(keypoint_set)
    return (points[..., jnp.asarray(ks.bone_children), :]
            - points[..., jnp.asarray(ks.bone_parents), :])


def bone_lengths(points: Array, keypoint_set: KeypointSet, eps: float = LENGTH_EPS) -> Array:
    """``(..., N, D) -> (..., E)`` bone lengths (safe norm, see :func:`safe_norm`)."""
    return safe_norm(bone_vectors(points, keypoint_set), eps=eps)


def bone_visibility(visibility: Array, keypoint_set: KeypointSet) -> Array:
    """``(..., N) -> (..., E)``: a bone is visible when both its end keypoints are (product)."""
    ks = get_keypoint_set(keypoint_set)
    v = jnp.asarray(visibility)
    return v[..., jnp.asarray(ks.bone_children)] * v[..., jnp.asarray(ks.bone_parents)]


def trunk_vector(points: Array, keypoint_set: KeypointSet) -> Array:
    """``(..., N, D) -> (..., D)``: upper trunk midpoint minus lower trunk midpoint."""
    ks = get_keypoint_set(keypoint_set)
    upper, lower = ks.trunk
    return (jnp.mean(points[..., jnp.asarray(upper), :], axis=-2)
            - jnp.mean(points[..., jnp.asarray(lower), :], axis=-2))


def trunk_length(points: Array, keypoint_set: KeypointSet, eps: float = LENGTH_EPS) -> Array:
    """``(..., N, D) -> (...)``: distance between the two trunk midpoints (safe norm)."""
    return safe_norm(trunk_vector(points, keypoint_set), eps=eps)


def trunk_visibility(visibility: Array, keypoint_set: KeypointSet) -> Array:
    """``(..., N) -> (...)``: 1 when every trunk keypoint is visible (product of visibilities)."""
    ks = get_keypoint_set(keypoint_set)
    idx = jnp.asarray(ks.trunk[0] + ks.trunk[1])
    return jnp.prod(jnp.asarray(visibility)[..., idx], axis=-1)


def bone_ratios(points: Array, keypoint_set: KeypointSet) -> Array:
    """``(..., N, D) -> (..., E)``: bone length divided by trunk length, ``l_e / l_trunk``.

    Used for the average skeleton's ratios of eq. 3, e.g. ``bone_ratios(rest_keypoints, ks)``
    computed from the body template's rest keypoints.
    """
    return bone_lengths(points, keypoint_set) / trunk_length(points, keypoint_set)[..., None]


def root_point(points: Array, keypoint_set: KeypointSet,
               visibility: Optional[Array] = None) -> Array:
    """``(..., N, D) -> (..., D)``: the root (mean of the root keypoints).

    With ``visibility`` ``(..., N)`` the mean is over the VISIBLE root keypoints; when none of them
    is visible the root falls back to the mean of all visible keypoints, and to the origin when no
    keypoint is visible at all.
    """
    ks = get_keypoint_set(keypoint_set)
    root_idx = jnp.asarray(ks.root)
    if visibility is None:
        return jnp.mean(points[..., root_idx, :], axis=-2)
    vis = jnp.asarray(visibility, points.dtype)
    w_root = jnp.zeros_like(vis).at[..., root_idx].set(vis[..., root_idx])
    has_root = jnp.sum(w_root, axis=-1, keepdims=True) > 0
    w = jnp.where(has_root, w_root, vis)
    total = jnp.sum(w, axis=-1, keepdims=True)
    w = w / jnp.maximum(total, 1e-12)
    return jnp.sum(w[..., None] * points, axis=-2)


def resolve(keypoint_set, num_keypoints: int) -> KeypointSet:
    """The :class:`KeypointSet` named (or given) by ``keypoint_set``, or the one with ``num_keypoints``
    keypoints when it is ``None``."""
    if keypoint_set is None:
        return keypoint_set_for(num_keypoints)
    return get_keypoint_set(keypoint_set)


def _length(x: Array) -> Array:
    return safe_norm(x, eps=LENGTH_EPS)


# ---------------------------------------------------------------------------------------------
# Anatomical directions: triple products that change sign under a mirror (the lifter's priors)


# (hip, knee, ankle) of the left and the right leg, by keypoint name, per keypoint set.
KNEE_NAMES = {
    "coco17": (("left_hip", "left_knee", "left_ankle"), ("right_hip", "right_knee", "right_ankle")),
    "joints24": (("L_hip", "L_knee", "L_ankle"), ("R_hip", "R_knee", "R_ankle")),
}


def knee_direction(points3d: Array, keypoint_set: KeypointSetLike = None) -> Array:
    """Signed, scale-free knee bend ``((k - h) x (a - k)) . (h_L - h_R) / (|k - h| |a - k| |h_L - h_R|)``.

    ``h, k, a`` are one leg's hip, knee and ankle and ``h_L - h_R`` the hip line (towards the body's
    left). A knee bends the shin backwards about an axis close to the hip line, so the value is
    ``sin(bend) * cos(axis, hip line)`` and POSITIVE for a real bent knee in any orientation (it is
    a triple product, invariant under rotations), ~0 for a straight leg. A mirror image (e.g. the
    depth flip ``z -> -z``) negates it.

    Args:
      points3d: ``(..., N, 3)``.
      keypoint_set: name or :class:`KeypointSet`; ``None`` infers it from N.
    Returns:
      ``(..., 2)`` for the (left, right) knee.
    """
    ks = resolve(keypoint_set, points3d.shape[-2])
    idx = [[ks.names.index(n) for n in leg] for leg in KNEE_NAMES[ks.name]]
    hip, knee, ankle = (jnp.asarray([leg[i] for leg in idx]) for i in range(3))
    thigh = points3d[..., knee, :] - points3d[..., hip, :]
    shin = points3d[..., ankle, :] - points3d[..., knee, :]
    axis = points3d[..., idx[0][0], :] - points3d[..., idx[1][0], :]
    triple = jnp.sum(jnp.cross(thigh, shin) * axis[..., None, :], axis=-1)
    norms = (_length(thigh) * _length(shin)
             * _length(axis)[..., None])
    return triple / norms


# (nose, left ear, right ear, left hip, right hip, left shoulder, right shoulder), per keypoint set.
FACE_NAMES = {
    "coco17": ("nose", "left_ear", "right_ear", "left_hip", "right_hip", "left_shoulder", "right_shoulder"),
}


def has_face(keypoint_set: KeypointSetLike) -> bool:
    """Whether :func:`face_direction` is defined for ``keypoint_set`` (it needs a nose and ears)."""
    return get_keypoint_set(keypoint_set).name in FACE_NAMES


def face_direction(points3d: Array, keypoint_set: KeypointSetLike = None) -> Array:
    """Signed, scale-free facing ``cos(nose - ear, forward)`` for the left and the right ear.

    ``forward = (h_L - h_R) x (s_mid - h_mid)`` is the trunk's front (hip line crossed with the
    hips-to-shoulders direction; in the camera frame, x right, y down, a person facing the camera
    has ``forward`` along ``-z``). The nose lies in front of the ears for any head turn the neck
    allows (|yaw| < 90 degrees from the trunk), so the value is POSITIVE for a real pose in any
    orientation. ``forward`` is a cross product (a pseudo-vector), so a mirror image (e.g. the depth
    flip ``z -> -z``) negates the value, like :func:`knee_direction`.

    Args:
      points3d: ``(..., N, 3)``.
      keypoint_set: name or :class:`KeypointSet` with a nose and ears (``coco17``); ``None`` infers
        it from N.
    Returns:
      ``(..., 2)`` for the (left, right) ear.
    Raises:
      ValueError: if the keypoint set has no face keypoints (e.g. ``joints24``).
    """
    ks = resolve(keypoint_set, points3d.shape[-2])
    if ks.name not in FACE_NAMES:
        raise ValueError(f"face_direction needs a nose and ears; keypoint set {ks.name!r} has none")
    nose, ear_l, ear_r, hip_l, hip_r, sh_l, sh_r = (ks.names.index(n) for n in FACE_NAMES[ks.name])
    p = points3d
    up = 0.5 * (p[..., sh_l, :] + p[..., sh_r, :]) - 0.5 * (p[..., hip_l, :] + p[..., hip_r, :])
    hip_line = p[..., hip_l, :] - p[..., hip_r, :]
    # Cross product of unit vectors: its norm does not shrink with the squared body size.
    forward = jnp.cross(hip_line / _length(hip_line)[..., None],
                        up / _length(up)[..., None])
    face = p[..., nose, None, :] - p[..., jnp.asarray([ear_l, ear_r]), :]
    cos = jnp.sum(face * forward[..., None, :], axis=-1)
    return cos / (_length(face) * _length(forward)[..., None])
