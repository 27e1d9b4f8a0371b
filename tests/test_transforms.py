"""Tests for bodyjax.data.transforms: crops and flips keep image, points and GT body consistent."""
from __future__ import annotations

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bodyjax import body, skeletons
from bodyjax.data import sample as sample_lib
from bodyjax.data import transforms

SETTINGS = settings(max_examples=12, deadline=None, derandomize=True)
FEW = settings(max_examples=6, deadline=None, derandomize=True)
IMAGE_HW = (240, 320)
N_MAX = 40


@pytest.fixture(scope="module")
def template():
    return body.default_template()


# ---------------------------------------------------------------------------------------------
# Helpers


def _rotation(rng):
    """Random proper rotation (float64), Rodrigues written here."""
    axis = rng.standard_normal(3)
    axis /= np.linalg.norm(axis)
    angle = rng.uniform(-np.pi, np.pi)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


def _gt(rng):
    """Random GT parameters (float64 dict)."""
    return {
        "gt_pose": 0.3 * rng.standard_normal((24, 3)),
        "gt_segment_scales": rng.uniform(0.85, 1.15, 24),
        "gt_rotation": _rotation(rng),
        "gt_scale": np.asarray(rng.uniform(80.0, 140.0)),
        "gt_translation": np.array([rng.uniform(120, 200), rng.uniform(90, 150)]),
    }


def _forward(template, gt, vertex_ids):
    """float64 (vertices2d (N, 2), keypoints2d (K, 2), root-relative joints (24, 3))."""
    with jax.enable_x64(True):
        params = body.BodyParams(
            pose=jnp.asarray(gt["gt_pose"], jnp.float64),
            segment_scales=jnp.asarray(gt["gt_segment_scales"], jnp.float64),
            rotation=jnp.asarray(gt["gt_rotation"], jnp.float64),
            scale=jnp.asarray(gt["gt_scale"], jnp.float64),
            translation=jnp.asarray(gt["gt_translation"], jnp.float64))
        out = body.forward_subset(template, params, jnp.asarray(vertex_ids, jnp.int32))
        joints = np.asarray(out.joints, np.float64)
        return (np.asarray(out.vertices2d, np.float64), np.asarray(out.keypoints2d, np.float64),
                joints - joints[:1])


def _gt_sample(template, seed, n_points=30):
    """A sample whose dense points and keypoints are the GT body's projections."""
    rng = np.random.default_rng(seed)
    gt = _gt(rng)
    ids = rng.integers(0, template.num_vertices, N_MAX)
    v2d, kp2d, joints = _forward(template, gt, ids)
    s = sample_lib.empty_sample(IMAGE_HW, N_MAX, 17)
    s["image"] = rng.integers(0, 256, IMAGE_HW + (3,), dtype=np.uint8)
    mask = np.zeros(N_MAX, bool)
    mask[:n_points] = True
    s["dense_mask"] = mask.astype(np.float32)
    s["dense_xy"] = np.where(mask[:, None], v2d, 0).astype(np.float32)
    s["dense_vertex"] = np.where(mask, ids, 0).astype(np.int32)
    vis = rng.uniform(size=17) < 0.8
    s["keypoints"] = np.where(vis[:, None], kp2d, 0).astype(np.float32)
    s["keypoint_visible"] = vis.astype(np.float32)
    s["has_gt"] = np.asarray(1.0, np.float32)
    for key, value in gt.items():
        s[key] = np.asarray(value, np.float32)
    s["gt_joints3d"] = joints.astype(np.float32)
    return s


def _gt_of(sample):
    return {k: np.asarray(sample[k], np.float64) for k in
            ("gt_pose", "gt_segment_scales", "gt_rotation", "gt_scale", "gt_translation")}


def _check_gt_consistent(template, s, tol=1e-3):
    """The GT body projected with the sample's GT lands on its masked points and keypoints."""
    sample_lib.validate_sample(s, s["image"].shape[:2], N_MAX, 17, template.num_vertices)
    v2d, kp2d, joints = _forward(template, _gt_of(s), s["dense_vertex"])
    m = s["dense_mask"] > 0
    assert m.any()
    np.testing.assert_allclose(v2d[m], s["dense_xy"][m], atol=tol)
    kv = s["keypoint_visible"] > 0
    np.testing.assert_allclose(kp2d[kv], s["keypoints"][kv], atol=tol)
    np.testing.assert_allclose(joints, s["gt_joints3d"], atol=1e-5)


def _bbox_of(points):
    lo, hi = points.min(0), points.max(0)
    return np.array([lo[0], lo[1], hi[0] - lo[0] + 1, hi[1] - lo[1] + 1])


# ---------------------------------------------------------------------------------------------
# Crops


def test_crop_affine_centres_and_fits_the_box():
    box = np.array([30.0, 50.0, 40.0, 100.0])
    a = transforms.crop_affine(box, 64, context=1.25)
    # box centre -> crop centre; the enlarged box's long side spans the crop exactly.
    np.testing.assert_allclose(transforms.apply_affine(a, [50.0, 100.0]), [31.5, 31.5], atol=1e-12)
    top, bottom = transforms.apply_affine(a, [[50.0, 100 - 62.5], [50.0, 100 + 62.5]])
    np.testing.assert_allclose(bottom[1] - top[1], 64.0, atol=1e-12)
    # non-square output: the tighter dimension fits.
    a2 = transforms.crop_affine(box, (64, 96), context=1.0)
    np.testing.assert_allclose(a2[0, 0], min(96 / 40, 64 / 100), atol=1e-12)


@pytest.mark.parametrize("rotation", [0.0, 30.0, -75.0])
def test_crop_moves_image_content_with_points(rotation):
    """A bright blob lands where the affine map sends its centre (image and points agree)."""
    image = np.zeros((120, 160, 3), np.uint8)
    p = np.array([97.0, 41.0])
    image[40:43, 96:99] = 255
    crop, (q,), _ = transforms.crop_to_person(image, [60, 20, 60, 60], 96, context=1.3,
                                              rotation=rotation, points=[p])
    w = crop[..., 0].astype(np.float64)
    ys, xs = np.mgrid[:96, :96]
    centroid = np.array([(w * xs).sum(), (w * ys).sum()]) / w.sum()
    np.testing.assert_allclose(centroid, q, atol=0.05)
    # rotation sign: positive = counter-clockwise on screen, like cv2.getRotationMatrix2D.
    ref = cv2.getRotationMatrix2D((0.0, 0.0), rotation, 1.0)[:, :2]
    np.testing.assert_allclose(transforms.crop_affine([0, 0, 10, 10], 10, 1.0, rotation)[:, :2], ref, atol=1e-12)


@SETTINGS
@given(seed=st.integers(0, 10_000), rotation=st.floats(-60, 60), context=st.floats(1.0, 1.6),
       size=st.sampled_from([96, 128, (96, 128)]))
def test_crop_then_project_gt_equals_transformed_points(template, seed, rotation, context, size):
    s = _gt_sample(template, seed)
    box = _bbox_of(s["dense_xy"][s["dense_mask"] > 0])
    out = transforms.crop_to_person(s, box, size, context=context, rotation=rotation)
    h, w = transforms.size_hw(size)
    assert out["image"].shape == (h, w, 3) and out["image"].dtype == np.uint8
    a = transforms.crop_affine(box, size, context, rotation)
    m = out["dense_mask"] > 0
    np.testing.assert_allclose(out["dense_xy"][m],
                               transforms.apply_affine(a, s["dense_xy"])[m], atol=1e-3)
    _check_gt_consistent(template, out)


def test_points_leaving_the_crop_are_masked_and_zeroed():
    s = sample_lib.empty_sample((100, 100), 4, 17)
    s["dense_xy"][:] = [[50, 50], [0, 0], [99, 99], [50, 5]]
    s["dense_mask"][:] = 1
    s["dense_vertex"][:] = [3, 4, 5, 6]
    s["keypoints"][:2] = [[50, 50], [2, 2]]
    s["keypoint_visible"][:2] = 1
    out = transforms.crop_to_person(s, [40, 40, 20, 20], 32, context=1.0)
    np.testing.assert_array_equal(out["dense_mask"], [1, 0, 0, 0])
    np.testing.assert_array_equal(out["dense_vertex"], [3, 0, 0, 0])
    np.testing.assert_array_equal(out["dense_xy"][1:], 0)
    np.testing.assert_array_equal(out["keypoint_visible"][:2], [1, 0])
    np.testing.assert_allclose(out["keypoints"][0], [15.5, 15.5])
    # no ground truth: GT fields stay zero (no translation offset leaks in).
    assert float(out["has_gt"]) == 0 and not np.any(out["gt_translation"])


def test_non_similarity_maps_are_rejected():
    with pytest.raises(ValueError, match="similarity"):
        transforms.similarity_parts(np.array([[2.0, 0.5, 0.0], [0.0, 1.0, 0.0]]))
    with pytest.raises(ValueError, match="similarity"):
        transforms.similarity_parts(np.array([[-1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
    with pytest.raises(ValueError, match="positive size"):
        transforms.crop_affine([0, 0, -5, 10], 32)


# ---------------------------------------------------------------------------------------------
# Flips


def test_flip_moves_pixels_and_swaps_left_right(template):
    s = sample_lib.empty_sample((10, 20), 2, 17)
    s["image"][3, 4] = [10, 20, 30]
    s["dense_xy"][0] = [4, 3]
    s["dense_mask"][0] = 1
    s["dense_vertex"][0] = 7
    s["keypoints"][9] = [4, 3]                  # left_wrist
    s["keypoint_visible"][9] = 1
    out = transforms.flip_horizontal(s, template)
    np.testing.assert_array_equal(out["image"][3, 20 - 1 - 4], [10, 20, 30])
    np.testing.assert_allclose(out["dense_xy"][0], [15, 3])
    assert out["dense_vertex"][0] == int(np.asarray(template.symmetry)[7])
    assert out["keypoint_visible"][9] == 0 and out["keypoint_visible"][10] == 1   # -> right_wrist
    np.testing.assert_allclose(out["keypoints"][10], [15, 3])


@SETTINGS
@given(seed=st.integers(0, 10_000), n_points=st.integers(1, N_MAX))
def test_flip_twice_is_identity(template, seed, n_points):
    s = _gt_sample(template, seed, n_points)
    back = transforms.flip_horizontal(transforms.flip_horizontal(s, template), template)
    assert back.keys() == s.keys()
    for key in s:
        assert back[key].dtype == s[key].dtype and back[key].shape == s[key].shape, key
        if key in ("image", "dense_vertex", "dense_mask", "keypoint_visible"):
            np.testing.assert_array_equal(back[key], s[key], err_msg=key)
        else:
            np.testing.assert_allclose(back[key], s[key], atol=1e-4, err_msg=key)


@FEW
@given(seed=st.integers(0, 10_000))
def test_flipped_gt_reproduces_flipped_points(template, seed):
    s = _gt_sample(template, seed)
    out = transforms.flip_horizontal(s, template)
    _check_gt_consistent(template, out)
    # and the flip really changed something (not a vacuous pass).
    assert not np.allclose(out["gt_pose"], s["gt_pose"])


def test_flip_gt_with_joints24_keypoints():
    t24 = body.default_template("joints24")
    rng = np.random.default_rng(3)
    gt = _gt(rng)
    _, kp, _ = _forward(t24, gt, np.arange(3))
    s = sample_lib.empty_sample(IMAGE_HW, 2, 24)
    s["keypoints"] = kp.astype(np.float32)
    s["keypoint_visible"][:] = 1
    s["has_gt"] = np.asarray(1.0, np.float32)
    for key, value in gt.items():
        s[key] = np.asarray(value, np.float32)
    out = transforms.flip_horizontal(s, t24)
    assert skeletons.keypoint_set_for(24).name == "joints24"
    _, kp_flip, _ = _forward(t24, _gt_of(out), np.arange(3))
    np.testing.assert_allclose(kp_flip, out["keypoints"], atol=1e-3)


def test_crop_then_flip_stays_consistent(template):
    s = _gt_sample(template, 11)
    box = _bbox_of(s["dense_xy"][s["dense_mask"] > 0])
    out = transforms.flip_horizontal(transforms.crop_to_person(s, box, 128, rotation=20.0), template)
    _check_gt_consistent(template, out)


# ---------------------------------------------------------------------------------------------
# Per-pixel labels (iuv)

# DensePose's left/right part pairs (3/4 hands, 5/6 feet, ..., 23/24 head sides); 0 background and
# the torso halves 1, 2 map to themselves. Written here from the DensePose part list.
PART_MIRROR = [0, 1, 2] + [p + 1 if p % 2 else p - 1 for p in range(3, 25)]


def _label_map(rng, hw):
    """Random ``iuv`` labels: parts 0..24 and U, V in 0..254, about 10 % unlabelled (255)."""
    iuv = np.empty(tuple(hw) + (3,), np.uint8)
    iuv[..., 0] = rng.integers(0, 25, hw)
    iuv[..., 1:] = rng.integers(0, 255, tuple(hw) + (2,))
    iuv[rng.uniform(size=hw) < 0.1] = 255
    return iuv


def test_iuv_warp_is_nearest_neighbour_with_unlabelled_outside():
    rng = np.random.default_rng(21)
    h, w = 40, 50
    s = sample_lib.empty_sample((h, w), 2, 17)
    s["iuv"] = _label_map(rng, (h, w))
    # an integer shift: exact pixel copies, 255 where the source lies outside the image
    out = transforms.affine_sample(s, np.array([[1.0, 0.0, 3.0], [0.0, 1.0, -2.0]]), (h, w))["iuv"]
    assert out.dtype == np.uint8 and out.shape == (h, w, 3)
    ys, xs = np.mgrid[:h, :w]
    sx, sy = xs - 3, ys + 2
    ok = (sx >= 0) & (sx < w) & (sy >= 0) & (sy < h)
    np.testing.assert_array_equal(out[ok], s["iuv"][sy[ok], sx[ok]])
    assert np.all(out[~ok] == 255)
    # a rotated zoom: each label is copied from one of the four pixels around its preimage (never a
    # blend); preimages more than a pixel outside the image get 255
    a = transforms.crop_affine([5, 3, 30, 30], 64, context=1.5, rotation=25.0)
    out = transforms.affine_sample(s, a, 64)["iuv"]
    inv = cv2.invertAffineTransform(a)
    ys, xs = np.mgrid[:64, :64]
    src = transforms.apply_affine(inv, np.stack([xs, ys], -1).astype(np.float64))
    x0, y0 = np.floor(src[..., 0]).astype(int), np.floor(src[..., 1]).astype(int)
    inner = (x0 >= 0) & (x0 < w - 1) & (y0 >= 0) & (y0 < h - 1)
    cands = np.stack([s["iuv"][np.clip(y0 + dy, 0, h - 1), np.clip(x0 + dx, 0, w - 1)]
                      for dy in (0, 1) for dx in (0, 1)])                     # (4, 64, 64, 3)
    match = np.any(np.all(cands == out[None], axis=-1), axis=0)
    assert inner.sum() > 1000 and np.all(match[inner])
    far = (src[..., 0] < -1.5) | (src[..., 0] > w + 0.5) | (src[..., 1] < -1.5) | (src[..., 1] > h + 0.5)
    assert far.sum() > 100 and np.all(out[far] == 255)


def test_flip_mirrors_part_labels_and_charts(template):
    np.testing.assert_array_equal(np.asarray(template.part_mirror), PART_MIRROR)
    charts = body.chart_mirror(template)
    # the embedded body's charts mirror as U -> 1 - U on the torso, the limbs, hands and feet; the
    # head's two charts are not mirror images of each other
    np.testing.assert_array_equal(charts, [False] + [True] * 22 + [False, False])
    rng = np.random.default_rng(22)
    s = sample_lib.empty_sample((12, 20), 2, 17)
    s["iuv"] = _label_map(rng, (12, 20))
    out = transforms.flip_horizontal(s, template)["iuv"]
    assert out.dtype == np.uint8 and out.shape == s["iuv"].shape
    for y, x in np.ndindex(12, 20):
        part, u, v = (int(c) for c in s["iuv"][y, 20 - 1 - x])
        assert out[y, x, 0] == (PART_MIRROR[part] if part < 25 else 255), (y, x)
        if 1 <= part <= 22 and u < 255:
            assert (out[y, x, 1], out[y, x, 2]) == (254 - u, v), (y, x)
        else:                                   # background, head, unlabelled: no chart coordinates
            assert out[y, x, 1] == 255 and out[y, x, 2] == 255, (y, x)
    assert np.any(out[..., 0] != s["iuv"][:, ::-1, 0])   # left/right parts really swapped
    twice = transforms.flip_horizontal(transforms.flip_horizontal(s, template), template)["iuv"]
    np.testing.assert_array_equal(twice[..., 0], s["iuv"][..., 0])
    kept = (s["iuv"][..., 0] >= 1) & (s["iuv"][..., 0] <= 22) & (s["iuv"][..., 1] < 255)
    np.testing.assert_array_equal(twice[kept], s["iuv"][kept])


def test_flipped_label_map_is_the_mirrored_body_rendered(template):
    """The flipped map of a rendered person is the map the renderer draws of the mirrored person
    (the flipped GT parameters): the same parts and, on the mirror-symmetric charts, the same U, V."""
    from bodyjax.data import synthetic

    cfg = synthetic.SyntheticConfig(image_size=96)
    for seed in (0, 1, 2):
        params = synthetic.sample_params(np.random.default_rng(seed), template, cfg)
        s, _ = synthetic.render_sample(template, params, cfg)
        flipped = transforms.flip_horizontal(s, template)
        mirrored = body.BodyParams(**{f: np.asarray(flipped[f"gt_{f}"]) for f in
                                      ("pose", "segment_scales", "rotation", "scale", "translation")})
        ref, _ = synthetic.render_sample(template, mirrored, cfg)
        a, b = flipped["iuv"].astype(int), ref["iuv"].astype(int)
        fg = (b[..., 0] >= 1) & (b[..., 0] <= 24)
        assert fg.sum() > 400, fg.sum()
        assert np.mean(a[..., 0][fg] == b[..., 0][fg]) > 0.97, seed
        same = fg & (a[..., 0] == b[..., 0]) & (a[..., 0] <= 22) & (a[..., 1] < 255) & (b[..., 1] < 255)
        assert same.sum() > 0.8 * fg.sum() * np.mean(b[..., 0][fg] <= 22)
        err = np.abs(a[same][:, 1:] - b[same][:, 1:])       # label units (254 = the chart's width)
        assert np.mean(err <= 3) > 0.95 and np.median(err) <= 1, (seed, np.percentile(err, [50, 95, 99]))
        # the flip really moved the labels (not a vacuous pass)
        assert np.mean(a[..., 1][same] == s["iuv"][..., 1][same]) < 0.5
