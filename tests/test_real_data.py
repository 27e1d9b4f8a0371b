"""The real-data path end to end, on synthetic people written in the exact real formats.

bodyjax.data.export writes a synthetic split as DensePose-COCO, MPII and Human3.6M files; the real
loaders read them back and must give the synthetic originals (up to the stated rounding), the lifter
stage trains on the MPII file named by the config, and the Human3.6M evaluation of a tiny regressor
on the exported npz reproduces the loop's own evaluation of the same predictions.
"""
from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from bodyjax import body
from bodyjax.data import densepose_coco, export, h36m, mpii, pipeline, synthetic
from bodyjax.data.iuv import IUVIndex
from bodyjax.loop import checkpoints, experiment, h36m_eval
from bodyjax.loop import deform_and_learn as dnl
from configs import default

SIZE = 32
DP_DECIMALS = 2
KP_DECIMALS = 2
F32 = 1e-5   # float32 rounding of pixel coordinates below 100 px, with margin


@pytest.fixture(scope="module")
def template():
    return body.default_template("coco17")


@pytest.fixture(scope="module")
def splits(template):
    cfg = synthetic.SyntheticConfig(image_size=SIZE, max_points=40, num_points=(24, 40))
    return {"train": synthetic.make_split(template, cfg, seed=3, num_samples=6),
            "test": synthetic.make_split(template, cfg, seed=4, num_samples=4)}


@pytest.fixture(scope="module")
def exported(tmp_path_factory, splits, template):
    out = tmp_path_factory.mktemp("real_formats")
    paths = export.export_all(str(out), splits, template, image_format="png", dp_decimals=DP_DECIMALS,
                              kp_decimals=KP_DECIMALS)
    return out, paths


def _rows(records, i):
    return {k: np.asarray(v[i]) for k, v in records.items()}


# ---------------------------------------------------------------------------------------------
# DensePose-COCO


def test_densepose_coco_round_trip(exported, splits, template):
    """Points within the box quantisation, the same vertices through (I, U, V), the same keypoints."""
    out, paths = exported
    index = IUVIndex.from_template(template)
    worst, same, total = 0.0, 0, 0
    for split in ("train", "test"):
        records, report = densepose_coco.load_densepose_coco(
            paths[f"densepose_{split}"], paths[f"densepose_{split}_images"], index, image_size=SIZE,
            max_points=None)
        original = splits[split]
        assert report.kept == report.total == len(original["keypoints"]) and not report.skipped
        with open(paths[f"densepose_{split}"]) as f:
            anns = json.load(f)["annotations"]
        for i, (rec, ann) in enumerate(zip(records, anns)):
            src = _rows(original, i)
            mask = src["dense_mask"] > 0
            xy, vid = src["dense_xy"][mask], src["dense_vertex"][mask]
            assert rec["dense_xy"].shape == xy.shape
            # bound: |x' - x| <= 0.5 10^-d * w / 255 (rounded dp_x) + float32 rounding
            bound = 0.5 * 10.0 ** -DP_DECIMALS * np.array(rec["bbox"][2:]) / 255.0 + F32
            err = np.abs(rec["dense_xy"] - xy)
            assert np.all(err <= bound), (err.max(0), bound)
            worst = max(worst, float(np.max(err / bound)))
            # (I, U, V) are the vertex's own part and chart point on the body
            np.testing.assert_array_equal(ann["dp_I"], np.asarray(template.part_ids)[vid])
            np.testing.assert_array_equal(np.stack([ann["dp_U"], ann["dp_V"]], -1),
                                          np.asarray(template.uv, np.float64)[vid])
            back = rec["dense_vertex"]
            same += int(np.sum(back == vid))
            total += len(vid)
            # a different vertex found from (I, U, V) has the same part and chart point (a seam twin)
            diff = back != vid
            np.testing.assert_array_equal(np.asarray(template.part_ids)[back[diff]],
                                          np.asarray(template.part_ids)[vid[diff]])
            np.testing.assert_allclose(np.asarray(template.uv)[back[diff]], np.asarray(template.uv)[vid[diff]])
            # keypoints: labelled (v > 0) = visible or inside the image; coordinates as written
            inside = np.all((src["keypoints"] >= -0.5) & (src["keypoints"] <= SIZE - 0.5), -1)
            labelled = (src["keypoint_visible"] > 0) | inside
            np.testing.assert_array_equal(rec["keypoint_visible"], labelled)
            flags = np.asarray(ann["keypoints"]).reshape(17, 3)[:, 2]
            np.testing.assert_array_equal(flags == 2, src["keypoint_visible"] > 0)
            np.testing.assert_allclose(rec["keypoints"][labelled], src["keypoints"][labelled],
                                       atol=0.5 * 10.0 ** -KP_DECIMALS + F32, rtol=0)
            # the images are the records' (PNG)
            np.testing.assert_array_equal(densepose_coco.read_image(rec["image_path"]), src["image"])
    print(f"\nDensePose-COCO round trip: worst point error {worst:.3f} of the bound; "
          f"(I, U, V) -> same vertex for {same}/{total} points")
    assert same >= 0.95 * total


# ---------------------------------------------------------------------------------------------
# MPII and the lifter's corpus


def test_mpii_round_trip(exported, splits, template):
    out, paths = exported
    original = splits["train"]
    data, report = mpii.load_mpii(paths["mpii_train"], "coco17")
    assert report.kept == len(original["keypoints"])
    limbs = np.arange(5, 17)
    np.testing.assert_array_equal(data["visibility"][:, limbs], original["keypoint_visible"][:, limbs])
    vis = original["keypoint_visible"][:, limbs] > 0
    np.testing.assert_allclose(data["keypoints"][:, limbs][vis], original["keypoints"][:, limbs][vis],
                               atol=0.5 * 10.0 ** -KP_DECIMALS + F32, rtol=0)
    assert not data["visibility"][:, :5].any()
    # the pelvis (joints24) is the ground-truth body's pelvis joint, projected
    j24, _ = mpii.load_mpii(paths["mpii_train"], "joints24")
    joints, _ = export.gt_points(template, original, h36m.default_body_h36m_map(template).vertex_ids)
    pelvis = export.project(joints, original)[:, 0]
    assert np.all(j24["visibility"][:, 0] == 1)
    np.testing.assert_allclose(j24["keypoints"][:, 0], pelvis, atol=0.5 * 10.0 ** -KP_DECIMALS + F32, rtol=0)


def test_keypoint_corpus_reads_both_layouts(exported, splits, tmp_path):
    out, paths = exported
    corpus = mpii.load_keypoint_corpus(paths["mpii_train"], "coco17")
    assert corpus["keypoints"].shape == (6, 17, 2) and corpus["keypoint_visible"].dtype == np.float32
    coco = mpii.load_keypoint_corpus(paths["densepose_train"], "coco17")    # a COCO keypoint file
    np.testing.assert_allclose(coco["keypoints"][coco["keypoint_visible"] > 0],
                               splits["train"]["keypoints"][coco["keypoint_visible"] > 0], atol=0.01)
    j24 = mpii.load_keypoint_corpus(paths["densepose_train"], "joints24")
    np.testing.assert_array_equal(j24["keypoint_visible"][:, 18], coco["keypoint_visible"][:, 5])  # L_elbow
    bad = tmp_path / "instances.json"
    bad.write_text(json.dumps({"images": [], "categories": []}))
    with pytest.raises(ValueError, match="instances.json.*neither an MPII keypoint file"):
        mpii.load_keypoint_corpus(bad)
    bad.write_text(json.dumps([{"file": "a.jpg"}]))
    with pytest.raises(ValueError, match="instances.json.*neither"):
        mpii.load_keypoint_corpus(bad)
    with pytest.raises(FileNotFoundError, match="nowhere.json"):
        mpii.load_keypoint_corpus(tmp_path / "nowhere.json")


def _loop_config(**overrides):
    config = default.get_config("smoke")
    config.data.image_size = SIZE
    config.regressor.image_size = SIZE
    config.regressor.batch_size = 6
    config.loop.chunk = 8
    config.augment.enabled = False
    for key, value in overrides.items():
        node = config
        *path, leaf = key.split(".")
        for p in path:
            node = node[p]
        node[leaf] = value
    return config


@pytest.fixture(scope="module")
def lifter_runs(exported, splits, template):
    """The loop's lifter stage with config.data.lifter_corpus = the exported MPII file, in the modes
    'corpus' and 'both': ``{mode: (state, stats)}``."""
    out, paths = exported
    data_train = pipeline.ArraySource(splits["train"])
    config = _loop_config(**{"data.lifter_corpus": paths["mpii_train"], "lifter.batch_size": 6})
    corpus = experiment.load_corpus(config, template)
    data = dnl.Data(data_train, pipeline.ArraySource(splits["test"]), corpus)
    runs, start = {}, None
    for mode in ("corpus", "both"):
        config.loop.lifter_keypoints = mode
        loop = experiment.loop_config(config)
        if start is None:
            start = dnl.init_state(0, template, len(data_train), loop)
            start, _ = dnl.run_stage(start, template, data, loop)           # dense: nothing for RGB
            assert dnl.STAGES[int(start.stage)] == "lifter"
        runs[mode] = dnl.run_stage(start, template, data, loop)
    return runs


def test_lifter_stage_trains_on_the_configured_corpus(lifter_runs, exported):
    """config.data.lifter_corpus (the exported MPII file) → load_corpus → the loop's lifter stage."""
    for mode, expected in (("corpus", 6), ("both", 12)):
        state, stats = lifter_runs[mode]
        assert stats["lifter/poses"] == expected
        assert all(np.isfinite(v) for v in stats.values())
        assert dnl.STAGES[int(state.stage)] == "registration"


# ---------------------------------------------------------------------------------------------
# Human3.6M


def test_h36m_round_trip(exported, splits, template):
    out, paths = exported
    joint_map = h36m.default_body_h36m_map(template)
    everything = h36m.load_h36m(paths["h36m_npz"], "all")
    for split, rows in (("train", slice(0, 6)), ("test", slice(6, 10))):
        data = h36m.load_h36m(paths["h36m_npz"], split)
        subjects, actions = export.h36m_assignment(split, len(splits[split]["keypoints"]))
        np.testing.assert_array_equal(data["subject"], subjects)
        assert [h36m.parse_action(n) for n in data["imgname"]] == actions
        gt17, valid = h36m.h36m17_from_spin24(data["S"])
        ref, ref2d = export.h36m_ground_truth(template, splits[split], joint_map)
        assert np.all(valid == 1)
        np.testing.assert_allclose(gt17, ref, atol=1e-6)
        np.testing.assert_array_equal(everything["imgname"][rows], data["imgname"])
        # the crop of each frame is the record's image, pixel for pixel
        boxes = h36m_eval.person_boxes(data["center"], data["scale"])
        crops = h36m_eval.crop_frames(paths["h36m_images"], data["imgname"], boxes, SIZE)
        np.testing.assert_array_equal(crops, splits[split]["image"])
        # 2D joints on the canvas: the projections moved by the paste offset
        part17, _ = h36m.h36m17_from_spin24(data["part"])
        offset = np.asarray(data["center"]) - (SIZE - 1) / 2.0
        np.testing.assert_allclose(part17 - offset[:, None], ref2d, atol=1e-3)


def test_h36m_evaluation_reproduces_the_loop(exported, splits, template, lifter_runs, tmp_path):
    """evaluate_run on the exported npz == the loop's pose_metrics on the same predictions."""
    out, paths = exported
    config = _loop_config()
    loop = experiment.loop_config(config)
    state = lifter_runs["corpus"][0]           # a run's state after its lifter stage
    # weights that are not the initial ones (a trained regressor's stand-in: the evaluation, not the
    # training, is under test, and a training step would cost a compilation of its own)
    rng = np.random.default_rng(3)
    moved = jax.tree_util.tree_map(lambda a: a + 0.01 * rng.standard_normal(np.shape(a)).astype(np.float32),
                                   state.regressor.params)
    state = state.replace(regressor=state.regressor.replace(params=moved, step=1))
    workdir = tmp_path / "run"
    checkpoints.save(checkpoints.manager(str(workdir)), 4, state)

    lines = []
    results = h36m_eval.evaluate_run(config, str(workdir), paths["h36m_npz"], paths["h36m_images"],
                                     progress=False, report=lines.append)
    assert results["checkpoint_step"] == 4 and results["frames"] == 4
    assert json.loads((workdir / "h36m_eval.json").read_text())["h36m17"] == results["h36m17"]
    assert "Ours (DensePose)" in lines[-1] and "This run (17 joints)" in lines[-1]

    # the loop's evaluation of the same test records, by the same weights read back from the checkpoint
    # (restored into the in-memory state: the prediction shares evaluate_run's compilation)
    state, _ = checkpoints.restore_newest(checkpoints.manager(str(workdir)), state)
    joint_map = h36m.default_body_h36m_map(template)
    pred = dnl.predict_records(state, template, splits["test"], loop, with_vertices=True)
    pred17 = h36m_eval.prediction_joints(pred, joint_map)
    saved = np.load(workdir / "h36m_predictions.npz")
    np.testing.assert_allclose(saved["pred_h36m17"], pred17, atol=1e-6)
    gt17, _ = export.h36m_ground_truth(template, splits["test"], joint_map)
    canonical = results["canonical"]["h36m17"]["sum_mm"] / 1000.0
    ours = dnl.pose_metrics(pred17, gt17, h36m.H36M17_PARENTS, canonical)
    for k in ("mpjpe", "mpjpe_root", "pa_mpjpe"):
        assert results["h36m17"]["overall"][k] == pytest.approx(ours[k], abs=1e-3), k
    # the canonical skeleton is that of the training rows (the exported training people)
    train17, _ = export.h36m_ground_truth(template, splits["train"], joint_map)
    subjects, _ = export.h36m_assignment("train", 6)
    ref = h36m.canonical_skeleton(train17, subjects, h36m.H36M17_PARENTS)
    assert canonical == pytest.approx(ref["sum"], rel=1e-6)
    print(f"\nH36M evaluation of the exported npz: {results['h36m17']['overall']} vs the loop's {ours}")


def test_evaluate_run_errors(exported, template, tmp_path):
    out, paths = exported
    config = _loop_config()
    with pytest.raises(FileNotFoundError, match="checkpoints"):
        h36m_eval.evaluate_run(config, str(tmp_path / "nothing"), paths["h36m_npz"], paths["h36m_images"],
                               progress=False)
    smpl = _loop_config(**{"body.kind": "smpl"})
    with pytest.raises(ValueError, match="config.body.h36m_regressor"):
        h36m_eval.body_joint_map(smpl, template)
    # 'joints': the joint + vertex mapping on any body (here the default one: the same map)
    mapped = h36m_eval.body_joint_map(_loop_config(**{"body.kind": "smpl", "body.h36m_regressor": "joints"}),
                                      template)
    np.testing.assert_array_equal(mapped.vertex_ids, h36m_eval.body_joint_map(config, template).vertex_ids)
