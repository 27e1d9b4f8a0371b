"""The fixed-shape sample record shared by every data source.

A sample is a flat ``dict`` of NumPy arrays with fixed shapes, so that samples stack into batches
that ``jax.vmap`` maps over and that tensorflow-datasets / grain store and read back unchanged.

==================  =================  ========  ====================================================
key                 shape              dtype     meaning
==================  =================  ========  ====================================================
image               (H, W, 3)          uint8     RGB image
iuv                 (H, W, 3)          uint8     per-pixel labels: part 0..24 (0 = background,
                                                 255 = unlabelled), U and V as round(254·u) (255 =
                                                 no U, V label); :data:`UNLABELLED`
dense_xy            (N_max, 2)         float32   image points of the dense correspondences, pixels
dense_vertex        (N_max,)           int32     template vertex matched to each image point
dense_mask          (N_max,)           float32   1 for a real correspondence, 0 for padding
keypoints           (K, 2)             float32   2D keypoints, pixels
keypoint_visible    (K,)               float32   1 if annotated and visible, else 0
has_gt              ()                 float32   1 if the ground-truth fields below are known
gt_pose             (24, 3)            float32   axis-angle θ (evaluation only)
gt_segment_scales   (24,)              float32
gt_rotation         (3, 3)             float32
gt_scale            ()                 float32
gt_translation      (2,)               float32
gt_joints3d         (24, 3)            float32   camera-frame joints, metres, root-relative
==================  =================  ========  ====================================================

Image coordinates follow the OpenCV convention (pixel centres at integers, x right, y down).
The ground truth never feeds a training loss in deform-and-learn; it is for evaluation.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

NUM_JOINTS = 24
from bodyjax.batch import UNLABELLED, UV_SCALE  # noqa: E402,F401 - the iuv format's constants


def sample_spec(image_size: tuple[int, int], max_points: int, num_keypoints: int) -> dict:
    """``{key: (shape, dtype)}`` of a sample with images of ``image_size = (H, W)``."""
    h, w = image_size
    return {
        "image": ((h, w, 3), np.uint8),
        "iuv": ((h, w, 3), np.uint8),
        "dense_xy": ((max_points, 2), np.float32),
        "dense_vertex": ((max_points,), np.int32),
        "dense_mask": ((max_points,), np.float32),
        "keypoints": ((num_keypoints, 2), np.float32),
        "keypoint_visible": ((num_keypoints,), np.float32),
        "has_gt": ((), np.float32),
        "gt_pose": ((NUM_JOINTS, 3), np.float32),
        "gt_segment_scales": ((NUM_JOINTS,), np.float32),
        "gt_rotation": ((3, 3), np.float32),
        "gt_scale": ((), np.float32),
        "gt_translation": ((2,), np.float32),
        "gt_joints3d": ((NUM_JOINTS, 3), np.float32),
    }


def empty_sample(image_size: tuple[int, int], max_points: int, num_keypoints: int) -> dict:
    """A sample of zeros (no correspondences, no keypoints, no ground truth, no per-pixel labels)."""
    out = {k: np.zeros(shape, dtype) for k, (shape, dtype) in
           sample_spec(image_size, max_points, num_keypoints).items()}
    out["iuv"][:] = UNLABELLED
    return out


def validate_sample(sample: Mapping[str, np.ndarray], image_size: tuple[int, int],
                    max_points: int, num_keypoints: int, num_vertices: int,
                    source: str = "sample") -> None:
    """Raises ``ValueError`` naming ``source`` and the field if ``sample`` breaks the record format.

    Checks presence, shape and dtype of every key, finiteness of the float fields, vertex indices in
    ``[0, num_vertices)`` where the mask is set, and masks in {0, 1}.
    """
    spec = sample_spec(image_size, max_points, num_keypoints)
    for key, (shape, dtype) in spec.items():
        if key not in sample:
            raise ValueError(f"{source}: missing field {key!r}")
        value = np.asarray(sample[key])
        if value.shape != shape:
            raise ValueError(f"{source}: field {key!r} has shape {value.shape}, expected {shape}")
        if value.dtype != dtype:
            raise ValueError(f"{source}: field {key!r} has dtype {value.dtype}, expected {np.dtype(dtype)}")
        if value.dtype.kind == "f" and not np.all(np.isfinite(value)):
            raise ValueError(f"{source}: field {key!r} has non-finite values")
    for key in ("dense_mask", "keypoint_visible", "has_gt"):
        bad = ~np.isin(np.asarray(sample[key]), (0.0, 1.0))
        if np.any(bad):
            raise ValueError(f"{source}: field {key!r} must be 0 or 1, got {np.asarray(sample[key])[bad][:3]}")
    vid = np.asarray(sample["dense_vertex"])[np.asarray(sample["dense_mask"]) > 0]
    if vid.size and (vid.min() < 0 or vid.max() >= num_vertices):
        raise ValueError(f"{source}: field 'dense_vertex' has indices outside [0, {num_vertices}): "
                         f"{vid[(vid < 0) | (vid >= num_vertices)][:3]}")


def stack(samples: list[Mapping[str, np.ndarray]]) -> dict:
    """Stacks samples into a batch dict with a leading axis."""
    if not samples:
        raise ValueError("stack: no samples")
    return {k: np.stack([np.asarray(s[k]) for s in samples]) for k in samples[0]}


# ---------------------------------------------------------------------------------------------
# The one converter between the flat record and the in-memory forms

#: The body-parameter fields, in the order of :class:`bodyjax.body.BodyParams`.
PARAM_FIELDS = ("pose", "segment_scales", "rotation", "scale", "translation")


def params_from_record(record: Mapping[str, np.ndarray], prefix: str = "gt"):
    """The :class:`~bodyjax.body.BodyParams` stored in a record (or stacked records) as
    ``{prefix}_pose``, ``{prefix}_segment_scales``, ... (any leading shape).

    Raises:
      ValueError: a field is missing (named).
    """
    from bodyjax.body import BodyParams  # noqa: PLC0415 - the record module stays free of jax

    missing = [f"{prefix}_{f}" for f in PARAM_FIELDS if f"{prefix}_{f}" not in record]
    if missing:
        raise ValueError(f"record has no body parameters {prefix!r}: missing fields {missing}")
    return BodyParams(**{f: np.asarray(record[f"{prefix}_{f}"], np.float32) for f in PARAM_FIELDS})


def params_to_record(params, prefix: str = "gt") -> dict:
    """The fields ``{prefix}_pose``, ... of :class:`~bodyjax.body.BodyParams` ``params`` (NumPy float32)."""
    return {f"{prefix}_{f}": np.asarray(getattr(params, f), np.float32) for f in PARAM_FIELDS}


def to_batch(records: Mapping[str, np.ndarray], with_image: bool = True, with_gt: bool = True):
    """Stacked sample records (leading axis ``B``) → :class:`bodyjax.batch.Batch`.

    Args:
      records: ``{key: (B, ...) array}`` with the record's fields; ``target_*`` fields (θ_fit, see
        :func:`params_to_record` with ``prefix='target'``) and ``target_weight`` become the batch's
        targets when present.
      with_image: keep ``image`` and ``iuv`` (``False``: the registration and the lifter do not
        need the pixels).
      with_gt: keep the ground truth (evaluation only).

    Returns:
      The :class:`~bodyjax.batch.Batch` (NumPy arrays; JAX converts them when they enter jit).
    """
    from bodyjax.batch import Batch  # noqa: PLC0415

    has_gt = with_gt and "gt_pose" in records and np.any(np.asarray(records.get("has_gt", 0.0)) > 0)
    has_target = "target_pose" in records
    return Batch(
        dense_xy=np.asarray(records["dense_xy"], np.float32),
        dense_vertex=np.asarray(records["dense_vertex"], np.int32),
        dense_mask=np.asarray(records["dense_mask"], np.float32),
        keypoints=np.asarray(records["keypoints"], np.float32),
        keypoint_visible=np.asarray(records["keypoint_visible"], np.float32),
        image=np.asarray(records["image"]) if with_image and "image" in records else None,
        iuv=np.asarray(records["iuv"]) if with_image and "iuv" in records else None,
        gt=params_from_record(records, "gt") if has_gt else None,
        gt_joints3d=np.asarray(records["gt_joints3d"], np.float32) if has_gt else None,
        has_gt=np.asarray(records["has_gt"], np.float32) if has_gt else None,
        target=params_from_record(records, "target") if has_target else None,
        target_weight=(np.asarray(records["target_weight"], np.float32)
                       if has_target and "target_weight" in records else None),
    )
