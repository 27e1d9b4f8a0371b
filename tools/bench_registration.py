"""Benchmark of the registration (eq. 7–12): bodyjax ``register`` against a PyTorch-eager reference.

    python tools/bench_registration.py                      # batches 10 64 256, both schedules
    python tools/bench_registration.py --batches 10 64 --torch-steps 5 --repeats 3
    python tools/bench_registration.py --profile            # also time bodyjax variants (where the time goes)
    python tools/bench_registration.py --host-devices 2 --no-torch   # batch sharded over 2 CPU devices

Data: ``synthetic.make_split`` at 128 px (coco17 keypoints, 100–160 dense points per image, about 130
on average). Schedules: round 1 (``stiff_config()``: 300 steps, ω_scale 100, ω_joint 1, T-pose start)
and the later rounds (``RegistrationConfig()``: 100 steps). Both start from ``init_params`` here; the
start does not change the cost of a fixed number of steps.

bodyjax: the jitted ``register`` call (sanitising, gathering, the Adam loop in ``lax.scan``, best-so-far
tracking and the report), compiled ahead of time so that the compile time is reported separately;
fits/s = batch / seconds per call (median of ``--repeats`` calls).

PyTorch reference: the same objective (same normalised image units, weights and loss terms) written as
the paper's PyTorch code registers: batched eager tensor ops, the kinematic chain joint by joint,
linear blend skinning of ALL template vertices every step, then indexing the matched vertices and the
keypoint vertices, ``torch.optim.Adam(lr=0.1)`` on the stacked parameters of the batch. Its cost per
step is constant, so it is timed on ``--torch-steps`` steps (after one warm-up step) and extrapolated
linearly to the schedule's step count (the output says so).

Objective parity: before timing, the PyTorch loss is compared with bodyjax's at the start (``register``
with learning rate 0 and one step returns the loss at the start) and at bodyjax's fitted parameters,
per sample, for both schedules; the relative difference must be <= 1e-3.

The CPU count and ``os.getloadavg()`` are printed at the start and at the end: on a shared machine the
load tells how much of the two cores this process really had.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import platform
import sys
import time



def _host_devices_from_argv() -> int:
    """``--host-devices N`` must set XLA_FLAGS before jax is imported."""
    for i, a in enumerate(sys.argv):
        if a == "--host-devices" and i + 1 < len(sys.argv):
            return int(sys.argv[i + 1])
        if a.startswith("--host-devices="):
            return int(a.split("=", 1)[1])
    return 1


if _host_devices_from_argv() > 1:
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count="
                               + str(_host_devices_from_argv())).strip()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from bodyjax import body, registration as reg  # noqa: E402
from bodyjax.data import synthetic  # noqa: E402

IMAGE_SIZE = 128


def load_line(tag: str) -> str:
    la = os.getloadavg()
    return f"[{tag}] cpu_count={os.cpu_count()} loadavg(1/5/15 min)={la[0]:.2f}/{la[1]:.2f}/{la[2]:.2f}"


# ----------------------------------------------------------------------------------------------
# PyTorch eager reference of the same objective, full-mesh skinning


class TorchRegistration:
    """Eq. (7) in PyTorch, batched, normalised image units; parameters are leaf tensors for Adam."""

    def __init__(self, template: body.BodyTemplate, batch: dict, config: reg.RegistrationConfig,
                 image_size=(IMAGE_SIZE, IMAGE_SIZE)):
        import torch

        self.torch = torch
        f32 = lambda x: torch.tensor(np.asarray(x, np.float32))  # noqa: E731
        self.config = config
        self.verts = f32(template.vertices)                       # (V, 3)
        self.weights = f32(template.weights)                      # (V, 24)
        self.rest_joints = f32(template.joints)                   # (24, 3)
        self.parents = template.parents
        self.kp_joint_w = f32(template.kp_joint_weights)          # (K, 24)
        self.kp_vid = torch.tensor(np.asarray(template.kp_vertex_ids), dtype=torch.long)  # (K, M)
        self.kp_vert_w = f32(template.kp_vertex_weights)          # (K, M)
        hinge = list(template.hinge_joints)
        self.hinge = torch.tensor(hinge, dtype=torch.long)
        self.hinge_axes = f32(np.asarray(template.hinge_axes)[hinge])  # (H, 3)
        adj = body.segment_adjacency(template)
        self.adj0 = torch.tensor(adj[:, 0], dtype=torch.long)
        self.adj1 = torch.tensor(adj[:, 1], dtype=torch.long)
        h, w = image_size
        self.centre = np.array([(w - 1) / 2.0, (h - 1) / 2.0], np.float32)
        self.half = max(h, w) / 2.0
        self.dense_xy = f32((np.asarray(batch["dense_xy"]) - self.centre) / self.half)
        self.dense_vid = torch.tensor(np.asarray(batch["dense_vertex"]), dtype=torch.long)
        self.dense_mask = f32(batch["dense_mask"])
        self.kp = f32((np.asarray(batch["keypoints"]) - self.centre) / self.half)
        self.kp_vis = f32(batch["keypoint_visible"])

    # -- parameters in normalised units ---------------------------------------------------------

    def params_from(self, params: body.BodyParams) -> list:
        torch = self.torch
        p = [np.asarray(params.pose), np.asarray(params.segment_scales), np.asarray(params.rotation),
             np.asarray(params.scale) / self.half, (np.asarray(params.translation) - self.centre) / self.half]
        return [torch.tensor(np.asarray(x, np.float32), requires_grad=True) for x in p]

    # -- the model -------------------------------------------------------------------------------

    def _rodrigues(self, aa):
        torch = self.torch
        t = (aa * aa).sum(-1)
        small = t < 1e-6
        t_safe = torch.where(small, torch.ones_like(t), t)
        theta = torch.sqrt(t_safe)
        a = torch.where(small, 1.0 - t / 6.0, torch.sin(theta) / theta)
        b = torch.where(small, 0.5 - t / 24.0, (1.0 - torch.cos(theta)) / t_safe)
        x, y, z = aa.unbind(-1)
        zero = torch.zeros_like(x)
        k = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).reshape(aa.shape[:-1] + (3, 3))
        eye = torch.eye(3, dtype=aa.dtype).expand(k.shape)
        return eye + a[..., None, None] * k + b[..., None, None] * (k @ k)

    def _gram_schmidt(self, m):
        def normalize(v):
            return v / v.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        c1, c2, c3 = m[..., :, 0], m[..., :, 1], m[..., :, 2]
        b1 = normalize(c1)
        b2 = normalize(c2 - (b1 * c2).sum(-1, keepdim=True) * b1)
        b3 = normalize(c3 - (b1 * c3).sum(-1, keepdim=True) * b1 - (b2 * c3).sum(-1, keepdim=True) * b2)
        return self.torch.stack([b1, b2, b3], -1)

    def forward(self, pose, scales, rotation, s, t):
        """Skins ALL vertices, then indexes the matched ones. Returns (points2d, keypoints2d)."""
        torch = self.torch
        bsz = pose.shape[0]
        local = self._rodrigues(pose)                                       # (B, 24, 3, 3)
        rj = self.rest_joints
        eye = torch.eye(3).expand(bsz, 3, 3)
        rots, pos = [eye], [rj[0].expand(bsz, 3)]
        for j in range(1, len(self.parents)):
            p = self.parents[j]
            offset = (rj[j] - rj[p])[None, :] * scales[:, p, None]         # (B, 3)
            rots.append(rots[p] @ local[:, j])
            pos.append(pos[p] + (rots[p] @ offset[..., None])[..., 0])
        g = torch.stack(rots, 1)                                            # (B, 24, 3, 3)
        pj = torch.stack(pos, 1)                                            # (B, 24, 3)
        m = g * scales[..., None, None]
        bvec = pj - (m @ rj[None, :, :, None])[..., 0]
        r = self._gram_schmidt(rotation)                                    # (B, 3, 3)
        m = r[:, None] @ m
        bvec = (r[:, None] @ bvec[..., None])[..., 0]
        joints = (r[:, None] @ pj[..., None])[..., 0]                       # (B, 24, 3)
        a = torch.cat([m, bvec[..., None]], -1).reshape(bsz, 24, 12)
        blended = torch.matmul(self.weights, a).reshape(bsz, -1, 3, 4)     # (B, V, 3, 4): all vertices
        verts = (blended[..., :3] @ self.verts[None, :, :, None])[..., 0] + blended[..., 3]
        rows = torch.arange(bsz)[:, None]
        matched = verts[rows, self.dense_vid]                               # (B, N, 3)
        kpv = verts[:, self.kp_vid.reshape(-1)].reshape(bsz, *self.kp_vid.shape, 3)
        kp3 = torch.einsum("kj,bjc->bkc", self.kp_joint_w, joints) + torch.einsum(
            "km,bkmc->bkc", self.kp_vert_w, kpv)
        x2d = s[:, None, None] * matched[..., :2] + t[:, None, :]
        k2d = s[:, None, None] * kp3[..., :2] + t[:, None, :]
        return x2d, k2d

    def terms(self, pose, scales, rotation, s, t) -> dict:
        torch = self.torch
        x2d, k2d = self.forward(pose, scales, rotation, s, t)
        m = self.dense_mask
        sq = (((x2d - self.dense_xy) ** 2).sum(-1) * m).sum(-1)
        l_dense = sq if self.config.dense_reduction == "sum" else sq / m.sum(-1).clamp_min(1.0)
        l_kp = (((k2d - self.kp) ** 2).sum(-1) * self.kp_vis).sum(-1)
        l_scale = ((scales[:, self.adj0] - scales[:, self.adj1]) ** 2).sum(-1)
        flex = (pose[:, self.hinge] * self.hinge_axes).sum(-1)
        l_angle = (pose[:, 1:] ** 2).sum((-1, -2)) + (torch.exp(-flex) ** 2).sum(-1)
        l_det = torch.exp(-torch.linalg.det(rotation))
        return {"l_dense": l_dense, "l_kp": l_kp, "l_scale": l_scale, "l_angle": l_angle, "l_det": l_det}

    def loss(self, params) -> "torch.Tensor":
        c = self.config
        tm = self.terms(*params)
        return (c.w_dense * tm["l_dense"] + c.w_kp * tm["l_kp"] + c.w_scale * tm["l_scale"]
                + c.w_joint * tm["l_angle"] + c.w_det * tm["l_det"])

    def time_steps(self, params, steps: int) -> float:
        """Median seconds per Adam step (forward, backward, update) over ``steps`` steps after a warm-up."""
        torch = self.torch
        opt = torch.optim.Adam(params, lr=self.config.learning_rate)

        def step():
            opt.zero_grad(set_to_none=True)
            total = self.loss(params).sum()  # samples are independent: the sum gives per-sample grads
            total.backward()
            opt.step()
            return total

        step()
        times = []
        for _ in range(steps):
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
        return float(np.median(times))


def torch_step_time(template, batch, init, steps: int) -> tuple[float, dict]:
    """Fastest of 1 thread and all cores (contended OpenMP threads can be slower than one)."""
    import torch

    ref = TorchRegistration(template, batch, reg.RegistrationConfig())
    found = {}
    default = torch.get_num_threads()
    for threads in sorted({1, os.cpu_count() or 1}):
        torch.set_num_threads(threads)
        found[threads] = ref.time_steps(ref.params_from(init), steps)
    torch.set_num_threads(default)
    return min(found.values()), found


# ----------------------------------------------------------------------------------------------
# bodyjax timing


def compile_register(template, batch, init, config):
    t0 = time.perf_counter()
    compiled = reg.register.lower(template, batch, init, config=config,
                                  image_size=(IMAGE_SIZE, IMAGE_SIZE)).compile()
    return compiled, time.perf_counter() - t0


def time_call(fn, repeats: int) -> tuple[float, float, float]:
    """(median wall, min wall, min process CPU) seconds of ``fn()`` (blocking) after one warm-up call."""
    jax.block_until_ready(fn())
    walls, cpus = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        jax.block_until_ready(fn())
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return float(np.median(walls)), float(np.min(walls)), float(np.min(cpus))


def subset(batch: dict, n: int) -> dict:
    return {k: v[:n] for k, v in batch.items()}


# ----------------------------------------------------------------------------------------------
# Parity of the objectives


def check_parity(template, batch, config, name: str, tol: float = 1e-3) -> float:
    """Per-sample relative difference of the two losses at the start and at bodyjax's fit."""
    init = reg.init_params(template, batch, (IMAGE_SIZE, IMAGE_SIZE))
    ref = TorchRegistration(template, batch, config)
    # register with learning rate 0 and one step returns the parameters and loss of the start
    probe = dataclasses.replace(config, learning_rate=0.0, num_steps=1)
    _, rep0 = reg.register(template, batch, init, probe, (IMAGE_SIZE, IMAGE_SIZE))
    fit, rep1 = reg.register(template, batch, init, config, (IMAGE_SIZE, IMAGE_SIZE))
    worst = 0.0
    for tag, params, rep in (("start", init, rep0), ("fit", fit, rep1)):
        with ref.torch.no_grad():
            torch_loss = ref.loss(ref.params_from(params)).numpy()
        jax_loss = np.asarray(rep.loss)
        rel = np.abs(torch_loss - jax_loss) / np.maximum(np.abs(jax_loss), 1e-12)
        worst = max(worst, float(rel.max()))
        print(f"  parity {name:>7s} at {tag:5s}: bodyjax loss mean {jax_loss.mean():10.5f}  torch "
              f"{torch_loss.mean():10.5f}  max rel diff {rel.max():.2e}")
        if rel.max() > tol:
            raise SystemExit(f"objective mismatch ({name}, {tag}): max relative difference {rel.max():.3e} > {tol}")
    return worst


# ----------------------------------------------------------------------------------------------
# Profiling: per-op times of one register call and what-if variants


def thunk_profile(compiled, call, steps: int, top: int = 14):
    """Per-XLA-op (thunk) time of ``call()`` from a jax.profiler trace, with the op's shape and origin."""
    import collections
    import glob
    import gzip
    import json
    import re
    import tempfile

    hlo = compiled.as_text()
    jax.block_until_ready(call())
    with tempfile.TemporaryDirectory() as tmp:
        jax.profiler.start_trace(tmp, create_perfetto_trace=True)
        jax.block_until_ready(call())
        jax.profiler.stop_trace()
        files = glob.glob(os.path.join(tmp, "**", "*.trace.json.gz"), recursive=True)
        events = json.load(gzip.open(files[0]))["traceEvents"] if files else []
    total, count = collections.Counter(), collections.Counter()
    for e in events:
        if e.get("ph") == "X" and not e["name"].startswith(("Thunk", "$", "Pjit", "Slinky", "end:")):
            total[e["name"]] += e.get("dur", 0)
            count[e["name"]] += 1
    if not total:
        print("  (no per-op events in the trace)")
        return
    whole = sum(total.values())
    print(f"  per-op time inside one call ({whole / 1e3:.1f} ms of XLA ops, {whole / steps:.1f} us per step):")
    for name, us in total.most_common(top):
        m = re.search(r"%" + re.escape(name) + r" = (\S+) .*?op_name=\"([^\"]*)\"", hlo)
        shape, origin = (m.group(1), m.group(2).replace("jit(register)/while/body/closed_call/", "")) if m else ("?", "?")
        print(f"    {100 * us / whole:5.1f}%  {us / steps:7.1f} us/step  {name:42s} {shape:22s} {origin[:70]}")


class patched:
    """Temporarily replaces module attributes (takes effect when a fresh jit traces)."""

    def __init__(self, *triples):
        self.triples = triples

    def __enter__(self):
        self.saved = [(m, n, getattr(m, n)) for m, n, _ in self.triples]
        for m, n, v in self.triples:
            setattr(m, n, v)

    def __exit__(self, *exc):
        for m, n, v in self.saved:
            setattr(m, n, v)


def _variants(template):
    """What-if rewrites of the body model used by register (same maths, different XLA programs)."""
    from bodyjax import kinematics

    orig_chain, orig_blend = kinematics.chain, kinematics.blend_skin
    orig_gather, orig_forward_points = body.gather_points, body.forward_points

    # 1. blend_skin applying the blended 3x4 matrices with a broadcast multiply over [x, y, z, 1]
    #    (its gradient is one fused multiply instead of 12 slice-pads added together)
    def blend_homogeneous(rest, weights, transforms):
        flat = transforms.reshape(transforms.shape[:-2] + (12,))
        blended = jnp.matmul(weights, flat).reshape(weights.shape[:-1] + (3, 4))
        homog = jnp.concatenate([rest, jnp.ones(rest.shape[:-1] + (1,), rest.dtype)], -1)
        return jnp.sum(blended * homog[..., None, :], -1)

    # 2. points pre-multiplied once by their weights: H = w (x) [x, y, z, 1] (N, 96), then every step
    #    one matmul H @ T with T the (96, 3) stacked transposed transforms (forward and gradient are
    #    plain matmuls; H is constant over the loop)
    def homog_outer(rest, weights):
        homog = jnp.concatenate([rest, jnp.ones(rest.shape[:-1] + (1,), rest.dtype)], -1)
        return (weights[..., :, None] * homog[..., None, :]).reshape(weights.shape[:-1] + (-1,))

    def gather_outer(template, vertex_ids):
        rest, weights = orig_gather(template, vertex_ids)
        return rest, homog_outer(rest, weights)

    def skin_outer(h, transforms):
        t = jnp.swapaxes(transforms, -1, -2).reshape(transforms.shape[:-3] + (-1, 3))  # (..., 96, 3)
        return jnp.matmul(h, t)

    # 3. only the keypoint vertices that have a weight (static, from the concrete template)
    kp_ids = np.asarray(template.kp_vertex_ids)
    kp_w = np.asarray(template.kp_vertex_weights)
    used = np.unique(kp_ids[kp_w != 0])
    kp_dense = np.zeros((kp_ids.shape[0], len(used)), np.float32)
    for k, m in zip(*np.nonzero(kp_w)):
        kp_dense[k, np.searchsorted(used, kp_ids[k, m])] += kp_w[k, m]
    kp_rest = np.asarray(template.vertices)[used]
    kp_weights = np.asarray(template.weights)[used]

    def make_forward(outer: bool, compact_kp: bool):
        def forward_points(template, params, rest_points, point_weights):
            transforms, joints = body.skinning_transforms(template, params)
            if outer:
                vertices = skin_outer(point_weights, transforms)
            else:
                vertices = kinematics.blend_skin(rest_points, point_weights, transforms)
            if compact_kp:
                if outer:
                    kpv = skin_outer(homog_outer(jnp.asarray(kp_rest), jnp.asarray(kp_weights)), transforms)
                else:
                    kpv = kinematics.blend_skin(jnp.asarray(kp_rest), jnp.asarray(kp_weights), transforms)
                keypoints = jnp.einsum("kj,...jc->...kc", template.kp_joint_weights, joints) + jnp.einsum(
                    "ku,...uc->...kc", jnp.asarray(kp_dense), kpv)
                from bodyjax.camera import weak_perspective
                project = functools.partial(weak_perspective, scale=params.scale, translation=params.translation)
                return body.BodyOutput(vertices=vertices, joints=joints, keypoints=keypoints,
                                       vertices2d=project(vertices), joints2d=project(joints),
                                       keypoints2d=project(keypoints))
            ids = template.kp_vertex_ids.reshape(-1)
            if outer:
                kpv = skin_outer(homog_outer(template.vertices[ids], template.weights[ids]), transforms)
            else:
                kpv = kinematics.blend_skin(template.vertices[ids], template.weights[ids], transforms)
            kpv = kpv.reshape(kpv.shape[:-2] + template.kp_vertex_ids.shape + (3,))
            return body._finish(template, params, vertices, joints, kpv)
        return forward_points

    # 4. the kinematic chain batched by tree depth (9 levels instead of 23 sequential joints)
    def chain_by_level(local, rest_joints, parents, bone_scales=None):
        parents = tuple(int(p) for p in parents)
        depth = [0] * len(parents)
        for j in range(1, len(parents)):
            depth[j] = depth[parents[j]] + 1
        g = jnp.zeros(local.shape, local.dtype).at[..., 0, :, :].set(local[..., 0, :, :])
        pos = jnp.zeros(local.shape[:-1], local.dtype).at[..., 0, :].set(
            jnp.broadcast_to(rest_joints[..., 0, :], local.shape[:-3] + (3,)))
        for level in range(1, max(depth) + 1):
            js = np.array([j for j in range(len(parents)) if depth[j] == level])
            ps = np.array([parents[j] for j in js])
            off = rest_joints[..., js, :] - rest_joints[..., ps, :]
            if bone_scales is not None:
                off = off * bone_scales[..., ps, None]
            gp = g[..., ps, :, :]
            g = g.at[..., js, :, :].set(jnp.matmul(gp, local[..., js, :, :]))
            pos = pos.at[..., js, :].set(pos[..., ps, :] + kinematics._matvec(gp, off))
        return g, pos

    # 5. the same code reading its per-joint / per-column pieces with ONE jnp.unstack instead of many
    #    slices: the gradient of k slices is k pads added together, which XLA fuses into a loop that
    #    evaluates every pad for every element (O(k * size)); the gradient of unstack is one stack.
    def chain_unstack(local, rest_joints, parents, bone_scales=None):
        parents = tuple(int(p) for p in parents)
        loc = jnp.unstack(local, axis=-3)
        sc = None if bone_scales is None else jnp.unstack(bone_scales, axis=-1)
        rj = jnp.unstack(rest_joints, axis=-2)
        rots = [loc[0]]
        pos = [jnp.broadcast_to(rj[0], loc[0].shape[:-2] + (3,))]
        for j in range(1, len(parents)):
            p = parents[j]
            offset = rj[j] - rj[p]
            if sc is not None:
                offset = offset * sc[p][..., None]
            rots.append(rots[p] @ loc[j])
            pos.append(pos[p] + kinematics._matvec(rots[p], offset))
        return jnp.stack(rots, axis=-3), jnp.stack(pos, axis=-2)

    def blend_unstack(rest, weights, transforms):
        flat = transforms.reshape(transforms.shape[:-2] + (12,))
        c = jnp.unstack(jnp.matmul(weights, flat), axis=-1)
        x, y, z = jnp.unstack(rest, axis=-1)
        return jnp.stack([c[4 * r] * x + c[4 * r + 1] * y + c[4 * r + 2] * z + c[4 * r + 3] for r in range(3)], -1)

    K, B = kinematics, body
    compact_kp = (B, "forward_points", make_forward(False, True))
    level_chain = (K, "chain", chain_by_level)
    return {
        "baseline (register as is)": (),
        "blend_skin: broadcast multiply over [x,y,z,1]": ((K, "blend_skin", blend_homogeneous),),
        "skinning as H(N,96) @ T(96,3), H precomputed": (
            (B, "gather_points", gather_outer), (B, "forward_points", make_forward(True, False))),
        "keypoints: only the 33 weighted kp vertices": (compact_kp,),
        "kinematic chain batched by tree level": (level_chain,),
        "compact kp + level chain": (compact_kp, level_chain),
        "compact kp + level chain + broadcast blend": (
            compact_kp, level_chain, (K, "blend_skin", blend_homogeneous)),
        "chain reads joints with jnp.unstack": ((K, "chain", chain_unstack),),
        "blend_skin reads columns with jnp.unstack": ((K, "blend_skin", blend_unstack),),
        "both unstack rewrites": ((K, "chain", chain_unstack), (K, "blend_skin", blend_unstack)),
        "both unstack rewrites + compact kp": (
            (K, "chain", chain_unstack), (K, "blend_skin", blend_unstack), compact_kp),
    }


def profile(template, batch, config, repeats: int, only=None):
    """Where the time of one register call goes, and what rewrites of the body model would save."""
    image = (IMAGE_SIZE, IMAGE_SIZE)
    bsz = batch["dense_xy"].shape[0]
    init = reg.init_params(template, batch, image)
    print(f"\nprofile: register, batch {bsz}, {config.num_steps} steps; process CPU time per step is the "
          "robust number on a loaded machine (wall in brackets)")
    compiled, _ = compile_register(template, batch, init, config)
    thunk_profile(compiled, lambda: compiled(template, batch, init), config.num_steps)
    compiled_variants = {}
    for name, patches in _variants(template).items():
        if only and name != "baseline (register as is)" and not any(o in name for o in only):
            continue

        def fresh(*a, **k):  # a new function object: jit's trace caches are keyed on it
            return reg.register.__wrapped__(*a, **k)
        with patched(*patches):
            fresh = jax.jit(fresh, static_argnames=("config", "image_size"))
            comp = fresh.lower(template, batch, init, config=config, image_size=image).compile()
        params, report = comp(template, batch, init)
        compiled_variants[name] = (comp, float(np.mean(np.asarray(report.loss))))
    # interleaved rounds, best of each: the load of a shared machine comes and goes
    walls = {k: [] for k in compiled_variants}
    cpus = {k: [] for k in compiled_variants}
    for _ in range(repeats):
        for name, (comp, _) in compiled_variants.items():
            t0, c0 = time.perf_counter(), time.process_time()
            jax.block_until_ready(comp(template, batch, init))
            walls[name].append(time.perf_counter() - t0)
            cpus[name].append(time.process_time() - c0)
    print(f"  {'variant (same objective, rewritten body model)':50s} {'CPU us/step':>11s} {'wall us/step':>12s} "
          f"{'x300 fits/s (CPU)':>17s} {'vs base':>7s}  mean final loss")
    base_cpu = min(cpus["baseline (register as is)"])
    for name, (_, loss) in compiled_variants.items():
        cpu, wall = min(cpus[name]) / config.num_steps, min(walls[name]) / config.num_steps
        print(f"  {name:50s} {1e6 * cpu:11.1f} {1e6 * wall:12.1f} {bsz / (300 * cpu):17.1f} "
              f"{min(cpus[name]) / base_cpu:6.2f}x  {loss:.5f}", flush=True)


# ----------------------------------------------------------------------------------------------


def table(args, template, data, schedules):
    if not args.no_torch:
        print("objective parity (PyTorch full-mesh vs bodyjax register, batch 10):")
        for name, cfg in schedules.items():
            check_parity(template, subset(data, 10), cfg, name)

    rows, compile_rows = [], []
    ndev = len(jax.devices())
    for bsz in args.batches:
        batch = jax.device_put(subset(data, bsz))
        init = reg.init_params(template, batch, (IMAGE_SIZE, IMAGE_SIZE))
        if ndev > 1 and bsz % ndev == 0:
            from jax.sharding import Mesh, NamedSharding, PartitionSpec
            sharding = NamedSharding(Mesh(np.array(jax.devices()), ("batch",)), PartitionSpec("batch"))
            batch, init = jax.device_put((batch, init), sharding)
            print(f"  batch {bsz:4d}: sharded over {ndev} host devices")
        torch_step = None
        if not args.no_torch:
            torch_step, by_threads = torch_step_time(template, subset(data, bsz), init, args.torch_steps)
            print(f"  batch {bsz:4d} torch: " + ", ".join(
                f"{t} thread(s) {1e3 * v:.1f} ms/step" for t, v in by_threads.items()) + " (median step)")
        for name, cfg in schedules.items():
            compiled, comp_s = compile_register(template, batch, init, cfg)
            med, mn, cpu = time_call(functools.partial(compiled, template, batch, init), args.repeats)
            row = {"batch": bsz, "schedule": f"{name} ({cfg.num_steps} steps)", "jax_s": med, "jax_min_s": mn,
                   "jax_fps": bsz / med, "jax_cpu_fps": bsz / cpu, "compile_s": comp_s}
            if torch_step is not None:
                torch_s = torch_step * cfg.num_steps
                row.update(torch_step_ms=1e3 * torch_step, torch_fps=bsz / torch_s, ratio=torch_s / med)
            rows.append(row)
            compile_rows.append((bsz, name, comp_s))
            print(f"  batch {bsz:4d} {name:7s}: bodyjax {med:7.3f} s/call (min {mn:.3f}, CPU {cpu:.3f}) -> "
                  f"{bsz / med:8.1f} fits/s" + (f"; torch {1e3 * torch_step:7.1f} ms/step x {cfg.num_steps} -> "
                                                f"{row['torch_fps']:7.2f} fits/s" if torch_step else "")
                  + f"; compile {comp_s:.1f} s", flush=True)

    print(f"\nfits per second. bodyjax: batch / median wall seconds of {args.repeats} calls (the CPU column uses "
          "the process CPU seconds instead: what an uncontended core would give when XLA runs one thread).")
    print(f"torch: EXTRAPOLATED: median of {args.torch_steps} timed steps x the schedule's step count "
          "(its per-step cost is constant), fastest of 1 and all threads.")
    hdr = (f"{'batch':>5} | {'schedule':<19} | {'bodyjax fits/s':>14} | {'(CPU-time)':>10} | {'torch fits/s':>12} | "
           f"{'ratio':>7} | {'torch ms/step':>13} | {'compile s':>9}")
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        tf = f"{r['torch_fps']:12.2f}" if "torch_fps" in r else f"{'-':>12}"
        ra = f"{r['ratio']:6.0f}x" if "ratio" in r else f"{'-':>7}"
        tm = f"{r['torch_step_ms']:13.1f}" if "torch_step_ms" in r else f"{'-':>13}"
        print(f"{r['batch']:5d} | {r['schedule']:<19} | {r['jax_fps']:14.1f} | {r['jax_cpu_fps']:10.1f} | {tf} | "
              f"{ra} | {tm} | {r['compile_s']:9.1f}")
    print("compile time: register lower + compile, once per (config, batch shape), not in the fits/s.")
    print("targets: >= 100 fits/s for the 300-step schedule at batch >= 64 on a 2-core CPU; >= 10x PyTorch")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, nargs="+", default=[10, 64, 256])
    ap.add_argument("--torch-steps", type=int, default=10, help="PyTorch steps timed (then extrapolated)")
    ap.add_argument("--repeats", type=int, default=5, help="bodyjax calls timed per cell (median)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--profile", action="store_true",
                    help="per-op profile and what-if variants at the smallest batch and the largest batch >= 64")
    ap.add_argument("--profile-only", action="store_true", help="skip the table, only --profile")
    ap.add_argument("--variants", nargs="*", default=None, help="profile only these variants (substring match)")
    ap.add_argument("--host-devices", type=int, default=1,
                    help="split the CPU into N XLA devices and shard the batch over them (NamedSharding P('batch'))")
    args = ap.parse_args()

    print(load_line("start"))
    import torch
    print(f"python {platform.python_version()}, jax {jax.__version__} ({jax.default_backend()}, "
          f"{len(jax.devices())} device), torch {torch.__version__} ({torch.get_num_threads()} threads)")
    template = body.default_template("coco17")
    data_cfg = synthetic.SyntheticConfig(image_size=IMAGE_SIZE, keypoint_set="coco17")
    n = max(args.batches)
    t0 = time.perf_counter()
    data = synthetic.make_split(template, data_cfg, seed=args.seed, num_samples=n)
    data = {k: v for k, v in data.items() if k != "image"}
    pts = data["dense_mask"].sum(1)
    print(f"data: {n} synthetic samples, {IMAGE_SIZE} px, coco17, dense points per image mean {pts.mean():.1f} "
          f"(min {pts.min():.0f}, max {pts.max():.0f}, padded to {data['dense_mask'].shape[1]}); "
          f"generated in {time.perf_counter() - t0:.1f} s")

    schedules = {"round1": reg.stiff_config(), "later": reg.RegistrationConfig()}
    if not args.profile_only:
        table(args, template, data, schedules)
    if args.profile:
        big = [b for b in args.batches if b >= 64]
        bsz = max(big) if big else max(args.batches)
        for b in sorted(set([min(args.batches)] + [bsz])):
            profile(template, jax.device_put(subset(data, b)), reg.stiff_config(), args.repeats, args.variants)
    print(load_line("end"))


if __name__ == "__main__":
    main()
