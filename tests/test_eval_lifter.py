"""Tests for tools/eval_lifter.py (the lifter evaluation on synthetic data): metrics, training, CLI."""

import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bodyjax import body, lifter, metrics, skeletons

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


# The tool's training (run_epochs + array_batches + lifter.train_step) at a CPU size; one config,
# batch size and keypoint count so that main() and test_train share the compiled steps.
TINY = dict(width=16, batch=16, lr=1e-3)


def _tiny_config(epochs=1):
    return lifter.LifterConfig(hidden=TINY["width"], learning_rate=TINY["lr"], batch_size=TINY["batch"],
                               num_epochs=epochs)


def _same(a, b):
    return all(jax.tree_util.tree_leaves(jax.tree_util.tree_map(lambda x, y: bool(jnp.array_equal(x, y)), a, b)))


@pytest.mark.slow  # ~15 s: the tool's own training loop
def test_train_runs_the_epoch_loop_with_the_joint_schedule():
    data = _fake_data(m=40, seed=3)
    rest = np.asarray(body.forward(body.default_template("coco17"),
                                   body.rest_params(body.default_template("coco17"))).keypoints)
    mean_ratios = np.asarray(skeletons.bone_ratios(jnp.asarray(rest), skeletons.COCO17))
    cfg = _tiny_config()
    s1, h1, _ = eval_lifter.train("r1", cfg, data, mean_ratios, 2, TINY["batch"], seed=0)
    s2, h2, _ = eval_lifter.train("r1", cfg, data, mean_ratios, 2, TINY["batch"], seed=0)
    assert int(s1.generator.step) == 2 * (40 // 16)            # the last partial batch is dropped
    assert len(h1["loss_g"]) == 2 and np.all(np.isfinite(h1["loss_g"]))
    assert h1["mu"] == [0.0, 0.0] and h1["joint"] == [0.0, 0.0]  # round 1: no eq. 5
    assert _same(s1.generator.params, s2.generator.params)     # deterministic given the seed
    assert s1.config == cfg and s1.keypoint_set == "coco17"
    # Round 2 continues the state with eq. 5 on, mu decaying geometrically from 100 to 1.
    targets = eval_lifter.noisy_targets(data, 30.0, seed=1)
    s3, h3, _ = eval_lifter.train("r2", cfg, data, mean_ratios, 2, TINY["batch"], seed=1, state=s1,
                                  joints3d=targets)
    assert int(s3.generator.step) == 8
    np.testing.assert_allclose(h3["mu"], [(100 + 100 ** (2 / 3)) / 2, (100 ** (1 / 3) + 1) / 2], rtol=1e-5)
    assert all(j > 0 for j in h3["joint"])
    # predict is lifter.lift on the data's keypoints: root-centred, in pixels.
    pred = eval_lifter.predict(s3, data)
    assert pred.shape == (40, 17, 3)
    np.testing.assert_allclose(pred[..., :2], eval_lifter.flat_baseline(data)[..., :2], atol=1e-3)


def test_main_prints_the_table_and_writes_json(tmp_path, capsys):
    seed, n_train, n_test = 0, 40, 12
    cache = tmp_path / "cache"
    cache.mkdir()
    for s, n in ((1000 * seed + 1, n_train), (1000 * seed + 2, n_test)):
        np.savez(cache / f"seed{s}_n{n}.npz", **_fake_data(m=n, seed=s))
    out = tmp_path / "out.json"
    eval_lifter.main(["--train", str(n_train), "--test", str(n_test), "--epochs", "1",
                      "--width", str(TINY["width"]), "--batch", str(TINY["batch"]), "--lr", str(TINY["lr"]),
                      "--seed", str(seed), "--runs", "paper,round2", "--cache", str(cache),
                      "--json", str(out)])
    text = capsys.readouterr().out
    assert "| method " in text and "flat baseline (z = 0)" in text
    for label in ("R1 paper: adv+ratio+sym, 7 views", "stand-in targets (GT + 30 mm)",
                  "R2: paper + joint loss (1 ep)"):
        assert label in text, label
    result = json.loads(out.read_text())
    assert result["args"]["runs"] == "paper,round2" and result["args"]["visibility"] == "labelled"
    rows = {name: r for name, r in result["rows"]}
    assert set(rows["flat baseline (z = 0)"]) == {"mpjpe", "pa_mpjpe", "mpjpe_sign", "pa_sign", "flip",
                                                  "flip_facing", "flip_away"}
    assert all(np.isfinite(r["mpjpe"]) for r in rows.values())
    assert set(result["gan"]) == set(result["times"]) == {"R1 paper: adv+ratio+sym, 7 views",
                                                          "R2: paper + joint loss (1 ep)"}
