"""The body regressor (appendix section 4, eq. 13–14): a ResNet maps an image to θ = [a, S, R, s, t].

Network
-------
A :class:`bodyjax.resnet.ResNet` backbone (ResNet50 in the paper, ImageNet-pretrained weights via
:mod:`bodyjax.pretrained`; ResNet18/34 or narrower ones for CPU configurations) followed by one
``Dense`` head. With the paper's quaternion pose head the head has 132 outputs, laid out as

    ========================  =====  =====================================================
    slice                     size   meaning
    ========================  =====  =====================================================
    pose                      24×4   one quaternion (w, x, y, z) per joint; entry 0 (the root) is
                                     output only to keep the paper's count: the root orientation
                                     is R, so it is excluded from the loss and decoded as zero
    log segment scales        24     S = exp(u) (positive; u = 0 ⇔ S = 1)
    rotation                  9      R, row-major, made a rotation by Gram–Schmidt (columns)
    log weak-perspective s    1      s = exp(u) (positive), NORMALISED units
    translation               2      t, NORMALISED units
    ========================  =====  =====================================================

The alternative pose heads (``RegressorConfig.pose_head``) change only the pose slice:
``'rot6d'`` (SPIN; Zhou et al.) outputs 24×6 numbers made a rotation by Gram–Schmidt of two columns
(180 outputs), ``'matrix_svd'`` (Neural Body Fitting) 24×9 numbers projected to the closest
rotation by SVD (252 outputs). The global R is the paper's 9 numbers + Gram–Schmidt in every head.

Units
-----
The head works in the registration's NORMALISED image units (:mod:`bodyjax.registration`): with the
network input of size ``(H, W)``, ``centre = ((W − 1)/2, (H − 1)/2)`` and ``half = max(H, W)/2``,

    s_norm = s / half,     t_norm = (t − centre) / half,

so every output is O(1) (``s_norm ≈ 1`` for a person filling the frame; the dense points and
keypoints of the losses are normalised the same way). These units do not depend on the resolution,
so a prediction made on a 64-px input denormalises to the pixels of the full-size image.
:func:`params_to_pixels` / :func:`params_to_normalized` convert; :func:`predict` returns pixels.

Positivity: the segment scales and ``s`` are ``exp(clip(u, −5, 5))`` of the head's output ``u``
(exp rather than softplus: the log-scale is the natural, symmetric coordinate of a scale, and the
regression loss compares ``u`` with ``log θ_fit`` linearly).

Initialisation: the head's kernel is small (normal, std ``head_init_std``) and its bias is the rest
parameter vector: identity quaternions / rotations, ``u = 0`` (S = 1), ``R = I``,
``log(typical_scale)``, ``t = 0`` (:func:`rest_head`), so training starts at a sane body.

Loss (eq. 13)
-------------
``L = α L_regress + β L_dense + γ L_KP`` with ``α = γ = 1``, ``β = 10`` (5.1). ``L_regress``
(eq. 14, :func:`bodyjax.losses.l_regress`) is the smooth L1 between the network's parameters and the
targets θ_fit converted to a representation where differences are meaningful
(:func:`regression_vectors`):

* quaternion head: the raw 4 numbers of each joint against the unit quaternion of θ_fit's
  axis-angle, with the sign ambiguity ``q ≡ −q`` resolved per joint by comparing with whichever of
  ``±q_fit`` is closer to the prediction (the choice carries no gradient);
* ``rot6d`` / ``matrix_svd`` heads: the decoded rotation matrices (9 numbers per joint) against
  θ_fit's matrices, as SPIN and NBF do;
* the log segment scales and log ``s_norm`` against the logs of the targets, the raw 9 numbers of R
  against θ_fit's orthonormalised R (eq. 14 literally: at the optimum the raw matrix is a rotation),
  and ``t_norm`` against the target's.

``L_dense`` (eq. 8, :func:`bodyjax.losses.l_dense`, mean over the valid points) poses the predicted
body with :func:`bodyjax.body.forward_subset` on the sample's dense vertices; ``L_KP`` (eq. 9,
:func:`bodyjax.losses.l_keypoints`, 2D part) uses its keypoints. Batch reduction: means over the
batch (``L_regress`` weighted by the optional per-sample ``target_weight``, e.g. 0 for flagged
registrations), so the learning rate does not depend on the batch size.

Training
--------
:func:`create_state` builds a :class:`RegressorState` (a ``flax.training.train_state.TrainState``
with ``batch_stats`` and the static :class:`RegressorConfig`); :func:`train_step` and
:func:`eval_step` are pure jitted functions of the state and a batch; :func:`train_regressor` runs
epochs of host-side augmented batches (:mod:`bodyjax.augment`) with Adam (constant learning rate by
default, as the paper; ``lr_final_fraction`` cosine-decays it). Data parallelism: a 1-D device mesh
with axis ``'batch'`` (:func:`make_mesh`); the batch is sharded along it with a ``NamedSharding``,
the state and the template are replicated, and XLA inserts the gradient and BatchNorm all-reduces,
so the result equals the one-device result up to float round-off.
"""
from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Callable, Dict, Mapping, NamedTuple, Optional, Tuple

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from bodyjax import augment as augment_lib
from bodyjax import body, losses, registration
from bodyjax.resnet import ResNet
from bodyjax.rotations import (axis_angle_to_matrix, axis_angle_to_quaternion, gram_schmidt,
                               matrix_to_axis_angle, quaternion_to_axis_angle, standardize_quaternion)

Array = jnp.ndarray

NUM_JOINTS = body.NUM_JOINTS
POSE_HEADS = ("quaternion", "rot6d", "matrix_svd")
POSE_DIMS = {"quaternion": 4, "rot6d": 6, "matrix_svd": 9}
#: ImageNet channel statistics (RGB, [0, 1] units), the normalisation of pretrained ResNets.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_EPS = 1e-8


# ----------------------------------------------------------------------------------------------
# Configuration


@dataclasses.dataclass(frozen=True)
class RegressorConfig:
    """The network (static: part of the train state, one compilation per config).

    Attributes:
      depth: ResNet depth (18, 34: basic blocks; 50 (the paper), 101, 152: bottleneck).
      width: channels of the first ResNet stage (64 standard).
      image_size: side of the square network input, pixels (224 in the paper's setting).
      pose_head: ``'quaternion'`` (the paper, 132 outputs), ``'rot6d'`` (SPIN) or ``'matrix_svd'``
        (NBF).
      typical_scale: ``s_norm`` of the rest output (≈ 1: a 1.7 m person filling the frame).
      head_init_std: std of the head's initial kernel.
      log_clip: the head's log-scales are clipped to ``±log_clip`` before ``exp``.
      keypoint_set: keypoint definition of the data (``'coco17'`` or ``'joints24'``).
      zero_init_residual: see :class:`bodyjax.resnet.ResNet`.
      dtype: computation dtype of the backbone (``'float32'`` or ``'bfloat16'``).
    """

    depth: int = 50
    width: int = 64
    image_size: int = 224
    pose_head: str = "quaternion"
    typical_scale: float = 1.0
    head_init_std: float = 1e-3
    log_clip: float = 5.0
    keypoint_set: str = "coco17"
    zero_init_residual: bool = True
    dtype: str = "float32"

    def __post_init__(self):
        if self.pose_head not in POSE_HEADS:
            raise ValueError(f"pose_head must be one of {POSE_HEADS}, got {self.pose_head!r}")
        if self.keypoint_set not in body.KEYPOINT_SETS:
            raise ValueError(f"keypoint_set must be one of {body.KEYPOINT_SETS}, got {self.keypoint_set!r}")
        if self.typical_scale <= 0:
            raise ValueError(f"typical_scale must be positive, got {self.typical_scale}")


def cpu_config(**overrides) -> RegressorConfig:
    """The CPU-sized configuration used by the tools: ResNet18 at width 32, 64-px inputs."""
    return dataclasses.replace(RegressorConfig(depth=18, width=32, image_size=64), **overrides)


@dataclasses.dataclass(frozen=True)
class RegressorHParams:
    """Training hyper-parameters; defaults are the paper's (5.1 and eq. 13).

    Attributes:
      learning_rate: Adam learning rate (1e-4).
      num_epochs: epochs per deform-and-learn round (30).
      batch_size: images per step (30; a multiple of the device count when data parallel).
      alpha, beta, gamma: weights of L_regress, L_dense, L_KP in eq. (13) (1, 10, 1).
      smooth_l1_beta: threshold of the smooth L1 of eq. (14).
      dense_reduction: ``'mean'`` or ``'sum'`` over the correspondences (eq. 8).
      lr_final_fraction: :func:`train_regressor` cosine-decays the learning rate to this fraction
        of ``learning_rate`` over its steps (1.0 = constant, the paper's setting).
    """

    learning_rate: float = 1e-4
    num_epochs: int = 30
    batch_size: int = 30
    alpha: float = 1.0
    beta: float = 10.0
    gamma: float = 1.0
    smooth_l1_beta: float = 1.0
    dense_reduction: str = "mean"
    lr_final_fraction: float = 1.0


# ----------------------------------------------------------------------------------------------
# Units


def image_frame(image_size) -> Tuple[Array, float]:
    """``(centre (2,), half)`` of an ``(H, W)`` image: the registration's normalisation."""
    h, w = image_size
    return jnp.asarray([(w - 1) / 2.0, (h - 1) / 2.0], jnp.float32), max(h, w) / 2.0


def params_to_normalized(params: body.BodyParams, image_size) -> body.BodyParams:
    """Pixel-unit parameters of an ``(H, W)`` image → normalised units (``s/half``, ``(t − c)/half``)."""
    return registration.normalize_params(params, image_size)


def params_to_pixels(params: body.BodyParams, image_size) -> body.BodyParams:
    """Normalised parameters → pixel units of an ``(H, W)`` image (inverse of the above)."""
    return registration.denormalize_params(params, image_size)


def normalize_points(points: Array, image_size) -> Array:
    """Pixel points ``(..., 2)`` of an ``(H, W)`` image → normalised units."""
    centre, half = image_frame(image_size)
    return (points - centre) / half


# ----------------------------------------------------------------------------------------------
# Rotation decoders (robust: every input, degenerate ones included, gives an orthonormal matrix)


def _normalize_or(v: Array, fallback: Array) -> Array:
    """``v/|v|``, or ``fallback`` where ``|v|`` is (nearly) zero; finite gradients everywhere."""
    sq = jnp.sum(v * v, axis=-1, keepdims=True)
    ok = sq > _EPS ** 2
    return jnp.where(ok, v / jnp.sqrt(jnp.where(ok, sq, 1.0)), fallback)


def _perpendicular(b: Array) -> Array:
    """A unit vector perpendicular to the unit vector ``b (..., 3)`` (from its least-aligned axis)."""
    axis = jnp.argmin(jnp.abs(b), axis=-1)
    e = jax.nn.one_hot(axis, 3, dtype=b.dtype)
    r = e - jnp.sum(e * b, axis=-1, keepdims=True) * b
    return r / jnp.sqrt(jnp.maximum(jnp.sum(r * r, axis=-1, keepdims=True), _EPS))


def _two_columns(a1: Array, a2: Array) -> Tuple[Array, Array]:
    """Orthonormal ``b1 ∥ a1`` and ``b2`` in the plane of ``(a1, a2)``; valid frames for any input.

    The projection is applied twice (orthogonal to ``b1`` to round-off even for nearly parallel
    inputs) and ``a2`` counts as parallel to ``a1`` when less than 1e-5 of it is left.
    """
    e_x = jnp.zeros_like(a1).at[..., 0].set(1.0)
    b1 = _normalize_or(a1, e_x)
    dot = lambda a, b: jnp.sum(a * b, axis=-1, keepdims=True)  # noqa: E731
    r = a2 - dot(b1, a2) * b1
    r = r - dot(b1, r) * b1
    sq = dot(r, r)
    ok = sq > jnp.maximum(1e-10 * dot(a2, a2), 1e-30)
    b2 = jnp.where(ok, r / jnp.sqrt(jnp.where(ok, sq, 1.0)), _perpendicular(b1))
    return b1, b2


def rot6d_to_rotation(x: Array) -> Array:
    """6D ``[a1, a2]`` ``(..., 6)`` → rotation ``(..., 3, 3)`` with columns ``b1, b2, b1 × b2``.

    Equal to :func:`bodyjax.rotations.rot6d_to_matrix` for non-degenerate inputs; a zero ``a1`` or an
    ``a2 ∥ a1`` falls back to a valid frame, so the result is always a rotation (det +1).
    """
    b1, b2 = _two_columns(x[..., :3], x[..., 3:])
    return jnp.stack([b1, b2, jnp.cross(b1, b2)], axis=-1)


def gram_schmidt_rotation(m: Array) -> Array:
    """Gram–Schmidt of the columns of ``(..., 9)`` / ``(..., 3, 3)``, always orthonormal.

    Equal to :func:`bodyjax.rotations.gram_schmidt` (whose third column is ``±b1 × b2`` with the sign
    of ``det m``; det is NOT forced to +1) for non-degenerate inputs; degenerate columns fall back to
    a valid frame (det +1 where ``det m = 0``).
    """
    m = m.reshape(m.shape[:-1] + (3, 3)) if m.shape[-1] == 9 and m.shape[-2:] != (3, 3) else m
    b1, b2 = _two_columns(m[..., :, 0], m[..., :, 1])
    n = jnp.cross(b1, b2)
    sign = jnp.where(jnp.sum(m[..., :, 2] * n, axis=-1, keepdims=True) < 0, -1.0, 1.0).astype(m.dtype)
    return jnp.stack([b1, b2, sign * n], axis=-1)


def _svd_parts(m: Array):
    u, s, vt = jnp.linalg.svd(m, full_matrices=False)
    d = jnp.sign(jnp.linalg.det(u @ vt))
    d = jnp.where(d == 0, 1.0, d).astype(m.dtype)
    u = u.at[..., :, 2].multiply(d[..., None])
    s = s.at[..., 2].multiply(d)
    return u @ vt, u, s, vt


@jax.custom_jvp
def svd_rotation(m: Array) -> Array:
    """Closest rotation (Frobenius) to ``m (..., 3, 3)``: ``U diag(1, 1, det(U Vᵀ)) Vᵀ`` (det +1).

    The same value as :func:`bodyjax.rotations.svd_orthogonalize`, with the derivative of the polar
    factor written so that it stays finite when singular values coincide (e.g. at the identity, the
    head's initial output): with ``M = U' S' Vᵀ`` (``S'`` carrying the det sign) and
    ``X = U'ᵀ dM V``, ``dR = U' Ω Vᵀ``, ``Ω_ij = (X_ij − X_ji) / (s'_i + s'_j)``.
    """
    return _svd_parts(m)[0]


@svd_rotation.defjvp
def _svd_rotation_jvp(primals, tangents):
    (m,), (dm,) = primals, tangents
    r, u, s, vt = _svd_parts(m)
    x = jnp.swapaxes(u, -1, -2) @ dm @ jnp.swapaxes(vt, -1, -2)
    denom = s[..., :, None] + s[..., None, :]
    ok = jnp.abs(denom) > 1e-12
    omega = jnp.where(ok, (x - jnp.swapaxes(x, -1, -2)) / jnp.where(ok, denom, 1.0), 0.0)
    return r, u @ omega @ vt


# ----------------------------------------------------------------------------------------------
# Head layout


def head_size(pose_head: str = "quaternion") -> int:
    """Number of head outputs: ``24 · d + 24 + 9 + 1 + 2`` (132 for quaternions, d = 4)."""
    return NUM_JOINTS * POSE_DIMS[pose_head] + NUM_JOINTS + 12


class HeadOutput(NamedTuple):
    """The head's raw outputs split by meaning (shapes for a batch ``...``).

    Attributes:
      pose: ``(..., 24, d)`` (d = 4, 6 or 9 by pose head).
      log_segment_scales: ``(..., 24)``.
      rotation: ``(..., 9)`` raw R, row-major.
      log_scale: ``(...)`` log of ``s_norm``.
      translation: ``(..., 2)`` ``t_norm``.
    """

    pose: Array
    log_segment_scales: Array
    rotation: Array
    log_scale: Array
    translation: Array


def split_head(out: Array, pose_head: str = "quaternion") -> HeadOutput:
    """Splits ``(..., head_size(pose_head))`` into a :class:`HeadOutput`."""
    d = POSE_DIMS[pose_head]
    if out.shape[-1] != head_size(pose_head):
        raise ValueError(f"head output has {out.shape[-1]} numbers, expected {head_size(pose_head)} "
                         f"for pose_head={pose_head!r}")
    n = NUM_JOINTS * d
    return HeadOutput(
        pose=out[..., :n].reshape(out.shape[:-1] + (NUM_JOINTS, d)),
        log_segment_scales=out[..., n:n + NUM_JOINTS],
        rotation=out[..., n + NUM_JOINTS:n + NUM_JOINTS + 9],
        log_scale=out[..., n + NUM_JOINTS + 9],
        translation=out[..., n + NUM_JOINTS + 10:n + NUM_JOINTS + 12],
    )


def rest_head(pose_head: str = "quaternion", typical_scale: float = 1.0) -> np.ndarray:
    """``(head_size,)`` head output of the rest body: identity joints, S = 1, R = I, s = typical, t = 0."""
    ident = {"quaternion": [1.0, 0, 0, 0], "rot6d": [1.0, 0, 0, 0, 1, 0],
             "matrix_svd": list(np.eye(3).reshape(-1))}[pose_head]
    return np.concatenate([np.tile(np.asarray(ident, np.float32), NUM_JOINTS),
                           np.zeros(NUM_JOINTS, np.float32), np.eye(3, dtype=np.float32).reshape(-1),
                           np.asarray([np.log(typical_scale)], np.float32),
                           np.zeros(2, np.float32)]).astype(np.float32)


def pose_rotations(raw_pose: Array, pose_head: str) -> Array:
    """Joint rotation matrices ``(..., 24, 3, 3)`` of the raw pose slice ``(..., 24, d)``."""
    if pose_head == "quaternion":
        return axis_angle_to_matrix(quaternion_to_axis_angle(raw_pose))
    if pose_head == "rot6d":
        return rot6d_to_rotation(raw_pose)
    if pose_head == "matrix_svd":
        return svd_rotation(raw_pose.reshape(raw_pose.shape[:-1] + (3, 3)))
    raise ValueError(f"unknown pose_head {pose_head!r}")


def _pose_axis_angle(raw_pose: Array, pose_head: str) -> Array:
    if pose_head == "quaternion":
        aa = quaternion_to_axis_angle(raw_pose)   # normalises (zero -> identity) and takes w >= 0
    else:
        aa = matrix_to_axis_angle(pose_rotations(raw_pose, pose_head))
    return aa.at[..., 0, :].set(0.0)


def decode_head(out: Array, config: RegressorConfig = RegressorConfig()) -> body.BodyParams:
    """Head output ``(..., head_size)`` → NORMALISED :class:`~bodyjax.body.BodyParams` ``(...)``.

    Pose: axis-angles of the decoded joint rotations (root entry 0); segment scales
    ``exp(clip(u))``; rotation: :func:`gram_schmidt_rotation` of the 9 numbers (orthonormal);
    scale ``exp(clip(u))``; translation as is.
    """
    raw = split_head(out, config.pose_head)
    c = config.log_clip
    return body.BodyParams(
        pose=_pose_axis_angle(raw.pose, config.pose_head),
        segment_scales=jnp.exp(jnp.clip(raw.log_segment_scales, -c, c)),
        rotation=gram_schmidt_rotation(raw.rotation),
        scale=jnp.exp(jnp.clip(raw.log_scale, -c, c)),
        translation=raw.translation,
    )


def encode_head(params: body.BodyParams, pose_head: str = "quaternion") -> Array:
    """The head output ``(..., head_size)`` that decodes to NORMALISED ``params`` (inverse of decoding).

    Quaternions are standardised (``w >= 0``), 6D is the first two columns, the SVD head gets the
    matrix itself, the 9 numbers of R its Gram–Schmidt orthonormalisation.
    """
    mats = axis_angle_to_matrix(params.pose)
    pose = {"quaternion": lambda: standardize_quaternion(axis_angle_to_quaternion(params.pose)),
            "rot6d": lambda: jnp.concatenate([mats[..., :, 0], mats[..., :, 1]], axis=-1),
            "matrix_svd": lambda: mats.reshape(mats.shape[:-2] + (9,))}[pose_head]()
    batch = jnp.shape(params.scale)
    return jnp.concatenate([pose.reshape(batch + (-1,)), jnp.log(params.segment_scales),
                            gram_schmidt(params.rotation).reshape(batch + (9,)),
                            jnp.log(params.scale)[..., None], params.translation], axis=-1)


def regression_vectors(raw: HeadOutput, target: body.BodyParams, pose_head: str,
                       ) -> Tuple[Array, Array, Array]:
    """The vectors compared by eq. (14): ``(pred (..., P), target (..., P), mask (..., P))``.

    Args:
      raw: the head's :class:`HeadOutput`.
      target: NORMALISED target parameters ``(...)``.
      pose_head: the head's pose representation (see the module docstring for the comparison).

    Returns:
      Three ``(..., P)`` arrays; the mask is 0 on the root joint's pose entries.
    """
    d_pose = 9 if pose_head != "quaternion" else 4
    if pose_head == "quaternion":
        q_t = standardize_quaternion(axis_angle_to_quaternion(target.pose))
        flip = jnp.sum(jax.lax.stop_gradient(raw.pose) * q_t, axis=-1, keepdims=True) < 0
        pose_t = jnp.where(flip, -q_t, q_t)
        pose_p = raw.pose
    else:
        pose_p = pose_rotations(raw.pose, pose_head).reshape(raw.pose.shape[:-1] + (9,))
        pose_t = axis_angle_to_matrix(target.pose).reshape(pose_p.shape)
    batch = raw.log_scale.shape
    flat = lambda x: x.reshape(batch + (-1,))  # noqa: E731
    pred = jnp.concatenate([flat(pose_p), raw.log_segment_scales, raw.rotation,
                            raw.log_scale[..., None], raw.translation], axis=-1)
    tgt = jnp.concatenate([
        flat(pose_t), jnp.log(jnp.maximum(target.segment_scales, 1e-3)),
        flat(gram_schmidt(target.rotation)), jnp.log(jnp.maximum(target.scale, 1e-6))[..., None],
        target.translation], axis=-1)
    mask = jnp.ones(pred.shape[-1], pred.dtype).at[:d_pose].set(0.0)
    return pred, tgt, jnp.broadcast_to(mask, pred.shape)


# ----------------------------------------------------------------------------------------------
# Network and state


class Regressor(nn.Module):
    """ResNet backbone + linear head: normalised images ``(B, H, W, 3)`` → ``(B, head_size)``."""

    config: RegressorConfig = RegressorConfig()

    @nn.compact
    def __call__(self, images: Array, train: bool = False) -> Array:
        cfg = self.config
        feats = ResNet(depth=cfg.depth, width=cfg.width, zero_init_residual=cfg.zero_init_residual,
                       dtype=jnp.dtype(cfg.dtype), name="backbone")(images, train)
        bias = jnp.asarray(rest_head(cfg.pose_head, cfg.typical_scale))
        return nn.Dense(head_size(cfg.pose_head), kernel_init=nn.initializers.normal(cfg.head_init_std),
                        bias_init=lambda *_: bias, name="head")(feats)


class RegressorState(train_state.TrainState):
    """``TrainState`` (step, params, opt_state, static apply_fn/tx) + ``batch_stats`` and the config."""

    batch_stats: Any = None
    config: RegressorConfig = flax.struct.field(pytree_node=False, default=RegressorConfig())


def _init_key(rng) -> Array:
    """An 'rbg' PRNG key derived from ``rng`` (PRNG key or int seed).

    The initialisers draw with XLA's RngBitGenerator: on CPU the init graph of a ResNet then
    compiles in a couple of seconds instead of ~20 s with threefry (the values differ, the
    distributions are the same; deterministic given ``rng`` on a given backend).
    """
    if isinstance(rng, (int, np.integer)):
        return jax.random.key(int(rng), impl="rbg")
    data = jax.random.key_data(rng) if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key) else jnp.asarray(rng)
    data = jnp.ravel(data).astype(jnp.uint32)
    return jax.random.wrap_key_data(jnp.resize(data, (4,)), impl="rbg")


def create_state(rng, config: RegressorConfig = RegressorConfig(),
                 hparams: RegressorHParams = RegressorHParams()) -> RegressorState:
    """Initialises the network (at ``config.image_size``) and Adam(``hparams.learning_rate``).

    Args:
      rng: PRNG key or int seed (see :func:`_init_key`).
      config: the network.
      hparams: the optimiser's learning rate.
    """
    model = Regressor(config)
    x = jnp.zeros((1, config.image_size, config.image_size, 3), jnp.float32)
    variables = jax.jit(functools.partial(model.init, train=False))(_init_key(rng), x)
    state = RegressorState.create(apply_fn=model.apply, params=variables["params"],
                                  tx=optax.adam(hparams.learning_rate),
                                  batch_stats=variables["batch_stats"], config=config)
    return _canonical(state)


def _canonical(state: RegressorState) -> RegressorState:
    """``step`` as an int32 array (a Python int would be weakly typed and retrace the jitted step)."""
    return state.replace(step=jnp.asarray(state.step, jnp.int32))


def preprocess(images: Array) -> Array:
    """uint8 (or float 0–255) ``(..., H, W, 3)`` RGB → ImageNet-normalised float32."""
    x = jnp.asarray(images, jnp.float32) / 255.0
    return (x - jnp.asarray(IMAGENET_MEAN)) / jnp.asarray(IMAGENET_STD)


# ----------------------------------------------------------------------------------------------
# Loss and steps

BATCH_KEYS = ("image", "dense_xy", "dense_vertex", "dense_mask", "keypoints", "keypoint_visible",
              "target_pose", "target_segment_scales", "target_rotation", "target_scale",
              "target_translation", "target_weight")


def batch_targets(batch: Mapping[str, Array]) -> body.BodyParams:
    """The pixel-unit targets of a batch (``target_*`` keys) as :class:`~bodyjax.body.BodyParams`."""
    return body.BodyParams(pose=batch["target_pose"], segment_scales=batch["target_segment_scales"],
                           rotation=batch["target_rotation"], scale=batch["target_scale"],
                           translation=batch["target_translation"])


def loss_terms(out: Array, batch: Mapping[str, Array], template: body.BodyTemplate,
               config: RegressorConfig, hparams: RegressorHParams) -> Tuple[Array, Dict[str, Array]]:
    """Eq. (13) for a batch of head outputs.

    Args:
      out: ``(B, head_size)`` head outputs.
      batch: the keys of :data:`BATCH_KEYS` (pixels of the batch's ``(H, W)`` images; see
        :func:`make_batch`).
      template: the body (its keypoint set must match the batch's keypoints).
      config, hparams: network and loss settings.

    Returns:
      ``(loss, terms)``: the scalar loss and the batch means of ``l_regress``, ``l_dense``, ``l_kp``.
    """
    image_size = batch["image"].shape[-3:-1]
    raw = split_head(out, config.pose_head)
    pred = decode_head(out, config)
    target = params_to_normalized(batch_targets(batch), image_size)
    p, t, m = regression_vectors(raw, target, config.pose_head)
    l_reg = losses.l_regress(p, t, m, hparams.smooth_l1_beta)
    posed = body.forward_subset(template, pred, batch["dense_vertex"])
    l_dense = losses.l_dense(posed.vertices2d, normalize_points(batch["dense_xy"], image_size),
                             batch["dense_mask"], hparams.dense_reduction)
    l_kp = losses.l_keypoints(posed.keypoints2d, normalize_points(batch["keypoints"], image_size),
                              batch["keypoint_visible"])
    w = batch["target_weight"]
    reg = jnp.sum(w * l_reg) / jnp.maximum(jnp.sum(w), 1.0)
    loss = hparams.alpha * reg + hparams.beta * jnp.mean(l_dense) + hparams.gamma * jnp.mean(l_kp)
    return loss, {"l_regress": reg, "l_dense": jnp.mean(l_dense), "l_kp": jnp.mean(l_kp)}


def _train_step(state: RegressorState, batch, template, lr_scale, hparams):
    images = preprocess(batch["image"])

    def loss_fn(params):
        out, updates = state.apply_fn({"params": params, "batch_stats": state.batch_stats}, images,
                                      train=True, mutable=["batch_stats"])
        loss, terms = loss_terms(out, batch, template, state.config, hparams)
        return loss, (terms, updates["batch_stats"])

    (loss, (terms, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    # TrainState.apply_gradients, with the update scaled by the schedule's factor (Adam's step is
    # proportional to its learning rate, so this is Adam at learning_rate * lr_scale).
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
    updates = jax.tree_util.tree_map(lambda u: lr_scale * u, updates)
    state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                          opt_state=opt_state, batch_stats=batch_stats)
    metrics = dict(terms, loss=loss, grad_norm=optax.global_norm(grads))
    return state, metrics


def _eval_step(state: RegressorState, batch, template, hparams):
    out = state.apply_fn({"params": state.params, "batch_stats": state.batch_stats},
                         preprocess(batch["image"]), train=False)
    loss, terms = loss_terms(out, batch, template, state.config, hparams)
    return dict(terms, loss=loss)


def make_mesh(devices=None) -> Mesh:
    """A 1-D mesh with axis ``'batch'`` over ``devices`` (default: all of them)."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), ("batch",))


@functools.lru_cache(maxsize=None)
def _compiled(kind: str, mesh: Mesh, hparams: RegressorHParams):
    repl, data = NamedSharding(mesh, P()), NamedSharding(mesh, P("batch"))
    if kind == "train":
        return jax.jit(functools.partial(_train_step, hparams=hparams),
                       in_shardings=(repl, data, repl, repl), out_shardings=(repl, repl))
    return jax.jit(functools.partial(_eval_step, hparams=hparams),
                   in_shardings=(repl, data, repl), out_shardings=repl)


def _check_batch(batch, mesh):
    missing = [k for k in BATCH_KEYS if k not in batch]
    if missing:
        raise ValueError(f"batch is missing {missing}; build it with make_batch")
    b = np.shape(batch["image"])[0]
    if b % mesh.size:
        raise ValueError(f"batch size {b} is not a multiple of the {mesh.size} devices of the mesh")
    return {k: batch[k] for k in BATCH_KEYS}


def _replicate(mesh: Mesh, *trees):
    """``trees`` placed replicated on ``mesh`` (a no-op for arrays already placed so).

    Arrays produced by a step carry the mesh in their type; placing the first state the same way
    keeps every step on one compilation.
    """
    return jax.device_put(trees, NamedSharding(mesh, P()))


def _template_for(template, config):
    return body.default_template(config.keypoint_set) if template is None else template


def train_step(state: RegressorState, batch: Mapping[str, Array], template: Optional[body.BodyTemplate] = None,
               hparams: RegressorHParams = RegressorHParams(), mesh: Optional[Mesh] = None,
               lr_scale: float = 1.0) -> Tuple[RegressorState, Dict[str, Array]]:
    """One Adam step on eq. (13) (jitted; the batch sharded over ``mesh``, the state replicated).

    Args:
      state: :class:`RegressorState`.
      batch: :data:`BATCH_KEYS` with leading ``B`` (a multiple of the mesh size): ``image
        (B, H, W, 3)`` uint8, ``dense_xy (B, N, 2)``, ``dense_vertex (B, N)``, ``dense_mask (B, N)``,
        ``keypoints (B, K, 2)``, ``keypoint_visible (B, K)``, pixel-unit targets ``target_pose
        (B, 24, 3)``, ``target_segment_scales (B, 24)``, ``target_rotation (B, 3, 3)``,
        ``target_scale (B,)``, ``target_translation (B, 2)`` and ``target_weight (B,)``.
      template: the body (default: the packaged template with ``config.keypoint_set``).
      hparams: loss weights (static).
      mesh: device mesh (default: all devices).
      lr_scale: multiplies the optimiser's learning rate for this step (a schedule's factor).

    Returns:
      ``(state, metrics)`` with scalar ``loss, l_regress, l_dense, l_kp, grad_norm``; the new
      state has updated ``params``, ``opt_state``, ``batch_stats`` and ``step``.
    """
    mesh = make_mesh() if mesh is None else mesh
    batch = _check_batch(batch, mesh)
    state, template = _replicate(mesh, _canonical(state), _template_for(template, state.config))
    return _compiled("train", mesh, hparams)(state, batch, template, jnp.float32(lr_scale))


def eval_step(state: RegressorState, batch: Mapping[str, Array], template: Optional[body.BodyTemplate] = None,
              hparams: RegressorHParams = RegressorHParams(), mesh: Optional[Mesh] = None) -> Dict[str, Array]:
    """The loss terms of eq. (13) in inference mode (BatchNorm running averages), no update."""
    mesh = make_mesh() if mesh is None else mesh
    batch = _check_batch(batch, mesh)
    state, template = _replicate(mesh, _canonical(state), _template_for(template, state.config))
    return _compiled("eval", mesh, hparams)(state, batch, template)


# ----------------------------------------------------------------------------------------------
# Training loop


def make_batch(samples: Mapping[str, np.ndarray], targets: Mapping[str, np.ndarray],
               target_weight: Optional[np.ndarray] = None) -> dict:
    """A step's batch from stacked samples and a stacked pixel-unit target dict (``augment`` keys)."""
    batch = {k: np.asarray(samples[k]) for k in BATCH_KEYS[:6]}
    for k in augment_lib.TARGET_KEYS:
        batch["target_" + k] = np.asarray(targets[k], np.float32)
    b = batch["image"].shape[0]
    batch["target_weight"] = (np.ones(b, np.float32) if target_weight is None
                              else np.asarray(target_weight, np.float32))
    return batch


def _host_seed(rng) -> int:
    if isinstance(rng, (int, np.integer)):
        return int(rng)
    return int(jax.random.randint(rng, (), 0, 2 ** 31 - 1))


def _sample_fields(data: Mapping[str, np.ndarray]) -> dict:
    keys = list(BATCH_KEYS[:6]) + [k for k in data if k == "has_gt" or k.startswith("gt_")]
    return {k: np.asarray(data[k]) for k in keys}


def train_regressor(state: RegressorState, data: Mapping[str, np.ndarray], targets: body.BodyParams,
                    rng, num_epochs: Optional[int] = None, batch_size: Optional[int] = None, *,
                    template: Optional[body.BodyTemplate] = None,
                    hparams: RegressorHParams = RegressorHParams(),
                    augment: Optional[augment_lib.AugmentConfig] = augment_lib.AugmentConfig(),
                    target_weight: Optional[np.ndarray] = None, mesh: Optional[Mesh] = None,
                    progress: Optional[Callable[[int, Dict[str, float]], None]] = None,
                    ) -> Tuple[RegressorState, Dict[str, list]]:
    """Trains for ``num_epochs`` epochs of shuffled, augmented mini-batches.

    The learning rate is ``hparams.learning_rate``, cosine-decayed to ``lr_final_fraction`` of it
    over the ``num_epochs · (M // batch_size)`` steps of this call (constant by default). Each epoch
    draws a permutation from ``default_rng([seed, epoch])`` (``seed`` from ``rng``) and
    drops the last partial batch; batch ``i`` is augmented on the host with seed
    ``(seed, epoch, i)`` (:func:`bodyjax.augment.augment_batch`) into ``config.image_size`` inputs,
    so the run is deterministic given ``rng`` and every step has the same shapes (one compilation).

    Args:
      state: :class:`RegressorState`.
      data: stacked samples (NumPy, leading ``M``): ``image (M, H, W, 3)``, ``dense_xy``,
        ``dense_vertex``, ``dense_mask``, ``keypoints``, ``keypoint_visible`` (``has_gt``/``gt_*``
        are carried through the augmentation when present).
      targets: pixel-unit θ_fit :class:`~bodyjax.body.BodyParams` ``(M,)`` in the frame of ``data``'s
        images (the registration's output).
      rng: PRNG key or int seed.
      num_epochs, batch_size: ``None`` takes ``hparams``'; the batch size is clipped to ``M`` and
        rounded down to a multiple of the mesh size.
      template: the body (default: the packaged one with ``config.keypoint_set``).
      hparams: :class:`RegressorHParams`.
      augment: :class:`~bodyjax.augment.AugmentConfig`, or ``None`` for a plain resize.
      target_weight: optional ``(M,)`` weights of the regression term (0 = no target).
      mesh: device mesh for data parallelism (default: all devices).
      progress: optional ``progress(epoch, epoch_mean_metrics)`` after every epoch.

    Returns:
      ``(state, history)``; ``history[name]`` lists the per-epoch means of each metric of
      :func:`train_step`, and ``history['seconds']`` the wall time of each epoch.
    """
    config = state.config
    template = _template_for(template, config)
    mesh = make_mesh() if mesh is None else mesh
    num_epochs = hparams.num_epochs if num_epochs is None else int(num_epochs)
    batch_size = hparams.batch_size if batch_size is None else int(batch_size)
    samples = _sample_fields(data)
    tgt = augment_lib.target_from_params(targets)
    weight = (np.ones(len(samples["image"]), np.float32) if target_weight is None
              else np.asarray(target_weight, np.float32))
    m = len(samples["image"])
    bs = min(batch_size, m) // mesh.size * mesh.size
    if bs == 0:
        raise ValueError(f"need at least {mesh.size} samples (one per device), got {m}")
    steps = m // bs
    total = max(num_epochs * steps - 1, 1)
    f = hparams.lr_final_fraction
    seed = _host_seed(rng)
    state, template_d = _replicate(mesh, _canonical(state), template)
    step_fn = _compiled("train", mesh, hparams)
    history: Dict[str, list] = {}
    for epoch in range(num_epochs):
        t0 = time.perf_counter()
        perm = np.random.default_rng([seed, epoch]).permutation(m)
        epoch_metrics = []
        for i in range(steps):
            idx = perm[i * bs:(i + 1) * bs]
            smp, tg = augment_lib.augment_batch({k: v[idx] for k, v in samples.items()},
                                                {k: v[idx] for k, v in tgt.items()}, template,
                                                config.image_size, (seed, epoch, i), augment)
            lr_scale = f + (1.0 - f) * 0.5 * (1.0 + np.cos(np.pi * (epoch * steps + i) / total))
            state, metrics = step_fn(state, make_batch(smp, tg, weight[idx]), template_d,
                                     np.float32(lr_scale))
            epoch_metrics.append(metrics)
        means = jax.device_get(jax.tree_util.tree_map(lambda *xs: jnp.mean(jnp.stack(xs)), *epoch_metrics))
        means = {k: float(v) for k, v in means.items()}
        means["seconds"] = time.perf_counter() - t0
        for k, v in means.items():
            history.setdefault(k, []).append(v)
        if progress is not None:
            progress(epoch, means)
    return state, history


def evaluate(state: RegressorState, data: Mapping[str, np.ndarray], targets: body.BodyParams,
             batch_size: int = 64, *, template: Optional[body.BodyTemplate] = None,
             hparams: RegressorHParams = RegressorHParams()) -> Dict[str, float]:
    """Mean loss terms of eq. (13) over a data set (inference mode, images resized, no augmentation).

    The last partial batch is padded by repeating the first sample and the padding is excluded.
    """
    template = _template_for(template, state.config)
    samples = _sample_fields(data)
    tgt = augment_lib.target_from_params(targets)
    m = len(samples["image"])
    sums: Dict[str, float] = {}
    mesh = make_mesh(jax.devices()[:1])
    for lo in range(0, m, batch_size):
        idx = np.arange(lo, lo + batch_size) % m
        n = min(batch_size, m - lo)
        smp, tg = augment_lib.augment_batch({k: v[idx] for k, v in samples.items()},
                                            {k: v[idx] for k, v in tgt.items()}, template,
                                            state.config.image_size, 0, None)
        w = (np.arange(batch_size) < n).astype(np.float32)
        batch = make_batch(smp, tg, w)
        # Per-sample terms: evaluate the padded batch once per real sample count (weights mask l_reg;
        # l_dense / l_kp of the padding are removed by masking their points).
        batch["dense_mask"] = batch["dense_mask"] * w[:, None]
        batch["keypoint_visible"] = batch["keypoint_visible"] * w[:, None]
        metrics = jax.device_get(eval_step(state, batch, template, hparams, mesh))
        for k, v in metrics.items():
            scale = n if k == "l_regress" else batch_size   # l_dense, l_kp are means over the batch
            sums[k] = sums.get(k, 0.0) + float(v) * scale
    out = {k: v / m for k, v in sums.items()}
    out["loss"] = hparams.alpha * out["l_regress"] + hparams.beta * out["l_dense"] + hparams.gamma * out["l_kp"]
    return out


# ----------------------------------------------------------------------------------------------
# Inference


class Prediction(NamedTuple):
    """Output of :func:`predict` (``B`` images).

    Attributes:
      params: pixel-unit :class:`~bodyjax.body.BodyParams` ``(B,)`` in the frame of the given images
        (pose root entry 0, rotation orthonormal): the next registration round's initialisation.
      params_normalized: the same in normalised units.
      vertices: ``(B, V, 3)`` camera-frame vertices ``R X`` (metres); ``None`` if not requested.
      joints: ``(B, 24, 3)`` camera-frame joints (metres, pelvis at the origin).
      keypoints2d: ``(B, K, 2)`` projected keypoints, pixels of the given images.
    """

    params: body.BodyParams
    params_normalized: body.BodyParams
    vertices: Optional[Array]
    joints: Array
    keypoints2d: Array


@functools.partial(jax.jit, static_argnames=("with_vertices",))
def _predict_chunk(state: RegressorState, images: Array, template: body.BodyTemplate, with_vertices: bool):
    cfg = state.config
    h, w = images.shape[1:3]
    x = preprocess(images)
    if (h, w) != (cfg.image_size, cfg.image_size):
        x = jax.image.resize(x, (x.shape[0], cfg.image_size, cfg.image_size, 3), "linear", antialias=True)
    out = state.apply_fn({"params": state.params, "batch_stats": state.batch_stats}, x, train=False)
    pn = decode_head(out, cfg)
    pp = params_to_pixels(pn, (h, w))
    if with_vertices:
        posed = body.forward(template, pp)
        vertices = posed.vertices
    else:
        posed = body.forward_subset(template, pp, jnp.zeros((images.shape[0], 1), jnp.int32))
        vertices = None
    return pp, pn, vertices, posed.joints, posed.keypoints2d


def predict(state: RegressorState, images, template: Optional[body.BodyTemplate] = None,
            batch_size: int = 64, with_vertices: bool = True) -> Prediction:
    """Regresses the body of every image.

    Args:
      state: a trained :class:`RegressorState`.
      images: ``(B, H, W, 3)`` uint8 RGB, square (``H == W``); resized to ``config.image_size``
        when different (the normalised outputs do not depend on the resolution, and are returned in
        the pixels of ``images``).
      template: the body (default: the packaged one with ``config.keypoint_set``).
      batch_size: images per jitted call (the last chunk is padded, so one compilation).
      with_vertices: also return the full mesh (``(B, V, 3)``).

    Returns:
      :class:`Prediction`.
    """
    template = _template_for(template, state.config)
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[1] != images.shape[2]:
        raise ValueError(f"predict expects square images (B, S, S, 3), got {images.shape}")
    b = images.shape[0]
    bs = max(1, min(batch_size, b))
    chunks = []
    for lo in range(0, b, bs):
        idx = np.arange(lo, lo + bs) % b
        n = min(bs, b - lo)
        res = _predict_chunk(state, images[idx], template, with_vertices)
        chunks.append(jax.tree_util.tree_map(lambda x, n=n: x[:n], res))
    cat = lambda *xs: jnp.concatenate(xs, axis=0)  # noqa: E731
    pp, pn, vertices, joints, kp = (jax.tree_util.tree_map(cat, *[c[i] for c in chunks])
                                    if chunks[0][i] is not None else None for i in range(5))
    return Prediction(params=pp, params_normalized=pn, vertices=vertices, joints=joints, keypoints2d=kp)
