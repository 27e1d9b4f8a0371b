"""PyTorch references of the registration objective (eq. 7–12) for ``tools/bench_registration.py``.

The same per-sample objective as :func:`bodyjax.registration.register`, in the same normalised image
units ``(pixel − centre) / (max(H, W) / 2)`` and with the same weights,

    L = ω_dense L_dense + ω_KP L_KP + ω_scale L_scale + ω_angle L_angle + ω_det L_det,

written the way a careful PyTorch user would write it: batched tensor ops over the whole batch, the
24-joint kinematic chain as one 4×4 product per joint, ``torch.optim.Adam(lr)`` on the stacked
parameters of the batch (Adam is elementwise, so this is the same as one optimiser per sample).

Two ways to skin (``skin=``):

* ``'sparse'``: like ``register``, only the matched dense vertices and the keypoint vertices are
  posed. Their rest positions and skinning weights are gathered once per batch (as
  ``bodyjax.body.gather_points`` does), so a step costs ``O(B · (N + K·M))`` skinning work.
* ``'full'``: every template vertex is posed each step (``O(B · V)``, V = 13,380 for the default
  body) and the matched and keypoint vertices are indexed afterwards.

Both compute only the two image-plane rows of each skinning transform: the depth of a point is not
part of the objective without the lifter's depths (the benchmark has none), and XLA drops it from
bodyjax's program in the same way. The weak-perspective scale ``s`` is folded into those rows, so
the points come out in image units.

:func:`time_adam_steps` times Adam steps of an objective eagerly or under ``torch.compile`` (the
loss with its backward pass, and the optimiser step, each compiled), reporting the warm-up (compile)
time apart from the steady-state step time.

Run this file to check the references against each other (sparse = full, eager = compiled, the
gradients too) on random parameters:

    python tools/torch_registration.py             # eager checks
    python tools/torch_registration.py --compile   # also torch.compile (slow to compile on CPU)
"""
from __future__ import annotations

import dataclasses
import os
import sys
import time
from typing import Callable, Mapping, NamedTuple, Optional

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from bodyjax import camera  # noqa: E402

SKINS = ("sparse", "full")
TERMS = ("l_dense", "l_kp", "l_scale", "l_angle", "l_det")
_SMALL_ANGLE_SQ = 1e-2  # θ² below which Rodrigues' coefficients use their Taylor series
_EPS = 1e-8
_EYE = torch.eye(3)
_HOMOGENEOUS_ROW = torch.tensor([[0.0, 0.0, 0.0, 1.0]])


def image_frame(image_size) -> tuple[np.ndarray, float]:
    """``(centre (2,), half)`` of the normalised image units (``bodyjax.camera.image_frame``)."""
    centre, half = camera.image_frame(image_size)
    return np.asarray(centre, np.float32), float(half)


def term_weights(config) -> dict:
    """The ω of eq. (7) by term name (:data:`TERMS`), from a ``RegistrationConfig``."""
    return dict(zip(TERMS, (config.w_dense, config.w_kp, config.w_scale, config.w_angle, config.w_det)))


def params_from(params, image_size, requires_grad: bool = True) -> list[torch.Tensor]:
    """Pixel-unit ``BodyParams (B,)`` → leaf tensors ``[pose, segment_scales, rotation, s, t]`` in
    normalised units (the parameters that Adam updates)."""
    centre, half = image_frame(image_size)
    values = [np.asarray(params.pose), np.asarray(params.segment_scales), np.asarray(params.rotation),
              np.asarray(params.scale) / half, (np.asarray(params.translation) - centre) / half]
    return [torch.tensor(np.asarray(v, np.float32), requires_grad=requires_grad) for v in values]


# ----------------------------------------------------------------------------------------------
# The body model, batched, in PyTorch


def rodrigues(aa: torch.Tensor) -> torch.Tensor:
    """``(..., 3)`` axis-angles → ``(..., 3, 3)`` rotations, exact down to zero angle.

    ``R = I + A K + B K²`` with ``A = sin θ / θ``, ``B = (1 − cos θ) / θ²`` taken from their Taylor
    series below ``θ² = 1e-2`` (the ``where`` keeps NaN out of the unused branch's gradient).
    """
    t = (aa * aa).sum(-1)
    small = t < _SMALL_ANGLE_SQ
    t_safe = torch.where(small, torch.full_like(t, _SMALL_ANGLE_SQ), t)
    theta = torch.sqrt(t_safe)
    a = torch.where(small, 1.0 - t / 6.0 + t * t / 120.0, torch.sin(theta) / theta)
    half_sin = torch.sin(0.5 * theta)
    b = torch.where(small, 0.5 - t / 24.0 + t * t / 720.0, 2.0 * half_sin * half_sin / t_safe)
    x, y, z = aa.unbind(-1)
    zero = torch.zeros_like(x)
    k = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).unflatten(-1, (3, 3))
    return _EYE + a[..., None, None] * k + b[..., None, None] * (k @ k)


def gram_schmidt(m: torch.Tensor) -> torch.Tensor:
    """Orthonormalises the columns of ``(..., 3, 3)`` in order (the determinant's sign is kept)."""
    def normalize(v):
        return v / torch.sqrt(((v * v).sum(-1, keepdim=True)).clamp_min(_EPS * _EPS))

    def dot(a, b):
        return (a * b).sum(-1, keepdim=True)

    c1, c2, c3 = m.unbind(-1)
    b1 = normalize(c1)
    b2 = normalize(c2 - dot(b1, c2) * b1)
    r3 = c3 - dot(b1, c3) * b1
    b3 = normalize(r3 - dot(b2, r3) * b2)
    return torch.stack([b1, b2, b3], -1)


def det3(m: torch.Tensor) -> torch.Tensor:
    """Determinant of ``(..., 3, 3)`` as the triple product of its rows."""
    return (m[..., 0, :] * torch.linalg.cross(m[..., 1, :], m[..., 2, :])).sum(-1)


class Template(NamedTuple):
    """The template's arrays as tensors (float32 / int64); see ``bodyjax.body.BodyTemplate``."""

    vertices_h: torch.Tensor       # (V, 4) rest vertices with a homogeneous 1
    weights: torch.Tensor          # (V, 24)
    joints: torch.Tensor           # (24, 3)
    parents: tuple
    bones: torch.Tensor            # (24, 3) each joint's rest offset from its parent (the root: its position)
    parent_of: torch.Tensor        # (24, 24) column j picks the parent of joint j (the root's: none)
    root: torch.Tensor             # (24,) one-hot of the root
    kp_joint_weights: torch.Tensor  # (K, 24)
    kp_vertex_ids: torch.Tensor    # (K, M)
    kp_vertex_weights: torch.Tensor  # (K, M)
    hinge_axes: torch.Tensor       # (72, H) column h: the flexion axis of hinge h at its joint's rows
    adjacency: torch.Tensor        # (24, E) column e: +1 at a joint, −1 at its parent (eq. 10)

    @staticmethod
    def from_body(template) -> "Template":
        if getattr(template, "posedirs", None) is not None:
            raise NotImplementedError("pose blend shapes (SMPL posedirs) are not in the PyTorch reference")
        f32 = lambda x: torch.tensor(np.asarray(x, np.float32))  # noqa: E731
        i64 = lambda x: torch.tensor(np.asarray(x, np.int64))  # noqa: E731
        verts = np.asarray(template.vertices, np.float32)
        # Parameters are picked by products with constant 0/±1 matrices rather than by indexing: the
        # gradient is then a product too, not a scatter-add: under torch.compile on CPU (torch 2.13,
        # two threads) the scatter-adds of those index gradients corrupted the heap.
        num_joints = len(template.parents)
        hinge_axes = np.zeros((num_joints, 3, len(template.hinge_joints)), np.float32)
        for h, j in enumerate(template.hinge_joints):
            hinge_axes[j, :, h] = np.asarray(template.hinge_axes)[j]
        parent_of = np.zeros((num_joints, num_joints), np.float32)
        edges = [(j, p) for j, p in enumerate(template.parents) if p >= 0]
        adjacency = np.zeros((num_joints, len(edges)), np.float32)
        for e, (j, p) in enumerate(edges):
            parent_of[p, j] = 1.0
            adjacency[j, e], adjacency[p, e] = 1.0, -1.0
        parents = tuple(int(p) for p in template.parents)
        joints = np.asarray(template.joints, np.float32)
        bones = joints - joints[[max(p, 0) for p in parents]]
        bones[0] = joints[0]
        return Template(
            vertices_h=f32(np.concatenate([verts, np.ones((len(verts), 1), np.float32)], 1)),
            weights=f32(template.weights), joints=f32(joints), parents=parents, bones=f32(bones),
            parent_of=f32(parent_of), root=f32(np.eye(num_joints)[0]),
            kp_joint_weights=f32(template.kp_joint_weights), kp_vertex_ids=i64(template.kp_vertex_ids),
            kp_vertex_weights=f32(template.kp_vertex_weights),
            hinge_axes=f32(hinge_axes.reshape(num_joints * 3, -1)), adjacency=f32(adjacency))


def image_transforms(tpl: Template, pose, scales, rotation, s) -> tuple[torch.Tensor, torch.Tensor]:
    """The skinning transforms' image-plane rows, scaled by ``s``, and the joints in the image.

    Args:
      tpl: the :class:`Template`.
      pose: ``(B, 24, 3)`` axis-angles (the root's is ignored: the global rotation is ``rotation``).
      scales: ``(B, 24)`` segment scales.
      rotation: ``(B, 3, 3)`` the nine free numbers of ``R`` (Gram–Schmidt applied here).
      s: ``(B,)`` weak-perspective scale.

    Returns:
      ``(A (B, 24, 8), joints2d (B, 24, 2))``: a rest point ``v`` with weights ``w`` lands at
      ``(w @ A).view(2, 4) @ [v, 1]`` (before the translation ``t``); ``joints2d`` excludes ``t`` too.
    """
    bsz, nj = scales.shape
    parents = tpl.parents
    local = torch.cat([_EYE.expand(bsz, 1, 3, 3), rodrigues(pose[:, 1:])], 1)  # (B, 24, 3, 3)
    # each bone in its parent's frame, stretched by the parent's scale (the root is not stretched)
    parent_scale = scales @ tpl.parent_of + tpl.root                     # (B, 24), the root's is 1
    offset = tpl.bones * parent_scale[..., None]                            # (B, 24, 3)
    bottom = _HOMOGENEOUS_ROW.expand(bsz, nj, 1, 4)
    link = torch.cat([torch.cat([local, offset[..., None]], -1), bottom], -2)  # (B, 24, 4, 4)
    world = [link[:, 0]]
    for j in range(1, nj):
        world.append(world[parents[j]] @ link[:, j])
    world = torch.stack(world, 1)                                           # (B, 24, 4, 4)
    g, pos = world[..., :3, :3], world[..., :3, 3]
    m = g * scales[..., None, None]                                         # M_j = s_j G_j
    b = pos - (m @ tpl.joints[..., None])[..., 0]                           # b_j = P_j − M_j J_j
    # R folded into every joint, keeping only its image-plane rows, times s
    rs = gram_schmidt(rotation)[:, :2, :] * s[:, None, None]                # (B, 2, 3)
    a = rs[:, None] @ torch.cat([m, b[..., None]], -1)                      # (B, 24, 2, 4)
    joints2d = pos @ rs.transpose(1, 2)                                     # (B, 24, 2)
    return a.reshape(bsz, nj, 8), joints2d


# ----------------------------------------------------------------------------------------------
# The objective of one batch


class RegistrationObjective:
    """Eq. (7) for one batch, per sample, in normalised image units.

    Args:
      template: a ``bodyjax.body.BodyTemplate`` (without pose blend shapes).
      batch: a ``bodyjax.batch.Batch`` (or a mapping with its fields): ``dense_xy (B, N, 2)`` pixels,
        ``dense_vertex (B, N)``, ``dense_mask (B, N)``, ``keypoints (B, K, 2)`` pixels,
        ``keypoint_visible (B, K)`` (NumPy or JAX arrays); a depth term is refused. Invalid
        correspondences (non-finite, vertex out of range) are masked as ``register`` does.
      config: a ``RegistrationConfig`` (its weights and ``dense_reduction``; they are Python numbers,
        so ``torch.compile`` specialises on them as jit does on bodyjax's static config).
      image_size: ``(H, W)``.
      skin: ``'sparse'`` or ``'full'`` (see the module docstring).
    """

    def __init__(self, template, batch, config, image_size, skin: str = "sparse"):
        if skin not in SKINS:
            raise ValueError(f"skin must be one of {SKINS}, got {skin!r}")
        depth = batch.get("keypoint_depth") if isinstance(batch, Mapping) else batch.keypoint_depth
        if config.use_depth and depth is not None:
            raise NotImplementedError("the depth term of eq. (9) is not in the PyTorch reference")
        self.tpl = tpl = Template.from_body(template)
        self.skin = skin
        self.reduction = config.dense_reduction
        self.weights = term_weights(config)
        centre, half = image_frame(image_size)
        field = (lambda k: batch[k]) if isinstance(batch, Mapping) else (lambda k: getattr(batch, k))
        xy = np.asarray(field("dense_xy"), np.float32)
        vid = np.asarray(field("dense_vertex")).astype(np.int64)
        ok = ((np.asarray(field("dense_mask")) > 0) & np.all(np.isfinite(xy), -1)
              & (vid >= 0) & (vid < tpl.weights.shape[0]))
        kp = np.asarray(field("keypoints"), np.float32)
        kp_ok = (np.asarray(field("keypoint_visible")) > 0) & np.all(np.isfinite(kp), -1)
        bsz, n = vid.shape
        self.num_dense = n
        self.dense_xy = torch.tensor(np.where(ok[..., None], (xy - centre) / half, 0.0).astype(np.float32))
        self.dense_mask = torch.tensor(ok.astype(np.float32))
        self.dense_norm = self.dense_mask.sum(-1).clamp_min(1.0) if self.reduction == "mean" else 1.0
        self.kp = torch.tensor(np.where(kp_ok[..., None], (kp - centre) / half, 0.0).astype(np.float32))
        self.kp_visible = torch.tensor(kp_ok.astype(np.float32))
        # the posed points: the matched vertices of each sample, then the keypoint vertices
        ids = torch.cat([torch.tensor(np.where(ok, vid, 0)), tpl.kp_vertex_ids.reshape(1, -1).expand(bsz, -1)], 1)
        if skin == "sparse":  # gathered once per batch; every step skins only these
            self.points_h, self.points_w = tpl.vertices_h[ids], tpl.weights[ids]  # (B, P, 4), (B, P, 24)
        else:
            self.ids = ids                                                         # (B, P)

    def project(self, pose, scales, rotation, s, t) -> tuple[torch.Tensor, torch.Tensor]:
        """``(dense2d (B, N, 2), keypoints2d (B, K, 2))`` in normalised image units."""
        tpl = self.tpl
        a, joints2d = image_transforms(tpl, pose, scales, rotation, s)
        bsz = a.shape[0]
        if self.skin == "sparse":
            blended = torch.bmm(self.points_w, a).unflatten(-1, (2, 4))            # (B, P, 2, 4)
            xy = (blended * self.points_h[:, :, None, :]).sum(-1)                  # (B, P, 2)
        else:
            blended = torch.matmul(tpl.weights, a).unflatten(-1, (2, 4))          # (B, V, 2, 4)
            every = (blended * tpl.vertices_h[:, None, :]).sum(-1)                 # (B, V, 2)
            xy = every[torch.arange(bsz)[:, None], self.ids]                       # (B, P, 2)
        n = self.num_dense
        kp_vertices = xy[:, n:].unflatten(1, tpl.kp_vertex_ids.shape)              # (B, K, M, 2)
        kp2d = (torch.einsum("kj,bjc->bkc", tpl.kp_joint_weights, joints2d)
                + torch.einsum("km,bkmc->bkc", tpl.kp_vertex_weights, kp_vertices))
        return xy[:, :n] + t[:, None], kp2d + t[:, None]

    def terms(self, pose, scales, rotation, s, t) -> dict:
        """The unweighted terms of eq. (7) by name (:data:`TERMS`), each ``(B,)``."""
        tpl = self.tpl
        dense2d, kp2d = self.project(pose, scales, rotation, s, t)
        l_dense = (((dense2d - self.dense_xy) ** 2).sum(-1) * self.dense_mask).sum(-1) / self.dense_norm
        l_kp = (((kp2d - self.kp) ** 2).sum(-1) * self.kp_visible).sum(-1)
        l_scale = ((scales @ tpl.adjacency) ** 2).sum(-1)
        flexion = pose.flatten(1) @ tpl.hinge_axes                               # (B, H)
        l_angle = (pose[:, 1:] ** 2).sum((-1, -2)) + torch.exp(-2.0 * flexion).sum(-1)
        l_det = torch.exp(-det3(rotation))
        return dict(zip(TERMS, (l_dense, l_kp, l_scale, l_angle, l_det)))

    def loss(self, params: list) -> torch.Tensor:
        """``(B,)`` per-sample loss of eq. (7) at ``params`` (see :func:`params_from`)."""
        terms = self.terms(*params)
        return sum(self.weights[k] * terms[k] for k in TERMS)


# ----------------------------------------------------------------------------------------------
# Timing Adam steps


@dataclasses.dataclass
class StepTiming:
    """Seconds per Adam step (median of the timed steps) and the warm-up (compile) seconds."""

    step_s: float
    warmup_s: float
    threads: int


def adam_step(objective: RegistrationObjective, params: list, lr: float,
              compile: bool) -> Callable[[], torch.Tensor]:
    """One Adam step (zero grads, loss, backward, update) on the stacked batch parameters.

    ``compile=True`` compiles the batch loss (forward and, through AOTAutograd, backward) and
    ``optimizer.step`` with ``torch.compile``; the first calls compile.
    """
    opt = torch.optim.Adam(params, lr=lr)

    def total(p):
        return objective.loss(p).sum()  # samples are independent: the sum gives per-sample grads

    update = opt.step
    if compile:
        total = torch.compile(total, dynamic=False)
        update = torch.compile(opt.step, dynamic=False)

    def step():
        opt.zero_grad(set_to_none=True)
        value = total(params)
        value.backward()
        update()
        return value

    return step


def time_adam_steps(objective: RegistrationObjective, params_fn: Callable[[], list], config, steps: int,
                    compile: bool = False, threads: Optional[int] = None,
                    warmup: Optional[int] = None) -> StepTiming:
    """Median seconds per Adam step over ``steps`` steps, after ``warmup`` untimed steps.

    Args:
      objective: the batch's objective.
      params_fn: returns fresh leaf parameters (:func:`params_from` of the start).
      config: ``RegistrationConfig`` (its learning rate).
      steps: timed steps.
      compile: use ``torch.compile`` (the dynamo caches are reset first, so the warm-up includes a
        cold compile; inductor's on-disk caches may still shorten it).
      threads: ``torch.set_num_threads`` for the run (restored afterwards); ``None`` keeps it.
      warmup: untimed steps first (default 1 eager, 3 compiled: the first steps compile the loss,
        its backward and the optimiser, whose state appears at the first step).
    """
    default = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        if compile:
            torch._dynamo.reset()
        if warmup is None:
            warmup = 3 if compile else 1
        step = adam_step(objective, params_fn(), config.learning_rate, compile)
        t0 = time.perf_counter()
        for _ in range(warmup):
            step()
        warmup_s = time.perf_counter() - t0
        times = []
        for _ in range(steps):
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
        return StepTiming(float(np.median(times)), warmup_s, torch.get_num_threads())
    finally:
        torch.set_num_threads(default)


# ----------------------------------------------------------------------------------------------
# Self-check: the references agree with each other


def _random_problem(template, bsz: int, n: int, image_size, seed: int = 0):
    """A batch of random correspondences and random pixel-unit parameters around the image."""
    from bodyjax import body

    rng = np.random.default_rng(seed)
    h, w = image_size
    nv, nk = np.asarray(template.vertices).shape[0], np.asarray(template.kp_joint_weights).shape[0]
    mask = (rng.random((bsz, n)) < 0.8).astype(np.float32)
    batch = {"dense_xy": rng.uniform(0, w, (bsz, n, 2)).astype(np.float32),
             "dense_vertex": rng.integers(0, nv, (bsz, n)).astype(np.int32), "dense_mask": mask,
             "keypoints": rng.uniform(0, h, (bsz, nk, 2)).astype(np.float32),
             "keypoint_visible": (rng.random((bsz, nk)) < 0.8).astype(np.float32)}
    params = body.BodyParams(
        pose=rng.normal(0, 0.4, (bsz, 24, 3)).astype(np.float32),
        segment_scales=rng.uniform(0.8, 1.2, (bsz, 24)).astype(np.float32),
        rotation=(np.eye(3) + rng.normal(0, 0.3, (bsz, 3, 3))).astype(np.float32),
        scale=rng.uniform(30, 60, bsz).astype(np.float32),
        translation=rng.uniform(40, 90, (bsz, 2)).astype(np.float32))
    return batch, params


def check_against_each_other(template, config, image_size, compile: bool = False, bsz: int = 4,
                             n: int = 40, tol: float = 1e-4) -> dict:
    """Max relative differences of loss and gradient: sparse vs full (and eager vs compiled).

    The sparse objective skins fewer vertices than the full one but the same ones enter the loss, so
    the two must agree to float32 rounding. Raises ``AssertionError`` above ``tol``.
    """
    batch, init = _random_problem(template, bsz, n, image_size)

    def evaluate(skin, compiled):
        objective = RegistrationObjective(template, batch, config, image_size, skin)
        params = params_from(init, image_size)
        fn = torch.compile(objective.loss, dynamic=False) if compiled else objective.loss
        value = fn(params)
        value.sum().backward()
        return value.detach(), [p.grad for p in params]

    def rel(a, b):
        return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))

    ref_loss, ref_grad = evaluate("full", False)
    out = {}
    cases = [("sparse", False)] + ([("sparse", True), ("full", True)] if compile else [])
    for skin, compiled in cases:
        loss, grad = evaluate(skin, compiled)
        name = f"{skin}_{'compile' if compiled else 'eager'} vs full_eager"
        out[name] = (rel(loss, ref_loss), max(rel(g, r) for g, r in zip(grad, ref_grad)))
        if max(out[name]) > tol:
            raise AssertionError(f"{name}: loss rel diff {out[name][0]:.2e}, gradient {out[name][1]:.2e} > {tol}")
    return out


def main():
    import argparse

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--compile", action="store_true", help="also check the torch.compile'd losses")
    args = ap.parse_args()
    from bodyjax import body, registration as reg

    template = body.default_template("coco17")
    for name, config in (("round1", reg.stiff_config()), ("later", reg.RegistrationConfig())):
        for case, (dl, dg) in check_against_each_other(template, config, (128, 128), args.compile).items():
            print(f"{name:7s} {case:30s} loss max rel diff {dl:.1e}, gradient {dg:.1e}")


if __name__ == "__main__":
    main()
