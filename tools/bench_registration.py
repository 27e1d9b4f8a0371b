"""Benchmark of the registration (eq. 7–12): bodyjax ``register`` against a PyTorch-eager reference.

    python tools/bench_registration.py                      # batches 10 64 256, both schedules
    python tools/bench_registration.py --batches 10 64 --torch-steps 5 --repeats 3
    python tools/bench_registration.py --profile            # also time bodyjax variants (where the time goes)

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

import jax
import jax.numpy as jnp
import numpy as np

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
        """Seconds per Adam step (forward, backward, update), after one warm-up step."""
        torch = self.torch
        opt = torch.optim.Adam(params, lr=self.config.learning_rate)

        def step():
            opt.zero_grad(set_to_none=True)
            total = self.loss(params).sum()  # samples are independent: the sum gives per-sample grads
            total.backward()
            opt.step()
            return total

        step()
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        return (time.perf_counter() - t0) / steps


# ----------------------------------------------------------------------------------------------
# bodyjax timing


def compile_register(template, batch, init, config):
    t0 = time.perf_counter()
    compiled = reg.register.lower(template, batch, init, config=config,
                                  image_size=(IMAGE_SIZE, IMAGE_SIZE)).compile()
    return compiled, time.perf_counter() - t0


def time_call(fn, repeats: int) -> tuple[float, float]:
    """(median, min) seconds of ``fn()`` (blocking) after one warm-up call."""
    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), float(np.min(times))


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
# Profiling variants (where the time goes)


def profile(template, batch, config, repeats: int):
    """Times pieces and variants of one Adam step at this batch (per step, microseconds)."""
    from bodyjax import kinematics, losses
    from bodyjax.rotations import axis_angle_to_matrix, gram_schmidt

    image = (IMAGE_SIZE, IMAGE_SIZE)
    bsz = batch["dense_xy"].shape[0]
    steps = 100
    init = reg.init_params(template, batch, image)
    clean, _ = reg.sanitize_batch(template, batch)
    centre, half = reg._frame(image)
    rest, weights = body.gather_points(template, clean["dense_vertex"])
    data = {"rest": rest, "weights": weights, "dense_mask": clean["dense_mask"],
            "dense_xy": (clean["dense_xy"] - centre) / half, "keypoints": (clean["keypoints"] - centre) / half,
            "keypoint_visible": clean["keypoint_visible"], "adjacency": jnp.asarray(body.segment_adjacency(template))}
    in_axes = {k: (None if k == "adjacency" else 0) for k in data}
    p0 = reg.normalize_params(init, image)

    def sample_loss(params, d):
        terms, _ = reg._terms(template, config, params, d)
        return reg._total(config, terms)

    vg = jax.vmap(jax.value_and_grad(sample_loss), in_axes=(0, in_axes))
    import optax
    opt = optax.adam(config.learning_rate)

    def loop(step_fn):
        @jax.jit
        def run(params, data):
            def body_fn(carry, _):
                return step_fn(carry, data), None
            out, _ = jax.lax.scan(body_fn, (params, opt.init(params)), None, length=steps)
            return out[0]
        return run

    def adam_step(carry, data, f=vg):
        params, st = carry
        _, g = f(params, data)
        up, st = opt.update(g, st, params)
        return optax.apply_updates(params, up), st

    def forward_only(carry, data):
        params, st = carry
        out = jax.vmap(lambda p, d: body.forward_points(template, p, d["rest"], d["weights"]).vertices2d,
                       in_axes=(0, in_axes))(params, data)
        return params.replace(translation=params.translation + 1e-9 * out[:, 0]), st

    def chain_only(carry, data):
        params, st = carry
        local = axis_angle_to_matrix(params.pose)
        rot, pos = kinematics.chain(local, template.joints, template.parents, params.segment_scales)
        return params.replace(translation=params.translation + 1e-9 * pos[:, 0, :2]), st

    def chain_grad(carry, data):
        params, st = carry

        def f(pose, sc):
            local = axis_angle_to_matrix(pose)
            rot, pos = kinematics.chain(local, template.joints, template.parents, sc)
            return jnp.sum(pos ** 2) + jnp.sum(rot ** 2)
        g = jax.grad(f, argnums=(0, 1))(params.pose, params.segment_scales)
        return params.replace(pose=params.pose - 1e-9 * g[0]), st

    def noop(carry, data):
        params, st = carry
        return params.replace(translation=params.translation + 1e-9), st

    variants = {
        "noop scan body": noop,
        "Rodrigues + kinematic chain (fwd)": chain_only,
        "Rodrigues + kinematic chain (fwd+grad)": chain_grad,
        "forward_points (fwd)": forward_only,
        "value_and_grad (no Adam)": lambda c, d: (jax.tree_util.tree_map(
            lambda x, g: x - 1e-9 * g, c[0], vg(c[0], d)[1]), c[1]),
        "value_and_grad + Adam": adam_step,
    }
    print(f"\nprofile at batch {bsz}, {steps}-step scans (per step; register's own loop adds best-so-far "
          "tracking and divergence checks):")
    for name, fn in variants.items():
        run = loop(fn)
        t0 = time.perf_counter()
        jax.block_until_ready(run(p0, data))
        comp = time.perf_counter() - t0
        med, mn = time_call(lambda: run(p0, data), repeats)
        print(f"  {name:42s} {1e6 * med / steps:9.1f} us/step (min {1e6 * mn / steps:8.1f})  "
              f"= {1e6 * med / steps / bsz:6.2f} us/sample-step   [first call {comp:5.1f} s]")
    compiled, _ = compile_register(template, batch, init, dataclasses.replace(config, num_steps=steps))
    med, mn = time_call(lambda: compiled(template, batch, init), repeats)
    print(f"  {'register (whole call)':42s} {1e6 * med / steps:9.1f} us/step (min {1e6 * mn / steps:8.1f})  "
          f"= {1e6 * med / steps / bsz:6.2f} us/sample-step")


# ----------------------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, nargs="+", default=[10, 64, 256])
    ap.add_argument("--torch-steps", type=int, default=10, help="PyTorch steps timed (then extrapolated)")
    ap.add_argument("--repeats", type=int, default=5, help="bodyjax calls timed per cell (median)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--profile", action="store_true", help="time pieces of a step at the largest batch >= 64")
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
    if not args.no_torch:
        print("objective parity (PyTorch full-mesh vs bodyjax register, batch 10):")
        for name, cfg in schedules.items():
            check_parity(template, subset(data, 10), cfg, name)

    rows, compile_rows = [], []
    for bsz in args.batches:
        batch = jax.device_put(subset(data, bsz))
        init = reg.init_params(template, batch, (IMAGE_SIZE, IMAGE_SIZE))
        torch_step = None
        if not args.no_torch:
            ref = TorchRegistration(template, subset(data, bsz), reg.RegistrationConfig())
            torch_step = ref.time_steps(ref.params_from(init), args.torch_steps)
        for name, cfg in schedules.items():
            compiled, comp_s = compile_register(template, batch, init, cfg)
            med, mn = time_call(functools.partial(compiled, template, batch, init), args.repeats)
            row = {"batch": bsz, "schedule": f"{name} ({cfg.num_steps} steps)", "jax_s": med, "jax_min_s": mn,
                   "jax_fps": bsz / med, "compile_s": comp_s}
            if torch_step is not None:
                torch_s = torch_step * cfg.num_steps
                row.update(torch_step_ms=1e3 * torch_step, torch_fps=bsz / torch_s, ratio=torch_s / med)
            rows.append(row)
            compile_rows.append((bsz, name, comp_s))
            print(f"  batch {bsz:4d} {name:7s}: bodyjax {med:7.3f} s/call (min {mn:.3f}) -> {bsz / med:8.1f} fits/s"
                  + (f"; torch {1e3 * torch_step:7.1f} ms/step -> {row['torch_fps']:7.2f} fits/s" if torch_step else "")
                  + f"; compile {comp_s:.1f} s", flush=True)

    print("\nfits per second (bodyjax: median of "
          f"{args.repeats} calls; torch: {args.torch_steps} steps timed, per-step time x schedule steps)")
    hdr = f"{'batch':>5} | {'schedule':<19} | {'bodyjax fits/s':>14} | {'torch fits/s':>12} | {'ratio':>7} | {'torch ms/step':>13}"
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        tf = f"{r['torch_fps']:12.2f}" if "torch_fps" in r else f"{'-':>12}"
        ra = f"{r['ratio']:6.1f}x" if "ratio" in r else f"{'-':>7}"
        tm = f"{r['torch_step_ms']:13.1f}" if "torch_step_ms" in r else f"{'-':>13}"
        print(f"{r['batch']:5d} | {r['schedule']:<19} | {r['jax_fps']:14.1f} | {tf} | {ra} | {tm}")
    print("\ncompile time of register (lower + compile, once per (config, batch shape)):")
    for bsz, name, comp_s in compile_rows:
        print(f"  batch {bsz:4d} {name:7s}: {comp_s:6.1f} s")
    print("targets: >= 100 fits/s for the 300-step schedule at batch >= 64 on a 2-core CPU; >= 10x PyTorch")

    if args.profile:
        big = [b for b in args.batches if b >= 64]
        bsz = max(big) if big else max(args.batches)
        profile(template, jax.device_put(subset(data, bsz)), reg.stiff_config(), args.repeats)
    print(load_line("end"))


if __name__ == "__main__":
    main()
