""":mod:`bodyjax.rotations` on the host in float64, for the NumPy samplers of the data set.

The draws of the data set are made in float64 and stored as float32, so that a sample does not
depend on float32 round-off inside the sampler. These are the JAX functions of
:mod:`bodyjax.rotations`, jitted once, run with 64-bit types switched on for the call only on
fixed-size chunks of rows (:func:`bodyjax.data.chunking.map_chunks`: one compilation whatever the
batch), on NumPy inputs; they return float64 NumPy arrays. A call costs about 0.1 ms of dispatch per
chunk, so callers batch: one call per block of people, not one per joint.
"""
from __future__ import annotations

from typing import Callable

import jax
import numpy as np

from bodyjax import rotations
from bodyjax.data.chunking import map_chunks

#: Rows (rotations or products) per compiled call.
_ROWS = 256


def _float64(fn: Callable, core_ndim: int) -> Callable:
    """``fn`` of ``(..., *core)`` arrays on the host in float64; ``core`` has ``core_ndim`` axes."""
    jitted = jax.jit(fn)

    def run(x) -> np.ndarray:
        x = np.asarray(x, np.float64)
        lead = x.shape[:x.ndim - core_ndim]
        rows = x.reshape((-1,) + x.shape[x.ndim - core_ndim:])
        with jax.enable_x64(True):
            out = map_chunks(jitted, rows, _ROWS)
        return out.reshape(lead + out.shape[1:])

    return run


def _compose(factors):
    q = rotations.axis_angle_to_quaternion(factors)
    product = q[..., 0, :]
    for f in range(1, factors.shape[-2]):
        product = rotations.quaternion_multiply(product, q[..., f, :])
    return rotations.quaternion_to_axis_angle(product)


#: ``compose(factors (..., F, 3)) -> (..., 3)``: the axis-angle (angle in [0, π]) of the product
#: ``R_1 R_2 ... R_F`` of the axis-angle factors (radians), through unit quaternions.
compose = _float64(_compose, 2)
#: ``axis_angle_to_matrix(aa (..., 3)) -> (..., 3, 3)`` (:func:`bodyjax.rotations.axis_angle_to_matrix`).
axis_angle_to_matrix = _float64(rotations.axis_angle_to_matrix, 1)
#: ``gram_schmidt(m (..., 3, 3)) -> (..., 3, 3)`` (:func:`bodyjax.rotations.gram_schmidt`, the
#: orthonormalisation :func:`bodyjax.body.forward` applies to the rotation).
gram_schmidt = _float64(rotations.gram_schmidt, 2)
