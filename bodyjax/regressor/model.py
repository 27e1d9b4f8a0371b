"""The body regressor (appendix section 4, eq. 13–14): configuration, state, loss, steps, prediction.

:func:`create_state` builds a :class:`RegressorState` (a ``flax.training.train_state.TrainState``
with ``batch_stats`` and the static :class:`RegressorConfig`); :func:`train_step` and
:func:`eval_step` are pure jitted functions of the state and a :class:`~bodyjax.batch.Batch`, as in
flax's ``examples/imagenet``; the epoch loop lives in the orchestration layer
(:mod:`bodyjax.loop.epochs`), and so does the augmentation (:mod:`bodyjax.data.augment`: the step
never sees how an image was warped).

Loss (eq. 13): ``L = α L_regress + β L_dense + γ L_KP`` with ``α = γ = 1``, ``β = 10`` (5.1).
``L_regress`` is eq. 14 on the head's representation (:mod:`bodyjax.regressor.head`); ``L_dense``
(eq. 8) poses the predicted body with :func:`bodyjax.body.forward_subset` on the batch's dense
vertices; ``L_KP`` (eq. 9, 2D part) uses its keypoints. Batch means (``L_regress`` weighted by the
batch's ``target_weight``, e.g. 0 for flagged registrations), so the learning rate does not depend on
the batch size. The learning rate is an argument of the step (Adam's is injected with
``optax.inject_hyperparams``), so one compiled step serves any optax schedule the loop evaluates.

Data parallelism: a 1-D device mesh with axis ``'batch'`` (:func:`make_mesh`); the batch is sharded
along it with a ``NamedSharding``, the state and the body are replicated, and XLA inserts the
gradient and BatchNorm all-reduces, so the result equals the one-device result up to round-off.
"""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Dict, NamedTuple, Optional, Tuple

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from bodyjax import body, camera, checks, losses, pretrained
from bodyjax.batch import Batch
from bodyjax.regressor import mirror
from bodyjax.regressor.head import POSE_HEADS, decode_head, regression_vectors, split_head
from bodyjax.regressor.network import HEADS, INPUTS, Regressor, input_channels, network_input

Array = jnp.ndarray


@dataclasses.dataclass(frozen=True)
class RegressorConfig:
    """The regressor: network and training (defaults: the paper's, appendix 4 and 5.1).

    Network (static: part of the train state):
      depth: ResNet depth (18, 34: basic blocks; 50 (the paper), 101, 152: bottleneck).
      width: channels of the first ResNet stage (64 standard).
      image_size: side of the square network input, pixels (224 in the paper).
      input: ``'rgb'`` (the paper), ``'parts'`` or ``'iuv'`` (extensions, see
        :mod:`bodyjax.regressor.network`).
      pose_head: ``'quaternion'`` (the paper, 132 outputs), ``'rot6d'`` (SPIN) or ``'matrix_svd'`` (NBF).
      typical_scale: normalised weak-perspective scale of the rest output (≈ 1: a person filling
        the frame).
      head_init_std: std of the head's initial kernel.
      log_clip: the head's log-scales are clipped to ``±log_clip`` before ``exp``.
      zero_init_residual: see :class:`bodyjax.resnet.ResNet`.
      dtype: computation dtype of the backbone (``'float32'`` or ``'bfloat16'``).
      head: ``'linear'`` (the paper: one dense layer) or ``'ief'`` (EXTENSION: HMR's iterative error
        feedback, ``head_iterations`` passes of two dense layers of ``head_hidden`` units).
      head_hidden, head_iterations: the ``'ief'`` head's width and number of passes.
      coords: EXTENSION (CoordConv): append the pixels' x, y coordinates to the network input.
    Training:
      learning_rate: Adam learning rate (1e-4, fine-tuning an ImageNet-pretrained ResNet50).
      lr_final_fraction: a round's learning rate is cosine-decayed to this fraction (1.0 = constant,
        the paper's setting).
      num_epochs: epochs per deform-and-learn round (30).
      batch_size: images per step (30; a multiple of the device count when data parallel).
      alpha, beta, gamma: weights of L_regress, L_dense, L_KP in eq. (13) (1, 10, 1).
      joints3d_weight: EXTENSION (0 = eq. 13 as written): weight of a fourth term, the mean squared
        distance (m²) between the root-relative 3D joints of the prediction and of the target fit.
      smooth_l1_beta: threshold of the smooth L1 of eq. (14).
      dense_reduction: ``'mean'`` or ``'sum'`` over the correspondences (eq. 8).
      pretrained: loaded before the first round, or ``''``: a file of :func:`save_params` (the whole
        network, e.g. the shipped :data:`PRETRAINED_IUV_48`) or a torchvision-layout ResNet weights
        file (``.safetensors`` / ``.npz``, into the backbone; :mod:`bodyjax.pretrained`).
      freeze_stem: EXTENSION: the backbone's stem (its first convolution and BatchNorm, the
        :data:`STEM` parameters) gets no gradient, so a pretrained stem stays as it is (its
        BatchNorm statistics still follow the data). On a CPU at 48 px the stem's backward pass is
        about 43 % of the network's forward and backward pass (BENCHMARKS).
    Prediction:
      test_flip: EXTENSION: :func:`predict` averages the prediction on each input with the mirrored
        prediction on its mirror image (:mod:`bodyjax.regressor.mirror`); training is unchanged.
    """

    depth: int = 50
    width: int = 64
    image_size: int = 224
    input: str = "rgb"
    pose_head: str = "quaternion"
    typical_scale: float = 1.0
    head_init_std: float = 1e-3
    log_clip: float = 5.0
    zero_init_residual: bool = True
    dtype: str = "float32"
    head: str = "linear"
    head_hidden: int = 512
    head_iterations: int = 3
    coords: bool = False
    learning_rate: float = 1e-4
    lr_final_fraction: float = 1.0
    num_epochs: int = 30
    batch_size: int = 30
    alpha: float = 1.0
    beta: float = 10.0
    gamma: float = 1.0
    joints3d_weight: float = 0.0
    smooth_l1_beta: float = 1.0
    dense_reduction: str = "mean"
    pretrained: str = ""
    freeze_stem: bool = False
    test_flip: bool = False

    def __post_init__(self):
        checks.check_choice("RegressorConfig.pose_head", self.pose_head, POSE_HEADS)
        checks.check_choice("RegressorConfig.input", self.input, INPUTS)
        checks.check_choice("RegressorConfig.dense_reduction", self.dense_reduction, ("mean", "sum"))
        checks.check_choice("RegressorConfig.head", self.head, HEADS)
        if self.typical_scale <= 0:
            raise ValueError(f"RegressorConfig.typical_scale must be positive, got {self.typical_scale}")
        for name in ("image_size", "batch_size", "width", "head_hidden", "head_iterations"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"RegressorConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not float(self.joints3d_weight) >= 0.0:
            raise ValueError(f"RegressorConfig.joints3d_weight must be >= 0, got {self.joints3d_weight}")
        if not 0.0 <= self.lr_final_fraction <= 1.0:
            raise ValueError(f"RegressorConfig.lr_final_fraction must be in [0, 1], got {self.lr_final_fraction}")

    def network(self) -> Regressor:
        """The Flax module of this configuration (one object per network configuration, so that
        states created separately have equal ``apply_fn`` and share the compiled steps)."""
        return _network(self.depth, self.width, self.pose_head, self.typical_scale, self.head_init_std,
                        self.zero_init_residual, self.dtype, self.head, int(self.head_hidden),
                        int(self.head_iterations), bool(self.coords))


@functools.lru_cache(maxsize=None)
def _network(depth, width, pose_head, typical_scale, head_init_std, zero_init_residual, dtype,
             head, head_hidden, head_iterations, coords) -> Regressor:
    return Regressor(depth=depth, width=width, pose_head=pose_head, typical_scale=typical_scale,
                     head_init_std=head_init_std, zero_init_residual=zero_init_residual, dtype=dtype,
                     head=head, head_hidden=head_hidden, head_iterations=head_iterations, coords=coords)


def cpu_config(**overrides) -> RegressorConfig:
    """The CPU-sized configuration of the tools: ResNet18 at width 32, 64-px inputs, lr 1e-3."""
    return dataclasses.replace(RegressorConfig(depth=18, width=32, image_size=64, learning_rate=1e-3),
                               **overrides)


class RegressorState(train_state.TrainState):
    """``TrainState`` (step, params, opt_state, static apply_fn/tx) + ``batch_stats`` and the config."""

    batch_stats: Any = None
    config: RegressorConfig = flax.struct.field(pytree_node=False, default=RegressorConfig())


def init_key(rng) -> Array:
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


@functools.lru_cache(maxsize=None)
def _optimizer(learning_rate: float) -> optax.GradientTransformation:
    # One optimiser object per learning rate, so that states created separately have equal static
    # fields and share compilations. The rate itself is a hyper-parameter in the optimiser state.
    return optax.inject_hyperparams(optax.adam)(learning_rate=learning_rate)


def create_state(rng, config: RegressorConfig = RegressorConfig(), *, abstract: bool = False) -> RegressorState:
    """Initialises the network (at ``config.image_size``) and Adam(``config.learning_rate``).

    Args:
      rng: PRNG key or int seed (see :func:`init_key`).
      config: the :class:`RegressorConfig`.
      abstract: only the variables' shapes and dtypes (``jax.ShapeDtypeStruct``, no optimiser
        state), for :func:`load_params` to fill from a file: nothing is initialised or compiled
        (a ResNet's initialisation compiles for seconds on a CPU).
    """
    model = config.network()
    init = _init_fn(config)
    key = init_key(rng)
    if abstract:
        variables = jax.eval_shape(init, key)
        return RegressorState(step=jnp.asarray(0, jnp.int32), apply_fn=model.apply, params=variables["params"],
                              tx=_optimizer(float(config.learning_rate)), opt_state=None,
                              batch_stats=variables["batch_stats"], config=config)
    variables = init(key)
    state = RegressorState.create(apply_fn=model.apply, params=variables["params"],
                                  tx=_optimizer(float(config.learning_rate)),
                                  batch_stats=variables["batch_stats"], config=config)
    return _canonical(state)


@functools.lru_cache(maxsize=None)
def _init_fn(config: RegressorConfig):
    """One jitted initialisation per configuration (states created again reuse its program)."""
    x = jnp.zeros((1, config.image_size, config.image_size, input_channels(config.input)), jnp.float32)
    model = config.network()

    def init_network(key):
        return model.init(key, x, train=False)

    return jax.jit(init_network)


def _canonical(state: RegressorState) -> RegressorState:
    """``step`` as an int32 array (a Python int would be weakly typed and retrace the jitted step)."""
    return state.replace(step=jnp.asarray(state.step, jnp.int32))


# ----------------------------------------------------------------------------------------------
# Loss and steps


def loss_terms(out: Array, batch: Batch, template: body.BodyTemplate,
               config: RegressorConfig) -> Tuple[Array, Dict[str, Array]]:
    """Eq. (13) for a batch of head outputs.

    Args:
      out: ``(B, head_size)`` head outputs.
      batch: a :class:`~bodyjax.batch.Batch` with ``target`` and ``target_weight``; its pixels are
        those of the network-input-sized images (the augmentation resized them).
      template: the body (its keypoint set must match the batch's keypoints).
      config: the :class:`RegressorConfig`.

    Returns:
      ``(loss, terms)``: the scalar loss and the batch means of ``l_regress``, ``l_dense``, ``l_kp``
      and (when ``config.joints3d_weight > 0``) ``l_joints3d``.
    """
    size = (config.image_size, config.image_size)
    raw = split_head(out, config.pose_head)
    pred = decode_head(out, config.pose_head, config.log_clip)
    target = camera.normalize_params(batch.target, size)
    p, t, m = regression_vectors(raw, target, config.pose_head)
    l_reg = losses.l_regress(p, t, m, config.smooth_l1_beta)
    posed = body.forward_subset(template, pred, batch.dense_vertex)
    l_dense = losses.l_dense(posed.vertices2d, camera.normalize_points(batch.dense_xy, size),
                             batch.dense_mask, config.dense_reduction)
    l_kp = losses.l_keypoints(posed.keypoints2d, camera.normalize_points(batch.keypoints, size),
                              batch.keypoint_visible)
    w = batch.target_weight
    reg = jnp.sum(w * l_reg) / jnp.maximum(jnp.sum(w), 1.0)
    loss = config.alpha * reg + config.beta * jnp.mean(l_dense) + config.gamma * jnp.mean(l_kp)
    terms = {"l_regress": reg, "l_dense": jnp.mean(l_dense), "l_kp": jnp.mean(l_kp)}
    if config.joints3d_weight > 0:
        # EXTENSION: the fit's 3D joints as a target (root-relative, camera frame, metres)
        target_joints = body.forward_subset(template, target, jnp.zeros((w.shape[0], 1), jnp.int32)).joints
        d = (posed.joints - posed.joints[:, :1]) - (target_joints - target_joints[:, :1])
        l_j = jnp.mean(jnp.sum(d ** 2, axis=-1), axis=-1)
        terms["l_joints3d"] = jnp.sum(w * l_j) / jnp.maximum(jnp.sum(w), 1.0)
        loss = loss + config.joints3d_weight * terms["l_joints3d"]
    return loss, terms


def _inputs(state: RegressorState, batch: Batch) -> Array:
    return network_input(state.config.input, batch.image, batch.iuv)


#: The backbone's stem: the parameters :attr:`RegressorConfig.freeze_stem` keeps.
STEM = ("conv1", "bn1")


def _frozen_stem(params):
    """``params`` with the backbone's stem behind ``stop_gradient`` (its gradient is exactly 0)."""
    backbone = dict(params["backbone"])
    for name in STEM:
        backbone[name] = jax.lax.stop_gradient(backbone[name])
    return dict(params, backbone=backbone)


def _train_step(state: RegressorState, batch: Batch, template, learning_rate):
    x = _inputs(state, batch)

    def loss_fn(params):
        if state.config.freeze_stem:  # a zero gradient: Adam's moments stay 0, so does the update
            params = _frozen_stem(params)
        out, updates = state.apply_fn({"params": params, "batch_stats": state.batch_stats}, x,
                                      train=True, mutable=["batch_stats"])
        loss, terms = loss_terms(out, batch, template, state.config)
        return loss, (terms, updates["batch_stats"])

    (loss, (terms, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    opt_state = state.opt_state
    opt_state.hyperparams["learning_rate"] = jnp.asarray(learning_rate, jnp.float32)
    updates, opt_state = state.tx.update(grads, opt_state, state.params)
    state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                          opt_state=opt_state, batch_stats=batch_stats)
    return state, dict(terms, loss=loss, grad_norm=optax.global_norm(grads))


def _eval_step(state: RegressorState, batch: Batch, template):
    out = state.apply_fn({"params": state.params, "batch_stats": state.batch_stats}, _inputs(state, batch),
                         train=False)
    loss, terms = loss_terms(out, batch, template, state.config)
    return dict(terms, loss=loss)


def make_mesh(devices=None) -> Mesh:
    """A 1-D mesh with axis ``'batch'`` over ``devices`` (default: all of them)."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), ("batch",))


@functools.lru_cache(maxsize=None)
def _compiled(kind: str, mesh: Mesh):
    repl, data = NamedSharding(mesh, P()), NamedSharding(mesh, P("batch"))
    if kind == "train":
        return jax.jit(_train_step, in_shardings=(repl, data, repl, repl), out_shardings=(repl, repl),
                       donate_argnums=(0,))
    return jax.jit(_eval_step, in_shardings=(repl, data, repl), out_shardings=repl)


_STEP_FIELDS = ("dense_xy", "dense_vertex", "dense_mask", "keypoints", "keypoint_visible", "target",
                "target_weight")


def _step_batch(state: RegressorState, batch: Batch, mesh: Mesh, template) -> Batch:
    """Checks the batch (outside jit) and keeps only what the step reads."""
    if not isinstance(batch, Batch):
        raise ValueError(f"regressor step: batch must be a bodyjax.batch.Batch, got {type(batch).__name__}")
    cfg = state.config
    need = ("image",) if cfg.input == "rgb" else ("iuv",)
    batch.check("regressor step", template.num_keypoints, require=need + ("target",))
    size = batch.image.shape[1:3] if cfg.input == "rgb" else batch.iuv.shape[1:3]
    if tuple(size) != (cfg.image_size, cfg.image_size):
        raise ValueError(f"regressor step: batch.{need[0]} is {tuple(size)} px, the network takes "
                         f"{cfg.image_size} px (resize in the input pipeline, bodyjax.data.augment)")
    if batch.size % mesh.size:
        raise ValueError(f"regressor step: batch size {batch.size} is not a multiple of the "
                         f"{mesh.size} devices of the mesh")
    keep = {f: getattr(batch, f) for f in _STEP_FIELDS}
    keep[need[0]] = getattr(batch, need[0])
    if keep["target_weight"] is None:
        keep["target_weight"] = np.ones((batch.size,), np.float32)
    return Batch(**keep)


def replicate(mesh: Mesh, *trees):
    """``trees`` placed replicated on ``mesh`` (a no-op for arrays already placed so).

    Arrays produced by a step carry the mesh in their type; placing the first state the same way
    keeps every step on one compilation.
    """
    return jax.device_put(trees, NamedSharding(mesh, P()))


def train_step(state: RegressorState, batch: Batch, template: body.BodyTemplate,
               learning_rate: Optional[float] = None, mesh: Optional[Mesh] = None,
               ) -> Tuple[RegressorState, Dict[str, Array]]:
    """One Adam step on eq. (13) (jitted; the batch sharded over ``mesh``, the state replicated).

    Args:
      state: :class:`RegressorState` (its buffers are donated: use the returned state).
      batch: a :class:`~bodyjax.batch.Batch` of ``B`` people (a multiple of the mesh size) with the
        network input (``image`` for ``'rgb'``, ``iuv`` maps otherwise) at ``config.image_size``,
        the dense correspondences and keypoints in those pixels, ``target`` (θ_fit, pixels) and
        optionally ``target_weight``.
      template: the body.
      learning_rate: this step's rate (a schedule's value); ``None`` = ``config.learning_rate``.
      mesh: device mesh (default: all devices).

    Returns:
      ``(state, metrics)`` with scalar ``loss, l_regress, l_dense, l_kp, grad_norm``.
    """
    mesh = make_mesh() if mesh is None else mesh
    batch = _step_batch(state, batch, mesh, template)
    lr = state.config.learning_rate if learning_rate is None else learning_rate
    state, template = replicate(mesh, _canonical(state), template)
    return _compiled("train", mesh)(state, batch, template, jnp.float32(lr))


def eval_step(state: RegressorState, batch: Batch, template: body.BodyTemplate,
              mesh: Optional[Mesh] = None) -> Dict[str, Array]:
    """The loss terms of eq. (13) in inference mode (BatchNorm running averages), no update."""
    mesh = make_mesh() if mesh is None else mesh
    batch = _step_batch(state, batch, mesh, template)
    state, template = replicate(mesh, _canonical(state), template)
    return _compiled("eval", mesh)(state, batch, template)


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


def _network_params(state: RegressorState, given: Array) -> body.BodyParams:
    """NORMALISED parameters the network predicts for ``given`` (any size; resized to its input)."""
    cfg = state.config
    x = network_input(cfg.input, image=given if cfg.input == "rgb" else None,
                      iuv=given if cfg.input != "rgb" else None)
    if x.shape[1:3] != (cfg.image_size, cfg.image_size):
        # label maps by nearest sampling (as the training augmentation warps them: hard one-hot parts)
        method = "linear" if cfg.input == "rgb" else "nearest"
        x = jax.image.resize(x, (x.shape[0], cfg.image_size, cfg.image_size, x.shape[-1]), method,
                             antialias=method == "linear")
    out = state.apply_fn({"params": state.params, "batch_stats": state.batch_stats}, x, train=False)
    return decode_head(out, cfg.pose_head, cfg.log_clip)


@functools.partial(jax.jit, static_argnames=("with_vertices", "size", "flip"))
def _predict_chunk(state: RegressorState, given: Array, template: body.BodyTemplate, size, with_vertices: bool,
                   flip: bool = False, charts: Optional[Array] = None):
    cfg = state.config
    if flip:  # one batch of both views: the network's BatchNorm is in inference mode
        other = (mirror.mirror_images(given) if cfg.input == "rgb"
                 else mirror.mirror_maps(given, template.part_mirror, charts))
        both = _network_params(state, jnp.concatenate([jnp.asarray(given), other], axis=0))
        b = given.shape[0]
        first, second = (jax.tree_util.tree_map(lambda a: a[:b], both),
                         jax.tree_util.tree_map(lambda a: a[b:], both))
        pn = mirror.average_params(first, mirror.mirror_params(second, template.joint_mirror))
    else:
        pn = _network_params(state, given)
    pp = camera.denormalize_params(pn, size)
    if with_vertices:
        posed = body.forward(template, pp)
        vertices = posed.vertices
    else:
        posed = body.forward_subset(template, pp, jnp.zeros((given.shape[0], 1), jnp.int32))
        vertices = None
    return pp, pn, vertices, posed.joints, posed.keypoints2d


def predict(state: RegressorState, template: body.BodyTemplate, images=None, iuv=None,
            batch_size: int = 64, with_vertices: bool = True, flip: Optional[bool] = None) -> Prediction:
    """Regresses the body of every image.

    Args:
      state: a trained :class:`RegressorState`.
      template: the body.
      images: ``(B, S, S, 3)`` uint8 RGB (the ``'rgb'`` input).
      iuv: ``(B, S, S, 3)`` uint8 label maps (the ``'parts'`` / ``'iuv'`` inputs: the part / IUV
        predictor's output, or rendered labels).
      batch_size: images per jitted call (the last chunk is padded, so one compilation).
      with_vertices: also return the full mesh (``(B, V, 3)``).
      flip: flip test-time averaging (EXTENSION, :mod:`bodyjax.regressor.mirror`): the mean of the
        prediction on each input and, mirrored back, on its mirror image (twice the network's
        compute). ``None``: ``state.config.test_flip``.

    Inputs of another size than ``config.image_size`` are resized (images linearly, label maps by
    nearest sampling, as the training augmentation resamples them; the normalised outputs do not
    depend on the resolution) and the outputs are returned in the pixels of the given inputs.

    Returns:
      :class:`Prediction` of host (NumPy) arrays.

    Raises:
      ValueError: the input the configuration needs is missing, not square, or wrongly shaped.
    """
    cfg = state.config
    name = "images" if cfg.input == "rgb" else "iuv"
    given = images if cfg.input == "rgb" else iuv
    if given is None:
        raise ValueError(f"predict: the {cfg.input!r} regressor needs `{name}`")
    given = np.asarray(given)
    s = checks.Shapes("predict")
    s.check(name, given, ("B", "S", "S", 3), "uint8" if name == "iuv" else None)
    b, size = given.shape[0], given.shape[1:3]
    if b == 0:
        raise ValueError(f"predict: {name} is empty")
    bs = max(1, min(batch_size, b))
    flip = bool(cfg.test_flip if flip is None else flip)
    charts = jnp.asarray(body.chart_mirror(template)) if flip and cfg.input != "rgb" else None
    chunks = []
    for lo in range(0, b, bs):
        idx = np.arange(lo, lo + bs) % b
        n = min(bs, b - lo)
        # to the host before slicing: a device-side slice or concatenation compiles per shape
        res = jax.device_get(_predict_chunk(state, given[idx], template, tuple(size), with_vertices,
                                                flip, charts))
        chunks.append(jax.tree_util.tree_map(lambda x, n=n: x[:n], res))
    cat = lambda *xs: np.concatenate(xs, axis=0)  # noqa: E731
    pp, pn, vertices, joints, kp = (jax.tree_util.tree_map(cat, *[c[i] for c in chunks])
                                    if chunks[0][i] is not None else None for i in range(5))
    return Prediction(params=pp, params_normalized=pn, vertices=vertices, joints=joints, keypoints2d=kp)


# ----------------------------------------------------------------------------------------------
# Whole-network weights (the project's pretrained regressor)

#: The network fields a weights file of :func:`save_params` must agree on with the config loading it.
NETWORK_FIELDS = ("depth", "width", "input", "pose_head", "typical_scale", "head", "head_hidden",
                  "head_iterations", "coords")
#: Marks a file of :func:`save_params` (torchvision state dicts have no such entry).
FORMAT = "bodyjax-regressor-1"


def save_params(path: str, state: RegressorState, metadata: Optional[dict] = None,
                dtype=np.float32) -> None:
    """Writes the whole network (backbone, head, BatchNorm statistics) and its config to ``path``.

    Args:
      path: the ``.npz`` file.
      state: the :class:`RegressorState`.
      metadata: optional JSON-able facts stored with them (how they were made, what they reach).
      dtype: storage dtype of the arrays (``np.float16`` halves the file; they are read back as
        float32).
    """
    info = {"format": FORMAT, "image_size": int(state.config.image_size),
            "network": {f: getattr(state.config, f) for f in NETWORK_FIELDS}, **(metadata or {})}
    pretrained.save_weights(path, jax.device_get({"params": state.params, "batch_stats": state.batch_stats}),
                            info, dtype)


def is_params_file(path: str) -> bool:
    """Whether ``path`` is an ``.npz`` written by :func:`save_params` (not a torchvision state dict)."""
    if not str(path).endswith(".npz"):
        return False
    try:
        return pretrained.read_weights(path, "path", "regressor")[1].get("format") == FORMAT
    except Exception:  # noqa: BLE001 - not ours (the caller reports unreadable files)
        return False


def load_params(state: RegressorState, path: str, field: str = "path") -> RegressorState:
    """``state`` with its whole network read from a file of :func:`save_params` (Adam restarts).

    Args:
      state: a state whose config's network fields (:data:`NETWORK_FIELDS`) match the file's.
      path: the file.
      field: how the caller names the path in messages (e.g. ``config.regressor.pretrained``).

    Raises:
      FileNotFoundError: naming ``field`` and the file.
      ValueError: naming the file and the field when it is unreadable, was made for another
        network, or lacks / mis-shapes a variable.
    """
    arrays, info = pretrained.read_weights(path, field, "regressor")
    pretrained.check_network(info, state.config, path, field, "config.regressor")
    v = pretrained.fill_variables({"params": state.params, "batch_stats": state.batch_stats}, arrays, path, field)
    return _canonical(state.replace(params=v["params"], batch_stats=v["batch_stats"],
                                    opt_state=state.tx.init(v["params"])))


#: The project's regressor pretrained on other synthetic people's 2D labels (IUV maps at 48 px,
#: ResNet18 at width 32; ``tools/pretrain_regressor.py`` rebuilds it).
PRETRAINED_IUV_48 = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets",
                                 "regressor_iuv_s48.npz")
#: :data:`PRETRAINED_IUV_48` after deform-and-learn's round 1 on 32,000 people of the same seed, read at
#: 64 px (their fits to the dense points and 2D keypoints as targets: still no 3D label; the ``:bench``
#: start; ``tools/pretrain_regressor.py --targets fits`` rebuilds it).
PRETRAINED_IUV_64_FITS = os.path.join(os.path.dirname(PRETRAINED_IUV_48), "regressor_iuv_s64_fits.npz")
