"""Pretrains the two-stage regressor on the 2D labels of synthetic people; writes the shipped asset.

    python tools/pretrain_regressor.py                   # rebuilds bodyjax/assets/regressor_iuv_s48.npz
    python tools/pretrain_regressor.py --epochs 1 --images 2000 --out /tmp/reg.npz   # a quick one

EXTENSION (the paper fine-tunes an ImageNet-pretrained ResNet50, which cannot be downloaded here).
The regressor of the CPU default reads IUV maps (:mod:`bodyjax.regressor.network`); before an
experiment it is trained once, like an ImageNet-pretrained backbone, on other people than the
experiment's: the pool of :mod:`tools/pretrain_iuv_net.py` (the synthetic data set with ``--seed``
7919; every person of a seed is drawn from its own random stream, so it is disjoint from the
experiments' seed-0 data). It sees **2D labels only**: the loss is eq. 13 with its parameter term
weighted 0 (``target_weight`` 0: no body parameters, no 3D joints), i.e. ``β L_dense + γ L_KP``,
the dense correspondences and the 2D keypoints the sample record carries (what DensePose-COCO
annotates). The network learns where the body's points and keypoints are in a map; their depth is
left to the experiment's fits.

The maps are those the experiment's regressor reads (``--maps predicted``, the default): the
shipped part / IUV predictor (``bodyjax/assets/iuv_net_s64.npz``) run on the pool's images, or the
rendered label maps (``--maps labels``). The experiments load the file through
``config.regressor.pretrained`` (:func:`bodyjax.regressor.load_params`: the whole network, backbone
and head) and fine-tune it every round.

The run is deterministic given its flags on a given platform; the metadata stored in the file
records the flags, the wall time and the held-out 2D keypoint error.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from bodyjax import body, iuv_net, metrics, regressor  # noqa: E402
from bodyjax.data import augment, pipeline, sample, synthetic, tfds_builders  # noqa: E402
from bodyjax.data.pipeline import ArraySource  # noqa: E402
from bodyjax.loop import epochs  # noqa: E402

#: The fields of the sample record the 2D pretraining reads.
FIELDS = ("image", "iuv", "dense_xy", "dense_vertex", "dense_mask", "keypoints", "keypoint_visible")


def pool_maps(images: np.ndarray, labels: np.ndarray, maps: str, iuv_path: str) -> np.ndarray:
    """The pool's network-input maps: the rendered ``labels`` or the shipped predictor's output."""
    if maps == "labels":
        return labels
    state = iuv_net.load_params(iuv_net.create_state(0, iuv_net.IUVNetConfig(image_size=images.shape[1])),
                                iuv_path, "--iuv-net")
    return np.concatenate([np.asarray(iuv_net.predict(state, images[i:i + 500]))
                           for i in range(0, len(images), 500)])


def with_rest_targets(records: dict, template) -> dict:
    """``records`` with rest-pose targets weighted 0 (the step's parameter and 3D terms vanish)."""
    n = len(records["iuv"])
    rest = body.rest_params(template, (n,))
    return dict(records, **sample.params_to_record(rest, "target"),
                target_weight=np.zeros(n, np.float32))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=regressor.PRETRAINED_IUV_48)
    p.add_argument("--data-dir", default=os.path.expanduser("~/.cache/bodyjax/data"))
    p.add_argument("--seed", type=int, default=7919, help="synthetic pool seed (not an experiment's)")
    p.add_argument("--images", type=int, default=16000)
    p.add_argument("--held-out", type=int, default=300)
    p.add_argument("--data-size", type=int, default=64, help="pool image size, px (the maps are resampled)")
    p.add_argument("--maps", default="predicted", choices=("predicted", "labels"))
    p.add_argument("--iuv-net", default=iuv_net.PRETRAINED_64, help="the predictor of --maps predicted")
    p.add_argument("--image-size", type=int, default=48, help="the network's input, px")
    p.add_argument("--depth", type=int, default=18)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--lr-final-fraction", type=float, default=0.05)
    args = p.parse_args(argv)

    t0 = time.time()
    template = body.default_template()
    cfg = synthetic.SyntheticConfig(image_size=args.data_size)
    pool = tfds_builders.build_synthetic(args.data_dir, cfg, args.images, args.held_out, args.seed,
                                         template=template)
    train = epochs.read(pipeline.data_source(pool, "train"), np.arange(args.images), FIELDS)
    held = epochs.read(pipeline.data_source(pool, "test"), np.arange(args.held_out), FIELDS)
    train["iuv"] = pool_maps(train["image"], train["iuv"], args.maps, args.iuv_net)
    held["iuv"] = pool_maps(held["image"], held["iuv"], args.maps, args.iuv_net)
    print(f"pool: {args.images} + {args.held_out} images of {args.data_size} px, {args.maps} maps "
          f"({time.time() - t0:.0f} s)", flush=True)

    config = regressor.cpu_config(depth=args.depth, width=args.width, image_size=args.image_size,
                                  input="iuv", learning_rate=args.lr, num_epochs=args.epochs,
                                  batch_size=args.batch_size, lr_final_fraction=args.lr_final_fraction)
    state = regressor.create_state(args.seed, config)
    source = ArraySource(with_rest_targets(train, template), name="pretraining pool")
    steps = len(source) // args.batch_size
    schedule = optax.cosine_decay_schedule(args.lr, max(1, args.epochs * steps), alpha=args.lr_final_fraction)
    transform = augment.Augment(augment.MirrorTables.of(template), args.image_size,
                                augment.AugmentConfig(flip_prob=0.0))

    def batches(epoch):
        for records in epochs.record_batches(source, args.batch_size, args.seed, epoch, [transform],
                                             read_threads=0):
            yield sample.to_batch(records, with_gt=False)

    def held_out_px() -> float:
        pred = regressor.predict(state, template, iuv=held["iuv"], with_vertices=False)
        return float(jnp.mean(metrics.pixel_error(pred.keypoints2d, jnp.asarray(held["keypoints"]),
                                                  held["keypoint_visible"])))

    curve = []

    def progress(epoch, m):
        curve.append((epoch + 1, held_out_px()))
        print(f"epoch {epoch + 1}/{args.epochs}: loss {m['loss']:.4f} (l_dense {m['l_dense']:.5f}, l_kp "
              f"{m['l_kp']:.4f}); held-out keypoints {curve[-1][1]:.2f} px of {args.data_size} "
              f"({time.time() - t0:.0f} s)", flush=True)

    def step(s, batch, i):
        nonlocal state
        state, out = regressor.train_step(s, batch, template, learning_rate=schedule(i))
        return state, out

    state, _ = epochs.run_epochs(state, step, batches, args.epochs, progress)
    flags = {k: v for k, v in vars(args).items() if k not in ("out", "data_dir", "iuv_net")}
    info = {"tool": "tools/pretrain_regressor.py", "flags": flags, "held_out_keypoint_px": curve[-1][1],
            "curve": curve, "wall_seconds": round(time.time() - t0),
            "labels": "2D only (dense correspondences, 2D keypoints; eq. 13 with the parameter term 0)"}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    regressor.save_params(args.out, state, info, dtype=np.float16)
    print(f"wrote {args.out}: held-out keypoints {curve[-1][1]:.2f} px after {args.epochs} epochs "
          f"({time.time() - t0:.0f} s)")
    return info


if __name__ == "__main__":
    main()
