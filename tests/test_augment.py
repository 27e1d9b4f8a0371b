"""Tests for bodyjax.data.augment: the image, its annotations, the ground truth AND the targets move
together, so the augmented target body, projected, lands on the augmented points."""
import jax
import numpy as np
import pytest

from bodyjax import body, camera
from bodyjax.data import augment, transforms
from bodyjax.data import sample as sample_lib
from bodyjax.data.pipeline import ArraySource
from bodyjax.loop import epochs

try:
    from tests.people import random_params as _random_params
except ImportError:  # tests/ itself on sys.path (pytest's default rootdir insertion)
    from people import random_params as _random_params

NUM = 4          # records per test set: every projection below has this one shape
NUM_POINTS = 40
PARAMS = sample_lib.PARAM_FIELDS


@pytest.fixture(scope="module")
def template():
    return body.default_template()


@pytest.fixture(scope="module")
def mirror(template):
    return augment.MirrorTables.of(template)


_forward_subset = jax.jit(body.forward_subset)


def _project(template, params, vid):
    """``(vertices2d (NUM, N, 2), keypoints2d (NUM, K, 2), root-relative joints (NUM, 24, 3))``."""
    out = _forward_subset(template, params, np.asarray(vid, np.int32))
    joints = np.asarray(out.joints)
    return np.asarray(out.vertices2d), np.asarray(out.keypoints2d), joints - joints[:, :1]


def _records(template, size, seed, with_gt=True):
    """NUM stacked records whose points are the projections of their targets (= their GT, if any)."""
    rng = np.random.default_rng(seed)
    target = _random_params(rng, NUM, size)
    vid = rng.integers(0, template.num_vertices, (NUM, NUM_POINTS)).astype(np.int32)
    xy, kp, joints = _project(template, target, vid)
    records = {k: np.stack([v] * NUM) for k, v in
               sample_lib.empty_sample((size, size), NUM_POINTS, template.num_keypoints).items()}
    records.update({
        "image": rng.integers(0, 256, (NUM, size, size, 3), dtype=np.uint8),
        "dense_xy": xy.astype(np.float32),
        "dense_vertex": vid,
        "dense_mask": np.ones((NUM, NUM_POINTS), np.float32),
        "keypoints": kp.astype(np.float32),
        "keypoint_visible": np.ones((NUM, template.num_keypoints), np.float32),
        **sample_lib.params_to_record(target, "target"),
    })
    records["iuv"][..., 0] = rng.integers(0, 25, (NUM, size, size))
    records["iuv"][..., 1:] = rng.integers(0, 255, (NUM, size, size, 2))
    if with_gt:
        records.update(sample_lib.params_to_record(target, "gt"))
        records["has_gt"] = np.ones(NUM, np.float32)
        records["gt_joints3d"] = joints.astype(np.float32)
    return records


def _one(records, i):
    return {k: v[i] for k, v in records.items()}


def _stack(outs):
    return {k: np.stack([o[k] for o in outs]) for k in outs[0]}


def _assert_lands_on_points(template, out, prefix):
    """The ``prefix`` body of every augmented record, projected, lands on its points."""
    xy, kp, joints = _project(template, sample_lib.params_from_record(out, prefix), out["dense_vertex"])
    for i in range(NUM):
        m = out["dense_mask"][i] > 0
        assert m.sum() > 10
        np.testing.assert_allclose(xy[i][m], out["dense_xy"][i][m], atol=2e-3, err_msg=prefix)
        v = out["keypoint_visible"][i] > 0
        assert v.sum() > 3
        np.testing.assert_allclose(kp[i][v], out["keypoints"][i][v], atol=2e-3, err_msg=prefix)
    return joints


@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize("with_gt", [True, False])
def test_augmentation_keeps_targets_and_gt_consistent(template, mirror, flip, with_gt):
    """After zoom/rotation/shift(/flip) the target body (and the GT) still project onto the moved points."""
    records = _records(template, 64, seed=5, with_gt=with_gt)
    cfg = augment.AugmentConfig(scale_range=(0.8, 1.2), rotation=30.0, rotation_prob=1.0, translate=0.1,
                                flip_prob=1.0 if flip else 0.0)
    rng = np.random.default_rng(6)
    out = _stack([augment.augment_record(_one(records, i), mirror, 48, rng, cfg) for i in range(NUM)])
    assert out["image"].shape == (NUM, 48, 48, 3) and out["image"].dtype == np.uint8
    assert out["iuv"].shape == (NUM, 48, 48, 3) and out["iuv"].dtype == np.uint8
    assert set(out) == set(records)
    _assert_lands_on_points(template, out, "target")
    # the targets really moved (not a vacuous pass)
    assert not np.allclose(out["target_translation"], records["target_translation"], atol=0.5)
    if flip:
        assert not np.allclose(out["target_pose"], records["target_pose"])
        head = (out["iuv"][..., 0] == 23) | (out["iuv"][..., 0] == 24)
        assert np.all(out["iuv"][head][:, 1:] == 255)       # the head's charts do not mirror
        limbs = (out["iuv"][..., 0] >= 1) & (out["iuv"][..., 0] <= 22)
        assert np.mean(out["iuv"][limbs][:, 1] < 255) > 0.9  # the others' U, V survive the flip
    if with_gt:
        joints = _assert_lands_on_points(template, out, "gt")
        np.testing.assert_allclose(out["gt_joints3d"], joints, atol=1e-4)
        # the target follows exactly the path of the ground truth through bodyjax.data.transforms
        for f in PARAMS:
            np.testing.assert_allclose(out[f"target_{f}"], out[f"gt_{f}"], atol=1e-5, err_msg=f)
    else:                                                    # no GT: its (zero) fields stay untouched
        for f in PARAMS + ("joints3d",):
            np.testing.assert_array_equal(out[f"gt_{f}"], records[f"gt_{f}"], err_msg=f)
        assert not np.any(out["has_gt"])


def test_flip_moves_targets_like_flip_gt(template, mirror):
    """A record's targets flip with transforms.flip_gt; flipping twice gives them back."""
    rec = _one(_records(template, 64, seed=7, with_gt=False), 0)
    f = transforms.flip_horizontal(rec, mirror)
    pose, ss, rot, tr, _ = transforms.flip_gt(rec["target_pose"], rec["target_segment_scales"],
                                              rec["target_rotation"], rec["target_translation"],
                                              np.zeros((24, 3)), template.joint_mirror, 64)
    for name, ref in (("pose", pose), ("segment_scales", ss), ("rotation", rot), ("translation", tr)):
        np.testing.assert_allclose(f[f"target_{name}"], ref, atol=1e-6, err_msg=name)
    np.testing.assert_array_equal(f["target_scale"], rec["target_scale"])
    # a template and its MirrorTables flip alike
    g = transforms.flip_horizontal(rec, template)
    for k in f:
        np.testing.assert_array_equal(f[k], g[k], err_msg=k)
    back = transforms.flip_horizontal(f, mirror)
    for name in PARAMS:
        np.testing.assert_allclose(back[f"target_{name}"], rec[f"target_{name}"], atol=1e-5, err_msg=name)


@pytest.mark.parametrize("flip", [False, True])
def test_a_record_without_image_moves_its_map_and_points_alike(template, mirror, flip):
    """The two-stage regressor's records carry the map, not the image: same draws, same warp and flip."""
    records = _records(template, 64, seed=9, with_gt=False)
    cfg = augment.AugmentConfig(rotation_prob=1.0, flip_prob=1.0 if flip else 0.0)
    with_image = [augment.augment_record(_one(records, i), mirror, 48, np.random.default_rng(i), cfg)
                  for i in range(NUM)]
    no_image = {k: v for k, v in records.items() if k != "image"}
    without = [augment.augment_record(_one(no_image, i), mirror, 48, np.random.default_rng(i), cfg)
               for i in range(NUM)]
    for a, b in zip(with_image, without):
        assert "image" not in b and set(b) == set(a) - {"image"}
        for k in b:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert not np.array_equal(without[0]["iuv"], without[1]["iuv"])   # the draws did differ
    with pytest.raises(ValueError, match="'image' or an 'iuv' map"):
        augment.augment_record({k: v for k, v in _one(no_image, 0).items() if k != "iuv"}, mirror, 48,
                               np.random.default_rng(0), cfg)


def test_augment_through_grain_is_deterministic(template, mirror):
    """record_batches + Augment: the same (seed, epoch) gives the same batches, another does not."""
    source = ArraySource(_records(template, 64, seed=8))
    transform = augment.Augment(mirror, 32, augment.AugmentConfig())

    def run(seed, epoch):
        return list(epochs.record_batches(source, 2, seed, epoch, [transform]))

    a1, a2, a3, a4 = run(1, 0), run(1, 0), run(2, 0), run(1, 1)
    assert len(a1) == NUM // 2
    for b1, b2 in zip(a1, a2):
        assert set(b1) == set(source[0])
        for k in b1:
            np.testing.assert_array_equal(b1[k], b2[k], err_msg=k)
        assert b1["image"].shape == (2, 32, 32, 3)
    cat = lambda bs: np.concatenate([b["image"] for b in bs])  # noqa: E731
    assert not np.array_equal(cat(a1), cat(a3)) and not np.array_equal(cat(a1), cat(a4))


def test_resize_keeps_normalised_params(template, mirror):
    """A plain resize (config None, disabled, or the Resize transform) is a similarity with k = 1/2:
    the normalised targets and GT are unchanged, and the bodies still land on the points."""
    records = _records(template, 64, seed=9)
    resize = augment.Resize(mirror, 32)
    outs = [augment.augment_record(_one(records, i), mirror, 32, None, None) for i in range(NUM)]
    out = _stack(outs)
    assert out["image"].shape == (NUM, 32, 32, 3)
    for i in range(NUM):
        disabled = augment.augment_record(_one(records, i), mirror, 32, np.random.default_rng(0),
                                          augment.AugmentConfig(enabled=False))
        mapped = resize.map(_one(records, i))
        for k in outs[i]:
            np.testing.assert_array_equal(disabled[k], outs[i][k], err_msg=k)
            np.testing.assert_array_equal(mapped[k], outs[i][k], err_msg=k)
    for prefix in ("target", "gt"):
        n0 = camera.normalize_params(sample_lib.params_from_record(records, prefix), (64, 64))
        n1 = camera.normalize_params(sample_lib.params_from_record(out, prefix), (32, 32))
        for a, b in zip(jax.tree_util.tree_leaves(n0), jax.tree_util.tree_leaves(n1)):
            np.testing.assert_allclose(a, b, atol=1e-5, err_msg=prefix)
        _assert_lands_on_points(template, out, prefix)
    # the label map is subsampled, never blended: every output label exists in the input
    for i in range(NUM):
        seen = {tuple(p) for p in records["iuv"][i].reshape(-1, 3)}
        assert {tuple(p) for p in out["iuv"][i].reshape(-1, 3)} <= seen
