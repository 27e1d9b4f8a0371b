"""Tests for the metric code of tools/eval_lifter.py (the lifter evaluation on synthetic data)."""

import os
import sys

import jax.numpy as jnp
import numpy as np

from bodyjax import body, metrics, skeletons

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools"))
import eval_lifter  # noqa: E402

# A coco17 spanning tree (hips, legs, torso sides, arms, nose on the left shoulder, face) for
# metrics.mpjpe_rescaled; the tool sums the bones of skeletons.COCO17 instead.
COCO17_TREE = (5, 0, 0, 1, 2, 11, 12, 5, 6, 7, 8, -1, 11, 11, 12, 13, 14)


def _fake_data(m=6, seed=0):
    """Random camera-frame skeletons near a template pose, with a weak-perspective camera."""
    rng = np.random.default_rng(seed)
    template = body.default_template("coco17")
    kp = np.asarray(body.forward(template, body.rest_params(template)).keypoints, np.float64)
    p3 = kp[None] + 0.05 * rng.standard_normal((m, 17, 3))
    s = rng.uniform(80.0, 120.0, m)
    t = rng.uniform(30.0, 90.0, (m, 2))
    vis = np.ones((m, 17), np.float32)
    vis[1, 3] = vis[2, 0] = vis[3, 11] = 0  # one hidden hip: the root falls back to the other
    return dict(keypoints2d=(s[:, None, None] * p3[..., :2] + t[:, None]).astype(np.float32),
                visibility=vis, keypoints3d=p3.astype(np.float32), scale=s.astype(np.float32),
                translation=t.astype(np.float32),
                front_z=np.where(np.arange(m) % 2 == 0, -1.0, 1.0).astype(np.float32))


def _oracle(data):
    """The ground truth in the lifter's pixel units, centred like lifter.lift."""
    gt = np.asarray(eval_lifter.ground_truth_centred(data))
    return gt * data["scale"][:, None, None] * data["visibility"][..., None]


def test_oracle_mirror_and_flat():
    data = _fake_data()
    oracle = _oracle(data)
    r = eval_lifter.evaluate(oracle, data)
    assert r["mpjpe"] < 1e-2 and r["pa_mpjpe"] < 1e-2 and r["flip"] == 0
    # The mirror is the worst sign, fully recovered by the "up to sign" diagnostic only.
    m = eval_lifter.evaluate(oracle * np.array([1.0, 1.0, -1.0]), data)
    assert m["mpjpe"] > 10 and m["pa_mpjpe"] > 5
    assert m["mpjpe_sign"] < 1e-2 and m["pa_sign"] < 1e-2 and m["flip"] == 1
    # The flat baseline is the oracle with z = 0: same x, y (the lifter's 2D root-centring).
    flat = eval_lifter.flat_baseline(data)
    np.testing.assert_allclose(flat[..., :2], oracle[..., :2], atol=1e-3)
    assert np.all(flat[..., 2] == 0)


def test_rescaled_error_is_scale_free_and_matches_metrics_when_all_visible():
    data = _fake_data()
    data["visibility"][:] = 1
    rng = np.random.default_rng(1)
    pred = _oracle(data) + rng.normal(0.0, 3.0, (6, 17, 3))
    pred -= pred[:, 11:13].mean(1, keepdims=True)  # centred like a lift (all keypoints visible)
    gt = eval_lifter.ground_truth_centred(data)
    mp, pa = eval_lifter._errors(jnp.asarray(pred, jnp.float32), gt, jnp.ones((6, 17)))
    mp2, pa2 = eval_lifter._errors(jnp.asarray(7.0 * pred, jnp.float32), gt, jnp.ones((6, 17)))
    np.testing.assert_allclose(mp2, mp, rtol=1e-4)
    np.testing.assert_allclose(pa2, pa, rtol=1e-4)
    np.testing.assert_allclose(pa, metrics.pa_mpjpe(pred, gt), rtol=1e-4)
    # Same protocol as metrics.mpjpe_rescaled, up to the bone set: scale by the bone-length sum.
    ref = metrics.bone_length_sum(gt, COCO17_TREE) / metrics.bone_length_sum(pred, COCO17_TREE)
    factor = (np.asarray(jnp.sum(skeletons.bone_lengths(gt, skeletons.COCO17), -1))
              / np.asarray(jnp.sum(skeletons.bone_lengths(pred, skeletons.COCO17), -1)))
    np.testing.assert_allclose(factor, ref, rtol=0.05)  # the two bone sets agree on the scale
    np.testing.assert_allclose(
        mp, metrics.mpjpe(factor[:, None, None] * pred, gt, root=(11, 12)), rtol=1e-4)


def test_apply_visibility_modes():
    data = _fake_data()
    rule = data["visibility"]
    lab = eval_lifter.apply_visibility(data, "labelled")["visibility"]
    np.testing.assert_array_equal(lab[:, :5], rule[:, :5])
    assert np.all(lab[:, 5:] == 1)
    assert np.all(eval_lifter.apply_visibility(data, "all")["visibility"] == 1)
    np.testing.assert_array_equal(eval_lifter.apply_visibility(data, "rule")["visibility"], rule)


def test_make_data_projects_the_record_keypoints():
    template = body.default_template("coco17")
    d = eval_lifter.make_data(template, seed=5, num=2)
    assert d["keypoints2d"].shape == (2, 17, 2) and d["keypoints3d"].shape == (2, 17, 3)
    proj = d["scale"][:, None, None] * d["keypoints3d"][..., :2] + d["translation"][:, None]
    np.testing.assert_allclose(proj, d["keypoints2d"], atol=1e-2)
    assert set(np.unique(d["visibility"])) <= {0.0, 1.0}
