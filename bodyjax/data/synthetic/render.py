"""One person rendered and annotated into the sample record.

From a person (θ and its forward pass) and the sample's generator: the z-buffer and visible surface
(:mod:`~bodyjax.data.synthetic.surface`), the RGB image (:mod:`~bodyjax.data.synthetic.appearance`),
the per-pixel labels ``iuv``, the dense correspondences, the keypoints with their visibility
(:mod:`~bodyjax.data.synthetic.visibility`) and the ground truth.

Dense correspondences are DensePose-like: pixels drawn uniformly over the person's mask, each mapped
to the template vertex of the visible triangle with the largest barycentric weight; the image point
is that vertex's exact projection (so the ground-truth body puts the vertex on its image point), kept
only if the vertex itself passes the z-buffer test of
:func:`~bodyjax.data.synthetic.visibility.vertex_visible` (it is the visible surface at the four
pixel centres around it), deduplicated, ``cfg.num_points`` of them per image.
"""
from __future__ import annotations

import time
from typing import NamedTuple, Optional

import jax
import numpy as np

from bodyjax import body
from bodyjax.data import sample as sample_lib
from bodyjax.data.synthetic import appearance, rotations64, scene, surface, visibility
from bodyjax.data.synthetic.config import SyntheticConfig


class Tables(NamedTuple):
    """The template arrays a sample needs (computed once per data set)."""

    mesh: surface.Mesh
    keypoints: visibility.KeypointSupport


def tables(template: body.BodyTemplate) -> Tables:
    """The :class:`Tables` of ``template`` (with its final keypoint set)."""
    return Tables(surface.mesh_arrays(template), visibility.keypoint_support(template))


class Timer:
    """Accumulates ``[wall, process CPU]`` seconds per stage into a dict (no-op for ``None``)."""

    def __init__(self, timings: Optional[dict]):
        self.timings = timings
        if timings is not None:
            self.wall, self.cpu = time.perf_counter(), time.process_time()

    def lap(self, stage: str) -> None:
        if self.timings is not None:
            wall, cpu = time.perf_counter(), time.process_time()
            acc = self.timings.setdefault(stage, [0.0, 0.0])
            acc[0] += wall - self.wall
            acc[1] += cpu - self.cpu
            self.wall, self.cpu = wall, cpu


def _dense(mesh: surface.Mesh, cfg: SyntheticConfig, frame: surface.Frame, rng: np.random.Generator):
    """Dense correspondences: ``(dense_xy, dense_vertex, dense_mask)`` padded to ``max_points``."""
    n_target = min(int(rng.integers(cfg.num_points[0], cfg.num_points[1] + 1)), cfg.max_points)
    m = min(len(frame.pix), int(1.5 * n_target) + 16)
    chosen = np.zeros(0, np.int64)
    if m > 0:
        sel = rng.choice(len(frame.pix), size=m, replace=False)   # uniform over the mask
        cand = frame.vid[sel]
        cand = cand[visibility.vertex_visible(mesh, frame.raster, frame.xy, frame.z, cand,
                                              cfg.visibility_tolerance)]
        _, first = np.unique(cand, return_index=True)           # first occurrence of each vertex
        chosen = cand[np.sort(first)][:n_target]
    n = len(chosen)
    dense_xy = np.zeros((cfg.max_points, 2), np.float32)
    dense_vertex = np.zeros(cfg.max_points, np.int32)
    dense_mask = np.zeros(cfg.max_points, np.float32)
    dense_xy[:n] = frame.xy[chosen]
    dense_vertex[:n] = chosen
    dense_mask[:n] = 1.0
    return dense_xy, dense_vertex, dense_mask


def annotate(tabs: Tables, cfg: SyntheticConfig, params: body.BodyParams, posed: body.BodyOutput,
             rng: np.random.Generator, timings: Optional[dict] = None) -> tuple[dict, dict]:
    """Renders and annotates one framed person (no batch dims); see :func:`render_sample`."""
    timer = Timer(timings)
    size = cfg.image_size
    v3 = np.asarray(posed.vertices, np.float64)
    s = float(params.scale)
    t = np.asarray(params.translation, np.float64)
    xy = v3[:, :2] * s + t
    frame, surf = surface.rasterise(tabs.mesh, xy, v3[:, 2], size)
    timer.lap("rasterise")

    image = appearance.paint(cfg, frame, surf, v3, rng)
    timer.lap("shading+background")

    dense_xy, dense_vertex, dense_mask = _dense(tabs.mesh, cfg, frame, rng)
    kp3 = np.asarray(posed.keypoints, np.float64)
    kp2d = kp3[:, :2] * s + t
    visible = visibility.keypoint_visibility(tabs.mesh, tabs.keypoints, frame, kp2d, kp3[:, 2],
                                             np.asarray(params.segment_scales), size,
                                             cfg.visibility_tolerance)
    joints = np.asarray(posed.joints)
    # The ground truth holds the rotation body.forward applies (Gram-Schmidt of the nine numbers).
    rotation = rotations64.gram_schmidt(params.rotation).astype(np.float32)
    sample = {
        "image": image,
        "iuv": surface.iuv_labels(frame, surf),
        "dense_xy": dense_xy,
        "dense_vertex": dense_vertex,
        "dense_mask": dense_mask,
        "keypoints": kp2d.astype(np.float32),
        "keypoint_visible": visible,
        "has_gt": np.float32(1.0),
        **sample_lib.params_to_record(params.replace(rotation=rotation), "gt"),
        "gt_joints3d": (joints - joints[:1]).astype(np.float32),
    }
    extras = {
        "iuv": surface.iuv_map(frame, surf),
        "mask": frame.raster.face >= 0,
        "depth": frame.raster.depth,
        "face": frame.raster.face,
    }
    timer.lap("correspondences+keypoints")
    return sample, extras


def render_sample(template: body.BodyTemplate, params: body.BodyParams,
                  cfg: SyntheticConfig = SyntheticConfig(), rng: Optional[np.random.Generator] = None,
                  output: Optional[body.BodyOutput] = None) -> tuple[dict, dict]:
    """Renders and annotates one person.

    Args:
      template: the body.
      params: one person's :class:`~bodyjax.body.BodyParams` (no batch dims), e.g. from
        :func:`~bodyjax.data.synthetic.scene.sample_params`.
      cfg: the data-set options.
      rng: generator of the appearance and correspondence draws (default: a fixed seed).
      output: optional precomputed :func:`bodyjax.body.forward` of ``params`` (no batch dims);
        computed when ``None``.

    Returns:
      ``(sample, extras)``: ``sample`` follows :func:`bodyjax.data.sample.sample_spec` with
      ``(image_size, image_size)``, ``cfg.max_points`` and the template's keypoint count; ``extras``
      holds ``iuv (H, W, 3)`` float32 (part id 0..24, U, V in [0, 1]), ``mask (H, W)`` bool,
      ``depth (H, W)`` float32 (metres, +inf on the background) and ``face (H, W)`` int32 (-1 on the
      background).
    """
    template = body.with_keypoints(template, cfg.keypoint_set)
    rng = np.random.default_rng(0) if rng is None else rng
    params = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float32), params)
    if output is None:
        batch = jax.tree_util.tree_map(lambda a: a[None], params)
        output = jax.tree_util.tree_map(lambda a: a[0], scene.pose_bodies(template, batch))
    return annotate(tables(template), cfg, params, output, rng)
