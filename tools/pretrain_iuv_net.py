"""Pretrains the part / IUV predictor on the 2D labels of synthetic people; writes the shipped asset.

    python tools/pretrain_iuv_net.py                      # rebuilds bodyjax/assets/iuv_net_s64.npz
    python tools/pretrain_iuv_net.py --init bodyjax/assets/iuv_net_s64.npz --lr 1e-3   # its second stage
    python tools/pretrain_iuv_net.py --init bodyjax/assets/iuv_net_s64.npz --lr 1e-3 --images 32000
                                                          # its third stage (on twice the people)
    python tools/pretrain_iuv_net.py --init bodyjax/assets/iuv_net_s64.npz --lr 1e-3 --images 64000
                                                          # its fourth (twice again)
    python tools/pretrain_iuv_net.py --steps 2000 --out /tmp/iuv.npz     # a quick one
    python tools/pretrain_iuv_net.py --keypoints --init bodyjax/assets/iuv_net_s64.npz \
        --steps 3000 --out /tmp/iuv_kp.npz           # + keypoint heat-map heads (EXTENSION)

The first stage of the two-stage regressor (:mod:`bodyjax.iuv_net`) is what a DensePose predictor is
for real images: a network trained on dense 2D labels (here the renderer's per-pixel part and chart
labels; for real data DensePose-COCO's annotated points). Like an ImageNet- or DensePose-pretrained
network it is trained once, on other people than the experiment's: the pool is the synthetic data
set with ``--seed`` (default 7919), disjoint from the experiments' data (seed 0 in the configs: every
person of a seed is drawn from its own random stream, see :mod:`bodyjax.data.synthetic`). It sees
2D labels only — no 3D, no body parameters. The experiments load the asset through
``config.iuv_net.pretrained`` and use it as shipped (the CPU configs: ``iuv_net.num_epochs`` 0) or
fine-tune it on their own training images' labels in round 1.

The shipped file is made in four stages: this command with its defaults, then a second run from that
file at a lower rate (``--init bodyjax/assets/iuv_net_s64.npz --lr 1e-3``: held-out part mIoU
0.308 -> 0.337), then a third the same way on twice the people (``--images 32000``: the first 16,000
and the 300 held-out people are the same; 0.337 -> 0.356), then a fourth on twice those
(``--images 64000``; 0.356 -> 0.368 in 1,716 s on 2 cores alone, ~6 min of it the data). A run with
``--init`` stores the init file's own record as ``init_info`` (so the file holds the whole chain).

The run is deterministic given its flags on a given platform (the same seed, data and order); the
metadata stored in the file records the flags, the wall time and the held-out part mIoU.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np  # noqa: E402
import optax  # noqa: E402

from bodyjax import body, iuv_net, pretrained  # noqa: E402
from bodyjax.data import augment, pipeline, sample, synthetic, tfds_builders  # noqa: E402
from bodyjax.loop import epochs  # noqa: E402


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=iuv_net.PRETRAINED_64)
    p.add_argument("--data-dir", default=os.path.expanduser("~/.cache/bodyjax/data"))
    p.add_argument("--seed", type=int, default=7919, help="synthetic pool seed (not an experiment's)")
    p.add_argument("--images", type=int, default=16000)
    p.add_argument("--held-out", type=int, default=300)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=8000)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--lr-final-fraction", type=float, default=0.05)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--eval-every", type=int, default=1000)
    p.add_argument("--keypoints", action="store_true",
                   help="EXTENSION: heat-map heads for the body's 2D keypoints (iuv_net.IUVNetConfig.keypoints)")
    p.add_argument("--keypoint-weight", type=float, default=iuv_net.IUVNetConfig.keypoint_weight)
    p.add_argument("--init", default="", help="start from this weights file (e.g. the shipped predictor; "
                   "keypoint heads it lacks start fresh)")
    args = p.parse_args(argv)

    t0 = time.time()
    template = body.default_template()
    cfg = synthetic.SyntheticConfig(image_size=args.image_size)
    pool = tfds_builders.build_synthetic(args.data_dir, cfg, args.images, args.held_out, args.seed,
                                         template=template)
    train, held = pipeline.data_source(pool, "train"), pipeline.data_source(pool, "test")
    held_out = epochs.read(held, np.arange(len(held)), ("image", "iuv", "keypoints", "keypoint_visible"))
    num_keypoints = held_out["keypoints"].shape[1] if args.keypoints else 0
    config = iuv_net.IUVNetConfig(image_size=args.image_size, width=args.width, learning_rate=args.lr,
                                  batch_size=args.batch_size, keypoints=num_keypoints,
                                  keypoint_weight=args.keypoint_weight)
    state = iuv_net.create_state(args.seed, config)
    init_info = None
    if args.init:
        init_info = pretrained.read_weights(args.init, "--init", "part / IUV predictor")[1]
        state = iuv_net.load_params(state, args.init, "--init")
    schedule = optax.cosine_decay_schedule(args.lr, args.steps, alpha=args.lr_final_fraction)
    transform = augment.Augment(augment.MirrorTables.of(template), args.image_size,
                                augment.AugmentConfig(flip_prob=0.0))
    steps_per_epoch = len(train) // args.batch_size
    num_epochs = -(-args.steps // steps_per_epoch)
    curve = []

    def batches(epoch):
        stream = epochs.record_batches(train, args.batch_size, args.seed, epoch, [transform], read_threads=0)
        for i, records in enumerate(stream):
            if epoch * steps_per_epoch + i >= args.steps:
                return
            yield sample.to_batch(records, with_gt=False)

    def keypoint_px(s):
        xy, _ = iuv_net.predict_keypoints(s, held_out["image"])
        vis = held_out["keypoint_visible"]
        return float(np.sum(np.linalg.norm(xy - held_out["keypoints"], axis=-1) * vis) / vis.sum())

    def step(s, batch, i):
        s, metrics = iuv_net.train_step(s, batch, schedule(i))
        if (i + 1) % args.eval_every == 0 or i + 1 == args.steps:
            miou = iuv_net.part_iou(iuv_net.predict(s, held_out["image"]), held_out["iuv"])[1]
            curve.append((i + 1, float(miou)))
            kp = ""
            if num_keypoints:
                curve[-1] += (keypoint_px(s),)
                kp = f", held-out keypoints {curve[-1][2]:.2f} px"
            print(f"step {i + 1}/{args.steps}: loss {float(metrics['loss']):.3f}, held-out part mIoU "
                  f"{miou:.3f}{kp} ({time.time() - t0:.0f} s)", flush=True)
        return s, metrics

    state, _ = epochs.run_epochs(state, step, batches, num_epochs)
    flags = {k: v for k, v in vars(args).items() if k not in ("out", "data_dir")}
    info = {"tool": "tools/pretrain_iuv_net.py", "flags": flags, "held_out_part_miou": curve[-1][1],
            **({"held_out_keypoint_px": curve[-1][2], "keypoints": num_keypoints} if num_keypoints else {}),
            "curve": curve, "wall_seconds": round(time.time() - t0), "labels": "2D only (per-pixel part, U, V"
            + (", 2D keypoints)" if num_keypoints else ")")}
    if init_info is not None:   # the --init file's own record: --out may overwrite it
        info["init_info"] = {k: v for k, v in init_info.items() if k != "network"}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    iuv_net.save_params(args.out, state, info)
    print(f"wrote {args.out}: held-out part mIoU {curve[-1][1]:.3f} after {args.steps} steps "
          f"({time.time() - t0:.0f} s)")
    return info


if __name__ == "__main__":
    main()
