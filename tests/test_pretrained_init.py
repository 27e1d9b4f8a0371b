"""config.regressor.pretrained: the loop's regressor starts round 1 from torchvision-layout weights."""
from __future__ import annotations

import dataclasses
import json

import jax
import numpy as np
import pytest

from bodyjax import body, iuv_net, pretrained, regressor
from bodyjax.data import sample, synthetic
from bodyjax.loop import deform_and_learn as dnl
from bodyjax.loop import epochs
from bodyjax.loop import experiment
from configs import default

SIZE = 32


def _layout_and_weights(depth, width, seed):
    # the torchvision state-dict layout and random weights of tests/test_regressor.py
    from test_regressor import _random_state_dict, _torchvision_layout  # noqa: PLC0415

    return _random_state_dict(_torchvision_layout(depth, width=width), seed=seed)


def _config(path):
    config = default.get_config("smoke")
    config.data.image_size = SIZE
    config.regressor.image_size = SIZE
    config.regressor.depth = 18
    config.regressor.width = 8
    config.regressor.input = "rgb"        # ImageNet weights are for RGB (the paper's regressor)
    config.fit_views.per_fit = 0.0        # (the rendered views are label maps)
    config.regressor.pretrained = str(path)
    return config


def _first_conv(reg_state, images):
    """The backbone's first convolution output (NHWC) on ``images`` (uint8), from the network itself."""
    x = regressor.network_input("rgb", image=images)
    _, inter = reg_state.apply_fn({"params": reg_state.params, "batch_stats": reg_state.batch_stats}, x,
                                  train=False, capture_intermediates=True, mutable=["intermediates"])
    return np.asarray(inter["intermediates"]["backbone"]["conv1"]["__call__"][0])


def test_round_one_starts_from_the_pretrained_backbone(tmp_path):
    torch = pytest.importorskip("torch")
    sd = _layout_and_weights(18, 8, seed=5)
    path = tmp_path / "resnet18_w8.npz"
    np.savez(path, **sd)
    template = body.default_template()
    loop = experiment.loop_config(_config(path))
    state = dnl.init_state(0, template, 4, loop)

    images = np.random.default_rng(0).integers(0, 256, (2, SIZE, SIZE, 3), dtype=np.uint8)
    ours = _first_conv(state.regressor, images)
    x = np.transpose(np.asarray(regressor.preprocess(images)), (0, 3, 1, 2))
    with torch.no_grad():
        ref = torch.nn.functional.conv2d(torch.from_numpy(np.ascontiguousarray(x)),
                                         torch.from_numpy(sd["conv1.weight"]), stride=2, padding=3).numpy()
    np.testing.assert_allclose(ours, np.transpose(ref, (0, 2, 3, 1)), rtol=1e-4, atol=1e-4)
    kernel = np.transpose(sd["conv1.weight"], (2, 3, 1, 0))
    np.testing.assert_array_equal(state.regressor.params["backbone"]["conv1"]["kernel"], kernel)
    # the head is the configured one (rest-pose bias), not from the file
    np.testing.assert_allclose(state.regressor.params["head"]["bias"],
                               regressor.rest_head(loop.regressor.pose_head, loop.regressor.typical_scale))

    # a training step starts from these weights: Adam's first step moves each weight by at most lr
    cfg = synthetic.SyntheticConfig(image_size=SIZE, max_points=32, num_points=(16, 32))
    records = synthetic.make_split(template, cfg, seed=1, num_samples=4)
    records.update(sample.params_to_record(sample.params_from_record(records), "target"))
    records["target_weight"] = np.ones(4, np.float32)
    lr = loop.regressor.learning_rate
    new, stats = regressor.train_step(state.regressor, sample.to_batch(records, with_gt=False), template)
    assert np.isfinite(float(stats["loss"])) and int(new.step) == 1
    moved = np.abs(np.asarray(new.params["backbone"]["conv1"]["kernel"]) - kernel)
    assert 0 < moved.max() <= 1.01 * lr


def test_pretrained_errors_name_the_field_and_the_file(tmp_path):
    loop = experiment.loop_config(_config(""))
    state = regressor.create_state(0, loop.regressor)
    missing = dataclasses.replace(loop.regressor, pretrained=str(tmp_path / "nowhere.npz"))
    with pytest.raises(FileNotFoundError, match=r"config\.regressor\.pretrained.*nowhere\.npz"):
        dnl.with_pretrained_backbone(state, missing)
    path = tmp_path / "resnet34.npz"
    np.savez(path, **_layout_and_weights(34, 8, seed=1))
    deeper = dataclasses.replace(loop.regressor, pretrained=str(path))
    with pytest.raises(ValueError, match=r"config\.regressor\.pretrained: .*resnet34\.npz does not match the "
                                         r"configured ResNet18 \(width 8"):
        dnl.with_pretrained_backbone(state, deeper)
    bad = tmp_path / "weights.pt"
    bad.write_bytes(b"not a weight file")
    with pytest.raises(ValueError, match=r"config\.regressor\.pretrained: cannot read .*weights\.pt"):
        dnl.with_pretrained_backbone(state, dataclasses.replace(loop.regressor, pretrained=str(bad)))
    # no path: unchanged
    assert dnl.with_pretrained_backbone(state, loop.regressor) is state


def test_the_shipped_regressor_is_the_default_network_and_loads():
    """configs/default.py's regressor starts from the shipped asset: the whole network, made for it."""
    loop = experiment.loop_config(default.get_config())
    assert loop.regressor.pretrained == regressor.PRETRAINED_IUV_48
    fresh = regressor.create_state(0, loop.regressor)
    state = dnl.with_pretrained_backbone(fresh, loop.regressor)
    with np.load(regressor.PRETRAINED_IUV_48) as f:
        stored = f["params/head/kernel"].astype(np.float32)
        info = f["__info__"]
    np.testing.assert_array_equal(state.params["head"]["kernel"], stored)
    assert "2D only" in str(info)
    # the smoke variant's smaller network does not take it (and does not ask for it)
    assert experiment.loop_config(default.get_config("smoke")).regressor.pretrained == ""
    # :bench's, trained on from it on other people's fits, is made for the same network and says so
    bench = experiment.loop_config(default.get_config("bench")).regressor
    fits = regressor.load_params(regressor.create_state(0, bench, abstract=True), bench.pretrained)
    with np.load(bench.pretrained) as f:
        info = json.loads(str(f["__info__"]))
    assert info["flags"]["targets"] == "fits" and info["labels"].startswith("2D only")
    assert info["round"]["registration/train_pa_mpjpe"] < 60.0
    assert not np.array_equal(np.asarray(fits.params["head"]["kernel"]), stored)


def test_the_loop_fills_the_shipped_networks_without_initialising_them():
    """A fresh run's regressor and part predictor, read whole from the shipped files, equal the files
    loaded into initialised networks (weights, BatchNorm statistics, Adam's state), and their
    random initialisations (seconds of compilation each) are never compiled."""
    from compilations import recorded  # noqa: PLC0415

    loop = experiment.loop_config(default.get_config())
    key = jax.random.PRNGKey(5)
    for cfg, initial, reference in (
            (loop.regressor, dnl._initial_regressor,
             lambda: dnl.with_pretrained_backbone(regressor.create_state(key, loop.regressor), loop.regressor)),
            (loop.iuv_net, dnl._initial_iuv_net,
             lambda: iuv_net.load_params(iuv_net.create_state(key, loop.iuv_net), loop.iuv_net.pretrained))):
        assert cfg.pretrained
        with recorded() as names:
            got = initial(key, cfg)
        assert "init_network" not in names, names
        want = reference()
        leaves = lambda s: jax.tree_util.tree_leaves((s.params, getattr(s, "batch_stats", None), s.opt_state, s.step))  # noqa: E731
        assert jax.tree_util.tree_structure(got.opt_state) == jax.tree_util.tree_structure(want.opt_state)
        for a, b in zip(leaves(got), leaves(want), strict=True):
            assert np.asarray(a).dtype == np.asarray(b).dtype
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # the abstract state is only shapes: the variables of the network, nothing computed
    abstract = regressor.create_state(0, loop.regressor, abstract=True)
    real = jax.eval_shape(lambda: regressor.create_state(0, loop.regressor).params)
    assert all(isinstance(v, jax.ShapeDtypeStruct) for v in jax.tree_util.tree_leaves(abstract.params))
    assert jax.tree_util.tree_map(lambda v: (v.shape, v.dtype), abstract.params) == \
        jax.tree_util.tree_map(lambda v: (v.shape, v.dtype), real)


def test_pretraining_tool_writes_a_loadable_regressor_from_2d_labels(tmp_path):
    """tools/pretrain_regressor.py at a tiny size: its file loads into the matching network, and
    its records carry no parameter target (weight 0: the 2D terms of eq. 13 alone)."""
    import sys  # noqa: PLC0415

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1] / "tools"))
    import pretrain_regressor  # noqa: PLC0415

    template = body.default_template()
    records = synthetic.make_split(template, synthetic.SyntheticConfig(image_size=32, max_points=16,
                                                                       num_points=(8, 16)), seed=3, num_samples=2)
    marked = pretrain_regressor.with_rest_targets({k: records[k] for k in pretrain_regressor.FIELDS}, template)
    np.testing.assert_array_equal(marked["target_weight"], 0.0)
    out = tmp_path / "reg.npz"
    info = pretrain_regressor.main(["--out", str(out), "--data-dir", str(tmp_path / "data"), "--images", "16",
                                    "--held-out", "8", "--data-size", "32", "--image-size", "32", "--width", "8",
                                    "--epochs", "1", "--batch-size", "8", "--maps", "labels"])
    assert np.isfinite(info["held_out_keypoint_px"]) and info["flags"]["maps"] == "labels"
    config = regressor.RegressorConfig(depth=18, width=8, image_size=32, input="iuv")
    state = regressor.load_params(regressor.create_state(0, config), str(out))
    assert int(state.step) == 0

    # --targets fits: deform-and-learn's round 1 on the pool, from that file, to another file
    with pytest.raises(SystemExit):  # no work directory
        pretrain_regressor.main(["--targets", "fits", "--init", str(out), "--out", str(tmp_path / "f.npz")])
    fits_out, workdir = tmp_path / "fits.npz", tmp_path / "round"
    argv = ["--targets", "fits", "--variant", "smoke", "--init", str(out), "--out", str(fits_out),
            "--workdir", str(workdir), "--data-dir", str(tmp_path / "data"), "--images", "16", "--held-out", "8",
            "--data-size", "32", "--image-size", "32", "--width", "8", "--epochs", "1", "--batch-size", "8"]
    with pytest.raises(SystemExit):  # :smoke has no pretrained predictor, and the round does not train one
        pretrain_regressor.main(argv)
    predictor = tmp_path / "predictor.npz"   # a 32-px predictor (untrained: the maps' quality is not tested)
    smoke_iuv = experiment.loop_config(default.get_config("smoke")).iuv_net
    iuv_net.save_params(str(predictor), iuv_net.create_state(0, smoke_iuv), {"test": "untrained"})
    argv += ["--iuv-net", str(predictor)]
    fits_info = pretrain_regressor.main(argv)
    row = fits_info["round"]
    assert fits_info["predictor"]["file"] == str(predictor)   # the maps' predictor is recorded
    assert row["round"] == 1 and np.isfinite(row["registration/train_pa_mpjpe"])
    assert np.isfinite(row["regressor/test_pa_mpjpe"])
    # the file is the round's regressor (trained on the round's fits), in float16, not its start
    round_state, _ = pretrain_regressor.restore_round(
        pretrain_regressor.fits_config(pretrain_regressor.parse_args(argv)), str(workdir))
    assert int(round_state.round) == 1 and int(round_state.regressor.step) > 0
    fitted = regressor.load_params(regressor.create_state(0, config), str(fits_out))
    for a, b in zip(jax.tree_util.tree_leaves((fitted.params, fitted.batch_stats)),
                    jax.tree_util.tree_leaves((round_state.regressor.params, round_state.regressor.batch_stats))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b).astype(np.float16).astype(np.float32))
    moved = [float(np.max(np.abs(np.asarray(a) - np.asarray(c))))
             for a, c in zip(jax.tree_util.tree_leaves(fitted.params), jax.tree_util.tree_leaves(state.params))]
    assert max(moved) > 1e-3

    # --fits-from: the same round on the first one's fits re-runs only the regressor stage and the
    # evaluation, and writes the same file to the bit (round 1's fits and lifter do not read the regressor)
    again, rewound = tmp_path / "again.npz", tmp_path / "again"
    argv2 = [str(again) if a == str(fits_out) else str(rewound) if a == str(workdir) else a for a in argv]
    info2 = pretrain_regressor.main(argv2 + ["--fits-from", str(workdir)])
    assert info2["fits_from"] == str(workdir) and "fits_from" not in info2["flags"]
    assert info2["flags"] == fits_info["flags"]
    with np.load(fits_out) as a, np.load(again) as b:
        assert set(a.files) == set(b.files)
        for k in a.files:
            if k != "__info__":
                np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    for k in ("registration/train_pa_mpjpe", "regressor/test_pa_mpjpe", "baseline/mean_fit_pa_mpjpe"):
        assert info2["round"][k] == row[k], k
    assert "time/registration_s" in json.load(open(rewound / "metrics.json"))[-1]
    # ... and with another predictor's maps, none flipped (the default: half): the same fits, another
    # regressor
    other, other_out = tmp_path / "other_predictor.npz", tmp_path / "other.npz"
    iuv_net.save_params(str(other), iuv_net.create_state(1, smoke_iuv), {"test": "untrained, seed 1"})
    argv3 = [str(other_out) if a == str(again) else str(tmp_path / "other") if a == str(rewound)
             else str(other) if a == str(predictor) else a for a in argv2]
    assert fits_info["flags"]["map_flip_prob"] == 0.5
    info3 = pretrain_regressor.main(argv3 + ["--fits-from", str(workdir), "--map-flip-prob", "0"])
    assert info3["predictor"]["file"] == str(other) and info3["flags"]["map_flip_prob"] == 0.0
    assert info3["round"]["registration/train_pa_mpjpe"] == row["registration/train_pa_mpjpe"]
    with np.load(again) as a, np.load(other_out) as b:
        assert any(not np.array_equal(a[k], b[k]) for k in a.files if k != "__info__")
    with pytest.raises(SystemExit):
        pretrain_regressor.main(argv3 + ["--map-flip-prob", "1.5"])
    with pytest.raises(ValueError, match="another seed"):
        pretrain_regressor.main([a if a != str(rewound) else str(tmp_path / "x") for a in argv2]
                                + ["--fits-from", str(workdir), "--seed", "11"])
    with pytest.raises(ValueError, match="no checkpoints"):
        pretrain_regressor.main([a if a != str(rewound) else str(tmp_path / "y") for a in argv2]
                                + ["--fits-from", str(tmp_path / "data")])

    # the table's start baseline is the --init network itself on the round's test maps, scored apart
    round_config = pretrain_regressor.fits_config(pretrain_regressor.parse_args(argv))
    template = experiment.load_template(round_config)
    data = experiment.load_data(round_config, str(workdir), template)
    test = epochs.read(data.test, np.arange(len(data.test)), ("image", "gt_joints3d"))
    maps = np.asarray(iuv_net.predict(round_state.iuv_net, test["image"]))
    start = regressor.predict(state, template, iuv=maps, with_vertices=False)
    expected = dnl.pose_metrics(start.joints, test["gt_joints3d"], template.parents,
                                dnl.canonical_bone_sum(template))["pa_mpjpe"]
    assert row["baseline/start_pa_mpjpe"] == pytest.approx(expected, rel=1e-4)
    assert abs(row["baseline/start_pa_mpjpe"] - row["regressor/test_pa_mpjpe"]) > 1e-3


def test_predictor_pretraining_tool_records_its_init_file(tmp_path):
    """tools/pretrain_iuv_net.py at a tiny size, twice: the second stage starts from the first's file
    (``--init``, here overwritten by ``--out`` as when the shipped asset is rebuilt in place), moves
    its weights, and keeps the first stage's record in ``init_info``."""
    import sys  # noqa: PLC0415

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1] / "tools"))
    import pretrain_iuv_net  # noqa: PLC0415

    out = tmp_path / "iuv.npz"
    common = ["--out", str(out), "--data-dir", str(tmp_path / "data"), "--images", "16", "--held-out", "8",
              "--image-size", "32", "--width", "8", "--steps", "2", "--batch-size", "8", "--eval-every", "1"]
    first = pretrain_iuv_net.main(common)
    assert "init_info" not in first and first["flags"]["init"] in (None, "")
    config = iuv_net.IUVNetConfig(image_size=32, width=8)
    before = iuv_net.load_params(iuv_net.create_state(0, config), str(out))
    second = pretrain_iuv_net.main(common + ["--init", str(out), "--lr", "1e-3"])
    with np.load(out) as f:
        stored = json.loads(str(f["__info__"]))
    assert stored["init_info"] == json.loads(json.dumps({k: v for k, v in first.items()}))
    assert second["flags"]["init"] == str(out) and second["flags"]["lr"] == 1e-3
    after = iuv_net.load_params(iuv_net.create_state(0, config), str(out))
    leaves = zip(jax.tree_util.tree_leaves(after.params), jax.tree_util.tree_leaves(before.params))
    assert max(float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in leaves) > 0


@pytest.mark.parametrize("targets, shipped", [("2d", regressor.PRETRAINED_IUV_48),
                                              ("fits", regressor.PRETRAINED_IUV_64_FITS)])
def test_pretraining_tool_defaults_are_the_shipped_files_flags(targets, shipped):
    """tools/pretrain_regressor.py with only ``--targets`` (and the fits stage's required
    ``--workdir``) is the command that made the shipped file: every flag the file records, except
    where the output and the work directory go, is the tool's default."""
    import sys  # noqa: PLC0415

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1] / "tools"))
    import pretrain_regressor  # noqa: PLC0415

    recorded = pretrained.read_weights(shipped, "shipped", "regressor")[1]["flags"]
    argv = ["--targets", targets] + (["--workdir", "unused"] if targets == "fits" else [])
    args = vars(pretrain_regressor.parse_args(argv))
    args["init"] = pretrain_regressor.repo_relative(args["init"])
    assert recorded.get("targets", "2d") == targets
    differing = {k: (v, args.get(k)) for k, v in recorded.items() if args.get(k, "2d") != v}
    assert not differing, f"recorded flag: (shipped, tool default) = {differing}"
