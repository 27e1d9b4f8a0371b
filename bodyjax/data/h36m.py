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
