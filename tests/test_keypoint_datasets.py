"""Tests for bodyjax.data.mpii: COCO person keypoints and MPII JSON → lifter arrays."""
from __future__ import annotations

import json
import os
import tempfile

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bodyjax.data import mpii

FUZZ = settings(max_examples=60, deadline=None, derandomize=True)

COCO_NAMES = ["nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
              "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip",
              "left_knee", "right_knee", "left_ankle", "right_ankle"]
MPII_NAMES = ["right_ankle", "right_knee", "right_hip", "left_hip", "left_knee", "left_ankle", "pelvis",
              "thorax", "upper_neck", "head_top", "right_wrist", "right_elbow", "right_shoulder",
              "left_shoulder", "left_elbow", "left_wrist"]
SMPL_NAMES = ["pelvis", "L_hip", "R_hip", "spine1", "L_knee", "R_knee", "spine2", "L_ankle", "R_ankle",
              "spine3", "L_foot", "R_foot", "neck", "L_collar", "R_collar", "head", "L_shoulder",
              "R_shoulder", "L_elbow", "R_elbow", "L_wrist", "R_wrist", "L_hand", "R_hand"]


# ---------------------------------------------------------------------------------------------
# COCO


def _coco_person(rng, ann_id, n_labelled=17, crowd=0):
    kp = np.zeros((17, 3))
    kp[:n_labelled, :2] = rng.uniform(0, 300, (n_labelled, 2)).round(1)
    kp[:n_labelled, 2] = rng.choice([1, 2], n_labelled)
    return {"id": ann_id, "image_id": 100 + ann_id, "iscrowd": crowd, "bbox": [1.0, 2.0, 50.0, 80.0],
            "num_keypoints": n_labelled, "keypoints": kp.reshape(-1).tolist(), "category_id": 1}


def test_coco_keypoints_parse_and_skip(tmp_path):
    rng = np.random.default_rng(0)
    anns = [_coco_person(rng, 1), _coco_person(rng, 2, n_labelled=5), _coco_person(rng, 3, crowd=1),
            _coco_person(rng, 4, n_labelled=2), _coco_person(rng, 5)]
    anns[4]["keypoints"] = anns[4]["keypoints"][:-3]          # 16 keypoints: malformed
    anns.append({"id": 6, "image_id": 1})                      # no keypoints
    anns.append("junk")
    path = tmp_path / "person_keypoints_val2017.json"
    path.write_text(json.dumps({"images": [], "annotations": anns, "categories": []}))
    data, report = mpii.load_coco_keypoints(path, min_keypoints=3)
    assert dict(report.skipped) == {"crowd": 1, "too_few_keypoints": 1, "bad_keypoints": 1,
                                    "missing_field": 1, "malformed": 1}
    assert report.kept == 2 and report.total == 7
    assert data["keypoints"].shape == (2, 17, 2) and data["visibility"].shape == (2, 17)
    np.testing.assert_array_equal(data["annotation_id"], [1, 2])
    np.testing.assert_array_equal(data["image_id"], [101, 102])
    for row, ann in zip(range(2), anns[:2]):
        kp = np.array(ann["keypoints"]).reshape(17, 3)
        vis = kp[:, 2] > 0
        np.testing.assert_array_equal(data["visibility"][row], vis)
        np.testing.assert_allclose(data["keypoints"][row][vis], kp[vis, :2], atol=1e-4)
        assert not data["keypoints"][row][~vis].any()


def test_coco_keypoints_file_errors(tmp_path):
    f = tmp_path / "k.json"
    f.write_text(json.dumps({"images": []}))
    with pytest.raises(ValueError, match="k.json.*'annotations'"):
        mpii.load_coco_keypoints(f)
    f.write_text("not json")
    with pytest.raises(ValueError, match="k.json"):
        mpii.load_coco_keypoints(f)
    empty = tmp_path / "e.json"
    empty.write_text(json.dumps({"annotations": []}))
    data, report = mpii.load_coco_keypoints(empty)
    assert data["keypoints"].shape == (0, 17, 2) and report.total == 0


# ---------------------------------------------------------------------------------------------
# MPII


def _mpii_person(rng, image="015601864.jpg", vis=None):
    joints = rng.uniform(1, 400, (16, 2)).round(1)
    vis = np.ones(16, int) if vis is None else np.asarray(vis)
    joints[vis == 0] = -1.0
    return {"image": image, "center": [200.0, 180.0], "scale": 2.5,
            "joints": joints.tolist(), "joints_vis": vis.tolist()}


def test_mpii_layout_and_mappings(tmp_path):
    rng = np.random.default_rng(1)
    vis = np.ones(16, int)
    vis[[9, 15]] = 0                                           # head top and left wrist unannotated
    people = [_mpii_person(rng), _mpii_person(rng, "a.jpg", vis), _mpii_person(rng, "b.jpg", np.zeros(16, int)),
              {"image": "c.jpg", "center": [1, 2], "scale": 1.0, "joints": [[1, 2]] * 15, "joints_vis": [1] * 15},
              {"image": "d.jpg", "center": [1, 2], "scale": -1.0, "joints": [[1, 2]] * 16, "joints_vis": [1] * 16},
              {"image": "e.jpg", "joints": [[1, 2]] * 16, "joints_vis": [1] * 16}]
    path = tmp_path / "mpii_annotations.json"
    path.write_text(json.dumps(people))

    native, report = mpii.load_mpii(path, keypoint_set="mpii16")
    assert dict(report.skipped) == {"too_few_keypoints": 1, "bad_keypoints": 1, "bad_scale": 1, "missing_field": 1}
    assert report.kept == 2
    raw = np.array(people[1]["joints"])
    np.testing.assert_allclose(native["keypoints"][1][vis > 0], raw[vis > 0] - 1.0, atol=1e-4)   # 1-based
    assert not native["keypoints"][1][vis == 0].any()
    np.testing.assert_array_equal(native["visibility"][1], vis)
    np.testing.assert_allclose(native["center"][0], [199.0, 179.0])
    np.testing.assert_array_equal(native["image"], ["015601864.jpg", "a.jpg"])
    np.testing.assert_allclose(native["scale"], [2.5, 2.5])

    zero_based, _ = mpii.load_mpii(path, keypoint_set="mpii16", one_based=False)
    np.testing.assert_allclose(zero_based["keypoints"][0], np.array(people[0]["joints"]), atol=1e-4)

    coco, _ = mpii.load_mpii(path, keypoint_set="coco17")
    assert coco["keypoints"].shape == (2, 17, 2)
    for name in COCO_NAMES:
        c = COCO_NAMES.index(name)
        if name in MPII_NAMES:
            m = MPII_NAMES.index(name)
            np.testing.assert_allclose(coco["keypoints"][:, c], native["keypoints"][:, m], err_msg=name)
            np.testing.assert_array_equal(coco["visibility"][:, c], native["visibility"][:, m], err_msg=name)
        else:                                                   # face points: absent in MPII
            assert not coco["visibility"][:, c].any() and not coco["keypoints"][:, c].any(), name
    assert coco["visibility"][1].sum() == 11                    # 12 limb joints minus the left wrist

    smpl, _ = mpii.load_mpii(path, keypoint_set="joints24")
    pairs = {"pelvis": "pelvis", "L_hip": "left_hip", "R_knee": "right_knee", "L_ankle": "left_ankle",
             "R_shoulder": "right_shoulder", "L_elbow": "left_elbow", "R_wrist": "right_wrist"}
    for ours, theirs in pairs.items():
        np.testing.assert_allclose(smpl["keypoints"][:, SMPL_NAMES.index(ours)],
                                   native["keypoints"][:, MPII_NAMES.index(theirs)], err_msg=ours)
    assert smpl["visibility"][0].sum() == 13
    for absent in ("spine1", "neck", "head", "L_hand", "R_foot", "L_collar"):
        assert not smpl["visibility"][:, SMPL_NAMES.index(absent)].any()


def test_mpii_file_errors(tmp_path):
    f = tmp_path / "m.json"
    f.write_text(json.dumps({"annolist": []}))
    with pytest.raises(ValueError, match="m.json.*JSON list"):
        mpii.load_mpii(f)
    f.write_text("[")
    with pytest.raises(ValueError, match="m.json"):
        mpii.load_mpii(f)
    with pytest.raises(ValueError, match="keypoint set"):
        mpii.load_mpii(f, keypoint_set="lsp14")


def test_keypoint_corpus_reads_both_layouts(tmp_path):
    rng = np.random.default_rng(2)
    mp = tmp_path / "mpii.json"
    mp.write_text(json.dumps([_mpii_person(rng), _mpii_person(rng, "b.jpg")]))
    corpus = mpii.load_keypoint_corpus(mp)
    native, _ = mpii.load_mpii(mp, keypoint_set="coco17")
    assert mpii.keypoint_file_layout(mp) == "mpii"
    assert corpus["keypoints"].shape == (2, 17, 2) and corpus["keypoint_visible"].shape == (2, 17)
    np.testing.assert_array_equal(corpus["keypoints"], native["keypoints"])
    np.testing.assert_array_equal(corpus["keypoint_visible"], native["visibility"])
    coco = tmp_path / "coco.json"
    coco.write_text(json.dumps({"annotations": [_coco_person(rng, 1), _coco_person(rng, 2)]}))
    assert mpii.keypoint_file_layout(coco) == "coco"
    data, _ = mpii.load_coco_keypoints(coco)
    c17 = mpii.load_keypoint_corpus(coco)
    np.testing.assert_array_equal(c17["keypoints"], data["keypoints"])
    j24 = mpii.load_keypoint_corpus(coco, keypoint_set="joints24")
    assert j24["keypoints"].shape == (2, 24, 2)
    for ours, theirs in (("L_hip", "left_hip"), ("R_wrist", "right_wrist"), ("L_ankle", "left_ankle")):
        np.testing.assert_array_equal(j24["keypoints"][:, SMPL_NAMES.index(ours)],
                                      data["keypoints"][:, COCO_NAMES.index(theirs)])
    assert not j24["keypoint_visible"][:, [SMPL_NAMES.index(n) for n in ("pelvis", "neck", "head")]].any()


def test_keypoint_corpus_errors_name_the_file(tmp_path):
    wrong = tmp_path / "wrong_shape.json"       # every person's joints have the wrong shape
    wrong.write_text(json.dumps([{"image": "a.jpg", "center": [1, 2], "scale": 1.0,
                                  "joints": [[1, 2, 3]] * 16, "joints_vis": [1] * 16},
                                 {"image": "b.jpg", "center": [1, 2], "scale": 1.0,
                                  "joints": [[1, 2]] * 15, "joints_vis": [1] * 15}]))
    with pytest.raises(ValueError, match=r"wrong_shape.json: no usable person.*bad_keypoints=2"):
        mpii.load_keypoint_corpus(wrong)
    coco = tmp_path / "short_coco.json"
    coco.write_text(json.dumps({"annotations": [{"id": 1, "keypoints": [1.0] * 50, "iscrowd": 0}]}))
    with pytest.raises(ValueError, match=r"short_coco.json: no usable person.*bad_keypoints=1"):
        mpii.load_keypoint_corpus(coco)
    fieldless = tmp_path / "fieldless.json"
    fieldless.write_text(json.dumps([{"name": "a"}, {"name": "b"}]))
    with pytest.raises(ValueError, match="fieldless.json: neither an MPII keypoint file"):
        mpii.load_keypoint_corpus(fieldless)
    no_annotations = tmp_path / "no_annotations.json"
    no_annotations.write_text(json.dumps({"images": []}))
    with pytest.raises(ValueError, match="no_annotations.json: neither.*'annotations'"):
        mpii.load_keypoint_corpus(no_annotations)
    text = tmp_path / "text.json"
    text.write_text("hello")
    with pytest.raises(ValueError, match="text.json: not a keypoint file"):
        mpii.load_keypoint_corpus(text)
    with pytest.raises(ValueError, match="short_coco.json: unknown keypoint set 'mpii16'"):
        mpii.load_keypoint_corpus(coco, keypoint_set="mpii16")
    with pytest.raises(FileNotFoundError, match="absent.json"):
        mpii.load_keypoint_corpus(tmp_path / "absent.json")


JUNK = st.one_of(st.none(), st.booleans(), st.text(max_size=3), st.floats(allow_nan=True, allow_infinity=True),
                 st.integers(-10**20, 10**20), st.lists(st.floats(allow_nan=True), max_size=17),
                 st.lists(st.lists(st.floats(allow_nan=True), max_size=3), max_size=17), st.just([]))


@FUZZ
@given(seed=st.integers(0, 100), field=st.sampled_from(["image", "center", "scale", "joints", "joints_vis"]),
       action=st.sampled_from(["delete", "junk", "element"]), junk=JUNK)
def test_mpii_malformed_entries_are_counted(seed, field, action, junk):
    person = _mpii_person(np.random.default_rng(seed))
    if action == "delete":
        del person[field]
    elif action == "junk" or not isinstance(person[field], list):
        person[field] = junk
    else:
        person[field][seed % len(person[field])] = junk
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "mpii.json")
        with open(path, "w") as f:
            json.dump([person, _mpii_person(np.random.default_rng(0))], f)
        data, report = mpii.load_mpii(path)
    assert report.total == 2 and report.kept + report.num_skipped == 2 and report.kept >= 1
    for key in ("keypoints", "visibility", "center", "scale"):
        assert np.all(np.isfinite(data[key])), key
    assert set(np.unique(data["visibility"])) <= {0.0, 1.0}
    assert np.all(data["scale"] > 0)


@FUZZ
@given(field=st.sampled_from(["keypoints", "iscrowd", "num_keypoints", "bbox"]), junk=JUNK)
def test_coco_malformed_keypoints_are_counted(field, junk):
    ann = _coco_person(np.random.default_rng(0), 1)
    ann[field] = junk
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "coco.json")
        with open(path, "w") as f:
            json.dump({"annotations": [ann]}, f)
        data, report = mpii.load_coco_keypoints(path)
    assert report.kept + report.num_skipped == 1
    assert np.all(np.isfinite(data["keypoints"])) and np.all(np.isfinite(data["bbox"]))
