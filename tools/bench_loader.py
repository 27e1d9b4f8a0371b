"""Seconds per epoch of the regressor's and the part predictor's training records through the loader.

    python tools/bench_loader.py                     # 1,800 training images (the default's split)
    python tools/bench_loader.py --train 600 --epochs 2

Builds (or reuses, under ``--data-dir``) the default config's synthetic training split, then times
whole epochs of :func:`bodyjax.loop.epochs.record_batches` with the default's augmentation and
:func:`bodyjax.data.sample.to_batch`, as the regressor stage and the part / IUV predictor's stage
consume them (no training step: the data path alone, on the same cores the step would share).
Variants, each on the regressor's records (the predicted maps, here zeros, joined with the fits)
and on the part predictor's (image and labels):

  streamed, 16 threads   the records decoded from the tfds array_record split as they are read, by
                         grain's default 16 reading threads (the loop before stop 25), with the
                         RGB image in the regressor's records
  streamed, 0 threads    decoded in the loading thread (``loop.read_threads=0``)
  in memory              the used fields read once into memory (``loop.memory_records_mb``), read in
                         the loading thread, and the regressor's records without the image (the
                         default now); the time to read the split into memory is given apart

Prints ms per record and s per epoch (the mean over ``--epochs``), and the load average.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=int, default=1800, help="training images")
    parser.add_argument("--epochs", type=int, default=3, help="epochs timed per variant")
    parser.add_argument("--data-dir", default="/tmp/bodyjax_bench_loader", help="tfds data directory")
    args = parser.parse_args(argv)
    if args.train < 32 or args.epochs < 1:
        parser.error("--train must be >= 32 (one batch) and --epochs >= 1")

    from bodyjax.data import augment, pipeline, sample
    from bodyjax.loop import deform_and_learn as dnl
    from bodyjax.loop import epochs, experiment
    from configs import default

    config = default.get_config()
    config.data.train_size, config.data.test_size = args.train, 32
    config.data.data_dir = args.data_dir
    config.data.lifter_corpus = ""
    template = experiment.load_template(config)
    data = experiment.load_data(config, os.path.join(args.data_dir, "work"), template)
    base = experiment.loop_config(config)
    state = dnl.init_state(0, template, len(data.train), base)
    mirror = augment.MirrorTables.of(template)
    maps = np.zeros((len(data.train),) + tuple(np.shape(data.train[0]["iuv"])), np.uint8)

    def regressor_records(loop, with_image):
        source = dnl.regressor_source(data, state, loop, template, maps)
        if with_image:      # the records as the loop built them before stop 25: the image included
            keys = ("image", "has_gt") + dnl.POINT_KEYS
            source = pipeline.JoinedSource(dnl._Select(data.train, keys), source.extra)
        return source, augment.Augment(mirror, loop.regressor.image_size, loop.augment.for_maps())

    def dense_records(loop, with_image):
        keys = ("image", "iuv") + dnl.POINT_KEYS + ("has_gt",)
        return (dnl.stage_records(data.train, keys, loop, "dense"),
                augment.Augment(mirror, loop.iuv_net.image_size, loop.augment))

    variants = [("streamed, 16 threads", dict(read_threads=None, memory_records_mb=0.0), True),
                ("streamed, 0 threads", dict(read_threads=0, memory_records_mb=0.0), True),
                ("in memory (default)", dict(read_threads=0, memory_records_mb=1024.0), False)]
    print(f"{len(data.train)} training images, {args.epochs} epochs per variant, batch 32")
    print(f"{'records':<12} {'variant':<22} {'read s':>7} {'s/epoch':>8} {'ms/record':>10}")
    for stage, make in (("regressor", regressor_records), ("part pred.", dense_records)):
        for name, fields, with_image in variants:
            loop = dataclasses.replace(base, **fields)
            t0 = time.perf_counter()
            source, transform = make(loop, with_image)
            read = time.perf_counter() - t0
            n, t0 = 0, time.perf_counter()
            for epoch in range(args.epochs):
                for records in epochs.record_batches(source, 32, 0, epoch, [transform],
                                                     read_threads=loop.read_threads):
                    sample.to_batch(records, with_gt=False)
                    n += len(records["keypoints"])
            dt = time.perf_counter() - t0
            print(f"{stage:<12} {name:<22} {read:7.2f} {dt / args.epochs:8.2f} {dt / n * 1e3:10.3f}", flush=True)
    print(f"load average: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
