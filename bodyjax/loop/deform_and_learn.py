"""The deform-and-learn iteration (paper Fig. 2, appendix Fig. 1 and section 1) as explicit state.

Layer: orchestration. One round is five stages, each a function of the previous :class:`LoopState`
that returns the next:

0. ``dense``: (extension, when the regressor reads part or IUV maps) trains the part / IUV
   predictor (:mod:`bodyjax.iuv_net`) on the training images' per-pixel 2D labels, in round 1;
1. ``lifter``: trains (refreshes) the multi-view cGAN on the 2D keypoints (the training images',
   and/or a separate 2D corpus as the paper's MPII); from the second round on, also on the fits' 3D
   keypoints (eq. 5 with μ from 100 to 1);
2. ``registration``: fits the body to every training image (eq. 7–12) with the lifter's depths as
   z^GAN; round 1 starts stiff from the T-pose, later rounds from the regressor's predictions. With
   ``keep_best_fits`` (SPIN's fits dictionary, an extension) a new fit replaces the stored one only
   when its image terms (:func:`bodyjax.registration.data_objective`) are lower;
3. ``regressor``: trains the ConvNet on the fits (eq. 13), continuing from its previous weights,
   on augmented batches streamed from the training split;
4. ``evaluate``: the fits' error on the training split, the regressor's on the test split, the
   lifter's, and the baselines (the mean of the training fits as a constant prediction; the flat
   depth lifter), against the ground truth when the data has it (never used for training).

Nothing is hidden in globals: the state carries the round and stage counters, the PRNG key, the
networks and the fits, so the experiment checkpoints it after every stage and resumes exactly. A
stage's randomness is ``fold_in(fold_in(rng, round), stage)``: a resumed run is identical to an
uninterrupted one.

The training images are never held in memory: every stage streams its split (:class:`Data`) in
chunks or grain batches, so memory does not grow with the data set.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import tempfile
from typing import Any, Callable, Mapping, NamedTuple, Optional, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from bodyjax import body, iuv_net, lifter, metrics, registration, regressor, skeletons
from bodyjax.batch import Batch
from bodyjax.data import augment, fit_views, sample
from bodyjax.loop import epochs

Array = jnp.ndarray
STAGES = ("dense", "lifter", "registration", "regressor", "evaluate")
#: Record fields without the pixels (what the registration and the lifter read).
POINT_KEYS = ("dense_xy", "dense_vertex", "dense_mask", "keypoints", "keypoint_visible")
GT_KEYS = ("has_gt", "gt_pose", "gt_segment_scales", "gt_rotation", "gt_scale", "gt_translation",
           "gt_joints3d")


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    """Everything static about a run; each algorithm's part maps straight onto its dataclass.

    Attributes:
      lifter, registration_first, registration, regressor, augment, iuv_net: the algorithms'
        configurations (round 1's registration is stiff, see 5.1).
      image_size: side of the data's square images, pixels.
      keypoint_set: the keypoint set of the data, the lifter and eq. 9.
      registration_chunk: images per jitted registration call (one compiled shape).
      use_lifter_depths: feed the lifter's depths as z^GAN of eq. 9.
      lifter_visibility: ``'labelled'`` (COCO convention: the body keypoints count as labelled even
        when occluded; the face only when seen) or ``'record'`` (the record's visibility).
      lifter_keypoints: ``'images'`` (the training images' 2D keypoints), ``'corpus'`` (a separate
        2D corpus, as the paper's MPII) or ``'both'``.
      skip_flagged_fits: flagged fits get no regression target (weight 0).
      keep_best_fits: SPIN's fits dictionary (extension): keep the fit with the lower image terms.
      registration_relax: (extension) round 1 continues from its stiff fit from the T-pose with this
        configuration (its ``num_steps`` passes; ``None`` or 0 steps: the paper's round 1). Its
        depth term weighs round 1's lifter.
      regressor_maps: for the ``'parts'`` / ``'iuv'`` regressor, the training input maps:
        ``'labels'`` (the rendered / annotated labels) or ``'predicted'`` (the part / IUV
        predictor's, computed once per round from the training images and augmented with them);
        test-time inputs are always predicted.
      fit_views: (extension, two-stage regressor only) new views of the fits rendered into label
        maps, added to the regressor's training records every round
        (:class:`bodyjax.data.fit_views.FitViewsConfig`; ``per_fit=0``: off).
      workers: grain worker processes for the streamed batches (0: in this process).
      read_threads: threads reading the streamed records in each process (grain's
        ``ReadOptions.num_threads``): 0 reads them in the loading thread, grain's advice for local or
        in-memory data (its default, 16, is for remote storage; here it costs ~1.5 ms a record in GIL
        contention, BENCHMARKS); ``None``: grain's default.
      memory_records_mb: the training stages that stream a split every epoch (the part / IUV
        predictor, the regressor) first read the fields they use into memory when these take at
        most this many MiB (decoding a stored record costs ~0.8 ms on a CPU, a record in memory
        ~0.04 ms); larger splits are streamed. 0: always streamed.
      shard_by_process: give each JAX process its share of the records (multi-host).
      chunk: images per jitted inference call (prediction, evaluation).
    """

    lifter: lifter.LifterConfig
    registration_first: registration.RegistrationConfig
    registration: registration.RegistrationConfig
    regressor: regressor.RegressorConfig
    augment: augment.AugmentConfig
    iuv_net: iuv_net.IUVNetConfig
    image_size: int
    keypoint_set: str = "coco17"
    registration_chunk: int = 200
    use_lifter_depths: bool = True
    lifter_visibility: str = "labelled"
    lifter_keypoints: str = "images"
    skip_flagged_fits: bool = True
    keep_best_fits: bool = False
    registration_relax: Optional[registration.RegistrationConfig] = None
    regressor_maps: str = "labels"
    fit_views: fit_views.FitViewsConfig = fit_views.FitViewsConfig()
    workers: int = 0
    read_threads: Optional[int] = 0
    memory_records_mb: float = 1024.0
    shard_by_process: bool = False
    chunk: int = 64

    def __post_init__(self):
        if self.read_threads is not None and int(self.read_threads) < 0:
            raise ValueError(f"LoopConfig.read_threads must be >= 0 (or None: grain's default), got "
                             f"{self.read_threads} (--config.loop.read_threads)")
        if self.regressor.freeze_stem and not self.regressor.pretrained:
            raise ValueError("LoopConfig.regressor.freeze_stem=True keeps the stem as it starts, but "
                             "regressor.pretrained is '' (a random stem): give a pretrained network or set "
                             "--config.regressor.freeze_stem=False")
        if self.uses_maps and self.iuv_net.num_epochs == 0 and not self.iuv_net.pretrained:
            raise ValueError("LoopConfig.iuv_net.num_epochs=0 uses the part / IUV predictor as loaded, "
                             "but iuv_net.pretrained is '' (a random predictor would give the regressor's "
                             "test maps): give a pretrained predictor (--config.iuv_net.pretrained=FILE) "
                             "or train it in round 1 (--config.iuv_net.num_epochs=5)")
        if self.fit_views.per_fit > 0 and not self.uses_maps:
            raise ValueError(f"LoopConfig.fit_views.per_fit={self.fit_views.per_fit}: the rendered views "
                             "are label maps, read only by the two-stage regressor (regressor.input "
                             f"'parts' or 'iuv'; this run's is {self.regressor.input!r}): set "
                             "fit_views.per_fit=0 (--config.fit_views.per_fit=0)")

    @property
    def uses_maps(self) -> bool:
        """Whether the regressor reads part / IUV maps (the two-stage design) instead of RGB."""
        return self.regressor.input != "rgb"


class Data(NamedTuple):
    """The splits a run reads (random-access sources of sample records, streamed).

    Attributes:
      train: the training split (:func:`bodyjax.data.pipeline.data_source` or an ``ArraySource``).
      test: the test split.
      corpus: optional ``{'keypoints' (C, K, 2), 'keypoint_visible' (C, K)}``: a separate 2D
        keypoint corpus for the lifter (small arrays, in memory).
    """

    train: Any
    test: Any
    corpus: Optional[Mapping[str, np.ndarray]] = None


@flax.struct.dataclass
class LoopState:
    """The whole state of a deform-and-learn run between two stages.

    Attributes:
      round: ``()`` int32, 0-based index of the current round.
      stage: ``()`` int32, number of stages of the current round already done (0..5).
      rng: the run's PRNG key.
      lifter: :class:`bodyjax.lifter.LifterState`.
      regressor: :class:`bodyjax.regressor.RegressorState`.
      iuv_net: :class:`bodyjax.iuv_net.IUVNetState` (two-stage regressor), or ``None``.
      fits: pixel-unit :class:`~bodyjax.body.BodyParams` ``(M,)``: the fits (the dictionary with
        ``keep_best_fits``); the rest pose before the first registration.
      fit_flagged: ``(M,)`` bool, fits the registration did not trust.
      has_fits: ``()`` bool, whether a registration has run.
    """

    round: Array
    stage: Array
    rng: Array
    lifter: lifter.LifterState
    regressor: regressor.RegressorState
    iuv_net: Optional[iuv_net.IUVNetState]
    fits: body.BodyParams
    fit_flagged: Array
    has_fits: Array


def mean_bone_ratios(template: body.BodyTemplate, keypoint_set: str) -> Array:
    """Bone-length ratios of the template's rest skeleton: the average skeleton of eq. (3)."""
    rest = jax.jit(body.forward)(template, body.rest_params(template))
    return skeletons.bone_ratios(rest.keypoints, skeletons.get_keypoint_set(keypoint_set))


def init_state(seed: int, template: body.BodyTemplate, num_train: int, config: LoopConfig) -> LoopState:
    """A fresh run: untrained networks (the regressor's backbone read from ``config.regressor.pretrained``
    when set, :func:`with_pretrained_backbone`), no fits, round 0 stage 0."""
    rng = jax.random.PRNGKey(seed)
    k_lift, k_reg = jax.random.split(jax.random.fold_in(rng, 10_000))
    k_dense = jax.random.fold_in(rng, 10_001)
    return LoopState(
        round=jnp.asarray(0, jnp.int32), stage=jnp.asarray(0, jnp.int32), rng=rng,
        lifter=lifter.create_state(k_lift, config.keypoint_set,
                                   mean_bone_ratios(template, config.keypoint_set), config.lifter),
        regressor=_initial_regressor(k_reg, config.regressor),
        iuv_net=_initial_iuv_net(k_dense, config.iuv_net) if config.uses_maps else None,
        fits=body.rest_params(template, (num_train,)),
        fit_flagged=jnp.zeros((num_train,), bool), has_fits=jnp.asarray(False))


def _initial_iuv_net(rng, config: iuv_net.IUVNetConfig) -> iuv_net.IUVNetState:
    """The part / IUV predictor: ``config.pretrained`` loaded, or initialised from ``rng`` without one.

    A file that holds every parameter fills an abstract state (nothing initialised or compiled)."""
    path = os.path.expanduser(config.pretrained)
    if not path:
        return iuv_net.create_state(rng, config)
    abstract = not config.keypoints and os.path.isfile(path)
    return iuv_net.load_params(iuv_net.create_state(rng, config, abstract=abstract), path, "config.iuv_net.pretrained")


def _initial_regressor(rng, config: regressor.RegressorConfig) -> regressor.RegressorState:
    """The regressor of a fresh run: :func:`with_pretrained_backbone` of a random initialisation, or,
    from a whole-network file of :func:`bodyjax.regressor.save_params`, that file's network (filling
    an abstract state: nothing initialised or compiled)."""
    path = os.path.expanduser(config.pretrained) if config.pretrained else ""
    if path and os.path.isfile(path) and regressor.is_params_file(path):
        return regressor.load_params(regressor.create_state(rng, config, abstract=True), path,
                                     "config.regressor.pretrained")
    return with_pretrained_backbone(regressor.create_state(rng, config), config)


def pretrained_regressor(config: LoopConfig) -> Optional[regressor.RegressorState]:
    """The regressor as a fresh run starts it from a whole-network file (``config.regressor.pretrained``,
    a file of :func:`bodyjax.regressor.save_params`), or ``None`` (from scratch, or a backbone only).

    The evaluation scores it beside the trained one (``baseline/start_*``): what the run's training
    adds to the network it was given."""
    path = os.path.expanduser(config.regressor.pretrained) if config.regressor.pretrained else ""
    if not (path and os.path.isfile(path) and regressor.is_params_file(path)):
        return None
    return _initial_regressor(0, config.regressor)


def with_pretrained_backbone(state: regressor.RegressorState,
                             config: regressor.RegressorConfig) -> regressor.RegressorState:
    """The regressor with ``config.pretrained`` loaded.

    No-op without a path. A file of :func:`bodyjax.regressor.save_params` (the project's pretrained
    regressor, e.g. :data:`bodyjax.regressor.PRETRAINED_IUV_48`) replaces the whole network; any other
    file is read as torchvision-layout ResNet weights into the backbone, the head staying
    (:func:`bodyjax.pretrained.load_pretrained_backbone`). Adam restarts either way.

    Raises:
      FileNotFoundError: naming ``config.regressor.pretrained`` and the file, when it does not exist.
      ValueError: naming both, when the file cannot be read or its layout does not match the
        configured ResNet (depth, width, input channels).
    """
    path = config.pretrained
    if not path:
        return state
    from bodyjax import pretrained  # noqa: PLC0415

    if not os.path.isfile(os.path.expanduser(path)):
        raise FileNotFoundError(f"config.regressor.pretrained: weight file not found: {path}")
    if regressor.is_params_file(os.path.expanduser(path)):
        return regressor.load_params(state, os.path.expanduser(path), "config.regressor.pretrained")
    try:
        weights = pretrained.load_state_dict(os.path.expanduser(path))
    except Exception as e:  # noqa: BLE001 - re-raised with the field and the file named
        raise ValueError(f"config.regressor.pretrained: cannot read {path} ({type(e).__name__}: {e})") from e
    try:
        state, _ = pretrained.load_pretrained_backbone(state, weights)
    except (ValueError, KeyError) as e:
        from bodyjax.regressor import input_channels  # noqa: PLC0415

        raise ValueError(f"config.regressor.pretrained: {path} does not match the configured ResNet{config.depth} "
                         f"(width {config.width}, {input_channels(config.input)} input channels for "
                         f"input {config.input!r}): {e}") from e
    return state


def stage_rng(state: LoopState) -> Array:
    """The PRNG key of the state's current stage."""
    return jax.random.fold_in(jax.random.fold_in(state.rng, state.round), state.stage)


def stage_seed(state: LoopState) -> int:
    """The integer seed of the state's current stage (host-side randomness, see :mod:`~bodyjax.loop.epochs`)."""
    return int(jax.random.randint(stage_rng(state), (), 0, 2 ** 31 - 1))


def _advance(state: LoopState, **changes) -> LoopState:
    stage = int(state.stage) + 1
    if stage == len(STAGES):
        return state.replace(round=state.round + 1, stage=jnp.asarray(0, jnp.int32), **changes)
    return state.replace(stage=jnp.asarray(stage, jnp.int32), **changes)


def _schedule(learning_rate: float, final_fraction: float, total_steps: int):
    """The round's learning rate as an optax schedule (constant, or cosine-decayed to a fraction)."""
    if final_fraction == 1.0:
        return optax.constant_schedule(learning_rate)
    return optax.cosine_decay_schedule(learning_rate, max(total_steps - 1, 1), alpha=final_fraction)


def _points_batch(records: Mapping[str, np.ndarray]) -> Batch:
    return sample.to_batch({k: records[k] for k in POINT_KEYS}, with_image=False, with_gt=False)


# ----------------------------------------------------------------------------------------------
# Stage 0: the part / IUV predictor (two-stage regressor only)


def dense_stage(state: LoopState, template, data: Data, config: LoopConfig, progress=None):
    """Trains the part / IUV predictor on the training images' 2D labels (round 1 only)."""
    if not config.uses_maps or int(state.round) > 0 or config.iuv_net.num_epochs == 0:
        return _advance(state), {}
    cfg = config.iuv_net
    seed = stage_seed(state)
    mirror = augment.MirrorTables.of(template)
    transform = augment.Augment(mirror, cfg.image_size, config.augment)
    keys = ("image", "iuv") + POINT_KEYS + ("has_gt",)
    source = stage_records(data.train, keys, config, "the part / IUV predictor's records")
    bs = min(cfg.batch_size, len(source))
    steps = len(source) // bs
    schedule = _schedule(cfg.learning_rate, cfg.lr_final_fraction, cfg.num_epochs * steps)

    def batches(epoch):
        for records in epochs.record_batches(source, bs, seed, epoch, [transform],
                                             worker_count=config.workers, read_threads=config.read_threads,
                                             shard_by_process=config.shard_by_process):
            yield sample.to_batch(records, with_gt=False)

    def step(s, batch, i):
        return iuv_net.train_step(s, batch, schedule(i))

    new, history = epochs.run_epochs(state.iuv_net, step, batches, cfg.num_epochs, progress)
    last = {f"dense/{k}": v[-1] for k, v in history.items() if k != "seconds"}
    return _advance(state, iuv_net=new), last


def stage_records(source, keys: Sequence[str], config: LoopConfig, name: str):
    """The fields ``keys`` of a split's records, as a training stage streams them every epoch.

    Read once into memory (a :class:`~bodyjax.data.pipeline.ArraySource`) when they take at most
    ``config.memory_records_mb`` MiB, else a view that decodes each record as it is read. The two
    give the same records in the same order, so the same batches.
    """
    selected = _Select(source, keys)
    m = len(selected)
    if config.memory_records_mb <= 0 or m == 0:
        return selected
    first = selected[0]
    if m * sum(np.asarray(v).nbytes for v in first.values()) > config.memory_records_mb * 2 ** 20:
        return selected
    parts = [epochs.read(selected, np.arange(lo, min(lo + 256, m))) for lo in range(0, m, 256)]
    arrays = {k: np.concatenate([p[k] for p in parts]) for k in first}
    from bodyjax.data import pipeline  # noqa: PLC0415

    return pipeline.ArraySource(arrays, name)


class _Select:
    """A view of a source that reads only some fields of each record."""

    def __init__(self, source, keys: Sequence[str]):
        self.source, self.keys = source, tuple(keys)

    def __len__(self):
        return len(self.source)

    def __getitem__(self, i):
        r = self.source[int(i)]
        return {k: r[k] for k in self.keys if k in r}

    def __getitems__(self, indices):
        rs = (self.source.__getitems__(list(indices)) if hasattr(self.source, "__getitems__")
              else [self.source[int(i)] for i in indices])
        return [{k: r[k] for k in self.keys if k in r} for r in rs]


# ----------------------------------------------------------------------------------------------
# Stage 1: the lifter


def lifter_visibility(keypoint_visible: np.ndarray, config: LoopConfig) -> np.ndarray:
    """The keypoint mask the lifter sees, ``(M, K)``.

    ``'labelled'`` (default) follows the COCO convention that the body keypoints are labelled even
    when occluded (their positions are in the record): with the strict occlusion flag the
    discriminator could tell rotated fakes from real poses by the pattern of missing keypoints
    alone. ``'record'`` uses ``keypoint_visible`` as it is.
    """
    vis = np.array(keypoint_visible, np.float32)
    if config.lifter_visibility == "labelled" and config.keypoint_set == "coco17":
        vis[:, 5:] = 1.0  # shoulders .. ankles
    elif config.lifter_visibility == "labelled":
        vis[:] = 1.0
    elif config.lifter_visibility != "record":
        raise ValueError(f"LoopConfig.lifter_visibility must be 'labelled' or 'record', got "
                         f"{config.lifter_visibility!r}")
    return vis


def fit_keypoints3d(template: body.BodyTemplate, fits: body.BodyParams) -> np.ndarray:
    """The fits' 3D keypoints in the lifter's pixel units ``(x_img, y_img, s·z)``, ``(M, K, 3)``."""
    return np.asarray(_fit_keypoints3d(template, fits))


@jax.jit
def _fit_keypoints3d(template, fits):
    out = body.forward_subset(template, fits, jnp.zeros((fits.scale.shape[0], 1), jnp.int32))
    return jnp.concatenate([out.keypoints2d, out.keypoints[..., 2:] * fits.scale[:, None, None]], -1)


def train_keypoints(data: Data) -> dict:
    """The training split's 2D keypoints and visibility (small arrays, read without the pixels)."""
    return epochs.read(_Select(data.train, ("keypoints", "keypoint_visible")), np.arange(len(data.train)))


def lifter_stage(state: LoopState, template, data: Data, config: LoopConfig, progress=None):
    """Stage 1: trains the lifter; returns ``(state, metrics)``."""
    kp = train_keypoints(data)
    arrays = {"keypoints": kp["keypoints"], "keypoint_visible": lifter_visibility(kp["keypoint_visible"], config)}
    with_targets = bool(state.has_fits)
    # Round 1 has no fits: zero targets with mask 0 (and μ = 0), so that every round trains with one
    # compiled step.
    m = len(kp["keypoints"])
    arrays["target_keypoints3d"] = (fit_keypoints3d(template, state.fits).astype(np.float32) if with_targets
                                    else np.zeros(kp["keypoints"].shape[:2] + (3,), np.float32))
    arrays["target_keypoints3d_mask"] = ((~np.asarray(state.fit_flagged)).astype(np.float32) if with_targets
                                         else np.zeros((m,), np.float32))
    if config.lifter_keypoints in ("corpus", "both"):
        if data.corpus is None:
            raise ValueError("LoopConfig.lifter_keypoints asks for a 2D corpus but the data has none "
                             "(config.data.lifter_corpus)")
        c = len(data.corpus["keypoints"])
        corpus = {"keypoints": np.asarray(data.corpus["keypoints"], np.float32),
                  "keypoint_visible": np.asarray(data.corpus["keypoint_visible"], np.float32)}
        corpus["target_keypoints3d"] = np.zeros((c,) + arrays["target_keypoints3d"].shape[1:], np.float32)
        corpus["target_keypoints3d_mask"] = np.zeros((c,), np.float32)
        if config.lifter_keypoints == "corpus" and not with_targets:
            arrays = corpus
        else:
            arrays = {k: np.concatenate([arrays[k], corpus[k]]) for k in arrays}
    elif config.lifter_keypoints != "images":
        raise ValueError(f"LoopConfig.lifter_keypoints must be 'images', 'corpus' or 'both', got "
                         f"{config.lifter_keypoints!r}")
    cfg = config.lifter
    n = len(arrays["keypoints"])
    bs = max(1, min(cfg.batch_size, n))
    total = cfg.num_epochs * (n // bs)
    seed = stage_seed(state)
    key = stage_rng(state)
    no_dense = np.zeros((bs, 0, 2), np.float32)

    def batches(epoch):
        for b in epochs.array_batches(arrays, bs, seed, epoch):
            yield Batch(dense_xy=no_dense, dense_vertex=np.zeros((bs, 0), np.int32),
                        dense_mask=np.zeros((bs, 0), np.float32), keypoints=b["keypoints"],
                        keypoint_visible=b["keypoint_visible"],
                        target_keypoints3d=b["target_keypoints3d"],
                        target_keypoints3d_mask=b["target_keypoints3d_mask"])

    def step(s, batch, i):
        mu = (lifter.joint_weight_schedule(i, total, cfg.mu_start, cfg.mu_end, cfg.mu_schedule)
              if with_targets else 0.0)
        return lifter.train_step(s, batch, jax.random.fold_in(key, i), mu)

    new, history = epochs.run_epochs(state.lifter, step, batches, cfg.num_epochs, progress)
    last = {f"lifter/{k}": v[-1] for k, v in history.items() if k != "seconds"}
    last["lifter/poses"] = n
    return _advance(state, lifter=new), last


# ----------------------------------------------------------------------------------------------
# Stage 2: the registration


def network_maps(state: LoopState, records: Mapping[str, np.ndarray], config: LoopConfig,
                 predicted: bool) -> Optional[np.ndarray]:
    """The regressor's input maps of some records: the predictor's, or the labels (``None`` for RGB)."""
    if not config.uses_maps:
        return None
    if predicted:
        return np.asarray(iuv_net.predict(state.iuv_net, records["image"], config.chunk))
    return np.asarray(records["iuv"])


def predict_records(state: LoopState, template, records: Mapping[str, np.ndarray], config: LoopConfig,
                    predicted_maps: bool = True, with_vertices: bool = False) -> regressor.Prediction:
    """The regressor's prediction for stacked records (their images or maps)."""
    maps = network_maps(state, records, config, predicted_maps)
    return regressor.predict(state.regressor, template, images=records["image"], iuv=maps,
                             batch_size=config.chunk, with_vertices=with_vertices)


def registration_stage(state: LoopState, template, data: Data, config: LoopConfig, progress=None):
    """Stage 2: registers every training image; returns ``(state, metrics)``."""
    size = (config.image_size, config.image_size)
    later = bool(state.has_fits)
    reg_config = config.registration if later else config.registration_first
    m = len(data.train)
    keys = POINT_KEYS + (("image", "iuv") if later else ())
    fits, reports, objectives = [], [], []
    # Host arrays in and out: the regressor's prediction is laid out on its device mesh, and an
    # argument with another layout than round 1's T-pose would compile the fit again.
    host = functools.partial(jax.tree_util.tree_map, np.asarray)
    for idx, records in epochs.chunks(_Select(data.train, keys), config.registration_chunk):
        batch = _points_batch(records)
        if config.use_lifter_depths:
            vis = lifter_visibility(records["keypoint_visible"], config)
            batch = batch.replace(keypoint_depth=lifter.predict_depths(state.lifter, records["keypoints"], vis),
                                  keypoint_depth_mask=vis)
        init = host(predict_records(state, template, records, config).params) if later else None
        p, r = registration.register(template, batch, init, reg_config, size)
        if not later and config.registration_relax is not None and config.registration_relax.num_steps > 0:
            # EXTENSION: round 1 continues from its stiff fit with a softer body.
            p, r = registration.register(template, batch, host(p), config.registration_relax, size)
        p = host(p)
        n = len(idx)
        if config.keep_best_fits and later:
            old = _pad_index(state.fits, idx, len(records["keypoints"]))
            objective = lambda params: np.asarray(registration.data_objective(  # noqa: E731
                template, batch, params, config.registration, size))[:n]
            objectives.append((objective(p), objective(old)))
        fits.append(jax.tree_util.tree_map(lambda a: np.asarray(a)[:n], p))
        reports.append(jax.tree_util.tree_map(lambda a: np.asarray(a)[:n], r))
        if progress:
            progress(idx[-1] + 1, m)
    fits = epochs.concatenate(fits)
    report = epochs.concatenate(reports)
    flagged = np.asarray(report.flagged)
    stats = {
        "registration/loss": float(np.mean(report.loss)),
        "registration/dense_residual_px": float(np.mean(report.dense_residual_px)),
        "registration/keypoint_residual_px": float(np.mean(report.keypoint_residual_px)),
        "registration/flagged_fraction": float(np.mean(report.flagged)),
        "registration/diverged": int(np.sum(report.diverged)),
    }
    if objectives:
        fits, flagged, replace = keep_best(
            jax.tree_util.tree_map(np.asarray, state.fits), np.concatenate([o[1] for o in objectives]),
            np.asarray(state.fit_flagged), fits, np.concatenate([o[0] for o in objectives]), flagged)
        stats["registration/replaced"] = int(np.sum(replace))
        stats["registration/replaced_fraction"] = float(np.mean(replace))
    else:
        stats["registration/replaced"] = m
        stats["registration/replaced_fraction"] = 1.0
    fits = jax.tree_util.tree_map(jnp.asarray, fits)
    return _advance(state, fits=fits, fit_flagged=jnp.asarray(flagged), has_fits=jnp.asarray(True)), stats


def keep_best(old: body.BodyParams, old_objective: np.ndarray, old_flagged: np.ndarray,
              new: body.BodyParams, new_objective: np.ndarray, new_flagged: np.ndarray):
    """SPIN's fits dictionary: per image, the new fit replaces the stored one only when it is better.

    The stored fit stays when it is trusted and the new one is flagged or has image terms no lower
    (``new_objective >= old_objective``); a flagged stored fit is always replaced.

    Args:
      old, new: :class:`~bodyjax.body.BodyParams` ``(M,)`` (NumPy).
      old_objective, new_objective: ``(M,)`` :func:`bodyjax.registration.data_objective` of each on
        the same images with the same weights.
      old_flagged, new_flagged: ``(M,)`` bool.

    Returns:
      ``(fits, flagged, replaced)``: the kept fits, their flags and the ``(M,)`` bool replacement mask.
    """
    replace = ~(~old_flagged & (new_flagged | (new_objective >= old_objective)))
    fits = jax.tree_util.tree_map(
        lambda n, o: np.where(replace.reshape((-1,) + (1,) * (np.ndim(n) - 1)), n, o), new, old)
    return fits, np.where(replace, new_flagged, old_flagged), replace


def _pad_index(params: body.BodyParams, idx: np.ndarray, size: int) -> body.BodyParams:
    """The rows ``idx`` of ``params``, padded by wrapping to ``size`` rows (the chunk's shape)."""
    full = np.concatenate([idx, idx[np.arange(size - len(idx)) % len(idx)]]) if size > len(idx) else idx
    return jax.tree_util.tree_map(lambda a: np.asarray(a)[full], params)


# ----------------------------------------------------------------------------------------------
# Stage 3: the regressor


def regressor_source(data: Data, state: LoopState, config: LoopConfig, template=None,
                     maps: Optional[np.ndarray] = None):
    """The regressor's training records: the images (the two-stage regressor: only their maps, no
    RGB) joined with their targets θ_fit and weights, then (``config.fit_views``, which needs the
    ``template``) this round's rendered views of the fits.

    ``maps``: optional ``(M, H, W, 3)`` uint8 input maps of the training images that replace the
    records' ``iuv`` labels (the part / IUV predictor's, :func:`predicted_train_maps`).
    """
    weight = (~np.asarray(state.fit_flagged)).astype(np.float32) if config.skip_flagged_fits \
        else np.ones(len(data.train), np.float32)
    extra = sample.params_to_record(jax.tree_util.tree_map(np.asarray, state.fits), "target")
    extra["target_weight"] = weight
    from bodyjax.data import pipeline  # noqa: PLC0415

    # The two-stage regressor reads only the maps: its records carry no image (nor its decoding,
    # warp and colour jitter).
    keys = ("has_gt",) + POINT_KEYS + (() if config.uses_maps else ("image",))
    if maps is None:
        keys += ("iuv",)
    else:
        extra["iuv"] = maps
    source = pipeline.JoinedSource(stage_records(data.train, keys, config, "the regressor's records"), extra)
    if config.fit_views.per_fit <= 0:
        return source
    if template is None:
        raise ValueError("regressor_source: config.fit_views.per_fit > 0 renders the fits, so it needs the "
                         "template (the body)")
    max_points = int(np.shape(data.train[0]["dense_xy"])[0])
    views = fit_views.make_records(template, jax.tree_util.tree_map(np.asarray, state.fits), weight,
                                   config.image_size, max_points, stage_seed(state), config.fit_views)
    if views is None:
        return source
    views = {k: v for k, v in views.items() if k in source[0]}    # no image: the maps are read
    return pipeline.ConcatSource(source, pipeline.ArraySource(views, "fit views"))


def predicted_train_maps(state: LoopState, data: Data, config: LoopConfig, directory: str,
                         progress=None) -> np.ndarray:
    """The part / IUV predictor's maps of every training image, computed once for the stage.

    The regressor trains on the predicted maps (as it reads them at test time), augmented with
    their records. They are written to a memory-mapped ``.npy`` in ``directory`` (a split's maps
    are not held in memory) and returned as that read-only array.
    """
    m = len(data.train)
    first = data.train[0]["image"]
    path = os.path.join(directory, "train_maps.npy")
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(m,) + tuple(np.shape(first)[:2]) + (3,))
    for idx, records in epochs.chunks(_Select(data.train, ("image",)), config.chunk):
        out[idx] = iuv_net.predict(state.iuv_net, records["image"], config.chunk)[:len(idx)]
        if progress:
            progress(idx[-1] + 1, m)
    out.flush()
    del out
    return np.load(path, mmap_mode="r")


def regressor_stage(state: LoopState, template, data: Data, config: LoopConfig, progress=None):
    """Stage 3: trains the regressor on the fits (flagged fits get no regression target)."""
    with tempfile.TemporaryDirectory(prefix="bodyjax_maps_") as directory:
        maps = None
        if config.uses_maps and config.regressor_maps == "predicted":
            maps = predicted_train_maps(state, data, config, directory)
        return _train_regressor(state, template, regressor_source(data, state, config, template, maps),
                                config, progress)


def _train_regressor(state: LoopState, template, source, config: LoopConfig, progress=None):
    cfg = config.regressor
    mesh = regressor.make_mesh()
    bs = min(cfg.batch_size, len(source)) // mesh.size * mesh.size
    if bs == 0:
        raise ValueError(f"the regressor needs at least {mesh.size} training images (one per device)")
    steps = len(source) // bs
    schedule = _schedule(cfg.learning_rate, cfg.lr_final_fraction, cfg.num_epochs * steps)
    seed = stage_seed(state)
    mirror = augment.MirrorTables.of(template)
    transform = augment.Augment(mirror, cfg.image_size,
                                config.augment.for_maps() if config.uses_maps else config.augment)

    def batches(epoch):
        for records in epochs.record_batches(source, bs, seed, epoch, [transform],
                                             worker_count=config.workers, read_threads=config.read_threads,
                                             shard_by_process=config.shard_by_process):
            yield sample.to_batch(records, with_gt=False)

    def step(s, batch, i):
        return regressor.train_step(s, batch, template, schedule(i), mesh)

    new, history = epochs.run_epochs(state.regressor, step, batches, cfg.num_epochs, progress)
    last = {f"regressor/{k}": v[-1] for k, v in history.items() if k != "seconds"}
    return _advance(state, regressor=new), last


# ----------------------------------------------------------------------------------------------
# Stage 4: evaluation


def canonical_bone_sum(template: body.BodyTemplate) -> float:
    """Bone-length sum (metres) of the average skeleton: the template's rest joints (the paper's
    canonical skeleton for the rescaled MPJPE, after Zhou et al. 2017)."""
    return float(metrics.bone_length_sum(template.joints, template.parents))


def pose_metrics(pred_joints, gt_joints, parents, canonical_sum: float, chunk: int = 64) -> dict:
    """MPJPE (bone-length rescaled to the canonical skeleton, the paper's protocol), the same rescaled
    to each target's own skeleton, root-aligned MPJPE, PA-MPJPE and PCK/AUC, all in mm (means over
    the people).

    The per-person errors are computed ``chunk`` people at a time (the last chunk padded), so every
    split's size runs one compiled program; the means are taken on the host in float64.
    """
    return {k: float(np.mean(v)) for k, v in pose_errors(pred_joints, gt_joints, parents, canonical_sum,
                                                         chunk).items()}


def pose_errors(pred_joints, gt_joints, parents, canonical_sum: float, chunk: int = 64) -> dict:
    """The per-person errors of :func:`pose_metrics`: ``{name: (M,) float64 array}`` in mm (PCK and AUC
    per person as fractions). Paired comparisons of two predictors on the same people read these."""
    per_person = epochs.map_chunks(
        lambda a: _pose_errors(a["pred"], a["gt"], tuple(parents), jnp.float32(canonical_sum)),
        {"pred": np.asarray(pred_joints, np.float32), "gt": np.asarray(gt_joints, np.float32)}, chunk)
    return {k: np.asarray(v, np.float64) for k, v in per_person.items()}


@functools.partial(jax.jit, static_argnames=("parents",))
def _pose_errors(pred_joints, gt_joints, parents, canonical_sum):
    pred_mm = (pred_joints - pred_joints[:, :1]) * 1000.0
    gt_mm = gt_joints * 1000.0
    return {
        "mpjpe": metrics.mpjpe_rescaled(pred_mm, gt_mm, parents, reference=canonical_sum * 1000.0),
        "mpjpe_target": metrics.mpjpe_rescaled(pred_mm, gt_mm, parents),
        "mpjpe_root": metrics.mpjpe(pred_mm, gt_mm),
        "pa_mpjpe": metrics.pa_mpjpe(pred_mm, gt_mm),
        "pck150": metrics.pck(pred_mm, gt_mm, 150.0, align="procrustes"),
        "auc": metrics.auc(pred_mm, gt_mm, align="procrustes"),
    }


def body_points(template: body.BodyTemplate, params: body.BodyParams, chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """The 24 joints ``(M, 24, 3)`` and the keypoints ``(M, K, 3)`` of ``M`` parameter sets (host
    arrays), ``chunk`` at a time (one compiled program for every ``M``)."""
    return epochs.map_chunks(lambda p: _joints_and_keypoints(template, body.BodyParams(**p)),
                             {f: np.asarray(getattr(params, f)) for f in sample.PARAM_FIELDS}, chunk)


@jax.jit
def _joints_and_keypoints(template, params):
    out = body.forward_subset(template, params, jnp.zeros((params.scale.shape[0], 1), jnp.int32))
    return out.joints, out.keypoints


@jax.jit
def _lifter_errors(lifted, gt_rel, visible):
    """PA-MPJPE (mm, per person) of the lifted keypoints and of the same with every depth 0 (flat)."""
    flat = lifted.at[..., 2].set(0.0)
    return metrics.pa_mpjpe(lifted, gt_rel, visible), metrics.pa_mpjpe(flat, gt_rel, visible)


_pixel_error = jax.jit(metrics.pixel_error)


def mean_params(fits: body.BodyParams, weights: Optional[np.ndarray] = None) -> body.BodyParams:
    """The constant prediction a learner without 3D supervision can build: the mean of the fits.

    Per joint the normalised mean of the sign-aligned unit quaternions, the mean segment scales, the
    chordal mean of the global rotations (projected to a rotation) and the mean ``s`` and ``t``.
    Returns one :class:`~bodyjax.body.BodyParams` without batch axis.
    """
    from bodyjax.rotations import axis_angle_to_quaternion, quaternion_to_axis_angle, svd_orthogonalize  # noqa: PLC0415

    w = np.ones(fits.scale.shape[0]) if weights is None else np.asarray(weights, np.float64)
    w = w / max(w.sum(), 1e-12)
    q = np.asarray(axis_angle_to_quaternion(jnp.asarray(fits.pose)), np.float64)   # (M, 24, 4), w >= 0
    q = np.sum(w[:, None, None] * q, axis=0)
    pose = np.asarray(quaternion_to_axis_angle(jnp.asarray(q, jnp.float32)))
    from bodyjax.rotations import gram_schmidt  # noqa: PLC0415

    rot = np.sum(w[:, None, None] * np.asarray(gram_schmidt(jnp.asarray(fits.rotation)), np.float64), axis=0)
    mean = lambda a: np.tensordot(w, np.asarray(a, np.float64), axes=1).astype(np.float32)  # noqa: E731
    return body.BodyParams(pose=pose.astype(np.float32), segment_scales=mean(fits.segment_scales),
                           rotation=np.asarray(svd_orthogonalize(jnp.asarray(rot, jnp.float32))),
                           scale=mean(fits.scale), translation=mean(fits.translation))


#: Key of :func:`evaluate_stage`'s metrics under which the regressor's per-person test errors are
#: returned (``{metric name: (M,) float64 array}``, in the test split's order); not a scalar: the
#: experiment writes it to ``test_errors_round<r>.npz`` and keeps it out of the metrics' history.
PER_PERSON = "per_person"


def evaluate_stage(state: LoopState, template, data: Data, config: LoopConfig, progress=None):
    """Stage 4: errors of the fits (train), the regressor (test), the lifter (test) and the baselines
    (the training fits' mean; the flat lifter; the regressor as the run loaded it, when it came whole
    from a file: ``baseline/start_*``). With 3D ground truth, ``metrics[PER_PERSON]`` holds the per-person
    test PA-MPJPE and MPJPE of each prediction (the scalars are their means)."""
    out: dict = {"round": int(state.round) + 1}
    parents = template.parents
    canonical = canonical_bone_sum(template)
    train_gt = epochs.read(_Select(data.train, ("has_gt", "gt_joints3d")), np.arange(len(data.train)))
    if np.all(train_gt["has_gt"] > 0):
        fit_joints, _ = body_points(template, state.fits, config.chunk)
        for k, v in pose_metrics(fit_joints, train_gt["gt_joints3d"], parents, canonical, config.chunk).items():
            out[f"registration/train_{k}"] = v
    preds = {"": [], "oracle_": []} if config.uses_maps else {"": []}
    if state.regressor.config.test_flip:  # flip test-time averaging: its one-view prediction beside it
        preds["one_view_"] = []
    start = pretrained_regressor(config)
    if start is not None:
        preds["start_"] = []
    test_keys = ("image", "iuv", "keypoints", "keypoint_visible") + GT_KEYS
    gts, kps, vis_all = [], [], []
    for idx, records in epochs.chunks(_Select(data.test, test_keys), config.chunk):
        n = len(idx)
        maps = {predicted: network_maps(state, records, config, predicted)
                for predicted in ((True, False) if config.uses_maps else (True,))}
        for prefix in preds:
            reg = start if prefix == "start_" else state.regressor
            p = regressor.predict(reg, template, images=records["image"], iuv=maps[prefix != "oracle_"],
                                  batch_size=config.chunk, with_vertices=False,
                                  flip=False if prefix == "one_view_" else None)
            preds[prefix].append(jax.tree_util.tree_map(lambda a: np.asarray(a)[:n], (p.joints, p.keypoints2d)))
        gts.append({k: records[k][:n] for k in GT_KEYS})
        kps.append(records["keypoints"][:n])
        vis_all.append(records["keypoint_visible"][:n])
    gt = epochs.concatenate(gts)
    kp2d, vis = np.concatenate(kps), np.concatenate(vis_all)
    has_gt = bool(np.all(gt["has_gt"] > 0))
    per_person = {}
    for prefix, chunks_ in preds.items():
        joints, pred_kp = epochs.concatenate(chunks_)
        name = "baseline/start_" if prefix == "start_" else f"regressor/test_{prefix}"
        out[f"{name}pixel_error"] = float(np.mean(_pixel_error(pred_kp, kp2d, vis)))
        if has_gt:
            for k, v in pose_errors(joints, gt["gt_joints3d"], parents, canonical, config.chunk).items():
                out[f"{name}{k}"] = float(np.mean(v))
                if k in ("pa_mpjpe", "mpjpe"):
                    per_person[f"{name}{k}"] = v
    if has_gt:
        out.update(baselines(state, template, gt, kp2d, vis, config, canonical))
        _, gt_kp = body_points(template, sample.params_from_record(gt, "gt"), config.chunk)
        lvis = lifter_visibility(vis, config)
        lifted = lifter.lift(state.lifter, kp2d, lvis)
        ks = skeletons.get_keypoint_set(config.keypoint_set)
        gt_rel = (gt_kp - np.mean(gt_kp[:, np.asarray(ks.root)], 1, keepdims=True)) * 1000.0
        lifted_pa, flat_pa = _lifter_errors(jnp.asarray(lifted, jnp.float32), jnp.asarray(gt_rel, jnp.float32),
                                            jnp.asarray(lvis, jnp.float32))
        out["lifter/test_pa_mpjpe"] = float(np.mean(lifted_pa))
        out["baseline/flat_lifter_pa_mpjpe"] = float(np.mean(flat_pa))
    if config.uses_maps:
        from bodyjax.iuv_net import part_iou  # noqa: PLC0415

        ious = []
        for idx, records in epochs.chunks(_Select(data.test, ("image", "iuv")), config.chunk):
            pred_maps = network_maps(state, records, config, True)[:len(idx)]
            ious.append(part_iou(pred_maps, records["iuv"][:len(idx)])[1])
        out["dense/test_part_miou"] = float(np.mean(ious))
    if per_person:  # with a fingerprint of each person's true joints: which people, in which order
        per_person["test/gt_fingerprint"] = np.sum(np.abs(np.asarray(gt["gt_joints3d"], np.float64)), axis=(1, 2))
        out[PER_PERSON] = per_person
    return _advance(state), out


def baselines(state: LoopState, template, gt: Mapping[str, np.ndarray], kp2d, vis, config: LoopConfig,
              canonical: float) -> dict:
    """The constant prediction of the training fits' mean, scored on the test split."""
    weight = (~np.asarray(state.fit_flagged)).astype(np.float64) if bool(state.has_fits) else None
    mean = mean_params(jax.tree_util.tree_map(np.asarray, state.fits), weight)
    m = len(kp2d)
    tiled = jax.tree_util.tree_map(lambda a: np.broadcast_to(a, (m,) + np.shape(a)), mean)
    joints, _ = body_points(template, tiled, config.chunk)
    return {f"baseline/mean_fit_{k}": v for k, v in pose_metrics(joints, gt["gt_joints3d"], template.parents,
                                                                  canonical, config.chunk).items()
            if k in ("mpjpe", "mpjpe_root", "pa_mpjpe", "pck150")}


# ----------------------------------------------------------------------------------------------


def run_stage(state: LoopState, template, data: Data, config: LoopConfig,
              progress: Optional[Callable] = None):
    """Runs the state's current stage; returns ``(next_state, metrics)``."""
    name = STAGES[int(state.stage)]
    fn = {"dense": dense_stage, "lifter": lifter_stage, "registration": registration_stage,
          "regressor": regressor_stage, "evaluate": evaluate_stage}[name]
    return fn(state, template, data, config, progress)


def run_round(state: LoopState, template, data: Data, config: LoopConfig) -> tuple[LoopState, dict]:
    """All remaining stages of the current round; returns the next round's state and its metrics."""
    metrics_out: dict = {}
    current = int(state.round)
    while int(state.round) == current:
        state, m = run_stage(state, template, data, config)
        m.pop(PER_PERSON, None)
        metrics_out.update(m)
    return state, metrics_out
