"""Tests for bodyjax.rotations against independent float64 NumPy / SciPy references."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy.spatial.transform import Rotation

from bodyjax import rotations as rot

SETTINGS = settings(max_examples=50, deadline=None)
BATCH = 16

# Jit once; shapes are fixed by the strategies below so each compiles a single time.
aa2mat = jax.jit(rot.axis_angle_to_matrix)
mat2aa = jax.jit(rot.matrix_to_axis_angle)
q2mat = jax.jit(rot.quaternion_to_matrix)
mat2q = jax.jit(rot.matrix_to_quaternion)
aa2q = jax.jit(rot.axis_angle_to_quaternion)
q2aa = jax.jit(rot.quaternion_to_axis_angle)
r6d2mat = jax.jit(rot.rot6d_to_matrix)
mat2r6d = jax.jit(rot.matrix_to_rot6d)
gs = jax.jit(rot.gram_schmidt)
svdo = jax.jit(rot.svd_orthogonalize)


# ----------------------------------------------------------------------------- NumPy references


def np_skew(v):
    v = np.asarray(v, np.float64)
    o = np.zeros(v.shape[:-1])
    x, y, z = v[..., 0], v[..., 1], v[..., 2]
    return np.stack([np.stack([o, -z, y], -1), np.stack([z, o, -x], -1), np.stack([-y, x, o], -1)], -2)


def np_rodrigues(aa):
    """R = cos θ I + sin θ [k]x + (1 - cos θ) k kᵀ in float64 (k the unit axis)."""
    aa = np.asarray(aa, np.float64)
    theta = np.linalg.norm(aa, axis=-1)
    k = aa / np.where(theta > 0, theta, 1.0)[..., None]
    c, s = np.cos(theta)[..., None, None], np.sin(theta)[..., None, None]
    return c * np.eye(3) + s * np_skew(k) + (1 - c) * k[..., :, None] * k[..., None, :]


def np_quat_to_matrix(q):
    """Euler–Rodrigues vector form R = (w² - v·v) I + 2 v vᵀ + 2 w [v]x for unit q (w, v)."""
    q = np.asarray(q, np.float64)
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    w, v = q[..., 0], q[..., 1:]
    return ((w**2 - np.sum(v * v, -1))[..., None, None] * np.eye(3)
            + 2 * v[..., :, None] * v[..., None, :] + 2 * w[..., None, None] * np_skew(v))


def np_bar_itzhack(R):
    """Quaternion (w, x, y, z), w >= 0, as the top eigenvector of the symmetric 4x4 matrix K.

    For an exact rotation K = (4 q qᵀ - I) / 3 (eigenvalue 1 for q, -1/3 otherwise).
    """
    R = np.asarray(R, np.float64)
    r = lambda i, j: R[..., i, j]  # noqa: E731
    K = np.stack([
        np.stack([r(0, 0) + r(1, 1) + r(2, 2), r(2, 1) - r(1, 2), r(0, 2) - r(2, 0), r(1, 0) - r(0, 1)], -1),
        np.stack([r(2, 1) - r(1, 2), r(0, 0) - r(1, 1) - r(2, 2), r(0, 1) + r(1, 0), r(0, 2) + r(2, 0)], -1),
        np.stack([r(0, 2) - r(2, 0), r(0, 1) + r(1, 0), r(1, 1) - r(0, 0) - r(2, 2), r(1, 2) + r(2, 1)], -1),
        np.stack([r(1, 0) - r(0, 1), r(0, 2) + r(2, 0), r(1, 2) + r(2, 1), r(2, 2) - r(0, 0) - r(1, 1)], -1),
    ], -2) / 3.0
    _, vecs = np.linalg.eigh(K)
    q = vecs[..., :, -1]
    return np.where(q[..., :1] < 0, -q, q)


def np_gram_schmidt(M):
    """Columns orthonormalised in order == Q of the QR factorisation with a positive diagonal of R."""
    M = np.asarray(M, np.float64)
    Q, Rf = np.linalg.qr(M)
    d = np.sign(np.diagonal(Rf, axis1=-2, axis2=-1))
    return Q * d[..., None, :]


def np_svd_rotation(M):
    U, _, Vt = np.linalg.svd(np.asarray(M, np.float64))
    d = np.sign(np.linalg.det(U @ Vt))
    U = U.copy()
    U[..., :, 2] *= d[..., None]
    return U @ Vt


def scipy_quat(R):
    """SciPy quaternion in (w, x, y, z) order with w >= 0."""
    xyzw = Rotation.from_matrix(np.asarray(R, np.float64).reshape(-1, 3, 3)).as_quat()
    q = np.concatenate([xyzw[:, 3:], xyzw[:, :3]], -1)
    q = np.where(q[:, :1] < 0, -q, q)
    return q.reshape(np.shape(R)[:-2] + (4,))


def assert_rotations(R, atol=1e-5):
    R = np.asarray(R, np.float64)
    eye = np.broadcast_to(np.eye(3), R.shape)
    np.testing.assert_allclose(np.swapaxes(R, -1, -2) @ R, eye, atol=atol)
    np.testing.assert_allclose(np.linalg.det(R), 1.0, atol=atol)


def quat_close_up_to_sign(q1, q2, atol):
    q1, q2 = np.asarray(q1, np.float64), np.asarray(q2, np.float64)
    err = np.minimum(np.abs(q1 - q2).max(-1), np.abs(q1 + q2).max(-1))
    assert err.max() < atol, err.max()


# ----------------------------------------------------------------------------- strategies

unit_floats = st.floats(-1.0, 1.0, allow_subnormal=False, width=32)


@st.composite
def axis_angles(draw, max_angle=np.pi - 1e-3, n=BATCH):
    """(n, 3) float64 axis-angles with angles in [0, max_angle] and arbitrary axes."""
    axes = draw(hnp.arrays(np.float64, (n, 3), elements=unit_floats))
    angles = draw(hnp.arrays(np.float64, (n,), elements=st.floats(0.0, max_angle, allow_subnormal=False)))
    norms = np.linalg.norm(axes, axis=-1, keepdims=True)
    axes = np.where(norms > 1e-3, axes / np.maximum(norms, 1e-3), np.array([0.0, 0.0, 1.0]))
    return (axes * angles[:, None]).astype(np.float32)


@st.composite
def quaternions(draw, n=BATCH):
    """(n, 4) non-unit, non-degenerate quaternions (float32)."""
    q = draw(hnp.arrays(np.float64, (n, 4), elements=unit_floats))
    norms = np.linalg.norm(q, axis=-1, keepdims=True)
    return np.where(norms > 1e-2, q, np.array([1.0, 0.0, 0.0, 0.0])).astype(np.float32)


def random_matrices(seed, n=BATCH, min_sv=0.05):
    """Well-conditioned general 3x3 matrices (both determinant signs)."""
    rng = np.random.default_rng(seed)
    M = rng.normal(size=(n, 3, 3))
    sv = np.linalg.svd(M, compute_uv=False)
    bad = sv[:, -1] < min_sv * sv[:, 0]
    M[bad] = np.eye(3) + 0.1 * rng.normal(size=(int(bad.sum()), 3, 3))
    return M.astype(np.float32)


seeds = st.integers(0, 2**32 - 1)


@pytest.fixture
def x64():
    """Runs the test with 64-bit floats enabled; restores the previous setting afterwards."""
    with jax.enable_x64(True):
        yield


# ----------------------------------------------------------------------------- references / round trips


@SETTINGS
@given(axis_angles())
def test_axis_angle_to_matrix_matches_numpy_and_scipy(aa):
    R = np.asarray(aa2mat(aa))
    np.testing.assert_allclose(R, np_rodrigues(aa), atol=2e-6)
    np.testing.assert_allclose(R, Rotation.from_rotvec(aa.astype(np.float64)).as_matrix(), atol=2e-6)


def test_axis_angle_taylor_switch_is_accurate(x64):
    # Angles straddling the Taylor/closed-form switch and tiny ones: float64 accuracy everywhere.
    rng = np.random.default_rng(0)
    angles = np.concatenate([np.linspace(0.09, 0.11, 41), np.logspace(-12, np.log10(3.14), 60), [0.1, 0.0]])
    axes = rng.normal(size=(angles.size, 3))
    aa = axes / np.linalg.norm(axes, axis=-1, keepdims=True) * angles[:, None]
    R, q = jax.jit(lambda a: (rot.axis_angle_to_matrix(a), rot.axis_angle_to_quaternion(a)))(aa)
    R, q = np.asarray(R), np.asarray(q)
    assert R.dtype == np.float64
    np.testing.assert_allclose(R, np_rodrigues(aa), atol=1e-15, rtol=0)
    np.testing.assert_allclose(np_quat_to_matrix(q), np_rodrigues(aa), atol=1e-15, rtol=0)
    # Quaternion -> axis-angle around its own switch (|v|² = 1e-4, θ ≈ 0.02) and over the full range.
    angles = np.concatenate([np.linspace(0.019, 0.021, 41), np.logspace(-9, np.log10(3.14), 60)])
    aa = axes[:1] / np.linalg.norm(axes[:1]) * angles[:, None]
    q = np.concatenate([np.cos(angles / 2)[:, None], np.sin(angles / 2)[:, None] * aa / angles[:, None]], -1)
    np.testing.assert_allclose(np.asarray(jax.jit(rot.quaternion_to_axis_angle)(q)), aa, atol=1e-16, rtol=1e-13)


@SETTINGS
@given(axis_angles())
def test_axis_angle_round_trip(aa):
    np.testing.assert_allclose(np.asarray(mat2aa(aa2mat(aa))), aa, atol=3e-5)
    np.testing.assert_allclose(np.asarray(q2aa(aa2q(aa))), aa, atol=3e-5)


@SETTINGS
@given(axis_angles())
def test_axis_angle_to_quaternion_matches_scipy(aa):
    q = np.asarray(aa2q(aa))
    assert np.all(q[:, 0] >= 0)
    np.testing.assert_allclose(q, scipy_quat(Rotation.from_rotvec(aa.astype(np.float64)).as_matrix()), atol=2e-6)


@SETTINGS
@given(quaternions())
def test_quaternion_round_trip(q):
    R = q2mat(q)
    np.testing.assert_allclose(np.asarray(R), np_quat_to_matrix(q), atol=2e-6)
    q_back = np.asarray(mat2q(R))
    assert np.all(q_back[:, 0] >= 0)
    np.testing.assert_allclose(np.linalg.norm(q_back, axis=-1), 1.0, atol=1e-6)
    quat_close_up_to_sign(q_back, q / np.linalg.norm(q, axis=-1, keepdims=True), atol=3e-6)


@SETTINGS
@given(quaternions())
def test_matrix_to_quaternion_matches_bar_itzhack_and_scipy(q):
    R = np_quat_to_matrix(q)  # float64 rotations
    q_ours = np.asarray(mat2q(R.astype(np.float32)))
    quat_close_up_to_sign(q_ours, np_bar_itzhack(R), atol=3e-6)
    quat_close_up_to_sign(q_ours, scipy_quat(R), atol=3e-6)
    # Away from w = 0 the sign is fixed by the w >= 0 convention.
    ref = np_bar_itzhack(R)
    keep = ref[:, 0] > 1e-3
    np.testing.assert_allclose(q_ours[keep], ref[keep], atol=3e-6)


@SETTINGS
@given(quaternions(), quaternions())
def test_quaternion_multiply_composes_rotations(q1, q2):
    R12 = np.asarray(q2mat(rot.quaternion_multiply(q1, q2)))
    np.testing.assert_allclose(R12, np_quat_to_matrix(q1) @ np_quat_to_matrix(q2), atol=3e-6)


def test_standardize_quaternion():
    q = jnp.array([[-0.5, 0.5, -0.5, 0.5], [0.5, 0.5, 0.5, 0.5], [0.0, 1.0, 0.0, 0.0]])
    np.testing.assert_array_equal(
        np.asarray(rot.standardize_quaternion(q)),
        [[0.5, -0.5, 0.5, -0.5], [0.5, 0.5, 0.5, 0.5], [0.0, 1.0, 0.0, 0.0]])


@SETTINGS
@given(axis_angles(max_angle=np.pi))
def test_rot6d_round_trip(aa):
    R = aa2mat(aa)
    x = mat2r6d(R)
    assert x.shape == (BATCH, 6)
    np.testing.assert_array_equal(np.asarray(x)[:, :3], np.asarray(R)[:, :, 0])
    np.testing.assert_array_equal(np.asarray(x)[:, 3:], np.asarray(R)[:, :, 1])
    np.testing.assert_allclose(np.asarray(r6d2mat(x)), np.asarray(R), atol=2e-6)


# ----------------------------------------------------------------------------- outputs are rotations


@SETTINGS
@given(axis_angles(max_angle=4 * np.pi), quaternions(), seeds)
def test_outputs_are_rotations(aa, q, seed):
    M = random_matrices(seed)
    assert_rotations(aa2mat(aa))
    assert_rotations(q2mat(q))
    assert_rotations(r6d2mat(M.reshape(BATCH, 9)[:, :6]))
    assert_rotations(svdo(M))


@SETTINGS
@given(seeds)
def test_rot6d_to_matrix_is_gram_schmidt_of_first_columns(seed):
    M = random_matrices(seed)
    x = np.concatenate([M[:, :, 0], M[:, :, 1]], -1)
    ref = np_gram_schmidt(M)
    R = np.asarray(r6d2mat(x))
    np.testing.assert_allclose(R[:, :, :2], ref[:, :, :2], atol=2e-5)
    np.testing.assert_allclose(R[:, :, 2], np.cross(ref[:, :, 0], ref[:, :, 1]), atol=2e-5)


@SETTINGS
@given(seeds)
def test_svd_orthogonalize_matches_numpy(seed):
    M = random_matrices(seed)
    np.testing.assert_allclose(np.asarray(svdo(M)), np_svd_rotation(M), atol=2e-5)
    np.testing.assert_allclose(np.asarray(svdo(M.reshape(BATCH, 9))), np_svd_rotation(M), atol=2e-5)
    # Idempotent on rotations.
    R = np_svd_rotation(M).astype(np.float32)
    np.testing.assert_allclose(np.asarray(svdo(R)), R, atol=2e-6)


def test_svd_orthogonalize_reflection_becomes_rotation():
    M = jnp.diag(jnp.array([1.0, 2.0, -3.0]))
    R = np.asarray(rot.svd_orthogonalize(M))
    # Closest rotation flips the direction of the smallest singular value.
    np.testing.assert_allclose(R, np.diag([-1.0, 1.0, -1.0]), atol=1e-6)


# ----------------------------------------------------------------------------- Gram–Schmidt


@SETTINGS
@given(seeds)
def test_gram_schmidt_matches_numpy_and_keeps_det_sign(seed):
    M = random_matrices(seed)
    G = np.asarray(gs(M))
    np.testing.assert_allclose(G, np_gram_schmidt(M), atol=2e-5)
    np.testing.assert_allclose(np.swapaxes(G, -1, -2) @ G, np.broadcast_to(np.eye(3), G.shape), atol=1e-5)
    np.testing.assert_allclose(np.linalg.det(G), np.sign(np.linalg.det(M)), atol=2e-6)
    # (..., 9) row-major and (..., 3, 3) are the same input.
    np.testing.assert_array_equal(np.asarray(gs(M.reshape(BATCH, 9))), G)


def test_gram_schmidt_reflection_and_identity():
    eye = jnp.eye(3)
    np.testing.assert_array_equal(np.asarray(rot.gram_schmidt(eye)), np.eye(3))
    np.testing.assert_array_equal(np.asarray(rot.gram_schmidt(eye.reshape(9))), np.eye(3))
    refl = np.diag([1.0, 1.0, -1.0]).astype(np.float32) @ np_rodrigues([0.3, -0.4, 0.2]).astype(np.float32)
    G = np.asarray(rot.gram_schmidt(2.5 * refl))
    np.testing.assert_allclose(G, refl, atol=2e-6)
    assert np.linalg.det(G) == pytest.approx(-1.0, abs=1e-5)
    # A rotation is a fixed point.
    R = np_rodrigues([0.3, -0.4, 0.2]).astype(np.float32)
    np.testing.assert_allclose(np.asarray(rot.gram_schmidt(R)), R, atol=2e-6)
    with pytest.raises(ValueError):
        rot.gram_schmidt(jnp.zeros((4, 4)))


# ----------------------------------------------------------------------------- zero angle / degenerate


def test_axis_angle_to_matrix_at_zero_exact_value_and_jacobian():
    z = jnp.zeros(3)
    np.testing.assert_array_equal(np.asarray(rot.axis_angle_to_matrix(z)), np.eye(3))
    W = np.random.default_rng(1).normal(size=(3, 3)).astype(np.float32)
    loss = lambda a: jnp.sum(W * rot.axis_angle_to_matrix(a))  # noqa: E731
    J, Jr, g, H = jax.jit(lambda a: (jax.jacfwd(rot.axis_angle_to_matrix)(a),
                                     jax.jacrev(rot.axis_angle_to_matrix)(a),
                                     jax.grad(loss)(a), jax.hessian(loss)(a)))(z)
    # (3, 3, 3): dR/da_i at [..., i] is the generator skew(e_i).
    np.testing.assert_array_equal(np.asarray(J), np.moveaxis(np_skew(np.eye(3)), 0, -1))
    np.testing.assert_array_equal(np.asarray(Jr), np.asarray(J))
    # Scalar loss: grad = <W, skew(e_i)>.
    np.testing.assert_allclose(np.asarray(g), [np.sum(W * np_skew(e)) for e in np.eye(3)], rtol=1e-6)
    # Second derivatives are finite too.
    assert np.all(np.isfinite(np.asarray(H)))


def test_matrix_to_axis_angle_at_identity():
    eye = jnp.eye(3)
    np.testing.assert_array_equal(np.asarray(rot.matrix_to_axis_angle(eye)), np.zeros(3))
    J, g = jax.jit(lambda R: (jax.jacfwd(rot.matrix_to_axis_angle)(R),
                              jax.grad(lambda x: jnp.sum(rot.matrix_to_axis_angle(x)))(R)))(eye)
    # (3, 3, 3); a ≈ ½ (R21 - R12, R02 - R20, R10 - R01) to first order, i.e. da_i/dR = skew(e_i)/2.
    np.testing.assert_allclose(np.asarray(J), 0.5 * np_skew(np.eye(3)), atol=1e-7)
    assert np.all(np.isfinite(np.asarray(g)))


def test_quaternion_to_axis_angle_at_identity_and_zero():
    q = jnp.array([1.0, 0.0, 0.0, 0.0])
    np.testing.assert_array_equal(np.asarray(rot.quaternion_to_axis_angle(q)), np.zeros(3))
    derivs = jax.jit(jax.vmap(lambda x: (jax.jacfwd(rot.quaternion_to_axis_angle)(x),
                                         jax.grad(lambda y: jnp.sum(rot.quaternion_to_axis_angle(y)))(x))))
    qs = jnp.stack([q, jnp.zeros(4), jnp.array([-2.0, 0.0, 0.0, 0.0])])
    J, g = derivs(qs)
    np.testing.assert_allclose(np.asarray(J[0]), np.concatenate([np.zeros((3, 1)), 2 * np.eye(3)], -1), atol=1e-7)
    assert np.all(np.isfinite(np.asarray(J))) and np.all(np.isfinite(np.asarray(g)))
    np.testing.assert_array_equal(np.asarray(rot.quaternion_to_axis_angle(jnp.zeros(4))), np.zeros(3))


def test_axis_angle_to_quaternion_at_zero():
    z = jnp.zeros(3)
    np.testing.assert_array_equal(np.asarray(rot.axis_angle_to_quaternion(z)), [1.0, 0.0, 0.0, 0.0])
    J = np.asarray(jax.jit(jax.jacfwd(rot.axis_angle_to_quaternion))(z))
    np.testing.assert_array_equal(J, np.concatenate([np.zeros((1, 3)), 0.5 * np.eye(3)], 0))


def test_quaternion_to_matrix_at_zero_quaternion_is_finite():
    z = jnp.zeros(4)
    np.testing.assert_array_equal(np.asarray(rot.quaternion_to_matrix(z)), np.eye(3))
    assert np.all(np.isfinite(np.asarray(jax.jit(jax.jacfwd(rot.quaternion_to_matrix))(z))))
    # Not unit: the scale of q does not matter.
    q = jnp.array([0.3, -0.2, 0.1, 0.5])
    np.testing.assert_allclose(np.asarray(rot.quaternion_to_matrix(7.0 * q)),
                               np.asarray(rot.quaternion_to_matrix(q)), atol=1e-6)


# Degenerate 6D inputs [a1, a2]: a zero first column, a zero second column, parallel and
# antiparallel columns, a second column parallel up to 1e-7 of its length (below the fallback
# threshold), everything zero, a first column too short to normalise.
DEGENERATE_6D = np.array([
    [0.0, 0.0, 0.0, 0.0, 1.0, 0.0],
    [0.0, 0.0, 0.0, 0.3, -2.0, 0.5],
    [0.5, -1.0, 2.0, 0.0, 0.0, 0.0],
    [1.0, 0.0, 0.0, 2.0, 0.0, 0.0],
    [0.0, 0.0, 3.0, 0.0, 0.0, -1.0],
    [1.0, 2.0, -3.0, -2.0, -4.0, 6.0],
    [1.0, 2.0, -3.0, 2.0, 4.0 + 1e-7, -6.0],
    [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
    [1e-10, 0.0, 0.0, 0.0, 1.0, 0.0],
], np.float32)

def _degenerate_matrices(in_span: bool):
    """Degenerate 3x3 inputs (columns c1, c2, c3).

    ``in_span=False``: the (c1, c2) of every row of DEGENERATE_6D with a generic or a zero c3.
    ``in_span=True``: a non-zero c3 in the span of (c1, c2) (up to float32 rounding): a linear
    combination of degenerate (c1, c2), of regular (c1, c2), and rank-one matrices.
    """
    rng = np.random.default_rng(11)
    out = []
    if not in_span:
        for x in DEGENERATE_6D:
            for c3 in (rng.normal(size=3), np.zeros(3)):
                out.append(np.stack([x[:3], x[3:], c3], -1))
        out.append(np.stack([np.zeros(3), np.zeros(3), rng.normal(size=3)], -1))  # only c3
        return np.asarray(out, np.float32)
    for x in DEGENERATE_6D[[1, 2, 5, 6]]:
        c1, c2 = x[:3], x[3:]
        out.append(np.stack([c1, c2, 0.7 * c1 - 1.3 * c2], -1))
    c1, c2 = np.float32([0.1, 0.2, 0.3]), np.float32([0.2, 0.7, 0.1])
    out.append(np.stack([c1, c2, c1 + c2], -1))                        # regular c1, c2; c3 = c1 + c2
    v = rng.normal(size=3)
    out.append(np.stack([v, 2 * v, -v], -1))                           # rank one
    out.append(np.float32([[1, 2, 3], [2, 4, 6], [3, 6, 9]]))          # rank one, exact in float32
    return np.asarray(out, np.float32)


def _values_and_derivatives(f, xs):
    """``f``, its forward and reverse Jacobians and a scalar loss' gradient at every row of ``xs``."""
    w = jnp.asarray(np.random.default_rng(12).normal(size=(3, 3)), xs.dtype)
    return jax.jit(jax.vmap(lambda a: (f(a), jax.jacfwd(f)(a), jax.jacrev(f)(a),
                                       jax.grad(lambda b: jnp.sum(w * f(b)))(a))))(xs)


def test_rot6d_to_matrix_degenerate_inputs_give_rotations_with_finite_gradients():
    x = jnp.asarray(DEGENERATE_6D)
    R, jf, jr, g = _values_and_derivatives(rot.rot6d_to_matrix, x)
    for d in (jf, jr, g):
        assert np.all(np.isfinite(np.asarray(d)))
    assert_rotations(R, atol=1e-5)  # orthonormal with det +1
    R = np.asarray(R, np.float64)
    a1 = DEGENERATE_6D[:, :3].astype(np.float64)
    n1 = np.linalg.norm(a1, axis=-1)
    # The first column follows a1 wherever a1 can be normalised, and is e_x where it is zero.
    ok = n1 > 1e-6
    np.testing.assert_allclose(R[ok, :, 0], a1[ok] / n1[ok, None], atol=1e-6)
    np.testing.assert_allclose(R[~ok, :, 0], np.broadcast_to([1.0, 0.0, 0.0], R[~ok, :, 0].shape), atol=1e-6)


def _assert_orthogonal(G, atol=1e-5):
    G = np.asarray(G, np.float64)
    np.testing.assert_allclose(np.swapaxes(G, -1, -2) @ G, np.broadcast_to(np.eye(3), G.shape), atol=atol)
    np.testing.assert_allclose(np.abs(np.linalg.det(G)), 1.0, atol=atol)


def test_gram_schmidt_degenerate_first_columns_give_orthogonal_matrices_with_finite_gradients():
    m = jnp.asarray(_degenerate_matrices(in_span=False))
    G, jf, jr, g = _values_and_derivatives(rot.gram_schmidt, m)
    for d in (jf, jr, g):
        assert np.all(np.isfinite(np.asarray(d)))
    _assert_orthogonal(G)
    G = np.asarray(G, np.float64)
    # A zero third column falls back to b1 x b2: a rotation.
    zero_c3 = np.all(np.asarray(m)[..., :, 2] == 0, -1)
    np.testing.assert_allclose(np.linalg.det(G[zero_c3]), 1.0, atol=1e-5)
    # The first two columns are those of rot6d_to_matrix of (c1, c2).
    six = np.concatenate([np.asarray(m)[..., :, 0], np.asarray(m)[..., :, 1]], -1)
    np.testing.assert_allclose(G[..., :2], np.asarray(rot.rot6d_to_matrix(six))[..., :2], atol=1e-6)
    # The (..., 9) row-major form is the same input.
    np.testing.assert_array_equal(np.asarray(jax.jit(rot.gram_schmidt)(m.reshape(-1, 9))),
                                  np.asarray(jax.jit(rot.gram_schmidt)(m)))


def test_gram_schmidt_third_column_in_the_span_gives_a_rotation():
    """Documented: "a third column in the span of the first two gives b1 x b2"."""
    m = jnp.asarray(_degenerate_matrices(in_span=True))
    G, jf, jr, g = _values_and_derivatives(rot.gram_schmidt, m)
    for d in (jf, jr, g):
        assert np.all(np.isfinite(np.asarray(d)))
    assert_rotations(G, atol=1e-5)
    G = np.asarray(G, np.float64)
    np.testing.assert_allclose(G[..., 2], np.cross(G[..., 0], G[..., 1]), atol=1e-5)


def test_nearly_parallel_large_columns_stay_orthonormal_in_float32():
    """Columns of length ~1e3 that differ by a few units (a regressor head's output found by
    hypothesis: (-994, -994, -994 | -994, -994, -992)): the residual after one projection is ~1e-3
    of the column, so float32 round-off of the projection (~1e-4 of it) tilted b2 by up to 6e-4
    before the second projection."""
    rng = np.random.default_rng(14)
    a = rng.uniform(-1e3, 1e3, size=(256, 1)).astype(np.float32)
    x = np.repeat(a, 6, axis=1)
    x[np.arange(256), 3 + rng.integers(0, 3, 256)] += rng.choice([-4.0, -2.0, -1.0, 1.0, 2.0, 4.0], 256)
    x[0] = [-994.0] * 5 + [-992.0]
    assert_rotations(jax.jit(rot.rot6d_to_matrix)(x), atol=2e-6)
    m = np.stack([x[:, :3], x[:, 3:], rng.normal(size=(256, 3)).astype(np.float32)], -1)
    _assert_orthogonal(jax.jit(rot.gram_schmidt)(m), atol=2e-6)


def np_classical_gram_schmidt(M):
    """The textbook formula, column by column, float64: b_k = normalize(c_k - sum_{i<k} (b_i.c_k) b_i)."""
    M = np.asarray(M, np.float64)
    cols = []
    for k in range(3):
        c = M[..., :, k]
        r = c - sum(np.sum(b * c, -1, keepdims=True) * b for b in cols)
        cols.append(r / np.linalg.norm(r, axis=-1, keepdims=True))
    return np.stack(cols, -1)


def test_robust_forms_equal_the_classical_formula_on_regular_inputs(x64):
    """Away from the degenerate set the fall-backs are not taken: float64 values are the textbook ones,
    also for badly scaled and nearly (but not numerically) parallel columns."""
    rng = np.random.default_rng(13)
    M = rng.normal(size=(32, 3, 3))
    M[:4] *= 1e-6                                             # tiny (but normalisable) columns
    M[4:8] *= 1e6
    M[8:12, :, 1] = M[8:12, :, 0] + 1e-3 * rng.normal(size=(4, 3))   # nearly parallel c1, c2
    M[12:16, :, 2] = M[12:16, :, 0] - M[12:16, :, 1] + 1e-3 * rng.normal(size=(4, 3))  # c3 near the plane
    G = np.asarray(jax.jit(rot.gram_schmidt)(M))
    assert G.dtype == np.float64
    ref = np_classical_gram_schmidt(M)
    np.testing.assert_allclose(G, ref, atol=1e-9, rtol=0)
    np.testing.assert_allclose(G, np_gram_schmidt(M), atol=1e-9, rtol=0)
    x = np.concatenate([M[..., :, 0], M[..., :, 1]], -1)
    R = np.asarray(jax.jit(rot.rot6d_to_matrix)(x))
    np.testing.assert_allclose(R[..., :2], ref[..., :2], atol=1e-9, rtol=0)
    np.testing.assert_allclose(R[..., 2], np.cross(ref[..., 0], ref[..., 1]), atol=1e-9, rtol=0)
    # Their derivatives agree with float64 central differences at moderately ill-conditioned inputs.
    near = rng.normal(size=(8, 3, 3))
    near[:4, :, 1] = near[:4, :, 0] + 0.05 * rng.normal(size=(4, 3))
    near[4:, :, 2] = near[4:, :, 0] + near[4:, :, 1] + 0.05 * rng.normal(size=(4, 3))
    _fd_check(rot.gram_schmidt, near, rtol=1e-5, atol=1e-6)
    _fd_check(rot.rot6d_to_matrix, np.concatenate([near[:4, :, 0], near[:4, :, 1]], -1), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- finite differences


def _fd_check(f, X, h=1e-6, rtol=1e-6, atol=1e-7):
    """Compares vmap(jacfwd(f)) with central differences at the points X (n, *in) in float64."""
    X = np.asarray(X, np.float64)
    in_shape = X.shape[1:]
    d = int(np.prod(in_shape))
    E = h * np.eye(d).reshape((d, 1) + in_shape)  # (d, 1, *in)
    J, f_plus, f_minus = jax.jit(lambda x: (jax.vmap(jax.jacfwd(f))(x), f(x + E), f(x - E)))(X)
    assert J.dtype == np.float64
    J = np.asarray(J)  # (n, *out, *in)
    fd = np.moveaxis((np.asarray(f_plus) - np.asarray(f_minus)) / (2 * h), 0, -1)  # (n, *out, d)
    np.testing.assert_allclose(J.reshape(fd.shape), fd, rtol=rtol, atol=atol)


def _random_aa(rng, n, lo=0.0, hi=np.pi - 1e-2):
    axes = rng.normal(size=(n, 3))
    return axes / np.linalg.norm(axes, axis=-1, keepdims=True) * rng.uniform(lo, hi, size=(n, 1))


def test_gradients_axis_angle_to_matrix(x64):
    rng = np.random.default_rng(2)
    _fd_check(rot.axis_angle_to_matrix, _random_aa(rng, 8))
    _fd_check(rot.axis_angle_to_matrix, _random_aa(rng, 4, 1e-6, 1.1e-6))
    _fd_check(rot.axis_angle_to_matrix, _random_aa(rng, 4, 0.0999, 0.1001))
    _fd_check(rot.axis_angle_to_quaternion, _random_aa(rng, 8))
    _fd_check(rot.axis_angle_to_quaternion, _random_aa(rng, 4, 1e-6, 1.1e-6))


def test_gradients_matrix_to_axis_angle(x64):
    rng = np.random.default_rng(3)
    aa = np.concatenate([_random_aa(rng, 8), _random_aa(rng, 4, 3.0, 3.1), _random_aa(rng, 4, 1e-3, 2e-3)])
    _fd_check(rot.matrix_to_axis_angle, np_rodrigues(aa))
    _fd_check(rot.matrix_to_quaternion, np_rodrigues(aa))


def test_gradients_quaternions(x64):
    rng = np.random.default_rng(4)
    q = rng.normal(size=(8, 4))
    _fd_check(rot.quaternion_to_matrix, q)
    _fd_check(rot.quaternion_to_axis_angle, q)
    _fd_check(rot.quaternion_to_axis_angle, np.array([[1.0, 1e-6, -2e-6, 3e-6], [0.5, 0.0, 4e-3, 0.0]]))


def test_gradients_rot6d_gram_schmidt_svd(x64):
    rng = np.random.default_rng(5)
    M = rng.normal(size=(8, 3, 3))
    _fd_check(rot.rot6d_to_matrix, M.reshape(8, 9)[:, :6])
    _fd_check(rot.gram_schmidt, M)
    _fd_check(rot.gram_schmidt, M.reshape(8, 9))
    _fd_check(rot.svd_orthogonalize, M, rtol=1e-5, atol=1e-6)
    assert np.any(np.linalg.det(M) < 0) and np.any(np.linalg.det(M) > 0)


def test_svd_orthogonalize_derivative_at_equal_singular_values(x64):
    """The polar-factor JVP matches central differences also where singular values coincide (the
    identity, a rotation) and near a reflection, and its gradient stays finite there."""
    rng = np.random.default_rng(14)
    points = [np.eye(3), np_rodrigues([0.4, -0.2, 0.9]),
              np.diag([1.0, 1.0, -1.0]) + 0.1 * rng.normal(size=(3, 3)), rng.normal(size=(3, 3))]
    f = jax.jit(lambda m, dm: jax.jvp(rot.svd_orthogonalize, (m,), (dm,)))
    g = jax.jit(jax.grad(lambda m, dm: jnp.sum(rot.svd_orthogonalize(m) * dm)))
    h = 1e-6
    for m in points:
        dm = rng.normal(size=(3, 3))
        _, jvp = f(m, dm)
        fd = (np.asarray(rot.svd_orthogonalize(m + h * dm)) - np.asarray(rot.svd_orthogonalize(m - h * dm))) / (2 * h)
        np.testing.assert_allclose(np.asarray(jvp), fd, atol=1e-6)
        assert np.all(np.isfinite(np.asarray(g(m, dm))))


# ----------------------------------------------------------------------------- near π


def test_matrix_to_axis_angle_near_pi():
    rng = np.random.default_rng(6)
    axes = rng.normal(size=(64, 3))
    axes /= np.linalg.norm(axes, axis=-1, keepdims=True)
    axes[:6] = np.eye(3).repeat(2, 0) * np.array([1, -1] * 3)[:, None]  # ±coordinate axes
    angles = np.concatenate([np.full(16, np.pi), np.pi - np.logspace(-7, -2, 48)])
    aa = (axes * angles[:, None]).astype(np.float32)
    out = np.asarray(mat2aa(aa2mat(aa)))
    np.testing.assert_allclose(np_rodrigues(out), np_rodrigues(aa), atol=2e-5)
    np.testing.assert_allclose(np.linalg.norm(out, axis=-1), angles, atol=2e-5)
    # Same rotation, so out = ±aa (the sign is free only at exactly π).
    err = np.minimum(np.abs(out - aa).max(-1), np.abs(out + aa).max(-1))
    assert err.max() < 2e-4
    np.testing.assert_allclose(out[16:], aa[16:], atol=2e-4)


# ----------------------------------------------------------------------------- batching, jit, vmap, dtype

_TAIL_IN = {
    "axis_angle_to_matrix": (3,), "matrix_to_axis_angle": (3, 3), "quaternion_to_matrix": (4,),
    "matrix_to_quaternion": (3, 3), "axis_angle_to_quaternion": (3,), "quaternion_to_axis_angle": (4,),
    "standardize_quaternion": (4,), "rot6d_to_matrix": (6,), "matrix_to_rot6d": (3, 3),
    "gram_schmidt": (9,), "svd_orthogonalize": (3, 3), "skew": (3,),
}
_TAIL_OUT = {
    "axis_angle_to_matrix": (3, 3), "matrix_to_axis_angle": (3,), "quaternion_to_matrix": (3, 3),
    "matrix_to_quaternion": (4,), "axis_angle_to_quaternion": (4,), "quaternion_to_axis_angle": (3,),
    "standardize_quaternion": (4,), "rot6d_to_matrix": (3, 3), "matrix_to_rot6d": (6,),
    "gram_schmidt": (3, 3), "svd_orthogonalize": (3, 3), "skew": (3, 3),
}


@pytest.mark.parametrize("lead", [(), (5,), (2, 3)], ids=["scalar", "5", "2x3"])
def test_batch_shapes_jit_and_vmap(lead):
    rng = np.random.default_rng(7)
    n = int(np.prod(lead, dtype=int))
    names = list(_TAIL_IN)
    x6 = {}
    for name, tail in _TAIL_IN.items():
        if tail == (3, 3):  # rotation inputs for the matrix -> * conversions
            x6[name] = np_rodrigues(rng.normal(size=(6, 3))).astype(np.float32)
        else:
            x6[name] = rng.normal(size=(6,) + tail).astype(np.float32)
    xs = {name: x6[name][:n].reshape(lead + _TAIL_IN[name]) for name in names}

    def run_all(flat, batched):
        out = {}
        for name in names:
            f = g = getattr(rot, name)
            for _ in lead:
                g = jax.vmap(g)
            out[name] = (f(flat[name]), f(batched[name]), g(batched[name]))
        return out

    out = jax.jit(run_all)(x6, xs)  # one compilation for all functions
    for name in names:
        y_ref, y, y_vmap = out[name]
        assert y.shape == lead + _TAIL_OUT[name], name
        assert y.dtype == jnp.float32, name
        # Row by row the same as a flat batch of 6, and vmap over the leading dims agrees.
        np.testing.assert_allclose(np.asarray(y).reshape((n,) + y.shape[len(lead):]), np.asarray(y_ref)[:n],
                                   atol=1e-6, err_msg=name)
        np.testing.assert_allclose(np.asarray(y_vmap), np.asarray(y), atol=1e-6, err_msg=name)
    # Broadcasting of the binary product.
    q1 = rng.normal(size=lead + (4,)).astype(np.float32)
    q2 = rng.normal(size=(4,)).astype(np.float32)
    assert rot.quaternion_multiply(q1, q2).shape == lead + (4,)


def test_dtypes():
    # Abstract evaluation only (no compilation): float32 by default, integer inputs become float32,
    # float64 is kept when enabled.
    i3 = jax.ShapeDtypeStruct((3,), jnp.int32)
    assert jax.eval_shape(rot.axis_angle_to_matrix, i3).dtype == jnp.float32
    assert jax.eval_shape(rot.gram_schmidt, jax.ShapeDtypeStruct((9,), jnp.int32)).dtype == jnp.float32
    for name, tail in _TAIL_IN.items():
        out = jax.eval_shape(getattr(rot, name), jax.ShapeDtypeStruct((2,) + tail, jnp.float32))
        assert out.dtype == jnp.float32 and out.shape == (2,) + _TAIL_OUT[name], name
    with jax.enable_x64(True):
        for name, tail in _TAIL_IN.items():
            out = jax.eval_shape(getattr(rot, name), jax.ShapeDtypeStruct((2,) + tail, jnp.float64))
            assert out.dtype == jnp.float64, name
