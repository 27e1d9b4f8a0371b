"""Rotation representations and conversions between them.

Conventions (shared by the whole project):

* Rotation matrices act on column vectors, ``X' = R @ X``; the columns of ``R`` are the images of the
  basis vectors.
* Axis-angle vectors ``a`` (``(..., 3)``) point along the rotation axis and have length ``θ``, the
  angle in radians (right-hand rule).
* Quaternions are ``(w, x, y, z)``, scalar first, ``(..., 4)``. Functions that return quaternions
  return unit quaternions with ``w >= 0`` (the standard representative of ``±q``).
* 9-number rotations (``(..., 9)``) are reshaped row-major to ``(..., 3, 3)``.
* The 6D representation (Zhou et al., 2019) is the first two COLUMNS of the matrix concatenated,
  ``[c1, c2]`` (``(..., 6)``).

Every function is written in plain ``jax.numpy``, accepts arbitrary leading batch dimensions ``...``,
keeps the floating dtype of its input (float32 by default; integer inputs become float32), and is
jit/vmap/grad friendly. Singular points (zero angle, zero vectors, the zero quaternion) are handled
with the "double ``where``" trick or clamped norms, so values and gradients there are finite; at zero
angle they are the exact limits.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jnp.ndarray

__all__ = [
    "skew",
    "axis_angle_to_matrix",
    "matrix_to_axis_angle",
    "quaternion_to_matrix",
    "matrix_to_quaternion",
    "axis_angle_to_quaternion",
    "quaternion_to_axis_angle",
    "quaternion_multiply",
    "standardize_quaternion",
    "rot6d_to_matrix",
    "matrix_to_rot6d",
    "gram_schmidt",
    "svd_orthogonalize",
]

# Norms are clamped below at this value before dividing, so that zero vectors map to zero with
# finite gradients.
_EPS = 1e-8
# Below this squared angle (θ² < 1e-2, i.e. θ < 0.1 rad) the closed forms are replaced by Taylor
# series; with the orders used below the truncation error is < 1e-14 (relative), below float64
# round-off, while the closed forms stay well conditioned in float32 above it.
_SMALL_ANGLE_SQ = 1e-2


def _as_float(x) -> Array:
    """Converts to a JAX array with a floating dtype (float32 for integer/bool inputs)."""
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.float32)
    return x


def _safe_norm(x: Array, axis: int = -1, keepdims: bool = True, eps: float = _EPS) -> Array:
    """``sqrt(max(sum x², eps²))`` along ``axis``: never zero, finite gradient everywhere."""
    return jnp.sqrt(jnp.maximum(jnp.sum(x * x, axis=axis, keepdims=keepdims), eps * eps))


def _safe_normalize(x: Array, axis: int = -1, eps: float = _EPS) -> Array:
    """``x / sqrt(max(|x|², eps²))``; a zero vector maps to zero with a finite gradient."""
    return x / _safe_norm(x, axis=axis, keepdims=True, eps=eps)


def _to_matrix_shape(m: Array, name: str) -> Array:
    """Accepts ``(..., 9)`` (row-major) or ``(..., 3, 3)`` and returns ``(..., 3, 3)``."""
    m = _as_float(m)
    if m.shape[-1:] == (9,):
        return m.reshape(m.shape[:-1] + (3, 3))
    if m.shape[-2:] == (3, 3):
        return m
    raise ValueError(f"{name}: expected shape (..., 9) or (..., 3, 3), got {m.shape}")


def _polyval(coeffs, t: Array) -> Array:
    """``sum_k coeffs[k] * t**k`` by Horner's rule."""
    out = jnp.full_like(t, coeffs[-1])
    for c in reversed(coeffs[:-1]):
        out = out * t + c
    return out


def skew(v: Array) -> Array:
    """Cross-product (skew-symmetric) matrix: ``skew(v) @ u == cross(v, u)``.

    Args:
      v: ``(..., 3)``.

    Returns:
      ``(..., 3, 3)`` matrix ``[[0, -z, y], [z, 0, -x], [-y, x, 0]]``.
    """
    v = _as_float(v)
    x, y, z = v[..., 0], v[..., 1], v[..., 2]
    o = jnp.zeros_like(x)
    return jnp.stack(
        [
            jnp.stack([o, -z, y], axis=-1),
            jnp.stack([z, o, -x], axis=-1),
            jnp.stack([-y, x, o], axis=-1),
        ],
        axis=-2,
    )


def axis_angle_to_matrix(aa: Array) -> Array:
    """Rodrigues' formula, exact (value and derivatives) down to zero angle.

    Written in terms of the unscaled vector ``a`` (``θ = |a|``, ``K = skew(a)``)::

        R = I + A K + B K²,   A = sin θ / θ,   B = (1 - cos θ) / θ²,

    where ``A`` and ``B`` are evaluated as Taylor series in ``θ²`` for small angles (double ``where``
    so that the unused branch never produces NaN gradients). At ``a = 0``: ``R = I`` and
    ``∂R/∂a_i = skew(e_i)``.

    Args:
      aa: ``(..., 3)`` axis-angle vectors (radians).

    Returns:
      ``(..., 3, 3)`` rotation matrices.
    """
    aa = _as_float(aa)
    t = jnp.sum(aa * aa, axis=-1)  # θ²
    small = t < _SMALL_ANGLE_SQ
    t_safe = jnp.where(small, _SMALL_ANGLE_SQ, t)  # the large branch never sees tiny θ
    theta = jnp.sqrt(t_safe)
    half = 0.5 * theta
    sin_half = jnp.sin(half)
    a_large = jnp.sin(theta) / theta
    b_large = 2.0 * sin_half * sin_half / t_safe  # (1 - cos θ)/θ² without cancellation
    # sin θ/θ = Σ (-t)^k / (2k+1)!,  (1 - cos θ)/θ² = Σ (-t)^k / (2k+2)!
    a_small = _polyval((1.0, -1.0 / 6, 1.0 / 120, -1.0 / 5040, 1.0 / 362880), t)
    b_small = _polyval((0.5, -1.0 / 24, 1.0 / 720, -1.0 / 40320, 1.0 / 3628800), t)
    a_coef = jnp.where(small, a_small, a_large)[..., None, None]
    b_coef = jnp.where(small, b_small, b_large)[..., None, None]
    k = skew(aa)
    eye = jnp.eye(3, dtype=aa.dtype)
    return eye + a_coef * k + b_coef * (k @ k)


def standardize_quaternion(q: Array) -> Array:
    """Picks the representative of ``±q`` with a non-negative scalar part.

    Args:
      q: ``(..., 4)`` quaternions ``(w, x, y, z)``.

    Returns:
      ``(..., 4)``, ``q`` or ``-q`` such that ``w >= 0`` (unchanged when ``w == 0``).
    """
    q = _as_float(q)
    return jnp.where(q[..., :1] < 0, -q, q)


def quaternion_multiply(q1: Array, q2: Array) -> Array:
    """Hamilton product ``q1 ⊗ q2`` (rotation ``q2`` first, then ``q1``).

    ``quaternion_to_matrix(quaternion_multiply(q1, q2)) ==
    quaternion_to_matrix(q1) @ quaternion_to_matrix(q2)``.

    Args:
      q1: ``(..., 4)`` ``(w, x, y, z)``.
      q2: ``(..., 4)`` ``(w, x, y, z)``; broadcasts against ``q1``.

    Returns:
      ``(..., 4)`` product (not normalised, not standardised).
    """
    q1, q2 = _as_float(q1), _as_float(q2)
    w1, x1, y1, z1 = jnp.moveaxis(q1, -1, 0)
    w2, x2, y2, z2 = jnp.moveaxis(q2, -1, 0)
    return jnp.stack(
        [
            w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2,
            w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
            w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2,
            w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2,
        ],
        axis=-1,
    )


def quaternion_to_matrix(q: Array) -> Array:
    """Rotation matrix of a (not necessarily unit) quaternion.

    ``q`` is normalised first (with a clamped norm), so raw network outputs can be passed directly.
    The zero quaternion maps to the identity with finite gradients.

    Args:
      q: ``(..., 4)`` quaternions ``(w, x, y, z)``.

    Returns:
      ``(..., 3, 3)`` rotation matrices.
    """
    q = _safe_normalize(_as_float(q))
    w, x, y, z = jnp.moveaxis(q, -1, 0)
    xx, yy, zz = x * x, y * y, z * z
    xy, xz, yz = x * y, x * z, y * z
    wx, wy, wz = w * x, w * y, w * z
    return jnp.stack(
        [
            jnp.stack([1 - 2 * (yy + zz), 2 * (xy - wz), 2 * (xz + wy)], axis=-1),
            jnp.stack([2 * (xy + wz), 1 - 2 * (xx + zz), 2 * (yz - wx)], axis=-1),
            jnp.stack([2 * (xz - wy), 2 * (yz + wx), 1 - 2 * (xx + yy)], axis=-1),
        ],
        axis=-2,
    )


def matrix_to_quaternion(R: Array) -> Array:
    """Unit quaternion of a rotation matrix (Shepperd's method).

    The four candidate formulas (dividing by ``4|w|``, ``4|x|``, ``4|y|``, ``4|z|``) are all
    evaluated and the best conditioned one, the one with the largest of ``1 + tr R``,
    ``1 + R00 - R11 - R22``, ``1 - R00 + R11 - R22``, ``1 - R00 - R11 + R22``, is selected with
    ``argmax``/``where`` (no Python branching). The result is normalised, which also makes the
    function usable for slightly non-orthogonal inputs, and standardised to ``w >= 0``.

    Args:
      R: ``(..., 3, 3)`` rotation matrices.

    Returns:
      ``(..., 4)`` unit quaternions ``(w, x, y, z)`` with ``w >= 0``.
    """
    R = _as_float(R)
    r00, r01, r02 = R[..., 0, 0], R[..., 0, 1], R[..., 0, 2]
    r10, r11, r12 = R[..., 1, 0], R[..., 1, 1], R[..., 1, 2]
    r20, r21, r22 = R[..., 2, 0], R[..., 2, 1], R[..., 2, 2]
    # 4 w², 4 x², 4 y², 4 z² for an exact rotation.
    d = jnp.stack(
        [
            1 + r00 + r11 + r22,
            1 + r00 - r11 - r22,
            1 - r00 + r11 - r22,
            1 - r00 - r11 + r22,
        ],
        axis=-1,
    )
    # Row k holds 4 q_k q for the k-th candidate.
    c_w = jnp.stack([d[..., 0], r21 - r12, r02 - r20, r10 - r01], axis=-1)
    c_x = jnp.stack([r21 - r12, d[..., 1], r01 + r10, r02 + r20], axis=-1)
    c_y = jnp.stack([r02 - r20, r01 + r10, d[..., 2], r12 + r21], axis=-1)
    c_z = jnp.stack([r10 - r01, r02 + r20, r12 + r21, d[..., 3]], axis=-1)
    cands = jnp.stack([c_w, c_x, c_y, c_z], axis=-2)  # (..., 4, 4)
    # Dividing row k by 2 sqrt(d_k) gives ±q. The clamp keeps the rows that are not selected finite
    # (and their gradients), the selected one has d_k >= 1 for a rotation (the d_k sum to 4).
    cands = cands / (2.0 * jnp.sqrt(jnp.maximum(d, 0.1)))[..., None]
    best = jnp.argmax(d, axis=-1)
    onehot = best[..., None] == jnp.arange(4)  # (..., 4)
    q = jnp.sum(jnp.where(onehot[..., None], cands, 0.0), axis=-2)
    return standardize_quaternion(_safe_normalize(q))


def axis_angle_to_quaternion(aa: Array) -> Array:
    """Unit quaternion ``(cos(θ/2), sin(θ/2) a/θ)`` of an axis-angle vector.

    Exact with finite derivatives at zero angle (Taylor series below θ = 0.1). The result has
    ``w >= 0`` whenever ``θ <= π``; it is not standardised for larger angles.

    Args:
      aa: ``(..., 3)`` axis-angle vectors (radians).

    Returns:
      ``(..., 4)`` unit quaternions ``(w, x, y, z)``.
    """
    aa = _as_float(aa)
    t = jnp.sum(aa * aa, axis=-1)
    small = t < _SMALL_ANGLE_SQ
    t_safe = jnp.where(small, _SMALL_ANGLE_SQ, t)
    half = 0.5 * jnp.sqrt(t_safe)
    # With u = θ²/4: cos(θ/2) = Σ (-u)^k/(2k)!,  sin(θ/2)/θ = ½ Σ (-u)^k/(2k+1)!
    u = 0.25 * t
    w_small = _polyval((1.0, -1.0 / 2, 1.0 / 24, -1.0 / 720, 1.0 / 40320), u)
    s_small = 0.5 * _polyval((1.0, -1.0 / 6, 1.0 / 120, -1.0 / 5040, 1.0 / 362880), u)
    w = jnp.where(small, w_small, jnp.cos(half))
    s = jnp.where(small, s_small, jnp.sin(half) / (2.0 * half))
    return jnp.concatenate([w[..., None], s[..., None] * aa], axis=-1)


def quaternion_to_axis_angle(q: Array) -> Array:
    """Axis-angle vector of a (not necessarily unit) quaternion, angle in ``[0, π]``.

    ``q`` is normalised and standardised (``w >= 0``) first; then ``θ = 2 atan2(|v|, w)`` and
    ``a = θ v/|v|`` with ``v = (x, y, z)``. For ``|v|`` small the factor ``θ/|v|`` is a Taylor series
    (double ``where``), so the identity maps to zero with finite gradients (``∂a/∂v = 2``).

    Args:
      q: ``(..., 4)`` quaternions ``(w, x, y, z)``.

    Returns:
      ``(..., 3)`` axis-angle vectors.
    """
    q = standardize_quaternion(_safe_normalize(_as_float(q)))
    w = q[..., 0]
    v = q[..., 1:]
    s2 = jnp.sum(v * v, axis=-1)
    # |v|² < 1e-4 implies w > 0.99 for a unit quaternion.
    small = s2 < 1e-4
    s2_safe = jnp.where(small, 1.0, s2)
    s = jnp.sqrt(s2_safe)
    f_large = 2.0 * jnp.arctan2(s, w) / s
    # The clamp only matters for the zero quaternion (w = 0, v = 0), which maps to zero.
    w_safe = jnp.where(small, jnp.maximum(w, 0.5), 1.0)
    # 2 atan(s/w)/s = (2/w) Σ (-u)^k/(2k+1), u = s²/w².
    u = s2 / (w_safe * w_safe)
    f_small = (2.0 / w_safe) * _polyval((1.0, -1.0 / 3, 1.0 / 5, -1.0 / 7, 1.0 / 9), u)
    f = jnp.where(small, f_small, f_large)
    return f[..., None] * v


def matrix_to_axis_angle(R: Array) -> Array:
    """Axis-angle vector (angle in ``[0, π]``) of a rotation matrix.

    Goes through :func:`matrix_to_quaternion` (Shepperd), so it is accurate near zero and near ``π``
    alike, and has finite gradients at the identity (there ``∂a/∂R`` extracts the axial vector of the
    antisymmetric part, ``a ≈ ½ (R21 - R12, R02 - R20, R10 - R01)``). At exactly ``θ = π`` either
    of the two equivalent vectors ``±π n`` may be returned.

    Args:
      R: ``(..., 3, 3)`` rotation matrices.

    Returns:
      ``(..., 3)`` axis-angle vectors.
    """
    return quaternion_to_axis_angle(matrix_to_quaternion(R))


def rot6d_to_matrix(x: Array) -> Array:
    """Rotation from the continuous 6D representation (Zhou et al., 2019).

    With ``x = [a1, a2]``: ``c1 = normalize(a1)``, ``c2 = normalize(a2 - (c1·a2) c1)``,
    ``c3 = c1 × c2``, and ``R = [c1 | c2 | c3]`` (columns). Degenerate inputs (``a1 = 0`` or
    ``a2 ∥ a1``) give a non-rotation with zero columns but finite values and gradients.

    Args:
      x: ``(..., 6)``.

    Returns:
      ``(..., 3, 3)`` rotation matrices.
    """
    x = _as_float(x)
    a1, a2 = x[..., :3], x[..., 3:]
    c1 = _safe_normalize(a1)
    c2 = _safe_normalize(a2 - jnp.sum(c1 * a2, axis=-1, keepdims=True) * c1)
    c3 = jnp.cross(c1, c2)
    return jnp.stack([c1, c2, c3], axis=-1)


def matrix_to_rot6d(R: Array) -> Array:
    """6D representation of a rotation matrix: its first two columns concatenated.

    Args:
      R: ``(..., 3, 3)``.

    Returns:
      ``(..., 6)`` ``[R[..., :, 0], R[..., :, 1]]``.
    """
    R = _as_float(R)
    return jnp.concatenate([R[..., :, 0], R[..., :, 1]], axis=-1)


def gram_schmidt(m: Array) -> Array:
    """Gram–Schmidt orthonormalisation of the columns of a 3×3 matrix (the 9-number rotation).

    Accepts either ``(..., 9)`` (reshaped row-major to ``(..., 3, 3)``) or ``(..., 3, 3)``. The
    columns are orthonormalised in order: ``b1 = normalize(c1)``,
    ``b2 = normalize(c2 - (b1·c2) b1)``, ``b3 = normalize(c3 - (b1·c3) b1 - (b2·c3) b2)``.
    The determinant is NOT forced to +1: the result has the sign of ``det(m)``, so a reflection stays
    a reflection (the determinant loss takes care of that during registration). Degenerate
    (rank-deficient) inputs give zero columns with finite values and gradients.

    Args:
      m: ``(..., 9)`` or ``(..., 3, 3)``.

    Returns:
      ``(..., 3, 3)`` orthogonal matrices ``[b1 | b2 | b3]``.
    """
    m = _to_matrix_shape(m, "gram_schmidt")
    c1, c2, c3 = m[..., :, 0], m[..., :, 1], m[..., :, 2]

    def dot(a, b):
        return jnp.sum(a * b, axis=-1, keepdims=True)

    b1 = _safe_normalize(c1)
    b2 = _safe_normalize(c2 - dot(b1, c2) * b1)
    # Projections removed one after the other ("modified" Gram–Schmidt: the same result in exact
    # arithmetic, better orthogonality in float32 for ill-conditioned inputs).
    r3 = c3 - dot(b1, c3) * b1
    b3 = _safe_normalize(r3 - dot(b2, r3) * b2)
    return jnp.stack([b1, b2, b3], axis=-1)


def svd_orthogonalize(m: Array) -> Array:
    """Closest rotation (Frobenius norm) to a 3×3 matrix: ``U diag(1, 1, det(U Vᵀ)) Vᵀ``.

    ``m = U Σ Vᵀ`` is the SVD. Accepts ``(..., 3, 3)`` or ``(..., 9)`` (row-major). The result is
    always special orthogonal (det = +1). Gradients are those of the SVD, well defined where the
    singular values of ``m`` are distinct (and, if ``det m < 0``, the smallest is simple).

    Args:
      m: ``(..., 3, 3)`` or ``(..., 9)``.

    Returns:
      ``(..., 3, 3)`` rotation matrices.
    """
    m = _to_matrix_shape(m, "svd_orthogonalize")
    u, _, vt = jnp.linalg.svd(m, full_matrices=False)
    # det(U Vᵀ) is ±1 and locally constant: no gradient flows through it.
    det = jax.lax.stop_gradient(jnp.linalg.det(u @ vt))
    sign = jnp.where(det < 0, -1.0, 1.0).astype(m.dtype)
    u = u.at[..., :, 2].multiply(sign[..., None])
    return u @ vt
