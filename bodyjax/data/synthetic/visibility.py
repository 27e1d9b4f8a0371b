"""Z-buffer visibility of vertices and keypoints: which annotations the image really shows.

The dense correspondences keep only vertices that pass :func:`vertex_visible`, and the record's
``keypoint_visible`` is :func:`keypoint_visibility` (a strict, occlusion-aware rule: a joint hidden
by the body is 0).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from bodyjax import body, render
from bodyjax.data.synthetic.surface import Frame, Mesh

# Parts on which each of the 24 joints lies (DensePose part ids), used by the keypoint visibility.
_TORSO, _HEAD = (1, 2), (23, 24)
JOINT_PARTS = {
    "pelvis": _TORSO + (7, 8, 9, 10), "L_hip": _TORSO + (8, 10), "R_hip": _TORSO + (7, 9),
    "spine1": _TORSO, "L_knee": (8, 10, 12, 14), "R_knee": (7, 9, 11, 13), "spine2": _TORSO,
    "L_ankle": (12, 14, 5), "R_ankle": (11, 13, 6), "spine3": _TORSO, "L_foot": (5,), "R_foot": (6,),
    "neck": _TORSO + _HEAD, "L_collar": _TORSO + (15, 17), "R_collar": _TORSO + (16, 18),
    "head": _HEAD, "L_shoulder": _TORSO + (15, 17), "R_shoulder": _TORSO + (16, 18),
    "L_elbow": (15, 17, 19, 21), "R_elbow": (16, 18, 20, 22), "L_wrist": (19, 21, 4),
    "R_wrist": (20, 22, 3), "L_hand": (4,), "R_hand": (3,),
}
# Largest depth (metres, template size) between a joint and the surface seen in front of it while the
# joint is still counted as visible: about the thickness of the body around the joint, measured on the
# template from many views, with a margin. A larger gap means another piece of the body is in between.
JOINT_DEPTH_RADIUS = {
    "pelvis": 0.20, "L_hip": 0.14, "R_hip": 0.14, "spine1": 0.20, "L_knee": 0.10, "R_knee": 0.10,
    "spine2": 0.18, "L_ankle": 0.09, "R_ankle": 0.09, "spine3": 0.17, "L_foot": 0.10,
    "R_foot": 0.10, "neck": 0.10, "L_collar": 0.12, "R_collar": 0.12, "head": 0.18,
    "L_shoulder": 0.11, "R_shoulder": 0.11, "L_elbow": 0.10, "R_elbow": 0.10, "L_wrist": 0.08,
    "R_wrist": 0.08, "L_hand": 0.08, "R_hand": 0.08,
}


class KeypointSupport(NamedTuple):
    """Where each keypoint lies, for :func:`keypoint_visibility`.

    Attributes:
      joint: ``(K,)`` joint of a joint keypoint, -1 for surface keypoints.
      parts: ``(K, 25)`` bool: parts a keypoint lies on.
      radius: ``(K,)`` :data:`JOINT_DEPTH_RADIUS` of a joint keypoint (metres, template size).
      vertex_ids: ``(K, M)`` vertices of a surface keypoint.
      vertex_used: ``(K, M)`` bool: which of them have a weight.
    """

    joint: np.ndarray
    parts: np.ndarray
    radius: np.ndarray
    vertex_ids: np.ndarray
    vertex_used: np.ndarray


def keypoint_support(template: body.BodyTemplate) -> KeypointSupport:
    """The :class:`KeypointSupport` of ``template``'s keypoints."""
    part_ids = np.asarray(template.part_ids).astype(np.int64)
    kp_jw = np.asarray(template.kp_joint_weights)
    kp_vw = np.asarray(template.kp_vertex_weights)
    k = kp_jw.shape[0]
    surface = np.abs(kp_vw).sum(1) > 0
    kp_joint = np.where(surface, -1, np.argmax(np.abs(kp_jw), axis=1))
    kp_parts = np.zeros((k, 25), bool)
    kp_radius = np.zeros(k)
    for i in range(k):
        if kp_joint[i] < 0:
            kp_parts[i, list(_HEAD)] = True
            # a surface keypoint on another part: allow the parts of its vertices
            kp_parts[i, np.unique(part_ids[np.asarray(template.kp_vertex_ids)[i][kp_vw[i] != 0]])] = True
        else:
            name = body.JOINT_NAMES[kp_joint[i]]
            kp_parts[i, list(JOINT_PARTS[name])] = True
            kp_radius[i] = JOINT_DEPTH_RADIUS[name]
    return KeypointSupport(kp_joint, kp_parts, kp_radius,
                           np.asarray(template.kp_vertex_ids).astype(np.int64), kp_vw != 0)


def _near_surface(mesh: Mesh, v: np.ndarray, f: np.ndarray) -> np.ndarray:
    """Whether face ``f`` touches vertex ``v`` or one of its mesh neighbours (``(N,)`` each)."""
    fv = mesh.faces[f]                                             # (N, 3)
    keys = v[:, None] * len(mesh.part_ids) + fv
    pos = np.minimum(np.searchsorted(mesh.edge_keys, keys), len(mesh.edge_keys) - 1)
    return ((fv == v[:, None]) | (mesh.edge_keys[pos] == keys)).any(1)


def vertex_visible(mesh: Mesh, raster: render.Raster, xy: np.ndarray, z: np.ndarray,
                   ids: np.ndarray, tolerance: float, conservative: bool = True) -> np.ndarray:
    """Z-buffer visibility of the vertices ``ids``.

    A vertex is visible iff its projection lies inside the image and at each of the four pixel
    centres of the pixel cell containing it (``conservative``; otherwise at its nearest pixel centre
    only), the z-buffer shows the background, or a surface not nearer than ``z - tolerance``, or a
    triangle of the vertex's own neighbourhood (touching the vertex or one of its mesh neighbours;
    this admits its own sloping surface). The conservative test rejects vertices within a pixel of an
    occluding contour in front of them (used for the dense correspondences); the nearest-pixel test
    is used for the small facial keypoint features.

    Args:
      mesh: template arrays (:func:`~bodyjax.data.synthetic.surface.mesh_arrays`).
      raster: the z-buffer (``face`` ids into the full face list, ``depth``).
      xy: ``(V, 2)`` projected vertices, pixels; z: ``(V,)`` depths (same unit as ``tolerance``).
      ids: ``(N,)`` vertex ids to test.

    Returns:
      ``(N,)`` bool.
    """
    ids = np.asarray(ids, np.int64)
    h, w = raster.depth.shape
    p, zz = xy[ids], z[ids]
    ok = (p[:, 0] >= 0) & (p[:, 0] <= w - 1) & (p[:, 1] >= 0) & (p[:, 1] <= h - 1)
    x0 = np.floor(p[:, 0]).astype(np.int64)
    y0 = np.floor(p[:, 1]).astype(np.int64)
    if conservative:
        corners = [(np.clip(x0 + dx, 0, w - 1), np.clip(y0 + dy, 0, h - 1))
                   for dx, dy in ((0, 0), (1, 0), (0, 1), (1, 1))]
    else:
        corners = [(np.clip(np.rint(p[:, 0]).astype(np.int64), 0, w - 1),
                    np.clip(np.rint(p[:, 1]).astype(np.int64), 0, h - 1))]
    for cx, cy in corners:
        suspect = np.flatnonzero(ok & (zz > raster.depth[cy, cx] + tolerance))
        if len(suspect):
            f = raster.face[cy[suspect], cx[suspect]]
            ok[suspect] = _near_surface(mesh, ids[suspect], f)
    return ok


def keypoint_visibility(mesh: Mesh, support: KeypointSupport, frame: Frame, kp2d: np.ndarray,
                        kp_depth: np.ndarray, segment_scales: np.ndarray, size: int,
                        tolerance: float) -> np.ndarray:
    """Occlusion-aware keypoint visibility ``(K,)`` float32 of keypoints at ``kp2d (K, 2)`` pixels,
    depth ``kp_depth (K,)`` metres, of a body with ``segment_scales (24,)``.

    A keypoint is visible iff its projection is inside the image (pixel centres ``0..size-1``) and:

    * joint keypoints (shoulders, elbows, wrists, hips, knees, ankles, the 24 joints): the surface
      seen at its nearest pixel belongs to one of the parts the joint lies on (:data:`JOINT_PARTS`,
      e.g. the left knee needs a left upper- or lower-leg part) AND that surface is at most
      :data:`JOINT_DEPTH_RADIUS` (times the joint's segment scale) nearer than the joint, i.e. it is
      the joint's own skin and not another piece of the same part set seen through the body (the
      left hip seen from the right through the torso, an elbow behind its own forearm);
    * surface keypoints (nose, eyes, ears, defined by template vertices): a head part is seen within
      one pixel of it (3 × 3 neighbourhood: these points lie on the surface, often on the contour)
      AND at least half of the keypoint's vertices pass the (nearest-pixel) vertex z-buffer test of
      :func:`vertex_visible`, so the eyes and nose are hidden when the face is turned away or
      covered, and an ear when the head is seen from the other side.
    """
    h = w = size
    col = np.rint(kp2d[:, 0]).astype(np.int64)
    row = np.rint(kp2d[:, 1]).astype(np.int64)
    inside = (col >= 0) & (col < w) & (row >= 0) & (row < h) & np.all(np.isfinite(kp2d), axis=1)
    flat = np.clip(row, 0, h - 1) * w + np.clip(col, 0, w - 1)
    k = np.arange(len(flat))
    on_part = support.parts[k, frame.part[flat]]
    near_part = np.zeros_like(on_part)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            nb = np.clip(row + dy, 0, h - 1) * w + np.clip(col + dx, 0, w - 1)
            near_part |= support.parts[k, frame.part[nb]]
    surf_depth = frame.raster.depth.reshape(-1)[flat]
    joint = support.joint >= 0
    radius = support.radius * np.where(joint, segment_scales[np.maximum(support.joint, 0)], 1.0)
    joint_ok = (kp_depth - surf_depth) <= radius
    ids = support.vertex_ids
    vis = vertex_visible(mesh, frame.raster, frame.xy, frame.z, ids.reshape(-1), tolerance,
                         conservative=False).reshape(ids.shape)
    frac = (vis & support.vertex_used).sum(1) / np.maximum(support.vertex_used.sum(1), 1)
    surface_ok = frac >= 0.5
    return (inside & np.where(joint, on_part & joint_ok, near_part & surface_ok)).astype(np.float32)
