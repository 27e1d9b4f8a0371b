"""Human3.6M from the common preprocessed ``.npz`` layout, Protocol #1 subject split, joint mapping.

File layout (the widely used preprocessing of SPIN, Kolotouros et al. 2019; e.g. ``h36m_train.npz``,
``h36m_valid_protocol1.npz``), one row per frame:

==========  ============  =====================================================================
key         shape         meaning
==========  ============  =====================================================================
imgname     (N,)          image path, e.g. ``images/S9_Directions_1.54138969_000001.jpg``
center      (N, 2)        person box centre, pixels (optional here)
scale       (N,)          box size / 200 pixels (SPIN: 0.9 × the larger side of the GT box)
part        (N, 24, 3)    2D joints (pixels) + confidence, SPIN-24 order (optional: absent in the
                          SPIN test files)
S           (N, 24, 4)    3D joints + confidence, SPIN-24 order, camera frame, ROOT-CENTRED on
                          the H36M pelvis, in METRES (SPIN divides the millimetre mocap by 1000)
==========  ============  =====================================================================

Only 17 of the 24 SPIN joints are filled for H36M (confidence 1, :data:`H36M17_IN_SPIN24`); the
others are zero with confidence 0. ``units='auto'`` (default) reads ``S`` as millimetres when the
median absolute coordinate of confident joints exceeds 10 (no human is 10 m across), else as metres;
pass ``units='m'`` or ``'mm'`` to force. The H36M camera frame (x right, y down, z forward) is the
project's camera frame, so ``S`` needs no axis change.

Subjects come from ``imgname``: the first ``S<number>`` token delimited by a non-alphanumeric
character (``S9_Directions...``, ``.../S11/Videos/...``). Protocol #1 (the deform-and-learn paper,
section 5.3): train on S1, S5, S6, S7, S8; test on S9, S11.

Joint correspondence with the project's 24 joints (SMPL order) — :data:`SPIN24_TO_JOINTS24`:

* EXACT (same anatomical landmark): hips, knees, ankles, shoulders, elbows, wrists (12) and the
  pelvis (the root) — :func:`comparable_joints` with ``include_approximate=False`` (13 joints);
* APPROXIMATE: ``neck`` ← LSP neck, ``head`` ← H36M head (SPIN's stand-in for the LSP head top);
  adding them gives the LSP-14-like set (12 limbs + neck + head) plus the pelvis (15 joints);
* no counterpart: spine1-3, collars, feet, hands.
"""
from __future__ import annotations

import os
import re
from typing import NamedTuple

import numpy as np

from bodyjax import skeletons

SPIN24_NAMES = (
    "right_ankle", "right_knee", "right_hip", "left_hip", "left_knee", "left_ankle",
    "right_wrist", "right_elbow", "right_shoulder", "left_shoulder", "left_elbow", "left_wrist",
    "neck_lsp", "head_top_lsp", "pelvis_mpii", "thorax_mpii", "spine_h36m", "jaw_h36m", "head_h36m",
    "nose", "left_eye", "right_eye", "left_ear", "right_ear",
)
#: SPIN-24 index of each H36M-17 joint (H36M order: pelvis, left leg, right leg, spine, neck, jaw,
#: head, left arm, right arm, with the left/right naming of the SPIN-24 set).
H36M17_IN_SPIN24 = (14, 3, 4, 5, 2, 1, 0, 16, 12, 17, 18, 9, 10, 11, 8, 7, 6)
#: The LSP-14 joints are SPIN-24's first 14.
LSP14_IN_SPIN24 = tuple(range(14))

#: our joint name -> (SPIN-24 name, exact?)
SPIN24_TO_JOINTS24_NAMES = {
    "pelvis": ("pelvis_mpii", True),
    "L_hip": ("left_hip", True), "R_hip": ("right_hip", True),
    "L_knee": ("left_knee", True), "R_knee": ("right_knee", True),
    "L_ankle": ("left_ankle", True), "R_ankle": ("right_ankle", True),
    "L_shoulder": ("left_shoulder", True), "R_shoulder": ("right_shoulder", True),
    "L_elbow": ("left_elbow", True), "R_elbow": ("right_elbow", True),
    "L_wrist": ("left_wrist", True), "R_wrist": ("right_wrist", True),
    "neck": ("neck_lsp", False),
    "head": ("head_h36m", False),
}
#: COCO-17 keypoint name -> SPIN-24 name (all 17 exist in SPIN-24; H36M fills the 12 limb ones).
SPIN24_TO_COCO17_NAMES = {
    "nose": "nose", "left_eye": "left_eye", "right_eye": "right_eye",
    "left_ear": "left_ear", "right_ear": "right_ear",
    "left_shoulder": "left_shoulder", "right_shoulder": "right_shoulder",
    "left_elbow": "left_elbow", "right_elbow": "right_elbow",
    "left_wrist": "left_wrist", "right_wrist": "right_wrist",
    "left_hip": "left_hip", "right_hip": "right_hip",
    "left_knee": "left_knee", "right_knee": "right_knee",
    "left_ankle": "left_ankle", "right_ankle": "right_ankle",
}


def _table(target_names, name_map) -> np.ndarray:
    src = {n: i for i, n in enumerate(SPIN24_NAMES)}
    return np.array([src[name_map[t]] if t in name_map else -1 for t in target_names], np.int64)


#: ``(24,)`` SPIN-24 index of each of our joints, ``-1`` where none.
SPIN24_TO_JOINTS24 = _table(skeletons.JOINTS24_NAMES,
                            {k: v[0] for k, v in SPIN24_TO_JOINTS24_NAMES.items()})
#: ``(17,)`` SPIN-24 index of each COCO-17 keypoint.
SPIN24_TO_COCO17 = _table(skeletons.COCO17_NAMES, SPIN24_TO_COCO17_NAMES)

PROTOCOL1_SUBJECTS = {"train": (1, 5, 6, 7, 8), "test": (9, 11)}
_SUBJECT = re.compile(r"(?<![A-Za-z0-9])S(\d+)(?![A-Za-z0-9])")


def comparable_joints(include_approximate: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Indices for evaluating our 24 joints against the SPIN-24 ground truth.

    Returns:
      ``(ours, spin)``: ``ours`` indices into our 24 joints and ``spin`` the matching SPIN-24
      indices (13 exact joints, 15 with ``include_approximate``), in our joint order.
    """
    ours, spin = [], []
    src = {n: i for i, n in enumerate(SPIN24_NAMES)}
    for j, name in enumerate(skeletons.JOINTS24_NAMES):
        if name in SPIN24_TO_JOINTS24_NAMES:
            spin_name, exact = SPIN24_TO_JOINTS24_NAMES[name]
            if exact or include_approximate:
                ours.append(j)
                spin.append(src[spin_name])
    return np.asarray(ours, np.int64), np.asarray(spin, np.int64)


def gather_comparable(pred_joints24, gt_spin24, include_approximate: bool = False):
    """``(pred (..., M, D), gt (..., M, D), valid (..., M))`` on the comparable joints.

    Args:
      pred_joints24: ``(..., 24, D)`` our joints.
      gt_spin24: ``(..., 24, D + 1)`` SPIN-24 ground truth with confidence last (``S`` or ``part``).
    """
    ours, spin = comparable_joints(include_approximate)
    gt = np.asarray(gt_spin24)
    return np.asarray(pred_joints24)[..., ours, :], gt[..., spin, :-1], (gt[..., spin, -1] > 0).astype(np.float32)


def parse_subject(name: str) -> int:
    """Subject number of an H36M image name/path (``'S9_...'``, ``'.../S11/...'``); -1 if none."""
    for m in _SUBJECT.finditer(str(name)):
        return int(m.group(1))
    return -1


def remap_spin24(points, table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(..., 24, D + 1)`` SPIN-24 with confidence → ``(..., K, D)`` points and ``(..., K)`` validity."""
    pts = np.asarray(points, np.float64)
    table = np.asarray(table, np.int64)
    ok = table >= 0
    safe = np.where(ok, table, 0)
    valid = (pts[..., safe, -1] > 0) & ok
    out = np.where(valid[..., None], pts[..., safe, :-1], 0.0)
    return out.astype(np.float32), valid.astype(np.float32)


def load_h36m(npz_path, split: str = "train", units: str = "auto", allow_pickle: bool = False) -> dict:
    """Loads a preprocessed H36M ``.npz`` and keeps the Protocol #1 subjects of ``split``.

    Args:
      npz_path: the file (layout in the module docstring).
      split: ``'train'`` (S1, S5, S6, S7, S8), ``'test'`` (S9, S11) or ``'all'``.
      units: ``'auto'``, ``'m'`` or ``'mm'`` — the unit of ``S`` in the file.
      allow_pickle: needed only if ``imgname`` was saved as an object array (trusted files only).

    Returns:
      dict of arrays over the kept ``M`` rows: ``imgname (M,)`` str, ``subject (M,)`` int32,
      ``center (M, 2)``, ``scale (M,)``, ``part (M, 24, 3)``, ``S (M, 24, 4)`` (metres; raw SPIN-24
      otherwise; ``part``/``center``/``scale`` zeros if absent), ``joints3d (M, 24, 3)`` our joint order,
      metres, camera frame, relative to the pelvis, ``joints3d_valid (M, 24)``, ``keypoints2d
      (M, 24, 2)`` / ``keypoints2d_valid (M, 24)`` (our order, from ``part``), ``coco17 (M, 17, 2)`` /
      ``coco17_valid (M, 17)`` (from ``part``). All float32.

    Raises:
      FileNotFoundError / ValueError naming the file and field: missing file, unreadable npz,
      missing ``imgname``/``S``, wrong shapes, row counts that disagree, non-finite values, names
      without a subject, unknown ``split``/``units``.
    """
    if split not in ("train", "test", "all"):
        raise ValueError(f"unknown split {split!r}; expected 'train', 'test' or 'all'")
    if units not in ("auto", "m", "mm"):
        raise ValueError(f"unknown units {units!r}; expected 'auto', 'm' or 'mm'")
    path = os.fspath(npz_path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"H36M npz file not found: {path}")
    try:
        with np.load(path, allow_pickle=allow_pickle) as f:
            raw = {k: f[k] for k in f.files}
    except Exception as e:  # noqa: BLE001 - re-raised with the file named
        hint = " (object arrays need allow_pickle=True; only for trusted files)" if "pickle" in str(e) else ""
        raise ValueError(f"{path}: cannot read H36M npz ({type(e).__name__}: {e}){hint}") from e
    for key in ("imgname", "S"):
        if key not in raw:
            raise ValueError(f"{path}: missing field {key!r} (found {sorted(raw)})")
    names = np.asarray(raw["imgname"]).astype(str)
    n = names.shape[0]
    if names.ndim != 1:
        raise ValueError(f"{path}: field 'imgname' must have shape (N,), got {names.shape}")
    expected = {"S": (n, 24, 4), "part": (n, 24, 3), "center": (n, 2), "scale": (n,)}
    arrays = {}
    for key, shape in expected.items():
        if key not in raw:
            arrays[key] = np.zeros(shape, np.float64)
            continue
        value = np.asarray(raw[key])
        if value.shape != shape or value.dtype.kind not in "iuf":
            raise ValueError(f"{path}: field {key!r} must be numeric of shape {shape}, got {value.dtype} {value.shape}")
        value = value.astype(np.float64)
        if not np.all(np.isfinite(value)):
            raise ValueError(f"{path}: field {key!r} holds non-finite values")
        arrays[key] = value

    subjects = np.array([parse_subject(s) for s in names], np.int32)
    if np.any(subjects < 0):
        bad = names[subjects < 0][:3].tolist()
        raise ValueError(f"{path}: field 'imgname': no subject (S<number>) in {bad}")
    keep = np.ones(n, bool) if split == "all" else np.isin(subjects, PROTOCOL1_SUBJECTS[split])

    s = arrays["S"]
    conf = s[..., 3] > 0
    if units == "mm" or (units == "auto" and np.any(conf) and np.median(np.abs(s[..., :3][conf])) > 10.0):
        s = s.copy()
        s[..., :3] /= 1000.0

    s, part = s[keep], arrays["part"][keep]
    joints3d, joints3d_valid = remap_spin24(s, SPIN24_TO_JOINTS24)
    root_ok = joints3d_valid[:, 0] > 0
    joints3d = np.where((root_ok[:, None, None] & (joints3d_valid[..., None] > 0)),
                        joints3d - joints3d[:, :1], joints3d).astype(np.float32)
    kp24, kp24_valid = remap_spin24(part, SPIN24_TO_JOINTS24)
    coco, coco_valid = remap_spin24(part, SPIN24_TO_COCO17)
    return {
        "imgname": names[keep],
        "subject": subjects[keep],
        "center": arrays["center"][keep].astype(np.float32),
        "scale": arrays["scale"][keep].astype(np.float32),
        "part": part.astype(np.float32),
        "S": s.astype(np.float32),
        "joints3d": joints3d,
        "joints3d_valid": joints3d_valid,
        "keypoints2d": kp24,
        "keypoints2d_valid": kp24_valid,
        "coco17": coco,
        "coco17_valid": coco_valid,
    }


# ---------------------------------------------------------------------------------------------
# Evaluation joints: H36M-17, its LSP-14 subset, the bodies' H36M joints, actions, the canonical
# average skeleton of Protocol #1
#
# H36M-17 is the 17-joint set of the evaluation (the rows of SPIN's ``J_regressor_h36m``), in the
# order of :data:`H36M17_IN_SPIN24` (the slots of ``S``/``part`` the npz fills):
#
#  0 pelvis (the H36M root)          7 spine (mid-torso)          11 left_shoulder  14 right_shoulder
#  1 left_hip    4 right_hip         8 thorax (SPIN's LSP neck)   12 left_elbow     15 right_elbow
#  2 left_knee   5 right_knee        9 neck_nose (SPIN's jaw)     13 left_wrist     16 right_wrist
#  3 left_ankle  6 right_ankle      10 head_top (SPIN's H36M head)
#
# LSP-14 on Human3.6M is, as in SPIN's evaluation, 14 of those 17 (the LSP neck is the thorax and the
# LSP head top the H36M head): :data:`LSP14_IN_H36M17`, rooted at the hip midpoint.

H36M17_NAMES = (
    "pelvis", "left_hip", "left_knee", "left_ankle", "right_hip", "right_knee", "right_ankle",
    "spine", "thorax", "neck_nose", "head_top", "left_shoulder", "left_elbow", "left_wrist",
    "right_shoulder", "right_elbow", "right_wrist",
)
#: Kinematic tree of H36M-17 (16 bones), for the bone-length sums.
H36M17_PARENTS = (-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 9, 8, 11, 12, 8, 14, 15)
H36M17_ROOT = 0
#: H36M-17 index of each LSP-14 joint (LSP order, :data:`LSP14_NAMES`).
LSP14_IN_H36M17 = (6, 5, 4, 1, 2, 3, 16, 15, 14, 11, 12, 13, 8, 10)
LSP14_NAMES = tuple(SPIN24_NAMES[i] for i in LSP14_IN_SPIN24)
#: A spanning tree of LSP-14 (13 bones: limbs, neck→shoulders→hips on each side, neck→head top).
LSP14_PARENTS = (1, 2, 8, 9, 3, 4, 7, 8, 12, 12, 9, 10, -1, 12)
#: LSP-14 has no pelvis: its root is the midpoint of the two hips.
LSP14_ROOT = (2, 3)

#: The 15 Human3.6M actions (the usual per-action columns).
ACTIONS = ("Directions", "Discussion", "Eating", "Greeting", "Phoning", "Photo", "Posing", "Purchases",
           "Sitting", "SittingDown", "Smoking", "Waiting", "WalkDog", "Walking", "WalkTogether")
_ACTION_ALIASES = {"takingphoto": "Photo", "walkingdog": "WalkDog", "walkdog": "WalkDog"}
_ACTION_KEYS = {a.lower(): a for a in ACTIONS}


def parse_action(name: str) -> str:
    """The action of an H36M image name/path, one of :data:`ACTIONS` (``''`` when none).

    The action is the file name's token after the ``S<n>_`` subject prefix and before the first
    ``.`` (the camera id), without a take number (``_1``, `` 2``) and without separators:
    ``S9_Directions_1.54138969_000001.jpg`` → ``Directions``, ``S9_Sitting_Down.60457274_...`` →
    ``SittingDown``, ``.../S11/Videos/Walking.55011271_...`` → ``Walking``; ``TakingPhoto`` and
    ``WalkingDog`` (the names of S1's videos) are ``Photo`` and ``WalkDog``. A token that is no
    known action is returned as it is (cleaned).
    """
    base = os.path.basename(str(name))
    base = re.sub(r"^S\d+[_ ]", "", base)
    token = base.split(".", 1)[0]
    token = re.sub(r"[_ ]\d+$", "", token)
    key = re.sub(r"[_ ]", "", token).lower()
    return _ACTION_ALIASES.get(key) or _ACTION_KEYS.get(key) or re.sub(r"[_ ]", "", token)


def h36m17_from_spin24(points) -> tuple[np.ndarray, np.ndarray]:
    """``(..., 24, D + 1)`` SPIN-24 with confidence → ``(..., 17, D)`` H36M-17 and ``(..., 17)`` validity."""
    return remap_spin24(points, np.asarray(H36M17_IN_SPIN24))


def spin24_from_h36m17(points, confidence=1.0) -> np.ndarray:
    """``(..., 17, D)`` H36M-17 → ``(..., 24, D + 1)`` float64 SPIN-24 with the 17 slots filled (the npz layout).

    Args:
      points: H36M-17 points (3D joints for ``S``, pixels for ``part``).
      confidence: scalar or ``(..., 17)`` confidence of the filled slots; the others are 0.
    """
    pts = np.asarray(points, np.float64)
    out = np.zeros(pts.shape[:-2] + (24, pts.shape[-1] + 1), np.float64)
    idx = np.asarray(H36M17_IN_SPIN24)
    out[..., idx, :-1] = pts
    out[..., idx, -1] = np.broadcast_to(np.asarray(confidence, np.float64), pts.shape[:-1])
    return out


class JointMap(NamedTuple):
    """Evaluation joints as fixed linear combinations of a body's joints and surface vertices.

    ``joints_out = joint_weights @ joints + vertex_weights @ vertices[vertex_ids]`` (:meth:`apply`).

    Attributes:
      joint_weights: ``(K, J)`` weights of the body's ``J`` joints.
      vertex_ids: ``(U,)`` int32 the vertices used.
      vertex_weights: ``(K, U)`` weights of those vertices.
      exact: ``(K,)`` bool, whether each joint is the same landmark as the data's (documented per map).
      names: the ``K`` joint names.
    """

    joint_weights: np.ndarray
    vertex_ids: np.ndarray
    vertex_weights: np.ndarray
    exact: tuple
    names: tuple = H36M17_NAMES

    def apply(self, joints, vertices) -> np.ndarray:
        """``(..., J, 3)`` joints and ``(..., U, 3)`` vertices (those of :attr:`vertex_ids`) →
        ``(..., K, 3)`` float64 (NumPy)."""
        return (np.einsum("kj,...jc->...kc", np.asarray(self.joint_weights, np.float64),
                          np.asarray(joints, np.float64))
                + np.einsum("ku,...uc->...kc", np.asarray(self.vertex_weights, np.float64),
                            np.asarray(vertices, np.float64)))


#: Parts 23, 24 (DensePose: head right, head left) are the head.
_HEAD_PARTS = (23, 24)


def default_body_h36m_map(template) -> JointMap:
    """H36M-17 on the default MakeHuman body, from its 24 joints and two surface vertices.

    ======================  ==========================================================  ===========
    H36M-17 joint           on the body                                                 exact?
    ======================  ==========================================================  ===========
    pelvis                  midpoint of L_hip and R_hip (the H36M root lies between      approximate
                            the hip centres; the rig's pelvis joint is ~2 cm higher)
    hips, knees, ankles     L_/R_hip, L_/R_knee, L_/R_ankle                             exact
    spine                   spine3 (mid-torso, about halfway from pelvis to thorax)     approximate
    thorax                  ½ neck + ¼ L_shoulder + ¼ R_shoulder (base of the neck at   approximate
                            shoulder height)
    neck_nose               ½ head joint + ½ nose tip vertex (the H36M joint inside the  approximate
                            head, between the top of the neck and the face)
    head_top                the head top vertex                                         approximate
    shoulders, elbows,      L_/R_shoulder, L_/R_elbow, L_/R_wrist                       exact
    wrists
    ======================  ==========================================================  ===========

    "Exact" means the same anatomical joint (the rig's joint centre may still sit a little
    elsewhere than the mocap skeleton's). The two vertices are found on the template: the head
    top is the head vertex (parts 23, 24) highest in the rest pose (smallest y), the nose tip the
    head vertex nearest the camera (smallest z); both lie on the symmetry plane.

    Args:
      template: the :class:`~bodyjax.body.BodyTemplate` (24 joints, ``part_ids``, ``vertices``).
    """
    from bodyjax import body  # noqa: PLC0415

    names = {n: i for i, n in enumerate(body.JOINT_NAMES)}
    vertices = np.asarray(template.vertices)
    parts = np.asarray(template.part_ids)
    head = np.flatnonzero(np.isin(parts, _HEAD_PARTS))
    if head.size == 0:
        raise ValueError("default_body_h36m_map: the template has no head vertices (parts 23, 24)")
    top = int(head[np.argmin(vertices[head, 1])])
    nose = int(head[np.argmin(vertices[head, 2])])
    jw = np.zeros((17, len(body.JOINT_NAMES)))
    vw = np.zeros((17, 2))

    def put(k, **weights):
        for joint, w in weights.items():
            jw[k, names[joint]] += w

    put(0, L_hip=0.5, R_hip=0.5)
    for k, joint in ((1, "L_hip"), (2, "L_knee"), (3, "L_ankle"), (4, "R_hip"), (5, "R_knee"),
                     (6, "R_ankle"), (11, "L_shoulder"), (12, "L_elbow"), (13, "L_wrist"),
                     (14, "R_shoulder"), (15, "R_elbow"), (16, "R_wrist")):
        put(k, **{joint: 1.0})
    put(7, spine3=1.0)
    put(8, neck=0.5, L_shoulder=0.25, R_shoulder=0.25)
    put(9, head=0.5)
    vw[9, 1] = 0.5
    vw[10, 0] = 1.0
    exact = tuple(k in (1, 2, 3, 4, 5, 6, 11, 12, 13, 14, 15, 16) for k in range(17))
    return JointMap(jw.astype(np.float32), np.array([top, nose], np.int32), vw.astype(np.float32), exact)


def regressor_h36m_map(regressor, num_joints: int = 24) -> JointMap:
    """H36M-17 from a vertex regressor ``(17, V)`` (SMPL's ``J_regressor_h36m``): all exact.

    Only the vertices with a non-zero weight in some row are kept (``vertex_ids``).
    """
    reg = np.asarray(regressor, np.float64)
    used = np.flatnonzero(np.any(reg != 0, axis=0)).astype(np.int32)
    return JointMap(np.zeros((reg.shape[0], num_joints), np.float32), used,
                    reg[:, used].astype(np.float32), (True,) * reg.shape[0])


def load_joint_regressor(path, num_vertices: int, num_joints: int = 17) -> np.ndarray:
    """Reads ``J_regressor_h36m`` (``.npy``, or ``.npz`` with that key or a single array): ``(17, V)`` float64.

    Raises:
      FileNotFoundError / ValueError naming the file (and the field): missing file, unreadable,
      wrong shape (``V`` must be the body's vertex count), non-finite weights, an all-zero row.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"H36M joint regressor file not found: {path}")
    try:
        with open(path, "rb") as f:
            loaded = np.load(f, allow_pickle=False)
            if isinstance(loaded, np.lib.npyio.NpzFile):
                keys = list(loaded.files)
                key = "J_regressor_h36m" if "J_regressor_h36m" in keys else (keys[0] if len(keys) == 1 else None)
                if key is None:
                    raise ValueError(f"an .npz needs the field 'J_regressor_h36m' (found {keys})")
                value = loaded[key]
            else:
                value = loaded
    except Exception as e:  # noqa: BLE001 - re-raised with the file named
        raise ValueError(f"{path}: cannot read the H36M joint regressor ({type(e).__name__}: {e})") from e
    value = np.asarray(value)
    if value.shape != (num_joints, num_vertices) or value.dtype.kind not in "iuf":
        raise ValueError(f"{path}: J_regressor_h36m must be numeric of shape ({num_joints}, {num_vertices}) "
                         f"(the body's vertex count), got {value.dtype} {value.shape}")
    value = value.astype(np.float64)
    if not np.all(np.isfinite(value)):
        raise ValueError(f"{path}: J_regressor_h36m holds non-finite weights")
    empty = np.flatnonzero(~np.any(value != 0, axis=1))
    if empty.size:
        raise ValueError(f"{path}: J_regressor_h36m rows {empty.tolist()} are all zero")
    return value


def bone_lengths(joints, parents) -> np.ndarray:
    """``(..., J, 3)`` → ``(..., B)`` float64 lengths of the bones of ``parents`` (child order)."""
    j = np.asarray(joints, np.float64)
    child = [c for c, p in enumerate(parents) if p >= 0]
    parent = [p for p in parents if p >= 0]
    return np.linalg.norm(j[..., child, :] - j[..., parent, :], axis=-1)


def canonical_skeleton(joints, subjects, parents, valid=None,
                       train_subjects=PROTOCOL1_SUBJECTS["train"]) -> dict:
    """The canonical average skeleton of the training subjects (the paper's rescaled MPJPE).

    Each subject's bone lengths are averaged over its frames, then the subjects' averages are
    averaged (every subject counts once, whatever its number of frames). Float64 throughout.

    Args:
      joints: ``(M, J, 3)`` ground-truth joints (any units; the result is in the same).
      subjects: ``(M,)`` subject number of each frame.
      parents: the tree (:data:`H36M17_PARENTS`, :data:`LSP14_PARENTS`).
      valid: optional ``(M, J)``: frames with an invalid joint are left out.
      train_subjects: the subjects to average (Protocol #1: S1, S5, S6, S7, S8).

    Returns:
      ``{'bone_lengths': (B,), 'sum': float, 'subjects': {subject: frames}}``.

    Raises:
      ValueError: a training subject has no valid frame (the message lists the subjects found).
    """
    j = np.asarray(joints, np.float64)
    subjects = np.asarray(subjects)
    ok = np.ones(len(j), bool) if valid is None else np.all(np.asarray(valid) > 0, axis=-1)
    per_subject, frames = [], {}
    for s in train_subjects:
        rows = (subjects == s) & ok
        if not np.any(rows):
            found = sorted(set(subjects[ok].tolist()))
            raise ValueError(f"canonical_skeleton: no valid frame of training subject S{s} (frames of "
                             f"subjects {found}); the canonical skeleton needs S{', S'.join(map(str, train_subjects))}")
        per_subject.append(bone_lengths(j[rows], parents).mean(axis=0))
        frames[int(s)] = int(rows.sum())
    mean = np.mean(per_subject, axis=0)
    return {"bone_lengths": mean, "sum": float(mean.sum()), "subjects": frames}
