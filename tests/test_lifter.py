"""Tests for bodyjax.lifter (multi-view cGAN lifter, eq. 1-6), its losses in bodyjax.losses and bodyjax.skeletons."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bodyjax import lifter, losses, skeletons
from bodyjax.batch import Batch
from bodyjax.loop import epochs

COCO = skeletons.get_keypoint_set("coco17")
J24 = skeletons.get_keypoint_set("joints24")
# CPU-sized networks; a larger learning rate so that a few dozen steps show the joint loss at
# work. Every training test uses SMALL and batches of 32 so that they share two compilations.
SMALL = lifter.LifterConfig(hidden=64, learning_rate=1e-3)
BATCH = 32


# ---------------------------------------------------------------------------------------------
# Helpers (NumPy, float64)


def _base_coco_skeleton():
    """A plausible standing coco17 skeleton (metres, y down, z away from the camera)."""
    p = np.zeros((17, 3))
    p[0] = [0.0, -0.65, -0.08]                   # nose
    p[1], p[2] = [0.03, -0.68, -0.06], [-0.03, -0.68, -0.06]   # eyes (left is +x)
    p[3], p[4] = [0.07, -0.66, 0.0], [-0.07, -0.66, 0.0]       # ears
    p[5], p[6] = [0.18, -0.45, 0.0], [-0.18, -0.45, 0.0]       # shoulders
    p[7], p[8] = [0.22, -0.18, 0.02], [-0.22, -0.18, 0.02]     # elbows
    p[9], p[10] = [0.24, 0.06, -0.05], [-0.24, 0.06, -0.05]    # wrists
    p[11], p[12] = [0.1, 0.05, 0.0], [-0.1, 0.05, 0.0]         # hips
    p[13], p[14] = [0.11, 0.45, -0.02], [-0.11, 0.45, -0.02]   # knees
    p[15], p[16] = [0.11, 0.85, 0.02], [-0.11, 0.85, 0.02]     # ankles
    return p


def _random_poses(rng, m, noise=0.08):
    """(m, 17, 3) noisy, randomly yawed copies of the base skeleton."""
    base = _base_coco_skeleton()
    pts = base[None] + noise * rng.standard_normal((m, 17, 3))
    phi = rng.uniform(-np.pi, np.pi, m)
    c, s = np.cos(phi), np.sin(phi)
    x, y, z = pts[..., 0], pts[..., 1], pts[..., 2]
    return np.stack([c[:, None] * x + s[:, None] * z, y, -s[:, None] * x + c[:, None] * z], -1)


def _np_rot_y(phi):
    c, s = np.cos(phi), np.sin(phi)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def _pixel_data(rng, m):
    """Pixel-unit 2D keypoints, visibility and 3D targets (x_img, y_img, s*z) of m poses."""
    pts = _random_poses(rng, m)
    s = rng.uniform(150.0, 250.0, (m, 1, 1))
    t = rng.uniform(100.0, 300.0, (m, 1, 2))
    joints3d = s * pts + np.concatenate([t, np.zeros((m, 1, 1))], -1)
    vis = np.ones((m, 17), np.float32)
    return joints3d[..., :2].astype(np.float32), vis, joints3d.astype(np.float32)


MEAN_RATIOS = np.asarray(skeletons.bone_ratios(jnp.asarray(_base_coco_skeleton()), COCO))


def _count_dense(params):
    mlp = params["mlp"]
    dense = [k for k in mlp if k.startswith("Dense_")]
    assert all(set(mlp[k]) == {"kernel", "bias"} for k in dense)
    return len(dense), len(mlp)


# ---------------------------------------------------------------------------------------------
# skeletons


def _swap_side(name):
    for a, b in (("left_", "right_"), ("right_", "left_"), ("L_", "R_"), ("R_", "L_")):
        if name.startswith(a):
            return b + name[len(a):]
    return name


def _is_left(name):
    return name.startswith("left_") or name.startswith("L_")


def test_keypoint_sets_metadata():
    for ks in (COCO, J24):
        n = ks.num_keypoints
        perm = np.asarray(ks.flip_permutation)
        assert sorted(perm) == list(range(n)) and np.all(perm[perm] == np.arange(n))
        for a, b in enumerate(perm):  # flip maps left names onto right names and back
            assert ks.names[b] == _swap_side(ks.names[a])
        for i, j in ks.symmetric_bones:  # mirror bone of a symmetric pair = flip of the other
            (pa, ca), (pb, cb) = ks.bones[i], ks.bones[j]
            assert (perm[pa], perm[ca]) == (pb, cb)
            assert _is_left(ks.names[pa]) or _is_left(ks.names[ca])  # left bone first
        bones = set(ks.bones)
        assert all(0 <= p < n and 0 <= c < n for p, c in bones)
        paired = {e for pair in ks.symmetric_bones for e in pair}
        for e, (p, c) in enumerate(ks.bones):  # every unpaired bone is its own mirror (widths)
            if e not in paired:
                assert {perm[p], perm[c]} == {p, c}
    assert len(J24.bones) == 23 and J24.root == (0,)
    assert all(J24.bones[j - 1] == (skeletons.JOINTS24_PARENTS[j], j) for j in range(1, 24))
    assert COCO.root == (11, 12) and COCO.trunk == ((5, 6), (11, 12))
    assert skeletons.get_keypoint_set(COCO) is COCO
    assert skeletons.keypoint_set_for(24) is J24
    with pytest.raises(KeyError):
        skeletons.get_keypoint_set("mpii")


def test_root_point_visibility_fallback():
    p = jnp.asarray(np.random.default_rng(0).standard_normal((17, 2)), jnp.float32)
    vis = jnp.ones(17)
    np.testing.assert_allclose(skeletons.root_point(p, COCO, vis), (p[11] + p[12]) / 2, atol=1e-6)
    np.testing.assert_allclose(skeletons.root_point(p, COCO, vis.at[12].set(0)), p[11], atol=1e-6)
    no_hips = vis.at[11].set(0).at[12].set(0)
    np.testing.assert_allclose(skeletons.root_point(p, COCO, no_hips),
                               p[np.asarray(no_hips) > 0].mean(0), atol=1e-6)
    np.testing.assert_allclose(skeletons.root_point(p, COCO, jnp.zeros(17)), [0, 0], atol=1e-7)


# ---------------------------------------------------------------------------------------------
# Networks


def test_network_shapes_and_eight_dense_layers():
    state = lifter.create_state(jax.random.PRNGKey(0), "coco17", MEAN_RATIOS, SMALL)
    g, d = state.generator, state.discriminator
    assert _count_dense(g.params) == (8, 8)
    assert _count_dense(d.params) == (8, 8)
    kp = jnp.ones((4, 3, 17, 2))
    vis = jnp.ones((4, 3, 17))
    z = jax.jit(g.apply_fn)({"params": g.params}, kp, vis)
    logit = jax.jit(d.apply_fn)({"params": d.params}, kp)
    assert z.shape == (4, 3, 17) and z.dtype == jnp.float32
    assert logit.shape == (4, 3) and logit.dtype == jnp.float32
    assert g.params["mlp"]["Dense_0"]["kernel"].shape == (3 * 17, 64)  # coords + mask
    assert d.params["mlp"]["Dense_0"]["kernel"].shape == (2 * 17, 64)
    assert g.params["mlp"]["Dense_7"]["kernel"].shape == (64, 17)
    assert d.params["mlp"]["Dense_7"]["kernel"].shape == (64, 1)
    # Invisible keypoints are ignored: changing their coordinates does not change the output.
    vis2 = vis.at[..., 3].set(0)
    g_apply = jax.jit(g.apply_fn)
    np.testing.assert_array_equal(g_apply({"params": g.params}, kp, vis2),
                                  g_apply({"params": g.params}, kp.at[..., 3, :].set(7.0), vis2))


# ---------------------------------------------------------------------------------------------
# Normalisation and projection


@settings(max_examples=25, deadline=None)
@given(phi=st.floats(-2 * np.pi, 2 * np.pi), seed=st.integers(0, 2**16))
def test_rotate_about_vertical_matches_numpy(phi, seed):
    pts = np.random.default_rng(seed).standard_normal((5, 17, 3))
    expected = pts @ _np_rot_y(phi).T
    got = lifter.rotate_about_vertical(jnp.asarray(pts, jnp.float32), phi)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_rotate_zero_and_half_turn():
    pts = jnp.asarray(np.random.default_rng(1).standard_normal((3, 17, 3)), jnp.float32)
    np.testing.assert_allclose(lifter.rotate_about_vertical(pts, 0.0), pts, atol=1e-7)
    half = lifter.rotate_about_vertical(pts, np.pi)
    np.testing.assert_allclose(half, pts * jnp.asarray([-1.0, 1.0, -1.0]), atol=1e-6)


def test_normalize_keypoints2d_properties():
    rng = np.random.default_rng(2)
    kp, vis, _ = _pixel_data(rng, 6)
    vis[0, 3] = 0
    u, root, scale = lifter.normalize_keypoints2d(jnp.asarray(kp), jnp.asarray(vis))
    u = np.asarray(u)
    np.testing.assert_allclose(root, kp[:, 11:13].mean(1), atol=1e-3)
    np.testing.assert_allclose((u[:, 11] + u[:, 12]) / 2, 0.0, atol=1e-6)
    rms = np.sqrt((vis * (u ** 2).sum(-1)).sum(-1) / vis.sum(-1))
    np.testing.assert_allclose(rms, 1.0, atol=1e-5)
    assert np.all(u[0, 3] == 0)
    u2, _, scale2 = lifter.normalize_keypoints2d(jnp.asarray(3.0 * kp + 17.0), jnp.asarray(vis))
    np.testing.assert_allclose(u2, u, atol=1e-5)
    np.testing.assert_allclose(scale2, 3.0 * scale, rtol=1e-5)


def test_project_views_zero_angle_and_half_turn():
    rng = np.random.default_rng(3)
    kp, vis, joints3d = _pixel_data(rng, 4)
    vis[1, 9] = 0
    p3 = lifter.normalize_joints3d(jnp.asarray(joints3d), jnp.asarray(kp), jnp.asarray(vis))
    u, _, _ = lifter.normalize_keypoints2d(jnp.asarray(kp), jnp.asarray(vis))
    np.testing.assert_allclose(p3[..., :2], u, atol=1e-5)  # same frame as the 2D input
    views = jax.jit(lifter.project_views)(p3, jnp.asarray(vis),
                                          jnp.deg2rad(jnp.asarray([0.0, 180.0, 90.0])))
    assert views.shape == (4, 3, 17, 2)
    np.testing.assert_allclose(views[:, 0], u, atol=1e-5)
    np.testing.assert_allclose(views[:, 1], u * jnp.asarray([-1.0, 1.0]), atol=1e-5)
    # 90 degrees: x' = z, renormalised to RMS 1; invisible keypoints stay 0.
    z = np.asarray(p3[..., 2])
    x90 = np.asarray(views[:, 2])
    ref = np.stack([z, np.asarray(p3[..., 1])], -1)
    ref /= np.sqrt((vis * (ref ** 2).sum(-1)).sum(-1) / vis.sum(-1))[:, None, None]
    np.testing.assert_allclose(x90, ref, atol=1e-4)
    assert np.all(np.asarray(views[1, :, 9]) == 0)


# ---------------------------------------------------------------------------------------------
# Geometric losses


@pytest.mark.parametrize("k", [0.01, 1.0, 250.0])
def test_l_ratio_zero_for_average_proportions_at_any_scale(k):
    base = _base_coco_skeleton()
    pts = k * base @ _np_rot_y(0.7).T + np.array([3.0, -2.0, 5.0])
    vis = jnp.ones(17)
    assert float(losses.l_ratio(jnp.asarray(pts, jnp.float32), vis, MEAN_RATIOS)) < 1e-6
    other = _random_poses(np.random.default_rng(4), 1, noise=0.1)[0]
    assert float(losses.l_ratio(jnp.asarray(k * other, jnp.float32), vis, MEAN_RATIOS)) > 1e-3


def test_l_ratio_matches_numpy_and_masks():
    pts = _random_poses(np.random.default_rng(5), 3)
    vis = np.ones((3, 17))
    vis[1, 7] = 0   # hides bones 0 (5->7) and 2 (7->9)
    vis[2, 11] = 0  # trunk invisible -> 0
    b = np.array(COCO.bones)
    lengths = np.linalg.norm(pts[:, b[:, 1]] - pts[:, b[:, 0]], axis=-1)
    trunk = np.linalg.norm(pts[:, 5:7].mean(1) - pts[:, 11:13].mean(1), axis=-1)
    per_bone = (lengths / trunk[:, None] - MEAN_RATIOS) ** 2
    expected = np.array([per_bone[0].sum(), np.delete(per_bone[1], [0, 2]).sum(), 0.0])
    got = losses.l_ratio(jnp.asarray(pts, jnp.float32), jnp.asarray(vis), MEAN_RATIOS)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-7)


def _symmetric(pts, ks):
    mirrored = pts[..., list(ks.flip_permutation), :] * np.array([-1.0, 1.0, 1.0])
    return (pts + mirrored) / 2


@pytest.mark.parametrize("ks", [COCO, J24], ids=lambda k: k.name)
def test_l_sym_zero_iff_symmetric(ks):
    rng = np.random.default_rng(6)
    pts = rng.standard_normal((4, ks.num_keypoints, 3))
    sym = _symmetric(pts, ks)
    vis = jnp.ones((4, ks.num_keypoints))
    np.testing.assert_allclose(losses.l_sym(jnp.asarray(sym, jnp.float32), vis, ks), 0, atol=1e-9)
    # Reference eq. 4 on the asymmetric skeleton.
    b = np.array(ks.bones)
    lengths = np.linalg.norm(pts[:, b[:, 1]] - pts[:, b[:, 0]], axis=-1)
    s = np.array(ks.symmetric_bones)
    expected = ((lengths[:, s[:, 0]] - lengths[:, s[:, 1]]) ** 2).sum(-1)
    got = losses.l_sym(jnp.asarray(pts, jnp.float32), vis, ks)
    np.testing.assert_allclose(got, expected, rtol=1e-4)
    assert np.all(np.asarray(got) > 0)
    # Stretching one left limb breaks symmetry.
    bent = sym.copy()
    bent[:, ks.bones[ks.symmetric_bones[0][0]][1]] *= 1.5
    assert np.all(np.asarray(losses.l_sym(jnp.asarray(bent, jnp.float32), vis, ks)) > 1e-4)


def test_geometric_losses_finite_gradients():
    # Rows: a random pose with one hidden keypoint, an all-zero pose, an all-zero invisible pose.
    pts = jnp.asarray(_random_poses(np.random.default_rng(7), 3), jnp.float32).at[1:].set(0.0)
    vis = jnp.ones((3, 17)).at[0, 5].set(0).at[2].set(0)
    targets = pts + 0.1

    @jax.jit
    def grads(q):
        def total(q):
            return jnp.sum(losses.l_ratio(q, vis, MEAN_RATIOS) + losses.l_sym(q, vis)
                           + losses.l_knee(q, vis) + losses.l_joint(q, targets, vis))

        def views(q):  # the projection's renormalisation is safe at zero too
            return jnp.sum(lifter.project_views(q, vis, jnp.ones(2)))
        return jax.grad(total)(q), jax.grad(views)(q)

    for g in grads(pts):
        assert np.all(np.isfinite(np.asarray(g)))


def test_joint_weight_schedule():
    mus = np.array([float(lifter.joint_weight_schedule(s, 11)) for s in range(11)])
    np.testing.assert_allclose(mus[[0, 5, 10]], [100.0, 10.0, 1.0], rtol=1e-5)
    assert np.all(np.diff(mus) < 0)
    np.testing.assert_allclose(float(lifter.joint_weight_schedule(20, 11)), 1.0, rtol=1e-6)
    lin = float(lifter.joint_weight_schedule(5, 11, kind="linear"))
    np.testing.assert_allclose(lin, 50.5, rtol=1e-6)


def test_adversarial_losses():
    logits = jnp.asarray([-2.0, 0.0, 3.0])
    p = jax.nn.sigmoid(logits)
    np.testing.assert_allclose(losses.generator_adversarial_loss(logits),
                               np.mean(-np.log(p)), rtol=1e-5)
    np.testing.assert_allclose(losses.generator_adversarial_loss(logits, "minimax"),
                               np.mean(np.log(1 - p)), rtol=1e-5)
    np.testing.assert_allclose(losses.discriminator_loss(logits, -logits),
                               2 * np.mean(-np.log(p)), rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# Depth-mirror symmetry of eq. 1-4 and the knee-direction prior


def _np_random_rotation(rng):
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def _np_knee_direction(p, legs=((11, 13, 15), (12, 14, 16)), hips=(11, 12)):
    out = []
    axis = p[..., hips[0], :] - p[..., hips[1], :]
    for h, k, a in legs:
        t, s = p[..., k, :] - p[..., h, :], p[..., a, :] - p[..., k, :]
        out.append(np.sum(np.cross(t, s) * axis, -1)
                   / (np.linalg.norm(t, axis=-1) * np.linalg.norm(s, axis=-1)
                      * np.linalg.norm(axis, axis=-1)))
    return np.stack(out, -1)


MIRROR_Z = np.array([1.0, 1.0, -1.0])


def test_mirror_views_are_true_views_at_negated_angles():
    """The exact symmetry behind the round-1 sign ambiguity: f(M_z P, phi) = f(P, -phi)."""
    rng = np.random.default_rng(13)
    pts = jnp.asarray(_random_poses(rng, 5), jnp.float32)
    vis = jnp.ones((5, 17)).at[2, 4].set(0)
    angles = jnp.deg2rad(jnp.asarray(lifter.LifterConfig().angles_deg))
    mirrored = pts * jnp.asarray(MIRROR_Z, jnp.float32)
    np.testing.assert_allclose(lifter.project_views(mirrored, vis, angles),
                               lifter.project_views(pts, vis, -angles), atol=1e-5)
    np.testing.assert_allclose(losses.l_ratio(mirrored, vis, MEAN_RATIOS),
                               losses.l_ratio(pts, vis, MEAN_RATIOS), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(losses.l_sym(mirrored, vis), losses.l_sym(pts, vis),
                               rtol=1e-5, atol=1e-7)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**16), k=st.floats(0.01, 300.0))
def test_knee_direction_matches_numpy_rotation_invariant_mirror_odd(seed, k):
    rng = np.random.default_rng(seed)
    base = _base_coco_skeleton()                      # both knees bent backwards
    rot = _np_random_rotation(rng)
    pts = k * base @ rot.T + rng.standard_normal(3)
    expected = _np_knee_direction(base)
    assert np.all(expected > 0.02)
    got = np.asarray(skeletons.knee_direction(jnp.asarray(pts, jnp.float32)))
    np.testing.assert_allclose(got, _np_knee_direction(pts), atol=2e-4)
    np.testing.assert_allclose(got, expected, atol=2e-4)  # rotation and scale invariant
    mirrored = np.asarray(skeletons.knee_direction(jnp.asarray(pts * MIRROR_Z, jnp.float32)))
    np.testing.assert_allclose(mirrored, -got, atol=2e-4)
    # joints24: same definition on the SMPL joints (hips 1, 2; knees 4, 5; ankles 7, 8).
    j24 = np.zeros((24, 3))
    j24[[1, 2, 4, 5, 7, 8]] = pts[[11, 12, 13, 14, 15, 16]]
    np.testing.assert_allclose(skeletons.knee_direction(jnp.asarray(j24, jnp.float32), J24), got,
                               atol=2e-4)


def test_l_knee_zero_for_real_knees_penalises_mirror_and_masks():
    rng = np.random.default_rng(14)
    pts = _base_coco_skeleton() @ _np_rot_y(2.1).T
    batch = jnp.asarray(np.stack([pts, pts * MIRROR_Z, pts * MIRROR_Z]), jnp.float32)
    vis = jnp.ones((3, 17)).at[2, 15].set(0)         # left ankle hidden: only the right knee
    got = np.asarray(losses.l_knee(batch, vis))
    d = _np_knee_direction(pts)
    np.testing.assert_allclose(got, [0.0, d.sum(), d[1]], rtol=1e-4, atol=1e-6)
    assert float(losses.l_knee(batch[1], jnp.ones(17).at[12].set(0))) == 0  # hip line hidden
    # Random noisy poses: matches sum(relu(-direction)).
    noisy = _random_poses(rng, 6, noise=0.1) * MIRROR_Z
    ref = np.maximum(-_np_knee_direction(noisy), 0).sum(-1)
    np.testing.assert_allclose(losses.l_knee(jnp.asarray(noisy, jnp.float32), jnp.ones(17)), ref,
                               rtol=1e-4, atol=1e-6)


def _np_face_direction(p):
    """cos(nose - ear, (hip_L - hip_R) x (shoulder_mid - hip_mid)) for the (left, right) ear."""
    fwd = np.cross(p[..., 11, :] - p[..., 12, :],
                   0.5 * (p[..., 5, :] + p[..., 6, :]) - 0.5 * (p[..., 11, :] + p[..., 12, :]))
    out = []
    for ear in (3, 4):
        f = p[..., 0, :] - p[..., ear, :]
        out.append(np.sum(f * fwd, -1) / (np.linalg.norm(f, axis=-1) * np.linalg.norm(fwd, axis=-1)))
    return np.stack(out, -1)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**16), k=st.floats(0.01, 300.0))
def test_face_direction_matches_numpy_rotation_invariant_mirror_odd(seed, k):
    rng = np.random.default_rng(seed)
    base = _base_coco_skeleton()                      # facing the camera (-z), nose in front
    rot = _np_random_rotation(rng)
    pts = k * (base @ rot.T + rng.standard_normal(3))   # offset scaled too: float32 resolution
    expected = _np_face_direction(base)
    assert np.all(expected > 0.5)
    got = np.asarray(skeletons.face_direction(jnp.asarray(pts, jnp.float32)))
    np.testing.assert_allclose(got, _np_face_direction(pts), atol=2e-4)
    np.testing.assert_allclose(got, expected, atol=2e-4)  # rotation and scale invariant
    mirrored = np.asarray(skeletons.face_direction(jnp.asarray(pts * MIRROR_Z, jnp.float32)))
    np.testing.assert_allclose(mirrored, -got, atol=2e-4)


def test_l_face_zero_for_real_faces_penalises_mirror_and_masks():
    rng = np.random.default_rng(15)
    pts = _base_coco_skeleton() @ _np_rot_y(-0.7).T
    batch = jnp.asarray(np.stack([pts, pts * MIRROR_Z, pts * MIRROR_Z, pts * MIRROR_Z]), jnp.float32)
    vis = jnp.ones((4, 17)).at[2, 4].set(0).at[3, 0].set(0)   # right ear hidden; nose hidden
    got = np.asarray(losses.l_face(batch, vis))
    d = _np_face_direction(pts)
    np.testing.assert_allclose(got, [0.0, d.sum(), d[0], 0.0], rtol=1e-4, atol=1e-6)
    assert float(losses.l_face(batch[1], jnp.ones(17).at[6].set(0))) == 0  # shoulder hidden
    noisy = _random_poses(rng, 6, noise=0.1) * MIRROR_Z
    ref = np.maximum(-_np_face_direction(noisy), 0).sum(-1)
    np.testing.assert_allclose(losses.l_face(jnp.asarray(noisy, jnp.float32), jnp.ones(17)), ref,
                               rtol=1e-4, atol=1e-6)
    # Keypoint sets without a face: no prior (and a clear error from face_direction).
    assert not skeletons.has_face(J24) and skeletons.has_face("coco17")
    np.testing.assert_array_equal(losses.l_face(jnp.ones((2, 24, 3)), jnp.ones((2, 24)), J24), 0)
    with pytest.raises(ValueError, match="joints24"):
        skeletons.face_direction(jnp.ones((24, 3)), J24)


def test_loss_weights_enter_the_generator_loss():
    hp = lifter.LifterConfig(hidden=64, learning_rate=1e-3, ratio_weight=0.5, sym_weight=0.25,
                             knee_weight=2.0, face_weight=3.0)
    state = lifter.create_state(jax.random.PRNGKey(1), "coco17", MEAN_RATIOS, hp)
    _, m = lifter.train_step(state, _batch(), jax.random.PRNGKey(2), 0.0)
    assert float(m["knee"]) > 0  # an untrained generator bends some knees forwards
    expected = (hp.epsilon * m["adv_g"] + 0.5 * m["ratio"] + 0.25 * m["sym"] + 2.0 * m["knee"]
                + 3.0 * m["face"])
    np.testing.assert_allclose(float(m["loss_g"]), float(expected), rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# Training


def _as_batch(keypoints, keypoint_visible, target_keypoints3d=None, target_keypoints3d_mask=None):
    """A lifter :class:`Batch`: keypoints (+ optional eq. 5 targets), no dense correspondences."""
    b = len(keypoints)
    return Batch(dense_xy=np.zeros((b, 0, 2), np.float32), dense_vertex=np.zeros((b, 0), np.int32),
                 dense_mask=np.zeros((b, 0), np.float32), keypoints=keypoints,
                 keypoint_visible=keypoint_visible, target_keypoints3d=target_keypoints3d,
                 target_keypoints3d_mask=target_keypoints3d_mask)


def _batch(m=BATCH, seed=8, with_joints=False):
    kp, vis, joints3d = _pixel_data(np.random.default_rng(seed), m)
    vis[0, 4] = 0
    if not with_joints:
        return _as_batch(jnp.asarray(kp), jnp.asarray(vis))
    return _as_batch(jnp.asarray(kp), jnp.asarray(vis), jnp.asarray(joints3d), jnp.ones(m).at[1].set(0))


def _train(state, arrays, num_epochs, seed=0, key=jax.random.PRNGKey(6), mu=None, progress=None,
           batch_size=BATCH):
    """The lifter's epoch loop: ``run_epochs`` over ``array_batches`` of ``arrays`` with ``train_step``.

    ``mu``: a constant joint weight, or ``None`` for the config's schedule over all steps; 0 without
    targets (as the deform-and-learn loop does).
    """
    m = len(arrays["keypoints"])
    bs = min(batch_size, m)
    total = num_epochs * (m // bs)
    cfg = state.config
    with_targets = "target_keypoints3d" in arrays

    def batches(epoch):
        for b in epochs.array_batches(arrays, bs, seed, epoch):
            yield _as_batch(**b)

    def step(s, batch, i):
        if not with_targets:
            mu_i = 0.0
        elif mu is not None:
            mu_i = mu
        else:
            mu_i = lifter.joint_weight_schedule(i, total, cfg.mu_start, cfg.mu_end, cfg.mu_schedule)
        return lifter.train_step(s, batch, jax.random.fold_in(key, i), mu_i)

    return epochs.run_epochs(state, step, batches, num_epochs, progress)


def _same_params(a, b):
    return all(jax.tree_util.tree_leaves(jax.tree_util.tree_map(lambda x, y: bool(jnp.array_equal(x, y)), a, b)))


def test_train_step_updates_and_is_deterministic():
    batch = _batch()  # round 1: no 3D targets
    outs = []
    for _ in range(2):
        state = lifter.create_state(jax.random.PRNGKey(1), "coco17", MEAN_RATIOS, SMALL)
        new, metrics = lifter.train_step(state, batch, jax.random.PRNGKey(2), 10.0)
        outs.append((state, new, metrics))
    (state, new, metrics), (_, new2, _) = outs
    for k in ("loss_g", "loss_d", "adv_g", "ratio", "sym", "joint"):
        assert np.isfinite(float(metrics[k])), k
    assert float(metrics["joint"]) == 0 and float(metrics["mu"]) == 10.0
    for old, upd in ((state.generator.params, new.generator.params),
                     (state.discriminator.params, new.discriminator.params)):
        diffs = jax.tree_util.tree_leaves(jax.tree_util.tree_map(
            lambda a, b: float(jnp.max(jnp.abs(a - b))), old, upd))
        assert all(d > 0 for d in diffs)
    assert int(new.generator.step) == 1 and int(new.discriminator.step) == 1
    assert _same_params((new.generator.params, new.discriminator.params),
                        (new2.generator.params, new2.discriminator.params))
    # The state keeps its static config, keypoint set and the average skeleton.
    assert new.config == SMALL and new.keypoint_set == "coco17"
    np.testing.assert_array_equal(new.mean_ratios, MEAN_RATIOS.astype(np.float32))
    # The dense fields are not read: any N gives the same update.
    dense = batch.replace(dense_xy=np.ones((BATCH, 5, 2), np.float32), dense_vertex=np.ones((BATCH, 5), np.int32),
                          dense_mask=np.ones((BATCH, 5), np.float32))
    new3, _ = lifter.train_step(outs[0][0], dense, jax.random.PRNGKey(2), 10.0)
    assert _same_params(new3.generator.params, new.generator.params)


def test_train_step_joint_loss_uses_the_target_mask():
    """Eq. 5 averages over the samples whose mask is 1: a masked sample's targets do not count."""
    state = lifter.create_state(jax.random.PRNGKey(1), "coco17", MEAN_RATIOS, SMALL)
    batch = _batch(with_joints=True)                                   # sample 1 masked out
    # Move one keypoint's depth (a shift of the whole skeleton would be removed by the root-centring).
    moved = batch.target_keypoints3d.at[1, 5, 2].add(5000.0)
    _, m1 = lifter.train_step(state, batch, jax.random.PRNGKey(2), 5.0)
    _, m2 = lifter.train_step(state, batch.replace(target_keypoints3d=moved), jax.random.PRNGKey(2), 5.0)
    assert float(m1["joint"]) > 0 and float(m1["mu"]) == 5.0
    np.testing.assert_allclose(float(m2["joint"]), float(m1["joint"]), rtol=1e-6)
    _, m3 = lifter.train_step(state, batch.replace(target_keypoints3d_mask=jnp.ones(BATCH),
                                                   target_keypoints3d=moved), jax.random.PRNGKey(2), 5.0)
    assert float(m3["joint"]) > float(m1["joint"]) + 1.0


def test_training_joint_loss_pulls_towards_targets():
    rng = np.random.default_rng(9)
    kp, vis, joints3d = _pixel_data(rng, 64)

    def depth_error(state):
        pred = np.asarray(lifter.predict_depths(state, kp, vis))
        root = joints3d[:, 11:13, 2].mean(1, keepdims=True)
        _, _, scale = lifter.normalize_keypoints2d(jnp.asarray(kp), jnp.asarray(vis))
        rel = (pred - (joints3d[..., 2] - root)) / np.asarray(scale)[:, None]
        return float(np.sqrt(np.mean(rel ** 2)))  # RMS depth error in normalised units

    init = lifter.create_state(jax.random.PRNGKey(3), "coco17", MEAN_RATIOS, SMALL)
    err0 = depth_error(init)
    arrays = {"keypoints": kp, "keypoint_visible": vis, "target_keypoints3d": joints3d,
              "target_keypoints3d_mask": np.ones(len(kp), np.float32)}
    results = {}
    for mu in (0.0, 100.0):
        state, hist = _train(init, arrays, 15, seed=4, key=jax.random.PRNGKey(4), mu=mu)
        assert len(hist["loss_g"]) == 15 and np.all(np.isfinite(hist["loss_g"]))
        assert int(state.generator.step) == 15 * 2
        results[mu] = (depth_error(state), hist)
    err_mu0, err_mu = results[0.0][0], results[100.0][0]
    assert err_mu < 0.5 * err0, (err0, err_mu)
    assert err_mu < 0.5 * err_mu0, (err_mu0, err_mu)
    joint_hist = results[100.0][1]["joint"]
    assert joint_hist[-1] < 0.5 * joint_hist[0]


def test_training_loop_deterministic_schedule_and_progress():
    kp, vis, joints3d = _pixel_data(np.random.default_rng(10), 2 * BATCH + 5)
    mask = np.ones(len(kp), np.float32)
    mask[::3] = 0
    arrays = {"keypoints": kp, "keypoint_visible": vis, "target_keypoints3d": joints3d,
              "target_keypoints3d_mask": mask}
    seen = []
    init = lifter.create_state(jax.random.PRNGKey(5), "coco17", MEAN_RATIOS, SMALL)
    s1, h1 = _train(init, arrays, 2, progress=lambda e, m: seen.append((e, m["loss_g"])))
    s2, h2 = _train(init, arrays, 2)
    assert [e for e, _ in seen] == [0, 1]
    assert [v for _, v in seen] == h1["loss_g"]
    assert len(h1.pop("seconds")) == 2 and len(h2.pop("seconds")) == 2
    assert h1 == h2
    assert _same_params(s1.generator.params, s2.generator.params)
    assert int(s1.generator.step) == 4  # 2 epochs x floor(69 / 32) steps
    # mu decays geometrically over the 4 steps: epoch means of (100, 100^(2/3)) and (100^(1/3), 1).
    np.testing.assert_allclose(h1["mu"], [(100 + 100 ** (2 / 3)) / 2, (100 ** (1 / 3) + 1) / 2],
                               rtol=1e-5)
    # Another shuffling seed gives another training.
    s3, _ = _train(init, arrays, 2, seed=1)
    assert not _same_params(s1.generator.params, s3.generator.params)
    # Round 1 (no targets): no joint term.
    _, h4 = _train(init, {"keypoints": kp, "keypoint_visible": vis}, 1)
    assert h4["mu"] == [0.0] and h4["joint"] == [0.0]


# ---------------------------------------------------------------------------------------------
# Inference


def test_predict_depths_undoes_normalisation():
    kp, vis, _ = _pixel_data(np.random.default_rng(11), 5)
    vis[2, 15] = 0
    state = lifter.create_state(jax.random.PRNGKey(7), "coco17", MEAN_RATIOS, SMALL)
    d = np.asarray(lifter.predict_depths(state, kp, vis))
    assert d.shape == (5, 17) and d.dtype == np.float32
    np.testing.assert_allclose(lifter.predict_depths(state, 2.5 * kp, vis), 2.5 * d,
                               rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(lifter.predict_depths(state, kp + np.float32(123.0), vis), d,
                               rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(d[:, 11:13].mean(1), 0.0, atol=1e-3)  # root-relative
    assert d[2, 15] == 0
    p3 = np.asarray(lifter.lift(state, kp, vis))
    assert p3.shape == (5, 17, 3)
    np.testing.assert_allclose(p3[..., 2], d, atol=1e-5)
    np.testing.assert_allclose(p3[..., :2] + kp[:, 11:13].mean(1, keepdims=True),
                               kp * vis[..., None] + (1 - vis[..., None]) * kp[:, 11:13].mean(
                                   1, keepdims=True), atol=1e-3)


def test_predict_depths_matches_normalised_targets():
    """A generator that outputs the normalised targets' depths gives back their pixel depths."""
    kp, vis, joints3d = _pixel_data(np.random.default_rng(12), 3)
    state = lifter.create_state(jax.random.PRNGKey(8), "coco17", MEAN_RATIOS, SMALL)
    targets = lifter.normalize_joints3d(jnp.asarray(joints3d), jnp.asarray(kp), jnp.asarray(vis))
    fixed = state.generator.replace(apply_fn=lambda variables, u, v: targets[..., 2])
    state = state.replace(generator=fixed)
    d = lifter.predict_depths(state, kp, vis)
    root = joints3d[:, 11:13, 2].mean(1, keepdims=True)
    np.testing.assert_allclose(d, joints3d[..., 2] - root, rtol=1e-4, atol=1e-2)


# ---------------------------------------------------------------------------------------------
# The discriminator's keypoints


def test_discriminator_mask():
    np.testing.assert_array_equal(lifter.discriminator_mask("coco17", "body"), [0] * 5 + [1] * 12)
    np.testing.assert_array_equal(lifter.discriminator_mask("coco17", "all"), np.ones(17))
    np.testing.assert_array_equal(lifter.discriminator_mask("joints24", "body"), np.ones(24))
    with pytest.raises(ValueError, match="discriminator_keypoints"):
        lifter.LifterConfig(discriminator_keypoints="face")


@pytest.mark.parametrize("which", ["all", "body"])
def test_body_discriminator_ignores_the_face(which):
    """With D on the body keypoints, the face's coordinates and labels cannot change D's loss.

    G is zeroed (flat depths), so the fakes depend on the 2D input alone; moving and hiding face
    keypoints then leaves D's real and fake inputs unchanged for 'body' and changes them for 'all'.
    """
    hp = dataclasses.replace(SMALL, discriminator_keypoints=which)
    state = lifter.create_state(jax.random.PRNGKey(3), "coco17", MEAN_RATIOS, hp)
    zero_g = state.generator.replace(
        params=jax.tree_util.tree_map(jnp.zeros_like, state.generator.params))
    state = state.replace(generator=zero_g)
    batch = _batch()
    kp = np.asarray(batch.keypoints).copy()
    vis = np.asarray(batch.keypoint_visible).copy()
    kp[:, :5] += np.random.default_rng(4).normal(0.0, 20.0, (kp.shape[0], 5, 2))
    vis[::2, 3:5] = 0.0
    other = batch.replace(keypoints=jnp.asarray(kp), keypoint_visible=jnp.asarray(vis))
    _, m1 = lifter.train_step(state, batch, jax.random.PRNGKey(5), 0.0)
    _, m2 = lifter.train_step(state, other, jax.random.PRNGKey(5), 0.0)
    if which == "body":
        np.testing.assert_allclose(float(m1["loss_d"]), float(m2["loss_d"]), rtol=1e-5)
    else:
        assert abs(float(m1["loss_d"]) - float(m2["loss_d"])) > 1e-4


# ---------------------------------------------------------------------------------------------
# Input checks: a ValueError naming the argument, never a wrongly shaped result


def test_predictions_reject_the_wrong_number_of_keypoints():
    state = lifter.create_state(jax.random.PRNGKey(7), "coco17", MEAN_RATIOS, SMALL)
    kp, vis, _ = _pixel_data(np.random.default_rng(16), 4)
    cases = {
        "16 keypoints": (kp[:, :16], vis[:, :16], r"keypoints2d has shape \(4, 16, 2\), expected \(\.\.\., 17, 2\)"),
        "24 keypoints (joints24)": (np.zeros((4, 24, 2), np.float32), np.ones((4, 24), np.float32),
                                    r"keypoints2d has shape \(4, 24, 2\), expected \(\.\.\., 17, 2\)"),
        "visibility of 16": (kp, vis[:, :16], r"visibility has shape \(4, 16\), expected \(\.\.\., 17\)"),
        "visibility of another batch": (kp, vis[:3], r"visibility has shape \(3, 17\)"),
        "3D keypoints": (np.zeros((4, 17, 3), np.float32), vis, r"keypoints2d has shape \(4, 17, 3\)"),
    }
    for fn in (lifter.predict_depths, lifter.lift):
        for case, (k, v, message) in cases.items():
            with pytest.raises(ValueError, match=rf"^{fn.__name__}: {message}"):
                out = fn(state, k, v)
                pytest.fail(f"{fn.__name__} returned {out.shape} for {case}")
    # Unbatched and batched inputs of the right size go through.
    assert lifter.predict_depths(state, kp[0], vis[0]).shape == (17,)
    assert lifter.lift(state, kp[None], vis[None]).shape == (1, 4, 17, 3)


def test_train_step_rejects_the_wrong_number_of_keypoints():
    state = lifter.create_state(jax.random.PRNGKey(7), "coco17", MEAN_RATIOS, SMALL)
    batch = _batch(with_joints=True)
    rng = jax.random.PRNGKey(0)
    cases = {
        "16 keypoints": (batch.replace(keypoints=batch.keypoints[:, :16],
                                       keypoint_visible=batch.keypoint_visible[:, :16]),
                         r"batch\.keypoints has shape \(32, 16, 2\), expected \(32, 17, 2\)"),
        "16 visibilities": (batch.replace(keypoint_visible=batch.keypoint_visible[:, :16]),
                            r"batch\.keypoint_visible has shape \(32, 16\), expected \(32, 17\)"),
        "targets of 16 keypoints": (batch.replace(target_keypoints3d=batch.target_keypoints3d[:, :16]),
                                    r"batch\.target_keypoints3d has shape \(32, 16, 3\), expected \(32, 17, 3\)"),
        "a target mask of another batch": (batch.replace(target_keypoints3d_mask=jnp.ones(BATCH - 1)),
                                           r"batch\.target_keypoints3d_mask has shape \(31,\), expected \(32,\)"),
    }
    for case, (bad, message) in cases.items():
        with pytest.raises(ValueError, match=rf"^lifter\.train_step: {message}"):
            lifter.train_step(state, bad, rng, 1.0)
            pytest.fail(f"train_step accepted {case}")
    with pytest.raises(ValueError, match=r"batch must be a bodyjax\.batch\.Batch, got dict"):
        lifter.train_step(state, {"keypoints": batch.keypoints, "keypoint_visible": batch.keypoint_visible}, rng)
    # A joints24 lifter does not take coco17 keypoints.
    j24 = lifter.create_state(jax.random.PRNGKey(7), "joints24", np.ones(len(J24.bones), np.float32), SMALL)
    with pytest.raises(ValueError, match=r"batch\.keypoints has shape \(32, 17, 2\), expected \(32, 24, 2\)"):
        lifter.train_step(j24, _batch(), rng)
    with pytest.raises(ValueError, match=r"^predict_depths: keypoints2d has shape \(32, 17, 2\)"):
        lifter.predict_depths(j24, batch.keypoints, batch.keypoint_visible)


def test_create_state_checks_the_average_skeleton():
    with pytest.raises(ValueError, match=r"mean_ratios has shape \(17,\), expected \(18,\)"):
        lifter.create_state(jax.random.PRNGKey(0), "coco17", MEAN_RATIOS[:-1], SMALL)
    with pytest.raises(KeyError):
        lifter.create_state(jax.random.PRNGKey(0), "mpii", MEAN_RATIOS, SMALL)
