"""Benchmark of the registration (eq. 7–12): bodyjax ``register`` against PyTorch references.

    python tools/bench_registration.py                      # batches 10 64 256, both schedules
    python tools/bench_registration.py --batches 10 64 --torch-steps 5 --repeats 3
    python tools/bench_registration.py --torch-variants sparse_eager full_eager   # skip torch.compile
    python tools/bench_registration.py --profile            # also time bodyjax variants (where the time goes)
    python tools/bench_registration.py --host-devices 2 --no-torch   # batch sharded over 2 CPU devices

Data: ``synthetic.make_split`` at 128 px (coco17 keypoints, 100–160 dense points per image, about 130
on average). Schedules: round 1 (``stiff_config()``: 300 steps, ω_scale 100, ω_angle 1, T-pose start)
and the later rounds (``RegistrationConfig()``: 100 steps). Both start from ``init_params`` here; the
start does not change the cost of a fixed number of steps.

bodyjax: ``register`` under one ``jax.jit`` (sanitising, gathering, the Adam loop in ``lax.scan``,
best-so-far tracking and the report), compiled ahead of time from cold caches so that the compile time
is reported separately; fits/s = batch / seconds per call (median of ``--repeats`` calls).

PyTorch references (``tools/torch_registration.py``): the same objective (same normalised image units,
weights and loss terms), batched over the whole batch, ``torch.optim.Adam(lr=0.1)`` on the stacked
parameters of the batch. ``--torch-variants`` picks among

* ``sparse_eager``: like ``register``, each step skins only the matched dense vertices and the keypoint
  vertices, gathered once per batch; eager PyTorch.
* ``sparse_compile``: the same under ``torch.compile`` (the loss with its backward, and the optimiser
  step). The first steps compile; their time is reported apart and left out of fits/s, as bodyjax's
  compile time is. A compile failure is reported and the eager numbers are kept.
* ``full_eager``: skins ALL 13,380 template vertices each step and then indexes the matched ones (the
  way the paper's PyTorch code registers); eager.
* ``full_compile``: the full mesh under ``torch.compile`` (not run by default).

Each variant is timed with 1 thread and with all cores (``--torch-threads``) and the faster is kept:
on a shared machine contended OpenMP threads can be slower than one. Its cost per step is constant,
so it is timed on ``--torch-steps`` steps and extrapolated linearly to the schedule's step count (the
output says so). The table gives bodyjax's ratio against the STRONGEST (fastest) variant first, then
against each variant.

Objective parity: before timing, every PyTorch variant's loss is compared with bodyjax's at the start
(``register`` with learning rate 0 and one step returns the loss at the start) and at bodyjax's fitted
parameters, per sample, for both schedules; the relative difference must be <= 1e-3.

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

_TOOLS = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(_TOOLS, ".."))
sys.path.insert(0, _TOOLS)

from bodyjax import body, registration as reg  # noqa: E402
from bodyjax.data import sample, synthetic  # noqa: E402

IMAGE_SIZE = 128
IMAGE = (IMAGE_SIZE, IMAGE_SIZE)
#: name -> (skinning, torch.compile)
TORCH_VARIANTS = {"sparse_eager": ("sparse", False), "sparse_compile": ("sparse", True),
                  "full_eager": ("full", False), "full_compile": ("full", True)}
DEFAULT_TORCH_VARIANTS = ("sparse_eager", "sparse_compile", "full_eager")


def load_line(tag: str) -> str:
    la = os.getloadavg()
    return f"[{tag}] cpu_count={os.cpu_count()} loadavg(1/5/15 min)={la[0]:.2f}/{la[1]:.2f}/{la[2]:.2f}"


def subset(batch, n: int):
    """The first ``n`` people of a :class:`bodyjax.batch.Batch`."""
    return batch.take(slice(0, n))


def _error_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200] if text else ''}"


# ----------------------------------------------------------------------------------------------
# bodyjax timing


def compile_register(template, batch, init, config):
    """``register`` under one jit, compiled ahead of time: ``(compiled, seconds)``.

    The caches are cleared first, so the seconds include tracing (and a monkeypatched body function,
    see ``--profile``, is traced instead of a cached trace being reused).
    """
    jax.clear_caches()
    fn = jax.jit(reg.register, static_argnames=("config", "image_size"))
    t0 = time.perf_counter()
    compiled = fn.lower(template, batch, init, config=config, image_size=IMAGE).compile()
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


# ----------------------------------------------------------------------------------------------
# PyTorch timing


def torch_step_times(template, batch, init, variants, steps: int, threads: list[int]) -> dict:
    """Per variant: ``{'step_s', 'threads', 'by_threads', 'warmup_s'}`` or ``{'error'}``.

    ``step_s`` is the median step of the fastest thread count; ``warmup_s`` the untimed first steps
    of that run (for a compiled variant: the compile).
    """
    import torch_registration as tr

    config = reg.RegistrationConfig()  # the weights do not change the cost of a step
    objectives = {}
    found = {}
    for name in variants:
        skin, compiled = TORCH_VARIANTS[name]
        if skin not in objectives:
            objectives[skin] = tr.RegistrationObjective(template, batch, config, IMAGE, skin)
        runs = {}
        try:
            for t in threads:
                runs[t] = tr.time_adam_steps(objectives[skin], functools.partial(tr.params_from, init, IMAGE),
                                             config, steps, compile=compiled, threads=t)
        except Exception as e:  # noqa: BLE001 - a torch.compile failure is a result, not a crash
            if not compiled:
                raise
            found[name] = {"error": _error_line(e)}
            print(f"    {name}: torch.compile FAILED ({found[name]['error']}); eager numbers kept", flush=True)
            continue
        best = min(runs.values(), key=lambda r: r.step_s)
        found[name] = {"step_s": best.step_s, "threads": best.threads, "warmup_s": best.warmup_s,
                       "by_threads": {t: r.step_s for t, r in runs.items()}}
    return found


# ----------------------------------------------------------------------------------------------
# Parity of the objectives


def check_parity(template, batch, config, name: str, variants, tol: float = 1e-3) -> dict:
    """Per-sample relative difference of bodyjax's and each variant's loss, at the start and at
    bodyjax's fit. Returns ``{variant: error}`` for compiled variants that failed to compile (they are
    then left out of the timing); a mismatch above ``tol`` stops the benchmark."""
    import torch
    import torch_registration as tr

    init = reg.init_params(template, batch, IMAGE)
    # register with learning rate 0 and one step returns the parameters and loss of the start
    probe = dataclasses.replace(config, learning_rate=0.0, num_steps=1)
    _, rep0 = reg.register(template, batch, init, probe, IMAGE)
    fit, rep1 = reg.register(template, batch, init, config, IMAGE)
    failed = {}
    for variant in variants:
        skin, compiled = TORCH_VARIANTS[variant]
        objective = tr.RegistrationObjective(template, batch, config, IMAGE, skin)
        loss = torch.compile(objective.loss, dynamic=False) if compiled else objective.loss
        for tag, params, rep in (("start", init, rep0), ("fit", fit, rep1)):
            try:  # torch.compile compiles at the first call
                with torch.no_grad():
                    torch_loss = loss(tr.params_from(params, IMAGE, requires_grad=False)).numpy()
            except Exception as e:  # noqa: BLE001 - a torch.compile failure is a result, not a crash
                if not compiled:
                    raise
                failed[variant] = _error_line(e)
                print(f"  parity {name:>7s} {variant:14s}: torch.compile FAILED ({failed[variant]})")
                break
            jax_loss = np.asarray(rep.loss)
            rel = np.abs(torch_loss - jax_loss) / np.maximum(np.abs(jax_loss), 1e-12)
            print(f"  parity {name:>7s} {variant:14s} at {tag:5s}: bodyjax loss mean {jax_loss.mean():10.5f}  "
                  f"torch {torch_loss.mean():10.5f}  max rel diff {rel.max():.2e}")
            if rel.max() > tol:
                raise SystemExit(f"objective mismatch ({name}, {variant}, {tag}): max relative difference "
                                 f"{rel.max():.3e} > {tol}")
    return failed


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
        shape, origin = (m.group(1), re.sub(r"^.*?while/body/(closed_call/)?", "", m.group(2))) if m else ("?", "?")
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
    """What-if rewrites of the body model used by register (same maths, different XLA programs).

    They replace ``kinematics.blend_skin``, ``kinematics.chain``, ``body.gather_points`` (which returns
    a ``body.Points``) and ``body.forward_points(template, params, points)``. The rewrites of
    ``forward_points`` handle bodies without pose blend shapes only (the default MakeHuman body).
    """
    from bodyjax import kinematics
    from bodyjax.camera import weak_perspective

    orig_gather = body.gather_points

    # 1. blend_skin applying the blended 3x4 matrices with a broadcast multiply over [x, y, z, 1]
    #    (its gradient is one fused multiply instead of 12 column pieces put back together)
    def blend_homogeneous(rest, weights, transforms):
        flat = transforms.reshape(transforms.shape[:-2] + (12,))
        blended = jnp.matmul(weights, flat).reshape(weights.shape[:-1] + (3, 4))
        homog = jnp.concatenate([rest, jnp.ones(rest.shape[:-1] + (1,), rest.dtype)], -1)
        return jnp.sum(blended * homog[..., None, :], -1)

    # 2. points pre-multiplied once by their weights: H = w (x) [x, y, z, 1] (N, 96), then every step
    #    one matmul H @ T with T the (96, 3) stacked transposed transforms (forward and gradient are
    #    plain matmuls; H is constant over the loop). It travels in the ``weights`` slot of Points.
    def homog_outer(rest, weights):
        homog = jnp.concatenate([rest, jnp.ones(rest.shape[:-1] + (1,), rest.dtype)], -1)
        return (weights[..., :, None] * homog[..., None, :]).reshape(weights.shape[:-1] + (-1,))

    def gather_outer(template, vertex_ids):
        points = orig_gather(template, vertex_ids)
        return points._replace(weights=homog_outer(points.rest, points.weights))

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
        def skin(rest, weights, transforms):
            if outer:
                return skin_outer(homog_outer(rest, weights), transforms)
            return kinematics.blend_skin(rest, weights, transforms)

        def forward_points(template, params, points, _kp_from_points=False):
            if template.posedirs is not None:
                raise NotImplementedError("the profiling rewrites do not handle pose blend shapes")
            transforms, joints = body.skinning_transforms(template, params)
            if outer:
                vertices = skin_outer(points.weights, transforms)
            else:
                vertices = kinematics.blend_skin(points.rest, points.weights, transforms)
            if compact_kp:
                kpv = skin(jnp.asarray(kp_rest), jnp.asarray(kp_weights), transforms)
                keypoints = jnp.einsum("kj,...jc->...kc", template.kp_joint_weights, joints) + jnp.einsum(
                    "ku,...uc->...kc", jnp.asarray(kp_dense), kpv)
                project = functools.partial(weak_perspective, scale=params.scale, translation=params.translation)
                return body.BodyOutput(vertices=vertices, joints=joints, keypoints=keypoints,
                                       vertices2d=project(vertices), joints2d=project(joints),
                                       keypoints2d=project(keypoints))
            ids = template.kp_vertex_ids.reshape(-1)
            kpv = skin(template.vertices[ids], template.weights[ids], transforms)
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
    }


def profile(template, batch, config, repeats: int, only=None):
    """Where the time of one register call goes, and what rewrites of the body model would save."""
    bsz = batch.size
    init = reg.init_params(template, batch, IMAGE)
    print(f"\nprofile: register, batch {bsz}, {config.num_steps} steps; process CPU time per step is the "
          "robust number on a loaded machine (wall in brackets)")
    compiled, _ = compile_register(template, batch, init, config)
    thunk_profile(compiled, lambda: compiled(template, batch, init), config.num_steps)
    compiled_variants = {}
    for name, patches in _variants(template).items():
        if only and name != "baseline (register as is)" and not any(o in name for o in only):
            continue
        with patched(*patches):
            comp, _ = compile_register(template, batch, init, config)
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
    variants = [] if args.no_torch else list(args.torch_variants)
    threads = args.torch_threads or sorted({1, os.cpu_count() or 1})
    failed = {}
    if variants:
        print(f"objective parity (PyTorch {', '.join(variants)} vs bodyjax register, batch 10):")
        for name, cfg in schedules.items():
            failed.update(check_parity(template, subset(data, 10), cfg, name, variants))
        variants = [v for v in variants if v not in failed]

    rows, torch_rows = [], []
    ndev = len(jax.devices())
    for bsz in args.batches:
        batch = jax.device_put(subset(data, bsz))
        init = reg.init_params(template, batch, IMAGE)
        if ndev > 1 and bsz % ndev == 0:
            from jax.sharding import Mesh, NamedSharding, PartitionSpec
            sharding = NamedSharding(Mesh(np.array(jax.devices()), ("batch",)), PartitionSpec("batch"))
            batch, init = jax.device_put((batch, init), sharding)
            print(f"  batch {bsz:4d}: sharded over {ndev} host devices")
        torch_found = {}
        if variants:
            torch_found = torch_step_times(template, subset(data, bsz), init, variants, args.torch_steps, threads)
            for v, r in torch_found.items():
                torch_rows.append((bsz, v, r))
                if "step_s" in r:
                    print(f"  batch {bsz:4d} torch {v:14s}: " + ", ".join(
                        f"{t} thread(s) {1e3 * s:.2f} ms/step" for t, s in r["by_threads"].items())
                        + f" (median step); warm-up {r['warmup_s']:.1f} s", flush=True)
        ok = {v: r for v, r in torch_found.items() if "step_s" in r}
        strongest = min(ok, key=lambda v: ok[v]["step_s"]) if ok else None
        for name, cfg in schedules.items():
            compiled, comp_s = compile_register(template, batch, init, cfg)
            med, mn, cpu = time_call(functools.partial(compiled, template, batch, init), args.repeats)
            row = {"batch": bsz, "schedule": f"{name} ({cfg.num_steps} steps)", "jax_s": med, "jax_min_s": mn,
                   "jax_fps": bsz / med, "jax_cpu_fps": bsz / cpu, "compile_s": comp_s, "strongest": strongest,
                   "torch": {}}
            for v in variants:
                r = torch_found.get(v, {})
                if "step_s" in r:
                    torch_s = r["step_s"] * cfg.num_steps
                    row["torch"][v] = {"fps": bsz / torch_s, "ratio": torch_s / med}
            rows.append(row)
            best = (f"; strongest torch {strongest} {row['torch'][strongest]['fps']:.2f} fits/s "
                    f"({row['torch'][strongest]['ratio']:.1f}x)" if strongest else "")
            print(f"  batch {bsz:4d} {name:7s}: bodyjax {med:7.3f} s/call (min {mn:.3f}, CPU {cpu:.3f}) -> "
                  f"{bsz / med:8.1f} fits/s{best}; compile {comp_s:.1f} s", flush=True)

    print(f"\nfits per second. bodyjax: batch / median wall seconds of {args.repeats} calls (the CPU column uses "
          "the process CPU seconds instead: what an uncontended core would give when XLA runs one thread).")
    if variants:
        print(f"torch: EXTRAPOLATED: median of {args.torch_steps} timed steps x the schedule's step count "
              f"(its per-step cost is constant), fastest of {' and '.join(map(str, threads))} thread(s). "
              "ratio = bodyjax fits/s / torch fits/s.")
    width = {v: max(20, len(v) + 8) for v in variants}
    hdr = (f"{'batch':>5} | {'schedule':<19} | {'bodyjax fits/s':>14} | {'(CPU-time)':>10} | "
           f"{'strongest torch':<15} | {'fits/s':>8} | {'ratio':>7} | "
           + "".join(f"{v + ' (ratio)':>{width[v]}} | " for v in variants) + f"{'compile s':>9}")
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        s = r["strongest"]
        strongest = (f"{s:<15} | {r['torch'][s]['fps']:8.2f} | {r['torch'][s]['ratio']:6.1f}x" if s
                     else f"{'-':<15} | {'-':>8} | {'-':>7}")
        cells = []
        for v in variants:
            t = r["torch"].get(v)
            cells.append(f"{t['fps']:10.2f} ({t['ratio']:6.1f}x)" if t else "failed")
        print(f"{r['batch']:5d} | {r['schedule']:<19} | {r['jax_fps']:14.1f} | {r['jax_cpu_fps']:10.1f} | "
              f"{strongest} | " + "".join(f"{c:>{width[v]}} | " for c, v in zip(cells, variants))
              + f"{r['compile_s']:9.1f}")
    print("compile time: register lower + compile (tracing included), once per (config, batch shape), "
          "not in the fits/s.")
    if torch_rows:
        print("\ntorch per step (median, at the fastest thread count); warm-up = the untimed first steps, "
              "for *_compile the torch.compile time (short when inductor's on-disk cache already holds the graph), "
              "not in the fits/s:")
        hdr = f"{'batch':>5} | {'variant':<14} | {'ms/step':>8} | {'threads':>7} | {'warm-up s':>9}"
        print(hdr)
        print("-" * len(hdr))
        for bsz, v, r in torch_rows:
            if "step_s" in r:
                print(f"{bsz:5d} | {v:<14} | {1e3 * r['step_s']:8.2f} | {r['threads']:7d} | {r['warmup_s']:9.1f}")
            else:
                print(f"{bsz:5d} | {v:<14} | {'failed':>8} | {'':>7} | {'':>9}  {r['error']}")
    for v, e in failed.items():
        print(f"{v}: torch.compile failed in the parity check, not timed: {e}")
    print("targets: >= 100 fits/s for the 300-step schedule at batch >= 64 on a 2-core CPU; >= 10x the "
          "strongest PyTorch variant")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, nargs="+", default=[10, 64, 256])
    ap.add_argument("--torch-steps", type=int, default=10, help="PyTorch steps timed (then extrapolated)")
    ap.add_argument("--torch-variants", nargs="+", default=list(DEFAULT_TORCH_VARIANTS),
                    choices=list(TORCH_VARIANTS), help="PyTorch references to time (see above)")
    ap.add_argument("--torch-threads", type=int, nargs="+", default=None,
                    help="torch thread counts to try, fastest kept (default: 1 and all cores)")
    ap.add_argument("--repeats", type=int, default=5, help="bodyjax calls timed per cell (median)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--profile", action="store_true",
                    help="per-op profile and what-if variants at the smallest batch and the largest batch >= 64")
    ap.add_argument("--profile-only", action="store_true", help="skip the table, only the profile (implies --profile)")
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
    n = max(args.batches + [10])
    t0 = time.perf_counter()
    records = synthetic.make_split(template, data_cfg, seed=args.seed, num_samples=n)
    data = sample.to_batch(records, with_image=False, with_gt=False)
    pts = np.asarray(data.dense_mask).sum(1)
    print(f"data: {n} synthetic samples, {IMAGE_SIZE} px, coco17, dense points per image mean {pts.mean():.1f} "
          f"(min {pts.min():.0f}, max {pts.max():.0f}, padded to {data.dense_mask.shape[1]}); "
          f"generated in {time.perf_counter() - t0:.1f} s")

    schedules = {"round1": reg.stiff_config(), "later": reg.RegistrationConfig()}
    if not args.profile_only:
        table(args, template, data, schedules)
    if args.profile or args.profile_only:
        big = [b for b in args.batches if b >= 64]
        bsz = max(big) if big else max(args.batches)
        for b in sorted(set([min(args.batches)] + [bsz])):
            profile(template, jax.device_put(subset(data, b)), reg.stiff_config(), args.repeats, args.variants)
    print(load_line("end"))


if __name__ == "__main__":
    main()
