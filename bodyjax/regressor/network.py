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


class Regressor(nn.Module):
    """ResNet backbone + linear head: ``(B, H, W, C)`` network input → ``(B, head_size)``.

    The head's kernel starts small (normal, ``head_init_std``) and its bias is the rest parameter
    vector (:func:`bodyjax.regressor.head.rest_head`), so training starts at a sane body.
    """

    depth: int = 50
    width: int = 64
    pose_head: str = "quaternion"
    typical_scale: float = 1.0
    head_init_std: float = 1e-3
    zero_init_residual: bool = True
    dtype: str = "float32"

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        feats = ResNet(depth=self.depth, width=self.width, zero_init_residual=self.zero_init_residual,
                       dtype=jnp.dtype(self.dtype), name="backbone")(x, train)
        bias = jnp.asarray(rest_head(self.pose_head, self.typical_scale))
        return nn.Dense(head_size(self.pose_head), kernel_init=nn.initializers.normal(self.head_init_std),
                        bias_init=lambda *_: bias, name="head")(feats)
