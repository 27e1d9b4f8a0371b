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

from bodyjax.linalg import normalize

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


def _safe_normalize(x: Array) -> Array:
    """Unit vectors along the last axis; zero maps to zero with finite gradients."""
    return normalize(x, eps=_EPS)


def _normalize_or(x: Array, fallback: Array) -> Array:
    """``x / |x|``, or ``fallback`` where ``|x|`` is (nearly) zero; finite gradients everywhere.

    Where ``|x| > eps`` the value is exactly :func:`_safe_normalize`'s.
    """
    ok = jnp.sum(x * x, axis=-1, keepdims=True) > _EPS * _EPS
    return jnp.where(ok, _safe_normalize(jnp.where(ok, x, 1.0)), fallback)


def _perpendicular(b: Array) -> Array:
    """A unit vector perpendicular to the unit vector ``b (..., 3)`` (from its least-aligned axis)."""
    e = jax.nn.one_hot(jnp.argmin(jnp.abs(b), axis=-1), 3, dtype=b.dtype)
    return _safe_normalize(e - jnp.sum(e * b, axis=-1, keepdims=True) * b)


def _two_columns(a1: Array, a2: Array) -> tuple[Array, Array]:
    """Orthonormal ``b1 ∥ a1`` and ``b2`` in the plane of ``(a1, a2)``, valid for every input.

    A zero ``a1`` gives ``b1 = e_x``; an ``a2`` (nearly) parallel to ``a1`` (less than 1e-5 of it
    left after the projection) gives a ``b2`` perpendicular to ``b1``. Elsewhere the values are
    the classical Gram–Schmidt ones (the projection applied twice, for float32 orthogonality).
    """
    b1 = _normalize_or(a1, jnp.zeros_like(a1).at[..., 0].set(1.0))
    r = a2 - jnp.sum(b1 * a2, axis=-1, keepdims=True) * b1
    # A second projection ("twice is enough"): when a2 is nearly parallel to a1, the first leaves a
    # component along b1 of the order of float32 round-off of |a2|, which is large against the small
    # residual (orthogonality errors up to 6e-4 measured); the second removes it. Exact arithmetic:
    # the same value and derivative.
    r = r - jnp.sum(b1 * r, axis=-1, keepdims=True) * b1
    sq, sq_a2 = jnp.sum(r * r, axis=-1, keepdims=True), jnp.sum(a2 * a2, axis=-1, keepdims=True)
    ok = (sq > 1e-10 * sq_a2) & (sq > _EPS * _EPS)
    b2 = jnp.where(ok, _safe_normalize(jnp.where(ok, r, 1.0)), _perpendicular(b1))
    return b1, b2


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
    ``c3 = c1 × c2``, and ``R = [c1 | c2 | c3]`` (columns). Every input gives a rotation (det +1):
    a zero ``a1`` or an ``a2 ∥ a1`` falls back to a valid frame (``c1 = e_x``, or a ``c2``
    perpendicular to ``c1``), so a network head can output anything.

    Args:
      x: ``(..., 6)``.

    Returns:
      ``(..., 3, 3)`` rotation matrices.
    """
    x = _as_float(x)
    c1, c2 = _two_columns(x[..., :3], x[..., 3:])
    return jnp.stack([c1, c2, jnp.cross(c1, c2)], axis=-1)


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
    a reflection (the determinant loss takes care of that during registration). Every input gives
    an orthogonal matrix: degenerate first or second columns fall back to a valid frame (see
    ``rot6d_to_matrix``), and ``b3 = ±b1 × b2`` on the side of ``c3`` (``+`` when ``c3`` lies in the
    span of the first two, up to round-off).

    Args:
      m: ``(..., 9)`` or ``(..., 3, 3)``.

    Returns:
      ``(..., 3, 3)`` orthogonal matrices ``[b1 | b2 | b3]``.
    """
    m = _to_matrix_shape(m, "gram_schmidt")
    c3 = m[..., :, 2]
    b1, b2 = _two_columns(m[..., :, 0], m[..., :, 1])

    def dot(a, b):
        return jnp.sum(a * b, axis=-1, keepdims=True)

    # Projections removed one after the other ("modified" Gram–Schmidt: the same result in exact
    # arithmetic, better orthogonality in float32 for ill-conditioned inputs).
    # The third column is the unit normal of (b1, b2), on the side of c3: in exact arithmetic the
    # Gram–Schmidt normalize(c3 − (b1·c3) b1 − (b2·c3) b2), and orthonormal even when c3 lies (up
    # to round-off: 100 ulp of its length) in the span of the first two (then the side is +).
    normal = jnp.cross(b1, b2)
    height = dot(c3 - dot(b1, c3) * b1 - dot(b2, c3) * b2, normal)
    tol = 100 * jnp.finfo(m.dtype).eps * jnp.sqrt(dot(c3, c3))
    side = jnp.where(height < -tol, -1.0, 1.0).astype(m.dtype)
    b3 = side * normal
    return jnp.stack([b1, b2, b3], axis=-1)


def _polar_parts(m: Array):
    """``(R, U', s', Vᵀ)`` with ``m = U' diag(s') Vᵀ``, ``det(U' Vᵀ) = +1`` and ``R = U' Vᵀ``."""
    u, s, vt = jnp.linalg.svd(m, full_matrices=False)
    sign = jnp.where(jnp.linalg.det(u) * jnp.linalg.det(vt) < 0, -1.0, 1.0).astype(m.dtype)
    u = u.at[..., :, 2].multiply(sign[..., None])
    s = s.at[..., 2].multiply(sign)   # signed singular values
    return u @ vt, u, s, vt


@jax.custom_jvp
def _polar(m: Array) -> Array:
    return _polar_parts(m)[0]


@_polar.defjvp
def _polar_jvp(primals, tangents):
    # Differential of the rotation factor of m = U' diag(s') Vᵀ (signed s'):
    #   dR = U' Ω Vᵀ,  Ω_ij = (X_ij − X_ji) / (s'_i + s'_j),  X = U'ᵀ dm V.
    # Where s'_i + s'_j vanishes (a rank-deficient m, or a reflection with equal smallest singular
    # values) the rotation is not unique; those terms are set to zero, so gradients stay finite.
    (m,), (dm,) = primals, tangents
    rot, u, s, vt = _polar_parts(m)
    x = jnp.swapaxes(u, -1, -2) @ dm @ jnp.swapaxes(vt, -1, -2)
    denom = s[..., :, None] + s[..., None, :]
    tol = 16 * jnp.finfo(m.dtype).eps * jnp.max(jnp.abs(s), axis=-1)[..., None, None] + jnp.finfo(m.dtype).tiny
    ok = jnp.abs(denom) > tol
    omega = jnp.where(ok, (x - jnp.swapaxes(x, -1, -2)) / jnp.where(ok, denom, 1.0), 0.0)
    return rot, u @ omega @ vt


def svd_orthogonalize(m: Array) -> Array:
    """Closest rotation (Frobenius norm) to a 3×3 matrix: ``U diag(1, 1, det(U Vᵀ)) Vᵀ``.

    ``m = U Σ Vᵀ`` is the SVD; the result is always special orthogonal (det = +1) and maximises
    ``trace(Rᵀ m)`` (so it is also the rotation of a Procrustes alignment with covariance ``m``).
    Accepts ``(..., 3, 3)`` or ``(..., 9)`` (row-major). The derivative is that of the polar factor,
    written so that it stays finite where singular values coincide (e.g. at the identity).

    Args:
      m: ``(..., 3, 3)`` or ``(..., 9)``.

    Returns:
      ``(..., 3, 3)`` rotation matrices.
    """
    return _polar(_to_matrix_shape(m, "svd_orthogonalize"))
