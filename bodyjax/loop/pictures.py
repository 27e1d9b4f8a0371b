"""Pictures and mesh export of the experiments: overlays, front/side views, error plots, OBJ.

Layer: orchestration.
"""
from __future__ import annotations

import os
from typing import Mapping, Sequence

import cv2
import numpy as np

from bodyjax import body, render

SKIN = np.array([0.85, 0.72, 0.62])


def render_view(template: body.BodyTemplate, vertices: np.ndarray, size: int,
                colors: np.ndarray | None = None, shaded: bool = True) -> np.ndarray:
    """Renders camera-frame ``vertices (V, 3)`` fitted into a ``size × size`` BGR uint8 image."""
    v = np.asarray(vertices)
    faces = np.asarray(template.faces)
    colors = np.tile(SKIN, (len(v), 1)) if colors is None else colors
    lo, hi = v[:, :2].min(0), v[:, :2].max(0)
    scale = 0.9 * size / max(float(np.max(hi - lo)), 1e-6)
    xy = (v[:, :2] - (lo + hi) / 2) * scale + size / 2
    raster = render.rasterize(xy, v[:, 2], faces, size, size)
    if shaded:
        rgb = render.shade(raster, faces, render.vertex_normals(v, faces), colors)
    else:
        rgb = render.interpolate(raster, faces, colors)
    img = np.where(raster.mask[..., None], rgb, 1.0)
    return (np.clip(img, 0, 1)[..., ::-1] * 255).astype(np.uint8)


def side_view(vertices: np.ndarray) -> np.ndarray:
    """The body turned 90° about the vertical axis (its right side towards the camera)."""
    v = np.asarray(vertices)
    centre = v.mean(0)
    rot = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]])
    return (v - centre) @ rot.T + centre


def overlay(image_rgb: np.ndarray, template: body.BodyTemplate, vertices: np.ndarray,
            vertices2d: np.ndarray, upscale: int = 3, alpha: float = 0.6) -> np.ndarray:
    """The mesh (camera-frame ``vertices`` projected to ``vertices2d`` pixels) over the image, BGR."""
    h, w = image_rgb.shape[:2]
    img = cv2.resize(np.asarray(image_rgb)[..., ::-1], (w * upscale, h * upscale),
                     interpolation=cv2.INTER_NEAREST).astype(np.float32) / 255.0
    faces = np.asarray(template.faces)
    v = np.asarray(vertices)
    raster = render.rasterize(np.asarray(vertices2d) * upscale + (upscale - 1) / 2, v[:, 2], faces,
                              h * upscale, w * upscale)
    shaded = render.shade(raster, faces, render.vertex_normals(v, faces), np.tile(SKIN, (len(v), 1)))[..., ::-1]
    m = raster.mask[..., None]
    out = np.where(m, (1 - alpha) * img + alpha * shaded, img)
    return (np.clip(out, 0, 1) * 255).astype(np.uint8)


def label(image: np.ndarray, text: str) -> np.ndarray:
    out = image.copy()
    cv2.putText(out, text, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 2)
    cv2.putText(out, text, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1)
    return out


def grid(rows: Sequence[Sequence[np.ndarray]]) -> np.ndarray:
    """Tiles equally sized BGR images."""
    return np.concatenate([np.concatenate(list(r), axis=1) for r in rows], axis=0)


def error_plot(history: Sequence[Mapping[str, float]], path: str,
               keys=("regressor/test_mpjpe", "regressor/test_pa_mpjpe", "registration/train_mpjpe",
                     "registration/train_pa_mpjpe", "baseline/mean_fit_pa_mpjpe",
                     "baseline/start_pa_mpjpe", "baseline/flat_lifter_pa_mpjpe")) -> None:
    """The error-per-round plot of the paper's Fig. 2 (test/train joint errors in mm), with the
    baselines (dashed): the mean of the training fits as a constant prediction, the pretrained
    regressor before any training (when there is one), the flat lifter."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.0, 3.6), dpi=120)
    rounds = [h["round"] for h in history]
    for key in keys:
        vals = [h.get(key, np.nan) for h in history]
        if not np.all(np.isnan(vals)):
            ax.plot(rounds, vals, marker="o", linestyle="--" if key.startswith("baseline") else "-",
                    label=key.replace("/", ": ").replace("_", " "))
    ax.set_xlabel("round")
    ax.set_ylabel("error (mm)")
    ax.set_xticks(rounds)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))  # outside: no line hidden
    ax.set_title("deform-and-learn: error per round")
    fig.tight_layout()
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)


def write_obj(path: str, vertices: np.ndarray, faces: np.ndarray) -> None:
    """Writes a triangle mesh as Wavefront OBJ (vertices in metres, camera frame)."""
    v = np.asarray(vertices, np.float64)
    f = np.asarray(faces, np.int64) + 1
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as fh:
        fh.write("# bodyjax mesh (metres, camera frame: x right, y down, z away)\n")
        fh.write("".join(f"v {a:.6f} {b:.6f} {c:.6f}\n" for a, b, c in v))
        fh.write("".join(f"f {a} {b} {c}\n" for a, b, c in f))
