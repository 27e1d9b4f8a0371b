"""Human3.6M Protocol #1 evaluation: the canonical-skeleton rescaling, the joint sets, the actions."""
from __future__ import annotations

import numpy as np
import pytest

from bodyjax import body
from bodyjax.data import h36m
from bodyjax.loop import h36m_eval

TRAIN = (1, 5, 6, 7, 8)


def _skeletons(rng, n, subjects):
    """Random H36M-17 skeletons: per-subject bone lengths, random bone directions, metres."""
    subj = rng.choice(subjects, n)
    lengths = {s: rng.uniform(0.05, 0.45, 16) for s in subjects}
    out = np.zeros((n, 17, 3))
    for i in range(n):
        bones = lengths[subj[i]] * (1 + 0.02 * rng.standard_normal(16))     # a little mocap noise
        for b, (child, parent) in enumerate((c, p) for c, p in enumerate(h36m.H36M17_PARENTS) if p >= 0):
            d = rng.standard_normal(3)
            out[i, child] = out[i, parent] + bones[b] * d / np.linalg.norm(d)
    return out + rng.standard_normal((n, 1, 3)), subj


def _reference_canonical(joints, subj, parents):
    """Float64 NumPy: per-subject mean bone lengths, averaged over S1, S5, S6, S7, S8."""
    per = []
    for s in TRAIN:
        j = joints[subj == s]
        lengths = [np.linalg.norm(j[:, c] - j[:, p], axis=-1) for c, p in enumerate(parents) if p >= 0]
        per.append(np.mean(np.stack(lengths, -1), axis=0))
    return np.mean(per, axis=0)


def _reference_mpjpe(pred, gt, parents, root, canonical_sum):
    """Float64 NumPy: root-align, scale the prediction's bone-length sum to the canonical, MPJPE."""
    root = np.atleast_1d(root)
    p = pred - pred[:, root].mean(1, keepdims=True)
    g = gt - gt[:, root].mean(1, keepdims=True)
    bone_sum = sum(np.linalg.norm(p[:, c] - p[:, q], axis=-1) for c, q in enumerate(parents) if q >= 0)
    p = p * (canonical_sum / bone_sum)[:, None, None]
    return np.linalg.norm(p - g, axis=-1).mean(-1), np.linalg.norm(pred - pred[:, root].mean(1, keepdims=True)
                                                                   - g, axis=-1).mean(-1)


def test_canonical_rescaling_matches_a_float64_reference():
    rng = np.random.default_rng(0)
    joints, subj = _skeletons(rng, 300, TRAIN + (9, 11))
    for name, (idx, parents, root) in h36m_eval.JOINT_SETS.items():
        sub = joints[:, np.asarray(idx)]
        canon = h36m.canonical_skeleton(sub, subj, parents)
        ref = _reference_canonical(sub, subj, parents)
        np.testing.assert_allclose(canon["bone_lengths"], ref, rtol=1e-12)
        assert canon["sum"] == pytest.approx(ref.sum(), rel=1e-12)
        assert set(canon["subjects"]) == set(TRAIN) and sum(canon["subjects"].values()) == np.isin(subj, TRAIN).sum()
    # the test frames' errors with that canonical sum (prediction: the truth, noisy and mis-scaled)
    test = np.isin(subj, (9, 11))
    gt = joints[test]
    pred = 1.3 * (gt + 0.03 * rng.standard_normal(gt.shape)) + 5.0
    train = {"S": h36m.spin24_from_h36m17(joints[~test]), "subject": subj[~test]}
    canonical = h36m_eval.canonical_skeletons(train)
    errors = h36m_eval.frame_errors(pred, gt, {k: v["sum"] for k, v in canonical.items()})
    for name, (idx, parents, root) in h36m_eval.JOINT_SETS.items():
        idx = np.asarray(idx)
        # the loader hands the npz's joints over as float32: the reference reads the same values
        stored = joints[~test].astype(np.float32).astype(np.float64)
        ref_canon = _reference_canonical(stored[:, idx], subj[~test], parents).sum()
        assert canonical[name]["sum"] == pytest.approx(ref_canon, rel=1e-12)
        rescaled, plain = _reference_mpjpe(pred[:, idx], gt[:, idx], parents, root, ref_canon)
        np.testing.assert_allclose(errors[name]["mpjpe"], 1000 * rescaled, rtol=2e-5, atol=2e-3)
        np.testing.assert_allclose(errors[name]["mpjpe_root"], 1000 * plain, rtol=2e-5, atol=2e-3)
        # a prediction that is the truth up to scale and translation has zero PA error ...
        exact = h36m_eval.frame_errors(2.0 * gt + 1.0, gt, {k: v["sum"] for k, v in canonical.items()})
        assert np.max(exact[name]["pa_mpjpe"]) < 0.05
    # ... and the rescaled error is the one of the truth scaled to the canonical skeleton
    assert np.mean(errors["h36m17"]["mpjpe"]) < np.mean(errors["h36m17"]["mpjpe_root"])


def test_canonical_skeleton_needs_every_training_subject():
    joints, subj = _skeletons(np.random.default_rng(1), 40, (1, 5, 6, 9))
    with pytest.raises(ValueError, match="S7"):
        h36m.canonical_skeleton(joints, subj, h36m.H36M17_PARENTS)


def test_summary_per_action_and_overall():
    errs = {"h36m17": {"mpjpe": np.array([1.0, 2.0, 3.0, 10.0]), "mpjpe_root": np.zeros(4), "pa_mpjpe": np.ones(4)}}
    out = h36m_eval.summarize(errs, ["Walking", "Walking", "Eating", "Eating"])
    assert list(out["h36m17"]["per_action"]) == ["Eating", "Walking"]          # ACTIONS order
    assert out["h36m17"]["per_action"]["Walking"] == {"frames": 2, "mpjpe": 1.5, "mpjpe_root": 0.0, "pa_mpjpe": 1.0}
    assert out["h36m17"]["overall"]["mpjpe"] == 4.0
    assert out["h36m17"]["action_mean"]["mpjpe"] == pytest.approx((1.5 + 6.5) / 2)


def test_joint_sets_and_actions():
    assert [h36m.H36M17_NAMES[i] for i in h36m.LSP14_IN_H36M17][:12] == [n for n in h36m.LSP14_NAMES][:12]
    assert h36m.parse_action("images/S9_Directions_1.54138969_000001.jpg") == "Directions"
    assert h36m.parse_action("S11/Videos/WalkTogether 1.55011271.mp4") == "WalkTogether"
    assert h36m.parse_action("images/S1_TakingPhoto_1.60457274_000011.jpg") == "Photo"
    assert h36m.parse_action("images/S9_SittingDown.58860488_000005.jpg") == "SittingDown"
    assert h36m.parse_action("images/S5_WalkDog_1.54138969_000001.jpg") == "WalkDog"


def test_default_body_map_and_regressor_file(tmp_path):
    template = body.default_template()
    jmap = h36m.default_body_h36m_map(template)
    joints = np.asarray(template.joints)
    rest = jmap.apply(joints, np.asarray(template.vertices)[jmap.vertex_ids])
    names = dict(zip(body.JOINT_NAMES, joints))
    for k, ours in ((1, "L_hip"), (3, "L_ankle"), (6, "R_ankle"), (13, "L_wrist"), (14, "R_shoulder")):
        np.testing.assert_allclose(rest[k], names[ours], atol=1e-6)
        assert jmap.exact[k]
    assert [h36m.H36M17_NAMES[k] for k in range(17) if not jmap.exact[k]] == \
        ["pelvis", "spine", "thorax", "neck_nose", "head_top"]
    assert rest[10, 1] == np.min(np.asarray(template.vertices)[:, 1])        # the head top is the top
    # an SPIN-style vertex regressor (17, V)
    v = template.vertices.shape[0]
    reg = np.zeros((17, v))
    reg[np.arange(17), np.arange(17) * 3] = 1.0
    np.save(tmp_path / "J_regressor_h36m.npy", reg)
    loaded = h36m.load_joint_regressor(tmp_path / "J_regressor_h36m.npy", v)
    m = h36m.regressor_h36m_map(loaded)
    np.testing.assert_allclose(m.apply(joints, np.asarray(template.vertices)[m.vertex_ids]),
                               np.asarray(template.vertices)[np.arange(17) * 3], atol=1e-6)
    with pytest.raises(ValueError, match=r"J_regressor_h36m.npy: J_regressor_h36m must be numeric of shape \(17, 6890\)"):
        h36m.load_joint_regressor(tmp_path / "J_regressor_h36m.npy", 6890)
    with pytest.raises(FileNotFoundError, match="nope.npy"):
        h36m.load_joint_regressor(tmp_path / "nope.npy", v)
