"""The deform-and-learn iteration (paper Fig. 2, appendix Fig. 1 and section 1) as explicit state.

One round is four stages, each a function of the previous :class:`LoopState` that returns the next:

1. ``lifter``: train (refresh) the multi-view cGAN on the training 2D keypoints; from the second
   round on, also on the registration's 3D keypoints (eq. 5 with μ from 100 to 1);
2. ``registration``: fit the body to every training image (eq. 7–12) with the lifter's depths as
   z^GAN; round 1 starts stiff from the T-pose, later rounds from the regressor's predictions;
3. ``regressor``: train the ConvNet on the fits (eq. 13), continuing from its previous weights;
4. ``evaluate``: registration error on the training set, regressor error on the test split and the
   lifter's error, against the ground truth when the data has it.

Nothing is hidden in globals: the state carries the round and stage counters, the RNG, both lifter
networks, the regressor and the fits, so an orchestrator can checkpoint it after every stage and
resume exactly. Randomness for a stage is ``fold_in(fold_in(rng, round), stage)``, which makes a
resumed run identical to an uninterrupted one.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Mapping, Optional

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from bodyjax import body, lifter, metrics, registration, regressor, skeletons

Array = jnp.ndarray
STAGES = ("lifter", "registration", "regressor", "evaluate")


@dataclasses.dataclass(frozen=True)
class LoopSettings:
    """Everything static about a run (built from the experiment config by the orchestrator)."""

    image_size: tuple
    keypoint_set: str
    lifter: lifter.LifterHParams
    lifter_epochs: int
    lifter_batch_size: int
    use_lifter_depths: bool
    first_registration: registration.RegistrationConfig
    later_registration: registration.RegistrationConfig
    registration_batch_size: int
    regressor: regressor.RegressorConfig
    regressor_hparams: regressor.RegressorHParams
    regressor_epochs: int
    regressor_batch_size: int
    augment: Optional[object] = None
    skip_flagged_fits: bool = True
    lifter_visibility: str = "labelled"


@flax.struct.dataclass
class LoopState:
    """The whole state of a deform-and-learn run between two stages.

    Attributes:
      round: ``()`` int32, 0-based index of the current round.
      stage: ``()`` int32, number of stages of the current round already done (0..4).
      rng: the run's PRNG key.
      lifter: :class:`bodyjax.lifter.LifterState`.
      regressor: :class:`bodyjax.regressor.RegressorState`.
      fits: pixel-unit :class:`~bodyjax.body.BodyParams` ``(M,)`` of the latest registration
        (the rest pose before the first one).
      fit_flagged: ``(M,)`` bool, fits the registration did not trust.
      has_fits: ``()`` bool, whether a registration has run.
    """

    round: Array
    stage: Array
    rng: Array
    lifter: lifter.LifterState
    regressor: regressor.RegressorState
    fits: body.BodyParams
    fit_flagged: Array
    has_fits: Array


def init_state(seed: int, template: body.BodyTemplate, num_train: int, settings: LoopSettings) -> LoopState:
    """A fresh run: untrained networks, no fits, round 0 stage 0."""
    rng = jax.random.PRNGKey(seed)
    k_lift, k_reg = jax.random.split(jax.random.fold_in(rng, 10_000))
    return LoopState(
        round=jnp.asarray(0, jnp.int32), stage=jnp.asarray(0, jnp.int32), rng=rng,
        lifter=lifter.create_lifter_state(k_lift, template.num_keypoints, settings.lifter),
        regressor=regressor.create_state(k_reg, settings.regressor, settings.regressor_hparams),
        fits=body.rest_params(template, (num_train,)),
        fit_flagged=jnp.zeros((num_train,), bool), has_fits=jnp.asarray(False))


def stage_rng(state: LoopState) -> Array:
    """The PRNG key of the state's current stage."""
    return jax.random.fold_in(jax.random.fold_in(state.rng, state.round), state.stage)


def _advance(state: LoopState, **changes) -> LoopState:
    stage = int(state.stage) + 1
    if stage == len(STAGES):
        return state.replace(round=state.round + 1, stage=jnp.asarray(0, jnp.int32), **changes)
    return state.replace(stage=jnp.asarray(stage, jnp.int32), **changes)


# ----------------------------------------------------------------------------------------------
# Stages


def mean_bone_ratios(template: body.BodyTemplate, keypoint_set: str) -> Array:
    """Bone-length ratios of the template's rest skeleton: the average skeleton of eq. (3)."""
    rest = body.forward(template, body.rest_params(template))
    return skeletons.bone_ratios(rest.keypoints, skeletons.get_keypoint_set(keypoint_set))


def fit_keypoints3d(template: body.BodyTemplate, fits: body.BodyParams) -> Array:
    """The fits' 3D keypoints in the lifter's pixel units ``(x_img, y_img, s·z)``, ``(M, K, 3)``."""
    out = jax.jit(body.forward)(template, fits)
    return jnp.concatenate([out.keypoints2d, out.keypoints[..., 2:] * fits.scale[:, None, None]], -1)


def lifter_visibility(data: Mapping[str, np.ndarray], settings: LoopSettings) -> Array:
    """The keypoint mask the lifter sees, ``(M, K)``.

    ``'labelled'`` (default) follows the COCO convention that the body keypoints are labelled even
    when occluded (their positions are in the record): with the strict occlusion flag the
    discriminator could tell rotated fakes from real poses by the pattern of missing keypoints
    alone. ``'record'`` uses ``keypoint_visible`` as it is.
    """
    vis = np.array(data["keypoint_visible"], np.float32)
    if settings.lifter_visibility == "labelled" and settings.keypoint_set == "coco17":
        vis[:, 5:] = 1.0  # shoulders .. ankles
    elif settings.lifter_visibility == "labelled":
        vis[:] = 1.0
    elif settings.lifter_visibility != "record":
        raise ValueError(f"lifter_visibility must be 'labelled' or 'record', got {settings.lifter_visibility!r}")
    return jnp.asarray(vis)


def lifter_stage(state: LoopState, template, train, settings: LoopSettings, progress=None):
    """Stage 1: trains the lifter; returns ``(state, metrics)``."""
    targets = mask = None
    if bool(state.has_fits):
        targets = fit_keypoints3d(template, state.fits)
        mask = (~state.fit_flagged).astype(jnp.float32)
    new, history = lifter.train_lifter(
        state.lifter, jnp.asarray(train["keypoints"]), lifter_visibility(train, settings),
        stage_rng(state), settings.lifter_epochs, settings.lifter_batch_size,
        mean_ratios=mean_bone_ratios(template, settings.keypoint_set),
        keypoint_set=settings.keypoint_set, hparams=settings.lifter,
        joints3d=targets, joints3d_mask=mask, progress=progress)
    last = {f"lifter/{k}": float(v[-1]) for k, v in history.items() if len(v)}
    return _advance(state, lifter=new), last


def registration_stage(state: LoopState, template, train, settings: LoopSettings, progress=None):
    """Stage 2: registers every training image; returns ``(state, metrics)``."""
    m = train["image"].shape[0]
    size = settings.image_size
    if bool(state.has_fits):
        init = regressor.predict(state.regressor, train["image"], template, with_vertices=False).params
        config = settings.later_registration
    else:
        init = None
        config = settings.first_registration
    depths = None
    if settings.use_lifter_depths:
        lifter_vis = lifter_visibility(train, settings)
        depths = lifter.predict_depths(state.lifter, jnp.asarray(train["keypoints"]), lifter_vis,
                                       settings.keypoint_set)
    bs = min(settings.registration_batch_size, m)
    fits, reports = [], []
    for start in range(0, m, bs):
        idx = np.arange(start, start + bs) % m  # pad the last chunk by wrapping: one compiled shape
        batch = {k: jnp.asarray(train[k][idx]) for k in
                 ("dense_xy", "dense_vertex", "dense_mask", "keypoints", "keypoint_visible")}
        if depths is not None:
            batch["keypoint_depth"] = depths[idx]
            batch["keypoint_depth_mask"] = lifter_vis[idx]
        chunk_init = (registration.init_params(template, batch, size) if init is None
                      else jax.tree_util.tree_map(lambda a: a[idx], init))
        p, r = registration.register(template, batch, chunk_init, config, size)
        n = min(bs, m - start)
        fits.append(jax.tree_util.tree_map(lambda a: a[:n], p))
        reports.append(jax.tree_util.tree_map(lambda a: a[:n], r))
        if progress:
            progress(start + n, m)
    fits = jax.tree_util.tree_map(lambda *a: jnp.concatenate(a), *fits)
    report = jax.tree_util.tree_map(lambda *a: jnp.concatenate(a), *reports)
    stats = {
        "registration/loss": float(jnp.mean(report.loss)),
        "registration/dense_residual_px": float(jnp.mean(report.dense_residual_px)),
        "registration/keypoint_residual_px": float(jnp.mean(report.keypoint_residual_px)),
        "registration/flagged_fraction": float(jnp.mean(report.flagged)),
        "registration/diverged": int(jnp.sum(report.diverged)),
    }
    return _advance(state, fits=fits, fit_flagged=report.flagged, has_fits=jnp.asarray(True)), stats


def regressor_stage(state: LoopState, template, train, settings: LoopSettings, progress=None):
    """Stage 3: trains the regressor on the fits (flagged fits get no regression target)."""
    weight = None
    if settings.skip_flagged_fits:
        weight = np.asarray(~state.fit_flagged, np.float32)
    new, history = regressor.train_regressor(
        state.regressor, train, state.fits, stage_rng(state), settings.regressor_epochs,
        settings.regressor_batch_size, template=template, hparams=settings.regressor_hparams,
        augment=settings.augment, target_weight=weight, progress=progress)
    last = {f"regressor/{k}": float(v[-1]) for k, v in history.items() if len(v) and k != "seconds"}
    return _advance(state, regressor=new), last


def joint_errors(pred_joints: Array, gt_joints: Array, parents) -> dict:
    """MPJPE (bone-length rescaled, the paper's protocol), PA-MPJPE and PCK/AUC in mm."""
    pred = pred_joints - pred_joints[:, :1]
    gt = jnp.asarray(gt_joints)
    pred_mm, gt_mm = pred * 1000.0, gt * 1000.0
    return {
        "mpjpe": float(jnp.mean(metrics.mpjpe_rescaled(pred_mm, gt_mm, parents))),
        "pa_mpjpe": float(jnp.mean(metrics.pa_mpjpe(pred_mm, gt_mm))),
        "pck150": float(jnp.mean(metrics.pck(pred_mm, gt_mm, 150.0, align="procrustes"))),
        "auc": float(jnp.mean(metrics.auc(pred_mm, gt_mm, align="procrustes"))),
    }


def evaluate_stage(state: LoopState, template, train, test, settings: LoopSettings, progress=None):
    """Stage 4: errors of the fits (train), the regressor (test) and the lifter (test)."""
    out: dict = {"round": int(state.round) + 1}
    parents = template.parents
    if "gt_joints3d" in train and np.all(train["has_gt"] > 0):
        fit_out = jax.jit(body.forward)(template, state.fits)
        for k, v in joint_errors(fit_out.joints, train["gt_joints3d"], parents).items():
            out[f"registration/train_{k}"] = v
    pred = regressor.predict(state.regressor, test["image"], template, with_vertices=False)
    if "gt_joints3d" in test and np.all(test["has_gt"] > 0):
        for k, v in joint_errors(pred.joints, test["gt_joints3d"], parents).items():
            out[f"regressor/test_{k}"] = v
        gt = _gt_params(test)
        gt_kp = jax.jit(body.forward)(template, gt).keypoints
        vis = lifter_visibility(test, settings)
        lifted = lifter.lift(state.lifter, jnp.asarray(test["keypoints"]), vis, settings.keypoint_set)
        ks = skeletons.get_keypoint_set(settings.keypoint_set)
        gt_rel = (gt_kp - jnp.mean(gt_kp[:, jnp.asarray(ks.root)], 1, keepdims=True)) * 1000.0
        out["lifter/test_pa_mpjpe"] = float(jnp.mean(metrics.pa_mpjpe(lifted, gt_rel, vis)))
    out["regressor/test_pixel_error"] = float(jnp.mean(metrics.pixel_error(
        pred.keypoints2d, jnp.asarray(test["keypoints"]), jnp.asarray(test["keypoint_visible"]))))
    return _advance(state), out


def _gt_params(split: Mapping[str, np.ndarray]) -> body.BodyParams:
    return body.BodyParams(
        pose=jnp.asarray(split["gt_pose"]), segment_scales=jnp.asarray(split["gt_segment_scales"]),
        rotation=jnp.asarray(split["gt_rotation"]), scale=jnp.asarray(split["gt_scale"]),
        translation=jnp.asarray(split["gt_translation"]))


def run_stage(state: LoopState, template, train, test, settings: LoopSettings,
              progress: Optional[Callable] = None):
    """Runs the state's current stage; returns ``(next_state, metrics)``."""
    name = STAGES[int(state.stage)]
    if name == "lifter":
        return lifter_stage(state, template, train, settings, progress)
    if name == "registration":
        return registration_stage(state, template, train, settings, progress)
    if name == "regressor":
        return regressor_stage(state, template, train, settings, progress)
    return evaluate_stage(state, template, train, test, settings, progress)


def run_round(state: LoopState, template, train, test, settings: LoopSettings) -> tuple[LoopState, dict]:
    """All remaining stages of the current round; returns the next round's state and its metrics."""
    metrics_out: dict = {}
    current = int(state.round)
    while int(state.round) == current:
        state, m = run_stage(state, template, train, test, settings)
        metrics_out.update(m)
    return state, metrics_out
