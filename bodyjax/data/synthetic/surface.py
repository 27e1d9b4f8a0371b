"""The z-buffer of one posed body and the surface seen at every pixel: face, vertex, part, (U, V).

Every later step of a sample reads this: the shading paints the visible faces, the dense
correspondences and the keypoint visibility test the z-buffer, and the per-pixel labels of the
record (``iuv``) are the part and chart coordinates of the visible surface.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from bodyjax import body, render
from bodyjax.data import sample as sample_lib


class Mesh(NamedTuple):
    """NumPy copies of the template arrays used per sample.

    Attributes:
      faces: ``(F, 3)`` int64 triangles.
      part_ids: ``(V,)`` int64 DensePose part (1..24) of each vertex.
      uv: ``(V, 2)`` float32 chart coordinates of each vertex in its part.
      edge_keys: sorted ``a * V + b`` keys of the directed mesh edges (both directions).
    """

    faces: np.ndarray
    part_ids: np.ndarray
    uv: np.ndarray
    edge_keys: np.ndarray


def mesh_arrays(template: body.BodyTemplate) -> Mesh:
    """The :class:`Mesh` of ``template``."""
    faces = np.asarray(template.faces).astype(np.int64)
    part_ids = np.asarray(template.part_ids).astype(np.int64)
    e = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    e = np.concatenate([e, e[:, ::-1]])
    return Mesh(faces, part_ids, np.asarray(template.uv, np.float32),
                np.unique(e[:, 0] * len(part_ids) + e[:, 1]))


class Frame(NamedTuple):
    """Per-sample geometry and raster used by the annotation steps.

    Attributes:
      xy: ``(V, 2)`` float64 projected vertices, pixels.
      z: ``(V,)`` float64 camera-frame depth, metres.
      raster: the z-buffer (face ids into the full face list).
      pix: ``(n,)`` flat indices of the mask pixels.
      vid: ``(n,)`` vertex of largest barycentric weight at each mask pixel.
      part: ``(H*W,)`` part id per pixel (0 background).
    """

    xy: np.ndarray
    z: np.ndarray
    raster: render.Raster
    pix: np.ndarray
    vid: np.ndarray
    part: np.ndarray


class Surface(NamedTuple):
    """The visible surface at the ``n`` mask pixels of a :class:`Frame`.

    Attributes:
      face: ``(n,)`` visible face.
      bary: ``(n, 3)`` barycentric coordinates of the pixel centre in it.
      corners: ``(n, 3)`` its vertices.
      corner_part: ``(n, 3)`` their parts.
      corner_uv: ``(n, 3, 2)`` their (U, V).
      part: ``(n,)`` part of the pixel: that of the corner of largest barycentric weight.
      uv: ``(n, 2)`` (U, V) of the pixel, interpolated over the corners of that part only (the
        charts are per part).
    """

    face: np.ndarray
    bary: np.ndarray
    corners: np.ndarray
    corner_part: np.ndarray
    corner_uv: np.ndarray
    part: np.ndarray
    uv: np.ndarray


def rasterise(mesh: Mesh, xy: np.ndarray, z: np.ndarray, size: int) -> tuple[Frame, Surface]:
    """Z-buffer of the mesh at ``xy (V, 2)`` pixels, depth ``z (V,)``, and the visible surface.

    Returns:
      ``(frame, surface)`` for a ``size × size`` image.
    """
    # Back faces of the closed mesh are never the nearest surface: culling halves the work.
    raster = render.rasterize(xy, z, mesh.faces, size, size, cull_back_faces=True)
    pix = np.flatnonzero(raster.face.reshape(-1) >= 0)
    f = raster.face.reshape(-1)[pix]
    bary = raster.bary.reshape(-1, 3)[pix]
    fv = mesh.faces[f]                                         # (n, 3)
    vid = fv[np.arange(len(pix)), np.argmax(bary, axis=1)]
    vpart = mesh.part_ids[fv]                                  # (n, 3)
    part_px = mesh.part_ids[vid]
    same = bary * (vpart == part_px[:, None])
    same /= (same[:, 0] + same[:, 1] + same[:, 2])[:, None]
    uv = mesh.uv[fv]                                           # (n, 3, 2)
    uv_px = same[:, 0, None] * uv[:, 0] + same[:, 1, None] * uv[:, 1] + same[:, 2, None] * uv[:, 2]
    part = np.zeros(size * size, np.int64)
    part[pix] = part_px
    return Frame(xy, z, raster, pix, vid, part), Surface(f, bary, fv, vpart, uv, part_px, uv_px)


def iuv_map(frame: Frame, surface: Surface) -> np.ndarray:
    """``(H, W, 3)`` float32: part id 0..24 (0 background), U, V in [0, 1] (0 on the background)."""
    h, w = frame.raster.face.shape
    iuv = np.zeros((h * w, 3), np.float32)
    iuv[frame.pix, 0] = surface.part
    iuv[frame.pix, 1:] = surface.uv
    return iuv.reshape(h, w, 3)


def iuv_labels(frame: Frame, surface: Surface) -> np.ndarray:
    """The record's ``iuv`` ``(H, W, 3)`` uint8 (see :mod:`bodyjax.data.sample`).

    Every pixel is labelled: channel 0 is the part 1..24 on the body and 0 on the background;
    channels 1, 2 are ``round(UV_SCALE · U)``, ``round(UV_SCALE · V)`` on the body and
    :data:`~bodyjax.data.sample.UNLABELLED` (no chart) on the background.
    """
    h, w = frame.raster.face.shape
    iuv = np.zeros((h * w, 3), np.uint8)
    iuv[:, 1:] = sample_lib.UNLABELLED
    iuv[frame.pix, 0] = surface.part
    iuv[frame.pix, 1:] = np.rint(sample_lib.UV_SCALE * np.clip(surface.uv, 0.0, 1.0))
    return iuv.reshape(h, w, 3)
