"""A vectorised NumPy z-buffer rasteriser for weak-perspective meshes.

Used to render the synthetic data set (RGB, IUV map, visibility) and the pictures of the
experiments. Everything is array code: triangles are expanded to the pixels of their bounding
boxes, tested with edge functions, and the nearest surface per pixel is chosen with one sort.

Pixel convention (the same as OpenCV's): pixel ``(row, col)`` has its centre at image coordinates
``(x, y) = (col, row)``; x grows to the right and y downwards, as in the project's camera frame.
Depth grows away from the camera, so the smallest depth wins.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import numpy as np


class Raster(NamedTuple):
    """Result of :func:`rasterize` for an ``H × W`` image.

    Attributes:
      face: ``(H, W)`` int32 index of the visible triangle, -1 for background.
      bary: ``(H, W, 3)`` float32 barycentric coordinates of the pixel centre in that triangle.
      depth: ``(H, W)`` float32 depth of the visible surface, +inf for background.
    """

    face: np.ndarray
    bary: np.ndarray
    depth: np.ndarray

    @property
    def mask(self) -> np.ndarray:
        return self.face >= 0


def rasterize(points2d: np.ndarray, depth: np.ndarray, faces: np.ndarray, height: int,
              width: int, max_pixels: int = 50_000_000, cull_back_faces: bool = False) -> Raster:
    """Z-buffer rasterisation of a triangle mesh already projected to the image.

    Args:
      points2d: ``(V, 2)`` image coordinates in pixels.
      depth: ``(V,)`` depth of each vertex (smaller is nearer).
      faces: ``(F, 3)`` int triangles.
      height, width: image size.
      max_pixels: guard on the number of candidate (triangle, pixel) pairs.
      cull_back_faces: skip triangles that face away from the camera, i.e. whose signed image area
        ``(b - a) x (c - a)`` is >= 0 (for outward-oriented meshes in the project's camera frame, the
        z component of the face normal is then >= 0). For a closed mesh the nearest surface is never
        a back face, so the result is the same for about half the work.

    Returns:
      A :class:`Raster`.
    """
    points2d = np.asarray(points2d, np.float64)
    depth = np.asarray(depth, np.float64)
    faces = np.asarray(faces, np.int64)
    if points2d.ndim != 2 or points2d.shape[1] != 2 or depth.shape != points2d.shape[:1]:
        raise ValueError(f"points2d must be (V, 2) and depth (V,), got {points2d.shape}, {depth.shape}")
    face_map = np.full((height, width), -1, np.int32)
    bary_map = np.zeros((height, width, 3), np.float32)
    depth_map = np.full((height, width), np.inf, np.float32)
    if not np.all(np.isfinite(points2d)) or not np.all(np.isfinite(depth)):
        raise ValueError("rasterize: non-finite vertex positions")

    # Per-corner coordinate arrays: reductions over a length-3 axis of an (F, 3, 2) array are
    # several times slower than elementwise minimum/maximum of three (F,) arrays.
    xs, ys = points2d[:, 0], points2d[:, 1]
    ax, bx, cx = xs[faces[:, 0]], xs[faces[:, 1]], xs[faces[:, 2]]
    ay, by, cy = ys[faces[:, 0]], ys[faces[:, 1]], ys[faces[:, 2]]
    x0 = np.maximum(np.ceil(np.minimum(np.minimum(ax, bx), cx)), 0)
    x1 = np.minimum(np.floor(np.maximum(np.maximum(ax, bx), cx)), width - 1)
    y0 = np.maximum(np.ceil(np.minimum(np.minimum(ay, by), cy)), 0)
    y1 = np.minimum(np.floor(np.maximum(np.maximum(ay, by), cy)), height - 1)
    nx, ny = x1 - x0 + 1, y1 - y0 + 1
    face_area = (bx - ax) * (cy - ay) - (by - ay) * (cx - ax)
    keep = (nx > 0) & (ny > 0)
    if cull_back_faces:
        keep &= face_area < 0
    fid = np.flatnonzero(keep)
    if len(fid) == 0:
        return Raster(face_map, bary_map, depth_map)
    nx, ny = nx[fid].astype(np.int64), ny[fid].astype(np.int64)
    x0, y0 = x0[fid].astype(np.int64), y0[fid].astype(np.int64)
    counts = nx * ny
    total = int(counts.sum())
    if total > max_pixels:
        raise ValueError(f"rasterize: {total} candidate pixels exceed max_pixels={max_pixels}")

    # Enumerate every pixel of every bounding box.
    owner = np.repeat(np.arange(len(fid)), counts)
    start = np.repeat(np.cumsum(counts) - counts, counts)
    local = np.arange(total) - start
    nxo = nx[owner]
    px = x0[owner] + local % nxo
    py = y0[owner] + local // nxo
    f = fid[owner]

    ax, bx, cx, ay, by, cy = ax[f], bx[f], cx[f], ay[f], by[f], cy[f]
    area = face_area[f]
    ok = np.abs(area) > 1e-12
    area = np.where(ok, area, 1.0)
    w0 = ((bx - px) * (cy - py) - (by - py) * (cx - px)) / area
    w1 = ((cx - px) * (ay - py) - (cy - py) * (ax - px)) / area
    w2 = 1.0 - w0 - w1
    inside = np.flatnonzero(ok & (w0 >= -1e-9) & (w1 >= -1e-9) & (w2 >= -1e-9))
    px, py, f = px[inside], py[inside], f[inside]
    w = np.stack([w0[inside], w1[inside], w2[inside]], axis=1)
    z = (w * depth[faces[f]]).sum(1)

    pix = py * width + px
    order = np.lexsort((z, pix))
    pix_sorted = pix[order]
    first = order[np.r_[True, pix_sorted[1:] != pix_sorted[:-1]]]
    rows, cols = py[first], px[first]
    face_map[rows, cols] = f[first]
    bary_map[rows, cols] = w[first]
    depth_map[rows, cols] = z[first]
    return Raster(face_map, bary_map, depth_map)


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """``(V, 3)`` unit area-weighted vertex normals of a triangle mesh ``(V, 3)``, ``(F, 3)``."""
    v = np.asarray(vertices, np.float64)
    tri = v[faces]
    fn = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    # Scatter-add of the face normals to their corners with bincount (much faster than np.add.at).
    idx = np.asarray(faces).reshape(-1)
    fn3 = np.repeat(fn, 3, axis=0)
    n = np.stack([np.bincount(idx, weights=fn3[:, c], minlength=len(v)) for c in range(3)], axis=1)
    return n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)


def interpolate(raster: Raster, faces: np.ndarray, attributes: np.ndarray,
                background: Optional[np.ndarray] = None) -> np.ndarray:
    """Interpolates per-vertex ``attributes (V, C)`` over the visible surface, ``(H, W, C)``."""
    attributes = np.asarray(attributes, np.float32)
    face = np.maximum(raster.face, 0)
    out = (attributes[faces[face]] * raster.bary[..., None]).sum(axis=2)
    bg = 0.0 if background is None else background
    return np.where(raster.mask[..., None], out, bg).astype(np.float32)


def shade(raster: Raster, faces: np.ndarray, normals: np.ndarray, colors: np.ndarray,
          light=(-0.3, -0.5, -1.0), ambient: float = 0.35) -> np.ndarray:
    """Lambertian shading of per-vertex ``colors (V, 3)`` in [0, 1]; returns ``(H, W, 3)`` floats.

    ``light`` is the direction towards the light in the camera frame (default: from the upper left,
    in front of the body). The background is 0; composite with :attr:`Raster.mask`.
    """
    light = np.asarray(light, np.float64)
    light = light / np.linalg.norm(light)
    n = interpolate(raster, faces, normals)
    n /= np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-12)
    lambert = np.clip((n * light).sum(-1), 0.0, 1.0)
    col = interpolate(raster, faces, colors)
    return col * (ambient + (1.0 - ambient) * lambert)[..., None]


def part_colors(part_ids: np.ndarray) -> np.ndarray:
    """A fixed, distinguishable RGB colour in [0, 1] per DensePose part, ``(V,)`` → ``(V, 3)``."""
    hues = (np.arange(25) * 0.618034) % 1.0
    table = np.stack([_hsv_to_rgb(h, 0.55, 0.95) for h in hues])
    table[0] = 0.5
    return table[np.asarray(part_ids)]


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    i = int(h * 6.0) % 6
    f = h * 6.0 - int(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    return np.asarray([(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i])
