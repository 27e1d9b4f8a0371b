"""How much 3D a finished run's lifter recovers from 2D keypoints of a given precision.

    python tools/eval_keypoint_precision.py --config configs/default.py:bench --workdir workdir/levers_bench/all_seed0

Loads the newest checkpoint of a finished run (its regressor and its last lifter, trained on the
fits) and scores on the test split, as PA-MPJPE over the labelled COCO-17 keypoints (mm; ground
truth for evaluation only): the regressor's 3D keypoints; the lifter on the annotated 2D keypoints;
the lifter on the regressor's projected 2D keypoints; the lifter on the annotated keypoints with
Gaussian noise of ``--noise`` pixels per coordinate; with ``--keypoint-net FILE`` (a part / IUV
predictor with keypoint heat-map heads, ``tools/pretrain_iuv_net.py --keypoints``, an EXTENSION)
also the lifter on that network's 2D keypoints. It answers whether the regressor's 3D error is
a matter of 2D precision (how far its keypoints are in the image) or of lifting.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from bodyjax import body, lifter, metrics, skeletons  # noqa: E402
from bodyjax.data import sample  # noqa: E402
from bodyjax.loop import checkpoints, epochs, experiment  # noqa: E402
from bodyjax.loop import deform_and_learn as dnl  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/default.py:bench", help="the run's config (FILE[:VARIANT])")
    ap.add_argument("--workdir", required=True, help="the finished run's work directory")
    ap.add_argument("--seed", type=int, default=0, help="config.seed and config.data.seed of the run")
    ap.add_argument("--data-dir", default="", help="config.data.data_dir of the run ('' = <workdir>/../data)")
    ap.add_argument("--noise", type=float, nargs="*", default=[0.5, 1.0, 2.0, 3.0])
    ap.add_argument("--keypoint-net", default="", help="a predictor with keypoint heads (.npz of "
                    "tools/pretrain_iuv_net.py --keypoints): the lifter on its 2D keypoints")
    args = ap.parse_args()

    path, _, variant = args.config.partition(":")
    c = importlib.import_module(path.replace("/", ".").removesuffix(".py")).get_config(variant)
    c.seed = c.data.seed = args.seed
    c.data.data_dir = args.data_dir
    template = experiment.load_template(c)
    loop = experiment.loop_config(c)
    data = experiment.load_data(c, args.workdir, template)
    state = dnl.init_state(c.seed, template, len(data.train), loop)
    state, step = checkpoints.restore_newest(checkpoints.manager(args.workdir), state)
    if step is None or not bool(state.has_fits):
        raise SystemExit(f"{args.workdir}: no checkpoint of a run with a trained regressor")
    n = len(data.test)
    recs = epochs.read(dnl._Select(data.test, ("image", "iuv", "keypoints", "keypoint_visible") + dnl.GT_KEYS),
                       np.arange(n))
    params, kp2d = [], []
    for idx, chunk in epochs.chunks(dnl._Select(data.test, ("image", "iuv", "keypoints", "keypoint_visible")),
                                    loop.chunk):
        p = dnl.predict_records(state, template, chunk, loop)
        params.append(jax.tree_util.tree_map(lambda a: np.asarray(a)[:len(idx)], p.params))
        kp2d.append(np.asarray(p.keypoints2d)[:len(idx)])
    params = epochs.concatenate(params)
    kp2d = np.concatenate(kp2d)
    zeros = jnp.zeros((n, 1), jnp.int32)
    forward = jax.jit(body.forward_subset)
    root = np.asarray(skeletons.get_keypoint_set(template.keypoint_set).root)

    def rel(a):
        a = np.asarray(a)
        return (a - a[:, root].mean(1, keepdims=True)) * 1000.0

    gt = rel(forward(template, sample.params_from_record(recs, "gt"), zeros).keypoints)
    vis = recs["keypoint_visible"]
    lvis = dnl.lifter_visibility(vis, loop)

    def pa(x):
        return float(jnp.mean(metrics.pa_mpjpe(jnp.asarray(x), jnp.asarray(gt), jnp.asarray(lvis))))

    def err2d(x):
        return float(np.sum(np.linalg.norm(x - recs["keypoints"], axis=-1) * vis) / vis.sum())

    print(f"{args.workdir}: round {int(state.round)}, {n} test images, {c.data.image_size}-px images")
    print(f"{'input':<52}{'2D error px':>12}{'PA mm':>8}")
    print(f"{'the regressor (its 3D keypoints)':<52}{err2d(kp2d):>12.2f}{pa(rel(forward(template, params, zeros).keypoints)):>8.1f}")
    print(f"{'the lifter on the annotated 2D keypoints':<52}{0.0:>12.2f}{pa(lifter.lift(state.lifter, recs['keypoints'], lvis)):>8.1f}")
    print(f"{'the lifter on the regressor projected keypoints':<52}{err2d(kp2d):>12.2f}{pa(lifter.lift(state.lifter, kp2d, lvis)):>8.1f}")
    if args.keypoint_net:
        from bodyjax import iuv_net, pretrained  # noqa: PLC0415
        _, info = pretrained.read_weights(args.keypoint_net, "--keypoint-net", "part / IUV predictor")
        net = iuv_net.IUVNetConfig(**{k: (tuple(v) if isinstance(v, list) else v)
                                      for k, v in info["network"].items()},
                                   keypoints=int(info.get("keypoints", recs["keypoints"].shape[1])))
        kp_state = iuv_net.load_params(iuv_net.create_state(0, net), args.keypoint_net, "--keypoint-net")
        heat, _ = iuv_net.predict_keypoints(kp_state, recs["image"])
        print(f"{'the lifter on the heat-map heads keypoints':<52}{err2d(heat):>12.2f}"
              f"{pa(lifter.lift(state.lifter, heat, lvis)):>8.1f}")
        mean = 0.5 * (heat + kp2d)
        print(f"{'the lifter on the mean of heat-map and regressor kps':<52}{err2d(mean):>12.2f}"
              f"{pa(lifter.lift(state.lifter, mean, lvis)):>8.1f}")
        names = skeletons.get_keypoint_set(template.keypoint_set).names
        for label, xy in (("regressor", kp2d), ("heat maps", heat)):
            per = np.sum(np.linalg.norm(xy - recs["keypoints"], axis=-1) * vis, 0) / np.maximum(vis.sum(0), 1)
            print(f"  2D error per keypoint, {label}: " + ", ".join(f"{n} {e:.2f}" for n, e in zip(names, per)))
    rng = np.random.default_rng(0)
    for sd in args.noise:
        noisy = (recs["keypoints"] + rng.normal(0.0, sd, recs["keypoints"].shape)).astype(np.float32)
        print(f"{f'the lifter on the annotated ones + {sd} px noise':<52}{err2d(noisy):>12.2f}"
              f"{pa(lifter.lift(state.lifter, noisy, lvis)):>8.1f}")


if __name__ == "__main__":
    main()
