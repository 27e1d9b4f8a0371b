"""An SMPL model as the deform-and-learn body: :func:`to_body` and :func:`body_from_config`.

The paper's body *is* SMPL's mean shape, skeleton and skinning weights with segment scales
("Optionally, pose blendshapes can be incorporated"): :func:`to_body` turns a loaded
:class:`~bodyjax.smpl.model.SMPLModel` into the :class:`~bodyjax.body.BodyTemplate` that the
registration, the lifter, the regressor, the metrics and the pictures use unchanged — rest mesh at
the mean shape (or a given β), joints from ``J_regressor``, skinning weights, the kinematic tree,
faces, a left/right symmetry map found from the geometry, hinge axes, COCO-17 keypoints (joints
plus face vertices), DensePose parts and charts (from ``UV_Processed.mat``) and the optional pose
blend shapes.
"""
from __future__ import annotations

import json
import os
import warnings
from typing import Mapping

import jax.numpy as jnp
import numpy as np

from bodyjax import body
from bodyjax.formats import smpl_file
from bodyjax.formats.smpl_file import load_densepose_iuv
from bodyjax.smpl.model import SMPLModel, load_smpl

Array = jnp.ndarray


# ---------------------------------------------------------------------------------------------
# The deform-and-learn body
#
# SMPL's own frame is y up, the body facing +z, its left side at +x. The project's camera frame is
# x right, y down, z away from the camera, the body facing the camera (−z) with its left side at +x
# (it stands facing the viewer, so its left appears on the image's right). The rotation of 180°
# about x, FRAME = diag(1, −1, −1), maps one onto the other; it is its own inverse and has det +1,
# so axis-angles map as a ↦ FRAME a and triangles keep their orientation.

#: SMPL frame → camera frame (and back): ``p_camera = FRAME @ p_smpl``.
FRAME = np.diag([1.0, -1.0, -1.0])
_FLIP = np.array([1.0, -1.0, -1.0])

#: Vertex count of the SMPL (and SMPL-H) topology.
SMPL_NUM_VERTICES = 6890
#: SMPL vertex ids of the COCO-17 face keypoints: the ids that the ``smplx`` package lists for the
#: SMPL / SMPL-H topology (``smplx.vertex_ids.vertex_ids['smplh']``: nose, leye, reye, lear, rear).
SMPL_FACE_VERTICES = {"nose": 332, "left_eye": 2800, "right_eye": 6260, "left_ear": 583,
                      "right_ear": 4071}

#: The COCO-17 keypoints; the first five (the face) are surface vertices, the others joints.
COCO17_NAMES = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee",
    "right_knee", "left_ankle", "right_ankle",
)
_FACE_NAMES = COCO17_NAMES[:5]
_J = {name: j for j, name in enumerate(body.JOINT_NAMES)}
#: The joint of each COCO-17 body keypoint.
COCO17_JOINTS = {
    "left_shoulder": _J["L_shoulder"], "right_shoulder": _J["R_shoulder"], "left_elbow": _J["L_elbow"],
    "right_elbow": _J["R_elbow"], "left_wrist": _J["L_wrist"], "right_wrist": _J["R_wrist"],
    "left_hip": _J["L_hip"], "right_hip": _J["R_hip"], "left_knee": _J["L_knee"],
    "right_knee": _J["R_knee"], "left_ankle": _J["L_ankle"], "right_ankle": _J["R_ankle"],
}

#: DensePose part of each joint's segment, used when no UV table is given: ``(front, back)`` parts
#: split by the side of the segment's bone axis a vertex lies on, one part, or ``'head'`` (23 on
#: the body's right, x < 0, 24 on its left). DensePose's parts: 1/2 torso back/front, 3/4 right/left
#: hand, 5/6 left/right foot, 7/9 right thigh back/front, 8/10 left thigh, 11/13 right lower leg
#: back/front, 12/14 left lower leg, 15/17 left upper arm back/front, 16/18 right upper arm, 19/21
#: left forearm back/front, 20/22 right forearm, 23/24 head right/left.
SEGMENT_PARTS = {
    0: (2, 1), 3: (2, 1), 6: (2, 1), 9: (2, 1), 13: (2, 1), 14: (2, 1),
    1: (10, 8), 2: (9, 7), 4: (14, 12), 5: (13, 11),
    16: (17, 15), 17: (18, 16), 18: (21, 19), 19: (22, 20),
    7: (5,), 10: (5,), 8: (6,), 11: (6,), 20: (4,), 22: (4,), 21: (3,), 23: (3,),
    12: "head", 15: "head",
}
# Bone axis (from joint, to joint) splitting the front and back of a segment's part.
_SPLIT_AXIS = {0: (0, 12), 3: (0, 12), 6: (0, 12), 9: (0, 12), 13: (0, 12), 14: (0, 12),
               1: (1, 4), 2: (2, 5), 4: (4, 7), 5: (5, 8), 16: (16, 18), 17: (17, 19),
               18: (18, 20), 19: (19, 21)}
#: Left/right permutation of DensePose's parts (index 0: background).
DENSEPOSE_PART_MIRROR = (0, 1, 2, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15, 18, 17, 20, 19,
                         22, 21, 24, 23)
#: Left/right permutation of the 24 joints (``L_x`` ↔ ``R_x``).
JOINT_MIRROR = tuple(_J[n.replace("L_", "R_", 1) if n.startswith("L_") else
                        n.replace("R_", "L_", 1) if n.startswith("R_") else n] for n in body.JOINT_NAMES)
_HINGES = (_J["L_knee"], _J["R_knee"], _J["L_elbow"], _J["R_elbow"])
# Mirror gap (metres) above which a vertex counts as having no mirror partner.
_MIRROR_GAP = 1e-3


def _where(model: SMPLModel) -> str:
    return model.source or "SMPLModel"


def mirror_map(vertices, chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """The left/right symmetry map of a mesh from its geometry.

    Each vertex's mirror image ``(−x, y, z)`` is matched to the nearest vertex (the mirror plane is
    ``x = 0``, the body's sagittal plane in the camera frame).

    Args:
      vertices: ``(V, 3)`` rest vertices, pelvis-centred camera frame.
      chunk: queries per block of the brute-force search (used when scipy is not installed).

    Returns:
      ``symmetry (V,) int32`` (the nearest vertex to each mirror image) and ``gap (V,) float64``
      (its distance, metres). On an exactly symmetric mesh ``symmetry`` is an involution and ``gap``
      is zero up to round-off.
    """
    v = np.asarray(vertices, np.float64)
    q = v * np.array([-1.0, 1.0, 1.0])
    try:
        from scipy.spatial import cKDTree  # noqa: PLC0415 - optional, only faster
    except ImportError:
        cKDTree = None
    if cKDTree is not None:
        gap, ids = cKDTree(v).query(q)
        return ids.astype(np.int32), gap
    ids = np.empty(v.shape[0], np.int64)
    sq = np.sum(v * v, axis=1)
    for s in range(0, v.shape[0], chunk):
        d = sq[None, :] - 2.0 * q[s:s + chunk] @ v.T
        ids[s:s + chunk] = np.argmin(d, axis=1)
    return ids.astype(np.int32), np.linalg.norm(v[ids] - q, axis=1)


def _symmetry(vertices: np.ndarray, where: str) -> np.ndarray:
    """:func:`mirror_map`, warning (with the numbers) when the mesh is not left/right symmetric."""
    sym, gap = mirror_map(vertices)
    not_mutual = sym[sym] != np.arange(sym.shape[0])
    far = gap > _MIRROR_GAP
    if np.any(not_mutual) or np.any(far):
        warnings.warn(
            f"{where}: the rest mesh is not left/right symmetric: {int(not_mutual.sum())} of "
            f"{sym.shape[0]} vertices are not their mirror's mirror and {int(far.sum())} have no "
            f"vertex within {_MIRROR_GAP * 1e3:.0f} mm of their mirror image (largest gap "
            f"{gap.max() * 1e3:.2f} mm); template.symmetry is the nearest-vertex map, so flipped "
            f"dense correspondences land up to that far off", stacklevel=3)
    return sym


def _hinge_axes(joints: np.ndarray) -> np.ndarray:
    """Flexion axes of the elbows and knees from the rest joints (camera frame), ``(24, 3)``.

    A rotation by ``+θ`` about a unit axis ``k`` moves a point at ``r`` from the joint towards
    ``k × r``. Flexion must move the distal segment
      * for an elbow, forwards (towards the body's front, −z, the camera): with the upper arm ``u``
        (shoulder → elbow), ``k = normalize(u × front)`` gives ``k × u ∝ front − (front·û) û``,
        i.e. the forearm of a straight arm swings forwards and its wrist towards the shoulder (a
        bent rest arm keeps bending in that plane);
      * for a knee, backwards (+z): the axis is the body's left-right axis, from the right hip to
        the left hip, with its sign chosen so that ``k × shin`` points backwards.
    """
    axes = np.zeros((body.NUM_JOINTS, 3))
    front = np.array([0.0, 0.0, -1.0])
    for elbow, shoulder in ((_J["L_elbow"], _J["L_shoulder"]), (_J["R_elbow"], _J["R_shoulder"])):
        k = np.cross(joints[elbow] - joints[shoulder], front)
        axes[elbow] = k / np.linalg.norm(k)
    left = joints[_J["L_hip"]] - joints[_J["R_hip"]]
    left = left / np.linalg.norm(left)
    for knee, ankle in ((_J["L_knee"], _J["L_ankle"]), (_J["R_knee"], _J["R_ankle"])):
        shin = joints[ankle] - joints[knee]
        axes[knee] = left if np.cross(left, shin)[2] >= 0 else -left
    return axes


def _parts_from_weights(vertices, joints, weights) -> np.ndarray:
    """``(V,)`` DensePose part of each vertex from its dominant skinning joint (:data:`SEGMENT_PARTS`)."""
    dominant = np.argmax(weights, axis=1)
    parts = np.zeros(vertices.shape[0], np.int32)
    for j, spec in SEGMENT_PARTS.items():
        ids = np.nonzero(dominant == j)[0]
        if spec == "head":
            parts[ids] = np.where(vertices[ids, 0] < 0, 23, 24)
        elif len(spec) == 1:
            parts[ids] = spec[0]
        else:
            a0, a1 = _SPLIT_AXIS[j]
            axis = joints[a1] - joints[a0]
            axis = axis / np.linalg.norm(axis)
            d = vertices[ids] - joints[a0]
            perp_z = d[:, 2] - axis[2] * (d @ axis)
            parts[ids] = np.where(perp_z < 0, spec[0], spec[1])
    return parts


def _charts(model: SMPLModel, uv_table, num_vertices: int, vertices, joints, weights):
    """``(part_ids (V,), uv (V, 2))`` from a UV table, the model's ``densepose_iuv`` or the weights."""
    where = _where(model)
    if uv_table is None and model.densepose_iuv is not None:
        uv_table = np.asarray(model.densepose_iuv)
    if uv_table is None:
        warnings.warn(
            f"{where}: no DensePose UV table: parts come from each vertex's dominant skinning joint "
            f"(bodyjax.smpl.SEGMENT_PARTS) and every chart coordinate is 0, so (I, U, V) annotations "
            f"map only to the right part; pass DensePose's UV_Processed.mat (uv_table=, "
            f"config.body.uv_table) for the exact charts", stacklevel=3)
        return _parts_from_weights(vertices, joints, weights), np.zeros((num_vertices, 2), np.float32)
    from bodyjax.formats import densepose_uv  # noqa: PLC0415

    if isinstance(uv_table, (str, os.PathLike)):
        path = os.fspath(uv_table)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: DensePose UV table not found")
        uv_table = (densepose_uv.load_uv_processed(path, num_vertices=num_vertices)
                    if smpl_file._is_mat_file(path) else load_densepose_iuv(path, num_vertices))
    if isinstance(uv_table, densepose_uv.UVTable):
        return uv_table.per_vertex(num_vertices)
    iuv = np.asarray(uv_table)
    if iuv.shape != (num_vertices, 3):
        raise ValueError(f"to_body: uv_table must be a UVTable, a path or a ({num_vertices}, 3) "
                         f"[I, U, V] array, got shape {iuv.shape}")
    return np.round(iuv[:, 0]).astype(np.int32), iuv[:, 1:].astype(np.float32)


def _face_groups(face_vertices, num_vertices: int, vertices, weights, where: str) -> list:
    """The vertex ids (a list per face keypoint, in :data:`COCO17_NAMES` order) of the face keypoints."""
    if face_vertices is None:
        if num_vertices == SMPL_NUM_VERTICES:
            face_vertices = SMPL_FACE_VERTICES
        else:
            warnings.warn(
                f"{where}: {num_vertices} vertices is not SMPL's topology ({SMPL_NUM_VERTICES}), so "
                f"SMPL's face vertex ids do not apply; the COCO-17 face keypoints are guessed from the "
                f"geometry of the head (pass face_vertices= for the right ones)", stacklevel=3)
            return _guess_face(vertices, weights)
    if isinstance(face_vertices, Mapping):
        missing = [n for n in _FACE_NAMES if n not in face_vertices]
        if missing:
            raise ValueError(f"to_body: face_vertices lacks {missing} (needs {_FACE_NAMES})")
        face_vertices = [face_vertices[n] for n in _FACE_NAMES]
    if len(face_vertices) != len(_FACE_NAMES):
        raise ValueError(f"to_body: face_vertices needs {len(_FACE_NAMES)} entries {_FACE_NAMES}, "
                         f"got {len(face_vertices)}")
    groups = []
    for name, ids in zip(_FACE_NAMES, face_vertices):
        ids = np.atleast_1d(np.asarray(ids)).reshape(-1)
        if ids.size == 0 or not np.issubdtype(ids.dtype, np.integer) or ids.min() < 0 \
                or ids.max() >= num_vertices:
            raise ValueError(f"to_body: face_vertices[{name!r}] must be vertex ids in [0, {num_vertices}), "
                             f"got {ids.tolist()}")
        groups.append([int(i) for i in ids])
    return groups


def _guess_face(vertices: np.ndarray, weights: np.ndarray) -> list:
    """Face keypoints of a head without known vertex ids (camera frame: front −z, left +x, up −y).

    Among the vertices whose dominant joint is the head: the nose is the frontmost; each eye the
    frontmost of its side above the nose; each ear the outermost of its side.
    """
    head = np.nonzero(np.argmax(weights, axis=1) == _J["head"])[0]
    if head.size == 0:
        head = np.nonzero(np.argmax(weights, axis=1) == _J["neck"])[0]
    v = vertices[head]
    nose = head[np.argmin(v[:, 2])]
    groups = [[int(nose)]]
    for sign in (1.0, -1.0):           # left eye (+x), right eye
        side = (sign * v[:, 0] > 0) & (v[:, 1] < vertices[nose, 1])
        if not np.any(side):
            side = sign * v[:, 0] > 0
        if not np.any(side):
            side = np.ones(head.size, bool)
        groups.append([int(head[side][np.argmin(v[side, 2])])])
    for sign in (1.0, -1.0):           # left ear, right ear
        groups.append([int(head[np.argmax(sign * v[:, 0])])])
    return groups


def _keypoints(groups: list) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """COCO-17 as joint weights ``(17, 24)``, vertex ids ``(17, M)`` and vertex weights ``(17, M)``."""
    m = max(len(g) for g in groups)
    joint_w = np.zeros((len(COCO17_NAMES), body.NUM_JOINTS), np.float32)
    ids = np.zeros((len(COCO17_NAMES), m), np.int32)
    vert_w = np.zeros((len(COCO17_NAMES), m), np.float32)
    for k, name in enumerate(COCO17_NAMES):
        if name in COCO17_JOINTS:
            joint_w[k, COCO17_JOINTS[name]] = 1.0
    for k, g in enumerate(groups):
        ids[k, :len(g)] = g
        vert_w[k, :len(g)] = 1.0 / len(g)
    return joint_w, ids, vert_w


def to_body(model: SMPLModel, betas=None, keypoints: str = "coco17", uv_table=None,
            pose_blend_shapes: bool = True, face_vertices=None) -> body.BodyTemplate:
    """The SMPL model as the deform-and-learn body (:class:`bodyjax.body.BodyTemplate`).

    The paper's body is SMPL's shape, skeleton and skinning weights posed with segment scales: the
    template's forward pass with unit segment scales equals :func:`smpl_forward` at the same β and
    pose (frame-converted, pelvis-centred; with ``pose_blend_shapes`` the pose blend shapes too).

    * Rest mesh: ``T̄ + B_S(β)`` (the mean shape when ``betas`` is None); joints ``𝒥 (T̄ + B_S(β))``;
      skinning weights and faces as in the file. Everything is moved from SMPL's frame (y up,
      facing +z) to the camera frame (:data:`FRAME` = ``diag(1, −1, −1)``) and centred on the
      pelvis; units stay metres.
    * ``symmetry``: :func:`mirror_map` (nearest vertex to each mirror image; a warning gives the
      mismatch on a mesh that is not exactly symmetric, as a real SMPL shape is only nearly);
      ``joint_mirror`` swaps ``L_``/``R_`` joints, ``part_mirror`` is DensePose's left/right swap.
    * ``hinge_axes``: the elbows' and knees' flexion axes from the rest joints (see
      :func:`_hinge_axes`): ``+θ`` about the axis bends the forearm forwards (the wrist towards the
      shoulder) and the shin backwards (the ankle towards the back of the thigh).
    * Keypoints: COCO-17 = the limb joints plus face vertices (``face_vertices``; by default SMPL's
      :data:`SMPL_FACE_VERTICES` on the 6890-vertex topology, otherwise a guess from the head's
      geometry with a warning), or ``'joints24'``.
    * Parts and charts: from ``uv_table`` (DensePose's ``UV_Processed.mat``:
      :meth:`~bodyjax.formats.densepose_uv.UVTable.per_vertex`, a seam vertex taking its first
      chart), else from the model's ``densepose_iuv``, else parts from the dominant skinning joint
      (:data:`SEGMENT_PARTS`) with all chart coordinates 0 and a warning.
    * ``posedirs`` ``(207, V, 3)``: SMPL's pose blend shapes in the camera frame (when
      ``pose_blend_shapes``; a model whose pose blend shapes are all zero gets ``None``, which
      poses identically and skips the work). In the camera frame a joint rotation is
      ``R' = FRAME R FRAME``, so coefficient ``(j, a, b)`` of ``vec(R' − I)`` is ``f_a f_b`` times
      SMPL's (``f = (1, −1, −1)``) and its blend shape is ``FRAME`` times SMPL's, times ``f_a f_b``.

    Args:
      model: an :class:`SMPLModel` with SMPL's 24-joint tree (:data:`bodyjax.body.PARENTS`).
      betas: ``(B',)`` shape coefficients, ``B' ≤ B`` (None: the mean shape).
      keypoints: ``'coco17'`` or ``'joints24'``.
      uv_table: a :class:`~bodyjax.formats.densepose_uv.UVTable`, a path to ``UV_Processed.mat``
        (or to a per-vertex ``.npy``/``.npz`` table), a ``(V, 3)`` ``[I, U, V]`` array, or None.
      pose_blend_shapes: keep SMPL's pose blend shapes (``template.posedirs``).
      face_vertices: the COCO-17 face keypoints' vertex ids: a mapping with the keys ``nose,
        left_eye, right_eye, left_ear, right_ear`` or a sequence in that order; each entry one id
        or several (their mean).

    Returns:
      The :class:`~bodyjax.body.BodyTemplate` (float32 / int32 arrays).

    Raises:
      ValueError: naming the model file and ``kintree_table`` when the tree is not SMPL's 24-joint
        one; on bad ``betas``, ``keypoints``, ``face_vertices`` or ``uv_table`` (the table's errors
        name its file and field).
      FileNotFoundError: ``uv_table`` is a path that does not exist.
    """
    where = _where(model)
    if tuple(model.parents) != body.PARENTS:
        raise ValueError(
            f"{where}: field 'kintree_table': the deform-and-learn body needs SMPL's 24-joint tree "
            f"(bodyjax.body.PARENTS = {body.PARENTS}), got {len(model.parents)} joints with parents "
            f"{tuple(model.parents)}")
    if keypoints not in body.KEYPOINT_SETS:
        raise ValueError(f"to_body: unknown keypoint set {keypoints!r}; expected one of {body.KEYPOINT_SETS}")
    V = model.num_vertices
    v = np.asarray(model.v_template, np.float64)
    j = np.asarray(model.joint_template, np.float64)
    if betas is not None:
        betas = np.asarray(betas, np.float64)
        if betas.ndim != 1 or betas.shape[0] > model.num_betas or not np.all(np.isfinite(betas)):
            raise ValueError(f"to_body: betas must be a finite (B',) vector with B' <= {model.num_betas} "
                             f"(the shape blend shapes of {where}), got shape {betas.shape}")
        nb = betas.shape[0]
        v = v + (betas @ np.asarray(model.shapedirs[:nb], np.float64)).reshape(V, 3)
        j = j + (betas @ np.asarray(model.joint_shapedirs[:nb], np.float64)).reshape(-1, 3)
    vertices = (v - j[0]) * _FLIP
    joints = (j - j[0]) * _FLIP
    weights = np.asarray(model.weights, np.float64)

    part_ids, uv = _charts(model, uv_table, V, vertices, joints, weights)
    posedirs = None
    if pose_blend_shapes:
        p = np.asarray(model.posedirs, np.float64).reshape(-1, V, 3)
        if np.any(p):
            sign = np.tile(np.outer(_FLIP, _FLIP).reshape(-1), body.NUM_JOINTS - 1)   # (207,)
            posedirs = jnp.asarray(p * sign[:, None, None] * _FLIP, jnp.float32)
    groups = _face_groups(face_vertices, V, vertices, weights, where)
    kp_joint_w, kp_ids, kp_vert_w = _keypoints(groups)

    template = body.BodyTemplate(
        vertices=jnp.asarray(vertices, jnp.float32),
        faces=jnp.asarray(model.faces, jnp.int32),
        joints=jnp.asarray(joints, jnp.float32),
        weights=jnp.asarray(model.weights, jnp.float32),
        part_ids=jnp.asarray(part_ids, jnp.int32),
        uv=jnp.asarray(uv, jnp.float32),
        symmetry=jnp.asarray(_symmetry(vertices, where), jnp.int32),
        joint_mirror=jnp.asarray(JOINT_MIRROR, jnp.int32),
        part_mirror=jnp.asarray(DENSEPOSE_PART_MIRROR, jnp.int32),
        hinge_axes=jnp.asarray(_hinge_axes(joints), jnp.float32),
        kp_joint_weights=jnp.asarray(kp_joint_w),
        kp_vertex_ids=jnp.asarray(kp_ids),
        kp_vertex_weights=jnp.asarray(kp_vert_w),
        posedirs=posedirs,
        parents=body.PARENTS,
        hinge_joints=_HINGES,
        keypoint_set="coco17",
        keypoint_names=COCO17_NAMES,
    )
    return body.with_keypoints(template, keypoints) if keypoints != "coco17" else template


def _existing_file(path, field: str) -> str:
    """``path`` with ``~`` expanded; ``FileNotFoundError`` naming ``config.body.<field>`` if it is missing."""
    path = os.path.expanduser(os.fspath(path))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config.body.{field}: file not found: {path}")
    return path


def body_from_config(body_config, keypoint_set: str = "coco17") -> body.BodyTemplate:
    """The body of an experiment's ``config.body`` block when ``kind == 'smpl'``.

    Reads ``smpl_path`` (the model file, ``.pkl``/``.npz``), ``betas`` (empty: the mean shape),
    ``uv_table`` (DensePose's ``UV_Processed.mat``; empty: parts from the skinning weights, see
    :func:`to_body`), ``pose_blend_shapes`` and ``face_vertices`` (a JSON file mapping ``nose``,
    ``left_eye``, ``right_eye``, ``left_ear``, ``right_ear`` to vertex ids, as
    ``tools/export_smpl_layout.py`` writes it; empty: SMPL's own ids on the 6,890-vertex mesh).

    Args:
      body_config: the ``config.body`` ConfigDict (or any mapping with those keys).
      keypoint_set: ``config.data.keypoint_set``.

    Returns:
      :func:`to_body` of the loaded model.

    Raises:
      FileNotFoundError: ``config.body.smpl_path: file not found: PATH`` (or ``uv_table``).
      ValueError: the field is empty, or the file is wrong; the message starts with the config
        field and names the file (and the file's field).
    """
    get = body_config.get if hasattr(body_config, "get") else (lambda k, d=None: getattr(body_config, k, d))
    path = get("smpl_path", "")
    if not path:
        raise ValueError("config.body.smpl_path is empty: set it to the SMPL model file (.pkl or .npz) "
                         "for config.body.kind='smpl'")
    path = _existing_file(path, "smpl_path")
    try:
        model = load_smpl(path)
    except ValueError as e:
        raise ValueError(f"config.body.smpl_path: {e}") from e

    table = None
    uv_path = get("uv_table", "")
    if uv_path:
        uv_path = _existing_file(uv_path, "uv_table")
        from bodyjax.formats import densepose_uv  # noqa: PLC0415

        try:
            table = densepose_uv.load_uv_processed(uv_path, num_vertices=model.num_vertices)
        except ValueError as e:
            raise ValueError(f"config.body.uv_table: {e} (expected DensePose's UV_Processed.mat for "
                             f"the {model.num_vertices}-vertex model {path})") from e

    face = None
    face_path = get("face_vertices", "")
    if face_path:
        face_path = _existing_file(face_path, "face_vertices")
        try:
            with open(face_path) as f:
                face = json.load(f)
        except (OSError, ValueError) as e:
            raise ValueError(f"config.body.face_vertices: {face_path} is not a JSON file ({e})") from e
        if not isinstance(face, Mapping):
            raise ValueError(f"config.body.face_vertices: {face_path} must hold an object mapping "
                             f"{_FACE_NAMES} to vertex ids, got {type(face).__name__}")

    betas = tuple(get("betas", ()) or ())
    if betas:
        try:
            betas = np.asarray(betas, np.float64)
        except (TypeError, ValueError) as e:
            raise ValueError(f"config.body.betas: expected numbers, got {betas!r}") from e
        if betas.ndim != 1 or betas.shape[0] > model.num_betas:
            raise ValueError(f"config.body.betas: {betas.shape[0]} coefficients but {path} has "
                             f"{model.num_betas} shape blend shapes (field 'shapedirs')")
    try:
        return to_body(model, betas=betas if len(betas) else None, keypoints=keypoint_set,
                       uv_table=table, pose_blend_shapes=bool(get("pose_blend_shapes", True)),
                       face_vertices=face)
    except ValueError as e:
        field = "face_vertices" if "face_vertices" in str(e) else "smpl_path"
        raise ValueError(f"config.body.{field}: {e}") from e
