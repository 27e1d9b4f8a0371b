"""The ResNet family (He et al., 2016) in Flax: one module, the depth chosen by configuration.

``ResNet(depth=50)`` is the bottleneck network of the deform-and-learn regressor (ImageNet-pretrained
weights can be imported with :mod:`bodyjax.pretrained`); ``depth=18`` / ``34`` are the basic-block
networks used for CPU-sized configurations, and ``width`` (64 in the standard networks) narrows
every stage proportionally (e.g. 8 in the tests, 32 for a fast CPU model).

Layout (the torchvision / "v1.5" ResNet, so that its weights map one to one):

* stem: 7×7 convolution, stride 2, padding 3 → BatchNorm → ReLU → 3×3 max-pool, stride 2,
  padding 1 (padded with −inf);
* four stages of ``blocks`` residual blocks with ``width · (1, 2, 4, 8)`` channels (times 4 at the
  output of a bottleneck block); the first block of stages 2–4 has stride 2, carried by the 3×3
  convolution (also in the bottleneck), with a 1×1 strided convolution + BatchNorm on the shortcut
  wherever the shape changes;
* global average pooling → features ``(B, width · 8 · expansion)`` (512 for ResNet18/34,
  2048 for ResNet50 at width 64).

Padding is explicit and symmetric (``((p, p), (p, p))``), as in the reference networks; "SAME"
padding would pad strided convolutions asymmetrically and shift every feature map by half a pixel
relative to imported weights.

Parameter names mirror the torchvision state dict: ``conv1``, ``bn1``, ``layer{s}_{b}`` with
``conv1/bn1/conv2/bn2[/conv3/bn3]`` and ``downsample_conv/downsample_bn``. BatchNorm uses
momentum 0.9 for its running averages (torch's 0.1) and ε = 1e-5, convolutions have no bias.
Inputs are NHWC float images (any size ≥ 32 px); normalisation is the caller's business
(:mod:`bodyjax.regressor` applies the ImageNet mean and std).
"""
from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jnp.ndarray

#: depth -> (block kind, blocks per stage)
STAGES = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}
EXPANSION = {"basic": 1, "bottleneck": 4}

# He initialisation (fan-out, normal) as in the reference implementations.
_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def feature_dim(depth: int, width: int = 64) -> int:
    """Size of the pooled feature vector of ``ResNet(depth, width)``."""
    kind, _ = _stages(depth)
    return width * 8 * EXPANSION[kind]


def _stages(depth: int):
    if depth not in STAGES:
        raise ValueError(f"ResNet depth must be one of {sorted(STAGES)}, got {depth}")
    return STAGES[depth]


#: Convolutions whose output has at most this many pixels (H·W) run as shifted slices + one matmul.
#: XLA's CPU convolution is pathologically slow on tiny maps with many channels (the last stage of
#: a 64-px input is 2×2×512: 0.5 s per 3×3 convolution at batch 32 instead of ~5 ms as a matmul).
SMALL_MAP = 4


def _conv_matmul(x: Array, kernel: Array, stride: int, pad: int) -> Array:
    """``k×k`` convolution (symmetric zero padding ``pad``) as im2col + matmul, ``(B, H, W, C)``."""
    kh, kw, cin, cout = kernel.shape
    b, h, w, _ = x.shape
    ho, wo = (h + 2 * pad - kh) // stride + 1, (w + 2 * pad - kw) // stride + 1
    xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0))) if pad else x
    cols = [xp[:, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride, :]
            for i in range(kh) for j in range(kw)]
    patches = jnp.concatenate(cols, axis=-1) if len(cols) > 1 else cols[0]
    out = patches.reshape(b * ho * wo, kh * kw * cin) @ kernel.reshape(kh * kw * cin, cout)
    return out.reshape(b, ho, wo, cout)


class Conv(nn.Module):
    """Square convolution without bias, symmetric padding ``kernel_size // 2``, NHWC / HWIO.

    The parameter is ``kernel (k, k, C_in, C_out)`` like ``nn.Conv``'s; tiny output maps
    (``H·W <= SMALL_MAP``) use :func:`_conv_matmul` (same result, see :data:`SMALL_MAP`).
    """

    features: int
    kernel_size: int
    strides: int = 1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        k, s, p = self.kernel_size, self.strides, self.kernel_size // 2
        kernel = self.param("kernel", _conv_init, (k, k, x.shape[-1], self.features), jnp.float32)
        x, kernel = jnp.asarray(x, self.dtype), jnp.asarray(kernel, self.dtype)
        ho, wo = (x.shape[1] + 2 * p - k) // s + 1, (x.shape[2] + 2 * p - k) // s + 1
        if ho * wo <= SMALL_MAP:
            return _conv_matmul(x, kernel, s, p)
        return jax.lax.conv_general_dilated(x, kernel, (s, s), ((p, p), (p, p)),
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))


class _Block(nn.Module):
    """One residual block (basic: 3×3, 3×3; bottleneck: 1×1, 3×3 strided, 1×1 ×4)."""

    kind: str
    features: int
    strides: int
    downsample: bool
    zero_init_residual: bool
    dtype: Any

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        conv = functools.partial(Conv, dtype=self.dtype)
        norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9,
                                 epsilon=1e-5, dtype=self.dtype)
        last_scale = nn.initializers.zeros if self.zero_init_residual else nn.initializers.ones
        s = self.strides
        if self.kind == "basic":
            y = conv(self.features, 3, s, name="conv1")(x)
            y = nn.relu(norm(name="bn1")(y))
            y = conv(self.features, 3, name="conv2")(y)
            y = norm(name="bn2", scale_init=last_scale)(y)
            out_features = self.features
        else:
            y = conv(self.features, 1, name="conv1")(x)
            y = nn.relu(norm(name="bn1")(y))
            y = conv(self.features, 3, s, name="conv2")(y)
            y = nn.relu(norm(name="bn2")(y))
            out_features = self.features * EXPANSION["bottleneck"]
            y = conv(out_features, 1, name="conv3")(y)
            y = norm(name="bn3", scale_init=last_scale)(y)
        shortcut = x
        if self.downsample:
            shortcut = conv(out_features, 1, s, name="downsample_conv")(x)
            shortcut = norm(name="downsample_bn")(shortcut)
        return nn.relu(y + shortcut)


class ResNet(nn.Module):
    """ResNet backbone: images ``(B, H, W, 3)`` → pooled features ``(B, feature_dim(depth, width))``.

    Attributes:
      depth: 18, 34 (basic blocks), 50, 101 or 152 (bottleneck blocks).
      width: channels of the first stage (64 = the standard networks).
      zero_init_residual: initialise the last BatchNorm scale of every block to zero, so each block
        starts as the identity (helps training from scratch; overwritten by imported weights).
      dtype: computation dtype (parameters stay float32).
    """

    depth: int = 50
    width: int = 64
    zero_init_residual: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        """Args: ``x (B, H, W, 3)`` normalised images; ``train`` uses batch statistics.

        Returns:
          ``(B, C)`` globally average-pooled features of the last stage.
        """
        kind, blocks = _stages(self.depth)
        x = jnp.asarray(x, self.dtype)
        x = Conv(self.width, 7, 2, dtype=self.dtype, name="conv1")(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=self.dtype,
                         name="bn1")(x)
        x = nn.relu(x)
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        in_features = self.width
        for stage, n in enumerate(blocks):
            features = self.width * 2 ** stage
            out_features = features * EXPANSION[kind]
            for b in range(n):
                strides = 2 if (stage > 0 and b == 0) else 1
                x = _Block(kind, features, strides, downsample=(strides != 1 or in_features != out_features),
                           zero_init_residual=self.zero_init_residual, dtype=self.dtype,
                           name=f"layer{stage + 1}_{b}")(x, train)
                in_features = out_features
        return jnp.mean(x, axis=(1, 2)).astype(jnp.float32)
