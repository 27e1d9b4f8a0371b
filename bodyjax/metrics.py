"""Evaluation metrics for 3D body pose and shape.

The metrics follow the evaluation protocol of the deform-and-learn paper (section 5.3) and the
usual conventions of the field:

* **MPJPE** — mean per-joint position error after aligning the roots (pelvis, or the mean of the two
  hips for keypoint sets that have no pelvis): :func:`mpjpe`.
* **Rescaled MPJPE** — the paper's variant: before the comparison, the predicted skeleton is scaled
  about its root so that the sum of its 3D bone lengths equals that of a reference ("canonical
  average") skeleton: :func:`bone_length_rescale`, :func:`mpjpe_rescaled`.
* **PA-MPJPE** (reconstruction error) — MPJPE after a similarity (Procrustes) alignment of the
  prediction to the ground truth: :func:`procrustes_align`, :func:`pa_mpjpe`.
* **Per-vertex error** — mean Euclidean vertex error after Procrustes alignment (paper 5.3):
  :func:`per_vertex_error`.
* **Per-pixel error** — mean Euclidean 2D error: :func:`pixel_error`.
* **3DPCK / AUC** — fraction of joints whose error is below a threshold, and the mean of that fraction
  over the thresholds 0, 5, ..., 150 mm: :func:`pck`, :func:`auc` (and :func:`pck_from_errors`,
  :func:`auc_from_errors` for precomputed per-joint errors).

Units. Every function is unit-agnostic: errors come out in the units of the inputs, and thresholds
are read in the units of the inputs. The library reports millimetres, so a caller holding metres
multiplies the result by 1000 (or the inputs, before :func:`pck`/:func:`auc`, whose default
thresholds :data:`AUC_THRESHOLDS_MM` are millimetres).

Shapes. Points are ``(..., N, 3)`` (``(..., N, 2)`` for pixels) with any broadcastable leading batch
dims ``...``; every metric reduces the point axis and returns ``(...)``.

Masks. ``mask`` is an optional ``(..., N)`` boolean (or non-negative float weight) array; ``None``
means every point counts. A metric is the weighted mean over the points with non-zero weight. A
sample with no valid point yields ``0`` (never NaN); callers who need to know tell such samples apart
with ``jnp.sum(mask, axis=-1) > 0``, and a dataset-level mean over samples with different numbers of
valid points should weight each sample by that count.

Everything is pure ``jax.numpy``: jit/vmap/grad friendly, no Python loops over samples, finite
gradients at zero errors and at degenerate Procrustes inputs.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import jax.numpy as jnp
import numpy as np

from bodyjax.linalg import safe_norm
from bodyjax.rotations import svd_orthogonalize

Array = jnp.ndarray
Root = Union[None, int, Sequence[int]]

#: Thresholds of the 3DPCK/AUC convention, in millimetres: 0, 5, ..., 150.
AUC_THRESHOLDS_MM = np.arange(0, 151, 5)
#: The PCK threshold of the 3DPCK convention, in millimetres.
PCK_THRESHOLD_MM = 150.0

_ALIGN_MODES = (None, "none", "root", "procrustes")


# ----------------------------------------------------------------------------------------------
# helpers


def _float_dtype(*arrays) -> jnp.dtype:
    dtype = jnp.result_type(*arrays)
    if not jnp.issubdtype(dtype, jnp.inexact):
        dtype = jnp.result_type(float)
    return dtype


def _as_float(*arrays):
    dtype = _float_dtype(*arrays)
    return tuple(jnp.asarray(a, dtype) for a in arrays)


def _weights(mask: Optional[Array], shape: tuple, dtype) -> Array:
    """Point weights ``(..., N)`` broadcast to ``shape`` (the points' shape without the last axis)."""
    if mask is None:
        return jnp.ones(shape, dtype)
    return jnp.broadcast_to(jnp.asarray(mask).astype(dtype), shape)


def masked_mean(values: Array, mask: Optional[Array] = None, axis: int = -1) -> Array:
    """Weighted mean of ``values`` along ``axis`` that ignores masked entries.

    Args:
      values: ``(..., N)`` values (any axis can be reduced with ``axis``).
      mask: optional weights broadcastable to ``values`` (boolean or non-negative floats).
      axis: the axis to reduce.

    Returns:
      ``values`` reduced over ``axis``; ``0`` where every entry is masked.
    """
    values = jnp.asarray(values)
    if not jnp.issubdtype(values.dtype, jnp.inexact):
        values = values.astype(_float_dtype(values))
    if mask is None:
        return jnp.mean(values, axis=axis)
    w = jnp.broadcast_to(jnp.asarray(mask).astype(values.dtype), values.shape)
    total = jnp.sum(w, axis=axis)
    # where() on the values as well so that inf/NaN in masked entries cannot leak into the sum.
    weighted = jnp.where(w > 0, values * w, 0.0)
    return jnp.sum(weighted, axis=axis) / jnp.where(total > 0, total, 1.0)


def point_errors(pred: Array, target: Array) -> Array:
    """Euclidean distance per point, ``(..., N, D) x (..., N, D) -> (..., N)``, in input units.

    The gradient is finite (zero) where the two points coincide.
    """
    pred, target = _as_float(pred, target)
    return safe_norm(pred - target)


# ----------------------------------------------------------------------------------------------
# alignment


def root_position(points: Array, root: Root = 0) -> Array:
    """The root of a skeleton, ``(..., J, 3) -> (..., 3)``.

    Args:
      points: ``(..., J, 3)`` joints.
      root: an index (the pelvis is joint ``0`` of the 24 body joints) or a sequence of indices whose
        positions are averaged (e.g. ``(11, 12)``, the two hips of COCO-17 keypoints).
    """
    points = jnp.asarray(points)
    if isinstance(root, (int, np.integer)):
        return points[..., int(root), :]
    idx = tuple(int(i) for i in root)
    if not idx:
        raise ValueError("root must name at least one joint")
    return jnp.mean(points[..., idx, :], axis=-2)


def root_align(points: Array, root: Root = 0) -> Array:
    """Moves each skeleton so that its root is at the origin, ``(..., J, 3) -> (..., J, 3)``.

    Args:
      points: ``(..., J, 3)`` joints.
      root: see :func:`root_position`; ``None`` returns ``points`` unchanged (no alignment).
    """
    if root is None:
        return jnp.asarray(points)
    return points - root_position(points, root)[..., None, :]


def procrustes(pred: Array, target: Array, mask: Optional[Array] = None):
    """Similarity transform that best maps ``pred`` onto ``target`` (weighted Umeyama).

    Minimises ``sum_i w_i |scale * R @ pred_i + translation - target_i|^2`` over a proper rotation
    ``R`` (det +1; a mirror image is therefore not aligned perfectly), a uniform scale and a
    translation.

    Degenerate input: when fewer than 3 points are valid, or the valid predicted points all coincide
    (zero spread), the transform falls back to translation only (``R = I``, ``scale = 1``,
    centroids matched). With no valid point at all the transform is the identity. Collinear points
    are not degenerate for the values (the aligned points are unique), only the rotation about the
    line is arbitrary; gradients stay finite there as well.

    Args:
      pred: ``(..., N, 3)`` points to align.
      target: ``(..., N, 3)`` reference points, same units.
      mask: optional ``(..., N)`` point weights (boolean or non-negative floats).

    Returns:
      ``(scale (...), rotation (..., 3, 3), translation (..., 3))`` such that the aligned points are
      ``scale * rotation @ pred + translation``.
    """
    pred, target = _as_float(pred, target)
    batch = jnp.broadcast_shapes(pred.shape[:-2], target.shape[:-2])
    if mask is not None:
        batch = jnp.broadcast_shapes(batch, jnp.shape(mask)[:-1])
    n = pred.shape[-2]
    pred = jnp.broadcast_to(pred, batch + (n, 3))
    target = jnp.broadcast_to(target, batch + (n, 3))
    dtype = pred.dtype
    w = _weights(mask, batch + (n,), dtype)
    total = jnp.sum(w, axis=-1)
    count = jnp.sum(w > 0, axis=-1)
    safe_total = jnp.where(total > 0, total, 1.0)

    mu_p = jnp.sum(w[..., None] * pred, axis=-2) / safe_total[..., None]
    mu_t = jnp.sum(w[..., None] * target, axis=-2) / safe_total[..., None]
    xp = pred - mu_p[..., None, :]
    xt = target - mu_t[..., None, :]
    var_p = jnp.sum(w * jnp.sum(xp * xp, axis=-1), axis=-1) / safe_total
    moment_p = jnp.sum(w * jnp.sum(pred * pred, axis=-1), axis=-1) / safe_total
    cov = jnp.einsum("...n,...ni,...nj->...ij", w, xt, xp) / safe_total[..., None, None]

    # Spread below rounding noise of the centring means "all points equal".
    tiny_spread = var_p <= (64 * jnp.finfo(dtype).eps) ** 2 * moment_p + jnp.finfo(dtype).tiny
    degenerate = (count < 3) | tiny_spread

    # Feed well-conditioned dummies to the degenerate samples so no branch produces inf/NaN.
    eye = jnp.eye(3, dtype=dtype)
    cov_safe = jnp.where(degenerate[..., None, None], jnp.diag(jnp.array([3.0, 2.0, 1.0], dtype)), cov)
    rot = svd_orthogonalize(cov_safe)  # maximises trace(Rᵀ cov)
    var_safe = jnp.where(degenerate, 1.0, var_p)
    scale = jnp.sum(rot * cov_safe, axis=(-2, -1)) / var_safe  # trace(R^T cov) / var_p

    rot = jnp.where(degenerate[..., None, None], eye, rot)
    scale = jnp.where(degenerate, 1.0, scale)
    translation = mu_t - scale[..., None] * jnp.einsum("...ij,...j->...i", rot, mu_p)
    return scale, rot, translation


def procrustes_align(pred: Array, target: Array, mask: Optional[Array] = None) -> Array:
    """Aligns ``pred`` to ``target`` with the best similarity transform (see :func:`procrustes`).

    Args:
      pred: ``(..., N, 3)`` points.
      target: ``(..., N, 3)`` points, same units.
      mask: optional ``(..., N)`` point weights; masked points do not influence the transform but
        are transformed too.

    Returns:
      ``(..., N, 3)`` aligned ``pred`` (all points). Degenerate inputs (fewer than 3 valid points,
      or all valid predicted points equal) are aligned by translation only.
    """
    pred, target = _as_float(pred, target)
    scale, rot, translation = procrustes(pred, target, mask)
    return scale[..., None, None] * jnp.einsum("...ij,...nj->...ni", rot, pred) + translation[..., None, :]


# ----------------------------------------------------------------------------------------------
# joint errors


def mpjpe(pred: Array, target: Array, mask: Optional[Array] = None, root: Root = 0) -> Array:
    """Mean per-joint position error after root alignment, ``(..., J, 3) x2 -> (...)``.

    Args:
      pred: ``(..., J, 3)`` predicted joints.
      target: ``(..., J, 3)`` ground-truth joints, same units (the result is in these units).
      mask: optional ``(..., J)`` joint weights.
      root: root joint index, or indices whose mean is the root (``(11, 12)`` for the COCO hips);
        each skeleton is translated so its own root is at the origin. ``None`` disables the
        alignment (raw Euclidean error). The root is subtracted whatever ``mask`` says about it.

    Returns:
      ``(...)`` mean error over the valid joints (``0`` if none is valid).
    """
    pred, target = _as_float(pred, target)
    return masked_mean(point_errors(root_align(pred, root), root_align(target, root)), mask)


def bone_length_sum(joints: Array, parents: Sequence[int]) -> Array:
    """Sum of the 3D bone lengths of a skeleton, ``(..., J, 3) -> (...)``.

    Args:
      joints: ``(..., J, 3)`` joints.
      parents: length-``J`` static parent indices; a ``-1`` entry (the root) has no bone.
    """
    (joints,) = _as_float(joints)
    parents = tuple(int(p) for p in parents)
    if len(parents) != joints.shape[-2]:
        raise ValueError(f"{len(parents)} parents for {joints.shape[-2]} joints")
    child = np.array([j for j, p in enumerate(parents) if p >= 0], dtype=np.int32)
    parent = np.array([p for p in parents if p >= 0], dtype=np.int32)
    if child.size == 0:
        return jnp.zeros(joints.shape[:-2], joints.dtype)
    return jnp.sum(safe_norm(joints[..., child, :] - joints[..., parent, :]), axis=-1)


def bone_length_rescale(
    pred: Array, reference: Array, parents: Sequence[int], root: Root = 0
) -> Array:
    """Scales ``pred`` about its root so that its bone-length sum equals the reference's.

    This is the deform-and-learn evaluation step: the output joint positions are scaled so that the
    sum of all 3D bone lengths equals that of a canonical average skeleton.

    Args:
      pred: ``(..., J, 3)`` predicted joints.
      reference: either reference joints ``(..., J, 3)`` (their bone-length sum is used) or the
        reference bone-length sum itself, a scalar or ``(...)`` array, in the units of ``pred``.
      parents: length-``J`` static parent indices (``-1`` for the root).
      root: the fixed point of the scaling (see :func:`root_position`); ``None`` scales about the
        origin.

    Returns:
      ``(..., J, 3)`` rescaled joints. A prediction whose bones all have zero length is returned
      unchanged.
    """
    (pred,) = _as_float(pred)
    reference = jnp.asarray(reference, pred.dtype)
    j = pred.shape[-2]
    if reference.ndim >= 2 and reference.shape[-2:] == (j, 3):
        reference = bone_length_sum(reference, parents)
    current = bone_length_sum(pred, parents)
    ok = current > 0
    factor = jnp.where(ok, reference / jnp.where(ok, current, 1.0), 1.0)
    if root is None:
        return factor[..., None, None] * pred
    r = root_position(pred, root)[..., None, :]
    return r + factor[..., None, None] * (pred - r)


def mpjpe_rescaled(
    pred: Array,
    target: Array,
    parents: Sequence[int],
    reference: Optional[Array] = None,
    mask: Optional[Array] = None,
    root: Root = 0,
) -> Array:
    """MPJPE after :func:`bone_length_rescale` of the prediction (the paper's protocol).

    Args:
      pred: ``(..., J, 3)`` predicted joints.
      target: ``(..., J, 3)`` ground-truth joints, same units.
      parents: length-``J`` static parent indices used for the bone lengths (all bones count,
        whatever the mask).
      reference: reference joints ``(..., J, 3)`` or bone-length sum ``(...)``/scalar (the canonical
        average skeleton); ``None`` uses ``target``.
      mask: optional ``(..., J)`` joint weights for the error average.
      root: root joint(s) for the alignment and the scaling (see :func:`mpjpe`).

    Returns:
      ``(...)`` mean error in input units.
    """
    pred, target = _as_float(pred, target)
    if reference is None:
        reference = target
    return mpjpe(bone_length_rescale(pred, reference, parents, root), target, mask, root)


def pa_mpjpe(pred: Array, target: Array, mask: Optional[Array] = None) -> Array:
    """MPJPE after Procrustes (similarity) alignment — the reconstruction error.

    Args:
      pred: ``(..., J, 3)`` predicted joints.
      target: ``(..., J, 3)`` ground-truth joints, same units.
      mask: optional ``(..., J)`` joint weights (used for the alignment and the average).

    Returns:
      ``(...)`` mean error in input units (``0`` if no joint is valid).
    """
    pred, target = _as_float(pred, target)
    return masked_mean(point_errors(procrustes_align(pred, target, mask), target), mask)


def per_vertex_error(
    pred_vertices: Array, target_vertices: Array, mask: Optional[Array] = None, align: bool = True
) -> Array:
    """Mean per-vertex Euclidean error, after Procrustes alignment by default (paper 5.3).

    Args:
      pred_vertices: ``(..., V, 3)`` predicted vertices.
      target_vertices: ``(..., V, 3)`` ground-truth vertices, same units.
      mask: optional ``(..., V)`` vertex weights.
      align: Procrustes-align the prediction first (``False``: raw error).

    Returns:
      ``(...)`` mean error in input units.
    """
    pred_vertices, target_vertices = _as_float(pred_vertices, target_vertices)
    if align:
        pred_vertices = procrustes_align(pred_vertices, target_vertices, mask)
    return masked_mean(point_errors(pred_vertices, target_vertices), mask)


def pixel_error(pred2d: Array, target2d: Array, mask: Optional[Array] = None) -> Array:
    """Mean Euclidean 2D error over the valid points, ``(..., N, 2) x2 -> (...)``, in pixels.

    Args:
      pred2d: ``(..., N, 2)`` predicted image points.
      target2d: ``(..., N, 2)`` ground-truth image points.
      mask: optional ``(..., N)`` point weights (e.g. keypoint visibility).
    """
    return masked_mean(point_errors(pred2d, target2d), mask)


def joint_errors(
    pred: Array,
    target: Array,
    align: Optional[str] = "root",
    root: Root = 0,
    mask: Optional[Array] = None,
) -> Array:
    """Per-joint Euclidean errors after an optional alignment, ``(..., J, 3) x2 -> (..., J)``.

    Args:
      pred: ``(..., J, 3)`` predicted joints.
      target: ``(..., J, 3)`` ground truth, same units.
      align: ``'root'`` (subtract each skeleton's root, see :func:`root_align`), ``'procrustes'``
        (similarity alignment, see :func:`procrustes_align`) or ``None``/``'none'`` (raw).
      root: root joint(s) for ``align='root'``; ``None`` there means no alignment.
      mask: optional ``(..., J)`` weights; only used by the Procrustes alignment (the errors of
        masked joints are still returned).
    """
    if align not in _ALIGN_MODES:
        raise ValueError(f"align must be one of {_ALIGN_MODES}, got {align!r}")
    pred, target = _as_float(pred, target)
    if align == "root":
        pred, target = root_align(pred, root), root_align(target, root)
    elif align == "procrustes":
        pred = procrustes_align(pred, target, mask)
    return point_errors(pred, target)


def pck_from_errors(errors: Array, threshold, mask: Optional[Array] = None) -> Array:
    """Fraction of valid points whose error is strictly below ``threshold``.

    Args:
      errors: ``(..., N)`` per-point errors.
      threshold: scalar, or an array broadcastable against ``(...)`` — same units as ``errors``.
      mask: optional ``(..., N)`` point weights.

    Returns:
      ``(...)`` fraction in ``[0, 1]`` (``0`` if no point is valid).
    """
    errors = jnp.asarray(errors)
    threshold = jnp.asarray(threshold, errors.dtype)[..., None]
    return masked_mean((errors < threshold).astype(errors.dtype), mask)


def auc_from_errors(errors: Array, thresholds=None, mask: Optional[Array] = None) -> Array:
    """Area under the PCK curve: mean of :func:`pck_from_errors` over ``thresholds``.

    Args:
      errors: ``(..., N)`` per-point errors.
      thresholds: ``(T,)`` thresholds in the units of ``errors``; default :data:`AUC_THRESHOLDS_MM`
        (0, 5, ..., 150 — millimetres, so ``errors`` must then be millimetres).
      mask: optional ``(..., N)`` point weights.

    Returns:
      ``(...)`` value in ``[0, 1]``.
    """
    errors = jnp.asarray(errors)
    if thresholds is None:
        thresholds = AUC_THRESHOLDS_MM
    thresholds = jnp.asarray(thresholds, errors.dtype)
    if thresholds.ndim != 1:
        raise ValueError("thresholds must be a 1-D array")
    below = (errors[..., None, :] < thresholds[:, None]).astype(errors.dtype)  # (..., T, N)
    curve = masked_mean(below, None if mask is None else jnp.asarray(mask)[..., None, :])
    return jnp.mean(curve, axis=-1)


def pck(
    pred: Array,
    target: Array,
    threshold=PCK_THRESHOLD_MM,
    mask: Optional[Array] = None,
    root: Root = 0,
    align: Optional[str] = "root",
) -> Array:
    """3D PCK: fraction of valid joints whose error is strictly below ``threshold``.

    Args:
      pred: ``(..., J, 3)`` predicted joints.
      target: ``(..., J, 3)`` ground truth, same units.
      threshold: in the units of the inputs; default 150 (millimetres).
      mask: optional ``(..., J)`` joint weights.
      root: root joint(s) for ``align='root'``.
      align: ``'root'`` (default), ``'procrustes'`` or ``None`` (see :func:`joint_errors`).

    Returns:
      ``(...)`` fraction in ``[0, 1]``.
    """
    return pck_from_errors(joint_errors(pred, target, align, root, mask), threshold, mask)


def auc(
    pred: Array,
    target: Array,
    thresholds=None,
    mask: Optional[Array] = None,
    root: Root = 0,
    align: Optional[str] = "root",
) -> Array:
    """Area under the 3D PCK curve (mean PCK over ``thresholds``).

    Args:
      pred: ``(..., J, 3)`` predicted joints.
      target: ``(..., J, 3)`` ground truth, same units.
      thresholds: ``(T,)`` thresholds in the input units; default :data:`AUC_THRESHOLDS_MM`
        (0, 5, ..., 150 — inputs in millimetres).
      mask: optional ``(..., J)`` joint weights.
      root: root joint(s) for ``align='root'``.
      align: ``'root'`` (default), ``'procrustes'`` or ``None`` (see :func:`joint_errors`).

    Returns:
      ``(...)`` value in ``[0, 1]``.
    """
    return auc_from_errors(joint_errors(pred, target, align, root, mask), thresholds, mask)
