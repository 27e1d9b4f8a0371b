"""Data augmentation for the regressor: the image, its annotations AND the targets θ_fit move together.

A training example is a sample record (:mod:`bodyjax.data.sample`) plus a *target*: the pixel-unit
body parameters θ_fit that the registration fitted to it, as a dict of NumPy arrays

    ``{'pose': (24, 3), 'segment_scales': (24,), 'rotation': (3, 3), 'scale': (), 'translation': (2,)}``

(:func:`target_from_params` / :func:`params_from_target` convert from / to
:class:`~bodyjax.body.BodyParams`). Every augmentation keeps the triple consistent: the target body,
projected with the transformed parameters, lands on the transformed dense points and keypoints
(tested with :func:`bodyjax.body.forward`).

One augmentation (:func:`augment_sample`), in this order:

1. a similarity warp into the network's input size ``out_size``: a zoom by ``k ∈ scale_range``, a
   rotation by ``r ∈ ±rotation`` degrees (counter-clockwise on screen, applied with probability
   ``rotation_prob``) about the image centre, and a shift of up to ``translate`` times the image
   size. The sample goes through :func:`bodyjax.data.transforms.affine_sample`; the target follows
   the same formulas (``s' = k s``, ``t' = A t``, ``R' = Q₃ R``, pose and segment scales unchanged),
   see :func:`affine_target`;
2. a left/right flip with probability ``flip_prob``: :func:`bodyjax.data.transforms.flip_horizontal`
   for the sample (dense vertices through the template's symmetry map, keypoints through the keypoint
   set's flip permutation) and :func:`bodyjax.data.transforms.flip_gt` — the very function that
   mirrors ground-truth parameters — for the target (:func:`flip_target`);
3. colour jitter of the image only: brightness, contrast and saturation factors ``1 ± jitter``.

With ``config=None`` only step 1 runs, without zoom, rotation or shift: a plain resize of the whole
image to ``out_size`` (a similarity, so the targets' ``s`` and ``t`` rescale exactly).

Everything runs in NumPy/OpenCV on the host, one batch at a time, and is deterministic: batch
``seed`` (any int or tuple of ints) draws from ``np.random.default_rng(seed)``. A batch of 32 images
of 64 px takes a few milliseconds, far less than a train step.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping, Optional, Sequence, Union

import numpy as np

from bodyjax.data import transforms

TARGET_KEYS = ("pose", "segment_scales", "rotation", "scale", "translation")


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Ranges of the random augmentation (defaults: moderate, for person-centred crops).

    Attributes:
      scale_range: ``(lo, hi)`` zoom factor relative to fitting the whole image into the output
        (< 1 zooms out, > 1 zooms in).
      rotation: maximum in-plane rotation, degrees (uniform in ``±rotation``).
      rotation_prob: probability of rotating at all.
      translate: maximum shift of the image centre, as a fraction of the image size (per axis).
      flip_prob: probability of the left/right flip.
      brightness, contrast, saturation: maximum relative change of each (uniform in ``1 ± value``).
    """

    scale_range: tuple = (0.9, 1.1)
    rotation: float = 20.0
    rotation_prob: float = 0.5
    translate: float = 0.05
    flip_prob: float = 0.5
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2


# ----------------------------------------------------------------------------------------------
# Targets


def target_from_params(params, index: Optional[int] = None) -> dict:
    """NumPy target dict from :class:`~bodyjax.body.BodyParams` (optionally element ``index``)."""
    out = {k: np.asarray(getattr(params, k), np.float32) for k in TARGET_KEYS}
    if index is not None:
        out = {k: v[index] for k, v in out.items()}
    return out


def params_from_target(target: Mapping[str, np.ndarray]):
    """:class:`~bodyjax.body.BodyParams` from a target dict (any leading shape)."""
    from bodyjax import body  # deferred: keeps this module importable without jax initialisation

    return body.BodyParams(**{k: np.asarray(target[k], np.float32) for k in TARGET_KEYS})


def affine_target(target: Mapping[str, np.ndarray], affine: np.ndarray) -> dict:
    """Pixel-unit target under the similarity ``x' = A[:, :2] x + A[:, 2] = k Q x + b``.

    ``s' = k s``, ``t' = k Q t + b``, ``R' = Q₃ R`` with ``Q₃ = [[Q, 0], [0, 1]]`` (a rotation about
    the camera axis); pose and segment scales are unchanged. Same formulas as
    :func:`bodyjax.data.transforms.affine_sample` applies to the ground truth.

    Args:
      target: one target dict (no batch dims).
      affine: ``(2, 3)`` similarity.
    """
    k, q = transforms.similarity_parts(affine)
    q3 = np.eye(3)
    q3[:2, :2] = q
    out = {key: np.array(target[key], np.float32, copy=True) for key in TARGET_KEYS}
    out["rotation"] = (q3 @ np.asarray(target["rotation"], np.float64)).astype(np.float32)
    out["scale"] = np.asarray(k * float(target["scale"]), np.float32)
    out["translation"] = transforms.apply_affine(affine, target["translation"]).astype(np.float32)
    return out


def flip_target(target: Mapping[str, np.ndarray], joint_mirror: Sequence[int], width: int) -> dict:
    """Pixel-unit target mirrored for an image of width ``width`` flipped left/right.

    Delegates to :func:`bodyjax.data.transforms.flip_gt` (so θ_fit mirrors exactly like the ground
    truth): ``pose'[j] = (a_x, −a_y, −a_z)`` of ``pose[mirror[j]]``, ``S' = S[mirror]``,
    ``R' = M R M`` (``M = diag(−1, 1, 1)``), ``s' = s``, ``t' = (W − 1 − t_x, t_y)``.
    """
    pose, ss, rot, t, _ = transforms.flip_gt(target["pose"], target["segment_scales"], target["rotation"],
                                             target["translation"], np.zeros((len(joint_mirror), 3)),
                                             joint_mirror, width)
    return {"pose": pose.astype(np.float32), "segment_scales": ss.astype(np.float32),
            "rotation": rot.astype(np.float32), "scale": np.asarray(target["scale"], np.float32),
            "translation": t.astype(np.float32)}


# ----------------------------------------------------------------------------------------------
# One sample


def random_affine(image_hw: tuple[int, int], out_size, rng: Optional[np.random.Generator],
                  config: Optional[AugmentConfig]) -> np.ndarray:
    """The ``(2, 3)`` similarity of one augmentation (a plain resize when ``config`` is ``None``).

    The whole input image (as a box ``[-0.5, -0.5, W, H]``) is fitted into ``out_size``
    (:func:`bodyjax.data.transforms.crop_affine`), zoomed by ``k``, rotated and shifted.
    """
    h, w = image_hw
    zoom, rot, shift = 1.0, 0.0, np.zeros(2)
    if config is not None:
        zoom = float(rng.uniform(*config.scale_range))
        if rng.random() < config.rotation_prob:
            rot = float(rng.uniform(-config.rotation, config.rotation))
        shift = rng.uniform(-config.translate, config.translate, 2) * np.array([w, h])
    box = np.array([-0.5 + shift[0], -0.5 + shift[1], float(w), float(h)])
    return transforms.crop_affine(box, out_size, scale=1.0 / zoom, rotation=rot)


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


def color_jitter(image: np.ndarray, rng: np.random.Generator, config: AugmentConfig) -> np.ndarray:
    """Brightness, contrast and saturation jitter of one uint8 ``(H, W, 3)`` image."""
    return apply_color(image, color_factors(rng, config))


def augment_sample(sample: Mapping[str, np.ndarray], target: Mapping[str, np.ndarray], template,
                   out_size, rng: Optional[np.random.Generator] = None,
                   config: Optional[AugmentConfig] = AugmentConfig()) -> tuple[dict, dict]:
    """Augments one sample and its target consistently (see the module docstring).

    Args:
      sample: one sample record; needs ``image``, ``dense_*``, ``keypoints``, ``keypoint_visible``
        (``has_gt`` and the ``gt_*`` fields are transformed too when present).
      target: pixel-unit target dict of this sample (its image frame).
      template: the body (``symmetry``, ``joint_mirror`` for the flip).
      out_size: ``S`` or ``(H, W)`` of the output image.
      rng: generator of the random draws (required unless ``config`` is ``None``).
      config: :class:`AugmentConfig`, or ``None`` for a deterministic resize only.

    Returns:
      ``(sample', target')`` with ``sample'['image']`` of size ``out_size``; target in the new
      image's pixels.
    """
    out, tgt, factors = _geometry(sample, target, template, out_size, rng, config)
    if factors is not None:
        out["image"] = apply_color(out["image"], factors)
    return out, tgt


def _geometry(sample, target, template, out_size, rng, config):
    """The warp and flip of :func:`augment_sample`, plus the colour factors (``None`` without config)."""
    sample = dict(sample)
    sample.setdefault("has_gt", np.float32(0.0))
    image_hw = np.asarray(sample["image"]).shape[:2]
    affine = random_affine(image_hw, out_size, rng, config)
    out = transforms.affine_sample(sample, affine, out_size)
    tgt = affine_target(target, affine)
    factors = None
    if config is not None:
        if rng.random() < config.flip_prob:
            out = transforms.flip_horizontal(out, template)
            tgt = flip_target(tgt, np.asarray(template.joint_mirror), out["image"].shape[1])
        factors = color_factors(rng, config)
    return out, tgt, factors


# ----------------------------------------------------------------------------------------------
# Batches

SeedLike = Union[int, Sequence[int]]


def augment_batch(batch: Mapping[str, np.ndarray], targets: Mapping[str, np.ndarray], template,
                  out_size, seed: SeedLike = 0,
                  config: Optional[AugmentConfig] = AugmentConfig()) -> tuple[dict, dict]:
    """Augments a stacked batch (leading axis ``B``) with ``np.random.default_rng(seed)``.

    Args:
      batch: stacked sample fields ``(B, ...)``.
      targets: stacked target dict ``(B, ...)`` (pixel units of the batch's images).
      template, out_size, config: as in :func:`augment_sample`.
      seed: int or tuple of ints; the same seed gives the same batch.

    Returns:
      ``(batch', targets')`` stacked, images ``(B, H_out, W_out, 3)`` uint8.
    """
    rng = np.random.default_rng(seed)
    n = len(np.asarray(batch["image"]))
    samples, tgts, factors = [], [], []
    for i in range(n):   # same draws, in the same order, as augment_sample
        s, t, f = _geometry({k: v[i] for k, v in batch.items()}, {k: targets[k][i] for k in TARGET_KEYS},
                            template, out_size, rng, config)
        samples.append(s)
        tgts.append(t)
        factors.append(f)
    out = {k: np.stack([s[k] for s in samples]) for k in samples[0]}
    if config is not None:
        out["image"] = apply_color(out["image"], np.stack(factors))
    return out, {k: np.stack([t[k] for t in tgts]) for k in TARGET_KEYS}


__all__ = ["AugmentConfig", "TARGET_KEYS", "target_from_params", "params_from_target", "affine_target",
           "flip_target", "random_affine", "color_factors", "apply_color", "color_jitter", "augment_sample",
           "augment_batch"]
