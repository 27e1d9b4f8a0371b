"""The regressor network: its input encodings and a ResNet with one linear head.

Inputs (``RegressorConfig.input``):

* ``'rgb'`` — the paper: the RGB image, ImageNet-normalised (:func:`preprocess`);
* ``'parts'`` — Neural Body Fitting's representation: a one-hot map of the 24 DensePose parts plus
  the background (25 channels) made from an ``iuv`` label map (:mod:`bodyjax.batch`);
* ``'iuv'`` — what a DensePose predictor outputs: the one-hot parts and the chart coordinates U, V
  (27 channels; U, V are 0 where the part is background or unlabelled).

``'parts'`` and ``'iuv'`` are EXTENSIONS of the paper (see ``configs/default.py``). The maps come
from the rendered labels (an oracle) or from the part / IUV predictor of :mod:`bodyjax.iuv_net`,
which writes its output in the same ``iuv`` label format, so both reach the network by the same
code path.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from bodyjax.batch import UNLABELLED, UV_SCALE
from bodyjax.regressor.head import head_size, rest_head
from bodyjax.resnet import ResNet

Array = jnp.ndarray

INPUTS = ("rgb", "parts", "iuv")
NUM_PART_CLASSES = 25  # background + the 24 DensePose parts
#: ImageNet channel statistics (RGB, [0, 1] units), the normalisation of pretrained ResNets.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def input_channels(kind: str) -> int:
    """Channels of the network input for ``kind`` (3, 25 or 27)."""
    return {"rgb": 3, "parts": NUM_PART_CLASSES, "iuv": NUM_PART_CLASSES + 2}[kind]


def preprocess(images: Array) -> Array:
    """uint8 (or float 0–255) ``(..., H, W, 3)`` RGB → ImageNet-normalised float32."""
    x = jnp.asarray(images, jnp.float32) / 255.0
    return (x - jnp.asarray(IMAGENET_MEAN)) / jnp.asarray(IMAGENET_STD)


def encode_maps(iuv: Array, kind: str) -> Array:
    """``iuv`` label maps ``(..., H, W, 3)`` uint8 → ``(..., H, W, C)`` float32 network input.

    Part ids outside 0..24 (255 = unlabelled) give an all-zero part vector; U, V labels of 255 or
    on the background give 0.
    """
    iuv = jnp.asarray(iuv)
    part = iuv[..., 0].astype(jnp.int32)
    onehot = jax.nn.one_hot(part, NUM_PART_CLASSES, dtype=jnp.float32)  # out of range -> zeros
    if kind == "parts":
        return onehot
    uv = iuv[..., 1:].astype(jnp.float32)
    fg = ((part >= 1) & (part < NUM_PART_CLASSES))[..., None] & (uv < UNLABELLED)
    return jnp.concatenate([onehot, jnp.where(fg, uv / UV_SCALE, 0.0)], axis=-1)


def network_input(kind: str, image=None, iuv=None) -> Array:
    """The network input of ``kind`` from an image ``(B, H, W, 3)`` or label maps ``(B, H, W, 3)``."""
    if kind == "rgb":
        if image is None:
            raise ValueError("the 'rgb' regressor needs images")
        return preprocess(image)
    if kind not in INPUTS:
        raise ValueError(f"regressor input must be one of {INPUTS}, got {kind!r}")
    if iuv is None:
        raise ValueError(f"the {kind!r} regressor needs iuv label maps (rendered labels or the "
                         "part / IUV predictor's output)")
    return encode_maps(iuv, kind)


HEADS = ("linear", "ief")


def coordinate_channels(x: Array) -> Array:
    """``x (B, H, W, C)`` with two channels appended: the pixel centres' x and y in [-1, 1]."""
    b, h, w, _ = x.shape
    ys = (jnp.arange(h, dtype=x.dtype) + 0.5) / h * 2.0 - 1.0
    xs = (jnp.arange(w, dtype=x.dtype) + 0.5) / w * 2.0 - 1.0
    grid = jnp.stack(jnp.meshgrid(xs, ys, indexing="xy"), axis=-1)  # (H, W, 2): x, y
    return jnp.concatenate([x, jnp.broadcast_to(grid, (b, h, w, 2))], axis=-1)


class Regressor(nn.Module):
    """ResNet backbone + head: ``(B, H, W, C)`` network input → ``(B, head_size)``.

    Heads:
      ``'linear'`` (the paper): one dense layer whose kernel starts small (normal,
      ``head_init_std``) and whose bias is the rest parameter vector
      (:func:`bodyjax.regressor.head.rest_head`), so training starts at a sane body.
      ``'ief'`` (EXTENSION; HMR's and SPIN's iterative error feedback): ``head_iterations`` times,
      the features and the current estimate (starting at the rest vector) go through two dense
      ReLU layers of ``head_hidden`` units (shared across the iterations), whose small-initialised
      output is added to the estimate.
    ``coords`` (EXTENSION, CoordConv): two channels with the pixels' x, y in [-1, 1] are appended
    to the input, so the network sees where in the image a part is, not only what it looks like.
    """

    depth: int = 50
    width: int = 64
    pose_head: str = "quaternion"
    typical_scale: float = 1.0
    head_init_std: float = 1e-3
    zero_init_residual: bool = True
    dtype: str = "float32"
    head: str = "linear"
    head_hidden: int = 512
    head_iterations: int = 3
    coords: bool = False

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        if self.coords:
            x = coordinate_channels(jnp.asarray(x, jnp.float32))
        feats = ResNet(depth=self.depth, width=self.width, zero_init_residual=self.zero_init_residual,
                       dtype=jnp.dtype(self.dtype), name="backbone")(x, train)
        rest = jnp.asarray(rest_head(self.pose_head, self.typical_scale))
        small = nn.initializers.normal(self.head_init_std)
        if self.head == "linear":
            return nn.Dense(head_size(self.pose_head), kernel_init=small, bias_init=lambda *_: rest,
                            name="head")(feats)
        if self.head != "ief":
            raise ValueError(f"regressor head must be one of {HEADS}, got {self.head!r}")
        fc1 = nn.Dense(self.head_hidden, name="ief_fc1")
        fc2 = nn.Dense(self.head_hidden, name="ief_fc2")
        out = nn.Dense(head_size(self.pose_head), kernel_init=small, bias_init=nn.initializers.zeros,
                       name="ief_out")
        theta = jnp.broadcast_to(rest, (feats.shape[0], rest.shape[0]))
        for _ in range(self.head_iterations):
            h = nn.relu(fc2(nn.relu(fc1(jnp.concatenate([feats, theta], axis=-1)))))
            theta = theta + out(h)
        return theta
