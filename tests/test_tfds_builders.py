"""Tests for bodyjax.data.tfds_builders and bodyjax.data.pipeline (tiny sets in temporary folders)."""
from __future__ import annotations

import json
import os

import cv2
import numpy as np
import pytest
import tensorflow_datasets as tfds

from bodyjax import body
from bodyjax.data import densepose_coco as dpc
from bodyjax.data import pipeline
from bodyjax.data import sample as sample_lib
from bodyjax.data import synthetic
from bodyjax.data import tfds_builders as tb
from bodyjax.data.iuv import IUVIndex

CFG = synthetic.SyntheticConfig(image_size=64, max_points=64, num_points=(30, 64))
SEED = 5
N_TRAIN, N_TEST = 12, 4


@pytest.fixture(scope="module")
def template():
    return body.default_template()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tfds")


@pytest.fixture(scope="module")
def built(data_dir):
    return tb.build_synthetic(data_dir, CFG, N_TRAIN, N_TEST, seed=SEED, show_progress=False)


@pytest.fixture(scope="module")
def reference(template):
    """The samples the builder must reproduce, straight from the generator."""
    return {"train": list(synthetic.generate(template, CFG, SEED, N_TRAIN)),
            "test": list(synthetic.generate(template, CFG, SEED, N_TEST, start=tb.TEST_START))}


@pytest.fixture(scope="module")
def train(built):
    return pipeline.data_source(built, "train", with_metadata=True)


def _files(root):
    out = {}
    for dirpath, _, names in os.walk(root):
        for n in names:
            p = os.path.join(dirpath, n)
            out[p] = os.stat(p).st_mtime_ns
    return out


# ---------------------------------------------------------------------------------------------
# Synthetic builder


def test_tfds_data_source_gives_exactly_the_generated_samples(built, reference, data_dir):
    sources = tfds.data_source("synthetic_bodies", data_dir=os.fspath(data_dir), download=False,
                               builder_kwargs={"config": built.builder_config})
    for split, ref in reference.items():
        src = sources[split]
        assert len(src) == len(ref)
        for i, expected in enumerate(ref):
            got = src[i]
            for key, value in expected.items():
                value = np.asarray(value)
                np.testing.assert_array_equal(np.asarray(got[key], value.dtype), value,
                                              err_msg=f"{split}[{i}].{key}")
                assert np.shape(got[key]) == value.shape


def test_pipeline_source_has_exact_dtypes_and_valid_records(built, reference, template):
    for split, ref in reference.items():
        src = pipeline.data_source(built, split)
        assert len(src) == len(ref)
        for i, expected in enumerate(ref):
            got = src[i]
            assert set(got) == set(expected)
            for key, value in expected.items():
                assert got[key].dtype == np.asarray(value).dtype, key
                np.testing.assert_array_equal(got[key], value)
            sample_lib.validate_sample(got, (64, 64), 64, 17, template.num_vertices,
                                       source=f"{split}[{i}]")
            parts = got["iuv"][..., 0]                 # rendered labels: 0 background, 1..24 body
            assert np.all((parts <= 24) | (parts == 255)) and np.any((parts >= 1) & (parts <= 24))


def test_train_and_test_are_disjoint(built, reference):
    test = pipeline.data_source(built, "test", with_metadata=True)
    train = pipeline.data_source(built, "train", with_metadata=True)
    assert [int(train[i]["sample_index"]) for i in range(N_TRAIN)] == list(range(N_TRAIN))
    assert [int(test[i]["sample_index"]) for i in range(N_TEST)] == [tb.TEST_START + i for i in range(N_TEST)]
    train_poses = {train[i]["gt_pose"].tobytes() for i in range(N_TRAIN)}
    train_images = {train[i]["image"].tobytes() for i in range(N_TRAIN)}
    for i in range(N_TEST):
        assert test[i]["gt_pose"].tobytes() not in train_poses
        assert test[i]["image"].tobytes() not in train_images


def test_second_build_reuses_the_files(built, data_dir, monkeypatch):
    before = _files(data_dir)

    def fail(*args, **kwargs):
        raise AssertionError("the generator must not run again")

    monkeypatch.setattr(synthetic, "generate", fail)
    again = tb.build_synthetic(data_dir, CFG, N_TRAIN, N_TEST, seed=SEED, show_progress=False)
    assert os.fspath(again.data_dir) == os.fspath(built.data_dir)
    assert _files(data_dir) == before
    assert len(pipeline.data_source(again, "train")) == N_TRAIN


def test_a_split_past_tfds_memory_buffer_is_written_without_tensorflow(reference, tmp_path, monkeypatch):
    """tfds spills a split past its in-memory bound (1 GB) to temporary files through TensorFlow;
    the builder writes it from memory instead. With the bound at 1 kB, this 12-record split crosses
    it: the build failed with ``No module named 'tensorflow'`` before :func:`tb.splits_in_memory`."""
    import importlib.util

    from tensorflow_datasets.core import shuffle

    if importlib.util.find_spec("tensorflow") is not None:
        pytest.skip("TensorFlow is installed: tfds's own spill path works")
    monkeypatch.setattr(shuffle, "MAX_MEM_BUFFER_SIZE", 1000)
    built = tb.build_synthetic(tmp_path, CFG, N_TRAIN, N_TEST, seed=SEED, show_progress=False)
    assert shuffle.MAX_MEM_BUFFER_SIZE == 1000  # restored after the build
    src = pipeline.data_source(built, "train")
    assert len(src) == N_TRAIN
    for i, expected in enumerate(reference["train"]):  # in generation order
        np.testing.assert_array_equal(src[i]["image"], expected["image"], err_msg=f"train[{i}]")


def test_a_split_larger_than_memory_is_refused_before_generating(tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("nothing may be generated")

    monkeypatch.setattr(synthetic, "generate", fail)
    monkeypatch.setattr(tb, "available_memory", lambda: 10**9)   # 1 GB; 50,000 records need ~1.4
    with pytest.raises(ValueError, match=r"train_size=50000 records of ~28 kB need ~1\.4 GB"):
        tb.build_synthetic(tmp_path, synthetic.SyntheticConfig(image_size=64), 50_000, 10, seed=SEED,
                           show_progress=False)
    assert not any(".array_record" in f for _, _, fs in os.walk(tmp_path) for f in fs)


def test_config_name_is_the_same_in_another_process(template):
    """A later run (another process) finds the data set built by an earlier one: the name covers the
    template's values, not the addresses of its absent optional fields (the default body has no
    pose blend shapes: ``posedirs`` is ``None``)."""
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    assert template.posedirs is None
    code = ("from bodyjax import body; from bodyjax.data import tfds_builders as tb; "
            "print(tb.template_fingerprint(body.default_template()))")
    names = {subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.strip()
             for _ in range(2)}
    assert names == {tb.template_fingerprint(template)}


def test_every_setting_changes_the_config_name(template):
    base = tb.synthetic_config(CFG, N_TRAIN, N_TEST, SEED)
    assert base.name == tb.synthetic_config(CFG, N_TRAIN, N_TEST, SEED).name
    variants = [
        tb.synthetic_config(CFG, N_TRAIN + 1, N_TEST, SEED),
        tb.synthetic_config(CFG, N_TRAIN, N_TEST + 1, SEED),
        tb.synthetic_config(CFG, N_TRAIN, N_TEST, SEED + 1),
        tb.synthetic_config(synthetic.SyntheticConfig(image_size=64, max_points=64, num_points=(30, 64),
                                                      blur_prob=0.5), N_TRAIN, N_TEST, SEED),
        tb.synthetic_config(CFG, N_TRAIN, N_TEST, SEED, image_encoding="png"),
        tb.synthetic_config(CFG, N_TRAIN, N_TEST, SEED,
                            template=template.replace(vertices=template.vertices * 1.01)),
    ]
    names = [base.name] + [v.name for v in variants]
    assert len(set(names)) == len(names)


def test_different_settings_build_a_different_directory_png_roundtrip(built, data_dir, reference, template):
    png = tb.build_synthetic(data_dir, CFG, 3, 1, seed=SEED, image_encoding="png", show_progress=False)
    assert os.fspath(png.data_dir) != os.fspath(built.data_dir)
    assert os.path.dirname(os.fspath(png.data_dir)) != os.path.dirname(os.fspath(built.data_dir))
    src = pipeline.data_source(png, "train")
    for i in range(3):                               # PNG is lossless: same samples
        for key, value in reference["train"][i].items():
            np.testing.assert_array_equal(src[i][key], value, err_msg=key)
        assert src[i]["image"].dtype == np.uint8 and src[i]["image"].shape == (64, 64, 3)
    test_image = pipeline.data_source(png, "test")[0]["image"]
    np.testing.assert_array_equal(test_image, reference["test"][0]["image"])


def test_template_must_match_the_config(data_dir, template):
    config = tb.synthetic_config(CFG, 2, 0, SEED)
    other = template.replace(vertices=template.vertices * 1.02)
    builder = tb.SyntheticBodies(data_dir=os.fspath(data_dir), config=config, template=other,
                                 show_progress=False)
    with pytest.raises(ValueError, match="template"):
        builder.download_and_prepare()


# ---------------------------------------------------------------------------------------------
# Loaders


def _indices(batches):
    return np.concatenate([b["sample_index"] for b in batches]).tolist()


def test_grain_loader_batch_shapes(train):
    batches = list(pipeline.make_loader(train, 5, shuffle=True, seed=1, num_epochs=1))
    assert len(batches) == 2                                   # 12 // 5, remainder dropped
    expect = sample_lib.sample_spec((64, 64), 64, 17)
    for b in batches:
        for key, (shape, dtype) in expect.items():
            assert b[key].shape == (5,) + shape and b[key].dtype == dtype, key
    kept = list(pipeline.make_loader(train, 5, shuffle=False, seed=1, drop_remainder=False))
    assert [len(b["image"]) for b in kept] == [5, 5, 2]


def test_grain_loader_order_is_deterministic_and_covers_each_epoch(train):
    def run(seed):
        return _indices(pipeline.make_loader(train, 4, shuffle=True, seed=seed, num_epochs=2))

    a, b, c = run(3), run(3), run(4)
    assert a == b
    assert a != c
    for order in (a, c):
        assert len(order) == 2 * N_TRAIN
        first, second = order[:N_TRAIN], order[N_TRAIN:]
        assert sorted(first) == list(range(N_TRAIN)) and sorted(second) == list(range(N_TRAIN))
        assert first != second                                 # reshuffled every epoch
    assert _indices(pipeline.make_loader(train, 4, shuffle=False)) == list(range(N_TRAIN))


def test_grain_loader_transforms_and_process_sharding(train):
    def flip(sample):
        sample = dict(sample)
        sample["image"] = np.ascontiguousarray(sample["image"][:, ::-1])
        return sample

    loader = pipeline.make_loader(train, 4, shuffle=False, transforms=[flip], shard_by_process=True)
    batches = list(loader)
    assert _indices(batches) == list(range(N_TRAIN))           # one process: everything
    np.testing.assert_array_equal(batches[0]["image"][1], train[1]["image"][:, ::-1])


def test_grain_loader_reads_the_same_batches_with_any_read_threads(train):
    """``read_threads`` (grain's ReadOptions.num_threads) changes who reads, not what is read."""
    def run(threads):
        return list(pipeline.make_loader(train, 4, shuffle=True, seed=5, read_threads=threads))

    reference = run(None)
    for threads in (0, 2):
        got = run(threads)
        assert _indices(got) == _indices(reference)
        for a, b in zip(got, reference):
            np.testing.assert_array_equal(a["image"], b["image"])
    with pytest.raises(ValueError, match="read_threads"):
        pipeline.make_loader(train, 4, read_threads=-1)


def test_iterate_batches_and_to_arrays(train):
    def run(seed):
        return _indices(pipeline.iterate_batches(train, 4, shuffle=True, seed=seed, num_epochs=2))

    a, b, c = run(3), run(3), run(4)
    assert a == b and a != c
    assert sorted(a[:N_TRAIN]) == list(range(N_TRAIN)) and sorted(a[N_TRAIN:]) == list(range(N_TRAIN))
    assert a[:N_TRAIN] == pipeline.epoch_order(N_TRAIN, True, 3, 0).tolist()
    sizes = [len(x["image"]) for x in pipeline.iterate_batches(train, 5, shuffle=False, drop_remainder=False)]
    assert sizes == [5, 5, 2]

    arrays = pipeline.to_arrays(train, chunk=5)
    stacked = sample_lib.stack([train[i] for i in range(N_TRAIN)])
    assert set(arrays) == set(stacked)
    for key in stacked:
        assert arrays[key].dtype == stacked[key].dtype
        np.testing.assert_array_equal(arrays[key], stacked[key])
    subset = pipeline.to_arrays(train, indices=[3, 1])
    np.testing.assert_array_equal(subset["image"], stacked["image"][[3, 1]])


class _Jitter(pipeline.grain.RandomMapTransform):
    def random_map(self, element, rng):
        return {**element, "x": element["x"] + rng.uniform(size=element["x"].shape).astype(np.float32)}


def test_random_transforms_are_deterministic_from_the_seed():
    data = [{"i": np.int64(i), "x": np.zeros((2,), np.float32)} for i in range(6)]
    for batches in (lambda seed: pipeline.make_loader(data, 3, seed=seed, transforms=[_Jitter()]),
                    lambda seed: pipeline.iterate_batches(data, 3, seed=seed, transforms=[_Jitter()])):
        a, b, c = ([x["x"] for x in batches(seed)] for seed in (1, 1, 2))
        np.testing.assert_array_equal(np.concatenate(a), np.concatenate(b))
        assert not np.array_equal(np.concatenate(a), np.concatenate(c))
        assert np.all(np.concatenate(a) > 0)


def test_loaders_accept_plain_lists():
    data = [{"i": np.int64(i), "x": np.full((2,), i, np.float32)} for i in range(7)]
    got = [b["i"].tolist() for b in pipeline.make_loader(data, 3, shuffle=False)]
    assert got == [[0, 1, 2], [3, 4, 5]]
    with pytest.raises(ValueError, match="seed"):
        pipeline.make_loader(data, 3, seed=-1)


# ---------------------------------------------------------------------------------------------
# DensePose-COCO builder

DP_IMAGES = {
    "train": [{"id": 36, "file_name": "COCO_train2014_000000000036.jpg", "width": 120, "height": 100},
              {"id": 49, "file_name": "COCO_train2014_000000000049.jpg", "width": 90, "height": 130}],
    "minival": [{"id": 136, "file_name": "COCO_val2014_000000000136.jpg", "width": 110, "height": 110},
                {"id": 192, "file_name": "COCO_val2014_000000000192.jpg", "width": 80, "height": 96}],
}


def _person(ann_id, image, template, rng, n_points, **extra):
    """A DensePose-COCO person annotation whose points carry real template (I, U, V) values."""
    w, h = image["width"], image["height"]
    bbox = [round(w * 0.15, 2), round(h * 0.1, 2), round(w * 0.6, 2), round(h * 0.8, 2)]
    kp = np.zeros((17, 3))
    kp[:, 0] = bbox[0] + rng.uniform(0, bbox[2], 17)
    kp[:, 1] = bbox[1] + rng.uniform(0, bbox[3], 17)
    kp[:, 2] = 2
    kp[12:] = 0
    vid = rng.choice(template.num_vertices, n_points, replace=False)
    part, uv = np.asarray(template.part_ids), np.asarray(template.uv, np.float64)
    ann = {"id": ann_id, "image_id": image["id"], "category_id": 1, "iscrowd": 0,
           "area": bbox[2] * bbox[3], "bbox": bbox, "num_keypoints": 12,
           "keypoints": np.round(kp, 2).reshape(-1).tolist(),
           "dp_x": np.round(rng.uniform(0, 255, n_points), 2).tolist(),
           "dp_y": np.round(rng.uniform(0, 255, n_points), 2).tolist(),
           "dp_I": part[vid].astype(float).tolist(), "dp_U": uv[vid, 0].tolist(), "dp_V": uv[vid, 1].tolist(),
           "dp_masks": [{"size": [256, 256], "counts": "0"}] * 14}
    ann.update(extra)
    return ann


@pytest.fixture(scope="module")
def manual_dir(tmp_path_factory, template):
    root = tmp_path_factory.mktemp("densepose_manual")
    rng = np.random.default_rng(0)
    for split, (json_name, image_dir) in (("train", tb.DENSEPOSE_FILES["train"]),
                                          ("minival", tb.DENSEPOSE_FILES["minival"])):
        images = DP_IMAGES[split]
        (root / image_dir).mkdir()
        for img in images:
            rgb = rng.integers(0, 256, (img["height"], img["width"], 3), dtype=np.uint8)
            cv2.imwrite(os.fspath(root / image_dir / img["file_name"]), rgb[..., ::-1])
        anns = [_person(1, images[0], template, rng, 30), _person(2, images[1], template, rng, 12),
                _person(3, images[0], template, rng, 5, iscrowd=1)]       # skipped: crowd
        data = {"info": {"description": "DensePose-COCO test"}, "images": images, "annotations": anns,
                "categories": [{"id": 1, "name": "person", "supercategory": "person"}]}
        (root / json_name).write_text(json.dumps(data))
    return root


def test_densepose_builder_writes_the_loader_samples(manual_dir, data_dir, template):
    config = tb.densepose_config(image_size=(48, 40), max_points=20)
    builder = tb.build_densepose_coco(data_dir, manual_dir, config, show_progress=False)
    index = IUVIndex.from_template(template)
    for split in ("train", "minival"):
        json_name, image_dir = tb.DENSEPOSE_FILES[split]
        records, report = dpc.load_densepose_coco(manual_dir / json_name, manual_dir / image_dir, index,
                                                  image_size=(48, 40), max_points=20)
        assert report.kept == 2 and report.skipped["crowd"] == 1
        src = pipeline.data_source(builder, split, with_metadata=True)
        assert len(src) == 2
        for i, record in enumerate(records):
            got = src[i]
            sample_lib.validate_sample(got, (48, 40), 20, 17, template.num_vertices, source=f"{split}[{i}]")
            expected = dpc.load_sample(record)
            for key, value in expected.items():
                np.testing.assert_array_equal(got[key], value, err_msg=f"{split}[{i}].{key}")
            labelled = got["iuv"][..., 0] != 255        # the annotated points, painted into iuv
            assert 0 < labelled.sum() <= got["dense_mask"].sum()
            assert np.all(got["iuv"][labelled][:, 0] >= 1) and np.all(got["iuv"][labelled][:, 0] <= 24)
            assert int(got["annotation_id"]) == record["annotation_id"]
            assert int(got["image_id"]) == record["image_id"]
        assert got["has_gt"] == 0
    # The load reports are logged and saved with the data set.
    reopened = tb.DensePoseCoco(data_dir=os.fspath(data_dir), config=config)
    reports = reopened.info.metadata["load_reports"]
    assert reports["train"]["kept"] == 2 and reports["train"]["skipped"] == {"crowd": 1}
    assert reports["minival"]["written"] == 2


def test_densepose_config_names_every_setting():
    base = tb.densepose_config(image_size=32, max_points=8)
    assert base.crop_context == 1.2 and base.settings()["crop_context"] == 1.2
    assert base.name == tb.densepose_config(image_size=32, max_points=8).name
    variants = [tb.densepose_config(image_size=32, max_points=8, crop_context=1.5),
                tb.densepose_config(image_size=32, max_points=9),
                tb.densepose_config(image_size=(32, 24), max_points=8),
                tb.densepose_config(image_size=32, max_points=8, box_frame=256.0),
                tb.densepose_config(image_size=32, max_points=8, splits=("train",))]
    assert variants[0].crop_context == 1.5
    names = [base.name] + [v.name for v in variants]
    assert len(set(names)) == len(names)


def test_densepose_missing_json_is_named(manual_dir, tmp_path):
    partial = tmp_path / "manual"
    partial.mkdir()
    json_name, image_dir = tb.DENSEPOSE_FILES["train"]
    (partial / json_name).write_bytes((manual_dir / json_name).read_bytes())
    (partial / image_dir).mkdir()
    config = tb.densepose_config(image_size=32, max_points=8)          # splits: train + minival
    with pytest.raises(FileNotFoundError, match="densepose_coco_2014_minival.json"):
        tb.build_densepose_coco(tmp_path / "data", partial, config, show_progress=False)
    with pytest.raises(FileNotFoundError, match="manual_dir"):
        tb.build_densepose_coco(tmp_path / "data", tmp_path / "nowhere", config, show_progress=False)
    with pytest.raises(FileNotFoundError, match="densepose_coco_2014_train.json"):
        tb.DensePoseCoco(data_dir=os.fspath(tmp_path / "data"), config=config).download_and_prepare()
    only_train = tb.densepose_config(image_size=32, max_points=8, splits=("train",))
    with pytest.raises(FileNotFoundError, match="missing image|image file not found"):
        tb.build_densepose_coco(tmp_path / "data", partial, only_train, show_progress=False)


def test_densepose_missing_images_can_be_skipped_and_counted(manual_dir, tmp_path):
    partial = tmp_path / "manual"
    partial.mkdir()
    for name in os.listdir(manual_dir):
        src = manual_dir / name
        if src.is_dir():
            (partial / name).mkdir(parents=True)
            for f in os.listdir(src):
                if f != DP_IMAGES["train"][1]["file_name"]:          # drop one train image
                    (partial / name / f).write_bytes((src / f).read_bytes())
        else:
            (partial / name).write_bytes(src.read_bytes())
    config = tb.densepose_config(image_size=32, max_points=8, skip_missing_images=True)
    builder = tb.build_densepose_coco(tmp_path / "data", partial, config, show_progress=False)
    assert len(pipeline.data_source(builder, "train")) == 1
    assert len(pipeline.data_source(builder, "minival")) == 2
    assert builder.load_reports["train"]["missing_images"] == 1


def test_grain_workers_read_the_tfds_source(train):
    """Worker processes unpickle the tfds-backed source and read every record once per epoch.

    (Each worker batches its own every-2nd record, so 12 records / 2 workers / batch 3 leaves no
    remainder; the order for a fixed worker count is deterministic, not checked here to keep the
    test at one worker start-up.)
    """
    loader = pipeline.make_loader(train, 3, shuffle=True, seed=3, num_epochs=1, worker_count=2)
    batches = [{k: np.array(v) for k, v in b.items()} for b in loader]
    del loader
    assert sorted(_indices(batches)) == list(range(N_TRAIN))
    for b in batches:
        assert b["image"].shape == (3, 64, 64, 3) and b["image"].dtype == np.uint8
        for j, index in enumerate(b["sample_index"]):
            np.testing.assert_array_equal(b["image"][j], train[int(index)]["image"])
            np.testing.assert_array_equal(b["dense_xy"][j], train[int(index)]["dense_xy"])
