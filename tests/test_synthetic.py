"""Tests of the synthetic data set (bodyjax.data.synthetic), its keypoint corpus and the rasteriser."""
import jax
import numpy as np
import pytest

from bodyjax import body, render
from bodyjax.data import sample as sample_lib
from bodyjax.data import synthetic

SIZE = 128
SEED = 7
NUM = 24


@pytest.fixture(scope="module")
def template():
    return body.default_template()


@pytest.fixture(scope="module")
def cfg():
    return synthetic.SyntheticConfig(image_size=SIZE)


@pytest.fixture(scope="module")
def data(template, cfg):
    """``NUM`` samples with extras and their ground-truth bodies posed by ``body.forward``."""
    pairs = list(synthetic.generate(template, cfg, SEED, NUM, with_extras=True))
    batch = sample_lib.stack([s for s, _ in pairs])
    out = jax.jit(body.forward)(template, sample_lib.params_from_record(batch, "gt"))
    return pairs, batch, jax.tree_util.tree_map(np.asarray, out)


def _assert_same(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def _differs(a: dict, b: dict) -> bool:
    return any(not np.array_equal(a[k], b[k]) for k in ("image", "dense_xy", "gt_pose"))


# ----------------------------------------------------------------------------------------------
# Determinism


def test_same_seed_and_index_give_identical_samples(template, cfg, data):
    again = list(synthetic.generate(template, cfg, SEED, 3))
    for i in range(3):
        _assert_same(data[0][i][0], again[i])
    assert _differs(data[0][0][0], data[0][1][0])
    other_seed = next(synthetic.generate(template, cfg, SEED + 1, 1))
    assert _differs(data[0][0][0], other_seed)


def test_start_offset_and_standalone_api_reproduce_sample_k(template, cfg, data):
    k = 5
    sample_k = next(synthetic.generate(template, cfg, SEED, 1, start=k))
    _assert_same(data[0][k][0], sample_k)
    # sample_params followed by render_sample with the sample's own generator is the same draw.
    rng = np.random.default_rng([SEED, k])
    params = synthetic.sample_params(rng, template, cfg)
    alone, extras = synthetic.render_sample(template, params, cfg, rng)
    _assert_same(data[0][k][0], alone)
    _assert_same(data[0][k][1], extras)


# ----------------------------------------------------------------------------------------------
# Record format


def test_record_format(template, cfg, data):
    pairs, batch, _ = data
    k = template.num_keypoints
    for i, (s, e) in enumerate(pairs):
        sample_lib.validate_sample(s, (SIZE, SIZE), cfg.max_points, k, template.num_vertices,
                                   source=f"synthetic[{i}]")
        n = int(s["dense_mask"].sum())
        assert cfg.num_points[0] * 0.9 <= n <= cfg.num_points[1]
        assert np.all(s["dense_mask"][:n] == 1) and np.all(s["dense_mask"][n:] == 0)  # padding last
        assert len(np.unique(s["dense_vertex"][:n])) == n                         # deduplicated
        assert s["has_gt"] == 1
        assert e["iuv"].shape == (SIZE, SIZE, 3) and e["iuv"].dtype == np.float32
        assert e["mask"].shape == (SIZE, SIZE) and e["mask"].dtype == bool
        np.testing.assert_array_equal(e["mask"], e["iuv"][..., 0] > 0)
        uv = e["iuv"][e["mask"]][:, 1:]
        assert uv.min() >= 0 and uv.max() <= 1
        assert set(np.unique(e["iuv"][..., 0]).astype(int)) <= set(range(25))
    split = synthetic.make_split(template, cfg, SEED, 2)
    assert split["image"].shape == (2, SIZE, SIZE, 3) and split["image"].dtype == np.uint8
    _assert_same({k: v[1] for k, v in split.items()}, pairs[1][0])


def test_config_validation():
    with pytest.raises(ValueError, match="num_points"):
        synthetic.SyntheticConfig(num_points=(100, 200), max_points=160)
    with pytest.raises(ValueError, match="archetype_weights"):
        synthetic.SyntheticConfig(archetype_weights=(1.0,))


# ----------------------------------------------------------------------------------------------
# The must-show property: the ground truth reproduces the annotations


def test_ground_truth_projects_onto_annotations(template, data):
    pairs, batch, out = data
    for i, (s, _) in enumerate(pairs):
        m = s["dense_mask"] > 0
        err = np.abs(out.vertices2d[i][s["dense_vertex"][m]] - s["dense_xy"][m]).max()
        assert err < 1.0, f"sample {i}: dense point {err:.3f} px from its vertex"
        v = s["keypoint_visible"] > 0
        kerr = np.abs(out.keypoints2d[i][v] - s["keypoints"][v]).max()
        assert kerr < 1.0, f"sample {i}: keypoint {kerr:.3f} px off"
    joints = out.joints - out.joints[:, :1]
    np.testing.assert_allclose(batch["gt_joints3d"], joints, atol=1e-5)
    r = batch["gt_rotation"].astype(np.float64)
    np.testing.assert_allclose(r @ np.swapaxes(r, 1, 2), np.broadcast_to(np.eye(3), r.shape),
                               atol=1e-5)
    np.testing.assert_allclose(np.linalg.det(r), 1.0, atol=1e-5)
    np.testing.assert_array_equal(batch["gt_pose"][:, 0], 0.0)


def test_people_are_in_frame(data):
    _, _, out = data
    v = out.vertices2d
    inside = (v.min(axis=(1, 2)) >= 0) & (v.max(axis=(1, 2)) <= SIZE - 1)
    assert inside.all(), f"{(~inside).sum()} of {len(v)} samples leave the frame"
    # and they fill a good part of it
    extent = (v.max(1) - v.min(1)).max(1)
    assert extent.min() > 0.6 * SIZE


def _one_ring(faces: np.ndarray, num_vertices: int) -> list:
    ring = [set() for _ in range(num_vertices)]
    for a, b, c in faces:
        ring[a].update((b, c))
        ring[b].update((a, c))
        ring[c].update((a, b))
    return ring


def test_dense_vertices_are_visible_in_an_independent_zbuffer(template, data):
    """Every dense vertex is the visible surface within half a pixel in a 2× z-buffer of all faces.

    The reference renders the whole mesh (no culling) at twice the resolution. At the four 2×
    pixel centres nearest to the vertex (all within half an original pixel), at least one must show
    a surface not nearer than the vertex minus 1 cm, or a triangle touching the vertex's own 1-ring
    (its own sloping surface).
    """
    pairs, _, out = data
    faces = np.asarray(template.faces)
    ring = _one_ring(faces, template.num_vertices)
    strict_fail, total = 0, 0
    for i, (s, _) in enumerate(pairs):
        m = s["dense_mask"] > 0
        vid = s["dense_vertex"][m]
        xy2 = (out.vertices2d[i].astype(np.float64) + 0.5) * 2 - 0.5
        z = out.vertices[i][:, 2].astype(np.float64)
        r2 = render.rasterize(xy2, z, faces, 2 * SIZE, 2 * SIZE)

        def sees_vertex(v, col, row):
            f = r2.face[row, col]
            if f < 0 or z[v] <= r2.depth[row, col] + 0.01:
                return True
            return bool(set(faces[f].tolist()) & (ring[v] | {v}))

        for v in vid:
            x, y = xy2[v]
            x0, y0 = int(np.floor(x)), int(np.floor(y))
            corners = [(min(max(x0 + dx, 0), 2 * SIZE - 1), min(max(y0 + dy, 0), 2 * SIZE - 1))
                       for dx in (0, 1) for dy in (0, 1)]
            assert any(sees_vertex(v, c, r) for c, r in corners), \
                f"sample {i}: vertex {v} is hidden in the 2x z-buffer"
            strict_fail += not sees_vertex(v, int(np.rint(x)), int(np.rint(y)))
            total += 1
    assert strict_fail <= 0.005 * total, f"{strict_fail}/{total} fail at the nearest 2x pixel"


def test_hidden_and_back_facing_vertices_are_never_selected(template, data):
    pairs, _, out = data
    faces = np.asarray(template.faces)
    v_all = np.arange(template.num_vertices)
    for i, (s, _) in enumerate(pairs):
        v = out.vertices[i].astype(np.float64)
        n_z = np.cross(v[faces[:, 1]] - v[faces[:, 0]], v[faces[:, 2]] - v[faces[:, 0]])[:, 2]
        front = np.zeros(template.num_vertices, bool)
        front[faces[n_z < 0].reshape(-1)] = True      # has at least one camera-facing triangle
        vid = s["dense_vertex"][s["dense_mask"] > 0]
        assert front[vid].all(), f"sample {i}: a selected vertex has only back-facing triangles"
        # Vertices far behind the visible surface at their pixel (occluded by > 5 cm) are never used.
        xy = out.vertices2d[i].astype(np.float64)
        col = np.clip(np.rint(xy[:, 0]).astype(int), 0, SIZE - 1)
        row = np.clip(np.rint(xy[:, 1]).astype(int), 0, SIZE - 1)
        depth = pairs[i][1]["depth"]
        hidden = v_all[v[:, 2] > depth[row, col] + 0.05]
        assert len(hidden) > 1000                       # the check has something to catch
        assert not np.isin(vid, hidden).any()


def _turned(yaw_deg: float, translation=(63.5, 60.0)) -> body.BodyParams:
    """The rest-pose person turned by ``yaw_deg`` about the vertical (+90°: its left to the camera)."""
    c, s = np.cos(np.radians(yaw_deg)), np.sin(np.radians(yaw_deg))
    rot = np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]], np.float32)
    return body.BodyParams(pose=np.zeros((24, 3), np.float32), segment_scales=np.ones(24, np.float32),
                           rotation=rot, scale=np.float32(60.0),
                           translation=np.array(translation, np.float32))


def test_keypoint_visibility_follows_the_view(template, cfg):
    """Rest-pose person seen from the front, the left side, the back and the right side."""
    names = template.keypoint_names

    def visible(yaw_deg):
        smp, _ = synthetic.render_sample(template, _turned(yaw_deg), cfg, np.random.default_rng(0))
        return {n for n, v in zip(names, smp["keypoint_visible"]) if v > 0}

    limbs = [f"{side}_{j}" for side in ("left", "right")
             for j in ("shoulder", "elbow", "wrist", "hip", "knee", "ankle")]
    front = visible(0)
    assert {"nose", "left_eye", "right_eye", *limbs} <= front
    back = visible(180)
    assert not {"nose", "left_eye", "right_eye"} & back
    assert {f"{side}_{j}" for side in ("left", "right") for j in ("shoulder", "hip", "knee")} <= back
    for yaw, near, far in ((90, "left", "right"), (-90, "right", "left")):
        seen = visible(yaw)  # +90° turns the body's left side to the camera
        assert {f"{near}_{j}" for j in ("eye", "ear", "shoulder", "hip", "knee", "ankle")} <= seen
        assert not {f"{far}_{j}" for j in ("eye", "ear", "shoulder", "hip", "knee")} & seen


# ----------------------------------------------------------------------------------------------
# Per-pixel labels (the record's iuv)


def test_iuv_labels_are_the_rendered_surface(data):
    """Every pixel is labelled: the part and quantised (U, V) of the z-buffer's surface, background
    (part 0, no U, V) where the mask is empty."""
    pairs, _, _ = data
    for i, (s, e) in enumerate(pairs):
        iuv, mask = s["iuv"], e["mask"]
        np.testing.assert_array_equal(iuv[..., 0], e["iuv"][..., 0].astype(np.uint8), err_msg=f"sample {i}")
        assert np.all(iuv[~mask] == (0, sample_lib.UNLABELLED, sample_lib.UNLABELLED))
        assert np.all(iuv[mask][:, 0] >= 1) and np.all(iuv[mask][:, 0] <= 24)
        assert iuv[mask][:, 1:].max() <= sample_lib.UV_SCALE
        np.testing.assert_array_equal(iuv[mask][:, 1:], np.rint(sample_lib.UV_SCALE * e["iuv"][mask][:, 1:]))


def test_iuv_labels_agree_with_the_correspondences(template, data):
    """At the pixel of a dense point the label is its vertex's part (98.6% measured; the rest are
    vertices within half a pixel of a part boundary) and, on that part, about the vertex's (U, V)."""
    pairs, _, _ = data
    part_ids, uv = np.asarray(template.part_ids), np.asarray(template.uv)
    same, uv_err = [], []
    for s, _ in pairs:
        m = s["dense_mask"] > 0
        col, row = np.rint(s["dense_xy"][m]).astype(int).T
        label = s["iuv"][row, col]
        vid = s["dense_vertex"][m]
        ok = label[:, 0] == part_ids[vid]
        same.append(ok)
        uv_err.append(np.abs(label[ok, 1:] / sample_lib.UV_SCALE - uv[vid[ok]]).max(1))
    same, uv_err = np.concatenate(same), np.concatenate(uv_err)
    assert same.mean() > 0.97, f"part agreement {same.mean():.3f}"
    assert np.median(uv_err) < 0.03 and np.percentile(uv_err, 90) < 0.06, \
        (np.median(uv_err), np.percentile(uv_err, 90))


# ----------------------------------------------------------------------------------------------
# The 2D keypoint corpus


@pytest.fixture(scope="module")
def corpus(template, cfg):
    return synthetic.pose_corpus(template, cfg, SEED, 40, with_params=True)


def test_corpus_keypoints_are_its_bodies_projected(template, cfg, corpus):
    assert corpus["keypoints"].shape == (40, template.num_keypoints, 2)
    assert corpus["keypoint_visible"].shape == (40, template.num_keypoints)
    assert corpus["keypoints"].dtype == corpus["keypoint_visible"].dtype == np.float32
    out = jax.jit(body.forward)(template, sample_lib.params_from_record(corpus, "gt"))
    np.testing.assert_allclose(corpus["keypoints"], np.asarray(out.keypoints2d), atol=1e-3)
    v = np.asarray(out.vertices2d)                       # framed like the data set's people
    assert v.min() >= 0 and v.max() <= SIZE - 1
    assert ((v.max(1) - v.min(1)).max(1) > 0.6 * SIZE).all()


def test_corpus_draws_the_data_sets_people_from_its_own_stream(template, cfg, corpus, data):
    for i in (0, 17, 39):
        p = synthetic.sample_params(synthetic.corpus_rng(SEED, i), template, cfg)
        for f in ("pose", "segment_scales", "rotation"):
            np.testing.assert_array_equal(corpus[f"gt_{f}"][i], getattr(p, f), err_msg=f)
        np.testing.assert_allclose(corpus["gt_scale"][i], p.scale, rtol=1e-5)
        np.testing.assert_allclose(corpus["gt_translation"][i], p.translation, atol=1e-3)
    # none of the data set's people of the same seed
    data_pose = data[1]["gt_pose"].reshape(len(data[1]["gt_pose"]), -1)
    gap = np.abs(corpus["gt_pose"].reshape(40, 1, -1) - data_pose[None]).max(-1)
    assert gap.min() > 1e-3
    # person i does not depend on how many are drawn
    small = synthetic.pose_corpus(template, cfg, SEED, 5)
    np.testing.assert_array_equal(small["keypoints"], corpus["keypoints"][:5])
    np.testing.assert_array_equal(small["keypoint_visible"], corpus["keypoint_visible"][:5])


def test_corpus_labels_follow_the_view(template):
    """Body keypoints are labelled whenever in the image; the face only where it faces the camera."""
    names = template.keypoint_names
    face = {"nose", "left_eye", "right_eye", "left_ear", "right_ear"}

    def labelled(yaw_deg, translation=(63.5, 60.0)):
        out = body.forward(template, _turned(yaw_deg, translation))
        rule = synthetic.labelled_keypoints(np.asarray(out.keypoints), np.asarray(out.keypoints2d),
                                            names, SIZE)
        return {n for n, v in zip(names, rule) if v > 0}

    body_kp = set(names) - face
    assert labelled(0) == set(names)
    assert labelled(180) == body_kp | {"left_ear", "right_ear"}
    for yaw, near, far in ((90, "left", "right"), (-90, "right", "left")):
        assert labelled(yaw) == body_kp | {"nose", f"{near}_eye", f"{near}_ear"}
    assert labelled(0, translation=(63.5, 200.0)) == set()           # below the image
    partly = labelled(0, translation=(63.5, 120.0))                 # the legs leave the frame
    assert "nose" in partly and "left_ankle" not in partly


def test_corpus_face_labels_agree_with_the_rendered_visibility(template, data):
    """The geometric face rule against the z-buffer rule of the rendered samples (about 0.9 on a
    few hundred samples: the rule does not see an arm in front of the face)."""
    _, batch, out = data
    names = template.keypoint_names
    rule = synthetic.labelled_keypoints(out.keypoints, batch["keypoints"], names, SIZE)
    face = [names.index(n) for n in ("nose", "left_eye", "right_eye", "left_ear", "right_ear")]
    agree = (rule[:, face] > 0) == (batch["keypoint_visible"][:, face] > 0)
    assert agree.mean() > 0.8, agree.mean(0)
    assert np.all(rule[:, [k for k in range(len(names)) if k not in face]] == 1)


# ----------------------------------------------------------------------------------------------
# Pose and shape distribution


def test_joint_limits_respected(template):
    rng = np.random.default_rng(0)
    hinge_axes = np.asarray(template.hinge_axes)
    limits = {4: 140, 5: 140, 18: 100, 19: 100}
    poses = []
    for arch in synthetic.ARCHETYPES:
        poses += [synthetic.sample_pose(rng, template, archetype=arch) for _ in range(60)]
    poses += [synthetic.sample_pose(rng, template, noise=3.0) for _ in range(100)]
    poses = np.stack(poses)
    angles = np.degrees(synthetic.hinge_angles(template, poses))
    for col, j in enumerate(template.hinge_joints):
        assert angles[:, col].min() >= -1e-4 and angles[:, col].max() <= limits[j] + 1e-3, j
        off_axis = poses[:, j] - np.radians(angles[:, col, None]) * hinge_axes[j]
        np.testing.assert_allclose(off_axis, 0.0, atol=1e-5)
    assert angles.max(0).min() > 60            # the hinges actually bend
    # spine, neck and head stay small: bounded by their limit table, typically a few degrees
    for name in ("spine1", "spine2", "spine3", "neck", "head"):
        j = body.JOINT_NAMES.index(name)
        group = "spine" if name.startswith("spine") else name
        # the angle of a composition is at most the sum of the factors' angles
        bound = sum(max(abs(lo), abs(hi)) for lo, hi in synthetic.JOINT_LIMITS[group].values())
        deg = np.degrees(np.linalg.norm(poses[:, j], axis=-1))
        assert deg.max() <= bound + 1e-3, name
        typical = deg[:-100]                      # the draws with the default perturbation
        assert np.median(typical) < 20 and np.percentile(typical, 95) < 45, name


def test_archetypes_are_distinct_people(template):
    """Sitting / crouching bend the hips and knees, standing does not, bending leans the body."""
    rng = np.random.default_rng(1)
    knee = body.JOINT_NAMES.index("L_knee")

    def knee_deg(arch):
        p = np.stack([synthetic.sample_pose(rng, template, archetype=arch) for _ in range(40)])
        return np.degrees(synthetic.hinge_angles(template, p))[:, list(template.hinge_joints).index(knee)]

    assert np.median(knee_deg("standing")) < 20
    assert np.median(knee_deg("sitting")) > 60
    assert np.median(knee_deg("crouching")) > 100
    lean = [synthetic.sample_pose(rng, template, archetype="bending")[0, 0] for _ in range(20)]
    assert np.degrees(np.median(lean)) > 20


def test_segment_scales_smooth_and_nearly_symmetric(template, cfg):
    rng = np.random.default_rng(3)
    s = np.stack([synthetic.sample_segment_scales(rng, template, cfg) for _ in range(300)])
    lo, hi = cfg.scale_clip
    assert s.min() >= lo and s.max() <= hi
    log_s = np.log(s)
    assert 0.03 < log_s.std() < 0.12
    mirror = np.asarray(template.joint_mirror)
    asym = np.abs(log_s - log_s[:, mirror]).mean()
    pairs = body.segment_adjacency(template)
    adjacent = np.abs(log_s[:, pairs[:, 0]] - log_s[:, pairs[:, 1]]).mean()
    shuffled = np.abs(log_s - log_s[rng.permutation(len(s))]).mean()   # independent bodies
    assert asym < 0.4 * shuffled and adjacent < 0.5 * shuffled


# ----------------------------------------------------------------------------------------------
# Rasteriser against a brute-force per-pixel reference


def _brute_force(xy, z, faces, h, w, cull):
    face = np.full((h, w), -1)
    depth = np.full((h, w), np.inf)
    for row in range(h):
        for col in range(w):
            for f, (a, b, c) in enumerate(faces):
                (ax, ay), (bx, by), (cx, cy) = xy[a], xy[b], xy[c]
                area = (bx - ax) * (cy - ay) - (by - ay) * (cx - ax)
                if abs(area) < 1e-12 or (cull and area >= 0):
                    continue
                w0 = ((bx - col) * (cy - row) - (by - row) * (cx - col)) / area
                w1 = ((cx - col) * (ay - row) - (cy - row) * (ax - col)) / area
                w2 = 1 - w0 - w1
                if min(w0, w1, w2) >= 0:
                    d = w0 * z[a] + w1 * z[b] + w2 * z[c]
                    if d < depth[row, col]:
                        face[row, col], depth[row, col] = f, d
    return face, depth


@pytest.mark.parametrize("cull", [False, True])
def test_rasterize_matches_brute_force(cull):
    rng = np.random.default_rng(11)
    h, w = 9, 12
    for _ in range(15):
        xy = rng.uniform(-2, [w + 1, h + 1], size=(6, 2))
        z = rng.uniform(0, 1, size=6)
        faces = np.array([[0, 1, 2], [3, 4, 5], [0, 2, 1]])   # the third is the first reversed
        ref_face, ref_depth = _brute_force(xy, z, faces, h, w, cull)
        r = render.rasterize(xy, z, faces, h, w, cull_back_faces=cull)
        if not cull:   # faces 0 and 2 coincide: either may win, compare the surface and depth
            ref_face = np.where(ref_face == 2, 0, ref_face)
            got = np.where(r.face == 2, 0, r.face)
        else:
            got = r.face
        np.testing.assert_array_equal(got, ref_face)
        np.testing.assert_allclose(r.depth, ref_depth.astype(np.float32), rtol=1e-6)
        m = r.face >= 0
        np.testing.assert_allclose(r.bary[m].sum(-1), 1.0, atol=1e-5)


def test_joints24_keypoint_set(template):
    cfg24 = synthetic.SyntheticConfig(keypoint_set="joints24", num_points=(40, 60), max_points=64)
    t24 = body.with_keypoints(template, "joints24")
    s = next(synthetic.generate(template, cfg24, 0, 1))
    sample_lib.validate_sample(s, (SIZE, SIZE), 64, 24, template.num_vertices)
    params = body.BodyParams(pose=s["gt_pose"], segment_scales=s["gt_segment_scales"],
                             rotation=s["gt_rotation"], scale=s["gt_scale"],
                             translation=s["gt_translation"])
    out = body.forward(t24, params)
    np.testing.assert_allclose(s["keypoints"], np.asarray(out.joints2d), atol=1e-3)
    assert s["keypoint_visible"].sum() >= 8
