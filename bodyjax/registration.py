"""Image–surface deformable registration (appendix section 3, eq. 7–12) as one jitted optax loop.

``register`` fits θ = [a, S, R, s, t] to a whole batch of images at once. The per-sample
objective

    L = ω_dense L_dense + ω_KP L_KP + ω_scale L_scale + ω_joint L_angle + ω_det L_det     (eq. 7)

is vmapped over the batch, the steps run inside one ``lax.fori_loop`` with Adam (lr 0.1), and every step
skins only the vertices matched to image points plus the joints and keypoints, so the cost does not
grow with the mesh size. Adam is elementwise, so optimising the stacked parameters of the batch is
the same as optimising each sample on its own.

Coordinates: the optimisation runs in normalised image units, ``(pixel − centre) / (max(H, W) / 2)``,
where the paper's weights balance (its crops are normalised the same way); the weak-perspective
scale and translation are converted on the way in and out, so callers see pixels.

Compilation: the weights, the learning rate and the number of steps enter the compiled program as
values, so round 1's stiff fit, its relaxation and the later rounds (different weights and step
counts, the same shapes) share one program; only ``dense_reduction`` and ``use_depth`` change it.

Divergence: a sample whose loss or gradient becomes non-finite, or whose loss grows above
``divergence_factor`` times its initial loss, is frozen at the best parameters it reached and
flagged; the other samples of the batch are unaffected. Correspondences with non-finite values or
out-of-range vertex indices are dropped before the fit and counted in the report.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Optional

import flax.struct
import jax
import jax.numpy as jnp
import optax

from bodyjax import body, camera, checks, losses, skeletons
from bodyjax.batch import Batch

Array = jnp.ndarray


@dataclasses.dataclass(frozen=True)
class RegistrationConfig:
    """Weights and schedule of one registration round (defaults: the paper's later rounds, 5.1).

    Attributes:
      num_steps: forward–backward passes (300 in round 1, 100 afterwards).
      learning_rate: Adam learning rate (0.1).
      lr_final_fraction: cosine-decay the learning rate to this fraction of ``learning_rate`` over
        the round (1.0 = constant, the paper's setting). Adam at a constant 0.1 keeps oscillating
        around the optimum; decaying it lets a round settle.
      w_dense, w_kp, w_scale, w_angle, w_det: ω of eq. (7) (1000, 1, 10, 0.001, 1); ``w_angle`` is
        the paper's ω_joint, the weight of the joint-angle term (eq. 11).
      dense_reduction: ``'mean'`` ("mean squared error", the text of eq. 8) or ``'sum'``.
      use_depth: include the cGAN depth term of eq. (9) when depths are given.
      w_depth: weight of that depth term relative to the 2D keypoint terms (1.0 = eq. 9 as written;
        EXTENSION otherwise).
      divergence_factor: a loss above this multiple of the initial loss counts as divergence.
      max_residual_px: a fit whose mean dense reprojection error exceeds this is flagged.
    """

    num_steps: int = 100
    learning_rate: float = 0.1
    w_dense: float = 1000.0
    w_kp: float = 1.0
    w_scale: float = 10.0
    w_angle: float = 0.001
    w_det: float = 1.0
    dense_reduction: str = "mean"
    use_depth: bool = True
    w_depth: float = 1.0
    lr_final_fraction: float = 1.0
    divergence_factor: float = 1e4
    max_residual_px: float = 10.0

    def __post_init__(self):
        checks.check_choice("RegistrationConfig.dense_reduction", self.dense_reduction, ("mean", "sum"))
        if int(self.num_steps) < 0:
            raise ValueError(f"RegistrationConfig.num_steps must be >= 0, got {self.num_steps}")
        if not float(self.w_depth) >= 0.0:
            raise ValueError(f"RegistrationConfig.w_depth must be >= 0, got {self.w_depth}")


#: Fields of :class:`RegistrationConfig` that change the compiled program; the others are values.
_STATIC_FIELDS = ("dense_reduction", "use_depth")


def _split(config: RegistrationConfig) -> tuple[tuple, dict]:
    """``(static, values)``: the hashable structure and the traced numbers of a config."""
    static = tuple(getattr(config, f) for f in _STATIC_FIELDS)
    values = {f.name: jnp.asarray(getattr(config, f.name), jnp.int32 if f.name == "num_steps" else jnp.float32)
              for f in dataclasses.fields(config) if f.name not in _STATIC_FIELDS}
    return static, values


class _Traced:
    """A config inside jit: the static fields as Python values, the others as traced scalars."""

    def __init__(self, static: tuple, values: dict):
        self.__dict__.update(zip(_STATIC_FIELDS, static))
        self.__dict__.update(values)


def _learning_rate(config, step):
    """Adam's step size at ``step``: ``learning_rate`` cosine-decayed to ``lr_final_fraction`` of it
    over ``num_steps`` (constant when the fraction is 1)."""
    total = jnp.maximum(config.num_steps, 1).astype(jnp.float32)
    progress = jnp.minimum(step.astype(jnp.float32), total) / total
    cosine = 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
    fraction = config.lr_final_fraction
    return config.learning_rate * ((1.0 - fraction) * cosine + fraction)


def stiff_config(**overrides) -> RegistrationConfig:
    """The first round (5.1): a stiff body to recover the global rotation, 300 steps from the T-pose."""
    return dataclasses.replace(RegistrationConfig(num_steps=300, w_scale=100.0, w_angle=1.0), **overrides)


@flax.struct.dataclass
class RegistrationReport:
    """Per-sample outcome of :func:`register` (every field ``(B,)``).

    Attributes:
      loss: total loss (eq. 7) at the returned parameters, normalised units.
      l_dense, l_kp, l_scale, l_angle, l_det: its terms (unweighted).
      dense_residual_px: mean reprojection error of the dense points, pixels.
      keypoint_residual_px: mean reprojection error of the visible keypoints, pixels.
      num_points: correspondences used; num_dropped: correspondences and keypoints dropped as
        invalid (non-finite, or a vertex index out of range).
      diverged: the optimisation blew up (non-finite or exploding loss); the sample kept its best
        parameters.
      flagged: diverged, had invalid input, had no correspondences, or ended with a residual above
        ``max_residual_px``: do not trust this fit.
    """

    loss: Array
    l_dense: Array
    l_kp: Array
    l_scale: Array
    l_angle: Array
    l_det: Array
    dense_residual_px: Array
    keypoint_residual_px: Array
    num_points: Array
    num_dropped: Array
    diverged: Array
    flagged: Array


# ----------------------------------------------------------------------------------------------
# Normalisation


#: The units of the optimisation (see :mod:`bodyjax.camera`, "Normalised image units").
normalize_params = camera.normalize_params
denormalize_params = camera.denormalize_params


def sanitize_batch(template: body.BodyTemplate, batch: Batch) -> tuple[Batch, Array]:
    """Drops invalid correspondences and keypoints (masks them, zeroes their values).

    Returns the cleaned :class:`~bodyjax.batch.Batch` and ``(B,)`` the number of dropped
    correspondences and keypoints.
    """
    xy, vid, mask = batch.dense_xy, batch.dense_vertex, batch.dense_mask
    ok = (mask > 0) & jnp.all(jnp.isfinite(xy), -1) & (vid >= 0) & (vid < template.num_vertices)
    kp, vis = batch.keypoints, batch.keypoint_visible
    kp_ok = (vis > 0) & jnp.all(jnp.isfinite(kp), -1)
    dropped = jnp.sum((mask > 0) & ~ok, -1) + jnp.sum((vis > 0) & ~kp_ok, -1)
    changes = dict(dense_xy=jnp.where(ok[..., None], xy, 0.0), dense_vertex=jnp.where(ok, vid, 0),
                   dense_mask=ok.astype(jnp.float32), keypoints=jnp.where(kp_ok[..., None], kp, 0.0),
                   keypoint_visible=kp_ok.astype(jnp.float32))
    if batch.keypoint_depth is not None:
        dm = batch.keypoint_depth_mask
        dm = kp_ok.astype(jnp.float32) if dm is None else dm
        d_ok = (dm > 0) & jnp.isfinite(batch.keypoint_depth)
        changes["keypoint_depth"] = jnp.where(d_ok, batch.keypoint_depth, 0.0)
        changes["keypoint_depth_mask"] = d_ok.astype(jnp.float32)
    return batch.replace(**changes), dropped


# ----------------------------------------------------------------------------------------------
# Initialisation


def init_params(template: body.BodyTemplate, batch: Batch, image_size,
                rotation: str = "affine") -> body.BodyParams:
    """The T-pose start of round 1 (pose 0, all segment scales 1) placed on the image.

    ``rotation='affine'`` fits an affine camera from the template's rest points (the matched
    vertices) to their image points by weighted least squares and keeps its rotation part, so the
    stiff first round starts with the right facing direction; ``'identity'`` starts with ``R = I``.
    The weak-perspective scale and translation come from the same fit (or from the points' spread
    for ``'identity'``). Returns pixel-unit :class:`~bodyjax.body.BodyParams` of shape ``(B,)``.
    """
    if rotation not in ("affine", "identity"):
        raise ValueError(f"init_params: rotation must be 'affine' or 'identity', got {rotation!r}")
    return _init_params(template, batch, rotation)


@functools.partial(jax.jit, static_argnames=("rotation",))
def _init_params(template: body.BodyTemplate, batch: Batch, rotation: str) -> body.BodyParams:
    # one program (eagerly, each of its few dozen operations compiled on its own)
    batch, _ = sanitize_batch(template, batch)
    fit = jax.vmap(functools.partial(_affine_init, template, rotation=rotation))
    rot, scale, trans = fit(batch.dense_xy, batch.dense_vertex, batch.dense_mask)
    b = batch.dense_xy.shape[0]
    params = body.rest_params(template, (b,))
    return params.replace(rotation=rot, scale=scale, translation=trans)


def _affine_init(template, xy, vid, mask, rotation):
    X = template.vertices[vid]  # (N, 3)
    w = mask
    n = jnp.maximum(jnp.sum(w), 1.0)
    xm = jnp.sum(xy * w[:, None], 0) / n
    Xm = jnp.sum(X * w[:, None], 0) / n
    Xc, xc = (X - Xm) * w[:, None], (xy - xm) * w[:, None]
    A = Xc.T @ (X - Xm) + 1e-6 * jnp.eye(3)
    M = jnp.linalg.solve(A, Xc.T @ (xy - xm)).T  # (2, 3): x - xm ≈ M (X - Xm)
    r1n, r2n = jnp.linalg.norm(M[0]), jnp.linalg.norm(M[1])
    s_aff = 0.5 * (r1n + r2n)
    r1 = M[0] / jnp.maximum(r1n, 1e-9)
    r2 = M[1] - (M[1] @ r1) * r1
    r2 = r2 / jnp.maximum(jnp.linalg.norm(r2), 1e-9)
    R_aff = jnp.stack([r1, r2, jnp.cross(r1, r2)])
    # spread-based fallback (identity rotation)
    spread_img = jnp.sqrt(jnp.sum(xc ** 2) / n)
    spread_tpl = jnp.sqrt(jnp.sum(((X - Xm)[:, :2] * w[:, None]) ** 2) / n)
    s_id = spread_img / jnp.maximum(spread_tpl, 1e-9)
    ok = (jnp.sum(w) >= 6) & jnp.all(jnp.isfinite(R_aff)) & (s_aff > 1e-6)
    if rotation == "affine":
        R = jnp.where(ok, R_aff, jnp.eye(3))
        s = jnp.where(ok, s_aff, s_id)
    elif rotation == "identity":
        R, s = jnp.eye(3), s_id
    else:
        raise ValueError(f"rotation must be 'affine' or 'identity', got {rotation!r}")
    s = jnp.where(jnp.isfinite(s) & (s > 0), s, 1.0)
    t = xm - s * (R @ Xm)[:2]
    return R.astype(jnp.float32), s.astype(jnp.float32), t.astype(jnp.float32)


# ----------------------------------------------------------------------------------------------
# The objective


def _terms(template, config, params, data):
    """Unweighted loss terms of one sample, normalised units."""
    out = body.forward_points(template, params, body.Points(data["rest"], data["weights"], data.get("posedirs")))
    l_dense = losses.l_dense(out.vertices2d, data["dense_xy"], data["dense_mask"], config.dense_reduction)
    depth = target_depth = depth_mask = None
    if config.use_depth and "keypoint_depth" in data:
        root = jnp.asarray(skeletons.get_keypoint_set(template.keypoint_set).root)
        z = out.keypoints[..., 2] * params.scale
        depth = z - jnp.mean(z[root])
        target_depth, depth_mask = data["keypoint_depth"], data["keypoint_depth_mask"]
    l_kp = losses.l_keypoints(out.keypoints2d, data["keypoints"], data["keypoint_visible"],
                              depth, target_depth, depth_mask, config.w_depth)
    l_scale = losses.l_scale(params.segment_scales, data["adjacency"])
    l_angle = losses.l_angle(params.pose, template.hinge_joints, template.hinge_axes)
    l_det = losses.l_det(params.rotation)
    return {"l_dense": l_dense, "l_kp": l_kp, "l_scale": l_scale, "l_angle": l_angle, "l_det": l_det}, out


def _total(config, terms):
    return (config.w_dense * terms["l_dense"] + config.w_kp * terms["l_kp"]
            + config.w_scale * terms["l_scale"] + config.w_angle * terms["l_angle"]
            + config.w_det * terms["l_det"])


def _tree_where(cond, a, b):
    """Per-sample select between two batched pytrees (``cond`` is ``(B,)``)."""
    def sel(x, y):
        return jnp.where(cond.reshape(cond.shape + (1,) * (x.ndim - cond.ndim)), x, y)
    return jax.tree_util.tree_map(sel, a, b)


#: Fields of a :class:`~bodyjax.batch.Batch` the registration reads; the others are dropped before jit.
_FIELDS = ("dense_xy", "dense_vertex", "dense_mask", "keypoints", "keypoint_visible", "keypoint_depth",
           "keypoint_depth_mask")


def register(template: body.BodyTemplate, batch: Batch, init: Optional[body.BodyParams],
             config: RegistrationConfig, image_size) -> tuple[body.BodyParams, RegistrationReport]:
    """Fits the body to a batch of images (eq. 7–12): one jitted, vmapped Adam loop.

    Args:
      template: the body.
      batch: a :class:`~bodyjax.batch.Batch`; reads ``dense_xy (B, N, 2)`` pixels, ``dense_vertex
        (B, N)``, ``dense_mask (B, N)``, ``keypoints (B, K, 2)`` pixels, ``keypoint_visible (B, K)``
        and optionally ``keypoint_depth (B, K)`` (the lifter's root-relative depths ``z^GAN`` in
        pixels, eq. 9) with ``keypoint_depth_mask (B, K)``. Other fields are ignored.
      init: :class:`~bodyjax.body.BodyParams` ``(B,)`` in pixels (the regressor's prediction in
        later rounds), or ``None`` for round 1's T-pose start (:func:`init_params`).
      config: a :class:`RegistrationConfig` (its weights, learning rate and step count are values of
        the compiled program: changing them does not compile again).
      image_size: ``(H, W)`` of the images.

    Returns:
      ``(params, report)``: fitted pixel-unit :class:`~bodyjax.body.BodyParams` ``(B,)`` and a
      :class:`RegistrationReport`.

    Raises:
      ValueError: naming the argument and field when a shape or type is wrong (checked before
        tracing).
    """
    if not isinstance(batch, Batch):
        raise ValueError(f"register: batch must be a bodyjax.batch.Batch, got {type(batch).__name__} "
                         "(bodyjax.data.sample.to_batch converts stacked sample records)")
    if not isinstance(config, RegistrationConfig):
        raise ValueError(f"register: config must be a RegistrationConfig, got {type(config).__name__}")
    batch.check("register", num_keypoints=template.num_keypoints)
    image_size = _check_image_size("register", image_size)
    if init is not None:
        body.check_params(init, "register: init", template.joints.shape[0], batch_shape=(batch.size,))
    batch = Batch(**{f: getattr(batch, f) for f in _FIELDS})
    if init is None:
        init = init_params(template, batch, image_size)
    static, values = _split(config)
    return _register(template, batch, init, values, static, image_size)


def _check_image_size(where: str, image_size) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in image_size)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: image_size must be (H, W), got {image_size!r}") from None
    if h <= 0 or w <= 0:
        raise ValueError(f"{where}: image_size must be positive, got {image_size!r}")
    return h, w


def _objective_data(template, clean: Batch, config: RegistrationConfig, image_size) -> dict:
    """The per-sample inputs of :func:`_terms` in normalised units (the matched points gathered)."""
    centre, half = camera.image_frame(image_size)
    data = {
        "dense_mask": clean.dense_mask,
        "dense_xy": (clean.dense_xy - centre) / half,
        "keypoints": (clean.keypoints - centre) / half,
        "keypoint_visible": clean.keypoint_visible,
        "adjacency": jnp.asarray(body.segment_adjacency(template)),
    }
    data["rest"], data["weights"], posedirs = body.gather_points(template, clean.dense_vertex)
    if posedirs is not None:
        data["posedirs"] = posedirs
    if config.use_depth and clean.keypoint_depth is not None:
        data["keypoint_depth"] = clean.keypoint_depth / half
        data["keypoint_depth_mask"] = clean.keypoint_depth_mask
    return data


@functools.partial(jax.jit, static_argnames=("static", "image_size"))
def _register(template: body.BodyTemplate, batch: Batch, init: body.BodyParams, values: dict,
              static: tuple, image_size: tuple[int, int]):
    config = _Traced(static, values)
    clean, dropped = sanitize_batch(template, batch)
    _, half = camera.image_frame(image_size)
    data = _objective_data(template, clean, config, image_size)
    in_axes = {k: (None if k == "adjacency" else 0) for k in data}
    def sample_loss(params, d):
        terms, _ = _terms(template, config, params, d)
        return _total(config, terms)

    value_and_grad = jax.vmap(jax.value_and_grad(sample_loss), in_axes=(0, in_axes))
    # A non-finite initialisation (e.g. a regressor that blew up) restarts from the T-pose.
    init_ok = jax.tree_util.tree_reduce(jnp.logical_and, jax.tree_util.tree_map(
        lambda x: jnp.all(jnp.isfinite(x), axis=tuple(range(1, x.ndim))), init))
    init = _tree_where(init_ok, init, init_params(template, clean, image_size))
    params0 = normalize_params(init, image_size)
    params0 = params0.replace(rotation=jnp.asarray(params0.rotation, jnp.float32))
    optimizer = optax.scale_by_adam()     # Adam; its step size is applied below, per step
    loss0, _ = value_and_grad(params0, data)
    # A sample whose start is already non-finite is diverged from the outset.
    state0 = (params0, optimizer.init(params0), params0, jnp.where(jnp.isfinite(loss0), loss0, jnp.inf),
              ~jnp.isfinite(loss0))

    def step(i, state):
        params, opt_state, best, best_loss, diverged = state
        loss, grads = value_and_grad(params, data)
        finite = jnp.isfinite(loss) & jax.tree_util.tree_reduce(
            jnp.logical_and, jax.tree_util.tree_map(lambda g: jnp.all(jnp.isfinite(g), axis=tuple(range(1, g.ndim))), grads))
        blown = loss > config.divergence_factor * jnp.maximum(loss0, 1e-6)
        diverged = diverged | ~finite | blown
        better = ~diverged & (loss < best_loss)
        best = _tree_where(better, params, best)
        best_loss = jnp.where(better, loss, best_loss)
        grads = _tree_where(diverged, jax.tree_util.tree_map(jnp.zeros_like, grads), grads)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        lr = _learning_rate(config, i)
        new = optax.apply_updates(params, jax.tree_util.tree_map(lambda u: -lr * u, updates))
        params = _tree_where(diverged, best, new)
        return params, opt_state, best, best_loss, diverged

    params, _, best, best_loss, diverged = jax.lax.fori_loop(0, config.num_steps, step, state0)
    # The last update has not been scored yet: keep it if it is the best.
    final_loss, _ = value_and_grad(params, data)
    better = ~diverged & jnp.isfinite(final_loss) & (final_loss < best_loss)
    best = _tree_where(better, params, best)

    terms, out = jax.vmap(functools.partial(_terms, template, config), in_axes=(0, in_axes))(best, data)
    npts = jnp.sum(data["dense_mask"], -1)
    err = jnp.linalg.norm(out.vertices2d - data["dense_xy"], axis=-1) * half
    dense_res = jnp.sum(err * data["dense_mask"], -1) / jnp.maximum(npts, 1.0)
    kerr = jnp.linalg.norm(out.keypoints2d - data["keypoints"], axis=-1) * half
    nkp = jnp.sum(data["keypoint_visible"], -1)
    kp_res = jnp.sum(kerr * data["keypoint_visible"], -1) / jnp.maximum(nkp, 1.0)
    flagged = diverged | (dropped > 0) | (npts == 0) | (dense_res > config.max_residual_px)
    report = RegistrationReport(
        loss=_total(config, terms), dense_residual_px=dense_res, keypoint_residual_px=kp_res,
        num_points=npts.astype(jnp.int32), num_dropped=dropped.astype(jnp.int32),
        diverged=diverged, flagged=flagged, **terms)
    return denormalize_params(best, image_size), report


def data_objective(template: body.BodyTemplate, batch: Batch, params: body.BodyParams,
                   config: RegistrationConfig, image_size) -> Array:
    """The data terms of eq. 7, ``ω_dense L_dense + ω_KP L_KP``, per sample (no priors).

    The measure by which SPIN's fits dictionary compares two fits of the same image under the same
    data: the dense correspondences, the 2D keypoints and, when the batch carries them (and
    ``config.use_depth``), the lifter's depths z^GAN of eq. 9. The priors (eq. 10–12) are left out:
    they are not evidence about the image.

    Args:
      template, batch, config, image_size: as for :func:`register`.
      params: pixel-unit :class:`~bodyjax.body.BodyParams` ``(B,)``.

    Returns:
      ``(B,)`` in normalised units (``inf`` where a parameter is not finite).
    """
    if not isinstance(batch, Batch):
        raise ValueError(f"data_objective: batch must be a bodyjax.batch.Batch, got {type(batch).__name__}")
    batch.check("data_objective", num_keypoints=template.num_keypoints)
    body.check_params(params, "data_objective: params", template.joints.shape[0], batch_shape=(batch.size,))
    batch = Batch(**{f: getattr(batch, f) for f in _FIELDS})
    static, values = _split(config)
    return _data_objective(template, batch, params, values, static,
                           _check_image_size("data_objective", image_size))


@functools.partial(jax.jit, static_argnames=("static", "image_size"))
def _data_objective(template, batch, params, values, static, image_size):
    config = _Traced(static, values)
    clean, _ = sanitize_batch(template, batch)
    data = _objective_data(template, clean, config, image_size)
    in_axes = {k: (None if k == "adjacency" else 0) for k in data}
    terms, _ = jax.vmap(functools.partial(_terms, template, config), in_axes=(0, in_axes))(
        normalize_params(params, image_size), data)
    value = config.w_dense * terms["l_dense"] + config.w_kp * terms["l_kp"]
    return jnp.where(jnp.isfinite(value), value, jnp.inf)
