"""Writes a synthetic split in the real data formats (DensePose-COCO, MPII, Human3.6M npz).

    python tools/export_real_formats.py --out /tmp/realfmt --train-size 64 --test-size 32 --image-size 128
    python tools/export_real_formats.py --out /tmp/realfmt --source tfds --data-dir workdir/data \
        --train-size 600 --test-size 150 --image-size 64 --max-points 160

The people come from :func:`bodyjax.data.synthetic.make_split` (``--source make_split``, default) or
from the cached tensorflow-datasets build of the same settings (``--source tfds``, what a run with
``--config.data.data_dir`` reads). Output (:func:`bodyjax.data.export.export_all`)::

    OUT/densepose/densepose_coco_2014_train.json, train2014/   (a DensePose-COCO manual_dir:
    OUT/densepose/densepose_coco_2014_minival.json, val2014/    --config.data.manual_dir=OUT/densepose)
    OUT/mpii/train.json, valid.json                             (--config.data.lifter_corpus=OUT/mpii/train.json)
    OUT/h36m/h36m_protocol1.npz, OUT/h36m/images/               (python -m experiments.evaluate_h36m
                                                                 --h36m_npz ... --h36m_images OUT/h36m)
    OUT/export.json                                             (the settings and the paths)

Every file is in the exact format its loader reads; the ground truth comes with the files (the H36M
npz's 3D joints, the MPII joints, the DensePose points), so the real-data path can be checked
against it. Rounding: ``--dp-decimals`` (dense points in the 0..255 box frame), ``--kp-decimals``
(keypoints, pixels); ``--image-format png`` keeps the pixels exact (JPEG is the formats' own).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np  # noqa: E402

from bodyjax import body  # noqa: E402
from bodyjax.data import export, synthetic  # noqa: E402


def load_splits(args, template) -> dict:
    """``{'train': records, 'test': records}`` of the requested synthetic settings."""
    cfg = synthetic.SyntheticConfig(image_size=args.image_size, max_points=args.max_points,
                                    num_points=(max(1, (5 * args.max_points) // 8), args.max_points),
                                    keypoint_set="coco17")
    if args.source == "make_split":
        from bodyjax.data.synthetic.dataset import generate  # noqa: PLC0415
        from bodyjax.data import sample  # noqa: PLC0415

        # the test records are the tfds builder's: indices from TEST_START of the same seed
        from bodyjax.data.tfds_builders import TEST_START  # noqa: PLC0415

        train = synthetic.make_split(template, cfg, args.seed, args.train_size)
        test = sample.stack(list(generate(template, cfg, args.seed, args.test_size, start=TEST_START)))
        return {"train": train, "test": test}
    from bodyjax.data import chunking, pipeline, tfds_builders  # noqa: PLC0415

    builder = tfds_builders.build_synthetic(args.data_dir, cfg, args.train_size, args.test_size, args.seed,
                                            template=template)
    out = {}
    for split in ("train", "test"):
        source = pipeline.data_source(builder, split)
        out[split] = chunking.read(source, np.arange(len(source)))
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--source", choices=("make_split", "tfds"), default="make_split")
    parser.add_argument("--data-dir", default="", help="tfds data dir (--source tfds)")
    parser.add_argument("--train-size", type=int, default=64)
    parser.add_argument("--test-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--max-points", type=int, default=160)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-format", choices=("jpg", "png"), default="jpg")
    parser.add_argument("--quality", type=int, default=95, help="JPEG quality")
    parser.add_argument("--dp-decimals", type=int, default=2, help="decimals of dp_x / dp_y (0..255 frame)")
    parser.add_argument("--kp-decimals", type=int, default=2, help="decimals of keypoint coordinates (pixels)")
    parser.add_argument("--crop-context", type=float, default=1.2,
                        help="the H36M evaluation's crop context (sets the npz's scale)")
    args = parser.parse_args(argv)
    if args.source == "tfds" and not args.data_dir:
        parser.error("--source tfds needs --data-dir")

    t0 = time.time()
    template = body.default_template("coco17")
    splits = load_splits(args, template)
    paths = export.export_all(args.out, splits, template, image_format=args.image_format, quality=args.quality,
                              context=args.crop_context, dp_decimals=args.dp_decimals,
                              kp_decimals=args.kp_decimals)
    manifest = {"settings": vars(args), "paths": paths,
                "records": {k: int(len(v["keypoints"])) for k, v in splits.items()}}
    with open(os.path.join(args.out, "export.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    print(f"wrote {manifest['records']} records in {time.time() - t0:.1f}s:")
    for name, path in paths.items():
        print(f"  {name:<26} {path}")


if __name__ == "__main__":
    main()
