"""Tests of bodyjax.losses against float64 NumPy transcriptions of the appendix's equations.

eq. (8)  L_dense  = Σ_i ‖p_i − x_idx(i)‖²            (sum, or its mean over the valid points)
eq. (9)  L_KP     = Σ (x − x̄)² + (y − ȳ)² + (z − z^GAN)²
eq. (10) L_scale  = Σ_e (S_e − S_adj(e))²             (e runs over joint–parent pairs)
eq. (11) L_angle  = Σ_{i∈J} ‖a_i‖² + Σ_{i∈J'} exp(−a_i·n_i)²
eq. (12) L_det    = exp(−det R)                        (R = the raw nine numbers)
eq. (14) L_regress = Σ smoothL1(θ − θ̄)

Each loss is checked for its value, its gradient (against central finite differences of the NumPy
reference, in float64), masking (masked entries holding NaN/inf contribute exactly zero to the value
and the gradient) and leading batch shapes.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bodyjax import body, losses

PARENTS = (-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21)
HINGES = (4, 5, 18, 19)


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


@pytest.fixture(scope="module")
def template():
    return body.default_template()


# ----------------------------------------------------------------------------------------------
# float64 NumPy references, written from the equations


def np_dense(x, p, mask, reduction):
    """eq. (8) with plain loops; ``mask`` weights the points."""
    total, count = 0.0, 0.0
    for i in range(len(x)):
        if mask[i] > 0:
            total += mask[i] * ((x[i, 0] - p[i, 0]) ** 2 + (x[i, 1] - p[i, 1]) ** 2)
            count += mask[i]
    if reduction == "sum":
        return total
    return total / max(count, 1.0)


def np_keypoints(x, xbar, vis, z=None, zgan=None, zmask=None, depth_weight=1.0):
    """eq. (9) (``depth_weight`` scales its depth term; 1 = as written)."""
    total = 0.0
    for i in range(len(x)):
        if vis[i] > 0:
            total += vis[i] * ((x[i, 0] - xbar[i, 0]) ** 2 + (x[i, 1] - xbar[i, 1]) ** 2)
    if z is not None:
        zm = vis if zmask is None else zmask
        for i in range(len(z)):
            if zm[i] > 0:
                total += depth_weight * zm[i] * (z[i] - zgan[i]) ** 2
    return total


def np_scale(s, parents=PARENTS):
    """eq. (10): every segment against the segment it is attached to."""
    return sum((s[j] - s[p]) ** 2 for j, p in enumerate(parents) if p >= 0)


def np_angle(a, hinge_joints, axes, joint_mask=None):
    """eq. (11): smoothness over the joints (not the root) + exp(−a·n)² over the hinges."""
    jm = np.ones(len(a)) if joint_mask is None else joint_mask
    if joint_mask is None:
        jm[0] = 0.0
    smooth = sum(jm[i] * float(a[i] @ a[i]) for i in range(len(a)))
    limit = sum(np.exp(-float(a[i] @ axes[i])) ** 2 for i in hinge_joints)
    return smooth + limit


def np_det(r):
    """eq. (12) on the raw 3×3 matrix (cofactor expansion)."""
    d = (r[0, 0] * (r[1, 1] * r[2, 2] - r[1, 2] * r[2, 1])
         - r[0, 1] * (r[1, 0] * r[2, 2] - r[1, 2] * r[2, 0])
         + r[0, 2] * (r[1, 0] * r[2, 1] - r[1, 1] * r[2, 0]))
    return np.exp(-d)


def np_smooth_l1(x, beta=1.0):
    x = np.asarray(x, np.float64)
    return np.where(np.abs(x) < beta, 0.5 * x ** 2 / beta, np.abs(x) - 0.5 * beta)


def np_regress(pred, target, mask=None, beta=1.0):
    """eq. (14)."""
    total = 0.0
    for i in range(len(pred)):
        w = 1.0 if mask is None else mask[i]
        if w > 0:
            total += w * float(np_smooth_l1(pred[i] - target[i], beta))
    return total


def fd_grad(f, x, eps=1e-6):
    """Central finite differences of a scalar NumPy function, float64."""
    x = np.asarray(x, np.float64)
    g = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        xp, xm = x.copy(), x.copy()
        xp[idx] += eps
        xm[idx] -= eps
        g[idx] = (f(xp) - f(xm)) / (2 * eps)
    return g


def _rng(seed=0):
    return np.random.default_rng(seed)


# ----------------------------------------------------------------------------------------------
# eq. (8) dense


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_dense_value_and_gradient_match_eq8(x64, reduction):
    rng = _rng(1)
    n = 9
    x, p = rng.normal(size=(n, 2)), rng.normal(size=(n, 2))
    mask = (rng.random(n) < 0.7).astype(np.float64)
    mask[0] = 1.0
    fn = lambda a, b: losses.l_dense(a, b, jnp.asarray(mask), reduction)  # noqa: E731
    value = float(fn(jnp.asarray(x), jnp.asarray(p)))
    np.testing.assert_allclose(value, np_dense(x, p, mask, reduction), rtol=1e-12)
    gx, gp = jax.grad(fn, argnums=(0, 1))(jnp.asarray(x), jnp.asarray(p))
    np.testing.assert_allclose(gx, fd_grad(lambda a: np_dense(a, p, mask, reduction), x), atol=1e-7)
    np.testing.assert_allclose(gp, fd_grad(lambda b: np_dense(x, b, mask, reduction), p), atol=1e-7)


def test_dense_mean_is_sum_over_valid_count_and_zero_without_points(x64):
    rng = _rng(2)
    x, p = rng.normal(size=(6, 2)), rng.normal(size=(6, 2))
    mask = np.array([1, 1, 0, 1, 0, 0], np.float64)
    s = float(losses.l_dense(x, p, mask, "sum"))
    m = float(losses.l_dense(x, p, mask, "mean"))
    assert m == pytest.approx(s / 3, rel=1e-12)
    none = jnp.zeros(6)
    for red in ("sum", "mean"):
        assert float(losses.l_dense(x, p, none, red)) == 0.0
        g = jax.grad(lambda a: losses.l_dense(a, p, none, red))(jnp.asarray(x))
        assert np.all(np.asarray(g) == 0.0)


def test_dense_rejects_unknown_reduction():
    with pytest.raises(ValueError, match="reduction"):
        losses.l_dense(jnp.zeros((3, 2)), jnp.zeros((3, 2)), jnp.ones(3), "median")


# ----------------------------------------------------------------------------------------------
# eq. (9) keypoints


def test_keypoints_without_depth_match_eq9(x64):
    rng = _rng(3)
    k = 17
    x, xb = rng.normal(size=(k, 2)), rng.normal(size=(k, 2))
    vis = (rng.random(k) < 0.6).astype(np.float64)
    fn = lambda a, b: losses.l_keypoints(a, b, jnp.asarray(vis))  # noqa: E731
    np.testing.assert_allclose(float(fn(x, xb)), np_keypoints(x, xb, vis), rtol=1e-12)
    ga, gb = jax.grad(fn, argnums=(0, 1))(jnp.asarray(x), jnp.asarray(xb))
    np.testing.assert_allclose(ga, fd_grad(lambda a: np_keypoints(a, xb, vis), x), atol=1e-7)
    np.testing.assert_allclose(gb, fd_grad(lambda b: np_keypoints(x, b, vis), xb), atol=1e-7)


@pytest.mark.parametrize("separate_depth_mask,weight", [(False, 1.0), (True, 1.0), (True, 0.1), (False, 3.0),
                                                          (False, 0.0)])
def test_keypoints_with_depth_match_eq9(x64, separate_depth_mask, weight):
    """Eq. 9 against NumPy, value and gradients; ``depth_weight`` scales its depth term only (1 = as
    written)."""
    rng = _rng(4)
    k = 17
    x, xb = rng.normal(size=(k, 2)), rng.normal(size=(k, 2))
    z, zg = rng.normal(size=k), rng.normal(size=k)
    vis = (rng.random(k) < 0.6).astype(np.float64)
    zmask = (rng.random(k) < 0.5).astype(np.float64) if separate_depth_mask else None
    jm = None if zmask is None else jnp.asarray(zmask)
    fn = lambda a, d, t: losses.l_keypoints(a, jnp.asarray(xb), jnp.asarray(vis), d, t, jm, weight)  # noqa: E731
    ref_fn = lambda a, d, t: np_keypoints(a, xb, vis, d, t, zmask, weight)  # noqa: E731
    ref = ref_fn(x, z, zg)
    np.testing.assert_allclose(float(fn(x, z, zg)), ref, rtol=1e-12)
    if weight > 0:
        assert ref > np_keypoints(x, xb, vis)  # the depth term is really there
    else:
        np.testing.assert_allclose(ref, np_keypoints(x, xb, vis), rtol=1e-12)
    ga, gz, gt = jax.grad(fn, argnums=(0, 1, 2))(jnp.asarray(x), jnp.asarray(z), jnp.asarray(zg))
    np.testing.assert_allclose(ga, fd_grad(lambda a: ref_fn(a, z, zg), x), atol=1e-7)
    np.testing.assert_allclose(gz, fd_grad(lambda d: ref_fn(x, d, zg), z), atol=1e-7)
    np.testing.assert_allclose(gt, fd_grad(lambda t: ref_fn(x, z, t), zg), atol=1e-7)


def test_keypoints_depth_term_needs_both_arrays():
    x, xb, vis = jnp.ones((4, 2)), jnp.zeros((4, 2)), jnp.ones(4)
    base = losses.l_keypoints(x, xb, vis)
    assert float(losses.l_keypoints(x, xb, vis, depth=jnp.ones(4))) == float(base)
    assert float(losses.l_keypoints(x, xb, vis, target_depth=jnp.ones(4))) == float(base)


# ----------------------------------------------------------------------------------------------
# eq. (10) segment-scale smoothness


def test_scale_over_segment_adjacency_matches_eq10(x64, template):
    adj = body.segment_adjacency(template)
    # The adjacency is every joint with its parent (23 pairs for the 24-joint tree).
    assert sorted(map(tuple, adj.tolist())) == sorted((j, p) for j, p in enumerate(PARENTS) if p >= 0)
    s = 1.0 + 0.1 * _rng(5).normal(size=24)
    fn = lambda v: losses.l_scale(v, adj)  # noqa: E731
    np.testing.assert_allclose(float(fn(jnp.asarray(s))), np_scale(s), rtol=1e-12)
    np.testing.assert_allclose(jax.grad(fn)(jnp.asarray(s)), fd_grad(np_scale, s), atol=1e-7)
    # uniform scaling costs nothing; a list of pairs works as well as the array
    assert float(losses.l_scale(jnp.full(24, 1.3), adj)) == 0.0
    assert float(losses.l_scale(jnp.asarray(s), [tuple(e) for e in adj.tolist()])) == pytest.approx(np_scale(s))


# ----------------------------------------------------------------------------------------------
# eq. (11) joint angles


@pytest.mark.parametrize("axes_source", ["template", "random"])
def test_angle_matches_eq11_with_hinge_term(x64, template, axes_source):
    rng = _rng(6)
    if axes_source == "template":
        axes = np.asarray(template.hinge_axes, np.float64)
        hinges = template.hinge_joints
    else:
        axes = rng.normal(size=(24, 3))
        axes /= np.linalg.norm(axes, axis=1, keepdims=True)
        hinges = HINGES
    a = 0.4 * rng.normal(size=(24, 3))
    fn = lambda v: losses.l_angle(v, hinges, jnp.asarray(axes))  # noqa: E731
    ref = lambda v: np_angle(v, hinges, axes)  # noqa: E731
    np.testing.assert_allclose(float(fn(jnp.asarray(a))), ref(a), rtol=1e-12)
    np.testing.assert_allclose(jax.grad(fn)(jnp.asarray(a)), fd_grad(ref, a), atol=1e-6)
    # at rest every hinge contributes exp(0)² = 1
    assert float(fn(jnp.zeros((24, 3)))) == pytest.approx(len(hinges))


def test_angle_root_is_ignored_and_joint_mask_weights(x64):
    rng = _rng(7)
    axes = np.zeros((24, 3))
    axes[list(HINGES)] = [1.0, 0.0, 0.0]
    a = rng.normal(size=(24, 3))
    b = a.copy()
    b[0] = 100.0
    assert float(losses.l_angle(a, HINGES, axes)) == pytest.approx(float(losses.l_angle(b, HINGES, axes)))
    jm = rng.random(24)
    np.testing.assert_allclose(float(losses.l_angle(jnp.asarray(a), HINGES, jnp.asarray(axes), jnp.asarray(jm))),
                               np_angle(a, HINGES, axes, jm), rtol=1e-12)


def test_angle_hinge_term_penalises_hyperextension_only(template):
    axes = np.asarray(template.hinge_axes)
    for j in template.hinge_joints:
        def limit(angle):
            a = np.zeros((24, 3), np.float32)
            a[j] = angle * axes[j]
            return float(losses.l_angle(jnp.asarray(a), template.hinge_joints, axes)) - angle ** 2
        # flexing (positive angle along n) lowers the limit term, hyper-extension raises it fast
        assert limit(1.0) < limit(0.0) < limit(-0.5) < limit(-1.0)
        assert limit(-1.0) == pytest.approx(len(template.hinge_joints) - 1 + np.exp(2.0), rel=1e-5)


# ----------------------------------------------------------------------------------------------
# eq. (12) determinant


def test_det_on_raw_matrix_matches_eq12(x64):
    rng = _rng(8)
    r = np.diag([1.5, 1.2, 1.3]) + 0.1 * rng.normal(size=(3, 3))  # not orthonormal: det far from 1
    assert abs(np.linalg.det(r) - 1.0) > 0.3
    np.testing.assert_allclose(float(losses.l_det(jnp.asarray(r))), np_det(r), rtol=1e-12)
    np.testing.assert_allclose(jax.grad(losses.l_det)(jnp.asarray(r)), fd_grad(np_det, r), atol=1e-7)
    # a reflection costs more than the rotation it mirrors
    refl = np.diag([1.0, 1.0, -1.0])
    assert float(losses.l_det(jnp.asarray(refl))) == pytest.approx(np.e)
    assert float(losses.l_det(jnp.eye(3))) == pytest.approx(np.exp(-1.0))


# ----------------------------------------------------------------------------------------------
# smooth L1 / eq. (14)


@pytest.mark.parametrize("beta", [1.0, 0.25])
def test_smooth_l1_and_regress_match_eq14(x64, beta):
    rng = _rng(9)
    x = np.concatenate([rng.uniform(-3, 3, 40), [0.0, beta * 0.999, -beta * 1.001]])
    np.testing.assert_allclose(losses.smooth_l1(jnp.asarray(x), beta), np_smooth_l1(x, beta), rtol=1e-12)
    # continuous with a continuous slope at ±beta
    for s in (1.0, -1.0):
        below = float(losses.smooth_l1(jnp.asarray(s * beta * (1 - 1e-9)), beta))
        above = float(losses.smooth_l1(jnp.asarray(s * beta * (1 + 1e-9)), beta))
        assert below == pytest.approx(above, abs=1e-8)
    pred, target = rng.uniform(-3, 3, 12), rng.uniform(-3, 3, 12)
    mask = (rng.random(12) < 0.7).astype(np.float64)
    for m in (None, mask):
        jm = None if m is None else jnp.asarray(m)
        fn = lambda p, t: losses.l_regress(p, t, jm, beta)  # noqa: E731
        np.testing.assert_allclose(float(fn(pred, target)), np_regress(pred, target, m, beta), rtol=1e-12)
        gp, gt = jax.grad(fn, argnums=(0, 1))(jnp.asarray(pred), jnp.asarray(target))
        np.testing.assert_allclose(gp, fd_grad(lambda p: np_regress(p, target, m, beta), pred), atol=1e-6)
        np.testing.assert_allclose(gt, fd_grad(lambda t: np_regress(pred, t, m, beta), target), atol=1e-6)


def test_regress_per_sample_mask_broadcasts():
    pred, target = jnp.ones((3, 5)), jnp.zeros((3, 5))
    out = losses.l_regress(pred, target, jnp.array([1.0, 0.0, 1.0]))
    np.testing.assert_allclose(out, [2.5, 0.0, 2.5])


# ----------------------------------------------------------------------------------------------
# Masked entries holding NaN / inf


BAD = (np.nan, np.inf, -np.inf)


def _poison(a, where, rng):
    a = np.array(a, np.float32)
    idx = np.flatnonzero(where)
    flat = a.reshape(len(where), -1)
    for n, i in enumerate(idx):
        flat[i] = BAD[(n + rng.integers(3)) % 3]
    return flat.reshape(a.shape)


def _check_masked(fn, args, masked_rows, rng):
    """``fn(*args)`` with masked rows poisoned (all args) equals the clean value and its gradient is
    exactly zero there, identical elsewhere and finite everywhere."""
    clean = [jnp.asarray(a, jnp.float32) for a in args]
    dirty = [jnp.asarray(_poison(a, masked_rows, rng)) for a in args]
    argnums = tuple(range(len(args)))
    v0, g0 = jax.value_and_grad(fn, argnums)(*clean)
    v1, g1 = jax.value_and_grad(fn, argnums)(*dirty)
    assert np.isfinite(float(v1))
    assert float(v1) == float(v0)
    for a, b in zip(g0, g1):
        a, b = np.asarray(a), np.asarray(b)
        assert np.all(np.isfinite(b))
        rows = b.reshape(len(masked_rows), -1)
        assert np.all(rows[masked_rows] == 0.0)
        np.testing.assert_array_equal(rows[~masked_rows], a.reshape(len(masked_rows), -1)[~masked_rows])


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_dense_masked_nan_inf_contribute_nothing(reduction):
    rng = _rng(10)
    n = 12
    mask = np.ones(n, np.float32)
    masked = np.zeros(n, bool)
    masked[[1, 4, 5, 11]] = True
    mask[masked] = 0.0
    fn = lambda x, p: losses.l_dense(x, p, jnp.asarray(mask), reduction)  # noqa: E731
    _check_masked(fn, [rng.normal(size=(n, 2)), rng.normal(size=(n, 2))], masked, rng)


@pytest.mark.parametrize("with_depth", [False, True])
def test_keypoints_masked_nan_inf_contribute_nothing(with_depth):
    rng = _rng(11)
    k = 17
    vis = np.ones(k, np.float32)
    masked = np.zeros(k, bool)
    masked[[0, 3, 9, 16]] = True
    vis[masked] = 0.0
    if with_depth:
        fn = lambda x, xb, z, zg: losses.l_keypoints(x, xb, jnp.asarray(vis), z, zg)  # noqa: E731
        args = [rng.normal(size=(k, 2)), rng.normal(size=(k, 2)), rng.normal(size=k), rng.normal(size=k)]
    else:
        fn = lambda x, xb: losses.l_keypoints(x, xb, jnp.asarray(vis))  # noqa: E731
        args = [rng.normal(size=(k, 2)), rng.normal(size=(k, 2))]
    _check_masked(fn, args, masked, rng)


def test_keypoints_separate_depth_mask_ignores_nan_depths():
    rng = _rng(12)
    k = 6
    x, xb = jnp.asarray(rng.normal(size=(k, 2)), jnp.float32), jnp.asarray(rng.normal(size=(k, 2)), jnp.float32)
    vis = jnp.ones(k)
    dmask = np.array([1, 0, 1, 0, 0, 1], np.float32)
    z = rng.normal(size=k).astype(np.float32)
    zg = rng.normal(size=k).astype(np.float32)
    zd, zgd = z.copy(), zg.copy()
    zd[dmask == 0] = [np.nan, np.inf, -np.inf]
    zgd[dmask == 0] = [np.inf, np.nan, np.nan]
    fn = lambda d, t: losses.l_keypoints(x, xb, vis, d, t, jnp.asarray(dmask))  # noqa: E731
    v0, (gz0, gt0) = jax.value_and_grad(fn, (0, 1))(jnp.asarray(z), jnp.asarray(zg))
    v1, (gz1, gt1) = jax.value_and_grad(fn, (0, 1))(jnp.asarray(zd), jnp.asarray(zgd))
    assert float(v1) == float(v0)
    for a, b in ((gz0, gz1), (gt0, gt1)):
        assert np.all(np.isfinite(b)) and np.all(np.asarray(b)[dmask == 0] == 0.0)
        np.testing.assert_array_equal(np.asarray(a)[dmask > 0], np.asarray(b)[dmask > 0])


def test_regress_masked_nan_inf_contribute_nothing():
    rng = _rng(13)
    p = 20
    mask = np.ones(p, np.float32)
    masked = np.zeros(p, bool)
    masked[[2, 7, 8, 19]] = True
    mask[masked] = 0.0
    fn = lambda a, b: losses.l_regress(a, b, jnp.asarray(mask))  # noqa: E731
    _check_masked(fn, [rng.uniform(-3, 3, p), rng.uniform(-3, 3, p)], masked, rng)


# ----------------------------------------------------------------------------------------------
# Leading batch shapes


def test_batch_shapes_match_per_sample_results(template):
    rng = _rng(14)
    lead = (2, 3)
    n, k, j = 7, 17, 24
    f32 = lambda *s: rng.normal(size=lead + s).astype(np.float32)  # noqa: E731
    x, p, m = f32(n, 2), f32(n, 2), (rng.random(lead + (n,)) < 0.7).astype(np.float32)
    kx, kb, kv = f32(k, 2), f32(k, 2), (rng.random(lead + (k,)) < 0.7).astype(np.float32)
    z, zg = f32(k), f32(k)
    s, a, r = 1 + 0.1 * f32(j), 0.3 * f32(j, 3), f32(3, 3)
    th, tb = f32(12), f32(12)
    adj = body.segment_adjacency(template)
    axes = template.hinge_axes
    outs = {
        "dense_mean": (losses.l_dense(x, p, m), lambda i: losses.l_dense(x[i], p[i], m[i])),
        "dense_sum": (losses.l_dense(x, p, m, "sum"), lambda i: losses.l_dense(x[i], p[i], m[i], "sum")),
        "kp": (losses.l_keypoints(kx, kb, kv, z, zg), lambda i: losses.l_keypoints(kx[i], kb[i], kv[i], z[i], zg[i])),
        "scale": (losses.l_scale(s, adj), lambda i: losses.l_scale(s[i], adj)),
        "angle": (losses.l_angle(a, template.hinge_joints, axes),
                  lambda i: losses.l_angle(a[i], template.hinge_joints, axes)),
        "det": (losses.l_det(r), lambda i: losses.l_det(r[i])),
        "regress": (losses.l_regress(th, tb), lambda i: losses.l_regress(th[i], tb[i])),
    }
    for name, (batched, single) in outs.items():
        assert batched.shape == lead, name
        for i in np.ndindex(lead):
            np.testing.assert_allclose(batched[i], single(i), rtol=1e-5, atol=1e-6, err_msg=name)
    assert losses.smooth_l1(th).shape == lead + (12,)
    # a batch of one sample or a bare sample give () / (1,) shapes
    assert losses.l_dense(x[0, 0], p[0, 0], m[0, 0]).shape == ()
    assert losses.l_det(r[:1, 0]).shape == (1,)


def test_losses_jit_and_vmap(template):
    rng = _rng(15)
    x = jnp.asarray(rng.normal(size=(5, 8, 2)), jnp.float32)
    p = jnp.asarray(rng.normal(size=(5, 8, 2)), jnp.float32)
    m = jnp.ones((5, 8))
    direct = losses.l_dense(x, p, m)
    np.testing.assert_allclose(jax.jit(losses.l_dense, static_argnames="reduction")(x, p, m), direct, rtol=1e-6)
    np.testing.assert_allclose(jax.vmap(losses.l_dense)(x, p, m), direct, rtol=1e-6)
