"""Tests for bodyjax.smpl: loader, forward pass against smplx and a float64 NumPy reference."""
from __future__ import annotations

import os
import pickle
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bodyjax import smpl

try:
    from tests.smpl_fixture import SMPL_PARENTS, random_smpl_arrays, write_random_smpl
except ImportError:  # tests/ itself on sys.path (pytest's default rootdir insertion)
    from smpl_fixture import SMPL_PARENTS, random_smpl_arrays, write_random_smpl

NUM_VERTICES = 500
NUM_BETAS = 10
BATCH = 4

# One jitted forward shared by the tests: compiling the 24-joint chain dominates the file's runtime,
# so the tests reuse the same input shapes wherever they can.
_forward = jax.jit(smpl.smpl_forward, static_argnames="with_pose_blendshapes")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("smpl")
    return {
        "pkl": write_random_smpl(d / "model.pkl", num_vertices=NUM_VERTICES, num_betas=NUM_BETAS, seed=3),
        "npz": write_random_smpl(d / "model.npz", num_vertices=NUM_VERTICES, num_betas=NUM_BETAS, seed=3,
                                 fmt="npz"),
        "chumpy": write_random_smpl(d / "model_ch.pkl", num_vertices=NUM_VERTICES, num_betas=NUM_BETAS,
                                    seed=3, chumpy=True),
    }


@pytest.fixture(scope="module")
def model(files):
    return smpl.load_smpl(files["pkl"])


@pytest.fixture
def x64():
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", previous)


def _random_inputs(seed, batch=(BATCH,), num_betas=NUM_BETAS, pose_std=0.5):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=batch + (num_betas,)), pose_std * rng.normal(size=batch + (24, 3)),
            rng.normal(size=batch + (3,)))


# ---- float64 NumPy reference written from the SMPL paper's equations ---------------------------


def _rodrigues(a):
    theta = np.linalg.norm(a)
    if theta < 1e-12:
        return np.eye(3)
    k = a / theta
    K = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(theta) * K + (1 - np.cos(theta)) * K @ K


def _reference(arr, betas, pose, transl, pose_blendshapes=True):
    """One sample: betas (B',), pose (24, 3), transl (3,) -> vertices (V, 3), joints (24, 3)."""
    nb = betas.shape[0]
    v = arr["v_template"] + arr["shapedirs"][:, :, :nb] @ betas
    rest = arr["J_regressor"] @ v
    R = [_rodrigues(p) for p in pose]
    if pose_blendshapes:
        feature = np.concatenate([(R[j] - np.eye(3)).ravel() for j in range(1, 24)])
        v = v + arr["posedirs"] @ feature
    G = []
    for j, p in enumerate(SMPL_PARENTS):
        local = np.eye(4)
        local[:3, :3] = R[j]
        local[:3, 3] = rest[j] - (rest[p] if p >= 0 else 0)
        G.append(local if p < 0 else G[p] @ local)
    A = np.stack(G)
    A[:, :3, 3] -= np.einsum("jab,jb->ja", A[:, :3, :3], rest)
    T = np.einsum("vj,jab->vab", arr["weights"], A)
    verts = np.einsum("vab,vb->va", T[:, :3, :3], v) + T[:, :3, 3]
    return verts + transl, A[:, :3, 3] + np.einsum("jab,jb->ja", A[:, :3, :3], rest) + transl


def _rel_err(a, b, ref_vertices):
    extent = np.ptp(np.asarray(ref_vertices).reshape(-1, 3), axis=0).max()
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))) / extent)


# ---- fixture / layout ----------------------------------------------------------------------


def test_fixture_has_official_layout(files):
    scipy_sparse = pytest.importorskip("scipy.sparse")
    with open(files["pkl"], "rb") as fh:
        data = pickle.load(fh, encoding="latin1")
    assert {"v_template", "shapedirs", "posedirs", "J_regressor", "J_regressor_prior", "weights",
            "weights_prior", "J", "kintree_table", "f", "bs_style", "bs_type"} <= set(data)
    assert scipy_sparse.isspmatrix_csc(data["J_regressor"])
    assert data["shapedirs"].shape == (NUM_VERTICES, 3, NUM_BETAS)
    assert data["posedirs"].shape == (NUM_VERTICES, 3, 207)
    assert data["kintree_table"][0, 0] == 4294967295
    assert data["f"].min() >= 0 and data["f"].max() < NUM_VERTICES
    assert np.all(data["f"][:, 0] != data["f"][:, 1]) and np.all(data["f"][:, 1] != data["f"][:, 2])
    assert np.all(data["f"][:, 0] != data["f"][:, 2])
    np.testing.assert_allclose(data["weights"].sum(1), 1.0, atol=1e-6)
    assert np.all(data["weights"] > 0)


# ---- loader --------------------------------------------------------------------------------


def test_pkl_npz_and_chumpy_pickle_give_identical_models(files):
    models = [smpl.load_smpl(files[k]) for k in ("pkl", "npz", "chumpy")]
    assert "chumpy" not in sys.modules  # the stand-in never needs the real package
    for other in models[1:]:
        assert other.parents == models[0].parents == SMPL_PARENTS
        for a, b in zip(jax.tree.leaves(models[0]), jax.tree.leaves(other)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    m = models[0]
    assert m.shapedirs.shape == (NUM_BETAS, NUM_VERTICES * 3)
    assert m.posedirs.shape == (207, NUM_VERTICES * 3)
    assert m.J_regressor.shape == (24, NUM_VERTICES) and m.weights.shape == (NUM_VERTICES, 24)
    assert m.faces.dtype == jnp.int32 and m.v_template.dtype == jnp.float32
    assert m.densepose_iuv is None


def test_sparse_formats_rebuilt_without_scipy_classes(tmp_path):
    scipy_sparse = pytest.importorskip("scipy.sparse")
    arr = random_smpl_arrays(60, 4, seed=1)
    for fmt in ("csr_matrix", "coo_matrix", "csc_array"):
        data = dict(arr, J_regressor=getattr(scipy_sparse, fmt)(arr["J_regressor"]))
        path = tmp_path / f"{fmt}.pkl"
        with open(path, "wb") as fh:
            pickle.dump(data, fh, protocol=2)
        m = smpl.load_smpl(path)
        np.testing.assert_array_equal(np.asarray(m.J_regressor), arr["J_regressor"].astype(np.float32))


def _write(tmp_path, name, data, fmt):
    path = tmp_path / f"{name}.{fmt}"
    if fmt == "npz":
        np.savez(path, **data)
    else:
        with open(path, "wb") as fh:
            pickle.dump(data, fh, protocol=2)
    return str(path)


def _bad_weights(a):
    w = a["weights"].copy()
    w[7] *= 1.5
    return {"weights": w}


def _nan_posedirs(a):
    p = a["posedirs"].copy()
    p[3, 1, 5] = np.nan
    return {"posedirs": p}


def _bad_faces(a):
    f = a["f"].astype(np.int64)
    f[0, 0] = 60
    return {"f": f}


def _bad_tree(a):
    k = a["kintree_table"].copy()
    k[0, 5] = 7
    return {"kintree_table": k}


@pytest.mark.parametrize("fmt", ["pkl", "npz"])
@pytest.mark.parametrize("field, change, message", [
    ("shapedirs", lambda a: {"shapedirs": None}, "missing"),
    ("v_template", lambda a: {"v_template": a["v_template"][:, :2]}, "shape"),
    ("posedirs", lambda a: {"posedirs": a["posedirs"][:, :, :200]}, "shape"),
    ("J_regressor", lambda a: {"J_regressor": a["J_regressor"][:, :-1]}, "shape"),
    ("posedirs", _nan_posedirs, "non-finite"),
    ("weights", _bad_weights, "sums to"),
    ("f", _bad_faces, "face indices"),
    ("kintree_table", _bad_tree, "parent"),
])
def test_malformed_files_name_file_and_field(tmp_path, fmt, field, change, message):
    arr = random_smpl_arrays(60, 4, seed=2)
    data = dict(arr, **change(arr))
    data = {k: v for k, v in data.items() if v is not None}
    path = _write(tmp_path, f"bad_{field}", data, fmt)
    with pytest.raises(ValueError, match=message) as info:
        smpl.load_smpl(path)
    assert path in str(info.value) and field in str(info.value)


def test_unreadable_and_hostile_pickles_are_rejected(tmp_path):
    arr = random_smpl_arrays(60, 4, seed=2)
    path = _write(tmp_path, "hostile", dict(arr, v_template=os.getcwd), "pkl")
    with pytest.raises(ValueError, match="refusing to load global") as info:
        smpl.load_smpl(path)
    assert path in str(info.value)
    junk = tmp_path / "junk.pkl"
    junk.write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="junk.pkl"):
        smpl.load_smpl(junk)
    fake_npz = tmp_path / "fake.npz"
    fake_npz.write_bytes(b"not a zip archive")
    with pytest.raises(ValueError, match="fake.npz"):
        smpl.load_smpl(fake_npz)


def test_chumpy_expression_without_value_is_a_clear_error(tmp_path, monkeypatch):
    pkg, mod = types.ModuleType("chumpy"), types.ModuleType("chumpy.ch_ops")

    class add:  # a derived chumpy node: its state has operands, no 'x'
        def __init__(self, a, b):
            self.a, self.b = a, b

    add.__module__, add.__qualname__ = "chumpy.ch_ops", "add"
    mod.add, pkg.ch_ops = add, mod
    monkeypatch.setitem(sys.modules, "chumpy", pkg)
    monkeypatch.setitem(sys.modules, "chumpy.ch_ops", mod)
    arr = random_smpl_arrays(60, 4, seed=2)
    path = _write(tmp_path, "expr", dict(arr, shapedirs=add(arr["shapedirs"], arr["shapedirs"])), "pkl")
    monkeypatch.undo()
    with pytest.raises(ValueError, match=r"shapedirs.*chumpy\.ch_ops\.add") as info:
        smpl.load_smpl(path)
    assert path in str(info.value)


# ---- DensePose table -----------------------------------------------------------------------


def _iuv(n, seed=0):
    rng = np.random.default_rng(seed)
    return np.stack([rng.integers(1, 25, n), rng.random(n), rng.random(n)], axis=1)


def test_densepose_layouts(tmp_path, files):
    iuv = _iuv(NUM_VERTICES)
    np.save(tmp_path / "a.npy", iuv)
    np.savez(tmp_path / "b.npz", I=iuv[:, 0].astype(np.int64), U=iuv[:, 1], V=iuv[:, 2])
    np.savez(tmp_path / "c.npz", iuv=iuv)
    np.savez(tmp_path / "d.npz", table=iuv.astype(np.float32))
    for name in ("a.npy", "b.npz", "c.npz", "d.npz"):
        got = smpl.load_densepose_iuv(tmp_path / name, num_vertices=NUM_VERTICES)
        np.testing.assert_allclose(got, iuv, atol=1e-7)
    m = smpl.load_smpl(files["pkl"], densepose_iuv=tmp_path / "b.npz")
    np.testing.assert_allclose(np.asarray(m.densepose_iuv), iuv, atol=1e-7)


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.__setitem__((3, 0), 0), "part index"),
    (lambda t: t.__setitem__((3, 0), 25), "part index"),
    (lambda t: t.__setitem__((3, 0), 2.5), "part index"),
    (lambda t: t.__setitem__((4, 1), 1.2), "U must lie"),
    (lambda t: t.__setitem__((4, 2), -0.1), "V must lie"),
    (lambda t: t.__setitem__((5, 2), np.nan), "non-finite"),
])
def test_densepose_validation(tmp_path, edit, message):
    iuv = _iuv(50)
    edit(iuv)
    path = str(tmp_path / "iuv.npy")
    np.save(path, iuv)
    with pytest.raises(ValueError, match=message) as info:
        smpl.load_densepose_iuv(path, num_vertices=50)
    assert path in str(info.value)


def test_densepose_vertex_count_and_layout_errors(tmp_path):
    np.save(tmp_path / "short.npy", _iuv(40))
    with pytest.raises(ValueError, match="model has 50 vertices"):
        smpl.load_densepose_iuv(tmp_path / "short.npy", num_vertices=50)
    np.savez(tmp_path / "two.npz", x=_iuv(50), y=_iuv(50))
    with pytest.raises(ValueError, match="two.npz"):
        smpl.load_densepose_iuv(tmp_path / "two.npz")
    np.save(tmp_path / "wide.npy", np.ones((50, 4)))
    with pytest.raises(ValueError, match=r"\(V, 3\)"):
        smpl.load_densepose_iuv(tmp_path / "wide.npy")


# ---- forward pass --------------------------------------------------------------------------


def test_rest_pose_is_template(model):
    out = _forward(model, jnp.zeros((BATCH, NUM_BETAS)), jnp.zeros((BATCH, 24, 3)), jnp.zeros((BATCH, 3)))
    np.testing.assert_allclose(out.vertices[2], model.v_template, atol=1e-6)
    np.testing.assert_allclose(out.joints[2], model.J_regressor @ model.v_template, atol=1e-6)


@pytest.mark.parametrize("num_betas, pose_blendshapes", [(NUM_BETAS, True), (6, True), (NUM_BETAS, False)])
def test_matches_numpy_reference(files, model, num_betas, pose_blendshapes):
    arr = random_smpl_arrays(NUM_VERTICES, NUM_BETAS, seed=3)
    betas, pose, transl = _random_inputs(0, num_betas=num_betas)
    out = _forward(model, jnp.asarray(betas, jnp.float32), jnp.asarray(pose, jnp.float32),
                   jnp.asarray(transl, jnp.float32), with_pose_blendshapes=pose_blendshapes)
    refs = [_reference(arr, betas[i], pose[i], transl[i], pose_blendshapes) for i in range(BATCH)]
    ref_v, ref_j = np.stack([r[0] for r in refs]), np.stack([r[1] for r in refs])
    assert out.vertices.shape == (BATCH, NUM_VERTICES, 3) and out.joints.shape == (BATCH, 24, 3)
    assert _rel_err(out.vertices, ref_v, ref_v) < 1e-5
    assert _rel_err(out.joints, ref_j, ref_v) < 1e-5


def _smplx_model(path, pose_blendshapes, torch, smplx):
    from smplx.vertex_ids import vertex_ids

    # The random mesh is small: point the extra landmark joints at valid vertices.
    ids = {name: i for i, name in enumerate(vertex_ids["smplh"])}
    body = smplx.SMPL(model_path=path, vertex_ids=ids, batch_size=BATCH, dtype=torch.float64)
    if not pose_blendshapes:
        with torch.no_grad():
            body.posedirs.zero_()
    return body


@pytest.mark.parametrize("pose_blendshapes", [True, False])
def test_matches_smplx(files, model, pose_blendshapes):
    torch = pytest.importorskip("torch")
    smplx = pytest.importorskip("smplx")
    body = _smplx_model(files["pkl"], pose_blendshapes, torch, smplx)
    betas, pose, transl = _random_inputs(1)
    with torch.no_grad():
        ref = body(betas=torch.tensor(betas), global_orient=torch.tensor(pose[:, 0]),
                   body_pose=torch.tensor(pose[:, 1:].reshape(BATCH, -1)), transl=torch.tensor(transl))
    ref_v, ref_j = ref.vertices.numpy(), ref.joints.numpy()[:, :24]
    out = _forward(model, jnp.asarray(betas, jnp.float32), jnp.asarray(pose, jnp.float32),
                   jnp.asarray(transl, jnp.float32), with_pose_blendshapes=pose_blendshapes)
    assert _rel_err(out.vertices, ref_v, ref_v) <= 1e-5
    assert _rel_err(out.joints, ref_j, ref_v) <= 1e-5


def test_matches_smplx_float64(files, x64):
    torch = pytest.importorskip("torch")
    smplx = pytest.importorskip("smplx")
    body = _smplx_model(files["pkl"], True, torch, smplx)
    model64 = smpl.load_smpl(files["pkl"], dtype=jnp.float64)
    betas, pose, transl = _random_inputs(2)
    with torch.no_grad():
        ref = body(betas=torch.tensor(betas), global_orient=torch.tensor(pose[:, 0]),
                   body_pose=torch.tensor(pose[:, 1:].reshape(BATCH, -1)), transl=torch.tensor(transl))
    out = _forward(model64, jnp.asarray(betas), jnp.asarray(pose), jnp.asarray(transl))
    assert out.vertices.dtype == jnp.float64
    ref_v = ref.vertices.numpy()
    assert _rel_err(out.vertices, ref_v, ref_v) <= 1e-7  # smplx adds 1e-8 inside its Rodrigues
    assert _rel_err(out.joints, ref.joints.numpy()[:, :24], ref_v) <= 1e-7


def test_leading_dims_broadcast(model):
    betas, pose, transl = _random_inputs(4, batch=(2, 3))
    betas = betas[:, :1]  # (2, 1, B) broadcasts against (2, 3)
    out = _forward(model, jnp.asarray(betas, jnp.float32), jnp.asarray(pose, jnp.float32),
                   jnp.asarray(transl, jnp.float32))
    assert out.vertices.shape == (2, 3, NUM_VERTICES, 3) and out.joints.shape == (2, 3, 24, 3)
    arr = random_smpl_arrays(NUM_VERTICES, NUM_BETAS, seed=3)
    for i, k in [(0, 0), (1, 2)]:
        ref_v, ref_j = _reference(arr, betas[i, 0], pose[i, k], transl[i, k])
        assert _rel_err(out.vertices[i, k], ref_v, ref_v) < 1e-5
        assert _rel_err(out.joints[i, k], ref_j, ref_v) < 1e-5
    with pytest.raises(ValueError, match="betas"):
        smpl.smpl_forward(model, jnp.zeros((NUM_BETAS + 1,)), jnp.zeros((24, 3)))
    with pytest.raises(ValueError, match="pose"):
        smpl.smpl_forward(model, jnp.zeros((NUM_BETAS,)), jnp.zeros((23, 3)))


def test_vmap_matches_batched_call(model):
    betas, pose, transl = (jnp.asarray(x, jnp.float32) for x in _random_inputs(7))
    mapped = jax.jit(jax.vmap(smpl.smpl_forward, in_axes=(None, 0, 0, 0)))(model, betas, pose, transl)
    batched = _forward(model, betas, pose, transl)
    np.testing.assert_allclose(mapped.vertices, batched.vertices, atol=1e-5)
    np.testing.assert_allclose(mapped.joints, batched.joints, atol=1e-5)


def test_pose_gradient_matches_finite_differences(files, x64):
    model64 = smpl.load_smpl(files["pkl"], dtype=jnp.float64)
    betas, pose, transl = (jnp.asarray(x) for x in _random_inputs(5))
    target = jnp.asarray(np.random.default_rng(6).normal(size=(BATCH, NUM_VERTICES, 3)))
    pose = pose.at[:, 3].set(0.0)  # include a joint at exactly zero rotation

    def loss_of(out):
        return jnp.sum((out.vertices - target) ** 2) + jnp.sum(out.joints ** 2)

    grad = jax.jit(jax.grad(lambda p: loss_of(smpl.smpl_forward(model64, betas, p, transl))))
    g = grad(pose)
    assert np.all(np.isfinite(np.asarray(g)))
    h = 1e-6
    for idx in [(0, 0, 1), (1, 3, 2), (2, 18, 0), (3, 7, 2)]:
        e = jnp.zeros_like(pose).at[idx].set(h)
        fd = (loss_of(_forward(model64, betas, pose + e, transl))
              - loss_of(_forward(model64, betas, pose - e, transl))) / (2 * h)
        np.testing.assert_allclose(g[idx], fd, rtol=1e-6, atol=1e-6)
    assert np.all(np.isfinite(np.asarray(grad(jnp.zeros_like(pose)))))


# ---- input checks ---------------------------------------------------------------------------


def test_forward_input_checks_name_the_argument(model):
    betas, pose = jnp.zeros((NUM_BETAS,)), jnp.zeros((24, 3))
    cases = [
        ((jnp.zeros(()), pose, None), r"smpl_forward: betas has shape \(\), expected \(\.\.\., B\)"),
        ((jnp.zeros((NUM_BETAS + 1,)), pose, None), f"betas has {NUM_BETAS + 1} coefficients"),
        ((betas, jnp.zeros((24,)), None), r"smpl_forward: pose has shape \(24,\), expected \(\.\.\., 24, 3\)"),
        ((betas, jnp.zeros((2, 24, 4)), None), r"pose has shape \(2, 24, 4\)"),
        ((betas, jnp.zeros((23, 3)), None), r"pose has shape \(23, 3\)"),
        ((betas, pose, jnp.zeros((2,))), r"translation has shape \(2,\), expected \(\.\.\., 3\)"),
        ((jnp.zeros((3, NUM_BETAS)), jnp.zeros((2, 24, 3)), None), r"betas \(3,\), pose \(2,\) do not broadcast"),
        ((betas, jnp.zeros((2, 24, 3)), jnp.zeros((5, 3))), r"translation \(5,\) do not broadcast"),
        ((betas, jnp.zeros((24, 3), bool), None), "pose has dtype bool"),
    ]
    for args, message in cases:
        with pytest.raises(ValueError, match=message):
            smpl.smpl_forward(model, *args)
    # the same checks run at trace time under a caller's jit
    with pytest.raises(ValueError, match=r"pose has shape \(23, 3\)"):
        jax.jit(smpl.smpl_forward)(model, betas, jnp.zeros((23, 3)))


def test_truncated_template_asset_names_the_path(tmp_path):
    """body.default_template(path=...) on a damaged asset raises ValueError naming the file (and field)."""
    from bodyjax import body

    with open(body.ASSET_PATH, "rb") as f:
        data = f.read()
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(data[:len(data) // 2])
    with pytest.raises(ValueError, match="truncated.npz: cannot read the body template asset"):
        body.default_template(path=str(truncated))
    corrupt = tmp_path / "corrupt.npz"            # intact zip directory, damaged member data
    corrupt.write_bytes(data[:len(data) // 3] + bytes(4096) + data[len(data) // 3 + 4096:])
    with pytest.raises(ValueError, match=r"corrupt.npz: cannot read the body template asset \(field '\w+'\)"):
        body.default_template(path=str(corrupt))
    with np.load(body.ASSET_PATH) as f:
        arrays = {k: f[k] for k in f.files if k != "hinge_axes"}
    np.savez(tmp_path / "partial.npz", **arrays)
    with pytest.raises(ValueError, match="partial.npz: the body template asset lacks field 'hinge_axes'"):
        body.default_template(path=str(tmp_path / "partial.npz"))
    (tmp_path / "text.npz").write_text("not an npz file")
    with pytest.raises(ValueError, match="text.npz"):
        body.default_template(path=str(tmp_path / "text.npz"))
    with pytest.raises(FileNotFoundError, match="absent.npz"):
        body.default_template(path=str(tmp_path / "absent.npz"))
