"""Writers of the real data formats from sample records with ground truth (e.g. the synthetic set).

The files are exactly what the real-data loaders read, so the real path (loaders, crops, the
evaluation) runs on them against a known ground truth:

* :func:`write_densepose_coco`: a DensePose-COCO JSON (``images``, ``annotations``, ``categories``)
  plus the images, in the ``manual_dir`` layout of
  :class:`bodyjax.data.tfds_builders.DensePoseCoco` when given its file names; read by
  :func:`bodyjax.data.densepose_coco.load_densepose_coco`;
* :func:`write_mpii`: an MPII-style keypoint JSON list; read by :func:`bodyjax.data.mpii.load_mpii`
  and :func:`bodyjax.data.mpii.load_keypoint_corpus`;
* :func:`write_h36m`: a Human3.6M npz in SPIN's preprocessed layout plus the frames; read by
  :func:`bodyjax.data.h36m.load_h36m` and evaluated by :mod:`bodyjax.loop.h36m_eval`.

What each record becomes
------------------------
DensePose-COCO person (one image per record, the record's image as it is):

* ``bbox [x, y, w, h]``: the tight box of the body's pixels (``iuv`` part 1..24, each pixel the
  square of side 1 around its centre) and of the dense points, widened outwards to
  ``box_decimals`` decimals;
* dense points: ``dp_x = (x - bbox_x) / bbox_w · 255`` (and ``dp_y``), the official frame of
  :mod:`bodyjax.data.densepose_coco`, rounded to ``dp_decimals`` decimals;
  ``dp_I``, ``dp_U``, ``dp_V``: the part (1..24, as floats like the release) and chart coordinates
  of each point's vertex on the body (``template.part_ids``, ``template.uv``);
* ``keypoints``: the record's COCO-17 keypoints rounded to ``kp_decimals`` with ``v = 2`` when
  visible, ``v = 1`` when hidden but inside the image (labelled, occluded), ``v = 0`` and ``[0, 0]``
  outside it; ``num_keypoints`` counts ``v > 0``;
* ``area`` is the body's pixel count; ``dp_masks`` and ``segmentation`` are not written (the
  loaders ignore them).

Round trip (measured in ``tests/test_real_data.py``): a loaded point is
``bbox_x + round(dp_x, d) / 255 · bbox_w``, so it differs from the original by at most
``0.5 · 10^-d · bbox_w / 255`` pixels (x; ``bbox_h`` for y) plus the float32 rounding of the loaded
value (at most ``2^-24 · x``: 8e-6 px below 128 px); keypoints by at most ``0.5 · 10^-kp_decimals`` px
plus the same. Measured on 36 people at 128 px with ``d = 2``: 2.2e-3 px at most (the bound's value),
and every one of 4,522 points maps back to its own vertex (full-precision U, V; 98.7 % when U, V are
rounded to 2 decimals). ``(I, U, V)`` maps back to the same vertex
unless another vertex of the part has the same chart coordinates (a seam duplicate).

MPII person: the MPII-16 joints with a counterpart in the record's keypoint set
(:data:`bodyjax.data.mpii.MPII_TO_COCO17`, :data:`~bodyjax.data.mpii.MPII_TO_JOINTS24`) are the
record's keypoints with its visibility as ``joints_vis``; the others come from the ground-truth body
when the record has one (pelvis: the pelvis joint; thorax: the neck joint; upper neck: the head
joint; head top: the head-top vertex of :func:`bodyjax.data.h36m.default_body_h36m_map`), annotated
when inside the image, else ``[-1, -1]`` with flag 0. Coordinates are written 1-based (MATLAB) as
the release; ``center`` is the box centre and ``scale`` the box height / 200.

Human3.6M frame: each record's image is pasted into a black canvas of side ``S + 2 pad`` at an
integer offset; ``center`` is the pasted image's centre and ``scale = S / (200 · context)``, so the
evaluation's crop (box of side ``200 · scale`` enlarged ``context`` times) is the pasted image pixel
for pixel. ``S`` holds the H36M-17 joints of the ground-truth body (a :class:`~bodyjax.data.h36m.JointMap`)
relative to its pelvis, in metres, in SPIN's 24 slots; ``part`` their projections on the canvas.
Subjects and actions are assigned in turn (Protocol #1 training subjects to the ``'train'`` records,
S9/S11 to the ``'test'`` ones) and written into ``imgname`` as ``images/S<n>_<Action>_1.54138969_<i>.<ext>``.
"""
from __future__ import annotations

import json
import math
import os
from typing import Mapping, Optional, Sequence

import cv2
import numpy as np

from bodyjax import body, skeletons
from bodyjax.data import h36m, mpii, sample as sample_lib, transforms

COCO_CATEGORY = {
    "id": 1, "name": "person", "supercategory": "person", "keypoints": list(skeletons.COCO17_NAMES),
    "skeleton": [[16, 14], [14, 12], [17, 15], [15, 13], [12, 13], [6, 12], [7, 13], [6, 7], [6, 8],
                 [7, 9], [8, 10], [9, 11], [2, 3], [1, 2], [1, 3], [2, 4], [3, 5], [4, 6], [5, 7]],
}


def _records_list(records: Mapping[str, np.ndarray]) -> int:
    n = len(records["keypoints"])
    for key in ("image", "iuv", "dense_xy", "dense_vertex", "dense_mask", "keypoint_visible"):
        if key not in records:
            raise ValueError(f"export: records lack field {key!r}")
        if len(records[key]) != n:
            raise ValueError(f"export: field {key!r} has {len(records[key])} rows, 'keypoints' has {n}")
    return n


def _floor(x: float, decimals: int) -> float:
    return math.floor(x * 10 ** decimals) / 10 ** decimals


def _ceil(x: float, decimals: int) -> float:
    return math.ceil(x * 10 ** decimals) / 10 ** decimals


def write_image(path: str, image: np.ndarray, quality: int = 95) -> None:
    """Writes an RGB uint8 image (JPEG with ``quality`` or PNG, from the extension)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)] if path.lower().endswith((".jpg", ".jpeg")) else []
    if not cv2.imwrite(path, cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2BGR), params):
        raise OSError(f"cannot write image file: {path}")


def person_box(record: Mapping[str, np.ndarray], decimals: int = 2) -> np.ndarray:
    """COCO ``[x, y, w, h]`` around the body pixels and the dense points (see the module docstring)."""
    part = np.asarray(record["iuv"])[..., 0]
    ys, xs = np.nonzero((part >= 1) & (part <= 24))
    pts = np.asarray(record["dense_xy"], np.float64)[np.asarray(record["dense_mask"]) > 0]
    lo = [np.inf, np.inf]
    hi = [-np.inf, -np.inf]
    if xs.size:
        lo = [xs.min() - 0.5, ys.min() - 0.5]
        hi = [xs.max() + 0.5, ys.max() + 0.5]
    if pts.size:
        lo = np.minimum(lo, pts.min(0))
        hi = np.maximum(hi, pts.max(0))
    if not np.all(np.isfinite(lo)):
        raise ValueError("export: a record has neither body pixels nor dense points: no person box")
    x0, y0 = _floor(float(lo[0]), decimals), _floor(float(lo[1]), decimals)
    x1, y1 = _ceil(float(hi[0]), decimals), _ceil(float(hi[1]), decimals)
    return np.array([x0, y0, round(x1 - x0, decimals), round(y1 - y0, decimals)], np.float64)


def coco_keypoint_flags(keypoints: np.ndarray, visible: np.ndarray, image_hw) -> np.ndarray:
    """``(K, 3)`` COCO ``[x, y, v]``: 2 visible, 1 hidden inside the image, 0 (and ``[0, 0]``) outside."""
    kp = np.asarray(keypoints, np.float64)
    inside = transforms.inside(kp, tuple(image_hw))
    v = np.where(np.asarray(visible) > 0, 2.0, np.where(inside, 1.0, 0.0))
    xy = np.where(v[:, None] > 0, kp, 0.0)
    return np.concatenate([xy, v[:, None]], axis=-1)


def _round_list(values, decimals: Optional[int]) -> list:
    values = np.asarray(values, np.float64)
    if decimals is not None:
        values = np.round(values, decimals)
    return [float(v) for v in values.reshape(-1)]


def densepose_annotation(record: Mapping[str, np.ndarray], template: body.BodyTemplate, image_id: int,
                         annotation_id: int, dp_decimals: int = 2, uv_decimals: Optional[int] = None,
                         kp_decimals: int = 2, box_decimals: int = 2) -> dict:
    """One DensePose-COCO person annotation of a record (its dense points, COCO-17 keypoints, box).

    Args:
      record: one sample record (its ``image``, ``iuv``, ``dense_*``, ``keypoints`` fields).
      template: the body the record's ``dense_vertex`` refer to (its ``part_ids``, ``uv``).
      image_id, annotation_id: the COCO ids.
      dp_decimals, uv_decimals, kp_decimals, box_decimals: rounding of ``dp_x/dp_y``, ``dp_U/dp_V``
        (``None``: full float precision), keypoints and ``bbox``.
    """
    kp = np.asarray(record["keypoints"])
    if kp.shape[0] != len(skeletons.COCO17_NAMES):
        raise ValueError(f"export: DensePose-COCO keypoints are COCO-17; the record has {kp.shape[0]} keypoints "
                         "(make the data with keypoint_set='coco17')")
    hw = np.asarray(record["image"]).shape[:2]
    box = person_box(record, box_decimals)
    mask = np.asarray(record["dense_mask"]) > 0
    xy = np.asarray(record["dense_xy"], np.float64)[mask]
    vid = np.asarray(record["dense_vertex"])[mask]
    parts = np.asarray(template.part_ids)[vid].astype(np.float64)
    uv = np.asarray(template.uv, np.float64)[vid]
    dp_x = np.clip((xy[:, 0] - box[0]) / box[2] * 255.0, 0.0, 255.0)
    dp_y = np.clip((xy[:, 1] - box[1]) / box[3] * 255.0, 0.0, 255.0)
    coco = coco_keypoint_flags(kp, record["keypoint_visible"], hw)
    coco[:, :2] = np.round(coco[:, :2], kp_decimals)
    part_px = np.asarray(record["iuv"])[..., 0]
    return {
        "id": int(annotation_id), "image_id": int(image_id), "category_id": 1, "iscrowd": 0,
        "bbox": [float(v) for v in box],
        "area": float(np.sum((part_px >= 1) & (part_px <= 24))),
        "num_keypoints": int(np.sum(coco[:, 2] > 0)),
        "keypoints": [float(v) for v in coco.reshape(-1)],
        "dp_x": _round_list(dp_x, dp_decimals), "dp_y": _round_list(dp_y, dp_decimals),
        "dp_I": _round_list(parts, None),
        "dp_U": _round_list(uv[:, 0], uv_decimals), "dp_V": _round_list(uv[:, 1], uv_decimals),
    }


def write_densepose_coco(records: Mapping[str, np.ndarray], json_path: str, image_dir: str,
                         template: body.BodyTemplate, file_prefix: str = "synthetic",
                         image_format: str = "jpg", quality: int = 95, first_id: int = 1,
                         **rounding) -> dict:
    """Writes stacked records as a DensePose-COCO JSON plus one image per record.

    Args:
      records: stacked sample records (``{key: (M, ...)}``, e.g. :func:`bodyjax.data.synthetic.make_split`).
      json_path: the annotation file to write.
      image_dir: the image folder (``file_name`` is relative to it).
      template: the body of the records' vertices.
      file_prefix: image file names are ``{file_prefix}_{i:06d}.{image_format}``.
      image_format: ``'jpg'`` (COCO's; lossy) or ``'png'`` (lossless).
      quality: JPEG quality.
      first_id: id of the first image and annotation.
      **rounding: ``dp_decimals``, ``uv_decimals``, ``kp_decimals``, ``box_decimals`` of
        :func:`densepose_annotation`.

    Returns:
      The written JSON object.
    """
    n = _records_list(records)
    images, annotations = [], []
    for i in range(n):
        rec = {k: np.asarray(v[i]) for k, v in records.items()}
        image_id = first_id + i
        name = f"{file_prefix}_{i:06d}.{image_format}"
        write_image(os.path.join(image_dir, name), rec["image"], quality)
        h, w = rec["image"].shape[:2]
        images.append({"id": image_id, "file_name": name, "width": int(w), "height": int(h)})
        annotations.append(densepose_annotation(rec, template, image_id, image_id, **rounding))
    data = {"info": {"description": "bodyjax synthetic people in the DensePose-COCO format"},
            "images": images, "annotations": annotations, "categories": [COCO_CATEGORY]}
    os.makedirs(os.path.dirname(os.path.abspath(json_path)), exist_ok=True)
    with open(json_path, "w") as f:
        json.dump(data, f)
    return data


# ---------------------------------------------------------------------------------------------
# Ground-truth bodies


def gt_points(template: body.BodyTemplate, records: Mapping[str, np.ndarray],
              vertex_ids) -> tuple[np.ndarray, np.ndarray]:
    """The ground-truth bodies' camera-frame joints ``(M, 24, 3)`` and vertices ``vertex_ids``
    ``(M, U, 3)`` (float64, metres, ``R X``), posed by the synthetic generator's jitted
    :func:`bodyjax.body.forward` (one compilation shared with the generator).

    Raises:
      ValueError: a record has no ground truth (``has_gt = 0``).
    """
    if not np.all(np.asarray(records.get("has_gt", 0.0)) > 0):
        raise ValueError("export: every record needs its ground truth (has_gt = 1)")
    from bodyjax.data.synthetic import scene  # noqa: PLC0415 - the generator's jitted forward pass

    posed = scene.pose_bodies(template, sample_lib.params_from_record(records, "gt"))
    ids = np.asarray(vertex_ids, np.int64)
    return np.asarray(posed.joints, np.float64), np.asarray(posed.vertices, np.float64)[:, ids]


def project(points: np.ndarray, records: Mapping[str, np.ndarray]) -> np.ndarray:
    """Weak-perspective image positions ``s · xy + t`` of camera-frame points ``(M, N, 3)``, pixels."""
    s = np.asarray(records["gt_scale"], np.float64)[:, None, None]
    t = np.asarray(records["gt_translation"], np.float64)[:, None, :]
    return s * np.asarray(points, np.float64)[..., :2] + t


def h36m_ground_truth(template: body.BodyTemplate, records: Mapping[str, np.ndarray],
                      joint_map: h36m.JointMap) -> tuple[np.ndarray, np.ndarray]:
    """H36M-17 of the ground-truth bodies: ``(M, 17, 3)`` metres relative to the pelvis, and
    ``(M, 17, 2)`` their projections in the records' pixels."""
    joints, vertices = gt_points(template, records, joint_map.vertex_ids)
    j17 = joint_map.apply(joints, vertices)
    return j17 - j17[:, :1], project(j17, records)


# ---------------------------------------------------------------------------------------------
# MPII


def _mpii_sources(keypoint_set: str) -> np.ndarray:
    """``(16,)`` index into the record's keypoints of each MPII joint, ``-1`` where none."""
    table = {"coco17": mpii.MPII_TO_COCO17, "joints24": mpii.MPII_TO_JOINTS24}[keypoint_set]
    out = np.full(mpii.NUM_MPII, -1, np.int64)
    for target, source in enumerate(table):
        if source >= 0:
            out[source] = target
    return out


def mpii_people(records: Mapping[str, np.ndarray], image_names: Sequence[str], template: body.BodyTemplate,
                kp_decimals: int = 2) -> list:
    """The MPII-style person objects of stacked records (see the module docstring)."""
    n = _records_list(records)
    k = np.asarray(records["keypoints"]).shape[1]
    keypoint_set = skeletons.keypoint_set_for(k).name
    sources = _mpii_sources(keypoint_set)
    names = {n_: i for i, n_ in enumerate(body.JOINT_NAMES)}
    # the head top is vertex 0 of the default body's H36M map
    ids = h36m.default_body_h36m_map(template).vertex_ids
    from_body = {"pelvis": ("joint", names["pelvis"]), "thorax": ("joint", names["neck"]),
                 "upper_neck": ("joint", names["head"]), "head_top": ("vertex", 0)}
    has_gt = np.all(np.asarray(records.get("has_gt", 0.0)) > 0)
    if has_gt:
        joints, vertices = gt_points(template, records, ids)
        joints2d, vertices2d = project(joints, records), project(vertices, records)
    people = []
    for i in range(n):
        hw = np.asarray(records["image"][i]).shape[:2]
        xy = np.full((mpii.NUM_MPII, 2), -1.0)
        vis = np.zeros(mpii.NUM_MPII)
        for m, name in enumerate(mpii.MPII16_NAMES):
            if sources[m] >= 0:
                if records["keypoint_visible"][i][sources[m]] > 0:
                    xy[m] = records["keypoints"][i][sources[m]]
                    vis[m] = 1.0
            elif has_gt and name in from_body:
                kind, j = from_body[name]
                p = joints2d[i, j] if kind == "joint" else vertices2d[i, j]
                if transforms.inside(p, tuple(hw)):
                    xy[m], vis[m] = p, 1.0
        box = person_box({k_: records[k_][i] for k_ in ("iuv", "dense_xy", "dense_mask")})
        one_based = np.where(vis[:, None] > 0, np.round(xy + 1.0, kp_decimals), -1.0)
        people.append({
            "image": str(image_names[i]),
            "center": [round(float(box[0] + box[2] / 2 + 1.0), kp_decimals),
                       round(float(box[1] + box[3] / 2 + 1.0), kp_decimals)],
            "scale": float(box[3] / 200.0),
            "joints": [[float(a), float(b)] for a, b in one_based],
            "joints_vis": [int(v) for v in vis],
        })
    return people


def write_mpii(records: Mapping[str, np.ndarray], json_path: str, image_names: Sequence[str],
               template: body.BodyTemplate, kp_decimals: int = 2) -> list:
    """Writes stacked records as an MPII-style JSON list (:func:`mpii_people`); returns the list."""
    people = mpii_people(records, image_names, template, kp_decimals)
    os.makedirs(os.path.dirname(os.path.abspath(json_path)), exist_ok=True)
    with open(json_path, "w") as f:
        json.dump(people, f)
    return people


# ---------------------------------------------------------------------------------------------
# Human3.6M

#: Camera id written into the exported image names (one of H36M's four).
H36M_CAMERA = "54138969"


def h36m_assignment(split: str, n: int) -> tuple[np.ndarray, list]:
    """Subjects and actions given in turn to ``n`` records of ``split`` (``'train'`` or ``'test'``)."""
    subjects = h36m.PROTOCOL1_SUBJECTS[split]
    k = len(subjects)
    subj = np.array([subjects[i % k] for i in range(n)], np.int32)
    actions = [h36m.ACTIONS[(i // k) % len(h36m.ACTIONS)] for i in range(n)]
    return subj, actions


def write_h36m(npz_path: str, image_root: str, template: body.BodyTemplate, joint_map: h36m.JointMap,
               splits: Mapping[str, Mapping[str, np.ndarray]], context: float = 1.2, pad: Optional[int] = None,
               image_format: str = "jpg", quality: int = 95) -> dict:
    """Writes records as a Human3.6M npz in SPIN's layout plus the frames (see the module docstring).

    Args:
      npz_path: the file to write.
      image_root: ``imgname`` is relative to it (``images/S9_...``).
      template: the body of the records' ground truth.
      joint_map: H36M-17 on that body (:func:`bodyjax.data.h36m.default_body_h36m_map`, or
        :func:`~bodyjax.data.h36m.regressor_h36m_map` for SMPL).
      splits: ``{'train': records, 'test': records}`` (either may be missing): the Protocol #1 role
        of the records (training subjects or S9/S11).
      context: the evaluation's crop context (the written ``scale`` makes its crop the image).
      pad: canvas border in pixels (default: half the image side).
      image_format, quality: ``'jpg'`` (H36M's) or ``'png'`` (lossless).

    Returns:
      The arrays written (``imgname``, ``center``, ``scale``, ``part``, ``S``).
    """
    rows = {"imgname": [], "center": [], "scale": [], "part": [], "S": []}
    index = 0
    for split in ("train", "test"):
        if split not in splits:
            continue
        records = splits[split]
        n = _records_list(records)
        j17, p17 = h36m_ground_truth(template, records, joint_map)
        subjects, actions = h36m_assignment(split, n)
        for i in range(n):
            image = np.asarray(records["image"][i])
            size = image.shape[0]
            if image.shape[1] != size:
                raise ValueError(f"export: H36M frames need square images, got {image.shape[:2]}")
            border = size // 2 if pad is None else int(pad)
            span = 2 * border + 1
            ox, oy = (7 * index) % span, (13 * index) % span
            canvas = np.zeros((size + 2 * border, size + 2 * border, 3), np.uint8)
            canvas[oy:oy + size, ox:ox + size] = image
            name = f"images/S{subjects[i]}_{actions[i]}_1.{H36M_CAMERA}_{index + 1:06d}.{image_format}"
            write_image(os.path.join(image_root, name), canvas, quality)
            rows["imgname"].append(name)
            rows["center"].append([ox + (size - 1) / 2.0, oy + (size - 1) / 2.0])
            rows["scale"].append(size / (200.0 * context))
            rows["part"].append(h36m.spin24_from_h36m17(p17[i] + np.array([ox, oy])))
            rows["S"].append(h36m.spin24_from_h36m17(j17[i]))
            index += 1
    if not rows["imgname"]:
        raise ValueError("export: no records for the H36M npz (splits 'train' / 'test')")
    arrays = {"imgname": np.array(rows["imgname"]), "center": np.array(rows["center"], np.float64),
              "scale": np.array(rows["scale"], np.float64), "part": np.stack(rows["part"]),
              "S": np.stack(rows["S"])}
    os.makedirs(os.path.dirname(os.path.abspath(npz_path)), exist_ok=True)
    np.savez(npz_path, **arrays)
    return arrays


# ---------------------------------------------------------------------------------------------
# Everything at once

#: Where :func:`export_all` puts each split, relative to its output folder.
LAYOUT = {
    "train": {"densepose_json": "densepose/densepose_coco_2014_train.json", "densepose_images": "densepose/train2014",
              "mpii_json": "mpii/train.json", "prefix": "synthetic_train"},
    "test": {"densepose_json": "densepose/densepose_coco_2014_minival.json", "densepose_images": "densepose/val2014",
             "mpii_json": "mpii/valid.json", "prefix": "synthetic_test"},
}
H36M_NPZ = "h36m/h36m_protocol1.npz"
H36M_IMAGES = "h36m"


def export_all(out_dir: str, splits: Mapping[str, Mapping[str, np.ndarray]], template: body.BodyTemplate,
               joint_map: Optional[h36m.JointMap] = None, image_format: str = "jpg", quality: int = 95,
               context: float = 1.2, **rounding) -> dict:
    """Writes ``{'train': records, 'test': records}`` in all three formats under ``out_dir``.

    Layout (:data:`LAYOUT`): ``densepose/`` is a ``manual_dir`` of
    :func:`bodyjax.data.tfds_builders.build_densepose_coco` (splits ``train`` and ``minival``);
    ``mpii/train.json``, ``mpii/valid.json`` name the DensePose images (``densepose/train2014``,
    ``densepose/val2014``); ``h36m/h36m_protocol1.npz`` with its frames under ``h36m/images``
    (training records as S1, S5, S6, S7, S8, test records as S9, S11).

    Returns:
      ``{name: path}`` of the written files and folders.
    """
    joint_map = h36m.default_body_h36m_map(template) if joint_map is None else joint_map
    paths = {}
    for split, records in splits.items():
        where = LAYOUT[split]
        json_path = os.path.join(out_dir, where["densepose_json"])
        image_dir = os.path.join(out_dir, where["densepose_images"])
        dp = write_densepose_coco(records, json_path, image_dir, template, where["prefix"], image_format,
                                  quality, **rounding)
        names = [img["file_name"] for img in dp["images"]]
        mpii_path = os.path.join(out_dir, where["mpii_json"])
        write_mpii(records, mpii_path, names, template, rounding.get("kp_decimals", 2))
        paths.update({f"densepose_{split}": json_path, f"densepose_{split}_images": image_dir,
                      f"mpii_{split}": mpii_path})
    npz_path = os.path.join(out_dir, H36M_NPZ)
    write_h36m(npz_path, os.path.join(out_dir, H36M_IMAGES), template, joint_map, splits, context,
               image_format=image_format, quality=quality)
    paths.update({"h36m_npz": npz_path, "h36m_images": os.path.join(out_dir, H36M_IMAGES),
                  "densepose_manual_dir": os.path.join(out_dir, "densepose")})
    return paths
