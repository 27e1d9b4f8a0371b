"""Geometric data transforms on the sample record: person-centred crops and left/right flips.

Every transform keeps the sample self-consistent: the image, the dense points, the keypoints AND the
ground-truth body parameters move together, so that the GT body projected with the new parameters
lands on the new points (tested with :func:`bodyjax.body.forward`).

Conventions
-----------
* Pixels follow OpenCV: pixel centres at integer coordinates, x right, y down. A crop of size
  ``(H, W)`` covers the points with ``-0.5 <= x <= W - 0.5`` and ``-0.5 <= y <= H - 0.5``; points
  outside get ``dense_mask = 0`` / ``keypoint_visible = 0``.
* Masked entries are canonical zeros: after a transform, every padded or masked dense point has
  ``dense_xy = 0`` and ``dense_vertex = 0``, every invisible keypoint has ``keypoints = 0``.
* Boxes are COCO ``[x, y, w, h]`` in pixels.
* ``rotation`` (degrees) turns the image content COUNTER-CLOCKWISE on screen, like
  ``cv2.getRotationMatrix2D``: the crop's affine map is ``x' = k Q (x - c) + o`` with
  ``Q = [[cos r, sin r], [-sin r, cos r]]``, ``c`` the box centre, ``o`` the crop centre
  ``((W - 1) / 2, (H - 1) / 2)`` and ``k`` the zoom.

Ground truth under a similarity ``x' = k Q x + b`` (weak perspective ``x = s (R X)[:2] + t``)::

    s' = k s,    t' = k Q t + b,    R' = Q₃ R,    joints3d' = joints3d Q₃ᵀ,   Q₃ = [[Q, 0], [0, 1]]

(``Q₃`` is a rotation about the camera axis; Gram–Schmidt commutes with it, so the raw nine numbers
may be rotated directly).

Ground truth under the horizontal flip ``x -> W - 1 - x`` (mirror ``M = diag(-1, 1, 1)``)::

    pose'[j]  = (a_x, -a_y, -a_z) of pose[joint_mirror[j]]      segment_scales' = S[joint_mirror]
    R' = M R M        s' = s        t' = (W - 1 - t_x, t_y)        joints3d' = (M J)[joint_mirror]

with dense vertices mapped through ``template.symmetry`` and keypoints permuted by the keypoint
set's ``flip_permutation`` (COCO-17: left_* <-> right_*). Samples with ``has_gt = 0`` keep their
(zero) GT fields untouched.

An ``iuv`` label map flips with its part labels through ``template.part_mirror``; its chart
coordinates flip as ``U -> 1 - U`` (``V`` unchanged) on the parts whose charts the body's mirror
maps that way (:func:`bodyjax.body.chart_mirror`: the embedded body's charts are mirror-symmetric, so there the
flipped map is the map of the mirrored body), and become unlabelled on the other parts (DensePose's
charts on SMPL mirror through a per-part lookup table, its ``UV_symmetry_transforms.mat``, which the
project does not read).
"""
from __future__ import annotations

from typing import Mapping, Optional, Sequence, Union

import cv2
import numpy as np

from bodyjax import skeletons
from bodyjax.body import chart_mirror
from bodyjax.data.sample import UNLABELLED, UV_SCALE

SizeLike = Union[int, Sequence[int]]
_MIRROR = np.array([-1.0, 1.0, 1.0])


def size_hw(out_size: SizeLike) -> tuple[int, int]:
    """``(H, W)`` from ``H`` (square) or ``(H, W)``; raises ``ValueError`` unless both are positive."""
    if np.isscalar(out_size):
        h = w = int(out_size)
    else:
        h, w = (int(v) for v in out_size)
    if h <= 0 or w <= 0:
        raise ValueError(f"output size must be positive, got {out_size}")
    return h, w


# ---------------------------------------------------------------------------------------------
# Affine maps


def crop_affine(bbox, out_size: SizeLike, context: float = 1.2, rotation: float = 0.0) -> np.ndarray:
    """The ``(2, 3)`` affine map from the image to a person-centred crop.

    The box, enlarged ``context`` times about its centre, fits the output exactly along its tighter
    dimension: ``k = min(W / (context w), H / (context h))`` (a square output gives
    ``k = out / (context max(w, h))``, i.e. a square crop of side ``context max(w, h)``). The box centre
    goes to the crop centre ``((W - 1) / 2, (H - 1) / 2)``.

    Args:
      bbox: ``(4,)`` COCO box ``[x, y, w, h]`` in pixels (``w, h > 0``).
      out_size: ``H`` (square) or ``(H, W)`` of the crop.
      context: enlargement of the box (the context around the person).
      rotation: degrees, counter-clockwise on screen (see the module docstring).

    Returns:
      ``A (2, 3)`` float64 with ``x_crop = A[:, :2] @ x + A[:, 2]``.
    """
    x, y, bw, bh = (float(v) for v in np.asarray(bbox, np.float64).reshape(4))
    if not (np.isfinite([x, y, bw, bh]).all() and bw > 0 and bh > 0):
        raise ValueError(f"crop_affine: box must be finite with positive size, got {[x, y, bw, bh]}")
    if not (np.isfinite(context) and context > 0 and np.isfinite(rotation)):
        raise ValueError(f"crop_affine: need a finite positive context and a finite rotation, got "
                         f"context={context}, rotation={rotation}")
    h, w = size_hw(out_size)
    k = min(w / (context * bw), h / (context * bh))
    r = np.deg2rad(rotation)
    q = np.array([[np.cos(r), np.sin(r)], [-np.sin(r), np.cos(r)]])
    centre = np.array([x + 0.5 * bw, y + 0.5 * bh])
    target = np.array([(w - 1) / 2.0, (h - 1) / 2.0])
    lin = k * q
    return np.concatenate([lin, (target - lin @ centre)[:, None]], axis=1)


def apply_affine(affine: np.ndarray, points) -> np.ndarray:
    """Applies a ``(2, 3)`` affine map to ``(..., 2)`` points (float64 result)."""
    a = np.asarray(affine, np.float64)
    p = np.asarray(points, np.float64)
    return p @ a[:, :2].T + a[:, 2]


def similarity_parts(affine: np.ndarray) -> tuple[float, np.ndarray]:
    """``(k, Q)`` of a similarity ``A[:, :2] = k Q`` (``Q`` a proper 2D rotation).

    Raises ``ValueError`` if the linear part is not a positive multiple of a rotation (shear,
    anisotropic scale or reflection): the weak-perspective GT could not follow such a map.
    """
    lin = np.asarray(affine, np.float64)[:, :2]
    k = float(np.sqrt(abs(np.linalg.det(lin))))
    if not (k > 0 and np.isfinite(k)):
        raise ValueError(f"affine map is singular: {lin.tolist()}")
    q = lin / k
    if np.linalg.det(q) < 0 or not np.allclose(q @ q.T, np.eye(2), atol=1e-6):
        raise ValueError(f"affine map is not a similarity (k * rotation): {lin.tolist()}")
    return k, q


def warp_image(image: np.ndarray, affine: np.ndarray, out_size: SizeLike) -> np.ndarray:
    """``cv2.warpAffine`` of ``image`` by ``affine`` into ``out_size``, bilinear, black border."""
    h, w = size_hw(out_size)
    return cv2.warpAffine(np.ascontiguousarray(image), np.asarray(affine, np.float64), (w, h),
                          flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def inside(points, hw: tuple[int, int]) -> np.ndarray:
    """``(...,)`` bool: points ``(..., 2)`` finite and within the pixel area of an ``(H, W)`` image."""
    h, w = hw
    p = np.asarray(points, np.float64)
    with np.errstate(invalid="ignore"):
        return (np.all(np.isfinite(p), axis=-1) & (p[..., 0] >= -0.5) & (p[..., 0] <= w - 0.5)
                & (p[..., 1] >= -0.5) & (p[..., 1] <= h - 0.5))


# ---------------------------------------------------------------------------------------------
# Sample-level transforms


def params_prefixes(sample: Mapping[str, np.ndarray]) -> tuple:
    """The body parameters a record carries: ``'gt'`` (when ``has_gt``) and ``'target'`` (θ_fit,
    when the record was joined with the fits); each transform maps them alike."""
    out = []
    if "gt_pose" in sample and float(sample.get("has_gt", 0.0)) > 0:
        out.append("gt")
    if "target_pose" in sample:
        out.append("target")
    return tuple(out)


def record_hw(sample: Mapping[str, np.ndarray]) -> tuple[int, int]:
    """``(H, W)`` of a record's pixels: its ``image``, or its ``iuv`` map when it has no image (the
    two-stage regressor's records carry only the map it reads)."""
    for key in ("image", "iuv"):
        if key in sample:
            return tuple(int(n) for n in np.shape(sample[key])[:2])
    raise ValueError(f"a sample record needs an 'image' or an 'iuv' map, got the fields {sorted(sample)}")


def affine_sample(sample: Mapping[str, np.ndarray], affine: np.ndarray, out_size: SizeLike) -> dict:
    """Applies a similarity ``affine`` to every field of a sample (see the module docstring).

    Args:
      sample: a sample record (:mod:`bodyjax.data.sample`).
      affine: ``(2, 3)`` similarity map from the sample's image to the new image.
      out_size: ``H`` or ``(H, W)`` of the new image.

    Returns:
      A new sample dict (same keys and dtypes; ``image`` of shape ``(H, W, 3)``; a record without
      image, only an ``iuv`` map, keeps having none).
    """
    h, w = size_hw(out_size)
    k, q = similarity_parts(affine)
    out = {key: np.array(value, copy=True) for key, value in sample.items()}
    if "image" in sample:
        out["image"] = warp_image(np.asarray(sample["image"]), affine, (h, w)).astype(np.uint8)

    xy = apply_affine(affine, sample["dense_xy"])
    mask = (np.asarray(sample["dense_mask"]) > 0) & inside(xy, (h, w))
    out["dense_mask"] = mask.astype(np.float32)
    out["dense_xy"] = np.where(mask[:, None], xy, 0.0).astype(np.float32)
    out["dense_vertex"] = np.where(mask, np.asarray(sample["dense_vertex"]), 0).astype(np.int32)

    kp = apply_affine(affine, sample["keypoints"])
    vis = (np.asarray(sample["keypoint_visible"]) > 0) & inside(kp, (h, w))
    out["keypoint_visible"] = vis.astype(np.float32)
    out["keypoints"] = np.where(vis[:, None], kp, 0.0).astype(np.float32)

    if "iuv" in sample:
        out["iuv"] = cv2.warpAffine(np.ascontiguousarray(sample["iuv"]), np.asarray(affine, np.float64), (w, h),
                                    flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT,
                                    borderValue=(UNLABELLED,) * 3)
    q3 = np.eye(3)
    q3[:2, :2] = q
    for prefix in params_prefixes(sample):
        rot = f"{prefix}_rotation"
        out[rot] = (q3 @ np.asarray(sample[rot], np.float64)).astype(np.float32)
        out[f"{prefix}_scale"] = np.asarray(k * float(sample[f"{prefix}_scale"]), np.float32)
        t = np.asarray(sample[f"{prefix}_translation"], np.float64)
        out[f"{prefix}_translation"] = apply_affine(affine, t).astype(np.float32)
    if "gt" in params_prefixes(sample):
        out["gt_joints3d"] = (np.asarray(sample["gt_joints3d"], np.float64) @ q3.T).astype(np.float32)
    return out


def crop_to_person(sample_or_image, bbox, out_size: SizeLike, context: float = 1.2,
                   rotation: float = 0.0, points: Optional[Sequence] = None):
    """Person-centred (optionally rotated) crop with ``cv2.warpAffine``.

    Two forms:

    * ``crop_to_person(sample: dict, bbox, out_size, context, rotation) -> dict``: the whole sample
      (image, dense points, keypoints, GT parameters) through :func:`affine_sample`;
    * ``crop_to_person(image (H, W, C), bbox, out_size, context, rotation, points=[p1, ...])
      -> (crop, [p1', ...], A)``: the image and any ``(..., 2)`` point arrays (float64), plus the
      ``(2, 3)`` map ``A`` (see :func:`crop_affine`).
    """
    affine = crop_affine(bbox, out_size, context=context, rotation=rotation)
    if isinstance(sample_or_image, Mapping):
        if points is not None:
            raise ValueError("crop_to_person: `points` is only for the image form; a sample carries its points")
        return affine_sample(sample_or_image, affine, out_size)
    crop = warp_image(np.asarray(sample_or_image), affine, out_size)
    moved = [apply_affine(affine, p) for p in (points or [])]
    return crop, moved, affine


def flip_gt(pose, segment_scales, rotation, translation, joints3d, joint_mirror, width: int) -> tuple:
    """Mirrors GT body parameters for an image of width ``width`` flipped left/right.

    Args:
      pose: ``(24, 3)`` axis-angle; segment_scales: ``(24,)``; rotation: ``(3, 3)``;
      translation: ``(2,)`` pixels; joints3d: ``(24, 3)``; joint_mirror: ``(24,)`` permutation.

    Returns:
      ``(pose, segment_scales, rotation, translation, joints3d)`` mirrored (float64), see the module
      docstring for the formulas.
    """
    jm = np.asarray(joint_mirror, np.int64)
    m = np.diag(_MIRROR)
    pose = (np.asarray(pose, np.float64) * np.array([1.0, -1.0, -1.0]))[jm]
    segment_scales = np.asarray(segment_scales, np.float64)[jm]
    rotation = m @ np.asarray(rotation, np.float64) @ m
    t = np.asarray(translation, np.float64)
    translation = np.array([width - 1 - t[0], t[1]])
    joints3d = (np.asarray(joints3d, np.float64) * _MIRROR)[jm]
    return pose, segment_scales, rotation, translation, joints3d


def flip_horizontal(sample: Mapping[str, np.ndarray], template,
                    flip_permutation: Optional[Sequence[int]] = None) -> dict:
    """Left/right flip of a sample (an involution: flipping twice gives the sample back).

    Args:
      sample: a sample record with ``K`` keypoints.
      template: the body the dense vertices and GT refer to (uses ``symmetry (V,)``,
        ``joint_mirror (24,)``, ``part_mirror`` and, for ``iuv`` maps, ``chart_mirror`` when it
        has one (:class:`bodyjax.data.augment.MirrorTables`), else :func:`chart_mirror` of it).
      flip_permutation: ``(K,)`` keypoint permutation; default: that of the keypoint set with ``K``
        keypoints (:func:`bodyjax.skeletons.keypoint_set_for`: COCO-17 or the 24 joints).

    Returns:
      A new sample dict: image mirrored, ``x -> W - 1 - x``, ``dense_vertex -> symmetry[...]``,
      keypoints permuted, GT parameters mirrored (:func:`flip_gt`), ``iuv`` parts mirrored and
      U flipped on the mirror-symmetric charts (else unlabelled; the module docstring).
    """
    width = record_hw(sample)[1]
    out = {key: np.array(value, copy=True) for key, value in sample.items()}
    if "image" in sample:
        out["image"] = np.ascontiguousarray(np.asarray(sample["image"])[:, ::-1])

    symmetry = np.asarray(template.symmetry, np.int64)
    mask = np.asarray(sample["dense_mask"]) > 0
    xy = np.asarray(sample["dense_xy"], np.float64)
    flipped = np.stack([width - 1 - xy[:, 0], xy[:, 1]], axis=-1)
    out["dense_xy"] = np.where(mask[:, None], flipped, 0.0).astype(np.float32)
    vid = np.asarray(sample["dense_vertex"], np.int64)
    safe = np.clip(vid, 0, symmetry.shape[0] - 1)
    out["dense_vertex"] = np.where(mask, symmetry[safe], 0).astype(np.int32)

    kp = np.asarray(sample["keypoints"], np.float64)
    vis = np.asarray(sample["keypoint_visible"]) > 0
    if flip_permutation is None:
        flip_permutation = skeletons.keypoint_set_for(kp.shape[0]).flip_permutation
    perm = np.asarray(flip_permutation, np.int64)
    if perm.shape != (kp.shape[0],) or not np.array_equal(np.sort(perm), np.arange(kp.shape[0])):
        raise ValueError(f"flip_horizontal: flip_permutation must be a permutation of {kp.shape[0]} keypoints")
    kp = np.stack([width - 1 - kp[:, 0], kp[:, 1]], axis=-1)[perm]
    vis = vis[perm]
    out["keypoints"] = np.where(vis[:, None], kp, 0.0).astype(np.float32)
    out["keypoint_visible"] = vis.astype(np.float32)

    if "iuv" in sample:
        iuv = np.ascontiguousarray(np.asarray(sample["iuv"])[:, ::-1])
        part_mirror = np.asarray(template.part_mirror, np.int64)
        part = iuv[..., 0].astype(np.int64)
        labelled = part < len(part_mirror)
        iuv[..., 0] = np.where(labelled, part_mirror[np.where(labelled, part, 0)], UNLABELLED)
        charts = getattr(template, "chart_mirror", None)
        charts = chart_mirror(template) if charts is None else np.asarray(charts, bool)
        # U -> 1 - U where the chart mirrors so (the labels' scale is UV_SCALE), else unlabelled
        mirrored = labelled & charts[np.where(labelled, part, 0)] & (iuv[..., 1] < UNLABELLED)
        u = iuv[..., 1].astype(np.int64)
        iuv[..., 1] = np.where(mirrored, UV_SCALE - np.minimum(u, UV_SCALE), UNLABELLED)
        iuv[..., 2] = np.where(mirrored, iuv[..., 2], UNLABELLED)
        out["iuv"] = iuv.astype(np.uint8)
    for prefix in params_prefixes(sample):
        joints3d = sample["gt_joints3d"] if prefix == "gt" else np.zeros((len(template.joint_mirror), 3))
        pose, ss, rot, t, j3d = flip_gt(sample[f"{prefix}_pose"], sample[f"{prefix}_segment_scales"],
                                        sample[f"{prefix}_rotation"], sample[f"{prefix}_translation"],
                                        joints3d, template.joint_mirror, width)
        out[f"{prefix}_pose"] = pose.astype(np.float32)
        out[f"{prefix}_segment_scales"] = ss.astype(np.float32)
        out[f"{prefix}_rotation"] = rot.astype(np.float32)
        out[f"{prefix}_translation"] = t.astype(np.float32)
        if prefix == "gt":
            out["gt_joints3d"] = j3d.astype(np.float32)
    return out
