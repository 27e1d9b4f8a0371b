"""Benchmark of the body model: bodyjax (jit) against the same math in PyTorch eager.

    python tools/bench_body.py                # default template, batch 1, 64, 512, plus SMPL
    python tools/bench_body.py --batches 1 64 --repeats 5

Measures, on the default template, the forward pass (all vertices, joints, keypoints, projection)
and forward + gradient of a squared 2D loss with respect to the pose, for each batch size. The
PyTorch reference implements the same model (Rodrigues, kinematic chain with segment scales, linear
blend skinning, Gram–Schmidt, weak perspective) with batched tensor ops, run eagerly as the paper's
PyTorch code would. It then compares ``bodyjax.smpl.smpl_forward`` with the ``smplx`` package on a
random model file in the official SMPL layout. Prints a table with the speed-up ratios.

    python tools/bench_body.py --compile      # seconds to compile, not to run

``--compile`` measures instead how long XLA takes to lower and compile the forward pass and its
gradient (batch 64, each twice, the median) with ``kinematics.chain`` as it is (one step per depth
level of the tree) and, as the reference in the same run, with the chain composed one joint at a
time (the formulation before it, kept here). Set ``XLA_FLAGS=--xla_backend_optimization_level=0``
to measure it as the fast test selection compiles.

The run-time comparison needs the test extra (torch, smplx): ``pip install -e '.[test]'``;
``--compile`` does not.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from bodyjax import body, kinematics  # noqa: E402


def timeit(fn, repeats: int) -> float:
    """Median seconds per call of ``fn`` after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


# ----------------------------------------------------------------------------------------------
# PyTorch eager reference of the same model


def torch_model(template: body.BodyTemplate):
    import torch

    verts = torch.tensor(np.asarray(template.vertices))
    weights = torch.tensor(np.asarray(template.weights))
    joints = torch.tensor(np.asarray(template.joints))
    kpj = torch.tensor(np.asarray(template.kp_joint_weights))
    kpv_ids = torch.tensor(np.asarray(template.kp_vertex_ids), dtype=torch.long)
    kpv_w = torch.tensor(np.asarray(template.kp_vertex_weights))
    parents = template.parents

    def rodrigues(aa):
        theta = torch.sqrt((aa * aa).sum(-1, keepdim=True) + 1e-12)
        k = aa / theta
        kx, ky, kz = k.unbind(-1)
        zero = torch.zeros_like(kx)
        K = torch.stack([zero, -kz, ky, kz, zero, -kx, -ky, kx, zero], -1).reshape(aa.shape[:-1] + (3, 3))
        s, c = torch.sin(theta)[..., None], torch.cos(theta)[..., None]
        return torch.eye(3) + s * K + (1 - c) * (K @ K)

    def gram_schmidt(m):
        c1, c2, c3 = m[..., :, 0], m[..., :, 1], m[..., :, 2]
        b1 = c1 / c1.norm(dim=-1, keepdim=True)
        b2 = c2 - (b1 * c2).sum(-1, keepdim=True) * b1
        b2 = b2 / b2.norm(dim=-1, keepdim=True)
        b3 = c3 - (b1 * c3).sum(-1, keepdim=True) * b1 - (b2 * c3).sum(-1, keepdim=True) * b2
        b3 = b3 / b3.norm(dim=-1, keepdim=True)
        return torch.stack([b1, b2, b3], -1)

    def forward(pose, scales, rotation, scale, translation):
        local = rodrigues(pose)
        rots, pos = [torch.eye(3).expand(pose.shape[0], 3, 3)], [joints[0].expand(pose.shape[0], 3)]
        for j in range(1, 24):
            p = parents[j]
            off = (joints[j] - joints[p])[None] * scales[:, p:p + 1]
            rots.append(rots[p] @ local[:, j])
            pos.append(pos[p] + (rots[p] @ off[..., None])[..., 0])
        rots, pos = torch.stack(rots, 1), torch.stack(pos, 1)
        m = rots * scales[..., None, None]
        b = pos - (m @ joints[None, :, :, None])[..., 0]
        T = torch.cat([m, b[..., None]], -1)  # (B, 24, 3, 4)
        r = gram_schmidt(rotation)
        T = r[:, None] @ T
        blended = torch.einsum("vj,bjk->bvk", weights, T.reshape(-1, 24, 12)).reshape(-1, verts.shape[0], 3, 4)
        v = (blended[..., :3] @ verts[None, :, :, None])[..., 0] + blended[..., 3]
        jpos = (r[:, None] @ pos[..., None])[..., 0]
        kp = torch.einsum("kj,bjc->bkc", kpj, jpos) + (kpv_w[None, :, :, None] * v[:, kpv_ids]).sum(2)
        proj = lambda x: x[..., :2] * scale[:, None, None] + translation[:, None]  # noqa: E731
        return v, jpos, kp, proj(v), proj(kp)

    return forward


# ----------------------------------------------------------------------------------------------


def bench_template(batches, repeats):
    import torch

    template = body.default_template()
    rows = []
    tforward = torch_model(template)
    for b in batches:
        rng = np.random.default_rng(0)
        pose = rng.normal(0, 0.3, (b, 24, 3)).astype(np.float32)
        params = body.rest_params(template, (b,), scale=100.0).replace(pose=jnp.asarray(pose))
        target = jnp.asarray(rng.normal(0, 50, (b, template.num_vertices, 2)).astype(np.float32))

        fwd = jax.jit(body.forward)

        def loss(pose_, params_):
            out = body.forward(template, params_.replace(pose=pose_))
            return jnp.mean((out.vertices2d - target) ** 2)

        grad = jax.jit(jax.value_and_grad(loss))
        t_fwd = timeit(lambda: jax.block_until_ready(fwd(template, params)), repeats)
        t_grad = timeit(lambda: jax.block_until_ready(grad(params.pose, params)), repeats)

        tp = torch.tensor(pose, requires_grad=True)
        tsc, trot = torch.ones(b, 24), torch.eye(3).expand(b, 3, 3).contiguous()
        ts, tt = torch.full((b,), 100.0), torch.zeros(b, 2)
        ttarget = torch.tensor(np.asarray(target))

        def torch_fwd():
            with torch.no_grad():
                tforward(tp, tsc, trot, ts, tt)

        def torch_grad():
            tp.grad = None
            out = tforward(tp, tsc, trot, ts, tt)
            ((out[3] - ttarget) ** 2).mean().backward()

        # the two implementations agree
        with torch.no_grad():
            ref = tforward(tp, tsc, trot, ts, tt)[0].numpy()
        err = float(np.abs(np.asarray(fwd(template, params).vertices) - ref).max())
        t_tfwd = timeit(torch_fwd, repeats)
        t_tgrad = timeit(torch_grad, repeats)
        rows.append(("template", b, t_fwd, t_tfwd, t_grad, t_tgrad, err))
    return rows


def bench_smpl(batches, repeats):
    import torch

    try:
        import smplx
        from bodyjax import smpl
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
        from smpl_fixture import write_random_smpl
    except ImportError as e:  # pragma: no cover - optional
        print(f"(skipping SMPL comparison: {e})")
        return []
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = write_random_smpl(os.path.join(tmp, "SMPL_NEUTRAL.pkl"), num_vertices=6890, seed=0)
        model = smpl.load_smpl(path)
        ref_model = smpl_fixture_model(smplx, path)
        for b in batches:
            rng = np.random.default_rng(1)
            betas = rng.normal(0, 1, (b, 10)).astype(np.float32)
            pose = rng.normal(0, 0.3, (b, 24, 3)).astype(np.float32)
            fwd = jax.jit(lambda be, po: smpl.smpl_forward(model, be, po))

            def loss(po, be):
                return jnp.mean(smpl.smpl_forward(model, be, po).vertices ** 2)

            grad = jax.jit(jax.value_and_grad(loss))
            jb, jp = jnp.asarray(betas), jnp.asarray(pose)
            t_fwd = timeit(lambda: jax.block_until_ready(fwd(jb, jp)), repeats)
            t_grad = timeit(lambda: jax.block_until_ready(grad(jp, jb)), repeats)
            tb = torch.tensor(betas)
            tpose = torch.tensor(pose.reshape(b, 72), requires_grad=True)

            def call():
                return ref_model(betas=tb, global_orient=tpose[:, :3], body_pose=tpose[:, 3:])

            def torch_fwd():
                with torch.no_grad():
                    call()

            def torch_grad():
                tpose.grad = None
                (call().vertices ** 2).mean().backward()

            with torch.no_grad():
                ref = call().vertices.numpy()
            err = float(np.abs(np.asarray(fwd(jb, jp).vertices) - ref).max())
            rows.append(("SMPL vs smplx", b, t_fwd, timeit(torch_fwd, repeats), t_grad,
                         timeit(torch_grad, repeats), err))
    return rows


def smpl_fixture_model(smplx, path):
    return smplx.SMPL(model_path=path, num_betas=10, batch_size=1, create_transl=False)


def chain_joint_by_joint(local_rotations, rest_joints, parents, bone_scales=None):
    """The kinematic chain composed one joint at a time: ``--compile``'s reference."""
    local = jnp.unstack(local_rotations, axis=-3)
    rest = jnp.unstack(rest_joints, axis=-2)
    scales = None if bone_scales is None else jnp.unstack(bone_scales, axis=-1)
    rots = [local[0]]
    pos = [jnp.broadcast_to(rest[0], rots[0].shape[:-2] + (3,))]
    for j in range(1, len(parents)):
        p = int(parents[j])
        offset = rest[j] - rest[p]
        if scales is not None:
            offset = offset * scales[p][..., None]
        rots.append(rots[p] @ local[j])
        pos.append(pos[p] + kinematics._matvec(rots[p], offset))
    return jnp.stack(rots, axis=-3), jnp.stack(pos, axis=-2)


def bench_compile(batch: int = 64, repeats: int = 2):
    """Seconds to lower + compile ``body.forward`` and its gradient, per chain formulation."""
    from unittest import mock

    template = body.default_template()
    rng = np.random.default_rng(0)
    params = body.rest_params(template, (batch,), scale=100.0).replace(
        pose=jnp.asarray(rng.normal(0, 0.3, (batch, 24, 3)).astype(np.float32)))
    target = jnp.asarray(rng.normal(0, 50, (batch, template.num_vertices, 2)).astype(np.float32))

    def loss(pose_, params_):
        return jnp.mean((body.forward(template, params_.replace(pose=pose_)).vertices2d - target) ** 2)

    rows, outputs = [], []
    for name, chain in (("by depth level (bodyjax)", kinematics.chain), ("joint by joint (reference)", chain_joint_by_joint)):
        with mock.patch.object(kinematics, "chain", chain):
            times = {}
            for kind, fn, args in (("fwd", body.forward, (template, params)),
                                   ("grad", jax.value_and_grad(loss), (params.pose, params))):
                seconds, lines = [], 0
                for _ in range(repeats):
                    jax.clear_caches()
                    t0 = time.perf_counter()
                    lowered = jax.jit(fn).lower(*args)
                    lowered.compile()
                    seconds.append(time.perf_counter() - t0)
                    lines = lowered.as_text().count("\n")
                times[kind] = (float(np.median(seconds)), lines)
            outputs.append(np.asarray(jax.jit(loss)(params.pose, params)))
        rows.append((name, times))
    print(f"compile seconds (lower + XLA), default template, batch {batch}, XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
    print(f"{'kinematic chain':<28} {'fwd s':>7} {'HLO lines':>10} | {'fwd+grad s':>10} {'HLO lines':>10}")
    for name, t in rows:
        print(f"{name:<28} {t['fwd'][0]:>7.2f} {t['fwd'][1]:>10} | {t['grad'][0]:>10.2f} {t['grad'][1]:>10}")
    ref = rows[1][1]
    print(f"reference / bodyjax: fwd {ref['fwd'][0] / rows[0][1]['fwd'][0]:.2f}x, "
          f"fwd+grad {ref['grad'][0] / rows[0][1]['grad'][0]:.2f}x; "
          f"loss difference {abs(float(outputs[0]) - float(outputs[1])):.1e}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64, 512])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--no-smpl", action="store_true")
    parser.add_argument("--compile", action="store_true", help="measure compilation, not run time")
    args = parser.parse_args()
    if args.compile:
        bench_compile()
        return
    import torch

    print(f"devices: jax {jax.devices()}, torch {torch.__version__} threads={torch.get_num_threads()}, "
          f"cpu cores={os.cpu_count()}")
    rows = bench_template(args.batches, args.repeats)
    if not args.no_smpl:
        rows += bench_smpl(args.batches, args.repeats)
    head = (f"{'model':<14} {'batch':>5} | {'fwd jax ms':>10} {'fwd torch ms':>12} {'ratio':>6} | "
            f"{'fwd+grad jax ms':>15} {'fwd+grad torch ms':>17} {'ratio':>6} | {'max |diff|':>10}")
    print(head)
    print("-" * len(head))
    for name, b, f, tf, g, tg, err in rows:
        print(f"{name:<14} {b:>5} | {f*1e3:>10.2f} {tf*1e3:>12.2f} {tf/f:>5.1f}x | "
              f"{g*1e3:>15.2f} {tg*1e3:>17.2f} {tg/g:>5.1f}x | {err:>10.2e}")
    print("ratio = torch eager time / bodyjax time (higher is better for bodyjax)")


if __name__ == "__main__":
    main()
