"""Tests for bodyjax.regressor, bodyjax.resnet, bodyjax.augment and bodyjax.pretrained.

Networks are tiny (ResNet18 at width 8, 32-px inputs) and every training test uses the same config,
batch size and data shapes, so that they share one compilation of the train step.
"""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from bodyjax import augment, body, pretrained, regressor, resnet, rotations
from bodyjax.data import transforms

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = regressor.RegressorConfig(depth=18, width=8, image_size=32)
BATCH = 8
NUM_SAMPLES = 16
NUM_POINTS = 40


@pytest.fixture(scope="module")
def template():
    return body.default_template()


# ---------------------------------------------------------------------------------------------
# Helpers


def _rot_y(phi):
    c, s = np.cos(phi), np.sin(phi)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def _random_params(rng, m, size):
    """Pixel-unit params of m plausible people in size×size images (float32 NumPy dict)."""
    pose = rng.normal(0.0, 0.25, (m, 24, 3))
    pose[:, 0] = 0.0
    return {
        "pose": pose.astype(np.float32),
        "segment_scales": rng.uniform(0.9, 1.1, (m, 24)).astype(np.float32),
        "rotation": np.stack([_rot_y(p) for p in rng.uniform(-np.pi, np.pi, m)]).astype(np.float32),
        "scale": rng.uniform(0.4, 0.5, m).astype(np.float32) * size,
        "translation": ((size - 1) / 2 + rng.uniform(-0.05, 0.05, (m, 2)) * size).astype(np.float32),
    }


_forward_subset = jax.jit(body.forward_subset)


def _project(template, params, vid):
    """``body.forward_subset`` at one padded shape (NUM_SAMPLES, NUM_POINTS): a single compilation.

    Returns NumPy ``(vertices2d (B, N, 2), keypoints2d (B, K, 2))`` for ``vid (B, N)``.
    """
    b, n = np.shape(vid)
    pad = lambda x: np.concatenate([np.asarray(x)] + [np.asarray(x)[:1]] * (NUM_SAMPLES - b))  # noqa: E731
    p = jax.tree_util.tree_map(pad, params)
    v = np.zeros((NUM_SAMPLES, NUM_POINTS), np.int32)
    v[:b, :n] = vid
    out = _forward_subset(template, p, v)
    return np.asarray(out.vertices2d)[:b, :n], np.asarray(out.keypoints2d)[:b]


def _fake_data(template, m, size, seed=0, num_points=NUM_POINTS):
    """Stacked samples whose dense points and keypoints are the exact projections of the targets."""
    rng = np.random.default_rng(seed)
    target = _random_params(rng, m, size)
    vid = rng.integers(0, template.num_vertices, (m, num_points)).astype(np.int32)
    xy, kp = _project(template, augment.params_from_target(target), vid)
    data = {
        "image": rng.integers(0, 256, (m, size, size, 3), dtype=np.uint8),
        "dense_xy": xy.astype(np.float32),
        "dense_vertex": vid,
        "dense_mask": np.ones((m, num_points), np.float32),
        "keypoints": kp.astype(np.float32),
        "keypoint_visible": np.ones((m, template.num_keypoints), np.float32),
    }
    return data, target


@pytest.fixture(scope="module")
def fake(template):
    return _fake_data(template, NUM_SAMPLES, TINY.image_size)


@pytest.fixture(scope="module")
def tiny_state():
    return regressor.create_state(0, TINY)


def _is_rotation(m, atol=1e-4):
    m = np.asarray(m, np.float64)
    eye = np.broadcast_to(np.eye(3), m.shape)
    return (np.allclose(np.swapaxes(m, -1, -2) @ m, eye, atol=atol)
            and np.allclose(np.linalg.det(m), 1.0, atol=atol))


# ---------------------------------------------------------------------------------------------
# Head layout, decoding, units


_decode = {h: jax.jit(lambda out, h=h: (regressor.decode_head(out, regressor.RegressorConfig(pose_head=h)),
                                        regressor.pose_rotations(regressor.split_head(out, h).pose, h)))
           for h in regressor.POSE_HEADS}


def test_head_sizes_and_rest_output():
    assert regressor.head_size("quaternion") == 132          # the paper's count
    assert regressor.head_size("rot6d") == 24 * 6 + 36
    assert regressor.head_size("matrix_svd") == 24 * 9 + 36
    for head in regressor.POSE_HEADS:
        p, _ = _decode[head](jnp.tile(regressor.rest_head(head, 0.8), (2, 1)))
        np.testing.assert_allclose(p.pose, 0.0, atol=1e-6)
        np.testing.assert_allclose(p.segment_scales, 1.0, atol=1e-6)
        np.testing.assert_allclose(p.rotation, np.broadcast_to(np.eye(3), (2, 3, 3)), atol=1e-6)
        np.testing.assert_allclose(p.scale, 0.8, rtol=1e-6)
        np.testing.assert_allclose(p.translation, 0.0, atol=1e-7)


def _head_outputs(head):
    n = regressor.head_size(head)
    elements = st.one_of(st.just(0.0), st.floats(-1e3, 1e3, width=32), st.floats(-2.0 ** -20, 2.0 ** -20, width=32))
    return hnp.arrays(np.float32, (2, n), elements=elements)


@pytest.mark.parametrize("head", regressor.POSE_HEADS)
def test_decode_always_valid(head):
    """Any head output decodes to rotations (det +1), an orthonormal R and positive finite scales."""

    @settings(max_examples=40, deadline=None)
    @given(_head_outputs(head))
    def check(out):
        params, mats = _decode[head](jnp.asarray(out))
        assert _is_rotation(mats)                                          # the head's own rotations
        assert _is_rotation(rotations.axis_angle_to_matrix(params.pose))   # what body.forward uses
        np.testing.assert_allclose(params.pose[..., 0, :], 0.0)            # root entry unused
        r = np.asarray(params.rotation, np.float64)
        np.testing.assert_allclose(np.swapaxes(r, -1, -2) @ r, np.broadcast_to(np.eye(3), r.shape), atol=1e-4)
        np.testing.assert_allclose(np.abs(np.linalg.det(r)), 1.0, atol=1e-4)
        for x in (params.segment_scales, params.scale):
            assert np.all(np.isfinite(x)) and np.all(np.asarray(x) > 0)
        assert np.all(np.isfinite(params.translation))

    check()
    params, mats = _decode[head](jnp.zeros((2, regressor.head_size(head))))   # fully degenerate
    assert _is_rotation(mats)
    assert _is_rotation(params.rotation)


def test_robust_decoders_match_rotations_module():
    rng = np.random.default_rng(1)
    m = rng.normal(size=(50, 3, 3)).astype(np.float32)
    x = rng.normal(size=(50, 6)).astype(np.float32)
    ours = jax.jit(lambda m, x: (regressor.gram_schmidt_rotation(m), regressor.rot6d_to_rotation(x),
                                 regressor.svd_rotation(m)))(m, x)
    ref = jax.jit(lambda m, x: (rotations.gram_schmidt(m), rotations.rot6d_to_matrix(x),
                                rotations.svd_orthogonalize(m)))(m, x)
    for a, b in zip(ours, ref):
        np.testing.assert_allclose(a, b, atol=2e-5)


def test_svd_rotation_derivative_finite_differences():
    """The polar-factor JVP matches float64 central differences, also at the identity (equal σ)."""
    with jax.enable_x64(True):
        rng = np.random.default_rng(2)
        for m in (rng.normal(size=(3, 3)), np.eye(3), np.diag([1.0, 1.0, -1.0]) + 0.1 * rng.normal(size=(3, 3))):
            m = jnp.asarray(m, jnp.float64)
            dm = jnp.asarray(rng.normal(size=(3, 3)), jnp.float64)
            _, jvp = jax.jvp(regressor.svd_rotation, (m,), (dm,))
            h = 1e-6
            fd = (regressor.svd_rotation(m + h * dm) - regressor.svd_rotation(m - h * dm)) / (2 * h)
            assert np.all(np.isfinite(jvp))
            np.testing.assert_allclose(jvp, fd, atol=1e-6)
            g = jax.grad(lambda a: jnp.sum(regressor.svd_rotation(a) * dm))(m)
            assert np.all(np.isfinite(g))


def test_unit_conversions(template):
    """Normalised params project to the normalised pixels of the pixel params (and round-trip)."""
    rng = np.random.default_rng(3)
    size = (48, 64)
    p = augment.params_from_target(_random_params(rng, 4, 48))
    n = regressor.params_to_normalized(p, size)
    back = regressor.params_to_pixels(n, size)
    for a, b in zip(jax.tree_util.tree_leaves(p), jax.tree_util.tree_leaves(back)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)
    vid = rng.integers(0, template.num_vertices, (4, 10))
    x_px, _ = _project(template, p, vid)
    x_n, _ = _project(template, n, vid)
    np.testing.assert_allclose(regressor.normalize_points(x_px, size), x_n, atol=1e-5)
    # half = max(H, W)/2, centre = ((W-1)/2, (H-1)/2), as the registration
    np.testing.assert_allclose(n.scale, p.scale / 32.0, rtol=1e-6)
    np.testing.assert_allclose(n.translation, (p.translation - np.array([31.5, 23.5])) / 32.0, atol=1e-6)


@pytest.mark.parametrize("head", regressor.POSE_HEADS)
def test_regression_loss_zero_at_target_and_sign_invariant(head):
    """encode_head inverts decoding; the regression vectors agree at the target, also for -q."""
    rng = np.random.default_rng(4)
    target = regressor.params_to_normalized(augment.params_from_target(_random_params(rng, 5, 64)), (64, 64))

    @jax.jit
    def run(target):
        out = regressor.encode_head(target, head)
        raw = regressor.split_head(out, head)
        vec = regressor.regression_vectors(raw, target, head)
        flipped = regressor.regression_vectors(raw._replace(pose=-raw.pose), target, head)
        decoded = regressor.decode_head(out, regressor.RegressorConfig(pose_head=head))
        return (vec, flipped, rotations.axis_angle_to_matrix(decoded.pose[:, 1:]),
                rotations.axis_angle_to_matrix(target.pose[:, 1:]))

    (p, t, m), (p2, t2, m2), r_dec, r_tgt = run(target)
    assert p.shape == t.shape == m.shape == (5, 24 * (4 if head == "quaternion" else 9) + 36)
    np.testing.assert_allclose(np.asarray(jnp.sum(jnp.abs(p - t) * m, -1)), 0.0, atol=2e-5)
    np.testing.assert_allclose(r_dec, r_tgt, atol=1e-4)
    if head == "quaternion":   # -q is the same rotation: no loss either
        np.testing.assert_allclose(np.asarray(jnp.sum(jnp.abs(p2 - t2) * m2, -1)), 0.0, atol=2e-5)


def _constant_state(state, out):
    """``state`` whose network outputs ``out (head_size,)`` for every image (zero head kernel)."""
    head = dict(state.params["head"], kernel=jnp.zeros_like(state.params["head"]["kernel"]), bias=out)
    return state.replace(params=dict(state.params, head=head))


def test_eval_loss_zero_at_exact_prediction(template, tiny_state):
    """Output = targets, points = their projections ⇒ every term of eq. 13 vanishes (eval_step)."""
    rng = np.random.default_rng(12)
    size = TINY.image_size
    one = _random_params(rng, 1, size)
    target = {k: np.repeat(v, BATCH, axis=0) for k, v in one.items()}
    vid = rng.integers(0, template.num_vertices, (BATCH, NUM_POINTS)).astype(np.int32)
    xy, kp = _project(template, augment.params_from_target(target), vid)
    data = {"image": rng.integers(0, 256, (BATCH, size, size, 3), dtype=np.uint8), "dense_xy": xy,
            "dense_vertex": vid, "dense_mask": np.ones((BATCH, NUM_POINTS), np.float32), "keypoints": kp,
            "keypoint_visible": np.ones((BATCH, template.num_keypoints), np.float32)}
    norm = regressor.params_to_normalized(augment.params_from_target(one), (size, size))
    state = _constant_state(tiny_state, regressor.encode_head(norm, "quaternion")[0])
    terms = regressor.eval_step(state, regressor.make_batch(data, target), template)
    for k in ("l_regress", "l_dense", "l_kp", "loss"):
        assert float(terms[k]) < 1e-6, (k, terms[k])
    # one pixel off in x for every correspondence: mean squared error (1 / half)² in normalised units
    shifted = dict(data, dense_xy=data["dense_xy"] + np.array([1.0, 0.0], np.float32))
    terms = regressor.eval_step(state, regressor.make_batch(shifted, target), template)
    np.testing.assert_allclose(terms["l_dense"], 1.0 / (size / 2) ** 2, rtol=1e-3)
    # evaluate: data-set means, the last partial batch padded and excluded (same compiled step)
    ev = regressor.evaluate(state, {k: v[:5] for k, v in shifted.items()},
                            augment.params_from_target({k: v[:5] for k, v in target.items()}), batch_size=BATCH,
                            template=template)
    np.testing.assert_allclose(ev["l_dense"], 1.0 / (size / 2) ** 2, rtol=1e-3)
    assert ev["l_regress"] < 1e-6 and ev["l_kp"] < 1e-6


# ---------------------------------------------------------------------------------------------
# Training


def test_train_step_one_step(template, fake, tiny_state):
    data, target = fake
    batch = regressor.make_batch({k: v[:BATCH] for k, v in data.items()}, {k: v[:BATCH] for k, v in target.items()})
    state, metrics = regressor.train_step(tiny_state, batch, template)
    assert all(np.isfinite(float(v)) for v in metrics.values())
    assert int(state.step) == 1
    changed = jax.tree_util.tree_map(lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))),
                                     tiny_state.params, state.params)
    bb = changed["backbone"]
    assert changed["head"]["kernel"] and changed["head"]["bias"] and bb["conv1"]["kernel"] and bb["bn1"]["scale"]
    # Each block starts as the identity (zero last-BN scale), so at step 1 only its last BatchNorm
    # (and the shortcut projections) receive gradient; those must all move.
    for name, block in bb.items():
        if name.startswith("layer"):
            assert block["bn2"]["scale"] and block["bn2"]["bias"], name
            if "downsample_conv" in block:
                assert block["downsample_conv"]["kernel"], name
    stats_changed = jax.tree_util.tree_leaves(jax.tree_util.tree_map(
        lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))), tiny_state.batch_stats, state.batch_stats))
    assert all(stats_changed)
    # Adam moved every head weight by about the learning rate.
    step = np.abs(np.asarray(state.params["head"]["bias"]) - np.asarray(tiny_state.params["head"]["bias"]))
    assert np.median(step) == pytest.approx(regressor.RegressorHParams().learning_rate, rel=0.1)


def test_train_regressor_and_predict(template, fake, tiny_state):
    data, target = fake
    seen = []
    state, history = regressor.train_regressor(
        tiny_state, data, augment.params_from_target(target), jax.random.key(0), num_epochs=2,
        batch_size=BATCH, template=template, augment=augment.AugmentConfig(),
        progress=lambda e, m: seen.append(e))
    assert seen == [0, 1] and len(history["loss"]) == 2 and int(state.step) == 2 * NUM_SAMPLES // BATCH
    assert all(np.isfinite(history["loss"]))
    pred = regressor.predict(state, data["image"][:5], template, batch_size=4)
    assert pred.vertices.shape == (5, template.num_vertices, 3)
    assert pred.joints.shape == (5, 24, 3) and pred.keypoints2d.shape == (5, template.num_keypoints, 2)
    size = data["image"].shape[1:3]
    back = regressor.params_to_pixels(pred.params_normalized, size)
    for a, b in zip(jax.tree_util.tree_leaves(back), jax.tree_util.tree_leaves(pred.params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(_project(template, pred.params, np.zeros((5, 1), np.int32))[1],
                               pred.keypoints2d, atol=1e-3)
    assert np.all(np.asarray(pred.params.scale) > 0) and _is_rotation(pred.params.rotation)


_DP_SCRIPT = r"""
import json, sys
import jax, numpy as np
from bodyjax import augment, body, regressor
assert jax.device_count() == 4, jax.devices()
cfg = regressor.RegressorConfig(depth=18, width=8, image_size=32)
d = np.load(sys.argv[1])
abstract = jax.eval_shape(lambda: regressor.create_state(0, cfg))
leaves, treedef = jax.tree_util.tree_flatten(abstract)
state = jax.tree_util.tree_unflatten(treedef, [d[f"s{i}"] for i in range(len(leaves))])
data = {k[2:]: d[k] for k in d.files if k.startswith("d_")}
target = augment.params_from_target({k[2:]: d[k] for k in d.files if k.startswith("t_")})
mesh = regressor.make_mesh()
state, hist = regressor.train_regressor(state, data, target, 0, num_epochs=1, batch_size=8, augment=None, mesh=mesh)
sh = state.params["head"]["kernel"].sharding
assert sh.is_fully_replicated and len(sh.device_set) == 4, sh
np.savez(sys.argv[2], **{f"s{i}": np.asarray(x) for i, x in enumerate(jax.tree_util.tree_leaves(state))})
print(json.dumps(hist))
"""


_DP_TEST = "test_data_parallel_matches_single_device"


@pytest.fixture(scope="module", autouse=True)
def data_parallel_run(request, tmp_path_factory):
    """Starts the 4-device subprocess of the data-parallel test as soon as the module starts.

    It compiles and runs while the other tests run here (only when that test is selected).
    """
    if not any(item.name == _DP_TEST for item in request.session.items):
        yield None
        return
    data, target = request.getfixturevalue("fake")
    tiny_state = request.getfixturevalue("tiny_state")
    tmp = tmp_path_factory.mktemp("dp")
    inp, out = tmp / "in.npz", tmp / "out.npz"
    arrays = {f"s{i}": np.asarray(x) for i, x in enumerate(jax.tree_util.tree_leaves(tiny_state))}
    arrays.update({f"d_{k}": v for k, v in data.items()})
    arrays.update({f"t_{k}": v for k, v in target.items()})
    np.savez(inp, **arrays)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu",
               PYTHONPATH=REPO)
    proc = subprocess.Popen([sys.executable, "-c", _DP_SCRIPT, str(inp), str(out)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    yield proc, out
    if proc.poll() is None:
        proc.kill()
        proc.communicate()


def test_data_parallel_matches_single_device(template, fake, tiny_state, data_parallel_run):
    """Batch sharded over 4 forced CPU devices (subprocess) = the 1-device result."""
    data, target = fake
    proc, out = data_parallel_run
    # The single-device reference here (same data, same seed, no augmentation).
    state1, hist1 = regressor.train_regressor(tiny_state, data, augment.params_from_target(target), 0,
                                              num_epochs=1, batch_size=BATCH, template=template, augment=None)
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-3000:]
    hist4 = json.loads(stdout.strip().splitlines()[-1])
    for k in ("loss", "l_regress", "l_dense", "l_kp"):
        np.testing.assert_allclose(hist4[k], hist1[k], rtol=1e-4)
    got = np.load(out)
    ref = [np.asarray(x) for x in jax.tree_util.tree_leaves(state1)]
    assert len(got.files) == len(ref)
    # Adam normalises each gradient entry: where a gradient is ~0 (e.g. behind a zero-initialised
    # BatchNorm scale) float round-off of the cross-device sum can flip its update by up to the
    # learning rate. So: every entry within 2·lr·steps, and nearly all of them to round-off.
    lr, steps = regressor.RegressorHParams().learning_rate, NUM_SAMPLES // BATCH
    diffs = np.concatenate([np.abs(got[f"s{i}"].astype(np.float64) - r).ravel() / (1.0 + np.abs(r).ravel())
                            for i, r in enumerate(ref)])
    assert diffs.max() <= 2 * lr * steps, diffs.max()
    assert np.mean(diffs > 1e-5) < 0.01, np.mean(diffs > 1e-5)


# ---------------------------------------------------------------------------------------------
# Augmentation


def _sample_with_gt(data, target, i):
    s = {k: v[i] for k, v in data.items()}
    s.update({"has_gt": np.float32(1.0), "gt_pose": target["pose"][i], "gt_segment_scales": target["segment_scales"][i],
              "gt_rotation": target["rotation"][i], "gt_scale": target["scale"][i],
              "gt_translation": target["translation"][i], "gt_joints3d": np.zeros((24, 3), np.float32)})
    return s


@pytest.mark.parametrize("flip", [False, True])
def test_augmentation_keeps_targets_consistent(template, flip):
    """After zoom/rotation/shift/flip the target body still projects onto the moved points."""
    data, target = _fake_data(template, 4, 64, seed=5)
    cfg = augment.AugmentConfig(scale_range=(0.8, 1.2), rotation=30.0, rotation_prob=1.0, translate=0.1,
                                flip_prob=1.0 if flip else 0.0)
    rng = np.random.default_rng(6)
    outs, tgts = zip(*[augment.augment_sample(_sample_with_gt(data, target, i), {k: v[i] for k, v in target.items()},
                                              template, 48, rng, cfg) for i in range(4)])
    t2 = {k: np.stack([t[k] for t in tgts]) for k in augment.TARGET_KEYS}
    xy, kp = _project(template, augment.params_from_target(t2), np.stack([o["dense_vertex"] for o in outs]))
    for i, out in enumerate(outs):
        assert out["image"].shape == (48, 48, 3) and out["image"].dtype == np.uint8
        m = out["dense_mask"] > 0
        assert m.sum() > 10
        np.testing.assert_allclose(xy[i][m], out["dense_xy"][m], atol=2e-3)
        v = out["keypoint_visible"] > 0
        np.testing.assert_allclose(kp[i][v], out["keypoints"][v], atol=2e-3)
        # the target follows exactly the path of the ground truth through bodyjax.data.transforms
        for k in augment.TARGET_KEYS:
            np.testing.assert_allclose(tgts[i][k], out["gt_" + k], atol=1e-5)


def test_flip_target_is_flip_gt(template):
    rng = np.random.default_rng(7)
    t = {k: v[0] for k, v in _random_params(rng, 1, 64).items()}
    f = augment.flip_target(t, template.joint_mirror, 64)
    pose, ss, rot, tr, _ = transforms.flip_gt(t["pose"], t["segment_scales"], t["rotation"], t["translation"],
                                              np.zeros((24, 3)), template.joint_mirror, 64)
    for a, b in ((f["pose"], pose), (f["segment_scales"], ss), (f["rotation"], rot), (f["translation"], tr)):
        np.testing.assert_allclose(a, b, atol=1e-6)
    back = augment.flip_target(f, template.joint_mirror, 64)
    for k in augment.TARGET_KEYS:
        np.testing.assert_allclose(back[k], t[k], atol=1e-5)


def test_augment_batch_deterministic_and_resize_keeps_normalised_params(template):
    data, target = _fake_data(template, 4, 64, seed=8)
    a1, t1 = augment.augment_batch(data, target, template, 32, seed=(1, 2))
    a2, t2 = augment.augment_batch(data, target, template, 32, seed=(1, 2))
    a3, _ = augment.augment_batch(data, target, template, 32, seed=(1, 3))
    for k in a1:
        np.testing.assert_array_equal(a1[k], a2[k])
    assert not np.array_equal(a1["image"], a3["image"])
    # a plain resize (config=None) is a similarity with k = 1/2: normalised targets are unchanged
    r, tr = augment.augment_batch(data, target, template, 32, config=None)
    n0 = regressor.params_to_normalized(augment.params_from_target(target), (64, 64))
    n1 = regressor.params_to_normalized(augment.params_from_target(tr), (32, 32))
    for a, b in zip(jax.tree_util.tree_leaves(n0), jax.tree_util.tree_leaves(n1)):
        np.testing.assert_allclose(a, b, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# ResNet and weight import


@pytest.mark.parametrize("k,stride,hw", [(3, 1, 2), (3, 2, 4), (1, 2, 3)])
def test_small_map_conv_matches_xla_conv(k, stride, hw):
    rng = np.random.default_rng(9)
    x = jnp.asarray(rng.normal(size=(2, hw, hw, 5)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(k, k, 5, 6)), jnp.float32)
    ours, ref = jax.jit(lambda x, w: (
        resnet._conv_matmul(x, w, stride, k // 2),
        jax.lax.conv_general_dilated(x, w, (stride, stride), ((k // 2, k // 2),) * 2,
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))))(x, w)
    np.testing.assert_allclose(ours, ref, atol=1e-4)


def test_resnet_feature_dims():
    assert resnet.feature_dim(18) == 512 and resnet.feature_dim(50) == 2048
    assert resnet.feature_dim(34, 16) == 128
    with pytest.raises(ValueError):
        resnet.feature_dim(20)


def _torchvision_layout(depth, width=64, num_classes=1000):
    """{name: shape} of a torchvision ResNet state dict (written from the architecture, not imported)."""
    kind, blocks = resnet.STAGES[depth]
    exp = 4 if kind == "bottleneck" else 1
    shapes = {"conv1.weight": (width, 3, 7, 7)}

    def bn(prefix, c):
        for f in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{prefix}.{f}"] = (c,)
        shapes[f"{prefix}.num_batches_tracked"] = ()

    bn("bn1", width)
    cin = width
    for s, n in enumerate(blocks):
        c = width * 2 ** s
        for b in range(n):
            p = f"layer{s + 1}.{b}"
            if kind == "basic":
                shapes[f"{p}.conv1.weight"] = (c, cin, 3, 3)
                bn(f"{p}.bn1", c)
                shapes[f"{p}.conv2.weight"] = (c, c, 3, 3)
                bn(f"{p}.bn2", c)
            else:
                shapes[f"{p}.conv1.weight"] = (c, cin, 1, 1)
                bn(f"{p}.bn1", c)
                shapes[f"{p}.conv2.weight"] = (c, c, 3, 3)
                bn(f"{p}.bn2", c)
                shapes[f"{p}.conv3.weight"] = (c * exp, c, 1, 1)
                bn(f"{p}.bn3", c * exp)
            if b == 0 and (s > 0 or cin != c * exp):
                shapes[f"{p}.downsample.0.weight"] = (c * exp, cin, 1, 1)
                bn(f"{p}.downsample.1", c * exp)
            cin = c * exp
    shapes["fc.weight"] = (num_classes, cin)
    shapes["fc.bias"] = (num_classes,)
    return shapes


def _random_state_dict(shapes, seed=0):
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in shapes.items():
        if name.endswith("num_batches_tracked"):
            out[name] = np.asarray(7, np.int64)
        elif name.endswith("running_var"):
            out[name] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
        elif name.endswith("weight") and len(shape) == 4:
            fan_in = shape[1] * shape[2] * shape[3]
            out[name] = (rng.standard_normal(shape, dtype=np.float32) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        else:
            out[name] = (rng.standard_normal(shape, dtype=np.float32) * 0.1
                         + (1.0 if name.endswith("bn1.weight") else 0.0)).astype(np.float32)
    return out


def test_import_full_resnet50_layout(tmp_path):
    """A ResNet50 torchvision state dict (safetensors) fills every backbone array with the right shape."""
    from safetensors.numpy import save_file

    sd = _random_state_dict(_torchvision_layout(50))
    path = tmp_path / "resnet50.safetensors"
    save_file(sd, str(path))
    model = regressor.Regressor(regressor.RegressorConfig())
    abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3))))
    variables, report = pretrained.import_resnet(abstract, path, prefix=("backbone",))
    assert set(report.ignored) == {"fc.weight", "fc.bias"} | {k for k in sd if k.endswith("num_batches_tracked")}
    flat_abs = {c: jax.tree_util.tree_leaves_with_path(abstract[c]["backbone"]) for c in ("params", "batch_stats")}
    n = sum(len(v) for v in flat_abs.values())
    assert report.filled == n == len(sd) - len(report.ignored)
    for c, leaves in flat_abs.items():
        for path_, leaf in leaves:
            new = variables[c]["backbone"]
            for key in path_:
                new = new[key.key]
            assert isinstance(new, jax.Array) and new.shape == leaf.shape, (c, path_)
    assert not isinstance(variables["params"]["head"]["kernel"], jax.Array)   # the head is untouched
    np.testing.assert_array_equal(variables["params"]["backbone"]["layer4_2"]["conv3"]["kernel"],
                                  np.transpose(sd["layer4.2.conv3.weight"], (2, 3, 1, 0)))
    np.testing.assert_array_equal(variables["batch_stats"]["backbone"]["layer1_0"]["downsample_bn"]["var"],
                                  sd["layer1.0.downsample.1.running_var"])
    bad = dict(sd, **{"layer1.0.conv1.weight": np.zeros((64, 64, 3, 3), np.float32)})
    with pytest.raises(ValueError, match="layer1_0/conv1/kernel"):
        pretrained.import_resnet(abstract, bad, prefix=("backbone",))
    with pytest.raises(ValueError, match="not in the weight file"):
        pretrained.import_resnet(abstract, {k: v for k, v in sd.items() if k != "bn1.bias"}, prefix=("backbone",))


def _torch_resnet(torch, sd, depth, x):
    """Reference forward (eval mode) of a torchvision-layout ResNet with torch.nn.functional."""
    F = torch.nn.functional
    t = {k: torch.from_numpy(np.asarray(v)) for k, v in sd.items()}

    def bn(h, p):
        return F.batch_norm(h, t[p + ".running_mean"], t[p + ".running_var"], t[p + ".weight"], t[p + ".bias"],
                            training=False, eps=1e-5)

    kind, blocks = resnet.STAGES[depth]
    h = F.relu(bn(F.conv2d(x, t["conv1.weight"], stride=2, padding=3), "bn1"))
    h = F.max_pool2d(h, 3, stride=2, padding=1)
    for s, n in enumerate(blocks):
        for b in range(n):
            p = f"layer{s + 1}.{b}"
            stride = 2 if (s > 0 and b == 0) else 1
            if kind == "basic":
                y = F.relu(bn(F.conv2d(h, t[p + ".conv1.weight"], stride=stride, padding=1), p + ".bn1"))
                y = bn(F.conv2d(y, t[p + ".conv2.weight"], padding=1), p + ".bn2")
            else:
                y = F.relu(bn(F.conv2d(h, t[p + ".conv1.weight"]), p + ".bn1"))
                y = F.relu(bn(F.conv2d(y, t[p + ".conv2.weight"], stride=stride, padding=1), p + ".bn2"))
                y = bn(F.conv2d(y, t[p + ".conv3.weight"]), p + ".bn3")
            if p + ".downsample.0.weight" in t:
                h = bn(F.conv2d(h, t[p + ".downsample.0.weight"], stride=stride), p + ".downsample.1")
            h = F.relu(y + h)
    return h.mean(dim=(2, 3))


def test_imported_weights_match_torch(tmp_path):
    """Imported (bottleneck) ResNet50 features equal a torch forward with the same weights."""
    torch = pytest.importorskip("torch")
    depth = 50
    sd = _random_state_dict(_torchvision_layout(depth, width=8), seed=depth)
    np.savez(tmp_path / "w.npz", **sd)
    net = resnet.ResNet(depth=depth, width=8)
    x = np.random.default_rng(10).normal(size=(2, 64, 64, 3)).astype(np.float32)
    abstract = jax.eval_shape(lambda: net.init(jax.random.key(0), jnp.asarray(x)))
    variables, report = pretrained.import_resnet(abstract, tmp_path / "w.npz")
    ours = jax.jit(lambda v, x: net.apply(v, x, train=False))(variables, x)
    with torch.no_grad():
        ref = _torch_resnet(torch, sd, depth, torch.from_numpy(np.transpose(x, (0, 3, 1, 2)))).numpy()
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4)
    # one layer on its own: the stem convolution equals torch's conv2d on the same weights
    stem = resnet.Conv(8, 7, 2)
    y = stem.apply({"params": {"kernel": variables["params"]["conv1"]["kernel"]}}, x)
    with torch.no_grad():
        y_ref = torch.nn.functional.conv2d(torch.from_numpy(np.transpose(x, (0, 3, 1, 2))),
                                           torch.from_numpy(sd["conv1.weight"]), stride=2, padding=3)
    np.testing.assert_allclose(y, np.transpose(y_ref.numpy(), (0, 2, 3, 1)), rtol=1e-4, atol=1e-4)


def test_load_pretrained_backbone_into_state(tiny_state, tmp_path):
    sd = _random_state_dict(_torchvision_layout(18, width=8), seed=11)
    state, report = pretrained.load_pretrained_backbone(tiny_state, sd)
    np.testing.assert_array_equal(state.params["backbone"]["conv1"]["kernel"],
                                  np.transpose(sd["conv1.weight"], (2, 3, 1, 0)))
    np.testing.assert_array_equal(state.params["head"]["bias"], tiny_state.params["head"]["bias"])
    assert jax.tree_util.tree_structure(state.opt_state) == jax.tree_util.tree_structure(tiny_state.opt_state)
    with pytest.raises(ValueError, match="no counterpart"):
        pretrained.load_pretrained_backbone(tiny_state, _random_state_dict(_torchvision_layout(34, width=8)))
