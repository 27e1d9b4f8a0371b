"""Augmentation in the input pipeline: the image, its annotations AND the targets move together.

A training record is a sample record (:mod:`bodyjax.data.sample`) joined with its target θ_fit
(the ``target_*`` fields, written by :func:`bodyjax.data.sample.params_to_record`). Every
augmentation keeps them consistent, with the same code that moves the ground truth
(:mod:`bodyjax.data.transforms`): the target body, projected with the transformed parameters, lands
on the transformed dense points and keypoints (tested with :func:`bodyjax.body.forward`). The
algorithms never see how an image was warped: they get a :class:`~bodyjax.batch.Batch` at the
network's input size.

One augmentation (:func:`augment_record`), in this order:

1. a similarity warp into the network's input size ``out_size``: a zoom by ``k ∈ scale_range``, a
   rotation by ``r ∈ ±rotation`` degrees (counter-clockwise on screen, applied with probability
   ``rotation_prob``) about the image centre, and a shift of up to ``translate`` times the image
   size (:func:`bodyjax.data.transforms.affine_sample`: ``s' = k s``, ``t' = A t``, ``R' = Q₃ R``,
   pose and segment scales unchanged);
2. a left/right flip with probability ``flip_prob`` (:func:`bodyjax.data.transforms.flip_horizontal`:
   dense vertices through the body's symmetry map, keypoints through the keypoint set's flip
   permutation, parameters mirrored, label maps' parts mirrored and U flipped on the mirror-symmetric
   charts);
3. colour jitter of the image only: brightness, contrast and saturation factors ``1 ± jitter``.

With ``config.enabled = False`` (or no config) only step 1 runs, without zoom, rotation or shift: a
plain resize of the whole image to ``out_size`` (a similarity, so ``s`` and ``t`` rescale exactly).

As grain transforms: :class:`Augment` (a ``RandomMapTransform``: grain hands it a per-record
generator) and :class:`Resize` (a ``MapTransform``). Everything runs in NumPy/OpenCV on the host.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping, NamedTuple, Optional

import grain.python as grain
import numpy as np

from bodyjax import body
from bodyjax.data import transforms


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Ranges of the random augmentation (defaults: moderate, for person-centred crops).

    Attributes:
      enabled: ``False`` turns the augmentation into a plain resize.
      scale_range: ``(lo, hi)`` zoom factor relative to fitting the whole image into the output
        (< 1 zooms out, > 1 zooms in).
      rotation: maximum in-plane rotation, degrees (uniform in ``±rotation``).
      rotation_prob: probability of rotating at all.
      translate: maximum shift of the image centre, as a fraction of the image size (per axis).
      flip_prob: probability of the left/right flip.
      map_flip_prob: the flip's probability for a network that reads label maps instead of the
        image (the two-stage regressor, :meth:`for_maps`); ``None`` = ``flip_prob``. A flipped
        label map is the map of the mirrored body on the mirror-symmetric charts whatever the
        image shows, so it may flip where the image may not (the synthetic renderer's side-specific
        colours).
      brightness, contrast, saturation: maximum relative change of each (uniform in ``1 ± value``).
    """

    enabled: bool = True
    scale_range: tuple = (0.9, 1.1)
    rotation: float = 20.0
    rotation_prob: float = 0.5
    translate: float = 0.05
    flip_prob: float = 0.5
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2
    map_flip_prob: Optional[float] = None

    def __post_init__(self):
        for name in ("rotation_prob", "flip_prob", "map_flip_prob"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"AugmentConfig.{name} must be a probability in [0, 1], got {value!r}")

    def for_maps(self) -> "AugmentConfig":
        """This augmentation for a network that reads label maps: ``map_flip_prob`` as ``flip_prob``."""
        return self if self.map_flip_prob is None else dataclasses.replace(self, flip_prob=self.map_flip_prob)


class MirrorTables(NamedTuple):
    """What a left/right flip needs of the body (NumPy, cheap to pickle into grain workers).

    Attributes:
      symmetry: ``(V,)`` mirror vertex of each vertex.
      joint_mirror: ``(24,)`` joint permutation.
      part_mirror: ``(25,)`` part permutation (0 = background).
      chart_mirror: ``(25,)`` bool, the parts whose chart coordinate U flips as ``1 - U``
        (:func:`bodyjax.body.chart_mirror`).
    """

    symmetry: np.ndarray
    joint_mirror: np.ndarray
    part_mirror: np.ndarray
    chart_mirror: np.ndarray

    @classmethod
    def of(cls, template) -> "MirrorTables":
        """The tables of a :class:`~bodyjax.body.BodyTemplate`."""
        return cls(np.asarray(template.symmetry), np.asarray(template.joint_mirror),
                   np.asarray(template.part_mirror), body.chart_mirror(template))


def random_affine(image_hw: tuple[int, int], out_size, rng: Optional[np.random.Generator],
                  config: Optional[AugmentConfig]) -> np.ndarray:
    """The ``(2, 3)`` similarity of one augmentation (a plain resize when disabled).

    The whole input image (as a box ``[-0.5, -0.5, W, H]``) is fitted into ``out_size``
    (:func:`bodyjax.data.transforms.crop_affine`), zoomed by ``k``, rotated and shifted.
    """
    h, w = image_hw
    zoom, rot, shift = 1.0, 0.0, np.zeros(2)
    if config is not None and config.enabled:
        zoom = float(rng.uniform(*config.scale_range))
        if rng.random() < config.rotation_prob:
            rot = float(rng.uniform(-config.rotation, config.rotation))
        shift = rng.uniform(-config.translate, config.translate, 2) * np.array([w, h])
    box = np.array([-0.5 + shift[0], -0.5 + shift[1], float(w), float(h)])
    return transforms.crop_affine(box, out_size, context=1.0 / zoom, rotation=rot)


def color_factors(rng: np.random.Generator, config: AugmentConfig) -> np.ndarray:
    """``(3,)`` brightness, contrast and saturation factors drawn uniformly in ``1 ± config.*``."""
    return np.array([rng.uniform(1 - config.brightness, 1 + config.brightness),
                     rng.uniform(1 - config.contrast, 1 + config.contrast),
                     rng.uniform(1 - config.saturation, 1 + config.saturation)], np.float32)


def apply_color(images: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """Colour jitter of uint8 ``(..., H, W, 3)`` images with ``(..., 3)`` factors (vectorised).

    Brightness scales the image, saturation blends each pixel with its luma, contrast blends the
    image with its mean intensity.
    """
    img = images.astype(np.float32)
    f = np.asarray(factors, np.float32)[..., None, None, :]
    b, c, s = f[..., 0:1], f[..., 1:2], f[..., 2:3]
    img = img * b
    gray = (img @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]
    img = gray + s * (img - gray)
    mean = img.mean(axis=(-3, -2, -1), keepdims=True)
    return np.clip(mean + c * (img - mean) + 0.5, 0, 255).astype(np.uint8)


def augment_record(record: Mapping[str, np.ndarray], mirror: MirrorTables, out_size,
                   rng: Optional[np.random.Generator] = None,
                   config: Optional[AugmentConfig] = AugmentConfig()) -> dict:
    """Augments one record (and its ``gt_*`` / ``target_*`` parameters) consistently.

    Args:
      record: one sample record, optionally with ``target_*`` fields; it may carry only an ``iuv``
        map and no ``image`` (the two-stage regressor's): the map gets the same warp and flip as
        with the image (the colour jitter, drawn last, is skipped).
      mirror: :class:`MirrorTables` of the body (for the flip).
      out_size: ``S`` or ``(H, W)`` of the output image.
      rng: generator of the random draws (required when ``config`` is enabled).
      config: :class:`AugmentConfig`; ``None`` or disabled = a deterministic resize only.

    Returns:
      The new record, ``image`` (and ``iuv``) of size ``out_size``; parameters in its pixels.
    """
    record = dict(record)
    record.setdefault("has_gt", np.float32(0.0))
    enabled = config is not None and config.enabled
    affine = random_affine(transforms.record_hw(record), out_size, rng, config)
    out = transforms.affine_sample(record, affine, out_size)
    if enabled:
        if rng.random() < config.flip_prob:
            out = transforms.flip_horizontal(out, mirror)
        if "image" in out:   # the last draws: a record without image gets the same warp and flip
            out["image"] = apply_color(out["image"], color_factors(rng, config))
    return out


class Augment(grain.RandomMapTransform):
    """:func:`augment_record` as a grain ``RandomMapTransform`` (grain supplies ``rng`` per record)."""

    def __init__(self, mirror: MirrorTables, out_size, config: AugmentConfig = AugmentConfig()):
        self.mirror, self.out_size, self.config = mirror, out_size, config

    def random_map(self, element, rng: np.random.Generator):
        return augment_record(element, self.mirror, self.out_size, rng, self.config)


class Resize(grain.MapTransform):
    """The deterministic resize of a record (and its parameters) to ``out_size``."""

    def __init__(self, mirror: MirrorTables, out_size):
        self.mirror, self.out_size = mirror, out_size

    def map(self, element):
        return augment_record(element, self.mirror, self.out_size, None, None)


__all__ = ["AugmentConfig", "MirrorTables", "random_affine", "color_factors", "apply_color",
           "augment_record", "Augment", "Resize"]
