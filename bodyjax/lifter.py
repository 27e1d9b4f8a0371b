"""Multi-view cGAN lifter: 2D keypoints -> keypoint depths (appendix section 2, eq. 1-6, Fig. 2).

A generator ``G`` maps the 2D keypoints ``u`` of one person to the depth of every keypoint. The
lifted 3D pose ``(u_x, u_y, z)`` is rotated about the vertical axis by each angle ``phi`` of a fixed
list, projected orthographically and renormalised; a discriminator ``D`` tells these projections
(*fake*) from the data's 2D poses (*real*). Geometric losses (bone ratios, eq. 3; left/right
symmetry, eq. 4) and, from the second deform-and-learn round on, a joint loss to the registration's
3D joints (eq. 5) complete the generator loss (eq. 6).

Decisions (the paper leaves them open):

* **Normalisation.** 2D keypoints are root-centred (root of the keypoint set: the hip midpoint for
  ``coco17``, the pelvis for ``joints24``; see :func:`bodyjax.skeletons.root_point` for the
  visibility fall-backs) and divided by their RMS distance from the root over the visible keypoints,
  ``scale = sqrt(mean_i |u_i - root|^2)``. The RMS distance is used rather than the 2D trunk length
  because (a) it is defined for any visibility pattern, while the trunk needs all four shoulder/hip
  keypoints; (b) it never degenerates for a foreshortened torso (a person bending towards the
  camera has a tiny 2D trunk, which would blow the normalised pose up); (c) the rotated projections
  are renormalised the same way, so real and fake 2D poses have exactly the same scale statistic
  (RMS = 1) and ``D`` cannot use size to tell them apart. Depths are predicted in the same
  normalised units, relative to the root (the root's predicted depth is subtracted), so that
  ``depth_pixels = z * scale`` (:func:`predict_depths`).
* **Adversarial loss.** Eq. 1 as written (minimise ``log(1 - D(fake))``) saturates when ``D`` wins
  early; by default the generator minimises the non-saturating ``-log D(fake)`` instead, which has
  the same fixed point and much stronger early gradients. ``adversarial_loss='minimax'`` selects the
  literal eq. 1. ``D`` minimises the standard cross entropy ``-log D(real) - log(1 - D(fake))``
  (eq. 2 completed with its fake term), real = the batch's 2D poses, fake = each example rotated
  by each angle (the two terms are averaged separately, so real and fake carry equal weight).
* **Joint weight schedule.** ``mu`` decays GEOMETRICALLY from 100 to 1 over training
  (:func:`joint_weight_schedule`): the weight spans two orders of magnitude, and a geometric decay
  spends equal time per decade, whereas a linear one would keep ``mu >= 50`` for half the training.
* **Networks.** ``Generator`` and ``Discriminator`` are MLPs of exactly eight ``nn.Dense`` layers:
  an input layer, three residual blocks of two Dense layers each (Martinez et al. style, without
  batch-norm/dropout so that the step is a pure function of params and data), and an output layer,
  with leaky-ReLU activations. ``G`` sees the masked coordinates and the visibility mask; ``D`` sees
  the masked coordinates only (real and fake share the same masks, so zeros carry the information).
* **Loss reductions.** Eq. 3 and eq. 4 are sums over the (visible) bones/pairs of one skeleton,
  averaged over the batch. Eq. 5 is implemented as the per-sample MEAN over visible joints of
  ``|p_i - p̄_i|^2`` (the text calls it an MSE), averaged over the samples that have 3D targets.
  Only the depth component of eq. 5 carries gradient: the lifted ``x, y`` are the input's.

Known limitation (of the objective, not of this implementation): eq. 1-4 cannot tell a lifted pose
``P`` from its depth mirror ``M_z P`` (z -> -z). ``R_y(phi) M_z = M_z R_y(-phi)`` and the projection
drops z, so rotating ``M_z P`` by ``phi`` and projecting gives EXACTLY the projection of ``P`` rotated
by ``-phi``: every view the discriminator sees is a real view of the true pose, whatever the angle
set (it need not be symmetric under ``phi -> -phi``) and whatever anatomical cue (knee or elbow
direction) the views show; bone lengths are mirror invariant too. Without 3D targets (round 1) the
depth sign is therefore a coin flip per example (measured with ``tools/eval_lifter.py``: about half
the test poses come out mirrored, so the round-1 error is no better than flat depths while the error
up to sign is much lower); the joint loss of later rounds (eq. 5) resolves it. Anatomy breaks the
symmetry only in 3D: the knee-direction prior :func:`l_knee` and the face-direction prior
:func:`l_face` (triple products, which change sign under a mirror), weighted by
``LifterHParams.knee_weight`` and ``face_weight``, are optional extensions of eq. 6 (off by default,
as they are not in the paper) that make round 1 pick the right sign for most examples. Evaluate
round-1 depths up to sign (per-sample min over the sign) as well as directly.

Visibility caveat: ``D`` sees real and fake poses with the same masks, but the fakes are ROTATED
views while the masks belong to the original views. Where the mask depends on the view (a strict
occlusion flag hides the far limbs of a side view and the face of a back view), ``D`` can tell
fakes from the mask alone, whatever the depths, and the generator learns little. Feed the lifter
*labelled* keypoints (COCO ``v > 0``: occluded but annotated joints count), not occlusion flags.
Even then COCO annotators label the face only when it is seen, so ``D`` would still win on rotated
views of labelled faces (measured: ``D`` at 0.87 / 0.12 on real / fake instead of 0.6 / 0.4):
``discriminator_keypoints='body'`` shows ``D`` the body keypoints only (``G`` still sees the face).

Camera frame (project conventions): x right, y DOWN, z away from the camera. The vertical axis is
therefore y, and ``rotate_about_vertical`` uses ``R_y(phi) = [[c, 0, s], [0, 1, 0], [-s, 0, c]]``.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Dict, Mapping, Optional, Tuple, Union

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

from bodyjax import skeletons
from bodyjax.skeletons import KeypointSet

Array = jnp.ndarray
KeypointSetLike = Union[str, KeypointSet, None]

_SCALE_EPS = 1e-8  # added to the mean squared distance before the sqrt (input units squared)


@dataclasses.dataclass(frozen=True)
class LifterHParams:
    """Hyper-parameters of the lifter; defaults are the paper's (appendix 5.1 and eq. 6).

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
        if self.discriminator_keypoints not in ("all", "body"):
            raise ValueError(f"LifterHParams.discriminator_keypoints must be 'all' or 'body', got "
                             f"{self.discriminator_keypoints!r}")


# ---------------------------------------------------------------------------------------------
# Networks


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
    Eight Dense layers by default (see :class:`LifterHParams`).
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

    Eight Dense layers by default (see :class:`LifterHParams`).
    """

    hidden: int = 1024
    num_layers: int = 8
    negative_slope: float = 0.2

    @nn.compact
    def __call__(self, keypoints2d: Array) -> Array:
        x = keypoints2d.reshape(keypoints2d.shape[:-2] + (2 * keypoints2d.shape[-2],))
        mlp = _ResidualMLP(self.hidden, 1, self.num_layers, self.negative_slope, name="mlp")
        return mlp(x)[..., 0]


@flax.struct.dataclass
class LifterState:
    """The lifter's training state: one ``TrainState`` per network (a pytree)."""

    generator: train_state.TrainState
    discriminator: train_state.TrainState


@functools.lru_cache(maxsize=None)
def _modules_and_tx(hparams: LifterHParams):
    """One (Generator, Discriminator, optimiser) per hparams, so that states created separately
    have equal static fields (apply_fn, tx) and share the jitted step's compilation cache."""
    gen = Generator(hparams.hidden, hparams.num_layers, hparams.negative_slope)
    disc = Discriminator(hparams.hidden, hparams.num_layers, hparams.negative_slope)
    tx = optax.adam(hparams.learning_rate, b1=hparams.adam_b1, b2=hparams.adam_b2)
    return gen, disc, tx


@functools.partial(jax.jit, static_argnames=("num_keypoints", "hparams"))
def _init_params(rng, num_keypoints, hparams):
    gen, disc, _ = _modules_and_tx(hparams)
    g_rng, d_rng = jax.random.split(rng)
    kp = jnp.zeros((1, num_keypoints, 2), jnp.float32)
    vis = jnp.ones((1, num_keypoints), jnp.float32)
    return gen.init(g_rng, kp, vis)["params"], disc.init(d_rng, kp)["params"]


def create_lifter_state(rng: Array, num_keypoints: int,
                        hparams: LifterHParams = LifterHParams()) -> LifterState:
    """Initialises G and D and their Adam optimisers.

    Args:
      rng: PRNG key; the same key gives identical parameters.
      num_keypoints: N (17 for ``coco17``, 24 for ``joints24``).
      hparams: widths, depth and optimiser settings.
    Returns:
      :class:`LifterState` with ``TrainState``s whose ``apply_fn`` are ``Generator.apply`` and
      ``Discriminator.apply``.
    """
    gen, disc, tx = _modules_and_tx(hparams)
    g_params, d_params = _init_params(rng, int(num_keypoints), hparams)
    return LifterState(
        generator=train_state.TrainState.create(apply_fn=gen.apply, params=g_params, tx=tx),
        discriminator=train_state.TrainState.create(apply_fn=disc.apply, params=d_params, tx=tx))


# ---------------------------------------------------------------------------------------------
# Normalisation, lifting and multi-view projection


def _resolve(keypoint_set: KeypointSetLike, num_keypoints: int) -> KeypointSet:
    if keypoint_set is None:
        return skeletons.keypoint_set_for(num_keypoints)
    return skeletons.get_keypoint_set(keypoint_set)


# Keypoints labelled only when seen (the face), per keypoint set; see ``discriminator_mask``.
_VIEW_DEPENDENT = {"coco17": ("nose", "left_eye", "right_eye", "left_ear", "right_ear")}


def discriminator_mask(keypoint_set: KeypointSetLike, which: str = "body") -> Array:
    """``(N,)`` 1 for the keypoints the discriminator sees, 0 for the others.

    ``which='all'``: every keypoint. ``which='body'``: every keypoint except those whose labels
    depend on the view (the face of ``coco17``: nose, eyes, ears; ``joints24`` has none).
    """
    ks = skeletons.get_keypoint_set(keypoint_set)
    if which == "all":
        return jnp.ones((ks.num_keypoints,), jnp.float32)
    if which != "body":
        raise ValueError(f"which must be 'all' or 'body', got {which!r}")
    hidden = set(_VIEW_DEPENDENT.get(ks.name, ()))
    return jnp.asarray([0.0 if n in hidden else 1.0 for n in ks.names], jnp.float32)


def normalize_keypoints2d(keypoints2d: Array, visibility: Array,
                          keypoint_set: KeypointSetLike = None) -> Tuple[Array, Array, Array]:
    """Root-centres and scale-normalises 2D keypoints (the lifter's input frame).

    ``normalized = (u - root) / scale`` with ``root`` from :func:`bodyjax.skeletons.root_point`
    (visibility-weighted) and ``scale`` the RMS distance of the visible keypoints from the root, so
    the visible keypoints of ``normalized`` have RMS norm 1. Invisible keypoints are set to 0.

    Args:
      keypoints2d: ``(..., N, 2)`` (any units, e.g. pixels).
      visibility: ``(..., N)`` 1 visible / 0 invisible (float or bool).
      keypoint_set: name or :class:`KeypointSet`; ``None`` infers it from N.
    Returns:
      ``(normalized (..., N, 2), root (..., 2), scale (...))``.
    """
    ks = _resolve(keypoint_set, keypoints2d.shape[-2])
    vis = jnp.broadcast_to(jnp.asarray(visibility, keypoints2d.dtype), keypoints2d.shape[:-1])
    root = skeletons.root_point(keypoints2d, ks, vis)
    d = (keypoints2d - root[..., None, :]) * vis[..., None]
    count = jnp.maximum(jnp.sum(vis, axis=-1), 1.0)
    mean_sq = jnp.sum(jnp.sum(jnp.square(d), axis=-1), axis=-1) / count
    scale = jnp.sqrt(mean_sq + _SCALE_EPS)
    return d / scale[..., None, None], root, scale


def normalize_joints3d(joints3d: Array, keypoints2d: Array, visibility: Array,
                       keypoint_set: KeypointSetLike = None) -> Array:
    """Brings 3D joint targets (eq. 5) into the lifter's normalised frame.

    The targets are root-centred with their OWN 3D root (same visibility-weighted definition as the
    lifted pose, whose depth is root-relative) and divided by the 2D scale of ``keypoints2d`` (the
    generator's input), exactly the factor :func:`predict_depths` multiplies by. Hence a generator
    that matches the normalised targets makes :func:`predict_depths` return the targets'
    root-relative depths in pixels. Invisible joints are set to 0 (they are masked out of eq. 5).

    Args:
      joints3d: ``(..., N, 3)`` in the units of ``keypoints2d`` (pixels):
        ``(x_img, y_img, s*depth)``, e.g. :func:`weak_perspective_joints3d` of the
        registration's keypoints.
      keypoints2d: ``(..., N, 2)`` the 2D input the generator sees for the same example.
      visibility: ``(..., N)``.
      keypoint_set: name or :class:`KeypointSet`; ``None`` infers it from N.
    Returns:
      ``(..., N, 3)`` normalised targets.
    """
    ks = _resolve(keypoint_set, joints3d.shape[-2])
    vis = jnp.broadcast_to(jnp.asarray(visibility, joints3d.dtype), joints3d.shape[:-1])
    _, _, scale = normalize_keypoints2d(keypoints2d, vis, ks)
    root = skeletons.root_point(joints3d, ks, vis)
    return (joints3d - root[..., None, :]) * vis[..., None] / scale[..., None, None]


def weak_perspective_joints3d(points3d: Array, scale: Array, translation: Array) -> Array:
    """Camera-frame 3D points (metres) -> pixel-unit 3D joints ``(s x + t_x, s y + t_y, s z)``.

    Args:
      points3d: ``(..., N, 3)`` ``R X`` in the camera frame (e.g. ``BodyOutput.keypoints``).
      scale: ``(...)`` weak-perspective scale s (pixels per metre).
      translation: ``(..., 2)`` t (pixels).
    Returns:
      ``(..., N, 3)``: x, y equal the projected keypoints, z the depth used by the losses (eq. 9).
    """
    scale = jnp.asarray(scale, points3d.dtype)
    t = jnp.concatenate([translation, jnp.zeros_like(translation[..., :1])], axis=-1)
    return scale[..., None, None] * points3d + t[..., None, :]


def lift_normalized(depths: Array, normalized2d: Array, visibility: Array,
                    keypoint_set: KeypointSetLike = None) -> Array:
    """Concatenates normalised 2D keypoints with root-relative depths into a 3D pose.

    Args:
      depths: ``(..., N)`` raw generator output.
      normalized2d: ``(..., N, 2)`` the generator's input (root at the origin).
      visibility: ``(..., N)``.
      keypoint_set: name or :class:`KeypointSet`; ``None`` infers it from N.
    Returns:
      ``(..., N, 3)``: ``(x, y, z - z_root)``, invisible keypoints zeroed.
    """
    ks = _resolve(keypoint_set, depths.shape[-1])
    vis = jnp.asarray(visibility, depths.dtype)
    z_root = skeletons.root_point(depths[..., None], ks, vis)
    z = (depths - z_root) * vis
    return jnp.concatenate([normalized2d * vis[..., None], z[..., None]], axis=-1)


def rotate_about_vertical(points3d: Array, angle: Array) -> Array:
    """Rotates 3D points about the vertical (image y) axis through the origin.

    ``R_y(phi) = [[cos, 0, sin], [0, 1, 0], [-sin, 0, cos]]``: ``x' = cos x + sin z``, ``y' = y``,
    ``z' = -sin x + cos z``. ``phi = pi`` maps ``(x, y, z) -> (-x, y, -z)``.

    Args:
      points3d: ``(..., N, 3)``.
      angle: radians, shape broadcastable to ``(...)`` (the batch dims of ``points3d``).
    Returns:
      ``(..., N, 3)`` (batch dims broadcast against ``angle``).
    """
    angle = jnp.asarray(angle, points3d.dtype)
    c = jnp.cos(angle)[..., None]
    s = jnp.sin(angle)[..., None]
    x, y, z = points3d[..., 0], points3d[..., 1], points3d[..., 2]
    y = jnp.broadcast_to(y, jnp.broadcast_shapes(y.shape, c.shape))
    return jnp.stack([c * x + s * z, y, -s * x + c * z], axis=-1)


def project_views(points3d: Array, visibility: Array, angles: Array,
                  keypoint_set: KeypointSetLike = None) -> Array:
    """The ``f(u, G(u); phi)`` of eq. 1 for every angle: rotate, drop z, renormalise.

    Args:
      points3d: ``(..., N, 3)`` lifted poses in the normalised frame.
      visibility: ``(..., N)``; invisible keypoints are zeroed in the output.
      angles: radians, ``(A,)`` (same angles for every pose) or ``(..., A)`` (per pose).
      keypoint_set: name or :class:`KeypointSet`; ``None`` infers it from N.
    Returns:
      ``(..., A, N, 2)`` projections normalised like the input (:func:`normalize_keypoints2d`).
    """
    ks = _resolve(keypoint_set, points3d.shape[-2])
    rotated = rotate_about_vertical(points3d[..., None, :, :], angles)
    vis = jnp.broadcast_to(jnp.asarray(visibility, points3d.dtype)[..., None, :],
                           rotated.shape[:-1])
    return normalize_keypoints2d(rotated[..., :2], vis, ks)[0]


# ---------------------------------------------------------------------------------------------
# Losses


def l_ratio(points3d: Array, visibility: Array, mean_ratios: Array,
            keypoint_set: KeypointSetLike = None) -> Array:
    """Bone-ratio loss, eq. 3: ``sum_e (l_e / l_trunk - mean_ratio_e)^2`` per skeleton.

    Bones with an invisible end are skipped; a skeleton whose trunk keypoints are not all visible
    contributes 0. Scale invariant.

    Args:
      points3d: ``(..., N, 3)`` (any units).
      visibility: ``(..., N)``.
      mean_ratios: ``(E,)`` the average skeleton's ``l_e / l_trunk``, e.g.
        ``skeletons.bone_ratios(template_rest_keypoints, keypoint_set)``.
      keypoint_set: name or :class:`KeypointSet`; ``None`` infers it from N.
    Returns:
      ``(...)`` per-skeleton loss.
    """
    ks = _resolve(keypoint_set, points3d.shape[-2])
    vis = jnp.asarray(visibility, points3d.dtype)
    lengths = skeletons.bone_lengths(points3d, ks)
    trunk_ok = skeletons.trunk_visibility(vis, ks)
    trunk = jnp.where(trunk_ok > 0, skeletons.trunk_length(points3d, ks), 1.0)
    ratios = lengths / trunk[..., None]
    w = skeletons.bone_visibility(vis, ks) * trunk_ok[..., None]
    return jnp.sum(w * jnp.square(ratios - jnp.asarray(mean_ratios, points3d.dtype)), axis=-1)


def l_sym(points3d: Array, visibility: Array, keypoint_set: KeypointSetLike = None) -> Array:
    """Bone-symmetry loss, eq. 4: ``sum_{(i,j)} (l_i - l_j)^2`` over left/right bone pairs.

    Lengths in the units of ``points3d`` (the lifter's normalised units). Pairs with an invisible
    bone are skipped.

    Args:
      points3d: ``(..., N, 3)``.
      visibility: ``(..., N)``.
      keypoint_set: name or :class:`KeypointSet`; ``None`` infers it from N.
    Returns:
      ``(...)`` per-skeleton loss.
    """
    ks = _resolve(keypoint_set, points3d.shape[-2])
    vis = jnp.asarray(visibility, points3d.dtype)
    lengths = skeletons.bone_lengths(points3d, ks)
    bvis = skeletons.bone_visibility(vis, ks)
    left = jnp.asarray([i for i, _ in ks.symmetric_bones])
    right = jnp.asarray([j for _, j in ks.symmetric_bones])
    w = bvis[..., left] * bvis[..., right]
    return jnp.sum(w * jnp.square(lengths[..., left] - lengths[..., right]), axis=-1)


# (hip, knee, ankle) of the left and the right leg, by keypoint name, per keypoint set.
_KNEE_NAMES = {
    "coco17": (("left_hip", "left_knee", "left_ankle"), ("right_hip", "right_knee", "right_ankle")),
    "joints24": (("L_hip", "L_knee", "L_ankle"), ("R_hip", "R_knee", "R_ankle")),
}


def knee_direction(points3d: Array, keypoint_set: KeypointSetLike = None) -> Array:
    """Signed, scale-free knee bend ``((k - h) x (a - k)) . (h_L - h_R) / (|k - h| |a - k| |h_L - h_R|)``.

    ``h, k, a`` are one leg's hip, knee and ankle and ``h_L - h_R`` the hip line (towards the body's
    left). A knee bends the shin backwards about an axis close to the hip line, so the value is
    ``sin(bend) * cos(axis, hip line)`` and POSITIVE for a real bent knee in any orientation (it is
    a triple product, invariant under rotations), ~0 for a straight leg. A mirror image (e.g. the
    depth flip ``z -> -z``) negates it.

    Args:
      points3d: ``(..., N, 3)``.
      keypoint_set: name or :class:`KeypointSet`; ``None`` infers it from N.
    Returns:
      ``(..., 2)`` for the (left, right) knee.
    """
    ks = _resolve(keypoint_set, points3d.shape[-2])
    idx = [[ks.names.index(n) for n in leg] for leg in _KNEE_NAMES[ks.name]]
    hip, knee, ankle = (jnp.asarray([leg[i] for leg in idx]) for i in range(3))
    thigh = points3d[..., knee, :] - points3d[..., hip, :]
    shin = points3d[..., ankle, :] - points3d[..., knee, :]
    axis = points3d[..., idx[0][0], :] - points3d[..., idx[1][0], :]
    triple = jnp.sum(jnp.cross(thigh, shin) * axis[..., None, :], axis=-1)
    norms = (skeletons.safe_norm(thigh) * skeletons.safe_norm(shin)
             * skeletons.safe_norm(axis)[..., None])
    return triple / norms


def l_knee(points3d: Array, visibility: Array, keypoint_set: KeypointSetLike = None) -> Array:
    """Knee-direction prior (not in the paper): ``sum_knees relu(-knee_direction)``.

    Penalises knees bent forwards (:func:`knee_direction` < 0). Unlike eq. 1-4 it is NOT invariant
    under the depth mirror ``z -> -z``, so it can break the depth-sign ambiguity of round 1 (see the
    module docstring). A knee counts when its hip, knee, ankle and both hips are visible.

    Args:
      points3d: ``(..., N, 3)``.
      visibility: ``(..., N)``.
      keypoint_set: name or :class:`KeypointSet`; ``None`` infers it from N.
    Returns:
      ``(...)`` per-skeleton loss.
    """
    ks = _resolve(keypoint_set, points3d.shape[-2])
    vis = jnp.asarray(visibility, points3d.dtype)
    idx = jnp.asarray([[ks.names.index(n) for n in leg] for leg in _KNEE_NAMES[ks.name]])
    w = jnp.prod(vis[..., idx], axis=-1) * vis[..., idx[0, 0], None] * vis[..., idx[1, 0], None]
    return jnp.sum(w * jax.nn.relu(-knee_direction(points3d, ks)), axis=-1)


# (nose, left ear, right ear, left hip, right hip, left shoulder, right shoulder), per keypoint set.
_FACE_NAMES = {
    "coco17": ("nose", "left_ear", "right_ear", "left_hip", "right_hip", "left_shoulder", "right_shoulder"),
}


def has_face(keypoint_set: KeypointSetLike) -> bool:
    """Whether :func:`face_direction` is defined for ``keypoint_set`` (it needs a nose and ears)."""
    return skeletons.get_keypoint_set(keypoint_set).name in _FACE_NAMES


def face_direction(points3d: Array, keypoint_set: KeypointSetLike = None) -> Array:
    """Signed, scale-free facing ``cos(nose - ear, forward)`` for the left and the right ear.

    ``forward = (h_L - h_R) x (s_mid - h_mid)`` is the trunk's front (hip line crossed with the
    hips-to-shoulders direction; in the camera frame, x right, y down, a person facing the camera
    has ``forward`` along ``-z``). The nose lies in front of the ears for any head turn the neck
    allows (|yaw| < 90 degrees from the trunk), so the value is POSITIVE for a real pose in any
    orientation. ``forward`` is a cross product (a pseudo-vector), so a mirror image (e.g. the depth
    flip ``z -> -z``) negates the value, like :func:`knee_direction`.

    Args:
      points3d: ``(..., N, 3)``.
      keypoint_set: name or :class:`KeypointSet` with a nose and ears (``coco17``); ``None`` infers
        it from N.
    Returns:
      ``(..., 2)`` for the (left, right) ear.
    Raises:
      ValueError: if the keypoint set has no face keypoints (e.g. ``joints24``).
    """
    ks = _resolve(keypoint_set, points3d.shape[-2])
    if ks.name not in _FACE_NAMES:
        raise ValueError(f"face_direction needs a nose and ears; keypoint set {ks.name!r} has none")
    nose, ear_l, ear_r, hip_l, hip_r, sh_l, sh_r = (ks.names.index(n) for n in _FACE_NAMES[ks.name])
    p = points3d
    up = 0.5 * (p[..., sh_l, :] + p[..., sh_r, :]) - 0.5 * (p[..., hip_l, :] + p[..., hip_r, :])
    hip_line = p[..., hip_l, :] - p[..., hip_r, :]
    # Cross product of unit vectors: its norm does not shrink with the squared body size.
    forward = jnp.cross(hip_line / skeletons.safe_norm(hip_line)[..., None],
                        up / skeletons.safe_norm(up)[..., None])
    face = p[..., nose, None, :] - p[..., jnp.asarray([ear_l, ear_r]), :]
    cos = jnp.sum(face * forward[..., None, :], axis=-1)
    return cos / (skeletons.safe_norm(face) * skeletons.safe_norm(forward)[..., None])


def l_face(points3d: Array, visibility: Array, keypoint_set: KeypointSetLike = None) -> Array:
    """Face-direction prior (not in the paper): ``sum_ears relu(-face_direction)``.

    Penalises a nose behind the ears relative to the trunk's front (:func:`face_direction` < 0).
    Like :func:`l_knee` it changes sign under the depth mirror and so breaks the depth-sign ambiguity
    of eq. 1-4; it complements the knee prior where the legs are straight (knee direction ~0) and
    the face is labelled (people facing the camera). An ear counts when it, the nose, both hips and
    both shoulders are visible. Keypoint sets without face keypoints give 0.

    Args:
      points3d: ``(..., N, 3)``.
      visibility: ``(..., N)``.
      keypoint_set: name or :class:`KeypointSet`; ``None`` infers it from N.
    Returns:
      ``(...)`` per-skeleton loss.
    """
    ks = _resolve(keypoint_set, points3d.shape[-2])
    if ks.name not in _FACE_NAMES:
        return jnp.zeros(points3d.shape[:-2], points3d.dtype)
    idx = [ks.names.index(n) for n in _FACE_NAMES[ks.name]]
    vis = jnp.asarray(visibility, points3d.dtype)
    trunk = vis[..., idx[0]] * jnp.prod(vis[..., jnp.asarray(idx[3:])], axis=-1)
    w = trunk[..., None] * vis[..., jnp.asarray(idx[1:3])]
    return jnp.sum(w * jax.nn.relu(-face_direction(points3d, ks)), axis=-1)


def l_joint(points3d: Array, targets3d: Array, visibility: Array) -> Array:
    """Joint loss, eq. 5, as an MSE: mean over visible joints of ``|p_i - p̄_i|^2`` per skeleton.

    Args:
      points3d: ``(..., N, 3)`` lifted joints (normalised frame).
      targets3d: ``(..., N, 3)`` targets in the same frame (:func:`normalize_joints3d`).
      visibility: ``(..., N)``.
    Returns:
      ``(...)`` per-skeleton loss (0 when no joint is visible).
    """
    vis = jnp.asarray(visibility, points3d.dtype)
    sq = jnp.sum(jnp.square(points3d - targets3d), axis=-1)
    return jnp.sum(vis * sq, axis=-1) / jnp.maximum(jnp.sum(vis, axis=-1), 1.0)


def generator_adversarial_loss(fake_logits: Array, form: str = "non_saturating") -> Array:
    """Eq. 1 for G, averaged over all fake logits ``(...)`` -> scalar.

    ``'non_saturating'``: ``-log D(fake)``; ``'minimax'``: ``log(1 - D(fake))`` (eq. 1 as written).
    """
    if form == "non_saturating":
        return jnp.mean(jax.nn.softplus(-fake_logits))
    if form == "minimax":
        return jnp.mean(-jax.nn.softplus(fake_logits))
    raise ValueError(f"unknown adversarial loss form {form!r}")


def discriminator_loss(real_logits: Array, fake_logits: Array) -> Array:
    """Eq. 2 completed: ``mean(-log D(real)) + mean(-log(1 - D(fake)))`` -> scalar."""
    return jnp.mean(jax.nn.softplus(-real_logits)) + jnp.mean(jax.nn.softplus(fake_logits))


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


def _step(state: LifterState, batch: Mapping[str, Array], rng: Array, mu: Array,
          mean_ratios: Array, ks: KeypointSet, hp: LifterHParams):
    kp = jnp.asarray(batch["keypoints2d"], jnp.float32)
    vis = jnp.asarray(batch["visibility"], jnp.float32)
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

    has_joints = "joints3d" in batch
    if has_joints:
        targets = normalize_joints3d(jnp.asarray(batch["joints3d"], jnp.float32), kp, vis, ks)
        jmask = batch.get("joints3d_mask")
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
    return LifterState(generator=gen, discriminator=disc), metrics


@functools.partial(jax.jit, static_argnames=("keypoint_set", "hparams"))
def _jit_step(state, batch, rng, mu, mean_ratios, keypoint_set, hparams):
    return _step(state, batch, rng, mu, mean_ratios, keypoint_set, hparams)


def train_step(state: LifterState, batch: Mapping[str, Array], rng: Array, mu: Union[float, Array],
               *, mean_ratios: Array, keypoint_set: KeypointSetLike = None,
               hparams: LifterHParams = LifterHParams()) -> Tuple[LifterState, Dict[str, Array]]:
    """One jitted, pure update of D (eq. 2) then G (eq. 6).

    Args:
      state: :class:`LifterState`.
      batch: dict with ``keypoints2d (B, N, 2)`` (pixels), ``visibility (B, N)``, and optionally
        ``joints3d (B, N, 3)`` (pixel units, see :func:`normalize_joints3d`) with
        ``joints3d_mask (B,)`` (1 where the example has a 3D target; default all ones).
      rng: PRNG key (drives the optional angle jitter).
      mu: weight of the joint loss (eq. 6); ignored without ``joints3d``.
      mean_ratios: ``(E,)`` average skeleton bone/trunk ratios (eq. 3).
      keypoint_set: name or :class:`KeypointSet`; ``None`` infers it from N.
      hparams: :class:`LifterHParams` (static: epsilon, angles, loss form).
    Returns:
      ``(new_state, metrics)`` with scalar metrics ``loss_g, loss_d, adv_g, ratio, sym, knee, face, joint,
      mu, d_real, d_fake`` (the last two: mean D probability on real / fake).
    """
    ks = _resolve(keypoint_set, batch["keypoints2d"].shape[-2])
    return _jit_step(state, dict(batch), rng, jnp.asarray(mu, jnp.float32),
                     jnp.asarray(mean_ratios, jnp.float32), ks, hparams)


def train_lifter(state: LifterState, keypoints2d: Array, visibility: Array, rng: Array,
                 num_epochs: Optional[int] = None, batch_size: Optional[int] = None, *,
                 mean_ratios: Array,
                 keypoint_set: KeypointSetLike = None, hparams: LifterHParams = LifterHParams(),
                 joints3d: Optional[Array] = None, joints3d_mask: Optional[Array] = None,
                 mu: Optional[float] = None,
                 progress: Optional[Callable[[int, Dict[str, float]], None]] = None,
                 ) -> Tuple[LifterState, Dict[str, list]]:
    """Trains the lifter for ``num_epochs`` epochs of shuffled mini-batches.

    Each epoch uses a permutation drawn from ``fold_in(rng, epoch)`` and drops the last partial
    batch (``batch_size`` is clipped to the data size), so every step has the same shapes and the
    jitted step (shared with :func:`train_step`) compiles once. Deterministic given ``rng``.

    Args:
      state: :class:`LifterState`.
      keypoints2d: ``(M, N, 2)`` 2D keypoints (pixels).
      visibility: ``(M, N)``.
      rng: PRNG key.
      num_epochs, batch_size: training length; ``None`` takes ``hparams.num_epochs`` /
        ``hparams.batch_size``.
      mean_ratios: ``(E,)`` average skeleton ratios (eq. 3).
      keypoint_set: name or :class:`KeypointSet`; ``None`` infers it from N.
      hparams: :class:`LifterHParams`.
      joints3d: optional ``(M, N, 3)`` registration targets (pixel units) for eq. 5 (round >= 2).
      joints3d_mask: optional ``(M,)`` 1 where ``joints3d`` is valid.
      mu: constant joint weight; ``None`` uses :func:`joint_weight_schedule` with
        ``hparams.mu_start -> hparams.mu_end`` over all steps. Ignored without ``joints3d``.
      progress: optional ``progress(epoch, epoch_mean_metrics)`` called after every epoch.
    Returns:
      ``(state, history)``; ``history[name]`` is the list of per-epoch means of each metric of
      :func:`train_step`.
    """
    num_epochs = hparams.num_epochs if num_epochs is None else int(num_epochs)
    batch_size = hparams.batch_size if batch_size is None else int(batch_size)
    keypoints2d = jnp.asarray(keypoints2d, jnp.float32)
    ks = _resolve(keypoint_set, keypoints2d.shape[-2])
    m = keypoints2d.shape[0]
    data = dict(keypoints2d=keypoints2d, visibility=jnp.asarray(visibility, jnp.float32))
    if joints3d is not None:
        data["joints3d"] = jnp.asarray(joints3d, jnp.float32)
        data["joints3d_mask"] = (jnp.ones((m,), jnp.float32) if joints3d_mask is None
                                 else jnp.asarray(joints3d_mask, jnp.float32))
    bs = max(1, min(int(batch_size), m))
    steps_per_epoch = m // bs
    total_steps = num_epochs * steps_per_epoch
    mean_ratios = jnp.asarray(mean_ratios, jnp.float32)
    shuffle_rng, step_rng = jax.random.split(rng)
    history: Dict[str, list] = {}
    step = 0
    for epoch in range(num_epochs):
        perm = jax.random.permutation(jax.random.fold_in(shuffle_rng, epoch), m)
        perm = perm[: steps_per_epoch * bs].reshape(steps_per_epoch, bs)
        epoch_metrics = []
        for i in range(steps_per_epoch):
            if joints3d is None:
                mu_t = 0.0
            elif mu is not None:
                mu_t = mu
            else:
                mu_t = joint_weight_schedule(step, total_steps, hparams.mu_start, hparams.mu_end,
                                             hparams.mu_schedule)
            batch = {k: v[perm[i]] for k, v in data.items()}
            state, metrics = _jit_step(state, batch, jax.random.fold_in(step_rng, step),
                                       jnp.asarray(mu_t, jnp.float32), mean_ratios, ks, hparams)
            epoch_metrics.append(metrics)
            step += 1
        if epoch_metrics:
            means = jax.device_get(jax.tree_util.tree_map(
                lambda *xs: jnp.mean(jnp.stack(xs)), *epoch_metrics))
            means = {k: float(v) for k, v in means.items()}
            for k, v in means.items():
                history.setdefault(k, []).append(v)
            if progress is not None:
                progress(epoch, means)
    return state, history


# ---------------------------------------------------------------------------------------------
# Inference


@functools.partial(jax.jit, static_argnames=("keypoint_set",))
def _jit_depths(state, keypoints2d, visibility, keypoint_set):
    vis = jnp.asarray(visibility, jnp.float32)
    u, root, scale = normalize_keypoints2d(keypoints2d, vis, keypoint_set)
    p3 = _generator_3d(state.generator.apply_fn, state.generator.params, u, vis, keypoint_set)
    return p3[..., 2] * scale[..., None], root


def predict_depths(state: LifterState, keypoints2d: Array, visibility: Array,
                   keypoint_set: KeypointSetLike = None) -> Array:
    """Root-relative keypoint depths in the input's units: ``z^GAN`` of eq. 9.

    ``depth = z * scale`` with ``z`` the generator's root-relative normalised depth and ``scale``
    the 2D normalisation scale (:func:`normalize_keypoints2d`), so scaling the input by ``k``
    scales the depths by ``k`` and translating it leaves them unchanged. Depth grows away from the
    camera. Invisible keypoints get depth 0 (mask them downstream).

    Args:
      state: :class:`LifterState`.
      keypoints2d: ``(..., N, 2)`` (pixels).
      visibility: ``(..., N)``.
      keypoint_set: name or :class:`KeypointSet`; ``None`` infers it from N.
    Returns:
      ``(..., N)`` float32.
    """
    keypoints2d = jnp.asarray(keypoints2d, jnp.float32)
    ks = _resolve(keypoint_set, keypoints2d.shape[-2])
    return _jit_depths(state, keypoints2d, visibility, ks)[0]


def lift(state: LifterState, keypoints2d: Array, visibility: Array,
         keypoint_set: KeypointSetLike = None) -> Array:
    """Lifts 2D keypoints to root-centred 3D joints in the input's units.

    Args:
      state: :class:`LifterState`.
      keypoints2d: ``(..., N, 2)`` (pixels).
      visibility: ``(..., N)``.
      keypoint_set: name or :class:`KeypointSet`; ``None`` infers it from N.
    Returns:
      ``(..., N, 3)``: ``x, y`` = input minus the 2D root, ``z`` = :func:`predict_depths`; invisible
      keypoints are 0.
    """
    keypoints2d = jnp.asarray(keypoints2d, jnp.float32)
    ks = _resolve(keypoint_set, keypoints2d.shape[-2])
    vis = jnp.asarray(visibility, jnp.float32)
    depths, root = _jit_depths(state, keypoints2d, vis, ks)
    xy = (keypoints2d - root[..., None, :]) * vis[..., None]
    return jnp.concatenate([xy, depths[..., None]], axis=-1)
