"""The lifter's networks: the generator G (2D keypoints → depths) and the discriminator D.

Both are MLPs of exactly eight ``nn.Dense`` layers (appendix 2): an input layer, three residual
blocks of two Dense layers each (Martinez et al. style, without batch-norm/dropout so that the step
is a pure function of params and data), and an output layer, with leaky-ReLU activations. ``G``
sees the masked coordinates and the visibility mask; ``D`` sees the masked coordinates only (real
and fake share the same masks, so zeros carry the information).
"""
from __future__ import annotations

import functools

import flax.linen as nn
import jax.numpy as jnp

Array = jnp.ndarray


class _ResidualMLP(nn.Module):
    """``num_layers`` Dense layers: input, ``(num_layers - 2) / 2`` residual blocks, output."""

    hidden: int
    features: int
    num_layers: int = 8
    negative_slope: float = 0.2

    @nn.compact
    def __call__(self, x: Array) -> Array:
        if self.num_layers < 2 or self.num_layers % 2:
            raise ValueError(f"num_layers must be even and >= 2, got {self.num_layers}")
        act = functools.partial(nn.leaky_relu, negative_slope=self.negative_slope)
        h = act(nn.Dense(self.hidden)(x))
        for _ in range((self.num_layers - 2) // 2):
            r = act(nn.Dense(self.hidden)(h))
            r = nn.Dense(self.hidden)(r)
            h = act(h + r)
        return nn.Dense(self.features)(h)


class Generator(nn.Module):
    """G: normalised 2D keypoints ``(..., N, 2)`` + visibility ``(..., N)`` -> depths ``(..., N)``.

    Invisible keypoints are zeroed and the mask is concatenated to the input, so the network input
    is ``(..., 3N)``. The output is raw (not yet root-centred, see :func:`lift_normalized`).
    Eight Dense layers by default (see :class:`bodyjax.lifter.LifterConfig`).
    """

    hidden: int = 1024
    num_layers: int = 8
    negative_slope: float = 0.2

    @nn.compact
    def __call__(self, keypoints2d: Array, visibility: Array) -> Array:
        n = keypoints2d.shape[-2]
        vis = visibility.astype(keypoints2d.dtype)
        coords = (keypoints2d * vis[..., None]).reshape(keypoints2d.shape[:-2] + (2 * n,))
        x = jnp.concatenate([coords, vis], axis=-1)
        return _ResidualMLP(self.hidden, n, self.num_layers, self.negative_slope, name="mlp")(x)


class Discriminator(nn.Module):
    """D: normalised 2D keypoints ``(..., N, 2)`` (invisible ones zeroed) -> logit ``(...)``.

    Eight Dense layers by default (see :class:`bodyjax.lifter.LifterConfig`).
    """

    hidden: int = 1024
    num_layers: int = 8
    negative_slope: float = 0.2

    @nn.compact
    def __call__(self, keypoints2d: Array) -> Array:
        x = keypoints2d.reshape(keypoints2d.shape[:-2] + (2 * keypoints2d.shape[-2],))
        mlp = _ResidualMLP(self.hidden, 1, self.num_layers, self.negative_slope, name="mlp")
        return mlp(x)[..., 0]
