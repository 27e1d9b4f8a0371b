"""Round 1's registration on a run's training images, with its inputs and schedule varied.

    python tools/eval_round1_registration.py --config configs/default.py:bench --workdir /tmp/r1 --num 400 \
        --variants "stiff=300,relax=200,relax_lr=0.1,relax_ws=10,depth=lifter" \
                   "depth=none,relax=800,relax_lr=0.05,relax_ws=1"

Runs the configured experiment up to round 1's registration (the part predictor and the lifter,
resumed from ``--workdir`` when already there), then fits the first ``--num`` training images from
the T-pose once per variant: a stiff phase (``stiff`` passes, the config's ``registration_first``)
and a relaxed phase from it (``relax`` passes of the config's ``registration_relax`` with
``relax_lr`` / ``relax_ws`` / ``relax_lrf`` overriding its learning rate, ω_scale and final
learning-rate fraction). ``depth`` is the z^GAN of eq. 9 in both phases: ``lifter`` (round 1's
lifter, weight ``w_depth``, default 1), ``gt`` (the true root-relative depths: the oracle) or
``none``. Prints the 24-joint PA-MPJPE and rescaled MPJPE (mm) after each phase, and how well the
lifter's depths agree with the true ones. Ground truth is read for evaluation only.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from bodyjax import body, lifter, registration, skeletons  # noqa: E402
from bodyjax.data import sample  # noqa: E402
from bodyjax.loop import checkpoints, epochs, experiment  # noqa: E402
from bodyjax.loop import deform_and_learn as dnl  # noqa: E402

KEYS = {"stiff": int, "relax": int, "relax_lr": float, "relax_ws": float, "relax_lrf": float, "depth": str,
        "w_depth": float}


def parse_variant(text: str) -> dict:
    """``"k=v,k=v"`` → dict, each key checked against :data:`KEYS`."""
    out = {}
    for item in filter(None, text.split(",")):
        key, _, value = item.partition("=")
        if key not in KEYS:
            raise SystemExit(f"--variants: unknown key {key!r} in {text!r} (known: {sorted(KEYS)})")
        out[key] = KEYS[key](value)
    if out.get("depth", "lifter") not in ("lifter", "gt", "none"):
        raise SystemExit(f"--variants: depth must be lifter, gt or none, got {out['depth']!r}")
    return out


def load_config(spec: str):
    import importlib  # noqa: PLC0415

    path, _, variant = spec.partition(":")
    module = importlib.import_module(path.replace("/", ".").removesuffix(".py"))
    return module.get_config(variant)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/default.py:bench")
    ap.add_argument("--workdir", required=True, help="the run's work directory (created and resumed)")
    ap.add_argument("--seed", type=int, default=0, help="config.seed and config.data.seed")
    ap.add_argument("--num", type=int, default=400, help="training images to fit")
    ap.add_argument("--data-dir", default="", help="config.data.data_dir ('' = <workdir>/../data)")
    ap.add_argument("--variants", nargs="+", default=["depth=lifter", "depth=none"])
    args = ap.parse_args()
    variants = [(v, parse_variant(v)) for v in args.variants]

    c = load_config(args.config)
    c.seed = c.data.seed = args.seed
    c.data.data_dir = args.data_dir
    c.pictures = False
    if not os.path.isdir(os.path.join(args.workdir, "checkpoints")):
        c.stop_after_stages = dnl.STAGES.index("registration")
        try:
            experiment.train_and_evaluate(c, args.workdir)
        except SystemExit:
            pass
    template = experiment.load_template(c)
    loop = experiment.loop_config(c)
    data = experiment.load_data(c, args.workdir, template)
    state = dnl.init_state(c.seed, template, len(data.train), loop)
    state, _ = checkpoints.restore_newest(checkpoints.manager(args.workdir), state)
    if (int(state.round), dnl.STAGES[int(state.stage)]) != (0, "registration"):
        raise SystemExit(f"{args.workdir}: its checkpoint is at round {int(state.round) + 1} stage "
                         f"{dnl.STAGES[int(state.stage)]!r}, not round 1's registration (use a new --workdir)")
    n = min(args.num, len(data.train))
    recs = epochs.read(dnl._Select(data.train, dnl.POINT_KEYS + dnl.GT_KEYS), np.arange(n))
    batch = dnl._points_batch(recs)
    vis = dnl.lifter_visibility(recs["keypoint_visible"], loop)
    z_lifter = np.asarray(lifter.predict_depths(state.lifter, recs["keypoints"], vis))
    gt = sample.params_from_record(recs, "gt")
    posed = jax.jit(body.forward_subset)(template, gt, jnp.zeros((n, 1), jnp.int32))
    z = np.asarray(posed.keypoints[..., 2]) * np.asarray(gt.scale)[:, None]
    root = np.asarray(skeletons.get_keypoint_set(template.keypoint_set).root)
    z_gt = (z - z[:, root].mean(1, keepdims=True)).astype(np.float32)
    m = vis > 0
    print(f"{n} training images; round 1's lifter depths vs the true ones: mean |error| "
          f"{np.mean(np.abs(z_lifter - z_gt)[m]):.2f} px, correlation {np.corrcoef(z_lifter[m], z_gt[m])[0, 1]:.2f}")
    size = (c.data.image_size,) * 2
    canonical = dnl.canonical_bone_sum(template)

    def errors(params):
        joints = body.forward_subset(template, params, np.zeros((n, 1), np.int32)).joints
        out = dnl.pose_metrics(joints, recs["gt_joints3d"], template.parents, canonical)
        return out["pa_mpjpe"], out["mpjpe"]

    print(f"{'variant':<64}{'stiff PA':>10}{'PA':>8}{'MPJPE':>8}{'s':>6}")
    for text, v in variants:
        b = batch
        depth = v.get("depth", "lifter")
        w_depth = v.get("w_depth", 1.0)
        if depth != "none":
            b = b.replace(keypoint_depth=z_lifter if depth == "lifter" else z_gt, keypoint_depth_mask=vis)
        stiff = dataclasses.replace(loop.registration_first, num_steps=v.get("stiff", loop.registration_first.num_steps),
                                    w_depth=w_depth)
        relax_base = loop.registration_relax or loop.registration
        relax = dataclasses.replace(relax_base, num_steps=v.get("relax", relax_base.num_steps), w_depth=w_depth,
                                    learning_rate=v.get("relax_lr", relax_base.learning_rate),
                                    w_scale=v.get("relax_ws", relax_base.w_scale),
                                    lr_final_fraction=v.get("relax_lrf", relax_base.lr_final_fraction))
        t0 = time.time()
        p, _ = registration.register(template, b, None, stiff, size)
        stiff_pa = errors(p)[0]
        if relax.num_steps > 0:
            p, _ = registration.register(template, b, p, relax, size)
        pa, mpjpe = errors(p)
        print(f"{text:<64}{stiff_pa:>10.1f}{pa:>8.1f}{mpjpe:>8.1f}{time.time() - t0:>6.0f}", flush=True)


if __name__ == "__main__":
    main()
