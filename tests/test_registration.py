"""Tests of bodyjax.registration: convergence, robustness to bad input, sharding, init, jit caching.

Compilation dominates the cost here (one ``register`` compile is ~15–30 s on a shared 2-core CPU), so
the tests share a few compiled programs: one config (``FIT``) at one batch shape for every fit in
this process, one blow-up config for the divergence / recompile tests, and one sharded compile in a
subprocess.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bodyjax import skeletons, body, losses, registration as reg
from bodyjax.batch import Batch
from bodyjax.data import sample, synthetic
from bodyjax.rotations import axis_angle_to_matrix, gram_schmidt

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 64
IMAGE = (SIZE, SIZE)
NUM = 8                              # divisible by the 4 devices of the sharding test
FIT = reg.stiff_config(num_steps=40)  # round 1 (stiff), shortened
BLOWUP = dataclasses.replace(FIT, learning_rate=1e3)
DATA_CFG = synthetic.SyntheticConfig(image_size=SIZE, max_points=64, num_points=(40, 64))
PARAM_FIELDS = ("pose", "segment_scales", "rotation", "scale", "translation")
INPUT_FIELDS = ("dense_xy", "dense_vertex", "dense_mask", "keypoints", "keypoint_visible")


@pytest.fixture(scope="module")
def template():
    return body.default_template()


@pytest.fixture(scope="module")
def split(template):
    """``NUM`` clean synthetic samples (64 px) as stacked records, images dropped."""
    data = synthetic.make_split(template, DATA_CFG, seed=0, num_samples=NUM)
    return {k: v for k, v in data.items() if k != "image"}


@pytest.fixture(scope="module")
def batch(split):
    """The registration's input: the :class:`Batch` of ``split`` without pixels or ground truth."""
    return sample.to_batch(split, with_image=False, with_gt=False)


@pytest.fixture(scope="module")
def init(template, batch):
    return reg.init_params(template, batch, IMAGE)


@pytest.fixture(scope="module")
def clean_fit(template, batch, init):
    params, report = reg.register(template, batch, init, FIT, IMAGE)
    return jax.tree_util.tree_map(np.asarray, (params, report))


@pytest.fixture(scope="module")
def blowup_fit(template, batch, init):
    """A fit with a learning rate of 1000 (every sample blows up) and the jit cache sizes around it."""
    before = reg._register._cache_size()
    params, report = reg.register(template, batch, init, BLOWUP, IMAGE)
    after = reg._register._cache_size()
    return jax.tree_util.tree_map(np.asarray, (params, report)), before, after


# ----------------------------------------------------------------------------------------------
# An independent evaluation of eq. (7) from the public body model and the losses


def objective(template, batch, params, config, image_size=IMAGE):
    """Per-sample eq. (7) at pixel-unit ``params`` for a clean batch, in normalised image units
    ``(pixel − centre) / (max(H, W) / 2)``: ``(total, terms, mean dense reprojection error in px)``."""
    params = jax.tree_util.tree_map(jnp.asarray, params)
    total, terms, residual = _objective(template, {k: jnp.asarray(getattr(batch, k)) for k in INPUT_FIELDS},
                                        params, config, image_size)
    return np.asarray(total), {k: np.asarray(v) for k, v in terms.items()}, np.asarray(residual)


@functools.partial(jax.jit, static_argnames=("config", "image_size"))
def _objective(template, batch, params, config, image_size):
    h, w = image_size
    centre = np.array([(w - 1) / 2.0, (h - 1) / 2.0], np.float32)
    half = max(h, w) / 2.0
    out = body.forward_subset(template, params, batch["dense_vertex"])
    mask = batch["dense_mask"]
    norm = lambda x: (x - centre) / half  # noqa: E731
    terms = {
        "l_dense": losses.l_dense(norm(out.vertices2d), norm(batch["dense_xy"]), mask, config.dense_reduction),
        "l_kp": losses.l_keypoints(norm(out.keypoints2d), norm(batch["keypoints"]), batch["keypoint_visible"]),
        "l_scale": losses.l_scale(params.segment_scales, body.segment_adjacency(template)),
        "l_angle": losses.l_angle(params.pose, template.hinge_joints, template.hinge_axes),
        "l_det": losses.l_det(params.rotation),
    }
    total = (config.w_dense * terms["l_dense"] + config.w_kp * terms["l_kp"]
             + config.w_scale * terms["l_scale"] + config.w_angle * terms["l_angle"]
             + config.w_det * terms["l_det"])
    err = jnp.linalg.norm(out.vertices2d - batch["dense_xy"], axis=-1)
    residual = jnp.sum(err * mask, -1) / jnp.maximum(jnp.sum(mask, -1), 1.0)
    return total, terms, residual


def _finite(tree) -> bool:
    return all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree_util.tree_leaves(tree))


# ----------------------------------------------------------------------------------------------
# Convergence


def test_fit_reduces_loss_and_residual_from_init(template, batch, init, clean_fit):
    params, report = clean_fit
    loss0, _, res0 = objective(template, batch, init, FIT)
    loss1, terms1, res1 = objective(template, batch, params, FIT)
    # the report is eq. (7) at the returned parameters
    np.testing.assert_allclose(report.loss, loss1, rtol=1e-3)
    for k, v in terms1.items():
        np.testing.assert_allclose(getattr(report, k), v, rtol=2e-3, atol=1e-6, err_msg=k)
    np.testing.assert_allclose(report.dense_residual_px, res1, rtol=1e-3, atol=1e-4)
    assert np.all(loss1 < loss0), (loss0, loss1)
    assert np.all(res1 <= res0 + 1e-3), (res0, res1)
    assert np.mean(res1) < 0.5 * np.mean(res0), (res0, res1)
    assert np.all(res1 < 2.0)  # pixels in a 64-px image, exact synthetic correspondences
    np.testing.assert_array_equal(report.num_points, batch.dense_mask.sum(1).astype(np.int32))
    assert not report.diverged.any() and not report.flagged.any() and not report.num_dropped.any()


# ----------------------------------------------------------------------------------------------
# Bad input: NaN / inf / out-of-range points, wild outliers, empty samples, absurd init


def _corrupt(batch, init):
    """Corrupts samples 0, 2, 3, 5, 6, 7 of a copy of the batch; returns it, the init and what was done."""
    d = {k: np.array(getattr(batch, k), copy=True) for k in INPUT_FIELDS}
    n_valid = d["dense_mask"].sum(1).astype(int)
    n_vis = d["keypoint_visible"].sum(1).astype(int)
    expected_dropped = np.zeros(NUM, np.int32)
    # 0: five NaN / inf image points among the valid ones, and NaN in the padding (not counted)
    d["dense_xy"][0, [0, 3, 7]] = np.nan
    d["dense_xy"][0, 11, 0] = np.inf
    d["dense_xy"][0, 12, 1] = -np.inf
    expected_dropped[0] = 5
    assert n_valid[0] < d["dense_mask"].shape[1]
    d["dense_xy"][0, n_valid[0]:] = np.nan
    # 3: wild outliers, ten points at 1e6 px (finite: kept, but the fit is bad)
    d["dense_xy"][3, :10] = 1e6
    # 5: everything NaN (points and keypoints)
    d["dense_xy"][5] = np.nan
    d["keypoints"][5] = np.nan
    expected_dropped[5] = n_valid[5] + n_vis[5]
    # 6: no correspondences at all
    d["dense_mask"][6] = 0.0
    # 7: out-of-range vertex ids, a NaN keypoint
    d["dense_vertex"][7, :2] = [-1, 10 ** 6]
    d["keypoints"][7, np.flatnonzero(d["keypoint_visible"][7])[0]] = np.nan
    expected_dropped[7] = 3
    corrupted = [0, 3, 5, 6, 7]
    # 2: an absurd init (translation 1e20 px): non-finite loss from the start
    bad_init = init.replace(translation=init.translation.at[2].set(1e20))
    return Batch(**d), bad_init, corrupted + [2], expected_dropped


def test_corrupted_samples_are_flagged_and_others_unchanged(template, batch, init, clean_fit):
    clean_params, clean_report = clean_fit
    dirty, _, corrupted, expected_dropped = _corrupt(batch, init)
    corrupted.remove(2)
    dirty_init = jax.tree_util.tree_map(np.asarray, reg.init_params(template, dirty, IMAGE))
    init = jax.tree_util.tree_map(np.asarray, init)
    assert _finite(dirty_init)
    params, report = jax.tree_util.tree_map(np.asarray, reg.register(template, dirty, dirty_init, FIT, IMAGE))
    others = [i for i in range(NUM) if i not in corrupted]
    for f in PARAM_FIELDS:
        np.testing.assert_array_equal(getattr(dirty_init, f)[others], getattr(init, f)[others], err_msg=f)
        np.testing.assert_array_equal(getattr(params, f)[others], getattr(clean_params, f)[others], err_msg=f)
    np.testing.assert_array_equal(report.loss[others], clean_report.loss[others])
    assert _finite(params) and _finite(report)
    np.testing.assert_array_equal(report.flagged, np.isin(np.arange(NUM), corrupted))
    np.testing.assert_array_equal(report.num_dropped, expected_dropped)
    assert report.num_points[6] == 0 and report.num_points[5] == 0
    assert report.dense_residual_px[3] > FIT.max_residual_px
    assert not report.diverged.any()


def test_absurd_init_diverges_alone_and_keeps_finite_params(template, batch, init, clean_fit):
    clean_params, clean_report = clean_fit
    _, bad_init, _, _ = _corrupt(batch, init)
    params, report = jax.tree_util.tree_map(np.asarray, reg.register(template, batch, bad_init, FIT, IMAGE))
    np.testing.assert_array_equal(report.diverged, np.arange(NUM) == 2)
    np.testing.assert_array_equal(report.flagged, np.arange(NUM) == 2)
    assert _finite(params)
    # the diverged sample is returned at its (finite) start, the others are untouched
    np.testing.assert_allclose(params.translation[2], bad_init.translation[2], rtol=1e-6)
    others = np.arange(NUM) != 2
    for f in PARAM_FIELDS:
        np.testing.assert_array_equal(getattr(params, f)[others], getattr(clean_params, f)[others], err_msg=f)


def test_blowup_learning_rate_is_caught_and_best_params_kept(template, batch, init, blowup_fit):
    (params, report), _, _ = blowup_fit
    assert report.diverged.all() and report.flagged.all()
    assert _finite(params) and _finite(report)
    loss0, _, _ = objective(template, batch, init, FIT)
    # the kept parameters are the best ones seen: never worse than the start
    assert np.all(report.loss <= loss0 * (1 + 1e-4)), (report.loss, loss0)
    loss_kept, _, _ = objective(template, batch, params, FIT)
    np.testing.assert_allclose(report.loss, loss_kept, rtol=1e-3)


# ----------------------------------------------------------------------------------------------
# Sharding over a 4-device host mesh


SHARDED_SCRIPT = textwrap.dedent("""
    import sys
    import jax
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from bodyjax import body, registration as reg
    from bodyjax.batch import Batch

    path, out_path, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
    assert len(jax.devices()) == 4, jax.devices()
    data = dict(np.load(path))
    template = body.default_template()
    batch = Batch(**{k[2:]: v for k, v in data.items() if k.startswith("b_")})
    init = body.BodyParams(**{k[2:]: v for k, v in data.items() if k.startswith("p_")})
    mesh = Mesh(np.array(jax.devices()), ("batch",))
    sharding = NamedSharding(mesh, P("batch"))
    batch, init = jax.device_put((batch, init), sharding)
    params, report = reg.register(template, batch, init, reg.stiff_config(num_steps=steps), (64, 64))
    assert params.pose.sharding.spec == P("batch"), params.pose.sharding
    assert len(params.pose.sharding.device_set) == 4
    np.savez(out_path, **{f: np.asarray(getattr(params, f)) for f in
                          ("pose", "segment_scales", "rotation", "scale", "translation")},
             loss=np.asarray(report.loss), flagged=np.asarray(report.flagged))
""")


def test_sharded_batch_matches_single_device(tmp_path, batch, init, clean_fit):
    assert FIT == reg.stiff_config(num_steps=FIT.num_steps)
    path, out_path = tmp_path / "in.npz", tmp_path / "out.npz"
    np.savez(path, **{f"b_{k}": getattr(batch, k) for k in INPUT_FIELDS},
             **{f"p_{f}": np.asarray(getattr(init, f)) for f in PARAM_FIELDS})
    xla_flags = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4").strip()
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": xla_flags,
           "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-c", SHARDED_SCRIPT, str(path), str(out_path), str(FIT.num_steps)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    sharded = np.load(out_path)
    clean_params, clean_report = clean_fit
    for f in PARAM_FIELDS:
        np.testing.assert_allclose(sharded[f], getattr(clean_params, f), rtol=1e-5, atol=1e-5, err_msg=f)
    np.testing.assert_allclose(sharded["loss"], clean_report.loss, rtol=1e-5)
    np.testing.assert_array_equal(sharded["flagged"], clean_report.flagged)


# ----------------------------------------------------------------------------------------------
# Initialisation


def _yaw_deg(rotation):
    """Heading about the vertical (y) axis of the body's left axis ``R e_x`` (blind to forward lean)."""
    left = np.asarray(rotation)[..., :, 0]
    return np.degrees(np.arctan2(left[..., 2], left[..., 0]))


def test_affine_init_recovers_facing_direction_from_behind(template):
    cfg = dataclasses.replace(DATA_CFG, yaw_range=(180.0, 180.0))
    data = synthetic.make_split(template, cfg, seed=3, num_samples=NUM)  # NUM: reuses compilations
    batch = sample.to_batch(data, with_image=False, with_gt=False)
    init = reg.init_params(template, batch, IMAGE)
    rot = np.asarray(gram_schmidt(init.rotation))
    np.testing.assert_allclose(np.linalg.det(rot), 1.0, atol=1e-4)
    gt_yaw = _yaw_deg(data["gt_rotation"])
    assert np.all(np.abs(np.abs(gt_yaw) - 180.0) < 20.0)  # the people show their backs
    err = np.abs((_yaw_deg(rot) - gt_yaw + 180.0) % 360.0 - 180.0)
    assert np.mean(err < 30.0) >= 0.75, err
    assert np.median(err) < 20.0, err
    # the identity start is ~180° off for the same people
    ident = reg.init_params(template, batch, IMAGE, rotation="identity")
    err_id = np.abs((_yaw_deg(np.asarray(ident.rotation)) - gt_yaw + 180.0) % 360.0 - 180.0)
    assert np.all(err_id > 150.0)
    # scale and translation put the body on the image: the init's residual is a few pixels
    _, _, res = objective(template, batch, init, FIT)
    assert np.median(res) < 0.2 * SIZE, res


def test_init_without_points_is_finite_identity(template, batch):
    d = {k: np.array(getattr(batch, k), copy=True) for k in INPUT_FIELDS}
    d["dense_mask"][:2] = 0.0
    d["dense_xy"][1] = np.nan
    p = reg.init_params(template, Batch(**d), IMAGE)
    assert _finite(p)
    np.testing.assert_array_equal(np.asarray(p.rotation)[:2], np.broadcast_to(np.eye(3), (2, 3, 3)))
    with pytest.raises(ValueError, match=r"init_params: rotation must be 'affine' or 'identity', got 'yaw'"):
        reg.init_params(template, batch, IMAGE, rotation="yaw")


# ----------------------------------------------------------------------------------------------
# Static config and jit caching


def test_config_is_static_and_hashable():
    a, b = reg.stiff_config(num_steps=40), reg.stiff_config(num_steps=40)
    assert a is not b and a == b and hash(a) == hash(b)
    assert {a: 1}[b] == 1
    assert reg.RegistrationConfig() != reg.stiff_config()
    assert hash(reg.RegistrationConfig()) == hash(reg.RegistrationConfig())
    assert reg.stiff_config().num_steps == 300 and reg.RegistrationConfig().num_steps == 100
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.num_steps = 3


def test_weights_and_steps_share_one_program_and_structure_recompiles(template, batch, init, clean_fit,
                                                                     blowup_fit):
    """Round 1's stiff fit, its relaxation and the later rounds (other weights, learning rates and
    step counts, the same shapes) run one compiled program; ``dense_reduction`` makes another."""
    _, before, after = blowup_fit
    assert after == before  # a learning rate of 1000 is a value of the same program
    n = reg._register._cache_size()
    dirty = batch.replace(dense_xy=batch.dense_xy + 0.5)
    reg.register(template, dirty, init, reg.stiff_config(num_steps=FIT.num_steps), IMAGE)
    reg.register(template, batch, init, dataclasses.replace(FIT, num_steps=3, w_dense=10.0, w_angle=0.5,
                                                            lr_final_fraction=0.1, w_depth=0.2), IMAGE)
    assert reg._register._cache_size() == n
    reg.register(template, batch, init, dataclasses.replace(FIT, num_steps=2, dense_reduction="sum"), IMAGE)
    assert reg._register._cache_size() == n + 1


def test_step_count_and_schedule_are_the_configs(template, batch, init):
    """A traced step count runs exactly that many Adam steps: 0 steps return the start; a decayed
    schedule differs from the constant one and equals optax's cosine decay applied by hand."""
    zero, report = reg.register(template, batch, init, dataclasses.replace(FIT, num_steps=0), IMAGE)
    for f in PARAM_FIELDS:
        np.testing.assert_allclose(np.asarray(getattr(zero, f)), np.asarray(getattr(init, f)), rtol=1e-5,
                                   atol=1e-5, err_msg=f)
    lr = reg._learning_rate(reg._Traced(*reg._split(dataclasses.replace(FIT, num_steps=10,
                                                                         lr_final_fraction=0.2))),
                            jnp.arange(12))
    expected = optax.cosine_decay_schedule(FIT.learning_rate, 10, alpha=0.2)(np.arange(12))
    np.testing.assert_allclose(np.asarray(lr), np.asarray(expected), rtol=1e-6)


# ----------------------------------------------------------------------------------------------
# Round 1's start: init=None


def test_no_init_starts_from_init_params(template, batch, init, clean_fit):
    """``init=None`` is round 1's T-pose start, :func:`init_params` (same program, same result)."""
    n = reg._register._cache_size()
    params, report = jax.tree_util.tree_map(np.asarray, reg.register(template, batch, None, FIT, IMAGE))
    clean_params, clean_report = clean_fit
    for f in PARAM_FIELDS:
        np.testing.assert_array_equal(getattr(params, f), getattr(clean_params, f), err_msg=f)
    np.testing.assert_array_equal(report.loss, clean_report.loss)
    assert reg._register._cache_size() == n


# ----------------------------------------------------------------------------------------------
# Input checks (before tracing): a ValueError naming the argument and the field


def _bad_inputs(template, batch, init):
    b, n, k = batch.dense_xy.shape[0], batch.dense_xy.shape[1], template.num_keypoints
    as_dict = {f: getattr(batch, f) for f in INPUT_FIELDS}
    return {
        "dense_xy (B, N, 3)": (batch.replace(dense_xy=np.zeros((b, n, 3), np.float32)), init, IMAGE,
                               r"^register: batch\.dense_xy has shape \(8, 64, 3\), expected \(8, 64, 2\)"),
        "dense_vertex shorter than dense_xy": (
            batch.replace(dense_vertex=batch.dense_vertex[:, :-1]), init, IMAGE,
            r"^register: batch\.dense_vertex has shape \(8, 63\), expected \(8, 64\)"),
        "dense_vertex float": (batch.replace(dense_vertex=batch.dense_vertex.astype(np.float32)), init, IMAGE,
                               r"^register: batch\.dense_vertex has dtype float32, expected int"),
        "keypoints with K - 1": (batch.replace(keypoints=batch.keypoints[:, :-1],
                                               keypoint_visible=batch.keypoint_visible[:, :-1]), init, IMAGE,
                                 rf"^register: batch\.keypoints has shape \(8, {k - 1}, 2\), expected \(8, {k}, 2\)"),
        "keypoint_visible with K + 1": (
            batch.replace(keypoint_visible=np.ones((b, k + 1), np.float32)), init, IMAGE,
            rf"^register: batch\.keypoint_visible has shape \(8, {k + 1}\), expected \(8, {k}\)"),
        "image_size (H, W, 3)": (batch, init, (SIZE, SIZE, 3), r"^register: image_size must be \(H, W\)"),
        "image_size an int": (batch, init, SIZE, r"^register: image_size must be \(H, W\)"),
        "image_size zero": (batch, init, (0, SIZE), r"^register: image_size must be positive"),
        "init of batch size B + 1": (batch, body.rest_params(template, (b + 1,)), IMAGE,
                                     r"^register: init\.\w+ has shape \(9,"),
        "init with 23 joints": (batch, init.replace(pose=init.pose[:, 1:]), IMAGE,
                                r"^register: init\.pose has shape \(8, 23, 3\), expected \(8, 24, 3\)"),
        "a dict instead of a Batch": (as_dict, init, IMAGE,
                                      r"^register: batch must be a bodyjax\.batch\.Batch, got dict"),
    }


def test_register_rejects_bad_inputs_before_tracing(template, batch, init):
    n = reg._register._cache_size()
    for case, (bad_batch, bad_init, size, message) in _bad_inputs(template, batch, init).items():
        with pytest.raises(ValueError, match=message):
            reg.register(template, bad_batch, bad_init, FIT, size)
            pytest.fail(f"register accepted {case}")
    assert reg._register._cache_size() == n  # nothing was traced
    with pytest.raises(ValueError, match="config must be a RegistrationConfig"):
        reg.register(template, batch, init, dataclasses.asdict(FIT), IMAGE)


# ----------------------------------------------------------------------------------------------
# data_objective: the image terms of eq. (7)

# Weights of its own (and the dense reduction of FIT, whose compiled reference it reuses).
DATA_OBJ = reg.RegistrationConfig(w_dense=7.0, w_kp=3.0, dense_reduction=FIT.dense_reduction)


def test_data_objective_is_the_weighted_image_terms(template, batch, init, clean_fit):
    for params in (init, clean_fit[0]):
        got = np.asarray(reg.data_objective(template, batch, params, DATA_OBJ, IMAGE))
        _, terms, _ = objective(template, batch, params, FIT)   # the terms do not depend on the weights
        expected = DATA_OBJ.w_dense * terms["l_dense"] + DATA_OBJ.w_kp * terms["l_kp"]
        assert got.shape == (NUM,)
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-7)
    # With the lifter's depths in the batch the depth part of eq. 9 joins (same weight ω_KP), and
    # with use_depth=False it does not.
    depths = np.linspace(-3.0, 3.0, batch.keypoint_visible.size, dtype=np.float32).reshape(
        batch.keypoint_visible.shape)
    with_depth = batch.replace(keypoint_depth=depths, keypoint_depth_mask=batch.keypoint_visible)
    got = np.asarray(reg.data_objective(template, with_depth, init, DATA_OBJ, IMAGE))
    _, terms, _ = objective(template, batch, init, FIT)
    # The depth part, written out here: root-relative s·z against z^GAN, both over half the image.
    half = max(IMAGE) / 2.0
    posed = jax.jit(body.forward_subset)(template, jax.tree_util.tree_map(jnp.asarray, init),
                                         jnp.zeros((NUM, 1), jnp.int32))
    z = np.asarray(posed.keypoints[..., 2], np.float64) * np.asarray(init.scale, np.float64)[:, None] / half
    hips = list(skeletons.get_keypoint_set(template.keypoint_set).root)
    dz = (z - z[:, hips].mean(1, keepdims=True) - depths / half) * np.asarray(batch.keypoint_visible)
    expected = DATA_OBJ.w_dense * terms["l_dense"] + DATA_OBJ.w_kp * (terms["l_kp"] + np.sum(dz ** 2, -1))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)
    assert np.all(got > np.asarray(reg.data_objective(template, batch, init, DATA_OBJ, IMAGE)))
    # w_depth weighs the depth part alone, as a value of the same program
    n = reg._data_objective._cache_size()
    weighted = np.asarray(reg.data_objective(template, with_depth, init, dataclasses.replace(DATA_OBJ, w_depth=0.25),
                                             IMAGE))
    np.testing.assert_allclose(weighted, DATA_OBJ.w_dense * terms["l_dense"]
                               + DATA_OBJ.w_kp * (terms["l_kp"] + 0.25 * np.sum(dz ** 2, -1)), rtol=1e-4, atol=1e-6)
    assert reg._data_objective._cache_size() == n
    no_depth = dataclasses.replace(DATA_OBJ, use_depth=False)
    np.testing.assert_array_equal(reg.data_objective(template, with_depth, init, no_depth, IMAGE),
                                  reg.data_objective(template, batch, init, DATA_OBJ, IMAGE))


def test_data_objective_is_lowest_at_the_true_parameters(template, split, batch):
    gt = sample.params_from_record(split, "gt")
    true = np.asarray(reg.data_objective(template, batch, gt, DATA_OBJ, IMAGE))
    assert np.all(true < 1e-3), true   # exact synthetic correspondences: ~0 up to float32
    rng = np.random.default_rng(5)
    b = NUM
    perturbed = {
        "pose": gt.replace(pose=gt.pose + rng.normal(0.0, 0.15, gt.pose.shape).astype(np.float32)),
        "segment_scales": gt.replace(segment_scales=gt.segment_scales * 1.1),
        "rotation": gt.replace(rotation=np.einsum("bij,bjk->bik", np.asarray(gt.rotation), np.asarray(
            axis_angle_to_matrix(rng.normal(0.0, 0.15, (b, 3)).astype(np.float32))))),
        "scale": gt.replace(scale=gt.scale * 1.05),
        "translation": gt.replace(translation=gt.translation + np.float32([1.5, -1.0])),
    }
    for name, params in perturbed.items():
        worse = np.asarray(reg.data_objective(template, batch, params, DATA_OBJ, IMAGE))
        assert np.all(worse > true + 1e-3), (name, true, worse)
    # Non-finite parameters give inf, not NaN.
    bad = gt.replace(scale=np.asarray(gt.scale).copy())
    bad.scale[3] = np.nan
    value = np.asarray(reg.data_objective(template, batch, bad, DATA_OBJ, IMAGE))
    assert value[3] == np.inf and np.all(np.isfinite(np.delete(value, 3)))


def test_data_objective_rejects_bad_inputs(template, batch, init):
    for case, (bad_batch, bad_init, size, message) in _bad_inputs(template, batch, init).items():
        if case == "a dict instead of a Batch":
            continue  # see test_data_objective_rejects_a_dict
        params = init if bad_init is None else bad_init
        with pytest.raises(ValueError, match=message.replace("register: init", "data_objective: params")
                           .replace("register", "data_objective")):
            reg.data_objective(template, bad_batch, params, DATA_OBJ, size)
            pytest.fail(f"data_objective accepted {case}")


def test_data_objective_rejects_a_dict(template, batch, init):
    with pytest.raises(ValueError, match=r"^data_objective: batch must be a bodyjax\.batch\.Batch"):
        reg.data_objective(template, {f: getattr(batch, f) for f in INPUT_FIELDS}, init, DATA_OBJ, IMAGE)


@pytest.mark.parametrize("field,value,message", [
    ("w_depth", -0.5, r"RegistrationConfig\.w_depth must be >= 0, got -0\.5"),
    ("w_depth", float("nan"), r"RegistrationConfig\.w_depth must be >= 0, got nan"),
    ("num_steps", -1, r"RegistrationConfig\.num_steps must be >= 0, got -1"),
    ("dense_reduction", "median", r"RegistrationConfig\.dense_reduction"),
])
def test_config_refuses_bad_fields(field, value, message):
    with pytest.raises(ValueError, match=message):
        reg.RegistrationConfig(**{field: value})
