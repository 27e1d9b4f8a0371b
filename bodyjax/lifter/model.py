"""The lifter's configuration, state, jitted training step and predictions (appendix section 2).

:func:`create_state` builds a :class:`LifterState` (one ``TrainState`` per network, the average
skeleton's bone ratios of eq. 3, the static config and keypoint set); :func:`train_step` is one pure
jitted update of D (eq. 2) then G (eq. 6) on a :class:`~bodyjax.batch.Batch`; the epoch loop lives
in the orchestration layer (:mod:`bodyjax.loop.epochs`).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Dict, Tuple

import flax
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

from bodyjax import checks, skeletons
from bodyjax.batch import Batch
from bodyjax.lifter.networks import Discriminator, Generator
from bodyjax.lifter.views import (discriminator_mask, lift_normalized, normalize_joints3d,
                                  normalize_keypoints2d, project_views)
from bodyjax.losses import (discriminator_loss, generator_adversarial_loss, l_face, l_joint, l_knee,
                            l_ratio, l_sym)

Array = jnp.ndarray


@dataclasses.dataclass(frozen=True)
class LifterConfig:
    """The lifter: networks, eq. 6 weights and training (defaults: the paper's, appendix 5.1).

    Attributes:
      hidden: width of the hidden Dense layers (paper-size default; callers pick e.g. 64 on CPU).
      num_layers: number of Dense layers per network, ``2 + 2 * residual_blocks`` (8 in the paper).
      epsilon: weight of the adversarial term in eq. 6.
      mu_start, mu_end: the joint weight ``mu`` of eq. 6 decays from ``mu_start`` to ``mu_end``.
      mu_schedule: ``'geometric'`` (default) or ``'linear'``, see :func:`joint_weight_schedule`.
      angles_deg: the view angles ``phi`` of eq. 1 (degrees, about the vertical axis).
      learning_rate, adam_b1, adam_b2: Adam for both networks (b1, b2: framework defaults).
      batch_size, num_epochs: training length (paper: 1024, 50 per round).
      adversarial_loss: ``'non_saturating'`` (``-log D(fake)``) or ``'minimax'`` (eq. 1 literally).
      negative_slope: leaky-ReLU slope.
      angle_jitter_deg: optional uniform jitter (+-) added per example to every view angle, drawn
        from the step's rng; 0 (default) uses exactly ``angles_deg``. ``angles_deg=(180.0,)`` with
        ``angle_jitter_deg=180.0`` gives one uniformly random angle per example.
      ratio_weight, sym_weight: weights of eq. 3 and eq. 4 in eq. 6 (1 in the paper; 0 ablates).
      knee_weight: weight of the knee-direction prior :func:`l_knee` added to eq. 6 (NOT in the
        paper, hence 0 by default; see the module docstring, "Known limitation").
      face_weight: weight of the face-direction prior :func:`l_face` added to eq. 6 (NOT in the
        paper, 0 by default; only keypoint sets with a nose and ears, i.e. ``coco17``).
      discriminator_keypoints: which keypoints ``D`` sees (real and fake alike): ``'all'``, or
        ``'body'`` = all but the face keypoints (:func:`discriminator_mask`). Annotators label the
        face only when it is seen, so a rotated view of a labelled face is told apart by the mask
        alone (see the module docstring, "Visibility caveat"); ``G`` sees every keypoint either way.
    """

    hidden: int = 1024
    num_layers: int = 8
    epsilon: float = 0.1
    mu_start: float = 100.0
    mu_end: float = 1.0
    mu_schedule: str = "geometric"
    angles_deg: Tuple[float, ...] = (45.0, 60.0, 90.0, 135.0, 180.0, 235.0, 270.0)
    learning_rate: float = 2e-4
    adam_b1: float = 0.9
    adam_b2: float = 0.999
    batch_size: int = 1024
    num_epochs: int = 50
    adversarial_loss: str = "non_saturating"
    negative_slope: float = 0.2
    angle_jitter_deg: float = 0.0
    ratio_weight: float = 1.0
    sym_weight: float = 1.0
    knee_weight: float = 0.0
    face_weight: float = 0.0
    discriminator_keypoints: str = "all"

    def __post_init__(self):
        checks.check_choice("LifterConfig.discriminator_keypoints", self.discriminator_keypoints, ("all", "body"))
        checks.check_choice("LifterConfig.adversarial_loss", self.adversarial_loss, ("non_saturating", "minimax"))
        checks.check_choice("LifterConfig.mu_schedule", self.mu_schedule, ("geometric", "linear"))
        if self.num_layers < 2 or self.num_layers % 2:
            raise ValueError(f"LifterConfig.num_layers must be even and >= 2, got {self.num_layers}")




@flax.struct.dataclass
class LifterState:
    """The lifter's training state (a pytree).

    Attributes:
      generator, discriminator: one ``TrainState`` per network.
      mean_ratios: ``(E,)`` bone-length ratios of the average skeleton (eq. 3).
      config: the static :class:`LifterConfig`.
      keypoint_set: the static keypoint set name (``'coco17'`` or ``'joints24'``).
    """

    generator: train_state.TrainState
    discriminator: train_state.TrainState
    mean_ratios: Array
    config: LifterConfig = flax.struct.field(pytree_node=False, default=LifterConfig())
    keypoint_set: str = flax.struct.field(pytree_node=False, default="coco17")


@functools.lru_cache(maxsize=None)
def _modules_and_tx(config: LifterConfig):
    """One (Generator, Discriminator, optimiser) per config, so that states created separately
    have equal static fields (apply_fn, tx) and share the jitted step's compilation cache."""
    gen = Generator(config.hidden, config.num_layers, config.negative_slope)
    disc = Discriminator(config.hidden, config.num_layers, config.negative_slope)
    tx = optax.adam(config.learning_rate, b1=config.adam_b1, b2=config.adam_b2)
    return gen, disc, tx


@functools.partial(jax.jit, static_argnames=("num_keypoints", "config"))
def _init_params(rng, num_keypoints, config):
    gen, disc, _ = _modules_and_tx(config)
    g_rng, d_rng = jax.random.split(rng)
    kp = jnp.zeros((1, num_keypoints, 2), jnp.float32)
    vis = jnp.ones((1, num_keypoints), jnp.float32)
    return gen.init(g_rng, kp, vis)["params"], disc.init(d_rng, kp)["params"]


def create_state(rng: Array, keypoint_set: str, mean_ratios: Array,
                 config: LifterConfig = LifterConfig()) -> LifterState:
    """Initialises G and D and their Adam optimisers.

    Args:
      rng: PRNG key; the same key gives identical parameters.
      keypoint_set: ``'coco17'`` or ``'joints24'`` (N = 17 or 24 keypoints).
      mean_ratios: ``(E,)`` the average skeleton's bone ratios (eq. 3), e.g.
        ``skeletons.bone_ratios(rest_keypoints, keypoint_set)``.
      config: :class:`LifterConfig`.
    Returns:
      :class:`LifterState` whose ``TrainState``s have ``apply_fn`` ``Generator.apply`` and
      ``Discriminator.apply``.
    """
    ks = skeletons.get_keypoint_set(keypoint_set)
    mean_ratios = jnp.asarray(mean_ratios, jnp.float32)
    if mean_ratios.shape != (len(ks.bones),):
        raise ValueError(f"lifter.create_state: mean_ratios has shape {mean_ratios.shape}, expected "
                         f"({len(ks.bones)},) for the {ks.name} bones")
    gen, disc, tx = _modules_and_tx(config)
    g_params, d_params = _init_params(rng, ks.num_keypoints, config)
    # ``step`` as an int32 array: a Python int would be weakly typed (a retrace after the first
    # step) and would not restore into a checkpoint's abstract structure.
    step0 = jnp.asarray(0, jnp.int32)
    return LifterState(
        generator=train_state.TrainState.create(apply_fn=gen.apply, params=g_params, tx=tx).replace(step=step0),
        discriminator=train_state.TrainState.create(apply_fn=disc.apply, params=d_params, tx=tx).replace(step=step0),
        mean_ratios=mean_ratios, config=config, keypoint_set=ks.name)


def joint_weight_schedule(step: Array, total_steps: int, start: float = 100.0, end: float = 1.0,
                          kind: str = "geometric") -> Array:
    """The weight ``mu`` of eq. 6 at ``step`` (0-based), decaying from ``start`` to ``end``.

    ``t = clip(step / (total_steps - 1), 0, 1)``; ``'geometric'``: ``start * (end / start) ** t``
    (default; equal time per decade), ``'linear'``: ``start + (end - start) * t``. jit friendly.

    Returns:
      scalar float32 (shape of ``step``).
    """
    t = jnp.clip(jnp.asarray(step, jnp.float32) / max(int(total_steps) - 1, 1), 0.0, 1.0)
    if kind == "geometric":
        return start * (end / start) ** t
    if kind == "linear":
        return start + (end - start) * t
    raise ValueError(f"unknown schedule kind {kind!r}")


# ---------------------------------------------------------------------------------------------
# Training


def _generator_3d(apply_fn, params, normalized2d, vis, ks):
    depths = apply_fn({"params": params}, normalized2d, vis)
    return lift_normalized(depths, normalized2d, vis, ks)


@jax.jit
def _step(state: LifterState, batch: Batch, rng: Array, mu: Array):
    hp, ks = state.config, skeletons.get_keypoint_set(state.keypoint_set)
    mean_ratios = state.mean_ratios
    kp = jnp.asarray(batch.keypoints, jnp.float32)
    vis = jnp.asarray(batch.keypoint_visible, jnp.float32)
    u, _, _ = normalize_keypoints2d(kp, vis, ks)
    # D's keypoints: real and fake are normalised over the same (D-visible) keypoints.
    vis_d = vis * discriminator_mask(ks, hp.discriminator_keypoints)
    u_d = u if hp.discriminator_keypoints == "all" else normalize_keypoints2d(kp, vis_d, ks)[0]
    angles = jnp.deg2rad(jnp.asarray(hp.angles_deg, jnp.float32))
    if hp.angle_jitter_deg > 0:
        jitter = jax.random.uniform(rng, kp.shape[:-2] + angles.shape, jnp.float32,
                                    -hp.angle_jitter_deg, hp.angle_jitter_deg)
        angles = angles + jnp.deg2rad(jitter)
    g_apply = state.generator.apply_fn
    d_apply = state.discriminator.apply_fn

    # Discriminator update (eq. 2) against the current generator's projections.
    p3 = _generator_3d(g_apply, state.generator.params, u, vis, ks)
    fake = jax.lax.stop_gradient(project_views(p3, vis_d, angles, ks))

    def d_loss_fn(d_params):
        real_logits = d_apply({"params": d_params}, u_d)
        fake_logits = d_apply({"params": d_params}, fake)
        return discriminator_loss(real_logits, fake_logits), (real_logits, fake_logits)

    (loss_d, (real_logits, fake_logits)), d_grads = jax.value_and_grad(
        d_loss_fn, has_aux=True)(state.discriminator.params)
    disc = state.discriminator.apply_gradients(grads=d_grads)

    has_joints = batch.target_keypoints3d is not None
    if has_joints:
        targets = normalize_joints3d(jnp.asarray(batch.target_keypoints3d, jnp.float32), kp, vis, ks)
        jmask = batch.target_keypoints3d_mask
        jmask = (jnp.ones(kp.shape[:-2], jnp.float32) if jmask is None
                 else jnp.asarray(jmask, jnp.float32))

    # Generator update (eq. 6) against the updated discriminator.
    def g_loss_fn(g_params):
        p3 = _generator_3d(g_apply, g_params, u, vis, ks)
        logits = d_apply({"params": disc.params}, project_views(p3, vis_d, angles, ks))
        adv = generator_adversarial_loss(logits, hp.adversarial_loss)
        ratio = jnp.mean(l_ratio(p3, vis, mean_ratios, ks))
        sym = jnp.mean(l_sym(p3, vis, ks))
        if has_joints:
            joint = jnp.sum(jmask * l_joint(p3, targets, vis)) / jnp.maximum(jnp.sum(jmask), 1.0)
        else:
            joint = jnp.zeros((), jnp.float32)
        knee = jnp.mean(l_knee(p3, vis, ks))
        face = jnp.mean(l_face(p3, vis, ks))
        total = (hp.epsilon * adv + hp.ratio_weight * ratio + hp.sym_weight * sym
                 + hp.knee_weight * knee + hp.face_weight * face + mu * joint)
        return total, dict(adv_g=adv, ratio=ratio, sym=sym, knee=knee, face=face, joint=joint)

    (loss_g, parts), g_grads = jax.value_and_grad(g_loss_fn, has_aux=True)(state.generator.params)
    gen = state.generator.apply_gradients(grads=g_grads)
    metrics = dict(loss_g=loss_g, loss_d=loss_d, mu=jnp.asarray(mu, jnp.float32),
                   d_real=jnp.mean(jax.nn.sigmoid(real_logits)),
                   d_fake=jnp.mean(jax.nn.sigmoid(fake_logits)), **parts)
    return state.replace(generator=gen, discriminator=disc), metrics


#: The fields of a :class:`~bodyjax.batch.Batch` the lifter reads.
_FIELDS = ("dense_xy", "dense_vertex", "dense_mask", "keypoints", "keypoint_visible",
           "target_keypoints3d", "target_keypoints3d_mask")


def train_step(state: LifterState, batch: Batch, rng: Array, mu=0.0) -> Tuple[LifterState, Dict[str, Array]]:
    """One jitted, pure update of D (eq. 2) then G (eq. 6).

    Args:
      state: :class:`LifterState`.
      batch: a :class:`~bodyjax.batch.Batch`; reads ``keypoints (B, N, 2)`` (pixels),
        ``keypoint_visible (B, N)`` (the keypoints the lifter sees) and, from the second round on,
        ``target_keypoints3d (B, N, 3)`` (pixel units ``(x, y, s·z)`` of the fits, eq. 5) with
        ``target_keypoints3d_mask (B,)``. The dense fields are not used (any shape).
      rng: PRNG key (drives the optional angle jitter).
      mu: weight of the joint loss (eq. 6); ignored without targets.
    Returns:
      ``(new_state, metrics)`` with scalar metrics ``loss_g, loss_d, adv_g, ratio, sym, knee, face,
      joint, mu, d_real, d_fake`` (the last two: mean D probability on real / fake).
    """
    if not isinstance(batch, Batch):
        raise ValueError(f"lifter.train_step: batch must be a bodyjax.batch.Batch, got {type(batch).__name__}")
    ks = skeletons.get_keypoint_set(state.keypoint_set)
    batch.check("lifter.train_step", num_keypoints=ks.num_keypoints)
    batch = Batch(**{f: getattr(batch, f) for f in _FIELDS})
    return _step(state, batch, rng, jnp.asarray(mu, jnp.float32))


# ---------------------------------------------------------------------------------------------
# Inference


@jax.jit
def _jit_depths(state, keypoints2d, visibility):
    ks = skeletons.get_keypoint_set(state.keypoint_set)
    vis = jnp.asarray(visibility, jnp.float32)
    u, root, rms = normalize_keypoints2d(keypoints2d, vis, ks)
    p3 = _generator_3d(state.generator.apply_fn, state.generator.params, u, vis, ks)
    return p3[..., 2] * rms[..., None], root


def _check_inputs(where: str, state, keypoints2d, visibility):
    ks = skeletons.get_keypoint_set(state.keypoint_set)
    s = checks.Shapes(where, K=ks.num_keypoints)
    s.check("keypoints2d", keypoints2d, ("...", "K", 2), "float")
    s.check("visibility", visibility, ("...", "K"))
    return jnp.asarray(keypoints2d, jnp.float32), jnp.asarray(visibility, jnp.float32)


def predict_depths(state: LifterState, keypoints2d: Array, visibility: Array) -> Array:
    """Root-relative keypoint depths in the input's units: ``z^GAN`` of eq. 9.

    ``depth = z * rms`` with ``z`` the generator's root-relative normalised depth and ``rms``
    the 2D normalisation (:func:`bodyjax.lifter.views.normalize_keypoints2d`), so scaling the input by ``k``
    scales the depths by ``k`` and translating it leaves them unchanged. Depth grows away from the
    camera. Invisible keypoints get depth 0 (mask them downstream).

    Args:
      state: :class:`LifterState`.
      keypoints2d: ``(..., N, 2)`` (pixels).
      visibility: ``(..., N)``.
    Returns:
      ``(..., N)`` float32.
    Raises:
      ValueError: the keypoints do not match the state's keypoint set.
    """
    keypoints2d, visibility = _check_inputs("predict_depths", state, keypoints2d, visibility)
    return _jit_depths(state, keypoints2d, visibility)[0]


def lift(state: LifterState, keypoints2d: Array, visibility: Array) -> Array:
    """Lifts 2D keypoints to root-centred 3D joints in the input's units.

    Args:
      state: :class:`LifterState`.
      keypoints2d: ``(..., N, 2)`` (pixels).
      visibility: ``(..., N)``.
    Returns:
      ``(..., N, 3)``: ``x, y`` = input minus the 2D root, ``z`` = :func:`predict_depths`; invisible
      keypoints are 0.
    """
    keypoints2d, vis = _check_inputs("lift", state, keypoints2d, visibility)
    return _jit_lift(state, keypoints2d, vis)


@jax.jit
def _jit_lift(state, keypoints2d, vis):
    depths, root = _jit_depths(state, keypoints2d, vis)
    xy = (keypoints2d - root[..., None, :]) * vis[..., None]
    return jnp.concatenate([xy, depths[..., None]], axis=-1)
