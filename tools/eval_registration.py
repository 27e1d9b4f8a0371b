"""Oracle evaluation of the registration on the synthetic test split.

    python tools/eval_registration.py --num 64 --later-steps 100 300 1000

Fits the default template to synthetic test samples from the T-pose with ground-truth inputs:
the dense correspondences on the visible surface, the visible 2D keypoints and, optionally, the
ground-truth root-relative depths of the keypoints (the role the lifter's z^GAN plays in eq. 9).
Runs the paper's schedule (a stiff 300-step round, then a later round) and reports 3D joint errors
against the ground truth after each stage:

* with depths, keypoints = the 24 joints (the oracle of the registration: does it converge?);
* with depths, keypoints = COCO-17 (what the lifter supplies in the main loop);
* without depths, COCO-17 (2D evidence only).

MPJPE is root-aligned (pelvis) after the paper's bone-length rescaling, PA-MPJPE after a similarity Procrustes; both in millimetres over the
24 joints. Also prints the mean 2D residual of the dense points and the fits per second.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from bodyjax import body, metrics, registration, skeletons  # noqa: E402
from bodyjax.batch import Batch  # noqa: E402
from bodyjax.data import sample, synthetic  # noqa: E402


def gt_params(split) -> body.BodyParams:
    return sample.params_from_record(split, "gt")


def make_batch(template, split, keypoint_set: str, with_depth: bool, all_keypoints: bool = False) -> Batch:
    """The registration's :class:`~bodyjax.batch.Batch` of the split (no pixels, no ground truth),
    with the ground-truth root-relative keypoint depths (pixels) as ``keypoint_depth`` if asked."""
    batch = sample.to_batch(split, with_image=False, with_gt=False)
    if all_keypoints:  # the synthetic ground truth knows where hidden keypoints project too
        batch = batch.replace(keypoint_visible=np.ones_like(batch.keypoint_visible))
    if with_depth:
        gt = body.forward(template, gt_params(split))
        z = gt.keypoints[..., 2] * batch_scale(split)[:, None]
        root = jnp.asarray(skeletons.get_keypoint_set(keypoint_set).root)
        depth = z - jnp.mean(z[:, root], axis=1, keepdims=True)
        batch = batch.replace(keypoint_depth=np.asarray(depth, np.float32),
                              keypoint_depth_mask=np.ones(depth.shape, np.float32))
    return batch


def batch_scale(split):
    return jnp.asarray(split["gt_scale"])


def fit_errors(template, params, split) -> tuple[float, float]:
    out = body.forward(template, params)
    pred = out.joints - out.joints[:, :1]
    gt = jnp.asarray(split["gt_joints3d"])
    # the paper's protocol: rescale so the bone-length sum equals the reference skeleton's (the
    # metric size is not observable under weak perspective)
    return (float(jnp.mean(metrics.mpjpe_rescaled(pred, gt, template.parents)) * 1000),
            float(jnp.mean(metrics.pa_mpjpe(pred, gt)) * 1000))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--later-steps", type=int, nargs="+", default=[100, 300, 1000])
    parser.add_argument("--later-lr", type=float, default=0.1)
    parser.add_argument("--w-kp", type=float, default=1.0, help="ω_KP of the later round")
    parser.add_argument("--w-scale", type=float, default=10.0, help="ω_scale of the later round")
    parser.add_argument("--w-joint", "--w-angle", dest="w_joint", type=float, default=0.001,
                        help="ω_joint of the later round (RegistrationConfig.w_angle)")
    parser.add_argument("--all-keypoints", action="store_true",
                        help="with GT depths, also give the GT 2D position of hidden keypoints")
    parser.add_argument("--only-oracle", action="store_true", help="only the 24-joint GT-depth oracle")
    args = parser.parse_args(argv)

    size = (args.image_size, args.image_size)
    rows = []
    settings = (("joints24", True), ("coco17", True), ("coco17", False))
    for keypoint_set, with_depth in settings[:1] if args.only_oracle else settings:
        template = body.default_template(keypoint_set)
        cfg = synthetic.SyntheticConfig(image_size=args.image_size, keypoint_set=keypoint_set)
        split = synthetic.make_split(template, cfg, args.seed, args.num)
        batch = make_batch(template, split, keypoint_set, with_depth, args.all_keypoints and with_depth)
        init = registration.init_params(template, batch, size)
        label = f"{keypoint_set}, {'GT depths' if with_depth else 'no depths'}"
        if args.all_keypoints and with_depth:
            label += ", all kp"
        rows.append((label, "T-pose init (affine camera)", *fit_errors(template, init, split), np.nan, np.nan))
        stiff = registration.stiff_config()  # the keypoint set is the template's
        fit, report = registration.register(template, batch, init, stiff, size)
        jax.block_until_ready(fit)
        t0 = time.perf_counter()
        fit, report = registration.register(template, batch, init, stiff, size)
        jax.block_until_ready(fit)
        fps = args.num / (time.perf_counter() - t0)
        rows.append((label, "stiff round, 300 steps", *fit_errors(template, fit, split),
                     float(jnp.mean(report.dense_residual_px)), fps))
        for steps in args.later_steps:
            later = registration.RegistrationConfig(num_steps=steps, learning_rate=args.later_lr,
                                                    w_kp=args.w_kp, w_scale=args.w_scale,
                                                    w_angle=args.w_joint)
            fit2, report2 = registration.register(template, batch, fit, later, size)
            rows.append((label, f"+ later round, {steps} steps", *fit_errors(template, fit2, split),
                         float(jnp.mean(report2.dense_residual_px)), np.nan))
    print(f"synthetic test split: {args.num} samples at {args.image_size} px, seed {args.seed}")
    head = f"{'inputs':<22} {'stage':<30} {'MPJPE mm':>9} {'PA-MPJPE mm':>12} {'2D res px':>10} {'fits/s':>7}"
    print(head)
    print("-" * len(head))
    for label, stage, mp, pa, res, fps in rows:
        print(f"{label:<22} {stage:<30} {mp:>9.1f} {pa:>12.1f} {res:>10.2f} {fps:>7.1f}")


if __name__ == "__main__":
    main()
