"""Sanity experiment: train the regressor on ground-truth synthetic θ and report test PA-MPJPE.

    python tools/train_regressor_gt.py --train 16000 --test 500 --epochs 24 --cache /tmp/regr

About 45 minutes on 2 CPU cores (16,000 images are rendered in about 1 minute per core and cached
with ``--cache``). With 2,000 images the network memorises the training set (training PA-MPJPE
far below the test error) and ends only slightly below the mean-pose baseline; with 16,000 the
training and test errors stay together and keep falling with the epochs.

The targets θ_fit are the synthetic samples' exact ground-truth parameters (the setting where the
registration would be perfect), so the run checks the regressor, its losses (eq. 13–14), the
augmentation and the unit conversions end to end. Training and test sets are disjoint draws of the
embedded synthetic data set (seeds ``--seed`` and ``--seed + 1``). The training loop is the project's:
:func:`bodyjax.loop.epochs.run_epochs` over grain batches (:func:`bodyjax.loop.epochs.record_batches`
of an :class:`~bodyjax.data.pipeline.ArraySource` of the records joined with their targets,
augmented by :class:`bodyjax.data.augment.Augment`) and :func:`bodyjax.regressor.train_step`.
Reported on the test set:

* PA-MPJPE (mm) of the 24 joints after a similarity (Procrustes) alignment, and MPJPE (mm) after
  root alignment only (so the global rotation counts), of the prediction;
* the same PA-MPJPE for two constant predictions: the rest pose (zero pose, unit segment scales) and
  the training mean θ (per-joint normalised mean quaternion, mean segment scales);
* the 2D keypoint error (pixels of the test images) of the visible keypoints, and the angle between
  the predicted and the true global rotation R (with the share above 90°: front/back confusions).

Defaults are the CPU configuration (``regressor.cpu_config()``: ResNet18 at width 32, 64-px images,
batch 32) trained from scratch with Adam at ``--lr 1e-3`` cosine-decayed to 5% (the paper's 1e-4
is for fine-tuning an ImageNet-pretrained ResNet50), eq. 13 with the paper's weights (1, 10, 1) and a
smooth-L1 threshold of 0.1 normalised units (with 1 every parameter error sits in the quadratic
part). Augmentation: zoom, in-plane rotation, shift and colour jitter WITHOUT left/right flips
(``--augment geo``): the synthetic renderer tints each body part with its DensePose part colour,
which is side-specific, so a mirrored image shows the left arm in the right arm's colour and flips
teach contradictory cues (real images have no such code; ``AugmentConfig()``'s default keeps flips).

``--input parts`` / ``--input iuv`` probe the regressor on label maps instead of RGB: the network
reads the rendered part (and U, V) labels of each sample (the records' ``iuv`` field, an oracle
for the part / IUV predictor), at train and test time.

``--yaw`` restricts the people's turn about the vertical axis (default: all round, the data set's
default). Telling front from back is the hard part at 64 px; a restricted yaw shows
what the same pipeline reaches once the orientation is not ambiguous.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import flax.traverse_util  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from bodyjax import body, metrics, regressor  # noqa: E402
from bodyjax.data import augment, synthetic  # noqa: E402
from bodyjax.data import sample as sample_lib  # noqa: E402
from bodyjax.data.pipeline import ArraySource  # noqa: E402
from bodyjax.loop import epochs  # noqa: E402
from bodyjax.rotations import (axis_angle_to_quaternion, gram_schmidt, quaternion_to_axis_angle,  # noqa: E402
                               standardize_quaternion)


def load_split(template, cfg, seed: int, num: int, cache=None) -> dict:
    """``synthetic.make_split``, optionally cached as ``{cache}/synthetic_{size}px_seed{seed}_{num}.npz``."""
    yaw = "" if tuple(cfg.yaw_range) == (-180.0, 180.0) else f"_yaw{cfg.yaw_range[1]:g}"
    path = None if cache is None else os.path.join(cache, f"synthetic_{cfg.image_size}px{yaw}_seed{seed}_{num}.npz")
    if path is not None and os.path.exists(path):
        with np.load(path) as f:
            if set(sample_lib.sample_spec((1, 1), 1, 1)) <= set(f.files):   # else: an older record layout
                return {k: f[k] for k in f.files}
    data = synthetic.make_split(template, cfg, seed=seed, num_samples=num)
    if path is not None:
        os.makedirs(cache, exist_ok=True)
        np.savez(path, **data)
    return data


def gt_params(data: dict) -> body.BodyParams:
    """The samples' ground truth as pixel-unit :class:`~bodyjax.body.BodyParams` ``(M,)``."""
    return sample_lib.params_from_record(data, "gt")


def training_source(data: dict, weight: float = 1.0) -> ArraySource:
    """The training records joined with their targets θ_fit = the ground truth (weight ``weight``;
    0 = the 2D terms of eq. 13 alone: no parameter or 3D joint target)."""
    arrays = dict(data, **sample_lib.params_to_record(gt_params(data), "target"))
    arrays["target_weight"] = np.full(len(data["image"]), weight, np.float32)
    return ArraySource(arrays, name="synthetic train")


def mean_theta(params: body.BodyParams) -> body.BodyParams:
    """The training mean θ (one sample): normalised mean quaternion per joint, mean scales, R = I."""
    q = standardize_quaternion(axis_angle_to_quaternion(jnp.asarray(params.pose)))
    q = jnp.mean(q, axis=0)
    q = q / jnp.linalg.norm(q, axis=-1, keepdims=True)
    return body.BodyParams(pose=quaternion_to_axis_angle(q),
                           segment_scales=jnp.mean(jnp.asarray(params.segment_scales), axis=0),
                           rotation=jnp.eye(3), scale=jnp.float32(1.0), translation=jnp.zeros(2))


def constant_pa_mpjpe(template, params: body.BodyParams, gt_joints: np.ndarray) -> float:
    """PA-MPJPE (mm) of predicting the same ``params`` for every test image."""
    joints = body.forward(template, params).joints
    joints = jnp.broadcast_to(joints, gt_joints.shape)
    return float(jnp.mean(metrics.pa_mpjpe(joints, gt_joints))) * 1000.0


def evaluate(state, template, data: dict) -> dict:
    """Test metrics of the regressor on stacked samples with ground truth."""
    pred = regressor.predict(state, template, images=data["image"], iuv=data["iuv"], batch_size=100,
                             with_vertices=False)
    gt = jnp.asarray(data["gt_joints3d"])
    pa = metrics.pa_mpjpe(pred.joints, gt) * 1000.0
    mp = metrics.mpjpe(pred.joints, gt, root=0) * 1000.0
    vis = data["keypoint_visible"]
    kp = metrics.pixel_error(pred.keypoints2d, jnp.asarray(data["keypoints"]), vis)
    r = jnp.swapaxes(gram_schmidt(pred.params.rotation), -1, -2) @ jnp.asarray(data["gt_rotation"])
    r_err = jnp.degrees(jnp.arccos(jnp.clip((jnp.trace(r, axis1=-2, axis2=-1) - 1) / 2, -1, 1)))
    return {"pa_mpjpe": float(jnp.mean(pa)), "pa_mpjpe_median": float(jnp.median(pa)),
            "mpjpe": float(jnp.mean(mp)), "kp_px": float(jnp.mean(kp)),
            "rot_deg": float(jnp.mean(r_err)), "rot_over_90": float(jnp.mean(r_err > 90))}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=16000)
    parser.add_argument("--test", type=int, default=500)
    parser.add_argument("--epochs", type=int, default=24)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--depth", type=int, default=18)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=64, help="synthetic images and network input, px")
    parser.add_argument("--pose-head", default="quaternion", choices=regressor.POSE_HEADS)
    parser.add_argument("--input", default="rgb", choices=regressor.INPUTS,
                        help="network input: rgb (the paper), or the rendered parts / iuv label maps")
    parser.add_argument("--weights", type=float, nargs=3, default=(1.0, 10.0, 1.0), metavar=("ALPHA", "BETA", "GAMMA"),
                        help="eq. 13 weights of L_regress, L_dense, L_KP (the paper: 1 10 1)")
    parser.add_argument("--smooth-l1-beta", type=float, default=0.1,
                        help="threshold of the smooth L1 (eq. 14), normalised units")
    parser.add_argument("--lr-final", type=float, default=0.05,
                        help="cosine-decay the learning rate to this fraction (1 = constant)")
    parser.add_argument("--augment", default="geo", choices=("geo", "full", "flip", "none"),
                        help="geo: AugmentConfig() without flips (default, see the module docstring); "
                             "full: AugmentConfig(); flip: left/right flips only; none: no augmentation")
    parser.add_argument("--yaw", type=float, default=180.0,
                        help="synthetic people turn by up to ±YAW degrees about the vertical (default: all round)")
    parser.add_argument("--head", default="linear", choices=regressor.HEADS,
                        help="linear (the paper) or ief (iterative error feedback, an extension)")
    parser.add_argument("--coords", action="store_true", help="append x, y coordinate channels (CoordConv)")
    parser.add_argument("--freeze-stem", action="store_true",
                        help="train without the stem's gradient (RegressorConfig.freeze_stem)")
    parser.add_argument("--joints3d", type=float, default=0.0,
                        help="weight of the root-relative 3D joint term (0: eq. 13 as written)")
    parser.add_argument("--two-d-only", action="store_true",
                        help="train on the 2D terms of eq. 13 alone (targets weighted 0): 2D labels only")
    parser.add_argument("--init", default=None, help="start from the variables saved by --save or "
                        "from a regressor file (regressor.save_params, e.g. bodyjax/assets/regressor_iuv_s48.npz)")
    parser.add_argument("--save", default=None, help="write the trained variables (.npz) here")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", default=None, help="directory to keep the generated data sets in (.npz)")
    parser.add_argument("--workers", type=int, default=0,
                        help="grain worker processes for reading and augmenting (0: in this process)")
    args = parser.parse_args(argv)

    t_start = time.perf_counter()
    template = body.default_template()
    cfg = synthetic.SyntheticConfig(image_size=args.image_size, yaw_range=(-args.yaw, args.yaw))
    train = load_split(template, cfg, args.seed, args.train, args.cache)
    test = load_split(template, cfg, args.seed + 1, args.test, args.cache)
    t_data = time.perf_counter() - t_start

    config = regressor.cpu_config(depth=args.depth, width=args.width, image_size=args.image_size,
                                  pose_head=args.pose_head, input=args.input, learning_rate=args.lr,
                                  num_epochs=args.epochs, batch_size=args.batch, lr_final_fraction=args.lr_final,
                                  alpha=args.weights[0], beta=args.weights[1], gamma=args.weights[2],
                                  smooth_l1_beta=args.smooth_l1_beta, head=args.head, coords=args.coords,
                                  joints3d_weight=args.joints3d, freeze_stem=args.freeze_stem)
    aug = {"full": augment.AugmentConfig(), "none": augment.AugmentConfig(enabled=False),
           "geo": augment.AugmentConfig(flip_prob=0.0),
           "flip": augment.AugmentConfig(scale_range=(1.0, 1.0), rotation=0.0, translate=0.0, brightness=0.0,
                                         contrast=0.0, saturation=0.0)}[args.augment]
    print(f"config: {config}\naugment: {aug}")
    print(f"data: {args.train} train / {args.test} test synthetic images of {args.image_size} px "
          f"({t_data:.1f} s); jax {jax.__version__}, {jax.device_count()} device(s), "
          f"load average {os.getloadavg()[0]:.2f}", flush=True)

    state = regressor.create_state(args.seed, config)
    if args.init and regressor.is_params_file(args.init):  # a regressor file (e.g. the shipped one)
        state = regressor.load_params(state, args.init, "--init")
        print(f"initialised from {args.init}")
    elif args.init:
        with np.load(args.init) as f:
            flat = {tuple(k.split("/")): jnp.asarray(f[k]) for k in f.files}
        v = flax.traverse_util.unflatten_dict(flat)
        state = state.replace(params=v["params"], batch_stats=v["batch_stats"],
                              opt_state=state.tx.init(v["params"]))
        print(f"initialised from {args.init}")
    source = training_source(train, 0.0 if args.two_d_only else 1.0)
    batch_size = min(config.batch_size, len(source)) // jax.device_count() * jax.device_count()
    if batch_size == 0:
        raise SystemExit(f"need at least {jax.device_count()} training images (one per device)")
    steps = len(source) // batch_size
    schedule = optax.cosine_decay_schedule(config.learning_rate, max(1, config.num_epochs * steps),
                                           alpha=config.lr_final_fraction)
    transform = augment.Augment(augment.MirrorTables.of(template), config.image_size, aug)

    def batches(epoch):
        for records in epochs.record_batches(source, batch_size, args.seed, epoch, [transform],
                                             worker_count=args.workers, read_threads=0):
            yield sample_lib.to_batch(records, with_gt=False)

    def step(s, batch, i):
        return regressor.train_step(s, batch, template, learning_rate=schedule(i))

    def progress(epoch, m):
        print(f"epoch {epoch + 1:3d}/{args.epochs}  loss {m['loss']:.4f}  l_regress {m['l_regress']:.4f}  "
              f"l_dense {m['l_dense']:.5f}  l_kp {m['l_kp']:.4f}  ({m['seconds']:.1f} s)", flush=True)

    t0 = time.perf_counter()
    state, _ = epochs.run_epochs(state, step, batches, config.num_epochs, progress)
    t_train = time.perf_counter() - t0

    if args.save:
        flat = flax.traverse_util.flatten_dict({"params": state.params, "batch_stats": state.batch_stats}, sep="/")
        np.savez(args.save, **{k: np.asarray(v) for k, v in flat.items()})
    result = evaluate(state, template, test)
    train_result = evaluate(state, template, {k: v[:args.test] for k, v in train.items()})
    gt_test = np.asarray(test["gt_joints3d"])
    rest = body.rest_params(template)
    base_rest = constant_pa_mpjpe(template, rest, gt_test)
    base_mean = constant_pa_mpjpe(template, mean_theta(gt_params(train)), gt_test)
    print()
    print(f"training: {t_train:.0f} s for {args.epochs} epochs; total run {time.perf_counter() - t_start:.0f} s")
    print(f"test PA-MPJPE            {result['pa_mpjpe']:7.1f} mm  (median {result['pa_mpjpe_median']:.1f})")
    print(f"test MPJPE (root-aligned) {result['mpjpe']:6.1f} mm")
    print(f"test 2D keypoint error   {result['kp_px']:7.2f} px (of {args.image_size} px images)")
    print(f"test global rotation error {result['rot_deg']:5.1f} deg ({100 * result['rot_over_90']:.0f}% above 90°: "
          f"front/back confusions)")
    print(f"train-subset PA-MPJPE    {train_result['pa_mpjpe']:7.1f} mm")
    print(f"baseline rest pose       {base_rest:7.1f} mm PA-MPJPE")
    print(f"baseline training mean θ {base_mean:7.1f} mm PA-MPJPE")


if __name__ == "__main__":
    main()
