"""DensePose-COCO loader: per-person dense correspondences and COCO keypoints → sample records.

File format (the DensePose-COCO release, e.g. ``densepose_coco_2014_train.json``; a COCO JSON):

* ``images``: list of ``{"id": int, "file_name": str, "width": int, "height": int, ...}``;
* ``annotations``: list of person annotations with ``image_id``, ``bbox [x, y, w, h]`` (pixels),
  ``keypoints`` (17 × ``[x, y, v]`` flattened, COCO-17 order, ``v`` 0 = not labelled, 1 = labelled
  but occluded, 2 = labelled and visible), ``num_keypoints``, ``iscrowd`` and, for the ~50k
  annotated people, the DensePose fields ``dp_x``, ``dp_y`` (point positions in the box rescaled to
  256 × 256, values 0..255), ``dp_I`` (part 1..24, stored as floats), ``dp_U``, ``dp_V`` (chart
  coordinates in [0, 1]) and ``dp_masks`` (14 RLE part masks of the 256 × 256 box).

Conventions decided here:

* Point positions: ``x = bbox_x + dp_x / 255 · bbox_w``, ``y = bbox_y + dp_y / 255 · bbox_h``, as in
  the official DensePose-COCO visualisation notebook (which additionally rounds the box; we use the
  box as stored). detectron2's ``DensePoseDataRelative`` documents ``x0 + dp_x / 256 · w`` instead;
  pass ``box_frame=256.0`` for that reading. The two differ by at most ``w / 256`` pixels.
* Pixel coordinates (dense points, COCO keypoints) are used as stored, i.e. as OpenCV pixel-centre
  coordinates (the project convention); no half-pixel shift is applied.
* Keypoint visibility is ``v > 0`` (labelled, occluded or not); unlabelled keypoints are zeroed.
* ``dp_masks`` are IGNORED (the method only uses the point correspondences).
* Each point is matched to a body vertex by :class:`bodyjax.data.iuv.IUVIndex` (nearest vertex in
  the point's part chart). With the default template this is approximate (own charts); with SMPL and
  the official per-vertex IUV table it is exact (see :mod:`bodyjax.data.iuv`).
* More than ``max_points`` points: a deterministic, evenly strided subset
  (indices ``floor(i · n / max_points)``) — DensePose stores points part by part, so striding keeps
  every part's share.

Robustness: a file that is not valid JSON, is not a JSON object, or lacks a list ``images`` /
``annotations`` raises ``ValueError`` naming the file and field. Bad ANNOTATIONS never raise: they
are skipped and counted by reason in a :class:`LoadReport` (reasons in :data:`SKIP_REASONS`).
"""
from __future__ import annotations

import collections
import dataclasses
import json
import os
from typing import Any, Iterator, Mapping, Optional, Sequence

import cv2
import numpy as np

from bodyjax.data import sample as sample_lib
from bodyjax.data import transforms
from bodyjax.data.iuv import NUM_PARTS, IUVIndex

NUM_COCO_KEYPOINTS = 17
DP_FIELDS = ("dp_x", "dp_y", "dp_I", "dp_U", "dp_V")

#: Why an annotation was skipped.
SKIP_REASONS = {
    "malformed": "annotation is not a JSON object",
    "crowd": "iscrowd is set",
    "no_densepose": "no dp_* fields (person without DensePose points)",
    "missing_field": "a required field is missing (image_id, bbox, keypoints or some of dp_x/dp_y/dp_I/dp_U/dp_V)",
    "unknown_image": "image_id not among the valid images",
    "bad_bbox": "bbox is not 4 finite numbers with positive width and height",
    "bad_keypoints": "keypoints is not 51 finite numbers with v in {0, 1, 2}",
    "bad_type": "a dp_* field is not a flat list of numbers",
    "length_mismatch": "dp_x, dp_y, dp_I, dp_U, dp_V have different lengths",
    "empty_points": "the dp_* lists are empty",
    "non_finite": "a dp_* value is NaN or infinite",
    "bad_dp_xy": "dp_x / dp_y outside the box frame [0, 256]",
    "bad_part": "dp_I not an integer in 1..24",
    "bad_uv": "dp_U / dp_V outside [0, 1]",
    "part_not_in_index": "a dp_I part has no vertex in the IUV index",
    "too_few_points": "fewer than min_points points",
    "too_few_keypoints": "fewer than min_keypoints labelled keypoints",
}


@dataclasses.dataclass
class LoadReport:
    """What a loader read and skipped.

    Attributes:
      source: the file read.
      total: number of entries (annotations / people) seen.
      kept: number of entries returned.
      skipped: ``Counter`` reason -> count (reasons documented by the loader, e.g. :data:`SKIP_REASONS`).
      bad_images: image entries that could not be used (missing/invalid ``id`` or ``file_name``).
      points_total: dense points in the kept annotations before the ``max_points`` cap.
      points_kept: dense points returned.
    """

    source: str
    total: int = 0
    kept: int = 0
    skipped: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    bad_images: int = 0
    points_total: int = 0
    points_kept: int = 0

    def skip(self, reason: str) -> None:
        self.skipped[reason] += 1

    @property
    def num_skipped(self) -> int:
        return int(sum(self.skipped.values()))

    def as_dict(self) -> dict:
        return {"source": self.source, "total": self.total, "kept": self.kept,
                "skipped": dict(self.skipped), "bad_images": self.bad_images,
                "points_total": self.points_total, "points_kept": self.points_kept}

    def __str__(self) -> str:
        reasons = ", ".join(f"{k}={v}" for k, v in sorted(self.skipped.items())) or "none"
        return (f"{self.source}: kept {self.kept}/{self.total} (skipped: {reasons}; "
                f"bad image entries: {self.bad_images})")


# ---------------------------------------------------------------------------------------------
# Shared parsing helpers (also used by bodyjax.data.mpii)


def read_json(path, required: Sequence[str] = (), kind: str = "JSON") -> Any:
    """Reads a JSON file; raises with the file (and field) named on any file-level problem.

    Args:
      path: the file.
      required: top-level fields that must be present and be lists (the top level must then be an
        object).
      kind: name of the format for the messages.

    Raises:
      FileNotFoundError: the file does not exist.
      ValueError: not valid JSON, or a required field is missing / not a list.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{kind} file not found: {path}")
    try:
        with open(path, "rb") as f:
            data = json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a valid {kind} file (JSON parse error: {e})") from e
    if required:
        if not isinstance(data, dict):
            raise ValueError(f"{path}: the top level of a {kind} file must be a JSON object with fields "
                             f"{list(required)}, got {type(data).__name__}")
        for field in required:
            if field not in data:
                raise ValueError(f"{path}: missing top-level field {field!r} of a {kind} file")
            if not isinstance(data[field], list):
                raise ValueError(f"{path}: field {field!r} must be a list, got {type(data[field]).__name__}")
    return data


def numeric_array(value, length: Optional[int] = None) -> Optional[np.ndarray]:
    """``value`` as a flat float64 array if it is a list of plain numbers (of ``length``), else None.

    Booleans, strings, ``None`` and nested lists are rejected. NaN/inf are NOT rejected here.
    """
    if not isinstance(value, (list, tuple)):
        return None
    if any(isinstance(v, bool) for v in value):
        return None
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError):
        return None
    if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iuf"):
        return None
    if length is not None and arr.shape[0] != length:
        return None
    return arr.astype(np.float64)


def parse_coco_keypoints(value, num_keypoints: int = NUM_COCO_KEYPOINTS):
    """COCO flat ``[x1, y1, v1, ...]`` → ``(keypoints (K, 2) f32, visible (K,) f32)`` or None if bad.

    Visibility is ``v > 0``; unlabelled keypoints are zeroed. Bad: wrong length, non-numeric,
    non-finite, or ``v`` not in {0, 1, 2}.
    """
    arr = numeric_array(value, 3 * num_keypoints)
    if arr is None or not np.all(np.isfinite(arr)):
        return None
    arr = arr.reshape(num_keypoints, 3)
    if not np.all(np.isin(arr[:, 2], (0.0, 1.0, 2.0))):
        return None
    visible = arr[:, 2] > 0
    xy = np.where(visible[:, None], arr[:, :2], 0.0)
    return xy.astype(np.float32), visible.astype(np.float32)


def keypoints_or_skip(value, report: "LoadReport", min_keypoints: int = 0):
    """:func:`parse_coco_keypoints` of an annotation's ``keypoints``, or ``None`` after counting the
    skip in ``report`` (``bad_keypoints``, or ``too_few_keypoints`` below ``min_keypoints`` labelled)."""
    parsed = parse_coco_keypoints(value)
    if parsed is None:
        report.skip("bad_keypoints")
        return None
    if parsed[1].sum() < min_keypoints:
        report.skip("too_few_keypoints")
        return None
    return parsed


def parse_bbox(value) -> Optional[np.ndarray]:
    """COCO ``[x, y, w, h]`` → ``(4,)`` float64, or None if not 4 finite numbers with ``w, h > 0``."""
    arr = numeric_array(value, 4)
    if arr is None or not np.all(np.isfinite(arr)) or arr[2] <= 0 or arr[3] <= 0:
        return None
    return arr


def _image_table(images: list, report: LoadReport) -> dict:
    table = {}
    for img in images:
        ok = (isinstance(img, dict) and isinstance(img.get("id"), int) and not isinstance(img.get("id"), bool)
              and isinstance(img.get("file_name"), str) and img["id"] not in table)
        if not ok:
            report.bad_images += 1
            continue
        h, w = img.get("height"), img.get("width")
        hw = (int(h), int(w)) if isinstance(h, int) and isinstance(w, int) else None
        table[img["id"]] = (img["file_name"], hw)
    return table


def strided_subset(n: int, max_points: Optional[int]) -> np.ndarray:
    """Deterministic evenly strided ``min(n, max_points)`` indices of ``range(n)`` (sorted, unique)."""
    if max_points is None or n <= max_points:
        return np.arange(n)
    return (np.arange(max_points) * n) // max_points


# ---------------------------------------------------------------------------------------------
# Loading


def _parse_dense(ann: Mapping, index: IUVIndex, box_frame: float, bbox: np.ndarray):
    """(xy (n, 2), vertex (n,), iuv (n, 3)) or a skip reason string."""
    cols = [numeric_array(ann[f]) for f in DP_FIELDS]
    if any(c is None for c in cols):
        return "bad_type"
    if len({c.shape[0] for c in cols}) != 1:
        return "length_mismatch"
    dx, dy, di, du, dv = cols
    if dx.shape[0] == 0:
        return "empty_points"
    if not all(np.all(np.isfinite(c)) for c in cols):
        return "non_finite"
    if np.any((dx < 0) | (dx > 256) | (dy < 0) | (dy > 256)):
        return "bad_dp_xy"
    if np.any((di != np.round(di)) | (di < 1) | (di > NUM_PARTS)):
        return "bad_part"
    if np.any((du < 0) | (du > 1) | (dv < 0) | (dv > 1)):
        return "bad_uv"
    uv = np.stack([du, dv], axis=-1)
    if not np.all(index.valid(di, uv)):
        return "part_not_in_index"
    vertex = index.lookup(di, uv, strict=True)
    x = bbox[0] + dx / box_frame * bbox[2]
    y = bbox[1] + dy / box_frame * bbox[3]
    return np.stack([x, y], axis=-1), vertex, np.stack([di, du, dv], axis=-1)


def load_densepose_coco(json_path, image_dir, index: IUVIndex, image_size=(224, 224),
                        max_points: Optional[int] = 200, box_frame: float = 255.0,
                        min_points: int = 1, min_keypoints: int = 0) -> tuple[list, LoadReport]:
    """Parses a DensePose-COCO JSON into person records.

    Args:
      json_path: the annotation file.
      image_dir: folder of the images (``file_name`` is joined to it).
      index: the :class:`~bodyjax.data.iuv.IUVIndex` of the body the correspondences refer to.
      image_size: ``(H, W)`` (or ``H``) of the samples later made from the records (stored in each
        record as the default of :func:`make_sample` / :func:`load_sample`).
      max_points: cap on dense points per person (deterministic strided subset); None = keep all.
      box_frame: divisor of ``dp_x``/``dp_y`` (255: official notebook, 256: detectron2).
      min_points: annotations with fewer valid points are skipped (``too_few_points``).
      min_keypoints: annotations with fewer labelled keypoints are skipped (``too_few_keypoints``).

    Returns:
      ``(records, report)``. Each record is a dict: ``image_id``, ``annotation_id`` (``-1`` if
      absent), ``file_name``, ``image_path``, ``image_hw`` (``(H, W)`` from the JSON or None),
      ``bbox (4,)`` float64, ``keypoints (17, 2)`` / ``keypoint_visible (17,)`` float32,
      ``dense_xy (n, 2)`` float32 image pixels, ``dense_vertex (n,)`` int32, ``dense_iuv (n, 3)``
      float32 (the annotation's I, U, V), ``num_points`` (before the cap), ``image_size``,
      ``max_points``.

    Raises:
      FileNotFoundError / ValueError: file-level problems only (see the module docstring).
    """
    json_path = os.fspath(json_path)
    h, w = transforms.size_hw(image_size)
    if not (box_frame > 0):
        raise ValueError(f"box_frame must be positive, got {box_frame}")
    data = read_json(json_path, required=("images", "annotations"), kind="DensePose-COCO")
    report = LoadReport(source=json_path)
    images = _image_table(data["images"], report)
    records = []
    for ann in data["annotations"]:
        report.total += 1
        if not isinstance(ann, dict):
            report.skip("malformed")
            continue
        if ann.get("iscrowd"):
            report.skip("crowd")
            continue
        present = [f in ann for f in DP_FIELDS]
        if not any(present):
            report.skip("no_densepose")
            continue
        if not all(present) or any(f not in ann for f in ("image_id", "bbox", "keypoints")):
            report.skip("missing_field")
            continue
        image_id = ann["image_id"]
        if isinstance(image_id, bool) or not isinstance(image_id, int) or image_id not in images:
            report.skip("unknown_image")
            continue
        bbox = parse_bbox(ann["bbox"])
        if bbox is None:
            report.skip("bad_bbox")
            continue
        kps = keypoints_or_skip(ann["keypoints"], report, min_keypoints)
        if kps is None:
            continue
        dense = _parse_dense(ann, index, float(box_frame), bbox)
        if isinstance(dense, str):
            report.skip(dense)
            continue
        xy, vertex, iuv = dense
        if xy.shape[0] < min_points:
            report.skip("too_few_points")
            continue
        keep = strided_subset(xy.shape[0], max_points)
        file_name, hw = images[image_id]
        ann_id = ann.get("id", -1)
        records.append({
            "image_id": image_id,
            "annotation_id": ann_id if isinstance(ann_id, int) else -1,
            "file_name": file_name,
            "image_path": os.path.join(os.fspath(image_dir), file_name),
            "image_hw": hw,
            "bbox": bbox,
            "keypoints": kps[0],
            "keypoint_visible": kps[1],
            "dense_xy": xy[keep].astype(np.float32),
            "dense_vertex": vertex[keep].astype(np.int32),
            "dense_iuv": iuv[keep].astype(np.float32),
            "num_points": int(xy.shape[0]),
            "image_size": (h, w),
            "max_points": max_points,
        })
        report.kept += 1
        report.points_total += int(xy.shape[0])
        report.points_kept += int(keep.shape[0])
    return records, report


# ---------------------------------------------------------------------------------------------
# Samples


def read_image(path) -> np.ndarray:
    """Reads an image as ``(H, W, 3)`` uint8 RGB with OpenCV.

    Raises:
      FileNotFoundError: the file does not exist (named in the message).
      ValueError: OpenCV cannot decode it.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image file not found: {path}")
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"cannot decode image file: {path}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def full_image_sample(record: Mapping, image: np.ndarray, max_points: Optional[int] = None) -> dict:
    """The record as a sample on the FULL image (no crop): points in image pixels, ``has_gt = 0``.

    ``max_points`` (default: the record's, else its point count) sets ``N_max``; extra points are
    dropped by the same deterministic striding.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image for {record.get('file_name')!r} must be (H, W, 3), got {image.shape}")
    n = record["dense_xy"].shape[0]
    if max_points is None:
        max_points = record.get("max_points") or n
    out = sample_lib.empty_sample(image.shape[:2], max_points, NUM_COCO_KEYPOINTS)
    out["image"] = image.astype(np.uint8)
    keep = strided_subset(n, max_points)
    m = keep.shape[0]
    out["dense_xy"][:m] = record["dense_xy"][keep]
    out["dense_vertex"][:m] = record["dense_vertex"][keep]
    out["dense_mask"][:m] = 1.0
    out["keypoints"][:] = record["keypoints"]
    out["keypoint_visible"][:] = record["keypoint_visible"]
    return out


def make_sample(record: Mapping, image: np.ndarray, image_size=None, max_points: Optional[int] = None,
                context: float = 1.2, rotation: float = 0.0) -> dict:
    """One fixed-shape sample (:mod:`bodyjax.data.sample`) from a record and its full image.

    The image is cropped around the person box (:func:`bodyjax.data.transforms.crop_to_person`,
    box enlarged ``context`` times, optional ``rotation`` in degrees) to ``image_size``; dense points
    and keypoints follow, points leaving the crop are masked, ``has_gt = 0``.

    Args:
      record: from :func:`load_densepose_coco`.
      image: ``(H, W, 3)`` uint8 RGB full image.
      image_size: output ``(H, W)`` (default: the record's).
      max_points: ``N_max`` (default: the record's; None there = the record's point count).

    The ``iuv`` label map holds the annotated points only (:func:`paint_points`).
    """
    size = transforms.size_hw(image_size if image_size is not None else record["image_size"])
    full = full_image_sample(record, image, max_points)
    out = transforms.crop_to_person(full, record["bbox"], size, context=context, rotation=rotation)
    paint_points(out, record["dense_iuv"][strided_subset(len(record["dense_iuv"]), full["dense_mask"].shape[0])])
    return out


def paint_points(sample: dict, point_iuv: np.ndarray) -> None:
    """Writes the annotated points' ``(I, U, V)`` into the sample's ``iuv`` label map (in place).

    DensePose-COCO labels ~100–200 points per person, not every pixel: the pixel nearest to each
    kept point gets its part and chart coordinates; every other pixel stays unlabelled (255), so a
    part / IUV predictor learns from these sparse labels as DensePose does.

    Args:
      sample: a sample (its ``dense_xy``/``dense_mask`` in the pixels of its ``iuv`` map).
      point_iuv: ``(n, 3)`` ``(I, U, V)`` of the sample's first ``n`` dense points.
    """
    iuv = sample["iuv"]
    h, w = iuv.shape[:2]
    n = min(len(point_iuv), len(sample["dense_mask"]))
    ok = sample["dense_mask"][:n] > 0
    xy = np.rint(sample["dense_xy"][:n][ok]).astype(np.int64)
    vals = np.asarray(point_iuv, np.float64)[:n][ok]
    inside = (xy[:, 0] >= 0) & (xy[:, 0] < w) & (xy[:, 1] >= 0) & (xy[:, 1] < h)
    xy, vals = xy[inside], vals[inside]
    iuv[xy[:, 1], xy[:, 0], 0] = vals[:, 0].astype(np.uint8)
    iuv[xy[:, 1], xy[:, 0], 1:] = np.rint(np.clip(vals[:, 1:], 0, 1) * sample_lib.UV_SCALE).astype(np.uint8)


def load_sample(record: Mapping, image_size=None, max_points: Optional[int] = None,
                context: float = 1.2, rotation: float = 0.0) -> dict:
    """:func:`make_sample` with the image read from ``record['image_path']`` (:func:`read_image`)."""
    return make_sample(record, read_image(record["image_path"]), image_size, max_points, context, rotation)


def iter_samples(records: Sequence[Mapping], image_size=None, max_points: Optional[int] = None,
                 context: float = 1.2) -> Iterator[dict]:
    """Yields :func:`load_sample` of each record (images read one at a time)."""
    for record in records:
        yield load_sample(record, image_size, max_points, context)
