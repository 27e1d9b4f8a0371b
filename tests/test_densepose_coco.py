"""Tests for bodyjax.data.iuv and bodyjax.data.densepose_coco on small files in the exact format."""
from __future__ import annotations

import json
import math
import os
import tempfile

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bodyjax import body
from bodyjax.data import densepose_coco as dpc
from bodyjax.data import sample as sample_lib
from bodyjax.data import transforms
from bodyjax.data.iuv import IUVIndex

FUZZ = settings(max_examples=60, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def template():
    return body.default_template()


@pytest.fixture(scope="module")
def index(template):
    return IUVIndex.from_template(template, backend="numpy")


@pytest.fixture(scope="module")
def table(template):
    """(V, 3) [I, U, V] of the template, float64."""
    return np.concatenate([np.asarray(template.part_ids, np.float64)[:, None],
                           np.asarray(template.uv, np.float64)], axis=1)


def _reference_lookup(table, parts, uv):
    """Brute force over ALL rows with the part's rows masked in (float64, written independently)."""
    d2 = ((uv[:, None, :] - table[None, :, 1:]) ** 2).sum(-1)
    d2 = np.where(table[None, :, 0] == parts[:, None], d2, np.inf)
    return d2.argmin(1), d2.min(1)


# ---------------------------------------------------------------------------------------------
# IUVIndex


@pytest.mark.parametrize("backend", ["numpy", "scipy"])
def test_every_vertex_maps_back_to_itself(template, table, backend):
    idx = IUVIndex.from_template(template, backend=backend)
    assert idx.backend == backend
    ids = idx.lookup(table[:, 0], table[:, 1:])
    np.testing.assert_array_equal(ids, np.arange(template.num_vertices))


@pytest.mark.parametrize("backend", ["numpy", "scipy"])
def test_lookup_is_the_nearest_vertex_of_the_same_part(template, table, backend):
    rng = np.random.default_rng(0)
    parts = rng.integers(1, 25, 300).astype(np.float64)
    uv = rng.uniform(0, 1, (300, 2))
    ids = IUVIndex.from_template(template, backend=backend).lookup(parts, uv)
    _, best = _reference_lookup(table, parts, uv)
    np.testing.assert_array_equal(table[ids, 0], parts)
    np.testing.assert_allclose(((uv - table[ids, 1:]) ** 2).sum(-1), best, rtol=1e-12, atol=1e-15)


def test_runtime_works_without_scipy(monkeypatch, template, table):
    from bodyjax.data import iuv
    monkeypatch.setattr(iuv, "_scipy_kdtree", lambda: None)
    idx = IUVIndex.from_template(template)                       # 'auto' falls back to numpy
    assert idx.backend == "numpy"
    np.testing.assert_array_equal(idx.lookup(table[::97, 0], table[::97, 1:]), np.arange(0, len(table), 97))
    with pytest.raises(ValueError, match="scipy"):
        IUVIndex.from_template(template, backend="scipy")


def test_invalid_points_raise_or_are_masked(index):
    parts = np.array([1.0, 0.0, 25.0, 2.5, 3.0, 4.0, np.nan])
    uv = np.array([[0.5, 0.5], [0.5, 0.5], [0.5, 0.5], [0.5, 0.5], [1.2, 0.5], [np.nan, 0.1], [0.2, 0.2]])
    with pytest.raises(ValueError, match="point 1 is invalid"):
        index.lookup(parts, uv)
    ids = index.lookup(parts, uv, strict=False)
    assert ids[0] >= 0 and np.all(ids[1:] == -1)
    np.testing.assert_array_equal(index.valid(parts, uv), [True] + [False] * 6)


def test_iuv_table_with_seam_duplicates_and_smpl_like_bodies():
    # Two charts hold vertex 7 (a seam), one part has no vertex at all.
    tbl = np.array([[1, 0.1, 0.1], [1, 0.9, 0.9], [2, 0.5, 0.5], [2, 0.0, 1.0]])
    idx = IUVIndex.from_iuv_table(tbl, vertex_ids=np.array([3, 7, 7, 9]), backend="numpy")
    np.testing.assert_array_equal(idx.lookup([1, 1, 2, 2], [[0, 0], [1, 1], [0.6, 0.4], [0.1, 0.9]]), [3, 7, 7, 9])
    assert idx.num_vertices == 10 and idx.parts == (1, 2)
    assert idx.lookup([5], [[0.5, 0.5]], strict=False)[0] == -1

    class SmplLike:           # an SMPL model exposes its table as `densepose_iuv`
        densepose_iuv = tbl
    np.testing.assert_array_equal(IUVIndex.from_body(SmplLike()).lookup([2], [[0.4, 0.6]]), [2])
    with pytest.raises(ValueError, match="densepose_iuv"):
        IUVIndex.from_body(object())
    with pytest.raises(ValueError, match="1..24"):
        IUVIndex.from_iuv_table([[0, 0.5, 0.5]])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        IUVIndex.from_iuv_table([[1, 1.5, 0.5]])


# ---------------------------------------------------------------------------------------------
# DensePose-COCO fixture in the exact format

IMAGES = [
    {"id": 1, "file_name": "COCO_train2014_000000000001.jpg", "width": 160, "height": 120},
    {"id": 2, "file_name": "COCO_train2014_000000000002.png", "width": 100, "height": 140},
    {"id": 3, "width": 10, "height": 10},   # broken entry: no file_name
]


def _keypoints(rng, bbox, n_visible=12):
    kp = np.zeros((17, 3))
    kp[:, 0] = bbox[0] + rng.uniform(0, bbox[2], 17)
    kp[:, 1] = bbox[1] + rng.uniform(0, bbox[3], 17)
    kp[:, 2] = 2
    kp[n_visible:, :] = 0                      # unlabelled: (0, 0, 0) as in COCO
    kp[3, 2] = 1                               # labelled but occluded
    return np.round(kp, 2).reshape(-1).tolist()


def _dense(table, vertex_ids, rng):
    """dp_* lists placing the given vertices' own (I, U, V) at random box-frame positions."""
    return {"dp_x": np.round(rng.uniform(0, 255, len(vertex_ids)), 3).tolist(),
            "dp_y": np.round(rng.uniform(0, 255, len(vertex_ids)), 3).tolist(),
            "dp_I": table[vertex_ids, 0].tolist(),
            "dp_U": table[vertex_ids, 1].tolist(),
            "dp_V": table[vertex_ids, 2].tolist()}


def _annotation(ann_id, image_id, bbox, table, vertex_ids, rng, **extra):
    ann = {"id": ann_id, "image_id": image_id, "category_id": 1, "iscrowd": 0, "area": bbox[2] * bbox[3],
           "bbox": list(bbox), "keypoints": _keypoints(rng, bbox), "num_keypoints": 12,
           "dp_masks": [{"size": [256, 256], "counts": "0"}] * 14}
    ann.update(_dense(table, vertex_ids, rng))
    ann.update(extra)
    return ann


def _build_json(table, rng):
    """(json dict, {annotation id: vertex ids}) with 2 good people and every kind of bad one."""
    good1 = rng.choice(len(table), 30, replace=False)
    good2 = rng.choice(len(table), 8, replace=False)
    some = rng.choice(len(table), 5, replace=False)
    anns = [
        _annotation(10, 1, [20.5, 10.0, 60.0, 90.0], table, good1, rng),
        _annotation(11, 2, [5.0, 7.0, 80.0, 120.0], table, good2, rng),
        _annotation(12, 1, [0, 0, 50, 50], table, some, rng, iscrowd=1),
        {"id": 13, "image_id": 1, "iscrowd": 0, "bbox": [1, 1, 30, 40], "keypoints": [0] * 51, "num_keypoints": 0},
    ]
    bad = {
        14: ("length_mismatch", lambda a: a.update(dp_U=a["dp_U"][:-1])),
        15: ("bad_keypoints", lambda a: a.update(keypoints=a["keypoints"][:50])),
        16: ("non_finite", lambda a: a["dp_U"].__setitem__(0, float("nan"))),
        17: ("bad_part", lambda a: a["dp_I"].__setitem__(0, 25.0)),
        18: ("bad_uv", lambda a: a["dp_V"].__setitem__(1, 1.5)),
        19: ("bad_bbox", lambda a: a.update(bbox=[1, 1, -3, 10])),
        20: ("unknown_image", lambda a: a.update(image_id=99)),
        21: ("empty_points", lambda a: a.update(dp_x=[], dp_y=[], dp_I=[], dp_U=[], dp_V=[])),
        22: ("missing_field", lambda a: a.pop("dp_V")),
        23: ("unknown_image", lambda a: a.update(image_id=3)),
        24: ("bad_type", lambda a: a.update(dp_x=["a"] * len(a["dp_x"]))),
        25: ("bad_dp_xy", lambda a: a["dp_y"].__setitem__(0, -4.0)),
        26: ("bad_part", lambda a: a["dp_I"].__setitem__(0, 2.5)),
    }
    for ann_id, (_, mutate) in bad.items():
        ann = _annotation(ann_id, 1, [10, 10, 40, 60], table, some, rng)
        mutate(ann)
        anns.append(ann)
    anns.append(7)                                            # not an object
    expected = {"crowd": 1, "no_densepose": 1, "malformed": 1}
    for reason, _ in bad.values():
        expected[reason] = expected.get(reason, 0) + 1
    return {"info": {}, "images": IMAGES, "annotations": anns, "categories": [{"id": 1, "name": "person"}]}, \
        {10: good1, 11: good2}, expected


@pytest.fixture()
def dataset(tmp_path, table):
    rng = np.random.default_rng(1)
    data, good, expected = _build_json(table, rng)
    path = tmp_path / "densepose_coco_2014_minival.json"
    path.write_text(json.dumps(data))                            # NaN written as in Python's json
    img_dir = tmp_path / "images"
    img_dir.mkdir()
    for img in IMAGES[:2]:
        rgb = np.zeros((img["height"], img["width"], 3), np.uint8)
        rgb[..., 0] = 200                                        # red in RGB
        rgb[..., 2] = 30
        cv2.imwrite(str(img_dir / img["file_name"]), rgb[..., ::-1])   # cv2 writes BGR
    return path, img_dir, data, good, expected


def test_counts_per_reason(dataset, index):
    path, img_dir, data, _, expected = dataset
    records, report = dpc.load_densepose_coco(path, img_dir, index, image_size=64, max_points=None)
    assert report.total == len(data["annotations"]) and report.kept == 2 == len(records)
    assert dict(report.skipped) == expected
    assert report.num_skipped + report.kept == report.total
    assert report.bad_images == 1
    assert set(expected) <= set(dpc.SKIP_REASONS)
    assert "kept 2/" in str(report)


def test_pixel_mapping_and_vertices(dataset, index):
    path, img_dir, data, good, _ = dataset
    records, _ = dpc.load_densepose_coco(path, img_dir, index, image_size=64, max_points=None)
    by_id = {a["id"]: a for a in data["annotations"] if isinstance(a, dict)}
    for rec in records:
        ann = by_id[rec["annotation_id"]]
        x0, y0, w, h = ann["bbox"]
        expect = np.stack([x0 + np.array(ann["dp_x"]) / 255.0 * w, y0 + np.array(ann["dp_y"]) / 255.0 * h], -1)
        np.testing.assert_allclose(rec["dense_xy"], expect, atol=1e-4)
        # a point at a vertex's own (I, U, V) maps back to that vertex.
        np.testing.assert_array_equal(rec["dense_vertex"], good[rec["annotation_id"]])
        kp = np.array(ann["keypoints"]).reshape(17, 3)
        np.testing.assert_array_equal(rec["keypoint_visible"], kp[:, 2] > 0)
        np.testing.assert_allclose(rec["keypoints"], kp[:, :2], atol=1e-4)
        file_name = next(i["file_name"] for i in IMAGES if i["id"] == ann["image_id"])
        assert rec["file_name"] == file_name and rec["image_path"] == os.path.join(str(img_dir), file_name)
    # detectron2's reading divides by 256.
    rec256, _ = dpc.load_densepose_coco(path, img_dir, index, max_points=None, box_frame=256.0)
    ann = by_id[rec256[0]["annotation_id"]]
    x256 = ann["bbox"][0] + np.array(ann["dp_x"]) / 256 * ann["bbox"][2]
    np.testing.assert_allclose(rec256[0]["dense_xy"][:, 0], x256, atol=1e-4)


def test_max_points_cap_is_deterministic_striding(dataset, index):
    path, img_dir, data, _, _ = dataset
    records, report = dpc.load_densepose_coco(path, img_dir, index, max_points=7)
    rec = next(r for r in records if r["annotation_id"] == 10)
    ann = next(a for a in data["annotations"] if isinstance(a, dict) and a["id"] == 10)
    keep = [math.floor(i * 30 / 7) for i in range(7)]
    np.testing.assert_allclose(rec["dense_iuv"][:, 1], np.array(ann["dp_U"])[keep], atol=1e-6)
    assert rec["num_points"] == 30 and rec["dense_xy"].shape == (7, 2)
    assert report.points_total == 38 and report.points_kept == 7 + 7


def test_samples_are_valid_cropped_and_rgb(dataset, index, template):
    path, img_dir, _, _, _ = dataset
    records, _ = dpc.load_densepose_coco(path, img_dir, index, image_size=(64, 48), max_points=20)
    for rec in records:
        s = dpc.load_sample(rec)
        sample_lib.validate_sample(s, (64, 48), 20, 17, template.num_vertices, source=rec["file_name"])
        n = min(rec["dense_xy"].shape[0], 20)
        assert s["dense_mask"].sum() == n and not s["dense_mask"][n:].any()
        a = transforms.crop_affine(rec["bbox"], (64, 48), 1.2)
        np.testing.assert_allclose(s["dense_xy"][:n], transforms.apply_affine(a, rec["dense_xy"][:n]), atol=1e-3)
        np.testing.assert_array_equal(s["dense_vertex"][:n], rec["dense_vertex"][:n])
        assert s["has_gt"] == 0
        r, g, b = s["image"][32, 24]
        assert abs(int(r) - 200) <= 2 and g == 0 and abs(int(b) - 30) <= 2    # BGR -> RGB
    # larger N_max pads with mask 0.
    s = dpc.load_sample(records[1], max_points=50)
    assert s["dense_xy"].shape == (50, 2) and s["dense_mask"].sum() == records[1]["dense_xy"].shape[0]


def test_paint_points_labels_exactly_the_annotated_pixels():
    s = sample_lib.empty_sample((10, 12), 5, 17)
    s["dense_xy"][:] = [[2.2, 3.7], [11.4, 9.3], [5.0, 5.0], [-0.4, 0.2], [30.0, 1.0]]
    s["dense_mask"][:] = [1, 1, 0, 1, 1]              # point 2 is padding, point 4 is outside
    point_iuv = np.array([[3, 0.0, 1.0], [24, 0.5, 0.25], [7, 0.1, 0.1], [1, 0.2, 0.998], [2, 0.3, 0.3]])
    dpc.paint_points(s, point_iuv)
    expected = np.full((10, 12, 3), 255, np.uint8)
    expected[4, 2] = (3, 0, 254)
    expected[9, 11] = (24, 127, 64)                   # round(254 · 0.5), round(254 · 0.25)
    expected[0, 0] = (1, 51, 253)                     # round(50.8), round(253.49)
    np.testing.assert_array_equal(s["iuv"], expected)


def test_samples_carry_their_annotated_points_in_iuv(dataset, index):
    """make_sample paints each kept point's (I, U, V) at its pixel; every other pixel stays 255."""
    path, img_dir, _, _, _ = dataset
    records, _ = dpc.load_densepose_coco(path, img_dir, index, image_size=(64, 48), max_points=20)
    image = np.zeros((160, 160, 3), np.uint8)
    for rec in records:
        for context in (1.2, 1.6):
            s = dpc.make_sample(rec, image, context=context)
            a = transforms.crop_affine(rec["bbox"], (64, 48), context)
            n = rec["dense_xy"].shape[0]
            assert n <= 20
            xy = transforms.apply_affine(a, rec["dense_xy"])
            inside = transforms.inside(xy, (64, 48))
            np.testing.assert_array_equal(s["dense_mask"][:n], inside)
            expected = np.full((64, 48, 3), 255, np.uint8)
            for (x, y), (i, u, v), ok in zip(xy, rec["dense_iuv"], inside):   # later points overwrite
                if ok:
                    expected[int(np.rint(y)), int(np.rint(x))] = (i, np.rint(254 * u), np.rint(254 * v))
            np.testing.assert_array_equal(s["iuv"], expected)
            assert np.sum(s["iuv"][..., 0] != 255) >= 5


def test_missing_image_names_the_file(dataset, index):
    path, img_dir, _, _, _ = dataset
    records, _ = dpc.load_densepose_coco(path, img_dir, index)
    os.remove(records[0]["image_path"])
    with pytest.raises(FileNotFoundError, match="COCO_train2014_000000000001.jpg"):
        dpc.load_sample(records[0])


def test_file_level_errors_name_file_and_field(tmp_path, index):
    bad = tmp_path / "broken.json"
    bad.write_text('{"images": [], "annotations": [')
    with pytest.raises(ValueError, match="broken.json.*not a valid"):
        dpc.load_densepose_coco(bad, tmp_path, index)
    for content, field in [({"images": []}, "annotations"), ({"annotations": []}, "images"),
                           ({"images": {}, "annotations": []}, "images"),
                           ({"images": [], "annotations": {"id": 1}}, "annotations")]:
        f = tmp_path / f"no_{field}.json"
        f.write_text(json.dumps(content))
        with pytest.raises(ValueError, match=f"no_{field}.json.*'{field}'"):
            dpc.load_densepose_coco(f, tmp_path, index)
    top = tmp_path / "list.json"
    top.write_text("[1, 2]")
    with pytest.raises(ValueError, match="list.json.*JSON object"):
        dpc.load_densepose_coco(top, tmp_path, index)
    with pytest.raises(FileNotFoundError, match="absent.json"):
        dpc.load_densepose_coco(tmp_path / "absent.json", tmp_path, index)


# ---------------------------------------------------------------------------------------------
# Fuzzing: malformed annotations are counted, never crash, never leak NaN

JUNK = st.one_of(
    st.none(), st.booleans(), st.text(max_size=3), st.just(float("nan")), st.just(float("inf")),
    st.integers(-10**20, 10**20), st.floats(allow_nan=True, allow_infinity=True),
    st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=4),
    st.lists(st.integers(-5, 30), max_size=4), st.lists(st.lists(st.integers(0, 3), max_size=2), max_size=3),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=2), st.just([]),
)
FIELDS = ["image_id", "bbox", "keypoints", "iscrowd", "dp_x", "dp_y", "dp_I", "dp_U", "dp_V", "id"]


@st.composite
def mutated_annotation(draw, table):
    rng = np.random.default_rng(draw(st.integers(0, 1000)))
    ann = _annotation(1, 1, [10, 10, 40, 60], table, rng.choice(len(table), 6, replace=False), rng)
    for _ in range(draw(st.integers(1, 2))):
        field = draw(st.sampled_from(FIELDS))
        action = draw(st.sampled_from(["delete", "junk", "junk", "element", "element", "element",
                                       "truncate", "negate"]))
        if action == "delete":
            ann.pop(field, None)
        elif action == "junk":
            ann[field] = draw(JUNK)
        elif isinstance(ann.get(field), list) and ann[field]:
            i = draw(st.integers(0, len(ann[field]) - 1))
            if action == "element":
                ann[field][i] = draw(st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                                               st.integers(-300, 300), st.none(), st.text(max_size=2)))
            elif action == "truncate":
                ann[field] = ann[field][:i]
            else:
                ann[field] = [-v if isinstance(v, (int, float)) and not isinstance(v, bool) else v
                              for v in ann[field]]
    return ann


@FUZZ
@given(data=st.data())
def test_malformed_annotations_are_skipped_and_counted(template, index, table, data):
    ann = data.draw(mutated_annotation(table))
    good = _annotation(2, 1, [5, 5, 50, 70], table, np.arange(10), np.random.default_rng(0))
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "fuzz.json")
        with open(path, "w") as f:
            json.dump({"images": IMAGES, "annotations": [good, ann]}, f)
        records, report = dpc.load_densepose_coco(path, d, index, image_size=32, max_points=8)
    assert report.total == 2 and report.kept + report.num_skipped == 2 and report.kept == len(records)
    assert set(report.skipped) <= set(dpc.SKIP_REASONS)
    image = np.zeros((120, 160, 3), np.uint8)
    for rec in records:
        for key in ("bbox", "keypoints", "keypoint_visible", "dense_xy", "dense_iuv"):
            assert np.all(np.isfinite(rec[key])), key
        assert rec["bbox"][2] > 0 and rec["bbox"][3] > 0
        assert np.all((rec["dense_vertex"] >= 0) & (rec["dense_vertex"] < template.num_vertices))
        s = dpc.make_sample(rec, image)
        sample_lib.validate_sample(s, (32, 32), 8, 17, template.num_vertices)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(content=st.one_of(
    st.text(max_size=20),
    st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=3)),
                 lambda c: st.one_of(st.lists(c, max_size=3), st.dictionaries(
                     st.sampled_from(["images", "annotations", "x"]), c, max_size=3)), max_leaves=8)))
def test_arbitrary_files_raise_clear_errors_or_load(index, content):
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "any.json")
        with open(path, "w") as f:
            f.write(content if isinstance(content, str) else json.dumps(content))
        try:
            _, report = dpc.load_densepose_coco(path, d, index)
        except ValueError as e:
            assert "any.json" in str(e)
        else:
            assert report.kept + report.num_skipped == report.total
