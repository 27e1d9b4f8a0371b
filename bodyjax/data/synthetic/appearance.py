"""What the person and the scene look like: clothing palette, surface texture, shading, background.

Only the pixels change here: the geometry and the annotations come from
:mod:`~bodyjax.data.synthetic.surface`. The body colour mixes a random clothing / skin palette with the
fixed DensePose part colours (weight ``cfg.part_color_weight``), carries a texture fixed on the
surface (per-vertex noise and stripes along a chart axis), and is flat-shaded under a random light;
the background is a random cheap texture with distractor shapes; blur and pixel noise finish it.
"""
from __future__ import annotations

import math

import cv2
import numpy as np

from bodyjax import render
from bodyjax.data.synthetic.config import SyntheticConfig
from bodyjax.data.synthetic.surface import Frame, Surface

# Clothing regions of the parts: 0 skin, 1 top, 2 bottom, 3 shoes; (sleeve / trouser choices per
# sample move the forearms and shins between regions).
_PART_REGION = np.array([0, 1, 1, 0, 0, 3, 3, 2, 2, 2, 2, 2, 2, 2, 2, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0])
_FOREARM_PARTS = np.array([19, 20, 21, 22])
_SHIN_PARTS = np.array([11, 12, 13, 14])
_PART_COLORS = render.part_colors(np.arange(25))


def _smooth_noise(rng, size: int, cells: int, channels: int) -> np.ndarray:
    grid = rng.random((cells, cells, channels)).astype(np.float32)
    out = cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC)
    return out.reshape(size, size, channels)


def _random_color(rng, lo=0.05, hi=0.95) -> np.ndarray:
    return rng.uniform(lo, hi, size=3).astype(np.float32)


def make_background(rng: np.random.Generator, size: int, style: str = "mixed",
                    clutter: int = 4) -> np.ndarray:
    """A cheap random textured background ``(size, size, 3)`` float32 in [0, 1].

    Styles: ``'noise'`` (smooth colour noise), ``'gradient'``, ``'stripes'``, ``'checker'``,
    ``'flat'``, or ``'mixed'`` (one of them at random, sometimes blended with smooth noise); then up to
    ``clutter`` random rectangles / ellipses as distractors.
    """
    styles = ("noise", "gradient", "stripes", "checker", "flat")
    if style == "mixed":
        style = styles[rng.choice(len(styles), p=[0.35, 0.2, 0.2, 0.15, 0.1])]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    c0, c1 = _random_color(rng), _random_color(rng)
    if style == "noise":
        bg = _smooth_noise(rng, size, int(rng.integers(3, 12)), 3)
        bg = c0 + (bg - 0.5) * rng.uniform(0.4, 1.2)
    elif style in ("gradient", "stripes", "checker"):
        ang = rng.uniform(0, 2 * math.pi)
        proj = xx * math.cos(ang) + yy * math.sin(ang)
        if style == "gradient":
            m = (proj - proj.min()) / max(float(np.ptp(proj)), 1e-6)
        elif style == "stripes":
            m = 0.5 + 0.5 * np.sin(2 * math.pi * rng.uniform(2, 12) * proj + rng.uniform(0, 6.3))
            if rng.random() < 0.5:
                m = (m > 0.5).astype(np.float32)
        else:
            f = rng.uniform(3, 10)
            ortho = -xx * math.sin(ang) + yy * math.cos(ang)
            m = ((np.floor(f * proj) + np.floor(f * ortho)) % 2).astype(np.float32)
        bg = c0 + (c1 - c0) * m[..., None]
    elif style == "flat":
        bg = np.broadcast_to(c0, (size, size, 3)).copy()
    else:
        raise ValueError(f"unknown background style {style!r}")
    if rng.random() < 0.4:
        bg = bg + (_smooth_noise(rng, size, int(rng.integers(2, 6)), 3) - 0.5) * 0.3
    bg = np.ascontiguousarray(bg, dtype=np.float32)
    for _ in range(int(rng.integers(0, clutter + 1))):
        col = tuple(float(c) for c in _random_color(rng))
        cx, cy = (int(v) for v in rng.integers(0, size, 2))
        ax, ay = (int(v) for v in rng.integers(size // 16 + 1, size // 3, 2))
        if rng.random() < 0.5:
            cv2.rectangle(bg, (cx - ax, cy - ay), (cx + ax, cy + ay), col, -1)
        else:
            cv2.ellipse(bg, (cx, cy), (ax, ay), float(rng.uniform(0, 180)), 0, 360, col, -1)
    return np.clip(bg, 0.0, 1.0)



def _palette(rng, cfg: SyntheticConfig) -> np.ndarray:
    """Per-part base colours ``(25, 3)`` of one sample: clothing / skin mixed with part colours."""
    skin_tone = rng.uniform(0.0, 1.0)
    skin = (np.array([0.95, 0.78, 0.66]) * (1 - skin_tone) + np.array([0.38, 0.24, 0.16]) * skin_tone)
    regions = np.stack([skin, _random_color(rng), _random_color(rng), _random_color(rng, 0.02, 0.6)])
    part_region = _PART_REGION.copy()
    if rng.random() < 0.4:               # short sleeves
        part_region[_FOREARM_PARTS] = 0
    if rng.random() < 0.2:               # shorts
        part_region[_SHIN_PARTS] = 0
    base = regions[part_region]
    alpha = rng.uniform(*cfg.part_color_weight)
    colors = (1 - alpha) * base + alpha * _PART_COLORS
    colors = colors + rng.normal(0.0, cfg.color_jitter, size=colors.shape)
    return np.clip(colors, 0.0, 1.0).astype(np.float32)



def _hash_noise(ids: np.ndarray, seed: int) -> np.ndarray:
    """Cheap per-vertex pseudo-random values in [-1, 1] (a fixed function of the vertex id and seed)."""
    x = (ids.astype(np.uint64) * np.uint64(2654435761) + np.uint64(seed)) & np.uint64(0xFFFFFFFF)
    x ^= x >> np.uint64(15)
    x = (x * np.uint64(2246822519)) & np.uint64(0xFFFFFFFF)
    x ^= x >> np.uint64(13)
    return (x.astype(np.float64) / 0xFFFFFFFF) * 2.0 - 1.0



def paint(cfg: SyntheticConfig, frame: Frame, surface: Surface, vertices: np.ndarray,
          rng: np.random.Generator) -> np.ndarray:
    """The RGB image ``(H, W, 3)`` uint8: textured, shaded body over a random background.

    Args:
      cfg: the data-set options.
      frame, surface: the z-buffer and the visible surface of the body.
      vertices: ``(V, 3)`` float64 camera-frame vertices (metres; the face normals).
      rng: the sample's generator.
    """
    size = cfg.image_size
    fv, vpart, bary = surface.corners, surface.corner_part, surface.bary
    colors = _palette(rng, cfg)                                # (25, 3)
    # Texture fixed on the surface: per-vertex noise and stripes along one chart axis of each part.
    freq = rng.uniform(4, 14)
    stripe_axis = int(rng.integers(2))
    phase = rng.uniform(0, 2 * math.pi, size=25).astype(np.float32)
    stripes = np.sin((2 * math.pi * freq) * surface.corner_uv[..., stripe_axis] + phase[vpart])
    vnoise = _hash_noise(fv, int(rng.integers(1 << 30)))
    tex = 1.0 + cfg.texture * ((0.6 * (rng.random() < 0.6)) * stripes + vnoise)   # (n, 3)
    w = bary * tex
    col = colors[vpart]                                        # (n, 3, 3) per corner
    albedo = w[:, 0, None] * col[:, 0] + w[:, 1, None] * col[:, 1] + w[:, 2, None] * col[:, 2]

    # Flat shading with the visible face's normal (faces are about a pixel at this resolution).
    a, b, c = vertices[fv[:, 0]], vertices[fv[:, 1]], vertices[fv[:, 2]]
    e1, e2 = b - a, c - a
    nx = e1[:, 1] * e2[:, 2] - e1[:, 2] * e2[:, 1]
    ny = e1[:, 2] * e2[:, 0] - e1[:, 0] * e2[:, 2]
    nz = e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]
    light = np.array([rng.uniform(-1, 1), rng.uniform(-1, 0.6), -1.0])
    light /= np.linalg.norm(light)
    norm = np.maximum(np.sqrt(nx * nx + ny * ny + nz * nz), 1e-12)
    lambert = np.clip((nx * light[0] + ny * light[1] + nz * light[2]) / norm, 0.0, 1.0)
    ambient = rng.uniform(*cfg.ambient)
    light_color = (1.0 + rng.uniform(-0.1, 0.1, size=3)).astype(np.float32)
    gain = rng.uniform(0.85, 1.15)
    shade = (gain * (ambient + (1 - ambient) * lambert)).astype(np.float32)
    shaded = albedo * shade[:, None] * light_color

    image = make_background(rng, size, cfg.background, cfg.clutter).reshape(-1, 3)
    image[frame.pix] = shaded
    image = image.reshape(size, size, 3)
    if rng.random() < cfg.blur_prob:
        image = cv2.GaussianBlur(image, (3, 3), rng.uniform(0.4, 0.9))
    sigma = rng.uniform(*cfg.pixel_noise)
    image = image * 255.0 + 0.5
    image += rng.standard_normal(image.shape, dtype=np.float32) * np.float32(sigma)
    return np.clip(image, 0, 255).astype(np.uint8)

