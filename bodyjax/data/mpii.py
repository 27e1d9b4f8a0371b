"""2D keypoint data sets for the lifter: COCO person keypoints and MPII, as fixed-size arrays.

COCO (``person_keypoints_*.json``)
    A COCO JSON object with a list ``annotations`` (``images`` is optional here). Each person:
    ``keypoints`` = 17 × ``[x, y, v]`` flattened in COCO-17 order (``v``: 0 not labelled, 1 labelled
    but occluded, 2 labelled and visible), ``num_keypoints``, ``iscrowd``, ``bbox [x, y, w, h]``,
    ``image_id``, ``id``. Coordinates are used as stored (OpenCV pixel centres).

MPII (the widely used JSON conversion of the MPII Human Pose ``.mat`` release, e.g.
``mpii_annotations.json`` / ``train.json`` / ``valid.json``)
    A JSON LIST with one object per person::

        {"image": "015601864.jpg",           # image file name
         "center": [594.0, 257.0],           # rough person centre, pixels
         "scale": 3.021046,                  # person height / 200 pixels
         "joints": [[620.0, 394.0], ...],    # 16 × [x, y], MPII joint order (MPII16_NAMES)
         "joints_vis": [1, 1, ...]}          # 16 flags, > 0 = annotated

    Coordinates in that conversion are the MATLAB 1-based ones of the release; ``one_based=True``
    (default) subtracts 1 from ``joints`` and ``center`` to get 0-based OpenCV pixel centres.
    Unannotated joints (flag 0, often stored as ``[-1, -1]``) get visibility 0 and coordinates 0.
    A file that is a JSON object with a list ``annotations`` / ``annolist`` is NOT this layout and
    is rejected with a clear error.

Keypoint sets for MPII output (``keypoint_set``): ``'mpii16'`` (native order), ``'coco17'`` (the 12
limb joints map one to one; MPII has no nose/eyes/ears — only head top and upper neck — so those
five get visibility 0) and ``'joints24'`` (the 12 limb joints and the pelvis; the other SMPL joints
have no MPII counterpart and get visibility 0). Bad entries are skipped and counted in a
:class:`~bodyjax.data.densepose_coco.LoadReport`; file-level problems raise ``ValueError`` /
``FileNotFoundError`` naming the file.

Skip reasons: ``malformed`` (entry not an object), ``crowd``, ``missing_field``, ``bad_keypoints``
(wrong count, non-numeric, non-finite, bad flags), ``bad_center``, ``bad_scale``,
``too_few_keypoints``.
"""
from __future__ import annotations

import os

import numpy as np

from bodyjax import skeletons
from bodyjax.data.densepose_coco import (NUM_COCO_KEYPOINTS, LoadReport, numeric_array, parse_bbox,
                                         keypoints_or_skip, read_json)

MPII16_NAMES = (
    "right_ankle", "right_knee", "right_hip", "left_hip", "left_knee", "left_ankle", "pelvis",
    "thorax", "upper_neck", "head_top", "right_wrist", "right_elbow", "right_shoulder",
    "left_shoulder", "left_elbow", "left_wrist",
)
NUM_MPII = len(MPII16_NAMES)

#: target keypoint name -> MPII joint name (targets not listed have no MPII counterpart).
MPII_TO_COCO17_NAMES = {
    "left_shoulder": "left_shoulder", "right_shoulder": "right_shoulder",
    "left_elbow": "left_elbow", "right_elbow": "right_elbow",
    "left_wrist": "left_wrist", "right_wrist": "right_wrist",
    "left_hip": "left_hip", "right_hip": "right_hip",
    "left_knee": "left_knee", "right_knee": "right_knee",
    "left_ankle": "left_ankle", "right_ankle": "right_ankle",
    # nose, left_eye, right_eye, left_ear, right_ear: none in MPII
}
MPII_TO_JOINTS24_NAMES = {
    "pelvis": "pelvis",
    "L_hip": "left_hip", "R_hip": "right_hip",
    "L_knee": "left_knee", "R_knee": "right_knee",
    "L_ankle": "left_ankle", "R_ankle": "right_ankle",
    "L_shoulder": "left_shoulder", "R_shoulder": "right_shoulder",
    "L_elbow": "left_elbow", "R_elbow": "right_elbow",
    "L_wrist": "left_wrist", "R_wrist": "right_wrist",
    # spine*, neck, collars, head, feet, hands: no MPII counterpart with the same definition
}


def index_table(target_names, source_names, name_map: dict) -> np.ndarray:
    """``(len(target_names),)`` source index of each target keypoint, ``-1`` where unmapped."""
    src = {n: i for i, n in enumerate(source_names)}
    return np.array([src[name_map[t]] if t in name_map else -1 for t in target_names], np.int64)


MPII_TO_COCO17 = index_table(skeletons.COCO17_NAMES, MPII16_NAMES, MPII_TO_COCO17_NAMES)
MPII_TO_JOINTS24 = index_table(skeletons.JOINTS24_NAMES, MPII16_NAMES, MPII_TO_JOINTS24_NAMES)
_MPII_TABLES = {"mpii16": np.arange(NUM_MPII), "coco17": MPII_TO_COCO17, "joints24": MPII_TO_JOINTS24}


def remap(points: np.ndarray, visible: np.ndarray, table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reorders ``(..., S, D)`` points / ``(..., S)`` visibility by ``table`` (``-1`` → zero, invisible)."""
    table = np.asarray(table, np.int64)
    ok = table >= 0
    safe = np.where(ok, table, 0)
    pts = np.where(ok[:, None], np.asarray(points)[..., safe, :], 0.0)
    vis = np.where(ok, np.asarray(visible)[..., safe], 0.0)
    return pts.astype(np.float32), vis.astype(np.float32)


# ---------------------------------------------------------------------------------------------
# COCO


def load_coco_keypoints(json_path, min_keypoints: int = 1) -> tuple[dict, LoadReport]:
    """COCO person keypoints → arrays for the lifter.

    Args:
      json_path: a ``person_keypoints_*.json`` (or any COCO JSON with keypoint annotations, e.g.
        DensePose-COCO).
      min_keypoints: people with fewer labelled keypoints (``v > 0``) are skipped.

    Returns:
      ``(data, report)`` with ``data``: ``keypoints (N, 17, 2)`` float32, ``visibility (N, 17)``
      float32 (``v > 0``), ``bbox (N, 4)`` float32 (zeros if missing/bad), ``image_id (N,)`` int64,
      ``annotation_id (N,)`` int64 (``-1`` if absent).
    """
    json_path = os.fspath(json_path)
    data = read_json(json_path, required=("annotations",), kind="COCO keypoints")
    report = LoadReport(source=json_path)
    kps, vis, boxes, image_ids, ann_ids = [], [], [], [], []
    for ann in data["annotations"]:
        report.total += 1
        if not isinstance(ann, dict):
            report.skip("malformed")
            continue
        if ann.get("iscrowd"):
            report.skip("crowd")
            continue
        if "keypoints" not in ann:
            report.skip("missing_field")
            continue
        parsed = keypoints_or_skip(ann["keypoints"], report, min_keypoints)
        if parsed is None:
            continue
        bbox = parse_bbox(ann.get("bbox"))
        kps.append(parsed[0])
        vis.append(parsed[1])
        boxes.append(np.zeros(4) if bbox is None else bbox)
        image_ids.append(_int_or(ann.get("image_id"), -1))
        ann_ids.append(_int_or(ann.get("id"), -1))
        report.kept += 1
    out = {
        "keypoints": np.asarray(kps, np.float32).reshape(-1, NUM_COCO_KEYPOINTS, 2),
        "visibility": np.asarray(vis, np.float32).reshape(-1, NUM_COCO_KEYPOINTS),
        "bbox": np.asarray(boxes, np.float32).reshape(-1, 4),
        "image_id": np.asarray(image_ids, np.int64),
        "annotation_id": np.asarray(ann_ids, np.int64),
    }
    return out, report


def _int_or(value, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


# ---------------------------------------------------------------------------------------------
# MPII


def load_mpii(json_path, keypoint_set: str = "coco17", one_based: bool = True,
              min_keypoints: int = 1) -> tuple[dict, LoadReport]:
    """MPII JSON (layout in the module docstring) → arrays for the lifter.

    Args:
      json_path: the JSON list of people.
      keypoint_set: ``'coco17'`` (default), ``'joints24'`` or ``'mpii16'``.
      one_based: subtract 1 from coordinates (MATLAB → 0-based pixel centres).
      min_keypoints: people with fewer annotated joints (in ``keypoint_set``) are skipped.

    Returns:
      ``(data, report)`` with ``data``: ``keypoints (N, K, 2)`` float32, ``visibility (N, K)``
      float32, ``center (N, 2)`` float32, ``scale (N,)`` float32 (person height / 200 px),
      ``image (N,)`` str, ``keypoint_set`` (the name).
    """
    if keypoint_set not in _MPII_TABLES:
        raise ValueError(f"unknown keypoint set {keypoint_set!r}; expected one of {sorted(_MPII_TABLES)}")
    json_path = os.fspath(json_path)
    data = read_json(json_path, kind="MPII")
    if not isinstance(data, list):
        found = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"{json_path}: an MPII annotation file must be a JSON list of people "
                         f"(objects with image, center, scale, joints, joints_vis); found {found}")
    table = _MPII_TABLES[keypoint_set]
    offset = 1.0 if one_based else 0.0
    report = LoadReport(source=json_path)
    kps, vis, centers, scales, names = [], [], [], [], []
    for person in data:
        report.total += 1
        if not isinstance(person, dict):
            report.skip("malformed")
            continue
        if any(f not in person for f in ("image", "center", "scale", "joints", "joints_vis")) \
                or not isinstance(person["image"], str):
            report.skip("missing_field")
            continue
        joints = person["joints"]
        flat = None
        if isinstance(joints, list) and len(joints) == NUM_MPII and all(isinstance(j, list) for j in joints):
            flat = numeric_array([c for j in joints for c in j], 2 * NUM_MPII)
        flags = numeric_array(person["joints_vis"], NUM_MPII)
        if (flat is None or flags is None or not np.all(np.isfinite(flat)) or not np.all(np.isfinite(flags))
                or np.any(flags < 0)):
            report.skip("bad_keypoints")
            continue
        center = numeric_array(person["center"], 2)
        if center is None or not np.all(np.isfinite(center)):
            report.skip("bad_center")
            continue
        scale = person["scale"]
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not np.isfinite(scale) or scale <= 0:
            report.skip("bad_scale")
            continue
        visible = flags > 0
        xy = np.where(visible[:, None], flat.reshape(NUM_MPII, 2) - offset, 0.0)
        pts, v = remap(xy, visible.astype(np.float32), table)
        if v.sum() < min_keypoints:
            report.skip("too_few_keypoints")
            continue
        kps.append(pts)
        vis.append(v)
        centers.append(center - offset)
        scales.append(float(scale))
        names.append(person["image"])
        report.kept += 1
    k = table.shape[0]
    out = {
        "keypoints": np.asarray(kps, np.float32).reshape(-1, k, 2),
        "visibility": np.asarray(vis, np.float32).reshape(-1, k),
        "center": np.asarray(centers, np.float32).reshape(-1, 2),
        "scale": np.asarray(scales, np.float32),
        "image": np.asarray(names, dtype=str),
        "keypoint_set": keypoint_set,
    }
    return out, report


# ---------------------------------------------------------------------------------------------
# The lifter's 2D corpus

#: COCO-17 keypoint -> our joint (the 12 limb joints; COCO has no pelvis, spine, neck, collars,
#: head joint, feet or hands with the same definition).
COCO17_TO_JOINTS24_NAMES = {
    "L_hip": "left_hip", "R_hip": "right_hip", "L_knee": "left_knee", "R_knee": "right_knee",
    "L_ankle": "left_ankle", "R_ankle": "right_ankle", "L_shoulder": "left_shoulder",
    "R_shoulder": "right_shoulder", "L_elbow": "left_elbow", "R_elbow": "right_elbow",
    "L_wrist": "left_wrist", "R_wrist": "right_wrist",
}
COCO17_TO_JOINTS24 = index_table(skeletons.JOINTS24_NAMES, skeletons.COCO17_NAMES, COCO17_TO_JOINTS24_NAMES)
_COCO_TABLES = {"coco17": np.arange(NUM_COCO_KEYPOINTS), "joints24": COCO17_TO_JOINTS24}


_NEITHER_LAYOUT = ("neither an MPII keypoint file (a JSON list of people with image, center, scale, joints, "
                   "joints_vis) nor a COCO keypoint file (a JSON object with a list 'annotations' of people "
                   "with 'keypoints')")


def keypoint_file_layout(json_path) -> str:
    """``'mpii'`` (a JSON list) or ``'coco'`` (a JSON object), from the file's first character.

    Only the first non-blank bytes are read, so a large COCO file is parsed once, by its loader.

    Raises:
      FileNotFoundError: no such file.
      ValueError: naming the file, when it starts with neither ``[`` nor ``{``.
    """
    json_path = os.fspath(json_path)
    if not os.path.isfile(json_path):
        raise FileNotFoundError(f"keypoint corpus file not found: {json_path}")
    with open(json_path, "rb") as f:
        head = f.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    if head[:1] == b"[":
        return "mpii"
    if head[:1] == b"{":
        return "coco"
    raise ValueError(f"{json_path}: not a keypoint file: expected an MPII JSON list of people or a COCO "
                     f"JSON object with 'annotations', found {head[:20]!r}")


def load_keypoint_corpus(json_path, keypoint_set: str = "coco17", min_keypoints: int = 1) -> dict:
    """A separate 2D keypoint corpus for the lifter (the paper's MPII) from an MPII or COCO JSON.

    The layout is detected from the file (:func:`keypoint_file_layout`): a JSON list is read with
    :func:`load_mpii` (MPII order mapped to ``keypoint_set``; joints MPII lacks get visibility 0), a
    JSON object with :func:`load_coco_keypoints` (COCO-17; for ``'joints24'`` the 12 limb keypoints
    fill their joints, the other joints get visibility 0). Coordinates stay in the file's pixels: the
    lifter normalises every pose by its own root and scale.

    Args:
      json_path: the file.
      keypoint_set: ``'coco17'`` (default) or ``'joints24'`` (also ``'mpii16'`` for an MPII file).
      min_keypoints: people with fewer labelled keypoints (in ``keypoint_set``) are skipped.

    Returns:
      ``{'keypoints': (n, K, 2) float32, 'keypoint_visible': (n, K) float32}`` (the loop's
      :class:`~bodyjax.loop.deform_and_learn.Data` ``corpus``).

    Raises:
      FileNotFoundError: the file does not exist.
      ValueError: naming the file: neither layout matches (the fields found are listed), an unknown
        ``keypoint_set`` for the layout, or no usable person in it (with the loader's skip counts).
    """
    json_path = os.fspath(json_path)
    layout = keypoint_file_layout(json_path)
    if layout == "mpii":
        if keypoint_set not in _MPII_TABLES:
            raise ValueError(f"{json_path}: unknown keypoint set {keypoint_set!r} for an MPII file; "
                             f"expected one of {sorted(_MPII_TABLES)}")
        data, report = load_mpii(json_path, keypoint_set, min_keypoints=min_keypoints)
        keypoints, visible = data["keypoints"], data["visibility"]
    else:
        if keypoint_set not in _COCO_TABLES:
            raise ValueError(f"{json_path}: unknown keypoint set {keypoint_set!r} for a COCO keypoint file; "
                             f"expected one of {sorted(_COCO_TABLES)}")
        try:
            data, report = load_coco_keypoints(json_path, min_keypoints=0)
        except ValueError as e:
            if "annotations" not in str(e):
                raise
            reason = str(e).replace(f"{json_path}: ", "")
            raise ValueError(f"{json_path}: {_NEITHER_LAYOUT} ({reason})") from None
        keypoints, visible = remap(data["keypoints"], data["visibility"], _COCO_TABLES[keypoint_set])
        keep = visible.sum(-1) >= min_keypoints
        if not np.all(keep):
            report.skipped["too_few_keypoints"] += int(np.sum(~keep))
            report.kept -= int(np.sum(~keep))
        keypoints, visible = keypoints[keep], visible[keep]
    if keypoints.shape[0] == 0:
        if report.total and set(report.skipped) <= {"missing_field", "malformed"}:
            raise ValueError(f"{json_path}: {_NEITHER_LAYOUT} (a JSON {'list' if layout == 'mpii' else 'object'} "
                             f"whose {report.total} entries lack those fields: {report})")
        raise ValueError(f"{json_path}: no usable person for the {keypoint_set} lifter corpus ({layout} "
                         f"layout; {report})")
    return {"keypoints": np.ascontiguousarray(keypoints, np.float32),
            "keypoint_visible": np.ascontiguousarray(visible, np.float32)}
