"""The part / IUV predictor: the first stage of a two-stage regressor (Neural Body Fitting's design).

Layer: algorithms. A small fully-convolutional U-Net maps an RGB person crop ``(B, S, S, 3)`` uint8
to a DensePose-style map: per pixel one of 25 classes (0 = background, 1..24 = the DensePose parts)
and the part's chart coordinates ``(U, V)`` in ``[0, 1]``. It trains on the per-pixel labels of a
:class:`~bodyjax.batch.Batch` (its ``iuv`` field) and :func:`predict` writes its output in that same
``iuv`` uint8 format, so the second stage (:mod:`bodyjax.regressor` with input ``'parts'`` or
``'iuv'``, :func:`bodyjax.regressor.network.encode_maps`) reads predicted maps and rendered (oracle)
labels through one code path. Neural Body Fitting (Omran et al., 2018) predicts part segmentations
only; the chart coordinates are DensePose's (Güler et al., 2018) and make the ``'iuv'`` input
possible.

The ``iuv`` format (:mod:`bodyjax.batch`): channel 0 is the part (0..24, :data:`UNLABELLED` = no
label: the pixel is ignored); channels 1, 2 are ``round(UV_SCALE · U)``, ``round(UV_SCALE · V)``
(:data:`UNLABELLED` = no chart label). Predicted maps label every pixel, and their U, V are
:data:`UNLABELLED` exactly on the predicted background.

Network (:class:`IUVNet`): a U-Net with a space-to-depth stem and a sub-pixel head (all its
convolutions run below full resolution), GroupNorm, and two heads: 25 part logits per pixel and,
per pixel and part, a ``(U, V)`` pair (``uv_per_part``, the default, as DensePose's head): the 24
charts are unrelated coordinate systems, and one shared pair would have to jump between them at
every part boundary. The network reads the pair of a given part per pixel (the label's in training,
the predicted one otherwise) and returns that ``(U, V)`` in ``[0, 1]`` (a sigmoid).

Shift test-time averaging (EXTENSION, ``IUVNetConfig.test_shifts``): :func:`predict` can also read
the crop moved by one pixel, down, right or both. The space-to-depth stem sees each ``2 × 2`` block
of pixels as one cell, so a one-pixel shift gives the network another grid over the same image;
the views' part probabilities, brought back to the crop's pixels, are summed
(:func:`average_views`). A left/right mirror is no such view on the synthetic images: their bodies
carry the DensePose part colours, which tell left from right.

Keypoint heads (EXTENSION, ``IUVNetConfig.keypoints = K > 0``; not used by the experiment loop):
``K`` heat maps at the crop's resolution, read out by a soft-argmax (integral regression,
:func:`soft_argmax`) and trained on the batch's 2D keypoints (:func:`keypoint_terms`);
:func:`predict_keypoints` returns their positions. ``tools/pretrain_iuv_net.py --keypoints`` trains
them and ``tools/eval_keypoint_precision.py --keypoint-net`` measures what a run's lifter makes of
them (BENCHMARKS.md).

Loss (:func:`loss_terms`): ``L = CE(parts) + uv_weight · smoothL1(UV)``. Both terms are means over
the labelled pixels of each image, then over the images with labels, so their scale does not
depend on how many pixels are labelled (a hundred DensePose-COCO points or a dense rendered map),
nor does an image's weight; a batch without labels gives 0, not NaN.

:func:`train_step` and :func:`eval_step` are pure jitted functions of an :class:`IUVNetState` and a
batch (flax's ``examples/imagenet`` layout); the epoch loop lives in the orchestration layer
(:mod:`bodyjax.loop.epochs`), and so does the augmentation (:mod:`bodyjax.data.augment` warps the
image and its ``iuv`` map together).
"""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Dict, Optional, Tuple

import flax.linen as nn
import flax.struct
import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state

from bodyjax import checks, losses, pretrained
from bodyjax.batch import UNLABELLED, UV_SCALE, Batch
from bodyjax.regressor.model import init_key
from bodyjax.regressor.network import NUM_PART_CLASSES, preprocess

Array = jnp.ndarray

#: DensePose body parts (classes 1..24; class 0 is the background).
NUM_PARTS = NUM_PART_CLASSES - 1


# The pixel shifts (dy, dx) of each number of views of shift test-time averaging.
TEST_SHIFTS = {1: ((0, 0),), 2: ((0, 0), (1, 1)), 4: ((0, 0), (0, 1), (1, 0), (1, 1))}


@dataclasses.dataclass(frozen=True)
class IUVNetConfig:
    """The part / IUV predictor: network and training (defaults: CPU-sized, 64-px crops).

    Network (static: part of the train state):
      image_size: side ``S`` of the square input crop and of the output map, pixels; a multiple of
        ``patch · 2 ** levels``.
      width: channels of the first level (at ``S / patch``); level ``l`` has ``width · 2 ** l``.
      levels: strided downsamplings of the encoder (the coarsest map is ``S / (patch · 2 ** levels)``).
      patch: side of the pixel blocks of the space-to-depth stem and the sub-pixel head (see
        :class:`IUVNet`); 1 = a plain full-resolution U-Net (about 4× the flops at equal width).
      norm_groups: groups of the GroupNorm after every convolution (0 = no normalisation); must
        divide ``width``.
      uv_per_part: a ``(U, V)`` head per part (see the module docstring), or one for all parts.
      keypoints: EXTENSION: ``K > 0`` adds a heat-map head for ``K`` 2D keypoints (the batch's
        keypoint set), read out by a soft-argmax (see :func:`soft_argmax`); 0 = none.
    Loss:
      pretrained: a weights file of :func:`save_params` loaded before training (``''``: none);
        :data:`PRETRAINED_64` is the one the project ships for 64-px crops.
      uv_weight: weight of the UV term against the part cross-entropy.
      body_weight: share of the cross-entropy given to the body pixels (labelled 1..24) against
        the background pixels (label 0): the background covers most of a crop, and a plain mean
        over the pixels first learns to call everything background. ``None`` = the plain mean.
      uv_smooth_l1_beta: threshold of the smooth L1 of the UV term (in chart units: 0.1 is a tenth
        of a chart; quadratic below, linear above, so a few wrong pixels near a part boundary do
        not dominate).
      keypoint_weight: weight of the keypoint term (smooth L1 of the soft-argmax position, pixels
        of the crop, summed over x and y; used with ``keypoints > 0``).
    Training (read by the orchestration layer):
      learning_rate: Adam learning rate.
      lr_final_fraction: the learning rate is cosine-decayed to this fraction of ``learning_rate``
        over a stage (1.0 = constant).
      num_epochs: epochs of a training stage (0: the loop uses the predictor as it is loaded, e.g.
        the pretrained one, without fine-tuning it).
      batch_size: images per step.
    Prediction:
      test_shifts: EXTENSION (shift test-time averaging, :func:`predict`): the part probabilities
        are averaged over the image shifted by one pixel, in the phases of the ``patch × patch``
        space-to-depth grid: 1 = none (one view), 2 = the shifts ``(0, 0), (1, 1)``, 4 = all four
        ``(dy, dx)`` in ``{0, 1}²``. Each view costs one more run of the network.
    """

    image_size: int = 64
    width: int = 16
    levels: int = 3
    patch: int = 2
    norm_groups: int = 8
    uv_per_part: bool = True
    keypoints: int = 0
    uv_weight: float = 1.0
    uv_smooth_l1_beta: float = 0.1
    body_weight: Optional[float] = 0.5
    keypoint_weight: float = 0.1
    learning_rate: float = 1e-3
    lr_final_fraction: float = 1.0
    num_epochs: int = 20
    batch_size: int = 32
    pretrained: str = ""
    test_shifts: int = 1

    def __post_init__(self):
        for name in ("image_size", "width", "levels", "patch", "num_epochs", "batch_size"):
            value, least = getattr(self, name), 0 if name == "num_epochs" else 1
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < least:
                raise ValueError(f"IUVNetConfig.{name} must be an integer >= {least}, got {value!r}")
        if self.image_size % (self.patch * 2 ** self.levels):
            raise ValueError(f"IUVNetConfig.image_size ({self.image_size}) must be a multiple of "
                             f"patch · 2 ** levels = {self.patch * 2 ** self.levels}")
        if (not isinstance(self.norm_groups, (int, np.integer)) or self.norm_groups < 0
                or (self.norm_groups and self.width % self.norm_groups)):
            raise ValueError(f"IUVNetConfig.norm_groups must be 0 or divide width ({self.width}), "
                             f"got {self.norm_groups}")
        if (not isinstance(self.keypoints, (int, np.integer)) or isinstance(self.keypoints, bool)
                or self.keypoints < 0):
            raise ValueError(f"IUVNetConfig.keypoints must be an integer >= 0, got {self.keypoints!r}")
        for name in ("uv_weight", "keypoint_weight", "learning_rate", "uv_smooth_l1_beta"):
            value = getattr(self, name)
            nonneg = name in ("uv_weight", "keypoint_weight")
            if not np.isfinite(value) or value < 0 or (not nonneg and value == 0):
                raise ValueError(f"IUVNetConfig.{name} must be a finite "
                                 f"{'non-negative' if nonneg else 'positive'} number, got {value}")
        if self.body_weight is not None and not 0.0 <= self.body_weight <= 1.0:
            raise ValueError(f"IUVNetConfig.body_weight must be None or in [0, 1], got {self.body_weight}")
        if isinstance(self.test_shifts, bool) or self.test_shifts not in TEST_SHIFTS:
            raise ValueError(f"IUVNetConfig.test_shifts must be one of {sorted(TEST_SHIFTS)}, got "
                             f"{self.test_shifts!r}")
        if not 0.0 <= self.lr_final_fraction <= 1.0:
            raise ValueError(f"IUVNetConfig.lr_final_fraction must be in [0, 1], got "
                             f"{self.lr_final_fraction}")

    @property
    def uv_charts(self) -> int:
        """``P``: the ``(U, V)`` heads of the network (24, one per part, or 1)."""
        return NUM_PARTS if self.uv_per_part else 1

    def network(self) -> "IUVNet":
        """The Flax module of this configuration."""
        return IUVNet(width=self.width, levels=self.levels, patch=self.patch,
                      norm_groups=self.norm_groups, uv_charts=self.uv_charts, keypoints=self.keypoints)


# ----------------------------------------------------------------------------------------------
# Network


class _ConvNorm(nn.Module):
    """3×3 convolution (symmetric padding), GroupNorm, ReLU: ``(B, H, W, C)`` → ``(B, H/s, W/s, F)``."""

    features: int
    stride: int = 1
    norm_groups: int = 8

    @nn.compact
    def __call__(self, x: Array) -> Array:
        # Symmetric padding: "SAME" would pad a strided convolution on one side only.
        x = nn.Conv(self.features, (3, 3), strides=self.stride, padding=((1, 1), (1, 1)),
                    use_bias=not self.norm_groups)(x)
        if self.norm_groups:
            x = nn.GroupNorm(num_groups=self.norm_groups)(x)
        return nn.relu(x)


def pixels_to_cells(x: Array, r: int) -> Array:
    """``(B, H, W, ...)`` → ``(B, H/r, W/r, r, r, ...)``: the ``r × r`` blocks of pixels as cells.

    Entry ``[b, i, j, y, x]`` is pixel ``(r·i + y, r·j + x)``: the layout of the network's outputs
    with ``cells=True``. Works on NumPy and JAX arrays.
    """
    b, h, w = x.shape[:3]
    tail = tuple(x.shape[3:])
    x = x.reshape(b, h // r, r, w // r, r, *tail)
    return x.transpose(0, 1, 3, 2, 4, *range(5, 5 + len(tail)))


def cells_to_pixels(x: Array) -> Array:
    """``(B, h, w, r, r, ...)`` → ``(B, h·r, w·r, ...)``, the inverse of :func:`pixels_to_cells`."""
    b, h, w, r = x.shape[:4]
    tail = tuple(x.shape[5:])
    x = x.transpose(0, 1, 3, 2, 4, *range(5, 5 + len(tail)))
    return x.reshape(b, h * r, w * r, *tail)


@jax.custom_vjp
def _dense(x: Array, kernel: Array, bias: Array) -> Array:
    """``x (..., F) @ kernel (F, K) + bias (K,)``, with the kernel gradient taken as ``(gᵀ x)ᵀ``.

    Autodiff's kernel gradient ``xᵀ g`` makes XLA's CPU backend copy ``g`` (all pixels' output
    gradients) into transposed order first, a sixth of a training step for the part head; ``gᵀ x``
    transposes ``x`` (the ``F`` features) instead.
    """
    return x @ kernel + bias


def _dense_fwd(x, kernel, bias):
    return _dense(x, kernel, bias), (x, kernel)


def _dense_bwd(residuals, g):
    x, kernel = residuals
    flat_x, flat_g = x.reshape(-1, x.shape[-1]), g.reshape(-1, g.shape[-1])
    return g @ kernel.T, (flat_g.T @ flat_x).T, jnp.sum(flat_g, axis=0)


_dense.defvjp(_dense_fwd, _dense_bwd)


class _Dense(nn.Module):
    """``nn.Dense`` (lecun-normal kernel, zero bias) through :func:`_dense`."""

    features: int

    @nn.compact
    def __call__(self, x: Array) -> Array:
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        return _dense(x, kernel, bias)


class IUVNet(nn.Module):
    """U-Net: ``(B, S, S, 3)`` normalised image → part logits ``(B, S, S, 25)``, UV ``(B, S, S, 2)``.

    Layout (``c_l = width · 2 ** l``, ``p = patch``):

    * stem: space-to-depth by ``p`` (each ``p × p`` block of pixels becomes one cell of ``3 p²``
      channels), then two 3×3 convolutions to ``c_0``: level 0, at ``S / p``;
    * encoder: per level ``l = 1..levels``, a 3×3 convolution of stride 2 to ``c_l`` and a 3×3
      convolution;
    * decoder: per level ``l = levels-1..0``, a 1×1 projection to ``c_l``, nearest upsampling ×2
      (no checkerboard artefacts of transposed convolutions), the encoder's level-``l`` features
      ADDED (LinkNet's skip; a concatenation would feed the next 3×3 convolution ``3 c_l`` input
      channels instead of ``c_l``, half again the network's flops), a 3×3 convolution;
    * heads: per cell, linear maps to the ``p²`` pixels' 25 part logits and, per pixel, the
      ``(U, V)`` logits of ``uv_charts`` parts (sub-pixel convolution, ESPCN); with
      ``keypoints = K > 0`` (EXTENSION) also the ``p²`` pixels' logits of ``K`` keypoint heat maps
      (a softmax over the pixels per keypoint, read out by :func:`soft_argmax`). With the
      space-to-depth stem no convolution runs at full resolution: on a CPU those (few channels,
      many pixels) are the slowest per flop.

    The UV head reads, per pixel, the weights of one part (``parts``) and applies only those: the
    full ``24 × 2`` outputs per pixel would cost more than the rest of the network on a CPU (and
    their gradient more again), for values the loss and the output then discard.

    Every convolution is followed by GroupNorm (``norm_groups``; 0 = none) and ReLU. GroupNorm, not
    BatchNorm: it has no batch statistics, so the state is the parameters alone, training and
    inference compute the same function, and batches of sparse DensePose-COCO crops and dense
    rendered maps do not share running averages.
    """

    width: int = 16
    levels: int = 3
    patch: int = 2
    norm_groups: int = 8
    uv_charts: int = NUM_PARTS
    keypoints: int = 0

    @nn.compact
    def __call__(self, x: Array, parts: Optional[Array] = None, cells: bool = False
                 ) -> Tuple[Array, Array]:
        """The part logits and the ``(U, V)`` of one part per pixel.

        Args:
          x: ``(B, S, S, 3)`` normalised image (:func:`bodyjax.regressor.network.preprocess`).
          parts: ``(B, S, S)`` int (``(B, S/p, S/p, p, p)`` with ``cells``), the part whose
            ``(U, V)`` to read at each pixel (1..24; other ids read the nearest part's, to mask);
            ``None`` = the predicted part (the argmax of the logits). Ignored with ``uv_charts = 1``.
          cells: the outputs (and ``parts``) in the layout of :func:`pixels_to_cells`,
            ``(B, S/p, S/p, p, p, ...)``, instead of ``(B, S, S, ...)``. The training step computes
            its loss there, on labels brought to that layout on the host: rearranging the float
            outputs and their gradients to full resolution costs a fifth of a CPU step.

        Returns:
          ``(part_logits (B, S, S, 25), uv (B, S, S, 2))``, ``uv`` in [0, 1]; with ``keypoints =
          K > 0`` a third entry, the heat-map logits ``(B, S, S, K)`` (cells: ``(B, S/p, S/p, p,
          p, K)``).
        """
        block = functools.partial(_ConvNorm, norm_groups=self.norm_groups)
        p = self.patch
        b, s = x.shape[0], x.shape[1]
        h = block(self.width)(pixels_to_cells(x, p).reshape(b, s // p, s // p, p * p * 3))
        skips = [block(self.width)(h)]
        for level in range(1, self.levels + 1):
            h = block(self.width * 2 ** level, stride=2)(skips[-1])
            skips.append(block(self.width * 2 ** level)(h))
        h = skips.pop()
        for level in range(self.levels - 1, -1, -1):
            h = nn.Dense(self.width * 2 ** level)(h)
            h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)
            h = block(self.width * 2 ** level)(h + skips.pop())
        # A matmul, not a 1×1 nn.Conv: XLA's CPU convolution takes the kernel gradient of a 1×1
        # convolution with a hundred outputs through a very slow path.
        logits = _Dense(p * p * NUM_PART_CLASSES, name="part_head")(h)
        logits = logits.reshape(*h.shape[:3], p, p, NUM_PART_CLASSES)
        features = h.shape[-1]
        kernel = self.param("uv_kernel", nn.initializers.variance_scaling(
            1.0, "fan_in", "truncated_normal", in_axis=-2, out_axis=-1, batch_axis=(0, 1, 2)),
            (self.uv_charts, p, p, features, 2))
        bias = self.param("uv_bias", nn.initializers.zeros, (self.uv_charts, p, p, 2))
        if parts is None:
            parts = argmax_part(logits)
        elif not cells:
            parts = pixels_to_cells(jnp.asarray(parts), p)
        chart = jnp.clip(parts.astype(jnp.int32) - 1, 0, self.uv_charts - 1)   # (B, S/p, S/p, p, p)
        sub_y, sub_x = jnp.arange(p)[:, None], jnp.arange(p)[None, :]
        # Each pixel's own (F, 2) weights: (B, S/p, S/p, p, p, F, 2); their gradient is a scatter.
        weights = kernel[chart, sub_y, sub_x]
        uv = nn.sigmoid(jnp.einsum("bhwf,bhwyxfc->bhwyxc", h, weights) + bias[chart, sub_y, sub_x])
        out = (logits, uv)
        if self.keypoints:
            heat = _Dense(p * p * self.keypoints, name="keypoint_head")(h)
            out = out + (heat.reshape(*h.shape[:3], p, p, self.keypoints),)
        return out if cells else tuple(cells_to_pixels(o) for o in out)


def soft_argmax(heat_logits: Array, cells: bool = False) -> Tuple[Array, Array]:
    """Keypoint positions of heat-map logits: the expected pixel under a softmax over the pixels.

    Integral regression (Sun et al., 2018): differentiable and below the pixel grid's resolution.
    Pixel ``(row, col)`` is the image point ``(x, y) = (col, row)`` (:mod:`bodyjax.render`'s
    convention, the one of the batch's ``keypoints``).

    Args:
      heat_logits: ``(B, S, S, K)`` logits (the network's third output), or with ``cells`` the
        layout of :func:`pixels_to_cells`, ``(B, S/p, S/p, p, p, K)``.
      cells: the layout of ``heat_logits``.

    Returns:
      ``(xy (B, K, 2), peak (B, K))``: the expected positions in pixels of the ``S``-px crop and
      the largest probability of each map (a confidence: near 1 for a sharp single peak).
    """
    heat = jnp.asarray(heat_logits, jnp.float32)
    b, k = heat.shape[0], heat.shape[-1]
    if cells:
        p = heat.shape[3]
        rows = np.arange(heat.shape[1])[:, None, None, None] * p + np.arange(p)[None, None, :, None]
        cols = np.arange(heat.shape[2])[None, :, None, None] * p + np.arange(p)[None, None, None, :]
        rows, cols = np.broadcast_to(rows, heat.shape[1:5]), np.broadcast_to(cols, heat.shape[1:5])
    else:
        rows, cols = np.meshgrid(np.arange(heat.shape[1]), np.arange(heat.shape[2]), indexing="ij")
    grid = jnp.asarray(np.stack([cols.reshape(-1), rows.reshape(-1)], axis=-1), jnp.float32)  # (N, 2)
    prob = jax.nn.softmax(heat.reshape(b, -1, k), axis=1)                                      # (B, N, K)
    return jnp.einsum("bnk,nc->bkc", prob, grid), jnp.max(prob, axis=1)


def argmax_part(part_logits: Array) -> Array:
    """``(..., 25)`` logits → ``(...)`` int32 predicted part, the first of ties (as ``jnp.argmax``).

    A max and a min over the last axis: XLA's CPU argmax (a reduction over value-index pairs) is
    several times slower on these maps.
    """
    top = jnp.max(part_logits, axis=-1, keepdims=True)
    index = jnp.arange(part_logits.shape[-1], dtype=jnp.int32)
    return jnp.min(jnp.where(part_logits == top, index, part_logits.shape[-1]), axis=-1)


# ----------------------------------------------------------------------------------------------
# State


class IUVNetState(train_state.TrainState):
    """``TrainState`` (step, params, opt_state, static apply_fn/tx) + the static config."""

    config: IUVNetConfig = flax.struct.field(pytree_node=False, default=IUVNetConfig())


@functools.lru_cache(maxsize=None)
def _optimizer(learning_rate: float) -> optax.GradientTransformation:
    # One optimiser object per rate: states created separately have equal static fields and share
    # the step's compilation. The rate itself is a hyper-parameter in the optimiser state.
    return optax.inject_hyperparams(optax.adam)(learning_rate=learning_rate)


@functools.lru_cache(maxsize=None)
def _network(config: IUVNetConfig) -> IUVNet:
    # One module object per configuration: ``apply_fn`` is a static field of the state, and a bound
    # method compares by the identity of its object, so states created separately share the steps'
    # compilations only if they hold the same module.
    return config.network()


@functools.lru_cache(maxsize=None)
def _init_fn(config: IUVNetConfig):
    """One jitted initialisation per configuration (states created again reuse its program)."""
    x = jnp.zeros((1, config.image_size, config.image_size, 3), jnp.float32)

    def init_network(key):
        return _network(config).init(key, x)

    return jax.jit(init_network)


def create_state(rng, config: IUVNetConfig = IUVNetConfig(), *, abstract: bool = False) -> IUVNetState:
    """Initialises the network (at ``config.image_size``) and Adam(``config.learning_rate``).

    Args:
      rng: a PRNG key or an int seed; the parameters are a deterministic function of it (on a
        given backend: the initialisers draw with XLA's RngBitGenerator, see
        :func:`bodyjax.regressor.model.create_state`).
      config: the :class:`IUVNetConfig`.
      abstract: only the parameters' shapes and dtypes (``jax.ShapeDtypeStruct``, no optimiser
        state), for :func:`load_params` to fill from a file that holds every parameter: nothing is
        initialised or compiled.
    """
    if not isinstance(config, IUVNetConfig):
        raise ValueError(f"create_state: config must be an IUVNetConfig, got {type(config).__name__}")
    if abstract:
        variables = jax.eval_shape(_init_fn(config), init_key(rng))
        return IUVNetState(step=jnp.asarray(0, jnp.int32), apply_fn=_network(config).apply,
                           params=variables["params"], tx=_optimizer(float(config.learning_rate)),
                           opt_state=None, config=config)
    variables = _init_fn(config)(init_key(rng))
    state = IUVNetState.create(apply_fn=_network(config).apply, params=variables["params"],
                               tx=_optimizer(float(config.learning_rate)), config=config)
    return state.replace(step=jnp.asarray(state.step, jnp.int32))


#: The network fields of :class:`IUVNetConfig` (what a weights file must match).
NETWORK_FIELDS = ("image_size", "width", "levels", "patch", "norm_groups", "uv_per_part")
#: The predictor pretrained on the 2D labels of other synthetic people (``tools/pretrain_iuv_net.py``).
PRETRAINED_64 = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "iuv_net_s64.npz")


def save_params(path: str, state: IUVNetState, metadata: Optional[dict] = None) -> None:
    """Writes the network's parameters and its network config to ``path`` (``.npz``).

    Args:
      path: the file.
      state: the :class:`IUVNetState`.
      metadata: optional JSON-able facts stored with them (how they were made, what they reach).
    """
    info = {"network": {f: getattr(state.config, f) for f in NETWORK_FIELDS}, **(metadata or {})}
    pretrained.save_weights(path, {"params": jax.device_get(state.params)}, info)


def load_params(state: IUVNetState, path: str, field: str = "path") -> IUVNetState:
    """``state`` with its parameters read from a file of :func:`save_params` (optimiser reset).

    Args:
      state: a state whose config's network fields match the file's. Keypoint heads that the file
        lacks (a predictor trained without them) keep their initial values.
      path: the file.
      field: how the caller names the path in messages (e.g. ``config.iuv_net.pretrained``).

    Raises:
      FileNotFoundError: naming ``field`` and the file.
      ValueError: naming the file and the field when it is unreadable, was made for another
        network, or lacks / mis-shapes a parameter.
    """
    arrays, info = pretrained.read_weights(path, field, "part / IUV predictor")
    pretrained.check_network(info, state.config, path, field, "config.iuv_net")
    params = dict(state.params)
    # A file made without keypoint heads fills the rest; the heads keep their initial values.
    keep = {"keypoint_head": params.pop("keypoint_head")} if (
        "keypoint_head" in params and not any(k.startswith("params/keypoint_head/") for k in arrays)) else {}
    if keep and any(isinstance(v, jax.ShapeDtypeStruct) for v in jax.tree_util.tree_leaves(keep["keypoint_head"])):
        raise ValueError(f"{field}: {path} has no keypoint heads, and an abstract state "
                         "(create_state(abstract=True)) has no initial ones to keep; load it into an "
                         "initialised state")
    params = dict(pretrained.fill_variables(params, arrays, path, field, prefix="params/"), **keep)
    return state.replace(params=params, opt_state=state.tx.init(params))


# ----------------------------------------------------------------------------------------------
# Loss and metrics


def _label_masks(iuv_labels: Array):
    """``(part (B, ...) int32, has_part, has_uv (B, ...) bool, uv target (B, ..., 2))``."""
    part = iuv_labels[..., 0].astype(jnp.int32)
    has_part = part < NUM_PART_CLASSES  # 255 (and any other id outside 0..24) is unlabelled
    raw_uv = iuv_labels[..., 1:].astype(jnp.int32)
    has_uv = has_part & (part >= 1) & jnp.all(raw_uv <= UV_SCALE, axis=-1)
    return part, has_part, has_uv, raw_uv.astype(jnp.float32) / UV_SCALE


def _image_mean(values: Array, mask: Array) -> Array:
    """Mean of ``values`` ``(B, ...)`` over each image's ``mask``, then over images with any; 0 if none."""
    mask = mask.astype(values.dtype)
    pixels = tuple(range(1, values.ndim))
    count = jnp.sum(mask, axis=pixels)
    per_image = jnp.sum(jnp.where(mask > 0, values, 0.0), axis=pixels) / jnp.maximum(count, 1.0)
    has = (count > 0).astype(values.dtype)
    return jnp.sum(per_image * has) / jnp.maximum(jnp.sum(has), 1.0)


def loss_terms(part_logits: Array, uv: Array, iuv_labels: Array,
               config: IUVNetConfig) -> Tuple[Array, Dict[str, Array]]:
    """``L = part_ce + uv_weight · uv_loss`` for a batch of network outputs.

    Args:
      part_logits: ``(B, S, S, 25)`` part logits.
      uv: ``(B, S, S, 2)`` predicted ``(U, V)`` in [0, 1] of the LABEL's part (the network called
        with ``parts = iuv_labels[..., 0]``).
      iuv_labels: ``(B, S, S, 3)`` uint8 labels in the ``iuv`` format (see the module docstring).
      config: the :class:`IUVNetConfig` (``uv_weight``, ``uv_smooth_l1_beta``).

    Any arrangement of the pixels works if all three share it (``(B, S, S)`` above, or the cells
    of :func:`pixels_to_cells`, ``(B, S/p, S/p, p, p)``): the means are over all axes but the first.

    Returns:
      ``(loss, terms)`` with scalar ``part_ce`` (softmax cross-entropy over the pixels with a part
      label) and ``uv_loss`` (smooth L1 of U and V, summed over the two, over the pixels labelled
      with a part 1..24 and a U, V label). Both are per-image means over those pixels, averaged
      over the images that have any; 0 when no pixel is labelled.
    """
    part, has_part, has_uv, target = _label_masks(iuv_labels)
    logits = part_logits.astype(jnp.float32)
    # A one-hot product, not optax's integer-label gather: its gradient would be a scatter.
    label_logit = jnp.sum(logits * jax.nn.one_hot(part, NUM_PART_CLASSES, dtype=logits.dtype), axis=-1)
    ce = jax.nn.logsumexp(logits, axis=-1) - label_logit
    err = losses.smooth_l1(uv.astype(jnp.float32) - target, config.uv_smooth_l1_beta)
    if config.body_weight is None:
        part_ce = _image_mean(ce, has_part)
    else:
        # Body and background pixels weighted apart (each a mean over its own pixels).
        body = has_part & (part >= 1)
        part_ce = (config.body_weight * _image_mean(ce, body)
                   + (1.0 - config.body_weight) * _image_mean(ce, has_part & (part == 0)))
    uv_loss = _image_mean(jnp.sum(err, axis=-1), has_uv)
    return part_ce + config.uv_weight * uv_loss, {"part_ce": part_ce, "uv_loss": uv_loss}


def keypoint_terms(heat_logits: Array, keypoints: Array, keypoint_visible: Array,
                   config: IUVNetConfig, cells: bool = False) -> Tuple[Array, Dict[str, Array]]:
    """The keypoint term of the loss (EXTENSION; ``config.keypoints > 0``) and its error in pixels.

    Args:
      heat_logits: ``(B, S, S, K)`` heat-map logits (``(B, S/p, S/p, p, p, K)`` with ``cells``).
      keypoints: ``(B, K, 2)`` label positions, pixels of the crop.
      keypoint_visible: ``(B, K)``, 1 where labelled.
      config: the :class:`IUVNetConfig` (``keypoint_weight``).
      cells: the layout of ``heat_logits`` (see :func:`soft_argmax`).

    Returns:
      ``(weighted loss, terms)``: ``keypoint_loss`` (smooth L1, β = 1 px, of the soft-argmax
      position, summed over x and y) and ``keypoint_px`` (Euclidean distance, pixels), each a mean
      over an image's labelled keypoints, then over the images with any (0 when none is).
    """
    xy, _ = soft_argmax(heat_logits, cells=cells)
    diff = xy - jnp.asarray(keypoints, jnp.float32)
    mask = jnp.asarray(keypoint_visible, jnp.float32) > 0
    loss = _image_mean(jnp.sum(losses.smooth_l1(diff, 1.0), axis=-1), mask)
    px = _image_mean(jnp.sqrt(jnp.sum(diff * diff, axis=-1) + 1e-12), mask)
    return config.keypoint_weight * loss, {"keypoint_loss": loss, "keypoint_px": px}


def confusion_matrix(pred_part: Array, label_part: Array, xp=jnp) -> Array:
    """``(25, 25)`` pixel counts ``[label, predicted]`` over the pixels with a part label.

    Args:
      pred_part: ``(...)`` predicted part ids 0..24.
      label_part: ``(...)`` label part ids (0..24; others, e.g. 255, are ignored).
      xp: ``jax.numpy`` (jittable, float32 counts) or ``numpy`` (int64 counts).
    """
    label = label_part.astype(xp.int32).reshape(-1)
    pred = xp.clip(pred_part.astype(xp.int32).reshape(-1), 0, NUM_PARTS)
    valid = label < NUM_PART_CLASSES
    codes = xp.where(valid, label, 0) * NUM_PART_CLASSES + pred
    size = NUM_PART_CLASSES ** 2
    if xp is np:
        counts = np.bincount(codes[valid], minlength=size)
    else:
        counts = jnp.bincount(codes, weights=valid.astype(jnp.float32), length=size)
    return counts.reshape(NUM_PART_CLASSES, NUM_PART_CLASSES)


def _scores(conf: Array, xp=jnp) -> Dict[str, Array]:
    """Accuracy, IoUs and the mean part IoU of a ``(25, 25)`` confusion matrix (see :func:`part_iou`)."""
    conf = conf.astype(xp.float64 if xp is np else xp.float32)
    tp = xp.diagonal(conf)
    union = conf.sum(axis=0) + conf.sum(axis=1) - tp
    iou = tp / xp.maximum(union, 1.0)
    present = union[1:] > 0
    fg_tp = conf[1:, 1:].sum()
    fg_union = conf.sum() - conf[0, 0]
    return {
        "pixel_accuracy": tp.sum() / xp.maximum(conf.sum(), 1.0),
        "foreground_iou": fg_tp / xp.maximum(fg_union, 1.0),
        "part_iou": xp.where(union > 0, iou, xp.nan),
        "mean_part_iou": xp.sum(xp.where(present, iou[1:], 0.0)) / xp.maximum(present.sum(), 1),
    }


def _segmentation_metrics(part_logits: Array, iuv_labels: Array) -> Dict[str, Array]:
    """``pixel_accuracy``, ``foreground_iou``, ``mean_part_iou`` of a batch (0 where undefined)."""
    scores = _scores(confusion_matrix(argmax_part(part_logits), iuv_labels[..., 0]))
    return {k: scores[k] for k in ("pixel_accuracy", "foreground_iou", "mean_part_iou")}


def part_iou(pred_iuv, label_iuv, chunk: int = 256) -> Tuple[np.ndarray, float]:
    """Per-part intersection over union of predicted and label maps (NumPy, for reports).

    Counts are pooled over all pixels of all images that carry a part label (label part 255 is
    ignored), in chunks of ``chunk`` images.

    Args:
      pred_iuv: ``(B, H, W, 3)`` (or ``(B, H, W)`` parts) predicted maps, uint8 ``iuv`` format.
      label_iuv: the label maps, same shape.

    Returns:
      ``(iou, mean)``: ``iou`` ``(25,)`` float64, entry ``k`` the IoU of class ``k`` (0 = background)
      or NaN where class ``k`` is neither labelled nor predicted; ``mean`` the mean over the parts
      1..24 that are (the background is left out), NaN if none is.
    """
    pred, label = np.asarray(pred_iuv), np.asarray(label_iuv)
    if pred.shape != label.shape or pred.ndim not in (3, 4) or (pred.ndim == 4 and pred.shape[-1] != 3):
        raise ValueError(f"part_iou: pred_iuv {pred.shape} and label_iuv {label.shape} must both be "
                         "(B, H, W, 3) iuv maps (or (B, H, W) part maps)")
    if pred.ndim == 4:
        pred, label = pred[..., 0], label[..., 0]
    conf = np.zeros((NUM_PART_CLASSES, NUM_PART_CLASSES), np.int64)
    for lo in range(0, len(pred), chunk):
        conf += confusion_matrix(pred[lo:lo + chunk], label[lo:lo + chunk], xp=np)
    scores = _scores(conf, xp=np)
    iou = scores["part_iou"]
    present = ~np.isnan(iou[1:])
    return iou, float(iou[1:][present].mean()) if present.any() else float("nan")


# ----------------------------------------------------------------------------------------------
# Steps


def _cell_outputs(state: IUVNetState, params, image: Array, labels: Array):
    """Network outputs (UV of the label's part) for ``labels`` in the cell layout (see :class:`IUVNet`)."""
    return state.apply_fn({"params": params}, preprocess(image), parts=labels[..., 0], cells=True)


def _all_terms(state: IUVNetState, params, image, labels, keypoints):
    """``(loss, terms, part logits)``: :func:`loss_terms`, plus :func:`keypoint_terms` when the
    network has keypoint heads (``keypoints`` = ``(positions, visible)``, else ``None``)."""
    logits, uv, *heat = _cell_outputs(state, params, image, labels)
    loss, terms = loss_terms(logits, uv, labels, state.config)
    if heat:
        kp_loss, kp_terms = keypoint_terms(heat[0], keypoints[0], keypoints[1], state.config, cells=True)
        loss, terms = loss + kp_loss, dict(terms, **kp_terms)
    return loss, terms, logits


@functools.partial(jax.jit, donate_argnums=(0,))
def _train_step(state: IUVNetState, image: Array, labels: Array, keypoints, learning_rate: Array):
    def loss_fn(params):
        loss, terms, logits = _all_terms(state, params, image, labels, keypoints)
        return loss, (terms, logits)

    (loss, (terms, logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    opt_state = state.opt_state
    opt_state.hyperparams["learning_rate"] = jnp.asarray(learning_rate, jnp.float32)
    updates, opt_state = state.tx.update(grads, opt_state, state.params)
    state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                          opt_state=opt_state)
    return state, dict(terms, **_segmentation_metrics(logits, labels), loss=loss,
                       grad_norm=optax.global_norm(grads))


@jax.jit
def _eval_step(state: IUVNetState, image: Array, labels: Array, keypoints):
    loss, terms, logits = _all_terms(state, state.params, image, labels, keypoints)
    return dict(terms, **_segmentation_metrics(logits, labels), loss=loss)


def _step_inputs(state: IUVNetState, batch: Batch, where: str):
    """Checks the batch outside jit; its ``image``, its ``iuv`` in the cell layout and, with keypoint
    heads, ``(keypoints, keypoint_visible)`` (else ``None``)."""
    if not isinstance(state, IUVNetState):
        raise ValueError(f"{where}: state must be an IUVNetState, got {type(state).__name__}")
    if not isinstance(batch, Batch):
        raise ValueError(f"{where}: batch must be a bodyjax.batch.Batch, got {type(batch).__name__}")
    batch.check(where, require=("image", "iuv"), num_keypoints=state.config.keypoints or None)
    size = state.config.image_size
    s = checks.Shapes(where, S=size)
    s.check("batch.image", batch.image, ("B", "S", "S", 3), "uint8")
    s.check("batch.iuv", batch.iuv, ("B", "S", "S", 3), "uint8")
    keypoints = None
    if state.config.keypoints:   # their shapes (K = config.keypoints) checked by batch.check above
        keypoints = (jnp.asarray(batch.keypoints, jnp.float32), jnp.asarray(batch.keypoint_visible, jnp.float32))
    # On the host (a few hundred kB of uint8): inside the step, XLA would redo this rearrangement
    # in every fusion that reads the labels.
    return (batch.image, np.ascontiguousarray(pixels_to_cells(np.asarray(batch.iuv), state.config.patch)),
            keypoints)


def train_step(state: IUVNetState, batch: Batch, learning_rate: Optional[float] = None,
               ) -> Tuple[IUVNetState, Dict[str, Array]]:
    """One Adam step on :func:`loss_terms` (jitted; the state's buffers are donated: use the result).

    Args:
      state: :class:`IUVNetState`.
      batch: a :class:`~bodyjax.batch.Batch` with ``image`` ``(B, S, S, 3)`` uint8 and ``iuv``
        ``(B, S, S, 3)`` uint8 labels, ``S = config.image_size``; with keypoint heads also
        ``keypoints`` ``(B, K, 2)`` and ``keypoint_visible`` ``(B, K)`` (other fields are not read).
      learning_rate: this step's rate (a schedule's value); ``None`` = ``config.learning_rate``.

    Returns:
      ``(state, metrics)`` with scalar ``loss, part_ce, uv_loss, pixel_accuracy, foreground_iou,
      mean_part_iou, grad_norm`` (the metrics of the predictions before the update, over the
      batch's labelled pixels; ratios with an empty denominator are 0) and, with keypoint heads,
      ``keypoint_loss, keypoint_px`` (:func:`keypoint_terms`).

    Raises:
      ValueError: naming the field, if ``image`` or ``iuv`` (with keypoint heads: ``keypoints``,
        ``keypoint_visible``) is missing, of the wrong size or dtype.
    """
    image, iuv, keypoints = _step_inputs(state, batch, "iuv_net.train_step")
    lr = state.config.learning_rate if learning_rate is None else learning_rate
    return _train_step(state, image, iuv, keypoints, jnp.float32(lr))


def eval_step(state: IUVNetState, batch: Batch) -> Dict[str, Array]:
    """The metrics of :func:`train_step` (without ``grad_norm``) of the current parameters, no update."""
    image, iuv, keypoints = _step_inputs(state, batch, "iuv_net.eval_step")
    return _eval_step(state, image, iuv, keypoints)


# ----------------------------------------------------------------------------------------------
# Inference


def encode_iuv(part: Array, uv: Array) -> Array:
    """A predicted part map and its ``(U, V)`` → ``(..., 3)`` uint8 ``iuv`` maps.

    Args:
      part: ``(...)`` int parts 0..24.
      uv: ``(..., 2)`` in [0, 1].

    Returns:
      the part, and ``round(UV_SCALE · U)``, ``round(UV_SCALE · V)`` (0..254) on the foreground,
      :data:`UNLABELLED` on the background.
    """
    q = jnp.round(jnp.clip(uv, 0.0, 1.0) * UV_SCALE)
    q = jnp.where((part > 0)[..., None], q, UNLABELLED)
    return jnp.concatenate([part[..., None], q.astype(jnp.int32)], axis=-1).astype(jnp.uint8)


def _nearest_index(n_out: int, n_in: int) -> np.ndarray:
    """Nearest source pixel of each of ``n_out`` pixels resampled from ``n_in`` (pixel centres aligned)."""
    return np.minimum(((np.arange(n_out) + 0.5) * n_in / n_out).astype(np.int64), n_in - 1)


def _crop_input(images: Array, s: int) -> Array:
    """uint8 images ``(B, H, W, 3)`` → the network's normalised ``(B, s, s, 3)`` input (resized
    linearly, antialiased, when ``(H, W) != (s, s)``)."""
    if images.shape[1:3] != (s, s):
        images = jax.image.resize(images.astype(jnp.float32), (images.shape[0], s, s, 3), "linear",
                                  antialias=True)
    return preprocess(images)


def _shift(x: Array, dy: int, dx: int) -> Array:
    """``(B, H, W, C)`` moved down by ``dy`` and right by ``dx`` pixels (edge pixels repeated)."""
    h, w = x.shape[1:3]
    return jnp.pad(x, ((0, 0), (dy, 0), (dx, 0), (0, 0)), mode="edge")[:, :h, :w]


def _unshift(x: Array, dy: int, dx: int) -> Array:
    """The inverse of :func:`_shift` on the pixels it kept (the last rows / columns repeated)."""
    return jnp.pad(x[:, dy:, dx:], ((0, 0), (0, dy), (0, dx), (0, 0)), mode="edge")


def average_views(logits: Array, uv: Array) -> Tuple[Array, Array]:
    """One map of ``V`` aligned views of the same images: the part and its ``(U, V)``.

    Args:
      logits: ``(V, B, S, S, 25)`` part logits of each view, aligned to the first view's pixels.
      uv: ``(V, B, S, S, 2)`` each view's ``(U, V)``, read at that view's own argmax part.

    Returns:
      ``(part (B, S, S) int32, uv (B, S, S, 2))``: the argmax of the summed part probabilities,
      and the mean ``(U, V)`` of the views whose own argmax is that part (the first view's where
      none is: its ``(U, V)`` belongs to another chart, as a one-view map's would).
    """
    part = argmax_part(jnp.sum(jax.nn.softmax(logits.astype(jnp.float32), axis=-1), axis=0))
    agree = (argmax_part(logits) == part[None])[..., None].astype(jnp.float32)   # (V, B, S, S, 1)
    count = jnp.sum(agree, axis=0)
    mean = jnp.sum(agree * uv, axis=0) / jnp.maximum(count, 1.0)
    return part, jnp.where(count > 0, mean, uv[0])


@functools.partial(jax.jit, static_argnames=("out_size", "shifts"))
def _predict_chunk(state: IUVNetState, images: Array, out_size: Tuple[int, int], shifts: int = 1
                   ) -> Tuple[Array]:
    s = state.config.image_size
    x = _crop_input(images, s)
    if shifts == 1:
        logits, uv, *_ = state.apply_fn({"params": state.params}, x)
        part = argmax_part(logits)
    else:  # the views in one batch: the network has no batch statistics (GroupNorm)
        views = TEST_SHIFTS[shifts]
        logits, uv, *_ = state.apply_fn({"params": state.params},
                                        jnp.concatenate([_shift(x, dy, dx) for dy, dx in views], axis=0))
        b = x.shape[0]
        logits = jnp.stack([_unshift(logits[i * b:(i + 1) * b], dy, dx) for i, (dy, dx) in enumerate(views)])
        uv = jnp.stack([_unshift(uv[i * b:(i + 1) * b], dy, dx) for i, (dy, dx) in enumerate(views)])
        part, uv = average_views(logits, uv)
    iuv = encode_iuv(part, uv)
    if out_size != (s, s):
        iuv = iuv[:, _nearest_index(out_size[0], s)][:, :, _nearest_index(out_size[1], s)]
    return (iuv,)


def _in_chunks(where: str, images, batch_size: int, call) -> Tuple[np.ndarray, ...]:
    """``call(chunk, (H, W))`` over chunks of ``batch_size`` checked images (the last one padded,
    so one compilation); its outputs (a tuple) concatenated over the images as NumPy arrays."""
    images = np.asarray(images)
    checks.Shapes(where).check("images", images, ("B", "H", "W", 3), "uint8")
    b, h, w = images.shape[:3]
    if b == 0 or h == 0 or w == 0:
        raise ValueError(f"{where}: images is empty, shape {images.shape}")
    bs = max(1, min(int(batch_size), b))
    chunks = []
    for lo in range(0, b, bs):
        out = call(images[np.arange(lo, lo + bs) % b], (h, w))
        chunks.append([np.asarray(o)[:min(bs, b - lo)] for o in out])
    return tuple(np.concatenate(c, axis=0) for c in zip(*chunks))


def predict(state: IUVNetState, images, batch_size: int = 64, shifts: Optional[int] = None) -> np.ndarray:
    """Part / IUV maps of RGB crops, in the ``iuv`` label format.

    Args:
      state: a trained :class:`IUVNetState`.
      images: ``(B, H, W, 3)`` uint8 RGB; other sizes than ``config.image_size`` are resized to it
        (linear, antialiased) and the map back to ``(H, W)`` (nearest).
      batch_size: images per jitted call (the last chunk is padded, so one compilation).
      shifts: EXTENSION: views of shift test-time averaging (1, 2 or 4; see
        ``IUVNetConfig.test_shifts``): the network also reads the crop shifted by a pixel, the
        views' part probabilities are summed on the first view's pixels, and the part is their
        argmax; its ``(U, V)`` is the mean over the views that predicted it (:func:`average_views`).
        ``None``: ``state.config.test_shifts``.

    Returns:
      ``(B, H, W, 3)`` uint8 NumPy maps: the argmax part (0..24) and its ``round(254 · U)``,
      ``round(254 · V)``; U, V are 255 where the part is the background.

    Raises:
      ValueError: ``images`` is not a non-empty ``(B, H, W, 3)`` uint8 array, or ``shifts`` is
        not ``None``, 1, 2 or 4.
    """
    shifts = state.config.test_shifts if shifts is None else shifts
    if isinstance(shifts, bool) or shifts not in TEST_SHIFTS:
        raise ValueError(f"iuv_net.predict: shifts must be None or one of {sorted(TEST_SHIFTS)}, got {shifts!r}")
    return _in_chunks("iuv_net.predict", images, batch_size,
                      lambda chunk, size: _predict_chunk(state, chunk, size, int(shifts)))[0]


@functools.partial(jax.jit, static_argnames=("in_size",))
def _keypoints_chunk(state: IUVNetState, images: Array, in_size: Tuple[int, int]):
    s = state.config.image_size
    _, _, heat = state.apply_fn({"params": state.params}, _crop_input(images, s))
    xy, peak = soft_argmax(heat)
    # Pixel centres aligned: crop pixel c covers the input's (c + 0.5) · n / s - 0.5.
    scale = jnp.asarray([in_size[1] / s, in_size[0] / s], jnp.float32)
    return (xy + 0.5) * scale - 0.5, peak


def predict_keypoints(state: IUVNetState, images, batch_size: int = 64) -> Tuple[np.ndarray, np.ndarray]:
    """2D keypoints of RGB crops from the keypoint heads (EXTENSION; ``config.keypoints > 0``).

    Args:
      state: a trained :class:`IUVNetState` with keypoint heads.
      images: ``(B, H, W, 3)`` uint8 RGB; other sizes than ``config.image_size`` are resized to it
        and the positions scaled back to ``(H, W)``.
      batch_size: images per jitted call (the last chunk is padded, so one compilation).

    Returns:
      ``(xy (B, K, 2), peak (B, K))`` float32 NumPy: positions in pixels of the input images and
      each heat map's largest probability (see :func:`soft_argmax`).

    Raises:
      ValueError: the network has no keypoint heads, or ``images`` is not a non-empty
        ``(B, H, W, 3)`` uint8 array.
    """
    if not state.config.keypoints:
        raise ValueError("iuv_net.predict_keypoints: the network has no keypoint heads "
                         "(IUVNetConfig.keypoints is 0)")
    return _in_chunks("iuv_net.predict_keypoints", images, batch_size,
                      lambda chunk, size: _keypoints_chunk(state, chunk, size))


__all__ = [
    "NUM_PARTS", "TEST_SHIFTS", "UNLABELLED", "UV_SCALE", "IUVNetConfig", "IUVNet", "IUVNetState", "argmax_part",
    "average_views", "cells_to_pixels", "confusion_matrix", "create_state", "encode_iuv", "eval_step", "loss_terms",
    "keypoint_terms", "part_iou", "pixels_to_cells", "predict", "predict_keypoints", "soft_argmax",
    "train_step",
]
