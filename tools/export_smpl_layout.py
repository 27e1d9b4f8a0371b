"""Writes the embedded MakeHuman body in the SMPL file layout, and its charts as ``UV_Processed.mat``.

The round trip ``load_smpl`` + ``smpl.to_body`` of these files gives back the embedded body (same
forward pass, parts, charts, keypoints; tests/test_smpl_body.py), which checks the SMPL path of the
loop end to end without a licensed SMPL file. The files:

``<name>.npz`` (the ``.npz`` layout of :mod:`bodyjax.formats.smpl_file`):

* ``v_template (V, 3)``: the template's rest vertices moved back to SMPL's frame (y up, facing +z;
  ``smpl.FRAME`` is its own inverse), metres, pelvis at the origin;
* ``shapedirs (V, 3, 10)`` and ``posedirs (V, 3, 207)``: zeros (the body has no shape space and no
  pose blend shapes; ``to_body`` drops all-zero pose blend shapes);
* ``J_regressor (24, V)``: each joint as an AFFINE combination (weights summing to one) of
  :data:`REGRESSOR_VERTICES` vertices around it (the nearest in each octant), the minimum-norm
  solution of ``Σ w_i v_i = J, Σ w_i = 1`` in float64, so that ``J_regressor @ v_template``
  reproduces the template's joints to float64 round-off (:func:`affine_regressor`);
* ``weights (V, 24)``, ``kintree_table (2, 24)`` (SMPL's tree, first parent stored as 4294967295 like
  the release), ``f (F, 3)`` uint32.

``<name>_UV_Processed.mat`` (the layout of DensePose's table, :mod:`bodyjax.formats.densepose_uv`):
the MakeHuman charts are per vertex, so the table has ONE ENTRY PER VERTEX (entry ``i`` = vertex
``i``, with the vertex's part and ``(U, V)``), and its triangles are the mesh triangles whose three
corners lie in the same part. A triangle whose corners have different parts straddles a chart seam
and has no place in a chart (in DensePose's own table the seam vertices are duplicated instead), so
it is left out. A vertex left without any triangle that way (all its triangles straddle seams) gets
one extra chart triangle with the two entries of its part nearest to it in ``(U, V)``, so that the
table still gives it its part (the format derives an entry's part from its triangles).
``UVTable.per_vertex`` of this table is exactly the template's ``(part_ids, uv)``.

``<name>_face_vertices.json``: the vertex ids of the COCO-17 face keypoints (nose, eyes, ears; each
the mean of its ids), to pass as ``smpl.to_body(..., face_vertices=...)`` (the SMPL layout has no
field for them, and SMPL's own ids do not apply to this mesh).

Usage::

    python tools/export_smpl_layout.py --out /tmp/makehuman_smpl    # writes the three files
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

REGRESSOR_VERTICES = 8
NUM_BETAS = 10
FACE_NAMES = ("nose", "left_eye", "right_eye", "left_ear", "right_ear")


def affine_regressor(vertices: np.ndarray, joints: np.ndarray, k: int = REGRESSOR_VERTICES) -> np.ndarray:
    """``(J, V)`` regressor writing each joint as an affine combination of ``k`` nearby vertices.

    The vertices surround the joint: the nearest vertex in each of the 8 octants around it (the
    joints lie inside the body, so each octant has one; an empty octant is filled with the nearest
    unused vertices). Their weights are the minimum-norm solution of ``Σ w_i v_i = J``,
    ``Σ w_i = 1``; with the joint inside their hull the weights stay small and mostly positive.

    Args:
      vertices: ``(V, 3)``; joints: ``(J, 3)`` (float64 is used throughout).
      k: vertices per joint (8: one per octant; at least 4, non-coplanar, for an exact solution).

    Returns:
      ``(J, V)`` float64, ``k`` non-zeros per row summing to one, with
      ``regressor @ vertices == joints`` to float64 round-off.

    Raises:
      ValueError: a joint's vertices are (nearly) coplanar.
    """
    v = np.asarray(vertices, np.float64)
    reg = np.zeros((joints.shape[0], v.shape[0]))
    for j, target in enumerate(np.asarray(joints, np.float64)):
        d = v - target
        order = np.argsort(np.linalg.norm(d, axis=1), kind="stable")
        octant = ((d[order] > 0) * np.array([1, 2, 4])).sum(axis=1)
        _, first = np.unique(octant, return_index=True)
        ids = list(order[np.sort(first)][:k])
        ids += [i for i in order if i not in set(ids)][:k - len(ids)]
        ids = np.asarray(ids)
        centre = v[ids].mean(axis=0)
        x = (v[ids] - centre).T                           # (3, k): w with Σw = 1 ⇒ Σ w v = centre + x w
        if np.linalg.svd(x, compute_uv=False)[-1] < 1e-6:
            raise ValueError(f"joint {j}: its {k} vertices are coplanar")
        # Minimum-norm w of x w = target − centre within Σ w = 1: w = 1/k + x⁺ (target − centre)
        # (x's rows are orthogonal to the ones vector, so the correction keeps Σ w = 1).
        reg[j, ids] = 1.0 / k + np.linalg.pinv(x) @ (target - centre)
    return reg


def smpl_layout_arrays(template) -> dict:
    """The template's arrays in the SMPL layout (the keys of ``bodyjax.formats.smpl_file``)."""
    from bodyjax import smpl  # noqa: PLC0415

    frame = np.diag(smpl.FRAME)
    v = np.asarray(template.vertices, np.float64) * frame
    j = np.asarray(template.joints, np.float64) * frame
    num_v = v.shape[0]
    return dict(
        v_template=v,
        shapedirs=np.zeros((num_v, 3, NUM_BETAS)),
        posedirs=np.zeros((num_v, 3, 9 * (len(template.parents) - 1))),
        J_regressor=affine_regressor(v, j),
        weights=np.asarray(template.weights, np.float64),
        parents=tuple(template.parents),
        faces=np.asarray(template.faces),
    )


def chart_table(template):
    """The template's per-vertex charts as a :class:`~bodyjax.formats.densepose_uv.UVTable` (see the
    module docstring for the triangles)."""
    from bodyjax.formats import densepose_uv  # noqa: PLC0415

    parts = np.asarray(template.part_ids, np.int64)
    uv = np.asarray(template.uv, np.float64)
    faces = np.asarray(template.faces, np.int64)
    corner_parts = parts[faces]
    pure = np.all(corner_parts == corner_parts[:, :1], axis=1)
    kept, kept_parts = faces[pure], corner_parts[pure, 0]
    used = np.zeros(parts.shape[0], bool)
    used[kept.reshape(-1)] = True
    extra, extra_parts = [], []
    for v in np.nonzero(~used)[0]:
        same = np.nonzero(parts == parts[v])[0]
        same = same[same != v]
        if same.size < 2:
            raise ValueError(f"vertex {v}: part {parts[v]} has fewer than 3 vertices")
        near = same[np.argsort(np.linalg.norm(uv[same] - uv[v], axis=1), kind="stable")[:2]]
        extra.append([v, near[0], near[1]])
        extra_parts.append(parts[v])
    if extra:
        kept = np.concatenate([kept, np.asarray(extra, np.int64)])
        kept_parts = np.concatenate([kept_parts, np.asarray(extra_parts, np.int64)])
    return densepose_uv.UVTable.from_arrays(np.arange(parts.shape[0]), uv, kept, kept_parts,
                                            path="<MakeHuman charts>")


def face_vertices(template) -> dict:
    """``{name: [vertex ids]}`` of the template's COCO-17 face keypoints (those with weight)."""
    ids = np.asarray(template.kp_vertex_ids)
    w = np.asarray(template.kp_vertex_weights)
    names = list(template.keypoint_names)
    return {n: [int(i) for i in ids[names.index(n)][w[names.index(n)] != 0]] for n in FACE_NAMES}


def export(out_prefix: str, template=None) -> dict:
    """Writes ``<out_prefix>.npz``, ``<out_prefix>_UV_Processed.mat`` and
    ``<out_prefix>_face_vertices.json``; returns ``{'model': ..., 'uv_table': ..., 'face_vertices': ...}``
    paths. ``template`` defaults to the embedded MakeHuman body (COCO-17 keypoints)."""
    from bodyjax import body  # noqa: PLC0415
    from bodyjax.formats import densepose_uv, smpl_file  # noqa: PLC0415

    template = template if template is not None else body.default_template("coco17")
    if template.keypoint_set != "coco17":
        raise ValueError("export needs the template with its COCO-17 keypoints (the face vertices)")
    out_prefix = os.fspath(out_prefix)
    os.makedirs(os.path.dirname(os.path.abspath(out_prefix)), exist_ok=True)
    paths = {"model": out_prefix + ".npz", "uv_table": out_prefix + "_UV_Processed.mat",
             "face_vertices": out_prefix + "_face_vertices.json"}
    smpl_file.save_smpl_npz(paths["model"], **smpl_layout_arrays(template))
    densepose_uv.save_uv_processed(paths["uv_table"], chart_table(template))
    with open(paths["face_vertices"], "w") as f:
        json.dump(face_vertices(template), f, indent=1)
    return paths


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output prefix (PREFIX.npz, PREFIX_UV_Processed.mat, "
                        "PREFIX_face_vertices.json)")
    args = parser.parse_args(argv)
    paths = export(args.out)
    for kind, path in paths.items():
        print(f"{kind}: {path} ({os.path.getsize(path) / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
