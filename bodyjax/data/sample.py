"""The fixed-shape sample record shared by every data source.

A sample is a flat ``dict`` of NumPy arrays with fixed shapes, so that samples stack into batches
that ``jax.vmap`` maps over and that tensorflow-datasets / grain store and read back unchanged.

==================  =================  ========  ====================================================
key                 shape              dtype     meaning
==================  =================  ========  ====================================================
image               (H, W, 3)          uint8     RGB image
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


def sample_spec(image_size: tuple[int, int], max_points: int, num_keypoints: int) -> dict:
    """``{key: (shape, dtype)}`` of a sample with images of ``image_size = (H, W)``."""
    h, w = image_size
    return {
        "image": ((h, w, 3), np.uint8),
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
    """A sample of zeros (no correspondences, no keypoints, no ground truth)."""
    return {k: np.zeros(shape, dtype) for k, (shape, dtype) in
            sample_spec(image_size, max_points, num_keypoints).items()}


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
