"""New views of the fits (bodyjax.data.fit_views) and the sources that carry them to the regressor."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bodyjax import body, metrics
from bodyjax.data import fit_views, pipeline, sample, synthetic
from people import random_params

SIZE = 48


@pytest.fixture(scope="module")
def template():
    return body.default_template()


@pytest.fixture(scope="module")
def data(template):
    return synthetic.make_split(template, synthetic.SyntheticConfig(image_size=SIZE), seed=5, num_samples=6)


def test_rendering_a_samples_own_parameters_reproduces_its_labels(template, data):
    """The synthetic renderer's records are the reference: the same θ gives the same iuv labels and
    keypoints, and every dense correspondence is a vertex at its own projection."""
    gt = sample.params_from_record(data, "gt")
    rec = fit_views.render_records(template, gt, SIZE, 64, np.random.default_rng(0))
    np.testing.assert_array_equal(rec["iuv"], data["iuv"])
    np.testing.assert_allclose(rec["keypoints"], data["keypoints"], atol=1e-3)
    out = body.forward(template, gt)
    xy = np.asarray(out.vertices[..., :2]) * gt.scale[:, None, None] + gt.translation[:, None]
    for i in range(len(gt.scale)):
        n = int(rec["dense_mask"][i].sum())
        assert n == 64                      # a 48-px person shows more than 64 vertices
        np.testing.assert_allclose(rec["dense_xy"][i, :n], xy[i, rec["dense_vertex"][i, :n]], atol=1e-3)
        part = rec["iuv"][i][np.clip(np.rint(rec["dense_xy"][i, :n, 1]).astype(int), 0, SIZE - 1),
                             np.clip(np.rint(rec["dense_xy"][i, :n, 0]).astype(int), 0, SIZE - 1), 0]
        assert np.mean(part > 0) > 0.9      # the points lie on the rendered body
    assert rec["target_weight"].tolist() == [1.0] * 6
    assert rec["has_gt"].tolist() == [0.0] * 6
    np.testing.assert_array_equal(sample.params_from_record(rec, "target").pose, gt.pose)


def test_a_turn_about_the_vertical_keeps_the_pose_and_the_height(template):
    """limb_mix=0: a new body is its base fit turned about the vertical: zero PA-MPJPE to it, the same
    heights along the fit's vertical, the same scale and translation; the turn angle is the drawn one."""
    fits = random_params(np.random.default_rng(1), 20, SIZE)
    cfg = fit_views.FitViewsConfig(per_fit=1.0, yaw_deg=180.0, limb_mix=0.0)
    new = fit_views.new_bodies(template, fits, 40, np.random.default_rng(2), cfg)
    # which fit each came from: the same pose rows
    base = np.array([int(np.argmin(np.abs(fits.pose - p).sum((1, 2)))) for p in new.pose])
    np.testing.assert_array_equal(new.pose, fits.pose[base])
    np.testing.assert_array_equal(new.scale, fits.scale[base])
    a = body.forward(template, jax.tree_util.tree_map(jnp.asarray, new)).joints
    b = body.forward(template, jax.tree_util.tree_map(lambda x: jnp.asarray(x[base]), fits)).joints
    assert float(jnp.max(metrics.pa_mpjpe(a, b))) < 1e-4
    up = np.einsum("nij,j->ni", fits.rotation[base].astype(np.float64), fit_views.up_axis(template))
    np.testing.assert_allclose(np.einsum("nkj,nj->nk", np.asarray(a), up),
                               np.einsum("nkj,nj->nk", np.asarray(b), up), atol=1e-4)
    turned = np.degrees(np.arccos(np.clip((np.trace(np.swapaxes(fits.rotation[base], 1, 2) @ new.rotation,
                                                    axis1=1, axis2=2) - 1) / 2, -1, 1)))
    assert turned.max() > 90                 # all round
    narrow = fit_views.new_bodies(template, fits, 40, np.random.default_rng(2),
                                  fit_views.FitViewsConfig(per_fit=1.0, yaw_deg=10.0, limb_mix=0.0))
    turned = np.degrees(np.arccos(np.clip((np.trace(np.swapaxes(fits.rotation[base], 1, 2) @ narrow.rotation,
                                                    axis1=1, axis2=2) - 1) / 2, -1, 1)))
    assert turned.max() <= 10.0 + 1e-3


def test_limbs_come_from_trusted_fits_only(template):
    fits = random_params(np.random.default_rng(3), 10, SIZE)
    weights = np.ones(10)
    weights[[2, 7]] = 0.0                     # flagged fits
    cfg = fit_views.FitViewsConfig(per_fit=1.0, yaw_deg=0.0, limb_mix=1.0)
    new = fit_views.new_bodies(template, fits, 200, np.random.default_rng(4), cfg, weights)
    trusted = np.flatnonzero(weights > 0)
    mixed = 0
    for name, joints in fit_views.LIMBS.items():
        rows = new.pose[:, list(joints)]                                    # (200, J, 3)
        match = (rows[:, None] == fits.pose[None][:, :, list(joints)]).all((2, 3))  # (200, 10)
        assert match.any(1).all(), name                                     # each limb is some fit's
        assert not match[:, [2, 7]].any(), name                             # never a flagged fit's
        mixed += np.mean(np.argmax(match, 1) != np.argmax((new.scale[:, None] == fits.scale[None]), 1))
    assert mixed > 0.5 * len(fit_views.LIMBS) * (1 - 1 / len(trusted))      # limbs do move between fits
    with pytest.raises(ValueError, match="weights"):
        fit_views.new_bodies(template, fits, 5, np.random.default_rng(0), cfg, np.zeros(10))


def test_make_records_counts_and_repeats(template):
    fits = random_params(np.random.default_rng(5), 8, SIZE)
    weights = np.array([1, 1, 1, 0, 1, 1, 1, 1], np.float32)
    cfg = fit_views.FitViewsConfig(per_fit=1.5)
    a = fit_views.make_records(template, fits, weights, SIZE, 32, seed=9, config=cfg)
    b = fit_views.make_records(template, fits, weights, SIZE, 32, seed=9, config=cfg)
    assert len(a["iuv"]) == round(1.5 * 7)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert fit_views.make_records(template, fits, weights, SIZE, 32, 9, fit_views.FitViewsConfig()) is None
    for bad in (dict(per_fit=-1.0), dict(yaw_deg=200.0), dict(limb_mix=1.5)):
        with pytest.raises(ValueError, match="FitViewsConfig"):
            fit_views.FitViewsConfig(**bad)


def test_concat_source_reads_each_source_in_order():
    a = pipeline.ArraySource({"x": np.arange(3), "y": np.zeros(3)})
    b = pipeline.ArraySource({"x": np.arange(10, 15), "y": np.ones(5)})
    c = pipeline.ConcatSource(a, pipeline.ArraySource({"x": np.zeros(0), "y": np.zeros(0)}), b)
    assert len(c) == 8
    assert [int(r["x"]) for r in c.__getitems__(range(8))] == [0, 1, 2, 10, 11, 12, 13, 14]
    with pytest.raises(IndexError):
        c[8]
    with pytest.raises(ValueError, match="different fields"):
        pipeline.ConcatSource(a, pipeline.ArraySource({"x": np.arange(2)}))


def test_loop_adds_the_views_to_the_regressor_records_and_rejects_them_for_rgb(template, data):
    from bodyjax.loop import deform_and_learn as dnl
    from bodyjax.loop import experiment
    from configs import default

    config = default.get_config("smoke")
    config.data.image_size = SIZE
    config.fit_views.per_fit = 2.0
    loop = experiment.loop_config(config)
    fits = sample.params_from_record(data, "gt")
    state = dnl.LoopState(round=jnp.asarray(0), stage=jnp.asarray(3), rng=jax.random.PRNGKey(0), lifter=None,
                          regressor=None, iuv_net=None, fits=fits,
                          fit_flagged=jnp.asarray([False, True, False, False, False, False]), has_fits=True)
    source = dnl.regressor_source(dnl.Data(pipeline.ArraySource(data), None), state, loop, template)
    assert len(source) == 6 + 10
    first, view = source[0], source[6]
    assert set(first) == set(view)
    assert "image" not in first           # the two-stage regressor reads the maps, not the RGB
    np.testing.assert_array_equal(first["iuv"], data["iuv"][0])
    maps = np.full((6, SIZE, SIZE, 3), 7, np.uint8)      # the predictor's maps replace the labels
    source = dnl.regressor_source(dnl.Data(pipeline.ArraySource(data), None), state, loop, template, maps)
    np.testing.assert_array_equal(source[0]["iuv"], maps[0])
    np.testing.assert_array_equal(source[6]["iuv"], view["iuv"])
    assert view["keypoints"].shape == first["keypoints"].shape
    with pytest.raises(ValueError, match="needs the template"):
        dnl.regressor_source(dnl.Data(pipeline.ArraySource(data), None), state, loop)
    config.regressor.input = "rgb"
    with pytest.raises(ValueError, match="fit_views.per_fit"):
        experiment.loop_config(config)
    config.fit_views.per_fit = 0.0
    rgb = dnl.regressor_source(dnl.Data(pipeline.ArraySource(data), None), state, experiment.loop_config(config))
    np.testing.assert_array_equal(rgb[0]["image"], data["image"][0])
