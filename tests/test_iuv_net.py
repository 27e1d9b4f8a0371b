"""Tests for bodyjax.iuv_net, the part / IUV predictor.

One tiny configuration (32-px crops, two levels) and one batch shape (8 images) for every step,
so the file compiles the train step and the eval step once each; the keypoint heads (an EXTENSION)
add one more configuration, the same network with two heat maps.
"""
import dataclasses
import functools

import numpy as np
import jax
import jax.numpy as jnp
import pytest

from bodyjax import iuv_net
from bodyjax.batch import Batch
from bodyjax.regressor import encode_maps, preprocess

TINY = iuv_net.IUVNetConfig(image_size=32, width=16, levels=2, learning_rate=1e-2)
TRAIN_STEPS = 150
B = 8
NUM_USED_PARTS = 7
# Part k (1..7) has the colour of corner k of the RGB cube; the background is black.
PALETTE = (255 * ((np.arange(NUM_USED_PARTS + 1)[:, None] >> np.arange(3)) & 1)).astype(np.uint8)


def _rectangles(seed, b=B, size=TINY.image_size, unlabelled=0.1):
    """Images of coloured rectangles on black whose colour is the part (1..7), with iuv labels.

    U, V run across each rectangle (left to right, top to bottom); a fraction ``unlabelled`` of the
    pixels has no label (255) and a disjoint few have a part but no U, V label.
    """
    rng = np.random.default_rng(seed)
    image = np.zeros((b, size, size, 3), np.uint8)
    iuv = np.zeros((b, size, size, 3), np.uint8)
    iuv[..., 1:] = iuv_net.UNLABELLED
    yy, xx = np.mgrid[:size, :size]
    for i in range(b):
        for _ in range(3):
            part = rng.integers(1, NUM_USED_PARTS + 1)
            h, w = rng.integers(size // 4, size // 2, 2)
            y0, x0 = rng.integers(0, size - h), rng.integers(0, size - w)
            inside = (yy >= y0) & (yy < y0 + h) & (xx >= x0) & (xx < x0 + w)
            image[i][inside] = PALETTE[part]
            iuv[i][inside, 0] = part
            iuv[i][inside, 1] = np.round(254 * (xx[inside] - x0) / (w - 1))
            iuv[i][inside, 2] = np.round(254 * (yy[inside] - y0) / (h - 1))
    noise = rng.integers(-10, 11, image.shape)
    image = np.clip(image.astype(np.int32) + noise, 0, 255).astype(np.uint8)
    r = rng.random(iuv.shape[:3])
    iuv[r < unlabelled] = iuv_net.UNLABELLED
    no_uv = (r >= unlabelled) & (r < unlabelled + 0.05)
    iuv[..., 1][no_uv] = iuv_net.UNLABELLED
    iuv[..., 2][no_uv] = iuv_net.UNLABELLED
    return image, iuv


def _batch(image, iuv):
    b = image.shape[0] if image is not None else iuv.shape[0]
    return Batch(dense_xy=np.zeros((b, 0, 2), np.float32), dense_vertex=np.zeros((b, 0), np.int32),
                 dense_mask=np.zeros((b, 0), np.float32), keypoints=np.zeros((b, 0, 2), np.float32),
                 keypoint_visible=np.zeros((b, 0), np.float32), image=image, iuv=iuv)


@pytest.fixture(scope="module")
def data():
    return _rectangles(0)


@pytest.fixture(scope="module")
def trained():
    """The tiny network after TRAIN_STEPS steps, each on 8 new rectangle images, and its metrics."""
    state = iuv_net.create_state(0, TINY)
    history = []
    for i in range(TRAIN_STEPS):
        state, metrics = iuv_net.train_step(state, _batch(*_rectangles(1000 + i)))
        history.append(metrics)
    return state, jax.device_get(history)


_apply = jax.jit(lambda state, image, parts=None: state.apply_fn(
    {"params": state.params}, preprocess(image), parts=parts))
_loss = jax.jit(iuv_net.loss_terms, static_argnums=3)


# ---------------------------------------------------------------------------------------------
# Configuration and network


@pytest.mark.parametrize("field, value", [("image_size", 30), ("width", 0), ("levels", 0),
                                          ("patch", 0), ("norm_groups", 3), ("uv_weight", -1.0),
                                          ("learning_rate", 0.0), ("lr_final_fraction", 1.5),
                                          ("batch_size", 0), ("uv_smooth_l1_beta", 0.0),
                                          ("num_epochs", -1), ("num_epochs", 1.5),
                                          ("test_shifts", 3), ("test_shifts", True)])
def test_config_rejects_bad_values(field, value):
    with pytest.raises(ValueError, match=field):
        iuv_net.IUVNetConfig(**{field: value})


def test_config_takes_zero_epochs_for_a_predictor_used_as_loaded():
    assert iuv_net.IUVNetConfig(num_epochs=0).num_epochs == 0


@pytest.mark.parametrize("per_part", [True, False])
def test_network_output_shapes(per_part):
    cfg = iuv_net.IUVNetConfig(uv_per_part=per_part)
    s, p = cfg.image_size, cfg.patch
    x = jax.ShapeDtypeStruct((3, s, s, 3), jnp.float32)
    variables = jax.eval_shape(cfg.network().init, jax.random.key(0), x)
    assert variables["params"]["uv_kernel"].shape == (24 if per_part else 1, p, p, cfg.width, 2)
    logits, uv = jax.eval_shape(cfg.network().apply, variables, x)
    assert logits.shape == (3, s, s, 25) and logits.dtype == jnp.float32
    assert uv.shape == (3, s, s, 2) and uv.dtype == jnp.float32
    parts = jax.ShapeDtypeStruct((3, s // p, s // p, p, p), jnp.int32)
    logits, uv = jax.eval_shape(functools.partial(cfg.network().apply, cells=True), variables, x, parts)
    assert logits.shape == (3, s // p, s // p, p, p, 25) and uv.shape == (3, s // p, s // p, p, p, 2)


def test_pixels_to_cells_and_back():
    x = np.arange(2 * 8 * 6 * 3, dtype=np.float32).reshape(2, 8, 6, 3)
    cells = iuv_net.pixels_to_cells(x, 2)
    assert cells.shape == (2, 4, 3, 2, 2, 3)
    np.testing.assert_array_equal(cells[1, 2, 1], x[1, 4:6, 2:4])
    np.testing.assert_array_equal(np.asarray(iuv_net.cells_to_pixels(jnp.asarray(cells))), x)


def test_uv_is_read_at_the_requested_part(data):
    """Per-pixel parts read each pixel's own chart: the same as asking for that part everywhere."""
    state = iuv_net.create_state(3, TINY)
    image = data[0][:2]
    parts = np.random.default_rng(0).integers(0, 26, image.shape[:3]).astype(np.int32)
    logits, uv = (np.asarray(a) for a in _apply(state, image, parts))
    assert np.all((uv > 0) & (uv < 1))
    for k in (1, 2, 7, 24):
        same = parts == k
        logits_k, uv_k = (np.asarray(a) for a in _apply(state, image, np.full_like(parts, k)))
        np.testing.assert_allclose(uv[same], uv_k[same], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(logits_k, logits, rtol=1e-5, atol=1e-6)     # parts: UV only
    assert not np.allclose(*(np.asarray(_apply(state, image, np.full_like(parts, k))[1]) for k in (3, 4)))
    # Ids outside 1..24 (background, unlabelled) read the nearest part's pair, finite and masked
    # by the loss; without parts, the predicted part's pair is read.
    for outside, k in ((0, 1), (25, 24)):
        at = parts == outside
        np.testing.assert_allclose(uv[at], np.asarray(_apply(state, image, np.full_like(parts, k))[1])[at],
                                   rtol=1e-5, atol=1e-6)
    _, uv_pred = _apply(state, image)
    _, uv_argmax = _apply(state, image, np.asarray(jnp.argmax(logits, -1), np.int32))
    np.testing.assert_allclose(np.asarray(uv_pred), np.asarray(uv_argmax), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Loss


def _numpy_loss(logits, uv, iuv, cfg):
    """float64 reference: per-pixel loops over the labelled pixels, per-image means.

    With ``cfg.body_weight`` the cross-entropy is ``w · (body-pixel mean) + (1 − w) · (background
    mean)``, each a per-image mean averaged over the images that have such pixels.
    """
    logits, uv = np.asarray(logits, np.float64), np.asarray(uv, np.float64)
    ce_img, body_img, bg_img, uv_img = [], [], [], []
    for i in range(logits.shape[0]):
        ce, ce_body, ce_bg, err = [], [], [], []
        for y in range(logits.shape[1]):
            for x in range(logits.shape[2]):
                part, u, v = (int(c) for c in iuv[i, y, x])
                if part > 24:
                    continue
                z = logits[i, y, x]
                c = np.log(np.sum(np.exp(z - z.max()))) + z.max() - z[part]
                ce.append(c)
                (ce_body if part >= 1 else ce_bg).append(c)
                if part >= 1 and u <= 254 and v <= 254:
                    d = np.abs(uv[i, y, x] - np.array([u, v]) / 254.0)
                    beta = cfg.uv_smooth_l1_beta
                    err.append(np.sum(np.where(d < beta, 0.5 * d ** 2 / beta, d - 0.5 * beta)))
        for values, out in ((ce, ce_img), (ce_body, body_img), (ce_bg, bg_img), (err, uv_img)):
            if values:
                out.append(np.mean(values))
    mean = lambda v: np.mean(v) if v else 0.0  # noqa: E731
    if cfg.body_weight is None:
        part_ce = mean(ce_img)
    else:
        part_ce = cfg.body_weight * mean(body_img) + (1.0 - cfg.body_weight) * mean(bg_img)
    uv_loss = mean(uv_img)
    return part_ce + cfg.uv_weight * uv_loss, part_ce, uv_loss


def _random_outputs(seed, b=3, s=6):
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 2, (b, s, s, 25)).astype(np.float32)
    uv = rng.uniform(0, 1, (b, s, s, 2)).astype(np.float32)
    iuv = np.stack([rng.integers(0, 25, (b, s, s)), rng.integers(0, 255, (b, s, s)),
                    rng.integers(0, 255, (b, s, s))], -1).astype(np.uint8)
    iuv[rng.random((b, s, s)) < 0.3, 0] = 255                      # no part label
    iuv[rng.random((b, s, s)) < 0.2, 1] = 255                      # no U label
    iuv[1] = 255                                                    # an image without labels
    iuv[2, :3] = np.array([5, 0, 254], np.uint8)                    # the ends of the U, V range
    return logits, uv, iuv


@pytest.mark.parametrize("beta", [0.1, 1.0])
@pytest.mark.parametrize("body_weight", [None, 0.5, 0.8])
def test_loss_matches_numpy_reference(beta, body_weight):
    logits, uv, iuv = _random_outputs(0)
    cfg = iuv_net.IUVNetConfig(uv_weight=0.7, uv_smooth_l1_beta=beta, body_weight=body_weight)
    loss, terms = _loss(logits, uv, iuv, cfg)
    ref, ref_ce, ref_uv = _numpy_loss(logits, uv, iuv, cfg)
    np.testing.assert_allclose(float(terms["part_ce"]), ref_ce, rtol=1e-5)
    np.testing.assert_allclose(float(terms["uv_loss"]), ref_uv, rtol=1e-5)
    np.testing.assert_allclose(float(loss), ref, rtol=1e-5)
    # The same in the cell layout of the training step.
    cells = [iuv_net.pixels_to_cells(a, 2) for a in (logits, uv, iuv)]
    np.testing.assert_allclose(float(_loss(*cells, cfg)[0]), ref, rtol=1e-5)


def test_loss_ignores_unlabelled_pixels():
    logits, uv, iuv = _random_outputs(1)
    cfg = iuv_net.IUVNetConfig()
    loss = lambda lg, u, lab: float(_loss(lg, u, lab, cfg)[0])  # noqa: E731
    base = loss(logits, uv, iuv)
    ignored = iuv[..., 0] == 255
    no_uv = (iuv[..., 0] == 0) | (iuv[..., 1] == 255) | (iuv[..., 2] == 255)
    assert ignored.any() and (no_uv & ~ignored).any()
    lg2, uv2, lab2 = logits.copy(), uv.copy(), iuv.copy()
    lg2[ignored] = 50.0 * np.random.default_rng(2).normal(size=lg2[ignored].shape)
    uv2[ignored | no_uv] = 1.0 - uv2[ignored | no_uv]
    lab2[ignored, 1:] = 7                                            # U, V of a pixel without part
    assert loss(lg2, uv2, lab2) == pytest.approx(base, rel=1e-6)
    # ... while a labelled pixel does count.
    lg2[~ignored] += np.random.default_rng(3).normal(size=lg2[~ignored].shape).astype(np.float32)
    assert loss(lg2, uv2, lab2) != pytest.approx(base, rel=1e-3)


def test_loss_without_labels_is_zero_with_zero_gradients():
    logits, uv, iuv = _random_outputs(4)
    iuv[:] = 255
    cfg = iuv_net.IUVNetConfig()
    fn = jax.jit(jax.value_and_grad(lambda lg, u, lab: iuv_net.loss_terms(lg, u, lab, cfg),
                                    argnums=(0, 1), has_aux=True))
    (loss, terms), grads = fn(logits, uv, iuv)
    assert float(loss) == 0.0 and float(terms["part_ce"]) == 0.0 and float(terms["uv_loss"]) == 0.0
    for g in grads:
        assert np.all(np.asarray(g) == 0.0)
    # Parts labelled but no U, V anywhere: the UV term alone is 0.
    iuv[..., 0] = 3
    (_, terms), _ = fn(logits, uv, iuv)
    assert float(terms["uv_loss"]) == 0.0 and float(terms["part_ce"]) > 0.0


def test_gradients_are_finite_and_reach_every_parameter(data):
    state = iuv_net.create_state(1, TINY)
    before = jax.device_get(state.params)
    state, metrics = iuv_net.train_step(state, _batch(*data))
    assert np.isfinite(float(metrics["grad_norm"])) and float(metrics["grad_norm"]) > 0
    # Adam moves every parameter with a non-zero gradient by about the learning rate.
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(before),
                            jax.tree_util.tree_leaves(state.params)):
        b = np.asarray(b)
        assert np.all(np.isfinite(b)), jax.tree_util.keystr(path)
        assert np.abs(b - a).max() > 0.1 * TINY.learning_rate, jax.tree_util.keystr(path)


# ---------------------------------------------------------------------------------------------
# Training


def test_training_learns_the_rectangles(trained):
    _, history = trained
    assert all(np.isfinite(h["loss"]) for h in history)
    first = history[0]
    last = {k: np.mean([h[k] for h in history[-10:]]) for k in first}
    assert first["pixel_accuracy"] < 0.75 and first["mean_part_iou"] < 0.1, first
    assert last["pixel_accuracy"] > 0.93, last
    assert last["foreground_iou"] > 0.85 and last["mean_part_iou"] > 0.6, last
    assert last["part_ce"] < 0.2 * first["part_ce"], last
    assert last["uv_loss"] < 0.5 * first["uv_loss"], (first["uv_loss"], last["uv_loss"])


def test_eval_step_on_held_out_rectangles(trained):
    state, history = trained
    metrics = jax.device_get(iuv_net.eval_step(state, _batch(*_rectangles(99))))
    assert set(metrics) == {"loss", "part_ce", "uv_loss", "pixel_accuracy", "foreground_iou",
                            "mean_part_iou"}
    assert metrics["pixel_accuracy"] > 0.93 and metrics["mean_part_iou"] > 0.6, metrics


def test_learning_rate_argument_drives_the_step(data):
    state = iuv_net.create_state(0, TINY)
    before = jax.device_get(state.params)
    state, _ = iuv_net.train_step(state, _batch(*data), learning_rate=0.0)
    assert int(state.step) == 1
    for a, b in zip(jax.tree_util.tree_leaves(before), jax.tree_util.tree_leaves(state.params)):
        np.testing.assert_array_equal(a, np.asarray(b))
    state, _ = iuv_net.train_step(state, _batch(*data), learning_rate=1e-2)
    assert float(state.opt_state.hyperparams["learning_rate"]) == pytest.approx(1e-2)
    assert any(not np.array_equal(a, np.asarray(b)) for a, b in
               zip(jax.tree_util.tree_leaves(before), jax.tree_util.tree_leaves(state.params)))


def test_determinism_given_the_seed(data):
    def run(seed):
        state = iuv_net.create_state(seed, TINY)
        init = jax.device_get(state.params)
        for _ in range(2):
            state, metrics = iuv_net.train_step(state, _batch(*data))
        return init, jax.device_get(state.params), jax.device_get(metrics)

    a, b, c = run(7), run(7), run(8)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_array_equal(x, y)
    assert any(not np.array_equal(x, y) for x, y in
               zip(jax.tree_util.tree_leaves(a[0]), jax.tree_util.tree_leaves(c[0])))
    # A PRNG key works as well as an int seed.
    keyed = iuv_net.create_state(jax.random.key(7), TINY)
    assert jax.tree_util.tree_structure(keyed.params) == jax.tree_util.tree_structure(a[0])


# ---------------------------------------------------------------------------------------------
# Prediction and its format


def test_predict_writes_the_iuv_format(trained):
    state, _ = trained
    image, labels = _rectangles(5, b=5)
    out = iuv_net.predict(state, image, batch_size=3)             # two chunks, the last padded
    assert out.shape == (5, 32, 32, 3) and out.dtype == np.uint8
    part, u, v = out[..., 0], out[..., 1], out[..., 2]
    assert part.max() <= 24
    np.testing.assert_array_equal(u == 255, part == 0)
    np.testing.assert_array_equal(v == 255, part == 0)
    assert u[part > 0].max() <= 254 and v[part > 0].max() <= 254
    # The same maps as the network's argmax and UV read at it.
    logits, uv = _apply(state, image)
    np.testing.assert_array_equal(part, np.asarray(jnp.argmax(logits, -1)))
    uv = np.asarray(uv)
    fg = part > 0
    np.testing.assert_allclose(out[..., 1:][fg] / 254.0, uv[fg], atol=0.5 / 254 + 1e-6)
    # ... which the regressor's reader decodes back (one-hot part, U, V; 0 off the body).
    enc = np.asarray(encode_maps(out, "iuv"))
    np.testing.assert_array_equal(enc[..., :25].argmax(-1), part)
    np.testing.assert_allclose(enc[..., 25:][fg], uv[fg], atol=0.5 / 254 + 1e-6)
    assert np.all(enc[..., 25:][~fg] == 0.0)
    # It learnt the task: agreement with the labels.
    iou, mean = iuv_net.part_iou(out, labels)
    assert iou.shape == (25,) and mean > 0.6


def test_predict_resizes_other_sizes(trained):
    state, _ = trained
    image, _ = _rectangles(5, b=5)
    big = np.repeat(np.repeat(image, 2, axis=1), 2, axis=2)       # (5, 64, 64, 3)
    out_big = iuv_net.predict(state, big, batch_size=3)
    assert out_big.shape == (5, 64, 64, 3) and out_big.dtype == np.uint8
    # The network's 32-px map, each pixel doubled (nearest) ...
    for dy, dx in ((0, 1), (1, 0), (1, 1)):
        np.testing.assert_array_equal(out_big[:, dy::2, dx::2], out_big[:, ::2, ::2])
    # ... of about the same parts as at 32 px (the antialiased downsampling blurs the edges).
    small = iuv_net.predict(state, image, batch_size=3)
    assert np.mean(out_big[:, ::2, ::2, 0] == small[..., 0]) > 0.9


def _reference_views(logits, uv):
    """float64 NumPy :func:`iuv_net.average_views`, pixel by pixel."""
    logits = np.asarray(logits, np.float64)
    prob = np.exp(logits - logits.max(-1, keepdims=True))
    prob /= prob.sum(-1, keepdims=True)
    part = prob.sum(0).argmax(-1)
    own = logits.argmax(-1)
    out = np.empty(part.shape + (2,))
    for idx in np.ndindex(*part.shape):
        agree = [v for v in range(logits.shape[0]) if own[(v,) + idx] == part[idx]]
        out[idx] = np.mean([uv[(v,) + idx] for v in agree], axis=0) if agree else uv[(0,) + idx]
    return part, out


def test_average_views_matches_numpy():
    rng = np.random.default_rng(3)
    logits = (2.0 * rng.normal(size=(4, 2, 6, 6, 25))).astype(np.float32)
    uv = rng.random((4, 2, 6, 6, 2)).astype(np.float32)
    # Pixel (0, 0, 0): every view prefers its own part (0.5), all give part 10 0.3, so the sum
    # picks part 10, which no view picked: the first view's (U, V) is kept.
    prob = np.full((4, 25), 0.2 / 23)
    prob[:, 10] = 0.3
    prob[np.arange(4), np.arange(1, 5)] = 0.5
    logits[:, 0, 0, 0] = np.log(prob)
    part, out = (np.asarray(a) for a in jax.jit(iuv_net.average_views)(logits, uv))
    ref_part, ref_uv = _reference_views(logits, uv)
    np.testing.assert_array_equal(part, ref_part)
    np.testing.assert_allclose(out, ref_uv, atol=1e-6)
    assert part[0, 0, 0] == 10
    np.testing.assert_array_equal(out[0, 0, 0], uv[0, 0, 0, 0])
    # ... and the mean over several agreeing views is exercised too.
    agreeing = (logits.argmax(-1) == part[None]).sum(0)
    assert np.any(agreeing >= 2) and np.any(agreeing == 1)


def _edge_shift(image, dy, dx):
    return np.pad(image, ((0, 0), (dy, 0), (dx, 0), (0, 0)), mode="edge")[:, :image.shape[1], :image.shape[2]]


def _edge_unshift(x, dy, dx):
    return np.pad(x[:, dy:, dx:], ((0, 0), (0, dy), (0, dx), (0, 0)), mode="edge")


def test_predict_averages_shifted_views(trained):
    state, _ = trained
    image, labels = _rectangles(6, b=5)
    one = iuv_net.predict(state, image, batch_size=3)
    np.testing.assert_array_equal(iuv_net.predict(state, image, batch_size=3, shifts=1), one)
    four = iuv_net.predict(state, image, batch_size=3, shifts=4)
    # Reference: the network on each shifted crop (NumPy's shift of the uint8 image), brought back
    # to the crop's pixels, and the views averaged in float64 NumPy.
    views = [_apply(state, _edge_shift(image, dy, dx)) for dy, dx in iuv_net.TEST_SHIFTS[4]]
    logits = np.stack([_edge_unshift(np.asarray(l), dy, dx) for (l, _), (dy, dx) in zip(views, iuv_net.TEST_SHIFTS[4])])
    uv = np.stack([_edge_unshift(np.asarray(u), dy, dx) for (_, u), (dy, dx) in zip(views, iuv_net.TEST_SHIFTS[4])])
    ref_part, ref_uv = _reference_views(logits, uv)
    same = four[..., 0] == ref_part
    assert same.mean() > 0.999                      # float ties between batch layouts aside
    fg = same & (ref_part > 0)
    assert np.abs(four[..., 1:][fg].astype(float) - np.round(254 * ref_uv[fg])).max() <= 1
    # The views disagree on some pixels, so the average is not the one-view map; it is at least
    # as good against the labels.
    assert 0 < np.mean(four[..., 0] != one[..., 0]) < 0.2
    assert iuv_net.part_iou(four, labels)[1] >= iuv_net.part_iou(one, labels)[1] - 0.01
    # The state's config is the default; a bad value is refused by name.
    shifted_state = state.replace(config=dataclasses.replace(state.config, test_shifts=2))
    np.testing.assert_array_equal(iuv_net.predict(shifted_state, image, batch_size=3),
                                  iuv_net.predict(state, image, batch_size=3, shifts=2))
    with pytest.raises(ValueError, match="shifts"):
        iuv_net.predict(state, image, shifts=3)


# ---------------------------------------------------------------------------------------------
# Input checks


def test_bad_inputs_name_the_field(data):
    state = iuv_net.create_state(0, TINY)
    image, iuv = data
    cases = [
        (_batch(image, None), "batch.iuv"),
        (_batch(None, iuv), "batch.image"),
        (_batch(image[:, :16, :16], iuv[:, :16, :16]), "batch.image"),
        (_batch(image, iuv[:, :16]), "batch.iuv"),
        (_batch(image, iuv.astype(np.float32)), "batch.iuv"),
        (_batch(image.astype(np.float32), iuv), "batch.image"),
        (_batch(image, iuv[..., :2]), "batch.iuv"),
    ]
    for batch, field in cases:
        for step in (lambda b: iuv_net.train_step(state, b), lambda b: iuv_net.eval_step(state, b)):
            with pytest.raises(ValueError, match=field.replace(".", r"\.")):
                step(batch)
    with pytest.raises(ValueError, match="Batch"):
        iuv_net.train_step(state, {"image": image, "iuv": iuv})
    with pytest.raises(ValueError, match="images"):
        iuv_net.predict(state, image.astype(np.float32))
    with pytest.raises(ValueError, match="images"):
        iuv_net.predict(state, image[0])
    with pytest.raises(ValueError, match="images"):
        iuv_net.predict(state, image[:0])


# ---------------------------------------------------------------------------------------------
# Metrics


def test_part_iou_against_counts():
    label = np.full((2, 4, 4), 0, np.uint8)
    pred = np.zeros((2, 4, 4), np.uint8)
    label[0, :2, :2] = 3            # 4 pixels of part 3
    pred[0, :2, :3] = 3             # 6 predicted, 4 right: IoU 4/6
    label[1, 0, 0] = 255            # ignored, although predicted as part 7
    pred[1, 0, 0] = 7
    label[1, 3, :] = 5              # 4 pixels of part 5, predicted as 6: IoU 0 for both
    pred[1, 3, :] = 6
    iou, mean = iuv_net.part_iou(pred, label)
    assert iou[3] == pytest.approx(4 / 6)
    assert iou[5] == 0.0 and iou[6] == 0.0
    assert np.isnan(iou[7]) and np.isnan(iou[1])                  # neither labelled nor predicted
    bg_tp, bg_union = 32 - 1 - 6 - 4, 32 - 1 - 4 - 4 + 0
    assert iou[0] == pytest.approx(bg_tp / (bg_union))
    assert mean == pytest.approx((4 / 6 + 0 + 0) / 3)
    # iuv maps give the same, and the jitted scores agree.
    as_iuv = lambda p: np.stack([p, p, p], -1)  # noqa: E731
    np.testing.assert_array_equal(iuv_net.part_iou(as_iuv(pred), as_iuv(label))[0], iou)
    conf = iuv_net.confusion_matrix(jnp.asarray(pred), jnp.asarray(label))
    np.testing.assert_array_equal(np.asarray(conf), iuv_net.confusion_matrix(pred, label, xp=np))
    assert np.isnan(iuv_net.part_iou(np.zeros((1, 2, 2), np.uint8), np.full((1, 2, 2), 255, np.uint8))[1])


# ---------------------------------------------------------------------------------------------
# Keypoint heads (EXTENSION)

KP = TINY.__class__(**{**TINY.__dict__, "keypoints": 2, "keypoint_weight": 0.1})


def _squares(seed, b=B, size=TINY.image_size):
    """A bright square (part 1) on black per image; keypoint 0 its centre, keypoint 1 its top-left
    corner (pixel coordinates x = column, y = row); keypoint 1 unlabelled in every other image."""
    rng = np.random.default_rng(seed)
    image = np.zeros((b, size, size, 3), np.uint8)
    iuv = np.zeros((b, size, size, 3), np.uint8)
    iuv[..., 1:] = iuv_net.UNLABELLED
    keypoints = np.zeros((b, 2, 2), np.float32)
    for i in range(b):
        side = int(rng.integers(6, 12))
        y0, x0 = rng.integers(1, size - side - 1, 2)
        image[i, y0:y0 + side, x0:x0 + side] = 230
        iuv[i, y0:y0 + side, x0:x0 + side, 0] = 1
        keypoints[i, 0] = (x0 + (side - 1) / 2, y0 + (side - 1) / 2)
        keypoints[i, 1] = (x0, y0)
    visible = np.ones((b, 2), np.float32)
    visible[::2, 1] = 0
    batch = Batch(dense_xy=np.zeros((b, 0, 2), np.float32), dense_vertex=np.zeros((b, 0), np.int32),
                  dense_mask=np.zeros((b, 0), np.float32), keypoints=keypoints,
                  keypoint_visible=visible, image=image, iuv=iuv)
    return batch


def _numpy_soft_argmax(logits):
    """Float64 reference: ``logits (B, S, S, K)`` → expected ``(x, y)`` = (column, row) and the peak."""
    logits = np.asarray(logits, np.float64)
    b, h, w, k = logits.shape
    flat = logits.reshape(b, h * w, k)
    prob = np.exp(flat - flat.max(axis=1, keepdims=True))
    prob /= prob.sum(axis=1, keepdims=True)
    rows, cols = np.divmod(np.arange(h * w), w)
    xy = np.stack([np.einsum("bnk,n->bk", prob, cols), np.einsum("bnk,n->bk", prob, rows)], axis=-1)
    return xy, prob.max(axis=1)


def test_soft_argmax_matches_numpy_in_both_layouts():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (3, 8, 8, 4)).astype(np.float32)
    logits[0, 5, 2, 0] = 60.0                  # one sharp peak: at x = 2, y = 5
    want_xy, want_peak = _numpy_soft_argmax(logits)
    xy, peak = iuv_net.soft_argmax(logits)
    np.testing.assert_allclose(xy, want_xy, atol=1e-4)
    np.testing.assert_allclose(peak, want_peak, atol=1e-5)
    np.testing.assert_allclose(xy[0, 0], [2.0, 5.0], atol=1e-4)
    xy_cells, peak_cells = iuv_net.soft_argmax(iuv_net.pixels_to_cells(logits, 2), cells=True)
    np.testing.assert_allclose(xy_cells, want_xy, atol=1e-4)
    np.testing.assert_allclose(peak_cells, want_peak, atol=1e-5)


def test_keypoint_terms_match_numpy_and_ignore_unlabelled():
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 2, (3, 8, 8, 2)).astype(np.float32)
    keypoints = rng.uniform(0, 7, (3, 2, 2)).astype(np.float32)
    visible = np.array([[1, 0], [1, 1], [0, 0]], np.float32)
    loss, terms = iuv_net.keypoint_terms(logits, keypoints, visible, KP)
    xy, _ = _numpy_soft_argmax(logits)
    d = xy - keypoints
    a = np.abs(d)
    sl1 = np.where(a < 1.0, 0.5 * a ** 2, a - 0.5).sum(-1)
    dist = np.sqrt((d ** 2).sum(-1))
    # Image 0 has keypoint 0 only, image 1 both, image 2 none (left out of the mean).
    want = np.mean([sl1[0, 0], sl1[1].mean()])
    np.testing.assert_allclose(terms["keypoint_loss"], want, rtol=1e-4)
    np.testing.assert_allclose(terms["keypoint_px"], np.mean([dist[0, 0], dist[1].mean()]), rtol=1e-4)
    np.testing.assert_allclose(loss, KP.keypoint_weight * want, rtol=1e-4)
    # Moving an unlabelled keypoint's label changes nothing.
    moved = keypoints.copy()
    moved[0, 1] += 5.0
    moved[2] += 3.0
    np.testing.assert_allclose(iuv_net.keypoint_terms(logits, moved, visible, KP)[0], loss, rtol=1e-6)


def test_keypoint_heads_learn_the_squares():
    """The heat maps locate a square's centre and corner on held-out images below a pixel (0.3 px
    after 40 steps when written)."""
    state = iuv_net.create_state(0, KP)
    held = _squares(99, b=16)
    before = float(iuv_net.eval_step(state, held)["keypoint_px"])
    for i in range(40):
        state, metrics = iuv_net.train_step(state, _squares(2000 + i))
    after = float(iuv_net.eval_step(state, held)["keypoint_px"])
    assert np.isfinite(float(metrics["keypoint_loss"]))
    assert before > 4.0 and after < 1.0, (before, after)
    xy, peak = iuv_net.predict_keypoints(state, held.image, batch_size=5)
    assert xy.shape == (16, 2, 2) and peak.shape == (16, 2) and np.all((peak > 0) & (peak <= 1))
    err = np.linalg.norm(xy - held.keypoints, axis=-1)
    vis = held.keypoint_visible
    per_image = np.sum(err * vis, axis=1) / np.sum(vis, axis=1)     # keypoint_terms' reduction
    np.testing.assert_allclose(np.mean(per_image), after, rtol=1e-3)
    # Twice the size: the positions scale with the image (pixel centres aligned).
    big = np.repeat(np.repeat(held.image, 2, axis=1), 2, axis=2)
    xy_big, _ = iuv_net.predict_keypoints(state, big, batch_size=16)
    np.testing.assert_allclose(xy_big, 2 * xy + 0.5, atol=0.3)
    # The part head still works beside them.
    parts = iuv_net.predict(state, held.image)[..., 0]
    assert np.mean(parts == held.iuv[..., 0]) > 0.9


def test_keypoint_heads_load_a_file_without_them(tmp_path):
    path = str(tmp_path / "no_heads.npz")
    plain = iuv_net.create_state(3, TINY)
    iuv_net.save_params(path, plain)
    fresh = iuv_net.create_state(4, KP)
    loaded = iuv_net.load_params(fresh, path)
    np.testing.assert_array_equal(loaded.params["keypoint_head"]["kernel"],
                                  fresh.params["keypoint_head"]["kernel"])
    np.testing.assert_array_equal(loaded.params["part_head"]["kernel"], plain.params["part_head"]["kernel"])
    # an abstract state (shapes only) has no initial heads to keep: refused, naming the file
    with pytest.raises(ValueError, match=r"no_heads\.npz has no keypoint heads"):
        iuv_net.load_params(iuv_net.create_state(4, KP, abstract=True), path)


def test_keypoint_heads_bad_inputs():
    with pytest.raises(ValueError, match="keypoints"):
        iuv_net.IUVNetConfig(keypoints=-1)
    with pytest.raises(ValueError, match="keypoint_weight"):
        iuv_net.IUVNetConfig(keypoint_weight=float("nan"))
    plain = iuv_net.create_state(0, TINY)
    batch = _squares(0)
    with pytest.raises(ValueError, match="no keypoint heads"):
        iuv_net.predict_keypoints(plain, batch.image)
    state = iuv_net.create_state(0, KP)
    with pytest.raises(ValueError, match=r"batch\.keypoints"):
        iuv_net.train_step(state, batch.replace(keypoints=batch.keypoints[:, :1]))
    with pytest.raises(ValueError, match=r"batch\.keypoint_visible"):
        iuv_net.eval_step(state, batch.replace(keypoint_visible=batch.keypoint_visible[:3]))
