"""Tests for bodyjax.regressor, bodyjax.resnet and bodyjax.pretrained.

Networks are tiny (ResNet18 at width 8, 32-px inputs) and every training test uses the same config,
batch size and data shapes, so that they share one compilation of the train step. The augmentation
of the input pipeline (bodyjax.data.augment) is tested in test_augment.py.
"""
import dataclasses
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from bodyjax import body, camera, pretrained, regressor, resnet, rotations
from bodyjax.batch import Batch
from bodyjax.data import augment
from bodyjax.data import sample as sample_lib
from bodyjax.data.pipeline import ArraySource
from bodyjax.loop import epochs

try:
    from tests.people import random_params as _random_params
except ImportError:  # tests/ itself on sys.path (pytest's default rootdir insertion)
    from people import random_params as _random_params

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = regressor.RegressorConfig(depth=18, width=8, image_size=32)
TINY_IUV = dataclasses.replace(TINY, input="iuv")
BATCH = 8
NUM_SAMPLES = 16
NUM_POINTS = 40


@pytest.fixture(scope="module")
def template():
    return body.default_template()


# ---------------------------------------------------------------------------------------------
# Helpers


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


def _label_maps(rng, m, size):
    """Random ``iuv`` label maps: parts 0..24 with some unlabelled (255) pixels, U, V labels."""
    iuv = np.empty((m, size, size, 3), np.uint8)
    iuv[..., 0] = rng.integers(0, 25, (m, size, size))
    iuv[..., 1:] = rng.integers(0, 255, (m, size, size, 2))
    iuv[rng.uniform(size=(m, size, size)) < 0.1, 0] = 255
    iuv[rng.uniform(size=(m, size, size)) < 0.1, 1:] = 255
    return iuv


def _fake_records(template, m, size, seed=0, num_points=NUM_POINTS):
    """Stacked training records (sample fields + ``target_*``) whose dense points and keypoints are
    the exact projections of the targets. Returns ``(records, target BodyParams)``."""
    rng = np.random.default_rng(seed)
    target = _random_params(rng, m, size)
    vid = rng.integers(0, template.num_vertices, (m, num_points)).astype(np.int32)
    xy, kp = _project(template, target, vid)
    records = {
        "image": rng.integers(0, 256, (m, size, size, 3), dtype=np.uint8),
        "iuv": _label_maps(rng, m, size),
        "dense_xy": xy.astype(np.float32),
        "dense_vertex": vid,
        "dense_mask": np.ones((m, num_points), np.float32),
        "keypoints": kp.astype(np.float32),
        "keypoint_visible": np.ones((m, template.num_keypoints), np.float32),
        "has_gt": np.zeros((m,), np.float32),
        "target_weight": np.ones((m,), np.float32),
        **sample_lib.params_to_record(target, "target"),
    }
    return records, target


def _take(records, lo, hi):
    return {k: v[lo:hi] for k, v in records.items()}


@pytest.fixture(scope="module")
def fake(template):
    return _fake_records(template, NUM_SAMPLES, TINY.image_size)


@pytest.fixture(scope="module")
def tiny_state():
    return regressor.create_state(0, TINY)


def _fresh(state):
    """A copy of ``state`` with its own buffers (the train step donates the state it is given)."""
    return jax.tree_util.tree_map(lambda x: jnp.array(x, copy=True), state)


def _is_rotation(m, atol=1e-4):
    m = np.asarray(m, np.float64)
    eye = np.broadcast_to(np.eye(3), m.shape)
    return (np.allclose(np.swapaxes(m, -1, -2) @ m, eye, atol=atol)
            and np.allclose(np.linalg.det(m), 1.0, atol=atol))


def _fixed_batches(records, batch_size=BATCH):
    """``batches(epoch)`` for ``run_epochs``: the records in order, no transform."""
    n = len(records["image"]) // batch_size

    def batches(epoch):
        for i in range(n):
            yield sample_lib.to_batch(_take(records, i * batch_size, (i + 1) * batch_size), with_gt=False)

    return batches


# ---------------------------------------------------------------------------------------------
# Head layout, decoding, units


_decode = {h: jax.jit(lambda out, h=h: (regressor.decode_head(out, h),
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
        for x in (params.segment_scales, params.scale):
            assert np.all(np.isfinite(x)) and np.all(np.asarray(x) > 0)
        assert np.all(np.isfinite(params.translation))

    check()
    params, mats = _decode[head](jnp.zeros((2, regressor.head_size(head))))   # fully degenerate
    assert _is_rotation(mats)
    assert _is_rotation(params.rotation)


def _rotation_outputs():
    elements = st.one_of(st.just(0.0), st.just(1.0), st.floats(-1e3, 1e3, width=32),
                         st.floats(-2.0 ** -20, 2.0 ** -20, width=32))
    return hnp.arrays(np.float32, (2, 9), elements=elements)


@settings(max_examples=60, deadline=None)
@given(_rotation_outputs())
@example(np.ones((2, 9), np.float32))
def test_decoded_global_rotation_always_orthonormal(raw_r):
    """Any 9 numbers of the head's R decode to an orthonormal matrix (|det| = 1)."""
    out = np.tile(regressor.rest_head("quaternion"), (2, 1))
    n = regressor.head_size("quaternion")
    out[:, n - 12:n - 3] = raw_r
    params, _ = _decode["quaternion"](jnp.asarray(out))
    r = np.asarray(params.rotation, np.float64)
    np.testing.assert_allclose(np.swapaxes(r, -1, -2) @ r, np.broadcast_to(np.eye(3), r.shape), atol=1e-4)
    np.testing.assert_allclose(np.abs(np.linalg.det(r)), 1.0, atol=1e-4)


def _np_gram_schmidt(m):
    """Columns orthonormalised in order (float64 NumPy, written here)."""
    c = [m[:, i].astype(np.float64) for i in range(3)]
    b1 = c[0] / np.linalg.norm(c[0])
    b2 = c[1] - (b1 @ c[1]) * b1
    b2 /= np.linalg.norm(b2)
    b3 = c[2] - (b1 @ c[2]) * b1 - (b2 @ c[2]) * b2
    return np.stack([b1, b2, b3 / np.linalg.norm(b3)], axis=1)


def _np_closest_rotation(m):
    u, _, vt = np.linalg.svd(m.astype(np.float64))
    d = np.sign(np.linalg.det(u @ vt))
    return u @ np.diag([1.0, 1.0, d]) @ vt


def test_head_decoders_match_numpy_references():
    """The head's R (9 numbers, Gram–Schmidt), 6D and SVD joint rotations against NumPy references."""
    rng = np.random.default_rng(1)
    for head in regressor.POSE_HEADS:
        out = rng.normal(size=(2, regressor.head_size(head))).astype(np.float32)
        params, mats = _decode[head](out)                 # the shape of the other decode tests
        raw = regressor.split_head(out, head)
        for b in range(2):
            np.testing.assert_allclose(params.rotation[b], _np_gram_schmidt(np.asarray(raw.rotation[b]).reshape(3, 3)),
                                       atol=2e-5)
            for j in (1, 7, 23):
                x = np.asarray(raw.pose[b, j], np.float64)
                if head == "rot6d":
                    ref = _np_gram_schmidt(np.stack([x[:3], x[3:], np.cross(x[:3], x[3:])], axis=1))
                elif head == "matrix_svd":
                    ref = _np_closest_rotation(x.reshape(3, 3))
                else:   # quaternion (w, x, y, z), normalised
                    w, v = x[0] / np.linalg.norm(x), x[1:] / np.linalg.norm(x)
                    k = np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])
                    ref = np.eye(3) + 2 * w * k + 2 * k @ k
                np.testing.assert_allclose(mats[b, j], ref, atol=5e-5, err_msg=f"{head} joint {j}")


def test_svd_head_derivative_finite_differences():
    """The 'matrix_svd' head's polar-factor JVP matches float64 central differences, also at the
    identity (equal singular values)."""
    def rot(m):
        return regressor.pose_rotations(m.reshape(1, 9), "matrix_svd")[0]

    with jax.enable_x64(True):
        rng = np.random.default_rng(2)
        for m in (rng.normal(size=(3, 3)), np.eye(3), np.diag([1.0, 1.0, -1.0]) + 0.1 * rng.normal(size=(3, 3))):
            m = jnp.asarray(m, jnp.float64)
            dm = jnp.asarray(rng.normal(size=(3, 3)), jnp.float64)
            _, jvp = jax.jvp(rot, (m,), (dm,))
            h = 1e-6
            fd = (rot(m + h * dm) - rot(m - h * dm)) / (2 * h)
            assert np.all(np.isfinite(jvp))
            np.testing.assert_allclose(jvp, fd, atol=1e-6)
            g = jax.grad(lambda a: jnp.sum(rot(a) * dm))(m)
            assert np.all(np.isfinite(g))


def test_unit_conversions(template):
    """Normalised params project to the normalised pixels of the pixel params (and round-trip)."""
    rng = np.random.default_rng(3)
    size = (48, 64)
    p = _random_params(rng, 4, 48)
    n = camera.normalize_params(p, size)
    back = camera.denormalize_params(n, size)
    for a, b in zip(jax.tree_util.tree_leaves(p), jax.tree_util.tree_leaves(back)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)
    vid = rng.integers(0, template.num_vertices, (4, 10))
    x_px, _ = _project(template, p, vid)
    x_n, _ = _project(template, n, vid)
    np.testing.assert_allclose(camera.normalize_points(x_px, size), x_n, atol=1e-5)
    # half = max(H, W)/2, centre = ((W-1)/2, (H-1)/2), as the registration
    np.testing.assert_allclose(n.scale, p.scale / 32.0, rtol=1e-6)
    np.testing.assert_allclose(n.translation, (p.translation - np.array([31.5, 23.5])) / 32.0, atol=1e-6)


@pytest.mark.parametrize("head", regressor.POSE_HEADS)
def test_regression_loss_zero_at_target_and_sign_invariant(head):
    """encode_head inverts decoding; the regression vectors agree at the target, also for -q."""
    rng = np.random.default_rng(4)
    target = camera.normalize_params(_random_params(rng, 5, 64), (64, 64))

    @jax.jit
    def run(target):
        out = regressor.encode_head(target, head)
        raw = regressor.split_head(out, head)
        vec = regressor.regression_vectors(raw, target, head)
        flipped = regressor.regression_vectors(raw._replace(pose=-raw.pose), target, head)
        decoded = regressor.decode_head(out, head)
        return (vec, flipped, rotations.axis_angle_to_matrix(decoded.pose[:, 1:]),
                rotations.axis_angle_to_matrix(target.pose[:, 1:]))

    (p, t, m), (p2, t2, m2), r_dec, r_tgt = run(target)
    assert p.shape == t.shape == m.shape == (5, 24 * (4 if head == "quaternion" else 9) + 36)
    np.testing.assert_allclose(np.asarray(jnp.sum(jnp.abs(p - t) * m, -1)), 0.0, atol=2e-5)
    np.testing.assert_allclose(r_dec, r_tgt, atol=1e-4)
    if head == "quaternion":   # -q is the same rotation: no loss either
        np.testing.assert_allclose(np.asarray(jnp.sum(jnp.abs(p2 - t2) * m2, -1)), 0.0, atol=2e-5)


# ---------------------------------------------------------------------------------------------
# Network inputs


def test_encode_maps_against_numpy():
    """Parts one-hot (255 → all zeros), U, V / 254 on labelled foreground, 0 on background."""
    rng = np.random.default_rng(13)
    iuv = _label_maps(rng, 2, 9)
    iuv[0, 0, 0] = (0, 100, 200)          # background with U, V labels: U, V must read 0
    iuv[0, 0, 1] = (255, 100, 200)        # unlabelled part: zeros everywhere
    iuv[0, 0, 2] = (7, 254, 0)            # U = 1, V = 0
    iuv[0, 0, 3] = (24, 255, 255)         # part without U, V label
    parts, full = (np.asarray(regressor.encode_maps(iuv, k)) for k in ("parts", "iuv"))
    assert parts.shape == (2, 9, 9, 25) and full.shape == (2, 9, 9, 27)
    assert parts.dtype == full.dtype == np.float32
    assert regressor.input_channels("rgb") == 3 and regressor.input_channels("parts") == 25
    assert regressor.input_channels("iuv") == 27
    # independent reference, pixel by pixel
    for b, y, x in np.ndindex(2, 9, 9):
        i, u, v = (int(c) for c in iuv[b, y, x])
        onehot = np.zeros(25, np.float32)
        if i < 25:
            onehot[i] = 1.0
        fg = 1 <= i <= 24
        uv = [u / 254.0 if fg and u != 255 else 0.0, v / 254.0 if fg and v != 255 else 0.0]
        np.testing.assert_array_equal(parts[b, y, x], onehot)
        np.testing.assert_allclose(full[b, y, x], np.concatenate([onehot, uv]), atol=1e-7)
    np.testing.assert_array_equal(full[0, 0, 1], 0.0)
    np.testing.assert_allclose(full[0, 0, 2, 25:], [1.0, 0.0])
    np.testing.assert_array_equal(full[0, 0, 0, 25:], 0.0)
    # network_input picks the encoding; RGB is ImageNet-normalised
    np.testing.assert_array_equal(regressor.network_input("parts", iuv=iuv), parts)
    img = rng.integers(0, 256, (1, 4, 4, 3), dtype=np.uint8)
    np.testing.assert_allclose(regressor.network_input("rgb", image=img),
                               (img / 255.0 - np.array(regressor.IMAGENET_MEAN)) / np.array(regressor.IMAGENET_STD),
                               atol=1e-5)
    with pytest.raises(ValueError, match="iuv"):
        regressor.network_input("iuv", image=img)
    with pytest.raises(ValueError, match="images"):
        regressor.network_input("rgb", iuv=iuv)


# ---------------------------------------------------------------------------------------------
# Loss and steps


def _constant_state(state, out):
    """``state`` whose network outputs ``out (head_size,)`` for every image (zero head kernel)."""
    head = dict(state.params["head"], kernel=jnp.zeros_like(state.params["head"]["kernel"]), bias=out)
    return state.replace(params=dict(state.params, head=head))


def test_eval_loss_zero_at_exact_prediction(template, tiny_state):
    """Output = targets, points = their projections ⇒ every term of eq. 13 vanishes (eval_step)."""
    rng = np.random.default_rng(12)
    size = TINY.image_size
    one = _random_params(rng, 1, size)
    target = jax.tree_util.tree_map(lambda v: np.repeat(v, BATCH, axis=0), one)
    vid = rng.integers(0, template.num_vertices, (BATCH, NUM_POINTS)).astype(np.int32)
    xy, kp = _project(template, target, vid)
    records = {"image": rng.integers(0, 256, (BATCH, size, size, 3), dtype=np.uint8), "dense_xy": xy,
               "dense_vertex": vid, "dense_mask": np.ones((BATCH, NUM_POINTS), np.float32), "keypoints": kp,
               "keypoint_visible": np.ones((BATCH, template.num_keypoints), np.float32),
               **sample_lib.params_to_record(target, "target")}
    norm = camera.normalize_params(one, (size, size))
    state = _constant_state(tiny_state, regressor.encode_head(norm, "quaternion")[0])
    terms = regressor.eval_step(state, sample_lib.to_batch(records), template)
    for k in ("l_regress", "l_dense", "l_kp", "loss"):
        assert float(terms[k]) < 1e-6, (k, terms[k])
    # one pixel off in x for every correspondence: mean squared error (1 / half)² in normalised units
    shifted = dict(records, dense_xy=records["dense_xy"] + np.array([1.0, 0.0], np.float32))
    terms = regressor.eval_step(state, sample_lib.to_batch(shifted), template)
    np.testing.assert_allclose(terms["l_dense"], 1.0 / (size / 2) ** 2, rtol=1e-3)
    # a wrong target counts only where target_weight > 0 (a flagged fit gives no regression target)
    wrong = dict(records, target_translation=records["target_translation"] + np.float32(5.0))
    weight = np.zeros(BATCH, np.float32)
    terms = regressor.eval_step(state, sample_lib.to_batch(dict(wrong, target_weight=weight)), template)
    assert float(terms["l_regress"]) < 1e-6
    weight[:2] = 1.0
    terms = regressor.eval_step(state, sample_lib.to_batch(dict(wrong, target_weight=weight)), template)
    assert float(terms["l_regress"]) > 1e-3


def test_joints3d_term_is_the_root_relative_joint_distance_to_the_fit(template):
    """The extension term: mean over the 24 joints of the squared distance (m²) between the
    root-relative camera-frame joints of the prediction and of the target, weighted into the loss
    by ``joints3d_weight``; absent at 0 (eq. 13 as written)."""
    rng = np.random.default_rng(31)
    size = TINY.image_size
    pred, target = _random_params(rng, BATCH, size), _random_params(rng, BATCH, size)
    vid = rng.integers(0, template.num_vertices, (BATCH, NUM_POINTS)).astype(np.int32)
    xy, kp = _project(template, pred, vid)
    records = {"image": np.zeros((BATCH, size, size, 3), np.uint8), "dense_xy": xy, "dense_vertex": vid,
               "dense_mask": np.ones((BATCH, NUM_POINTS), np.float32), "keypoints": kp,
               "keypoint_visible": np.ones((BATCH, template.num_keypoints), np.float32),
               "target_weight": np.float32([1, 1, 1, 0, 1, 1, 1, 1]),
               **sample_lib.params_to_record(target, "target")}
    batch = sample_lib.to_batch(records)
    out = regressor.encode_head(camera.normalize_params(pred, (size, size)), "quaternion")
    base, base_terms = regressor.loss_terms(out, batch, template, TINY)
    assert "l_joints3d" not in base_terms
    weighted = dataclasses.replace(TINY, joints3d_weight=2.5)
    loss, terms = regressor.loss_terms(out, batch, template, weighted)
    # reference: the full body's joints in float64, the flagged fit (weight 0) left out
    def joints(p):
        j = np.asarray(body.forward(template, p).joints, np.float64)
        return j - j[:, :1]
    per_person = np.mean(np.sum((joints(pred) - joints(target)) ** 2, axis=-1), axis=-1)
    w = records["target_weight"].astype(np.float64)
    expected = np.sum(w * per_person) / np.sum(w)
    assert expected > 1e-3   # different poses: the term is really there
    np.testing.assert_allclose(float(terms["l_joints3d"]), expected, rtol=1e-4)
    np.testing.assert_allclose(float(loss), float(base) + 2.5 * expected, rtol=1e-4)
    with pytest.raises(ValueError, match=r"RegressorConfig\.joints3d_weight must be >= 0, got -1"):
        dataclasses.replace(TINY, joints3d_weight=-1.0)


def test_train_step_one_step(template, fake, tiny_state):
    records, _ = fake
    batch = sample_lib.to_batch(_take(records, 0, BATCH), with_gt=False)
    assert isinstance(batch, Batch) and batch.target is not None and batch.gt is None
    state, metrics = regressor.train_step(_fresh(tiny_state), batch, template)
    assert set(metrics) >= {"loss", "l_regress", "l_dense", "l_kp", "grad_norm"}
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
    assert np.median(step) == pytest.approx(TINY.learning_rate, rel=0.1)


def test_a_few_steps_lower_the_loss(template, fake, tiny_state):
    """run_epochs over grain batches (record_batches + Resize) at lr 1e-3: the loss falls."""
    records, _ = fake
    source = ArraySource(records)
    resize = augment.Resize(augment.MirrorTables.of(template), TINY.image_size)

    def batches(epoch):
        for r in epochs.record_batches(source, BATCH, seed=3, epoch=epoch, transforms=[resize]):
            yield sample_lib.to_batch(r, with_gt=False)

    def step(s, batch, i):
        return regressor.train_step(s, batch, template, learning_rate=1e-3)

    first = sample_lib.to_batch(_take(records, 0, BATCH), with_gt=False)
    before = regressor.eval_step(tiny_state, first, template)
    state, history = epochs.run_epochs(_fresh(tiny_state), step, batches, 3)
    assert int(state.step) == 3 * NUM_SAMPLES // BATCH
    assert history["loss"][-1] < 0.8 * history["loss"][0], history["loss"]
    # a plain resize to the same size is the identity: the batches are the records
    after = regressor.eval_step(state, first, template)
    assert float(after["loss"]) < float(before["loss"]), (before, after)


def test_run_epochs_with_augmentation_and_predict(template, fake, tiny_state):
    """One end-to-end training run (grain + Augment + train_step), then predict."""
    records, _ = fake
    source = ArraySource(records)
    transform = augment.Augment(augment.MirrorTables.of(template), TINY.image_size, augment.AugmentConfig())

    def batches(epoch):
        for r in epochs.record_batches(source, BATCH, seed=0, epoch=epoch, transforms=[transform]):
            assert r["image"].shape == (BATCH, TINY.image_size, TINY.image_size, 3)
            yield sample_lib.to_batch(r, with_gt=False)

    seen = []
    state, history = epochs.run_epochs(_fresh(tiny_state), lambda s, b, i: regressor.train_step(s, b, template),
                                       batches, 2, progress=lambda e, m: seen.append(e))
    assert seen == [0, 1] and len(history["loss"]) == 2 and int(state.step) == 2 * NUM_SAMPLES // BATCH
    assert all(np.isfinite(history["loss"]))
    pred = regressor.predict(state, template, images=records["image"][:5], batch_size=4)
    assert pred.vertices.shape == (5, template.num_vertices, 3)
    assert pred.joints.shape == (5, 24, 3) and pred.keypoints2d.shape == (5, template.num_keypoints, 2)
    size = records["image"].shape[1:3]
    back = camera.denormalize_params(pred.params_normalized, size)
    for a, b in zip(jax.tree_util.tree_leaves(back), jax.tree_util.tree_leaves(pred.params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(_project(template, pred.params, np.zeros((5, 1), np.int32))[1],
                               pred.keypoints2d, atol=1e-3)
    assert np.all(np.asarray(pred.params.scale) > 0) and _is_rotation(pred.params.rotation)


def test_iuv_input_train_step_and_predict(template, fake):
    """The 'iuv' regressor trains on label maps and predicts from them (no image needed)."""
    records, _ = fake
    state0 = regressor.create_state(1, TINY_IUV)
    assert state0.params["backbone"]["conv1"]["kernel"].shape[2] == 27
    batch = sample_lib.to_batch(_take(records, 0, BATCH), with_gt=False).without("image")
    state, metrics = regressor.train_step(state0, batch, template)
    assert int(state.step) == 1 and all(np.isfinite(float(v)) for v in metrics.values())
    pred = regressor.predict(state, template, iuv=records["iuv"][:3], with_vertices=False)
    assert pred.vertices is None
    assert pred.joints.shape == (3, 24, 3) and pred.keypoints2d.shape == (3, template.num_keypoints, 2)
    assert pred.params.pose.shape == (3, 24, 3) and pred.params.translation.shape == (3, 2)
    assert np.all(np.isfinite(np.asarray(pred.keypoints2d)))
    # a map of twice the network's size is resampled by nearest sampling (as the training augmentation
    # warps label maps): the same prediction as its every second pixel (half-pixel centres: 1, 3, ...)
    big = np.repeat(np.repeat(records["iuv"][:3], 2, axis=1), 2, axis=2)
    big[:, ::2] = 255       # the rows and columns nearest sampling skips: unlabelled
    big[:, :, ::2] = 255
    from_big = regressor.predict(state, template, iuv=big, with_vertices=False)
    np.testing.assert_allclose(from_big.joints, pred.joints, atol=1e-5)
    with pytest.raises(ValueError, match="iuv"):
        regressor.predict(state, template, images=records["image"][:3])
    with pytest.raises(ValueError, match="batch.iuv"):
        regressor.train_step(state, batch.replace(iuv=None, image=records["image"][:BATCH]), template)


# ---------------------------------------------------------------------------------------------
# Input checks


def test_predict_input_checks(template, tiny_state):
    img = np.zeros((2, 32, 32, 3), np.uint8)
    with pytest.raises(ValueError, match="needs `images`"):
        regressor.predict(tiny_state, template)
    with pytest.raises(ValueError, match=r"images has shape \(2, 32, 24, 3\)"):
        regressor.predict(tiny_state, template, images=img[:, :, :24])
    with pytest.raises(ValueError, match="images has shape"):
        regressor.predict(tiny_state, template, images=img[..., :1])
    with pytest.raises(ValueError, match="images is empty"):
        regressor.predict(tiny_state, template, images=img[:0])
    iuv_state = tiny_state.replace(config=TINY_IUV)     # the checks come before the network runs
    with pytest.raises(ValueError, match="needs `iuv`"):
        regressor.predict(iuv_state, template, images=img)
    with pytest.raises(ValueError, match="iuv has dtype float32, expected uint8"):
        regressor.predict(iuv_state, template, iuv=img.astype(np.float32))
    with pytest.raises(ValueError, match="iuv has shape"):
        regressor.predict(iuv_state, template, iuv=img[:, :16])
    with pytest.raises(ValueError, match="iuv is empty"):
        regressor.predict(iuv_state, template, iuv=img[:0])


def test_train_step_input_checks(template, fake, tiny_state):
    records, _ = fake
    batch = sample_lib.to_batch(_take(records, 0, BATCH), with_gt=False)
    state = _fresh(tiny_state)
    with pytest.raises(ValueError, match="batch.target is required"):
        regressor.train_step(state, batch.without("target"), template)
    with pytest.raises(ValueError, match="batch.image is required"):
        regressor.train_step(state, batch.without("image"), template)
    with pytest.raises(ValueError, match=r"batch.image is \(16, 16\) px, the network takes 32 px"):
        regressor.train_step(state, batch.replace(image=batch.image[:, :16, :16], iuv=None), template)
    with pytest.raises(ValueError, match=r"batch.iuv has shape \(8, 32, 32, 3\), expected \(8, 16, 16, 3\)"):
        regressor.train_step(state, batch.replace(image=batch.image[:, :16, :16]), template)
    with pytest.raises(ValueError, match="batch.image has shape"):
        regressor.train_step(state, batch.replace(image=batch.image[:4]), template)
    with pytest.raises(ValueError, match="batch.keypoints has shape"):
        regressor.train_step(state, batch.replace(keypoints=batch.keypoints[:, :5],
                                                  keypoint_visible=batch.keypoint_visible[:, :5]), template)
    with pytest.raises(ValueError, match="batch.target.pose has shape"):
        regressor.train_step(state, batch.replace(target=batch.target.replace(pose=batch.target.pose[:, :23])),
                             template)
    with pytest.raises(ValueError, match="Batch"):
        regressor.train_step(state, _take(records, 0, BATCH), template)
    with pytest.raises(ValueError, match="batch.target is required"):
        regressor.eval_step(state, batch.without("target"), template)
    # none of these reached the (donating) step: the state is intact
    np.testing.assert_array_equal(state.params["head"]["bias"], tiny_state.params["head"]["bias"])
    # (a batch size that is not a multiple of the mesh: the 4-device subprocess below)


# ---------------------------------------------------------------------------------------------
# Data parallelism


_DP_SCRIPT = r"""
import json, sys
import jax, numpy as np
from bodyjax import body, regressor
from bodyjax.data import sample
from bodyjax.loop import epochs
assert jax.device_count() == 4, jax.devices()
cfg = regressor.RegressorConfig(depth=18, width=8, image_size=32)
template = body.default_template()
d = np.load(sys.argv[1])
abstract = jax.eval_shape(lambda: regressor.create_state(0, cfg))
leaves, treedef = jax.tree_util.tree_flatten(abstract)
state = jax.tree_util.tree_unflatten(treedef, [d[f"s{i}"] for i in range(len(leaves))])
records = {k[2:]: d[k] for k in d.files if k.startswith("r_")}
mesh = regressor.make_mesh()
out = {}
try:
    regressor.train_step(state, sample.to_batch({k: v[:6] for k, v in records.items()}), template, mesh=mesh)
except ValueError as e:
    out["mesh_error"] = str(e)
batches = lambda epoch: (sample.to_batch({k: v[i:i + 8] for k, v in records.items()}, with_gt=False)
                         for i in range(0, 16, 8))
fresh = lambda: jax.tree_util.tree_unflatten(treedef, [np.array(d[f"s{i}"]) for i in range(len(leaves))])
one, _ = regressor.train_step(fresh(), next(batches(0)), template, mesh=mesh)
state, hist = epochs.run_epochs(fresh(), lambda s, b, i: regressor.train_step(s, b, template, mesh=mesh),
                                batches, 1)
sh = state.params["head"]["kernel"].sharding
assert sh.is_fully_replicated and len(sh.device_set) == 4, sh
np.savez(sys.argv[2], **{f"s{i}": np.asarray(x) for i, x in enumerate(jax.tree_util.tree_leaves(state))},
         **{f"o{i}": np.asarray(x) for i, x in enumerate(jax.tree_util.tree_leaves(one))})
out["history"] = hist
print(json.dumps(out))
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
    records, _ = request.getfixturevalue("fake")
    tiny_state = request.getfixturevalue("tiny_state")
    tmp = tmp_path_factory.mktemp("dp")
    inp, out = tmp / "in.npz", tmp / "out.npz"
    arrays = {f"s{i}": np.asarray(x) for i, x in enumerate(jax.tree_util.tree_leaves(tiny_state))}
    arrays.update({f"r_{k}": v for k, v in records.items()})
    np.savez(inp, **arrays)
    xla_flags = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4").strip()
    env = dict(os.environ, XLA_FLAGS=xla_flags, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
    proc = subprocess.Popen([sys.executable, "-c", _DP_SCRIPT, str(inp), str(out)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    yield proc, out
    if proc.poll() is None:
        proc.kill()
        proc.communicate()


def test_data_parallel_matches_single_device(template, fake, tiny_state, data_parallel_run):
    """Batch sharded over 4 forced CPU devices (subprocess) = the 1-device result."""
    records, _ = fake
    proc, out = data_parallel_run
    # The single-device reference here (same batches, same initial state): one step, and one epoch of 2.
    one1, _ = regressor.train_step(_fresh(tiny_state), next(_fixed_batches(records)(0)), template)
    state1, hist1 = epochs.run_epochs(_fresh(tiny_state), lambda s, b, i: regressor.train_step(s, b, template),
                                      _fixed_batches(records), 1)
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-3000:]
    result = json.loads(stdout.strip().splitlines()[-1])
    # a batch of 6 on 4 devices is refused before anything runs
    assert "batch size 6 is not a multiple of the 4 devices" in result.get("mesh_error", ""), result
    hist4 = result["history"]
    for k in ("loss", "l_regress", "l_dense", "l_kp"):
        np.testing.assert_allclose(hist4[k], hist1[k], rtol=1e-4)
    got = np.load(out)
    lr, steps = TINY.learning_rate, NUM_SAMPLES // BATCH

    # One step from the same state: the gradient is the same sum, added in another order. Adam's first
    # moments are 0.1·g and second 0.001·g², so every moment matches to round-off of its leaf's scale.
    # The parameters: Adam normalises each gradient entry, so where a gradient is ~0 (behind a
    # zero-initialised BatchNorm scale) round-off can flip its update: within 2·lr, nearly all to round-off.
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(one1)]
    ref = [np.asarray(x, np.float64) for x in jax.tree_util.tree_leaves(one1)]
    assert len([f for f in got.files if f.startswith("o")]) == len(ref)
    for i, (path, r) in enumerate(zip(paths, ref)):
        g = got[f"o{i}"].astype(np.float64)
        if ".opt_state" in path:
            np.testing.assert_allclose(g, r, rtol=1e-3, atol=1e-3 * np.abs(r).max() + 1e-30, err_msg=path)

    def rel_param_diffs(prefix, state):
        leaves = jax.tree_util.tree_leaves_with_path(state)
        return np.concatenate([(np.abs(got[f"{prefix}{i}"].astype(np.float64) - np.asarray(x)).ravel()
                                / (1.0 + np.abs(np.asarray(x, np.float64)).ravel()))
                               for i, (p, x) in enumerate(leaves) if ".params" in jax.tree_util.keystr(p)])

    d1 = rel_param_diffs("o", one1)
    assert d1.max() <= 2 * lr, d1.max()
    assert np.mean(d1 > 1e-5) < 0.01, np.mean(d1 > 1e-5)
    # Two steps: a flipped first update changes the second step's gradients where the network sits on a
    # ReLU's kink, so the moments after step 2 can differ by more than round-off (measured: one BatchNorm
    # bias channel of 8 of layer1_0). The parameters still move at most lr per step on either side.
    d2 = rel_param_diffs("s", state1)
    assert d2.max() <= 2 * lr * steps, d2.max()
    assert np.mean(d2 > 1e-5) < 0.01, np.mean(d2 > 1e-5)
    state_leaves = jax.tree_util.tree_leaves(state1)
    assert len([f for f in got.files if f.startswith("s")]) == len(state_leaves)
    for i, x in enumerate(state_leaves):
        assert got[f"s{i}"].shape == np.shape(x) and np.all(np.isfinite(got[f"s{i}"]))


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
    model = regressor.RegressorConfig().network()
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


def test_round_schedule_decays_to_the_final_fraction_and_the_fraction_is_checked():
    """``lr_final_fraction`` < 1 cosine-decays a round's rate from ``learning_rate`` to that fraction
    (0.5·(1 + cos(π t / T)) written out here); 1.0 keeps it constant; outside [0, 1] is refused."""
    from bodyjax.loop.deform_and_learn import _schedule

    lr, frac, total = 1e-3, 0.05, 101
    sched = _schedule(lr, frac, total)
    for t in (0, 25, 50, 100):
        cos = 0.5 * (1.0 + np.cos(np.pi * t / (total - 1)))
        np.testing.assert_allclose(float(sched(t)), lr * ((1 - frac) * cos + frac), rtol=1e-5)
    assert float(_schedule(lr, 1.0, total)(77)) == pytest.approx(lr)
    with pytest.raises(ValueError, match="lr_final_fraction must be in"):
        regressor.RegressorConfig(lr_final_fraction=1.5)


# ---------------------------------------------------------------------------------------------
# Extensions of the network: the IEF head, coordinate channels, whole-network weights


def test_coordinate_channels_are_the_pixel_centres():
    from bodyjax.regressor.network import coordinate_channels  # noqa: PLC0415

    x = np.random.default_rng(0).normal(size=(2, 4, 6, 3)).astype(np.float32)
    y = np.asarray(coordinate_channels(jnp.asarray(x)))
    assert y.shape == (2, 4, 6, 5)
    np.testing.assert_array_equal(y[..., :3], x)
    xs = (np.arange(6) + 0.5) / 6 * 2 - 1   # column centres, left to right
    ys = (np.arange(4) + 0.5) / 4 * 2 - 1   # row centres, top to bottom
    np.testing.assert_allclose(y[1, :, :, 3], np.broadcast_to(xs, (4, 6)), atol=1e-6)
    np.testing.assert_allclose(y[1, :, :, 4], np.broadcast_to(ys[:, None], (4, 6)), atol=1e-6)


def test_network_extensions_start_at_the_rest_body_and_train(template, fake):
    """HMR's iterative error feedback head, the CoordConv input and the frozen stem, all on in one
    network (one compiled train step for the three: each is checked by its own assertion below)."""
    config = dataclasses.replace(TINY_IUV, head="ief", head_hidden=16, head_iterations=2, coords=True,
                                 freeze_stem=True)
    state = regressor.create_state(0, config)
    records, _ = fake
    batch = sample_lib.to_batch(_take(records, 0, BATCH), with_gt=False)
    x = regressor.network_input("iuv", iuv=batch.iuv)
    out = np.asarray(state.apply_fn({"params": state.params, "batch_stats": state.batch_stats}, x, train=False))
    rest = regressor.rest_head(config.pose_head, config.typical_scale)
    np.testing.assert_allclose(out, np.broadcast_to(rest, out.shape), atol=0.05)
    assert "ief_fc1" in state.params and "head" not in state.params
    # the first convolution reads the two coordinate channels too
    assert state.params["backbone"]["conv1"]["kernel"].shape[2] == regressor.input_channels("iuv") + 2
    new, stats = regressor.train_step(_fresh(state), batch, template)
    assert np.isfinite(float(stats["loss"])) and int(new.step) == 1
    # the frozen stem keeps its parameters to the bit; the layers above it move (the unfrozen
    # stem moves: test_train_step_one_step)
    for name in regressor.STEM:
        for key, value in state.params["backbone"][name].items():
            np.testing.assert_array_equal(new.params["backbone"][name][key], value, err_msg=f"{name}/{key}")
    assert np.any(np.asarray(new.params["backbone"]["layer1_0"]["bn2"]["scale"])
                  != np.asarray(state.params["backbone"]["layer1_0"]["bn2"]["scale"]))
    with pytest.raises(ValueError, match=r"RegressorConfig\.head must be one of .*'mlp'"):
        dataclasses.replace(TINY, head="mlp")


def _perturbed(state, seed):
    rng = np.random.default_rng(seed)
    noise = lambda v: jnp.asarray(np.asarray(v) + rng.normal(0, 0.05, np.shape(v)).astype(np.float32))  # noqa: E731
    return state.replace(params=jax.tree_util.tree_map(noise, state.params),
                         batch_stats=jax.tree_util.tree_map(lambda v: jnp.abs(noise(v)), state.batch_stats))


def test_whole_network_weights_round_trip_and_refuse_another_network(template, fake, tmp_path):
    from bodyjax.loop import deform_and_learn as dnl  # noqa: PLC0415

    trained = _perturbed(regressor.create_state(0, TINY_IUV), seed=3)
    path = str(tmp_path / "regressor.npz")
    regressor.save_params(path, trained, {"note": "test"})
    assert regressor.is_params_file(path)
    loaded = regressor.load_params(regressor.create_state(1, TINY_IUV), path)
    for a, b in zip(jax.tree_util.tree_leaves((trained.params, trained.batch_stats)),
                    jax.tree_util.tree_leaves((loaded.params, loaded.batch_stats))):
        np.testing.assert_array_equal(a, b)
    records, _ = fake
    maps = records["iuv"][:4]
    want = regressor.predict(trained, template, iuv=maps, with_vertices=False).joints
    np.testing.assert_array_equal(regressor.predict(loaded, template, iuv=maps, with_vertices=False).joints, want)
    # stored as float16: the same network up to the rounding of its weights
    half = str(tmp_path / "half.npz")
    regressor.save_params(half, trained, dtype=np.float16)
    got = regressor.predict(regressor.load_params(regressor.create_state(1, TINY_IUV), half), template,
                            iuv=maps, with_vertices=False).joints
    np.testing.assert_allclose(got, want, atol=2e-3)
    # the loop's config.regressor.pretrained reads it as the whole network (head included)
    cfg = dataclasses.replace(TINY_IUV, pretrained=path)
    via_loop = dnl.with_pretrained_backbone(regressor.create_state(2, cfg), cfg)
    np.testing.assert_array_equal(via_loop.params["head"]["bias"], trained.params["head"]["bias"])
    # another network: refused, naming the field, the file and the differing setting
    for changes, field in ((dict(width=16), "width"), (dict(head="ief", head_hidden=16), "head"),
                           (dict(input="parts"), "input")):
        other = dataclasses.replace(TINY_IUV, **changes)
        with pytest.raises(ValueError, match=rf"config\.regressor\.pretrained: .*regressor\.npz holds a network "
                                             rf"with {field}=.*\(config\.regressor\.{field}\)"):
            regressor.load_params(regressor.create_state(0, other), path, "config.regressor.pretrained")
    with pytest.raises(FileNotFoundError, match=r"x: weights file not found: .*nowhere\.npz"):
        regressor.load_params(trained, str(tmp_path / "nowhere.npz"), "x")
    np.savez(tmp_path / "torchvision.npz", **{"conv1.weight": np.zeros((8, 3, 7, 7), np.float32)})
    assert not regressor.is_params_file(str(tmp_path / "torchvision.npz"))


# ---------------------------------------------------------------------------------------------
# Flip test-time averaging (bodyjax.regressor.mirror)


def test_mirror_maps_match_the_data_flip(template):
    """The jitted map mirror equals the NumPy flip of the training augmentation, pixel for pixel."""
    from bodyjax.data import transforms  # noqa: PLC0415

    maps = _label_maps(np.random.default_rng(5), 3, 12)
    charts = body.chart_mirror(template)
    got = np.asarray(jax.jit(regressor.mirror_maps)(maps, template.part_mirror, charts))
    for m, g in zip(maps, got):
        record = {"iuv": m, "dense_mask": np.zeros(1), "dense_xy": np.zeros((1, 2)),
                  "dense_vertex": np.zeros(1, np.int32), "keypoints": np.zeros((24, 2)),
                  "keypoint_visible": np.zeros(24)}
        np.testing.assert_array_equal(g, transforms.flip_horizontal(record, template)["iuv"])


def test_mirror_params_mirror_the_body(template):
    """The body of the mirrored parameters is the mirror image of the body: vertices ``(M v)`` of the
    symmetric vertex and image points at ``W - 1 - x`` (float32; the template is symmetric to 1e-5 m)."""
    size = 40
    pix = _random_params(np.random.default_rng(2), 4, size)
    pn = camera.normalize_params(pix, (size, size))
    back = camera.denormalize_params(regressor.mirror_params(pn, template.joint_mirror), (size, size))
    a, b = body.forward(template, pix), body.forward(template, back)
    sym = np.asarray(template.symmetry)
    np.testing.assert_allclose(np.asarray(b.vertices), (np.asarray(a.vertices) * [-1, 1, 1])[:, sym], atol=2e-4)
    np.testing.assert_allclose(np.asarray(b.vertices2d), np.stack(
        [size - 1 - np.asarray(a.vertices2d)[..., 0], np.asarray(a.vertices2d)[..., 1]], -1)[:, sym], atol=2e-3)
    twice = regressor.mirror_params(regressor.mirror_params(pn, template.joint_mirror), template.joint_mirror)
    for x, y in zip(jax.tree_util.tree_leaves(twice), jax.tree_util.tree_leaves(pn)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-6)


def test_average_params_rotations_are_the_slerp_midpoint():
    """Against SciPy's Slerp at t = 1/2 (float64) for each joint and the global rotation."""
    from scipy.spatial.transform import Rotation, Slerp  # noqa: PLC0415

    rng = np.random.default_rng(7)
    m = 5
    def params(seed):  # noqa: E306
        r = np.random.default_rng(seed)
        return body.BodyParams(
            pose=r.normal(0, 1.2, (m, 24, 3)).astype(np.float32),
            segment_scales=r.uniform(0.8, 1.2, (m, 24)).astype(np.float32),
            rotation=Rotation.random(m, random_state=seed).as_matrix().astype(np.float32),
            scale=r.uniform(0.5, 2.0, m).astype(np.float32),
            translation=r.normal(0, 1, (m, 2)).astype(np.float32))
    a, b = params(int(rng.integers(1000))), params(int(rng.integers(1000)))
    avg = regressor.average_params(a, b)
    for got, ra, rb in ((Rotation.from_rotvec(np.asarray(avg.pose, np.float64).reshape(-1, 3)).as_matrix(),
                         Rotation.from_rotvec(a.pose.reshape(-1, 3)), Rotation.from_rotvec(b.pose.reshape(-1, 3))),
                        (np.asarray(avg.rotation), Rotation.from_matrix(a.rotation), Rotation.from_matrix(b.rotation))):
        want = np.stack([Slerp([0, 1], Rotation.concatenate([ra[i], rb[i]]))(0.5).as_matrix() for i in range(len(ra))])
        np.testing.assert_allclose(got, want, atol=2e-5)
    np.testing.assert_allclose(avg.segment_scales, np.sqrt(a.segment_scales * b.segment_scales), rtol=1e-6)
    np.testing.assert_allclose(avg.scale, np.sqrt(a.scale * b.scale), rtol=1e-6)
    np.testing.assert_allclose(avg.translation, (a.translation + b.translation) / 2, atol=1e-7)


@pytest.mark.parametrize("kind", ["iuv", "rgb"])
def test_flip_averaged_prediction_is_mirror_equivariant(template, kind):
    """With ``flip`` the prediction on a mirrored input is the mirror of the prediction on the input
    (joints ``(M J)[joint_mirror]``, image points at ``W - 1 - x``); the plain network is not, so the
    test can fail."""
    cfg = TINY_IUV if kind == "iuv" else TINY
    state = _perturbed(regressor.create_state(0, cfg), seed=11)
    rng = np.random.default_rng(4)
    size = cfg.image_size
    if kind == "iuv":
        x = _label_maps(rng, 4, size)
        charts = body.chart_mirror(template)
        # U, V off the mirroring charts unlabelled already (as the network reads them: no information),
        # so that mirroring is an involution
        part = x[..., 0].astype(np.int64)
        x[(part >= 25) | ~charts[np.minimum(part, 24)], 1:] = 255
        mirrored = np.asarray(regressor.mirror_maps(x, template.part_mirror, charts))
        np.testing.assert_array_equal(np.asarray(regressor.mirror_maps(mirrored, template.part_mirror, charts)), x)
        kw = lambda v: {"iuv": v}  # noqa: E731
    else:
        x = rng.integers(0, 256, (4, size, size, 3), dtype=np.uint8)
        mirrored = np.asarray(regressor.mirror_images(x))
        kw = lambda v: {"images": v}  # noqa: E731
    jm = np.asarray(template.joint_mirror)

    def mirror_error(flip):
        p = regressor.predict(state, template, **kw(x), flip=flip, with_vertices=False)
        q = regressor.predict(state, template, **kw(mirrored), flip=flip, with_vertices=False)
        joints = np.abs(np.asarray(q.joints) - (np.asarray(p.joints) * [-1, 1, 1])[:, jm]).max()
        return joints, p

    err, p = mirror_error(True)
    assert err < 1e-4, err
    assert mirror_error(False)[0] > 100 * max(err, 1e-6)
    on = regressor.predict(state.replace(config=dataclasses.replace(cfg, test_flip=True)), template, **kw(x),
                           with_vertices=False)
    np.testing.assert_array_equal(on.joints, p.joints)  # the config's default is the same averaging
