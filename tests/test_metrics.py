"""Tests for bodyjax.metrics against independent float64 NumPy references."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bodyjax import metrics

SETTINGS = settings(max_examples=50, deadline=None, derandomize=True)
FEW = settings(max_examples=20, deadline=None, derandomize=True)

# 24-joint SMPL-order kinematic tree (see the shared conventions).
PARENTS = (-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21)
B, J, V = 4, 24, 60
ROOTS = st.sampled_from([0, (1, 2), 3, None])

# Fixed shapes + jit keep compilation to a handful of traces.
j_mpjpe = jax.jit(metrics.mpjpe, static_argnames=("root",))
j_mpjpe_rescaled = jax.jit(metrics.mpjpe_rescaled, static_argnames=("parents", "root"))
j_pa_mpjpe = jax.jit(metrics.pa_mpjpe)
j_align = jax.jit(metrics.procrustes_align)
j_pve = jax.jit(metrics.per_vertex_error, static_argnames=("align",))
j_pixel = jax.jit(metrics.pixel_error)
j_pck = jax.jit(metrics.pck, static_argnames=("root", "align"))
j_auc = jax.jit(metrics.auc, static_argnames=("root", "align"))


def _value_and_grads(fn):
    """jit(value, d/dpred) of fn(pred, target, mask)."""
    return jax.jit(jax.value_and_grad(fn))


DEGENERATE_FNS = {
    name: _value_and_grads(getattr(metrics, name)) for name in ("pa_mpjpe", "per_vertex_error", "mpjpe")
}
j_pa_grad_target = jax.jit(jax.grad(metrics.pa_mpjpe, argnums=1))


# ----------------------------------------------------------------------------------------------
# float64 NumPy references (plain loops on purpose)


def np_root(x, root):
    if root is None:
        return np.zeros(3)
    if isinstance(root, int):
        return x[root]
    return np.mean([x[i] for i in root], axis=0)


def np_weighted_mean(values, w):
    total = w.sum()
    return 0.0 if total == 0 else float((values * w).sum() / total)


def np_umeyama_align(p, t, w):
    """Weighted Umeyama similarity alignment of p (N,3) onto t (N,3) with the reflection fix."""
    p, t, w = p.astype(np.float64), t.astype(np.float64), w.astype(np.float64)
    total = w.sum()
    if total == 0:
        return p.copy()
    mp = (w[:, None] * p).sum(0) / total
    mt = (w[:, None] * t).sum(0) / total
    xp, xt = p - mp, t - mt
    var_p = (w * (xp**2).sum(1)).sum() / total
    if (w > 0).sum() < 3 or var_p < 1e-12 * max((w * (p**2).sum(1)).sum() / total, 1e-300):
        return xp + mt  # translation only
    cov = np.zeros((3, 3))
    for i in range(len(p)):
        cov += w[i] * np.outer(xt[i], xp[i])
    cov /= total
    u, s, vt = np.linalg.svd(cov)
    d = np.eye(3)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[2, 2] = -1.0
    rot = u @ d @ vt
    scale = np.trace(np.diag(s) @ d) / var_p
    return scale * xp @ rot.T + mt


def np_errors(a, b):
    return np.sqrt(((a.astype(np.float64) - b.astype(np.float64)) ** 2).sum(-1))


def np_mpjpe(pred, target, w, root):
    out = []
    for p, t, wi in zip(pred, target, w):
        out.append(np_weighted_mean(np_errors(p - np_root(p, root), t - np_root(t, root)), wi))
    return np.array(out)


def np_bone_sum(x):
    return sum(np.linalg.norm(x[j] - x[p]) for j, p in enumerate(PARENTS) if p >= 0)


def np_mpjpe_rescaled(pred, target, ref_sums, w, root):
    out = []
    for p, t, ref, wi in zip(pred, target, ref_sums, w):
        p = p.astype(np.float64)
        r = np_root(p, root)
        p = r + ref / np_bone_sum(p) * (p - r)
        out.append(np_mpjpe(p[None], t[None], wi[None], root)[0])
    return np.array(out)


def np_pa(pred, target, w):
    return np.array([np_weighted_mean(np_errors(np_umeyama_align(p, t, wi), t), wi)
                     for p, t, wi in zip(pred, target, w)])


def np_joint_errors(p, t, wi, align, root):
    if align == "root":
        return np_errors(p - np_root(p, root), t - np_root(t, root))
    if align == "procrustes":
        return np_errors(np_umeyama_align(p, t, wi), t)
    return np_errors(p, t)


def np_pck(pred, target, thr, w, align, root):
    out = []
    for p, t, wi in zip(pred, target, w):
        e = np_joint_errors(p, t, wi, align, root)
        valid = wi > 0
        out.append(0.0 if valid.sum() == 0 else np.sum((e < thr) & valid) / valid.sum())
    return np.array(out)


def np_auc(pred, target, w, align, root):
    return np.mean([np_pck(pred, target, thr, w, align, root) for thr in range(0, 151, 5)], axis=0)


# ----------------------------------------------------------------------------------------------
# random data


def make_data(seed, n=J, noise=60.0, with_mask=True, dim=3):
    """Target joints in mm, a noisy, rotated, scaled prediction and a boolean mask."""
    rng = np.random.default_rng(seed)
    target = rng.normal(0.0, 300.0, (B, n, dim)).astype(np.float32)
    pred = target + rng.normal(0.0, noise, (B, n, dim))
    if dim == 3:
        pred = 1.1 * pred @ random_rotation(rng).T + rng.normal(0, 50, 3)
    pred = pred.astype(np.float32)
    if with_mask:
        mask = rng.random((B, n)) > 0.3
        mask[0] = True
        mask[1] = False  # one fully masked sample
    else:
        mask = np.ones((B, n), bool)
    return pred, target, mask


def random_rotation(rng):
    q = rng.normal(size=4)
    w, x, y, z = q / np.linalg.norm(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ])


def maybe(mask, use):
    return jnp.asarray(mask) if use else None


seeds = st.integers(0, 2**31 - 1)


# ----------------------------------------------------------------------------------------------
# comparisons with the references


@SETTINGS
@given(seed=seeds, root=ROOTS, use_mask=st.booleans())
def test_mpjpe_matches_numpy(seed, root, use_mask):
    pred, target, mask = make_data(seed, with_mask=use_mask)
    got = j_mpjpe(pred, target, maybe(mask, use_mask), root=root)
    want = np_mpjpe(pred, target, mask, root)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-3)


@SETTINGS
@given(seed=seeds, root=st.sampled_from([0, (1, 2)]), ref_kind=st.sampled_from(["none", "sum", "joints"]),
       use_mask=st.booleans())
def test_mpjpe_rescaled_matches_numpy(seed, root, ref_kind, use_mask):
    pred, target, mask = make_data(seed, with_mask=use_mask)
    rng = np.random.default_rng(seed + 1)
    ref_joints = rng.normal(0.0, 300.0, (J, 3)).astype(np.float32)
    if ref_kind == "none":
        reference, ref_sums = None, [np_bone_sum(t.astype(np.float64)) for t in target]
    elif ref_kind == "sum":
        reference, ref_sums = np.float32(4321.0), [4321.0] * B
    else:
        reference, ref_sums = ref_joints, [np_bone_sum(ref_joints.astype(np.float64))] * B
    got = j_mpjpe_rescaled(pred, target, PARENTS, reference, maybe(mask, use_mask), root=root)
    want = np_mpjpe_rescaled(pred, target, ref_sums, mask, root)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-2)


@SETTINGS
@given(seed=seeds, use_mask=st.booleans(), noise=st.sampled_from([0.0, 5.0, 60.0, 400.0]))
def test_pa_mpjpe_matches_numpy(seed, use_mask, noise):
    pred, target, mask = make_data(seed, noise=noise, with_mask=use_mask)
    got = j_pa_mpjpe(pred, target, maybe(mask, use_mask))
    want = np_pa(pred, target, mask)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=2e-2)


@FEW
@given(seed=seeds, use_mask=st.booleans())
def test_procrustes_aligned_points_match_numpy_x64(seed, use_mask):
    pred, target, mask = make_data(seed, with_mask=use_mask)
    pred, target = pred.astype(np.float64), target.astype(np.float64)
    with jax.enable_x64(True):
        got = np.asarray(metrics.procrustes_align(pred, target, maybe(mask, use_mask)))
        assert got.dtype == np.float64
    want = np.stack([np_umeyama_align(p, t, m) for p, t, m in zip(pred, target, mask)])
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-7)


@SETTINGS
@given(seed=seeds, use_mask=st.booleans(), align=st.booleans())
def test_per_vertex_error_matches_numpy(seed, use_mask, align):
    pred, target, mask = make_data(seed, n=V, with_mask=use_mask)
    got = j_pve(pred, target, maybe(mask, use_mask), align=align)
    if align:
        want = np_pa(pred, target, mask)
    else:
        want = np.array([np_weighted_mean(np_errors(p, t), m) for p, t, m in zip(pred, target, mask)])
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=2e-2)


@SETTINGS
@given(seed=seeds, use_mask=st.booleans())
def test_pixel_error_matches_numpy(seed, use_mask):
    pred, target, mask = make_data(seed, n=17, dim=2, with_mask=use_mask)
    got = j_pixel(pred, target, maybe(mask, use_mask))
    want = np.array([np_weighted_mean(np_errors(p, t), m) for p, t, m in zip(pred, target, mask)])
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-3)


@SETTINGS
@given(seed=seeds, use_mask=st.booleans(), align=st.sampled_from([None, "root", "procrustes"]),
       root=st.sampled_from([0, (1, 2)]), thr=st.sampled_from([50.0, 100.0, 150.0]))
def test_pck_and_auc_match_numpy(seed, use_mask, align, root, thr):
    pred, target, mask = make_data(seed, with_mask=use_mask)
    root = root if align == "root" else 0  # root only matters for root alignment; fewer traces
    if align is None:  # keep raw errors on the scale of the thresholds
        pred = (target + (pred - target) * 0.05).astype(np.float32)
    m = maybe(mask, use_mask)
    got_pck = j_pck(pred, target, thr, m, root=root, align=align)
    got_auc = j_auc(pred, target, None, m, root=root, align=align)
    np.testing.assert_allclose(np.asarray(got_pck), np_pck(pred, target, thr, mask, align, root), atol=1e-6)
    np.testing.assert_allclose(np.asarray(got_auc), np_auc(pred, target, mask, align, root), atol=1e-6)


# ----------------------------------------------------------------------------------------------
# properties


@SETTINGS
@given(seed=seeds, log_scale=st.floats(-2.0, 2.0), use_mask=st.booleans())
def test_pa_mpjpe_invariant_to_similarity_of_pred(seed, log_scale, use_mask):
    pred, target, mask = make_data(seed, with_mask=use_mask)
    rng = np.random.default_rng(seed + 7)
    s, rot, t = np.exp(log_scale), random_rotation(rng), rng.normal(0, 500, 3)
    moved = (s * pred.astype(np.float64) @ rot.T + t).astype(np.float32)
    m = maybe(mask, use_mask)
    base = np.asarray(j_pa_mpjpe(pred, target, m))
    np.testing.assert_allclose(np.asarray(j_pa_mpjpe(moved, target, m)), base, rtol=1e-3, atol=0.05)
    # An exact similarity copy of the target aligns to (almost) zero error.
    exact = (s * target.astype(np.float64) @ rot.T + t).astype(np.float32)
    np.testing.assert_allclose(np.asarray(j_pa_mpjpe(exact, target, m)), 0.0, atol=0.05)


@SETTINGS
@given(seed=seeds)
def test_mirror_image_is_not_aligned_perfectly(seed):
    _, target, mask = make_data(seed, noise=0.0, with_mask=False)
    mirrored = target * np.array([-1.0, 1.0, 1.0], np.float32)  # x -> -x: a reflection
    got = np.asarray(j_pa_mpjpe(mirrored, target, None))
    want = np_pa(mirrored, target, mask)
    assert np.all(want > 1.0)  # random 3D point clouds are not mirror symmetric
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=2e-2)
    # Without the reflection fix the mirror image would align exactly: the rotation is proper.
    _, rot, _ = metrics.procrustes(mirrored, target)
    np.testing.assert_allclose(np.linalg.det(np.asarray(rot)), 1.0, atol=1e-5)


def degenerate_cases():
    rng = np.random.default_rng(0)
    target = rng.normal(0, 300, (J, 3)).astype(np.float32)
    same = np.tile(np.float32([[10.0, -20.0, 30.0]]), (J, 1))
    line = (np.linspace(-1, 1, J)[:, None] * np.float32([[100.0, 50.0, -20.0]]) + 5.0).astype(np.float32)
    two_valid = np.zeros(J, bool)
    two_valid[[3, 7]] = True
    ones = np.ones(J, bool)
    return {
        "identical_pred": (same, target, ones),
        "identical_target": (target, same, ones),
        "both_identical": (same, same, ones),
        "collinear_pred": (line, target, ones),
        "collinear_both": (line, line * 2.0 + 1.0, ones),
        "fully_masked": (target + 1.0, target, np.zeros(J, bool)),
        "two_valid": (target * 1.5, target, two_valid),
        "planar_pred": (target * np.float32([1, 1, 0]), target, ones),
    }


@pytest.mark.parametrize("name", list(degenerate_cases()))
def test_degenerate_inputs_give_finite_values_and_grads(name):
    pred, target, mask = degenerate_cases()[name]
    for fn_name, fn in DEGENERATE_FNS.items():
        value, grad = fn(pred, target, mask)
        assert np.isfinite(np.asarray(value)), (name, fn_name)
        assert np.all(np.isfinite(np.asarray(grad))), (name, fn_name)
    grad_t = j_pa_grad_target(pred, target, mask)
    assert np.all(np.isfinite(np.asarray(grad_t))), name
    aligned = np.asarray(j_align(pred, target, mask))
    assert np.all(np.isfinite(aligned))
    want = np_umeyama_align(pred, target, mask.astype(np.float64))
    np.testing.assert_allclose(aligned, want, atol=1e-2)


def test_degenerate_fallback_is_translation_only():
    pred, target, mask = degenerate_cases()["two_valid"]
    scale, rot, trans = metrics.procrustes(pred, target, mask)
    np.testing.assert_allclose(np.asarray(scale), 1.0)
    np.testing.assert_allclose(np.asarray(rot), np.eye(3))
    want = target[mask].mean(0) - pred[mask].mean(0)
    np.testing.assert_allclose(np.asarray(trans), want, rtol=1e-5, atol=1e-3)
    # All-equal prediction lands on the target centroid.
    same, target, ones = degenerate_cases()["identical_pred"]
    aligned = np.asarray(metrics.procrustes_align(same, target))
    np.testing.assert_allclose(aligned, np.broadcast_to(target.mean(0), aligned.shape), atol=1e-3)


def test_fully_masked_sample_is_zero():
    pred, target, mask = make_data(3)
    m = jnp.asarray(mask)
    for value in (metrics.mpjpe(pred, target, m), metrics.pa_mpjpe(pred, target, m),
                  metrics.pck(pred, target, 100.0, m), metrics.auc(pred, target, mask=m),
                  metrics.per_vertex_error(pred, target, m), metrics.pixel_error(pred, target, m)):
        value = np.asarray(value)
        assert np.all(np.isfinite(value))
        assert value[1] == 0.0  # sample 1 is fully masked
    assert not bool(jnp.sum(m, axis=-1)[1] > 0)  # how callers tell an empty sample apart


def test_pa_mpjpe_gradient_matches_finite_differences_x64():
    pred, target, mask = make_data(11, with_mask=False)
    pred, target = pred[0].astype(np.float64), target[0].astype(np.float64)
    with jax.enable_x64(True):
        f = jax.jit(lambda p: metrics.pa_mpjpe(p, target))
        grad = np.asarray(jax.grad(f)(jnp.asarray(pred)))
        rng = np.random.default_rng(0)
        for _ in range(4):
            direction = rng.normal(size=pred.shape)
            h = 1e-4
            fd = (float(f(pred + h * direction)) - float(f(pred - h * direction))) / (2 * h)
            np.testing.assert_allclose(np.sum(grad * direction), fd, rtol=1e-5, atol=1e-7)


@SETTINGS
@given(seed=seeds, align=st.sampled_from([None, "root", "procrustes"]))
def test_pck_monotone_in_threshold_and_auc_in_unit_interval(seed, align):
    pred, target, mask = make_data(seed)
    thresholds = jnp.arange(0.0, 301.0, 25.0)
    errors = metrics.joint_errors(pred, target, align=align, mask=mask)
    curve = np.asarray(jax.vmap(lambda t: metrics.pck_from_errors(errors, t, mask))(thresholds))
    assert np.all(np.diff(curve, axis=0) >= 0)
    assert np.all((curve >= 0) & (curve <= 1))
    value = np.asarray(j_auc(pred, target, None, jnp.asarray(mask), root=0, align=align))
    assert np.all((value >= 0) & (value <= 1))


def test_known_offset_case():
    rng = np.random.default_rng(5)
    # Whole millimetres and a (0, 6, 8) offset keep every float32 error exactly 10 mm.
    target = np.round(rng.normal(0, 300, (2, 3, J, 3))).astype(np.float32)  # two leading batch dims
    pred = target + np.float32([0.0, 6.0, 8.0])  # every joint moved by exactly 10 mm
    np.testing.assert_allclose(np.asarray(metrics.mpjpe(pred, target, root=None)), 10.0, rtol=1e-4)
    np.testing.assert_allclose(np.asarray(metrics.mpjpe(pred, target, root=0)), 0.0, atol=1e-3)
    np.testing.assert_allclose(np.asarray(metrics.mpjpe(pred, target, root=(1, 2))), 0.0, atol=1e-3)
    np.testing.assert_allclose(np.asarray(metrics.pa_mpjpe(pred, target)), 0.0, atol=1e-2)
    assert metrics.mpjpe(pred, target).shape == (2, 3)
    # PCK: every raw error is exactly 10 -> below 10.5, not below 9.5; AUC counts thresholds 15..150
    # (strictly below: the threshold 10 itself does not count).
    np.testing.assert_allclose(np.asarray(metrics.pck(pred, target, 10.5, align=None)), 1.0)
    np.testing.assert_allclose(np.asarray(metrics.pck(pred, target, 9.5, align=None)), 0.0)
    np.testing.assert_allclose(np.asarray(metrics.auc(pred, target, align=None)), 28 / 31, rtol=1e-6)
    # Pixel error of a (3, 4) offset is 5.
    p2 = target[..., :2] + np.float32([3.0, 4.0])
    np.testing.assert_allclose(np.asarray(metrics.pixel_error(p2, target[..., :2])), 5.0, rtol=1e-5)


def test_bone_length_rescale_hits_reference_and_keeps_root():
    rng = np.random.default_rng(2)
    pred = rng.normal(0, 300, (B, J, 3)).astype(np.float32)
    out = metrics.bone_length_rescale(pred, 5000.0, PARENTS, root=(1, 2))
    np.testing.assert_allclose(np.asarray(metrics.bone_length_sum(out, PARENTS)), 5000.0, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(out[:, (1, 2)].mean(1)), pred[:, (1, 2)].mean(1), atol=1e-2)
    # A prediction that is a scaled copy of the target has zero rescaled MPJPE.
    np.testing.assert_allclose(np.asarray(metrics.mpjpe_rescaled(0.7 * pred, pred, PARENTS)), 0.0, atol=1e-2)


def test_batching_jit_and_vmap_agree():
    pred, target, mask = make_data(9)
    m = jnp.asarray(mask)
    batched = j_pa_mpjpe(pred, target, m)
    mapped = jax.jit(jax.vmap(metrics.pa_mpjpe))(pred, target, m)
    np.testing.assert_allclose(np.asarray(batched), np.asarray(mapped), rtol=1e-5, atol=1e-3)
    # Broadcasting: one target against a (2, B) stack of predictions.
    stacked = np.stack([pred, pred * 2.0])
    out = j_pa_mpjpe(stacked, target[None], m)
    assert out.shape == (2, B)
    np.testing.assert_allclose(np.asarray(out[1]), np.asarray(batched), rtol=1e-4, atol=1e-2)
    assert metrics.mpjpe(pred, target).dtype == jnp.float32


def test_masked_mean_and_bad_align_argument():
    values = jnp.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = jnp.array([[True, False, True], [False, False, False]])
    np.testing.assert_allclose(np.asarray(metrics.masked_mean(values, mask)), [2.0, 0.0])
    with pytest.raises(ValueError):
        metrics.joint_errors(values[..., None].repeat(3, -1), values[..., None].repeat(3, -1), align="rigid")
