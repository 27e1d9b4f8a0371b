"""The losses of deform-and-learn, one pure function per equation of the appendix.

The lifter (appendix section 2, eq. 1–6, with the two anatomical priors this project adds),
registration (section 3, eq. 7–12) and regression (section 4, eq. 13–14).

Every function works on one sample or any leading batch shape ``...`` and returns ``(...)``: the
caller sums or averages over the batch. Point sets carry a mask (``(..., N)``, 1 = real point,
0 = padding or invisible); masked points contribute exactly zero to the value and the gradient, and
non-finite values under a zero mask are ignored (they never turn into NaN).

Units: 2D terms are computed in whatever image units the caller passes. The paper's weights
(ω_dense = 1000, ω_KP = 1, ω_scale = 10, ω_joint = 0.001, ω_det = 1) balance when image coordinates
are normalised to about [-1, 1] over the person crop, which is what :mod:`bodyjax.registration`
does.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import jax
import jax.numpy as jnp

from bodyjax import skeletons
from bodyjax.skeletons import KeypointSet

Array = jnp.ndarray
KeypointSetLike = Union[str, KeypointSet, None]


def _masked(values: Array, mask: Array) -> Array:
    """``values`` with masked-out entries replaced by 0 (so NaN padding cannot leak)."""
    return jnp.where(mask > 0, values, 0.0) * mask


def l_dense(projected: Array, target: Array, mask: Array, reduction: str = "mean") -> Array:
    """Dense correspondence loss, eq. (8): squared 2D distance of matched surface points.

    Args:
      projected: ``(..., N, 2)`` projections ``x_idx(i)`` of the matched template vertices.
      target: ``(..., N, 2)`` annotated image points ``p_i``.
      mask: ``(..., N)`` 1 for real correspondences.
      reduction: ``'mean'`` (the text's "mean squared error", over the valid points) or ``'sum'``
        (eq. 8 as written).

    Returns:
      ``(...)``; 0 for a sample without correspondences.
    """
    sq = jnp.sum(jnp.where(mask[..., None] > 0, projected - target, 0.0) ** 2, axis=-1)
    total = jnp.sum(_masked(sq, mask), axis=-1)
    if reduction == "sum":
        return total
    if reduction == "mean":
        return total / jnp.maximum(jnp.sum(mask, axis=-1), 1.0)
    raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")


def l_keypoints(projected: Array, target: Array, visible: Array,
                depth: Optional[Array] = None, target_depth: Optional[Array] = None,
                depth_mask: Optional[Array] = None, depth_weight: float | Array = 1.0) -> Array:
    """Keypoint loss with cGAN depths, eq. (9).

    ``Σ_i (x_i − x̄_i)² + (y_i − ȳ_i)² + w (z_i − z_i^GAN)²`` over visible keypoints; the depth term
    is optional (``depth``/``target_depth`` ``None`` leaves it out). ``w = 1`` is eq. 9 as written.

    Args:
      projected: ``(..., K, 2)`` model keypoints in the image.
      target: ``(..., K, 2)`` annotated keypoints.
      visible: ``(..., K)`` 1 for annotated keypoints.
      depth: ``(..., K)`` model keypoint depths, relative to the root, same units as the 2D terms.
      target_depth: ``(..., K)`` the lifter's depths ``z^GAN`` in the same frame.
      depth_mask: ``(..., K)`` which depths count (default: ``visible``).
      depth_weight: ``w``, the depth term's weight (EXTENSION: the paper weighs it as the 2D terms).

    Returns:
      ``(...)``.
    """
    sq = jnp.sum(jnp.where(visible[..., None] > 0, projected - target, 0.0) ** 2, axis=-1)
    loss = jnp.sum(_masked(sq, visible), axis=-1)
    if depth is not None and target_depth is not None:
        m = visible if depth_mask is None else depth_mask
        # Mask the difference before squaring: a NaN under a zero mask must not reach the gradient.
        dz = jnp.where(m > 0, depth - target_depth, 0.0)
        loss = loss + depth_weight * jnp.sum(_masked(dz ** 2, m), axis=-1)
    return loss


def l_scale(segment_scales: Array, adjacency: Sequence[tuple[int, int]] | Array) -> Array:
    """Segment-scaling smoothness, eq. (10): ``Σ_e (S_e − S_adj(e))²``.

    Args:
      segment_scales: ``(..., J)``.
      adjacency: ``(E, 2)`` pairs of adjacent segments (each joint and its parent, see
        :func:`bodyjax.body.segment_adjacency`).
    """
    adj = jnp.asarray(adjacency)
    diff = segment_scales[..., adj[:, 0]] - segment_scales[..., adj[:, 1]]
    return jnp.sum(diff ** 2, axis=-1)


def l_angle(pose: Array, hinge_joints: Sequence[int], hinge_axes: Array,
            joint_mask: Optional[Array] = None) -> Array:
    """Joint-angle smoothness and hyper-extension limit, eq. (11).

    ``Σ_{i∈J} ‖a_i‖² + Σ_{i∈J'} ‖exp(a_i)‖²``. The second term is written, as in the paper, as an
    exponential that grows with rotations in the forbidden direction. With a hinge's flexion axis
    ``n_i`` (positive angles bend the joint naturally), the rotation against the limit is
    ``−a_i · n_i``, so the term is ``exp(−a_i · n_i)²``: about 1 at rest, vanishing as the joint
    flexes, growing exponentially with hyper-extension.

    Args:
      pose: ``(..., J, 3)`` axis-angles (the root entry is ignored).
      hinge_joints: indices ``J'`` of the elbows and knees.
      hinge_axes: ``(J, 3)`` flexion axes (rows of the hinges are used).
      joint_mask: optional ``(J,)`` weights of the smoothness term (default: all joints but the root).
    """
    if joint_mask is None:
        joint_mask = jnp.ones(pose.shape[-2]).at[0].set(0.0)
    smooth = jnp.sum(jnp.sum(pose ** 2, axis=-1) * joint_mask, axis=-1)
    h = jnp.asarray(hinge_joints)
    flexion = jnp.sum(pose[..., h, :] * jnp.asarray(hinge_axes)[h], axis=-1)
    limit = jnp.sum(jnp.exp(-flexion) ** 2, axis=-1)
    return smooth + limit


def l_det(rotation: Array) -> Array:
    """Transformation determinant loss, eq. (12): ``exp(−det R)`` of the raw ``(..., 3, 3)`` matrix.

    Applied to the nine free numbers before Gram–Schmidt (after it the determinant is exactly ±1
    and has no gradient), it keeps the optimised matrix away from reflections.
    """
    return jnp.exp(-jnp.linalg.det(rotation))


def smooth_l1(x: Array, beta: float = 1.0) -> Array:
    """Elementwise smooth L1 (Huber with threshold ``beta``), the robust penalty of eq. (14)."""
    ax = jnp.abs(x)
    return jnp.where(ax < beta, 0.5 * x ** 2 / beta, ax - 0.5 * beta)


def l_regress(pred: Array, target: Array, mask: Optional[Array] = None, beta: float = 1.0) -> Array:
    """Parameter regression loss, eq. (14): ``Σ smoothL1(θ − θ̄)`` over the last axis.

    Args:
      pred, target: ``(..., P)`` parameter vectors in a representation where differences are
        meaningful (see :mod:`bodyjax.regressor` for the quaternion sign handling).
      mask: optional ``(..., P)`` or ``(...)`` weights.
    """
    diff = pred - target
    if mask is None:
        return jnp.sum(smooth_l1(diff, beta), axis=-1)
    mask = jnp.asarray(mask)
    mask = mask if mask.ndim == diff.ndim else mask[..., None]
    # Mask the difference before the penalty: a NaN under a zero mask must not reach the gradient.
    err = smooth_l1(jnp.where(mask > 0, diff, 0.0), beta)
    return jnp.sum(_masked(err, mask), axis=-1)


# ---------------------------------------------------------------------------------------------
# The lifter (appendix section 2): eq. 1-6 and the priors (extensions)
#
# Points are the lifted 3D keypoints of one skeleton, ``(..., N, 3)``, in the lifter's normalised
# frame (:mod:`bodyjax.lifter`); ``visibility (..., N)`` masks keypoints; ``keypoint_set`` is a
# name or a :class:`~bodyjax.skeletons.KeypointSet` (``None`` infers it from N).


def l_ratio(points3d: Array, visibility: Array, mean_ratios: Array,
            keypoint_set: KeypointSetLike = None) -> Array:
    """Bone-ratio loss, eq. 3: ``sum_e (l_e / l_trunk - mean_ratio_e)^2`` per skeleton.

    Bones with an invisible end are skipped; a skeleton whose trunk keypoints are not all visible
    contributes 0. Scale invariant.

    Args:
      points3d: ``(..., N, 3)`` (any units).
      visibility: ``(..., N)``.
      mean_ratios: ``(E,)`` the average skeleton's ``l_e / l_trunk``, e.g.
        ``skeletons.bone_ratios(template_rest_keypoints, keypoint_set)``.
      keypoint_set: name or :class:`KeypointSet`; ``None`` infers it from N.
    Returns:
      ``(...)`` per-skeleton loss.
    """
    ks = skeletons.resolve(keypoint_set, points3d.shape[-2])
    vis = jnp.asarray(visibility, points3d.dtype)
    lengths = skeletons.bone_lengths(points3d, ks)
    trunk_ok = skeletons.trunk_visibility(vis, ks)
    trunk = jnp.where(trunk_ok > 0, skeletons.trunk_length(points3d, ks), 1.0)
    ratios = lengths / trunk[..., None]
    w = skeletons.bone_visibility(vis, ks) * trunk_ok[..., None]
    return jnp.sum(w * jnp.square(ratios - jnp.asarray(mean_ratios, points3d.dtype)), axis=-1)


def l_sym(points3d: Array, visibility: Array, keypoint_set: KeypointSetLike = None) -> Array:
    """Bone-symmetry loss, eq. 4: ``sum_{(i,j)} (l_i - l_j)^2`` over left/right bone pairs.

    Lengths in the units of ``points3d`` (the lifter's normalised units). Pairs with an invisible
    bone are skipped.

    Args:
      points3d: ``(..., N, 3)``.
      visibility: ``(..., N)``.
      keypoint_set: name or :class:`KeypointSet`; ``None`` infers it from N.
    Returns:
      ``(...)`` per-skeleton loss.
    """
    ks = skeletons.resolve(keypoint_set, points3d.shape[-2])
    vis = jnp.asarray(visibility, points3d.dtype)
    lengths = skeletons.bone_lengths(points3d, ks)
    bvis = skeletons.bone_visibility(vis, ks)
    left = jnp.asarray([i for i, _ in ks.symmetric_bones])
    right = jnp.asarray([j for _, j in ks.symmetric_bones])
    w = bvis[..., left] * bvis[..., right]
    return jnp.sum(w * jnp.square(lengths[..., left] - lengths[..., right]), axis=-1)


def l_knee(points3d: Array, visibility: Array, keypoint_set: KeypointSetLike = None) -> Array:
    """Knee-direction prior (not in the paper): ``sum_knees relu(-knee_direction)``.

    Penalises knees bent forwards (:func:`knee_direction` < 0). Unlike eq. 1-4 it is NOT invariant
    under the depth mirror ``z -> -z``, so it can break the depth-sign ambiguity of round 1 (see the
    module docstring). A knee counts when its hip, knee, ankle and both hips are visible.

    Args:
      points3d: ``(..., N, 3)``.
      visibility: ``(..., N)``.
      keypoint_set: name or :class:`KeypointSet`; ``None`` infers it from N.
    Returns:
      ``(...)`` per-skeleton loss.
    """
    ks = skeletons.resolve(keypoint_set, points3d.shape[-2])
    vis = jnp.asarray(visibility, points3d.dtype)
    idx = jnp.asarray([[ks.names.index(n) for n in leg] for leg in skeletons.KNEE_NAMES[ks.name]])
    w = jnp.prod(vis[..., idx], axis=-1) * vis[..., idx[0, 0], None] * vis[..., idx[1, 0], None]
    return jnp.sum(w * jax.nn.relu(-skeletons.knee_direction(points3d, ks)), axis=-1)


def l_face(points3d: Array, visibility: Array, keypoint_set: KeypointSetLike = None) -> Array:
    """Face-direction prior (not in the paper): ``sum_ears relu(-face_direction)``.

    Penalises a nose behind the ears relative to the trunk's front (:func:`face_direction` < 0).
    Like :func:`l_knee` it changes sign under the depth mirror and so breaks the depth-sign ambiguity
    of eq. 1-4; it complements the knee prior where the legs are straight (knee direction ~0) and
    the face is labelled (people facing the camera). An ear counts when it, the nose, both hips and
    both shoulders are visible. Keypoint sets without face keypoints give 0.

    Args:
      points3d: ``(..., N, 3)``.
      visibility: ``(..., N)``.
      keypoint_set: name or :class:`KeypointSet`; ``None`` infers it from N.
    Returns:
      ``(...)`` per-skeleton loss.
    """
    ks = skeletons.resolve(keypoint_set, points3d.shape[-2])
    if ks.name not in skeletons.FACE_NAMES:
        return jnp.zeros(points3d.shape[:-2], points3d.dtype)
    idx = [ks.names.index(n) for n in skeletons.FACE_NAMES[ks.name]]
    vis = jnp.asarray(visibility, points3d.dtype)
    trunk = vis[..., idx[0]] * jnp.prod(vis[..., jnp.asarray(idx[3:])], axis=-1)
    w = trunk[..., None] * vis[..., jnp.asarray(idx[1:3])]
    return jnp.sum(w * jax.nn.relu(-skeletons.face_direction(points3d, ks)), axis=-1)


def l_joint(points3d: Array, targets3d: Array, visibility: Array) -> Array:
    """Joint loss, eq. 5, as an MSE: mean over visible joints of ``|p_i - p̄_i|^2`` per skeleton.

    Args:
      points3d: ``(..., N, 3)`` lifted joints (normalised frame).
      targets3d: ``(..., N, 3)`` targets in the same frame (:func:`normalize_joints3d`).
      visibility: ``(..., N)``.
    Returns:
      ``(...)`` per-skeleton loss (0 when no joint is visible).
    """
    vis = jnp.asarray(visibility, points3d.dtype)
    sq = jnp.sum(jnp.square(points3d - targets3d), axis=-1)
    return jnp.sum(vis * sq, axis=-1) / jnp.maximum(jnp.sum(vis, axis=-1), 1.0)


def generator_adversarial_loss(fake_logits: Array, form: str = "non_saturating") -> Array:
    """Eq. 1 for G, averaged over all fake logits ``(...)`` -> scalar.

    ``'non_saturating'``: ``-log D(fake)``; ``'minimax'``: ``log(1 - D(fake))`` (eq. 1 as written).
    """
    if form == "non_saturating":
        return jnp.mean(jax.nn.softplus(-fake_logits))
    if form == "minimax":
        return jnp.mean(-jax.nn.softplus(fake_logits))
    raise ValueError(f"unknown adversarial loss form {form!r}")


def discriminator_loss(real_logits: Array, fake_logits: Array) -> Array:
    """Eq. 2 completed: ``mean(-log D(real)) + mean(-log(1 - D(fake)))`` -> scalar."""
    return jnp.mean(jax.nn.softplus(-real_logits)) + jnp.mean(jax.nn.softplus(fake_logits))
