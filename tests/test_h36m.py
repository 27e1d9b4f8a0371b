"""Tests for bodyjax.data.h36m: SPIN-layout npz, Protocol #1 split, joint mapping, units."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bodyjax.data import h36m

SMPL_NAMES = ["pelvis", "L_hip", "R_hip", "spine1", "L_knee", "R_knee", "spine2", "L_ankle", "R_ankle",
              "spine3", "L_foot", "R_foot", "neck", "L_collar", "R_collar", "head", "L_shoulder",
              "R_shoulder", "L_elbow", "R_elbow", "L_wrist", "R_wrist", "L_hand", "R_hand"]
# SPIN-24 ground-truth joint order (written out here independently of the module).
SPIN_NAMES = ["R ankle", "R knee", "R hip", "L hip", "L knee", "L ankle", "R wrist", "R elbow", "R shoulder",
              "L shoulder", "L elbow", "L wrist", "neck (LSP)", "head top (LSP)", "pelvis (MPII)",
              "thorax (MPII)", "spine (H36M)", "jaw (H36M)", "head (H36M)", "nose", "L eye", "R eye",
              "L ear", "R ear"]
H36M_FILLED = [14, 3, 4, 5, 2, 1, 0, 16, 12, 17, 18, 9, 10, 11, 8, 7, 6]
EXACT = {"pelvis": "pelvis (MPII)", "L_hip": "L hip", "R_hip": "R hip", "L_knee": "L knee", "R_knee": "R knee",
         "L_ankle": "L ankle", "R_ankle": "R ankle", "L_shoulder": "L shoulder", "R_shoulder": "R shoulder",
         "L_elbow": "L elbow", "R_elbow": "R elbow", "L_wrist": "L wrist", "R_wrist": "R wrist"}
APPROX = {"neck": "neck (LSP)", "head": "head (H36M)"}
SUBJECTS = [1, 5, 6, 7, 8, 9, 11]


def _names(rng, n):
    subj = rng.choice(SUBJECTS, n)
    styles = ["images/S{}_Directions_1.54138969_{:06d}.jpg", "h36m/S{}/Videos/Walking.55011271_{:06d}.jpg",
              "S{}_Sitting_Down.60457274_{:06d}.jpg"]
    return subj, np.array([styles[i % 3].format(s, i + 1) for i, s in enumerate(subj)])


def _spin_npz(path, n=40, seed=0, millimetres=False, with_part=True, imgname=None):
    rng = np.random.default_rng(seed)
    subj, names = _names(rng, n)
    s = np.zeros((n, 24, 4))
    s[:, H36M_FILLED, :3] = rng.uniform(-0.9, 0.9, (n, 17, 3))
    s[:, H36M_FILLED, :3] -= s[:, 14:15, :3]                       # root-centred on the pelvis
    s[:, H36M_FILLED, 3] = 1
    part = np.zeros((n, 24, 3))
    part[:, H36M_FILLED, :2] = rng.uniform(0, 1000, (n, 17, 2))
    part[:, H36M_FILLED, 2] = 1
    fields = {"imgname": names if imgname is None else imgname, "center": rng.uniform(300, 700, (n, 2)),
              "scale": rng.uniform(2, 5, n), "S": s * np.array([1e3, 1e3, 1e3, 1]) if millimetres else s}
    if with_part:
        fields["part"] = part
    np.savez(path, **fields)
    return subj, names, s, part


def test_protocol1_split_by_subject(tmp_path):
    subj, names, _, _ = _spin_npz(tmp_path / "h36m_train.npz")
    for split, expected in (("train", {1, 5, 6, 7, 8}), ("test", {9, 11})):
        data = h36m.load_h36m(tmp_path / "h36m_train.npz", split=split)
        keep = np.isin(subj, sorted(expected))
        np.testing.assert_array_equal(data["imgname"], names[keep])
        np.testing.assert_array_equal(data["subject"], subj[keep])
        assert set(data["subject"].tolist()) <= expected
    everything = h36m.load_h36m(tmp_path / "h36m_train.npz", split="all")
    assert everything["imgname"].shape == (40,)


def test_subject_parsing():
    assert h36m.parse_subject("images/S9_Directions_1.54138969_000001.jpg") == 9
    assert h36m.parse_subject("S11/Videos/Phoning 1.mp4") == 11
    assert h36m.parse_subject("root/S1_Sitting.5_000001.jpg") == 1        # S1 is not S11
    assert h36m.parse_subject("images/Sitting_1.jpg") == -1


def test_joint_mapping_units_and_root(tmp_path):
    subj, _, s, part = _spin_npz(tmp_path / "m.npz")
    _spin_npz(tmp_path / "mm.npz", millimetres=True)
    data = h36m.load_h36m(tmp_path / "m.npz", split="all")
    data_mm = h36m.load_h36m(tmp_path / "mm.npz", split="all")
    forced = h36m.load_h36m(tmp_path / "mm.npz", split="all", units="mm")
    for key in ("S", "joints3d", "keypoints2d", "coco17"):
        np.testing.assert_allclose(data_mm[key], data[key], atol=1e-6, err_msg=key)
        np.testing.assert_allclose(forced[key], data[key], atol=1e-6, err_msg=key)
    for ours, theirs in {**EXACT, **APPROX}.items():
        j, k = SMPL_NAMES.index(ours), SPIN_NAMES.index(theirs)
        np.testing.assert_allclose(data["joints3d"][:, j], s[:, k, :3], atol=1e-6, err_msg=ours)
        np.testing.assert_allclose(data["keypoints2d"][:, j], part[:, k, :2], atol=1e-3, err_msg=ours)
        assert np.all(data["joints3d_valid"][:, j] == 1)
    unmapped = [SMPL_NAMES.index(n) for n in SMPL_NAMES if n not in EXACT and n not in APPROX]
    assert not data["joints3d_valid"][:, unmapped].any() and not data["joints3d"][:, unmapped].any()
    np.testing.assert_allclose(data["joints3d"][:, 0], 0, atol=1e-7)   # pelvis-relative
    # COCO-17 from part: limbs filled, face points absent for H36M.
    np.testing.assert_allclose(data["coco17"][:, 9], part[:, SPIN_NAMES.index("L wrist"), :2], atol=1e-3)
    assert not data["coco17_valid"][:, :5].any() and data["coco17_valid"][:, 5:].all()


def test_comparable_joints_and_gather():
    ours, spin = h36m.comparable_joints()
    assert {(SMPL_NAMES[o], SPIN_NAMES[s]) for o, s in zip(ours, spin)} == set(EXACT.items())
    ours, spin = h36m.comparable_joints(include_approximate=True)
    assert {(SMPL_NAMES[o], SPIN_NAMES[s]) for o, s in zip(ours, spin)} == set({**EXACT, **APPROX}.items())
    # every comparable SPIN joint is one that H36M fills.
    assert set(spin.tolist()) <= set(H36M_FILLED)
    rng = np.random.default_rng(0)
    pred, gt = rng.standard_normal((2, 24, 3)), rng.standard_normal((2, 24, 4))
    gt[..., 3] = 1
    gt[1, 3, 3] = 0
    p, g, valid = h36m.gather_comparable(pred, gt)
    assert p.shape == g.shape == (2, 13, 3)
    np.testing.assert_allclose(p[:, 1], pred[:, SMPL_NAMES.index("L_hip")])
    np.testing.assert_allclose(g[:, 1], gt[:, SPIN_NAMES.index("L hip"), :3])
    assert valid[1, 1] == 0 and valid.sum() == 25


def test_test_file_without_part(tmp_path):
    _spin_npz(tmp_path / "h36m_valid_protocol1.npz", with_part=False)
    data = h36m.load_h36m(tmp_path / "h36m_valid_protocol1.npz", split="test")
    assert data["part"].shape[1:] == (24, 3) and not data["keypoints2d_valid"].any()
    assert data["joints3d_valid"].any()


def test_file_errors(tmp_path):
    np.savez(tmp_path / "no_s.npz", imgname=np.array(["S9_a.jpg"]))
    with pytest.raises(ValueError, match="no_s.npz.*'S'"):
        h36m.load_h36m(tmp_path / "no_s.npz")
    np.savez(tmp_path / "shape.npz", imgname=np.array(["S9_a.jpg"]), S=np.zeros((1, 17, 4)))
    with pytest.raises(ValueError, match="shape.npz.*'S'"):
        h36m.load_h36m(tmp_path / "shape.npz")
    np.savez(tmp_path / "nosubj.npz", imgname=np.array(["walking.jpg"]), S=np.zeros((1, 24, 4)))
    with pytest.raises(ValueError, match="nosubj.npz.*walking.jpg"):
        h36m.load_h36m(tmp_path / "nosubj.npz")
    s = np.zeros((1, 24, 4))
    s[0, 0, 0] = np.nan
    np.savez(tmp_path / "nan.npz", imgname=np.array(["S9_a.jpg"]), S=s)
    with pytest.raises(ValueError, match="nan.npz.*non-finite"):
        h36m.load_h36m(tmp_path / "nan.npz")
    np.savez(tmp_path / "obj.npz", imgname=np.array(["S9_a.jpg"], dtype=object), S=np.zeros((1, 24, 4)))
    with pytest.raises(ValueError, match="obj.npz.*allow_pickle"):
        h36m.load_h36m(tmp_path / "obj.npz")
    assert h36m.load_h36m(tmp_path / "obj.npz", split="test", allow_pickle=True)["subject"].tolist() == [9]
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        h36m.load_h36m(tmp_path / "missing.npz")
    np.savez(tmp_path / "no_name.npz", S=np.zeros((1, 24, 4)))
    with pytest.raises(ValueError, match="no_name.npz: missing field 'imgname'"):
        h36m.load_h36m(tmp_path / "no_name.npz")
    for key, value in (("part", np.zeros((1, 24, 2))), ("center", np.zeros((1, 3))), ("scale", np.zeros((2,))),
                       ("S", np.zeros((2, 24, 4))), ("part", np.full((1, 24, 3), "x"))):
        fields = {"imgname": np.array(["S9_a.jpg"]), "S": np.zeros((1, 24, 4)), key: value}
        np.savez(tmp_path / f"bad_{key}.npz", **fields)
        with pytest.raises(ValueError, match=f"bad_{key}.npz: field '{key}'"):
            h36m.load_h36m(tmp_path / f"bad_{key}.npz")
    np.savez(tmp_path / "names2d.npz", imgname=np.array([["S9_a.jpg"]]), S=np.zeros((1, 24, 4)))
    with pytest.raises(ValueError, match="names2d.npz: field 'imgname'"):
        h36m.load_h36m(tmp_path / "names2d.npz")
    good = (tmp_path / "shape.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(good[:len(good) // 2])
    with pytest.raises(ValueError, match="cut.npz: cannot read"):
        h36m.load_h36m(tmp_path / "cut.npz")
    with pytest.raises(ValueError, match="split"):
        h36m.load_h36m(tmp_path / "obj.npz", split="val")


@settings(max_examples=30, deadline=None, derandomize=True)
@given(subjects=st.lists(st.sampled_from(SUBJECTS + [2, 3, 4]), min_size=1, max_size=12),
       sep=st.sampled_from(["_", "/", "."]))
def test_split_partitions_the_protocol_subjects(subjects, sep):
    names = [f"images/S{s}{sep}Eating.{i}.jpg" for i, s in enumerate(subjects)]
    got = np.array([h36m.parse_subject(n) for n in names])
    np.testing.assert_array_equal(got, subjects)
    train = np.isin(got, h36m.PROTOCOL1_SUBJECTS["train"])
    test = np.isin(got, h36m.PROTOCOL1_SUBJECTS["test"])
    assert not np.any(train & test)
    np.testing.assert_array_equal(train | test, ~np.isin(subjects, [2, 3, 4]))
