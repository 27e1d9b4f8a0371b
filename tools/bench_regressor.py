"""Throughput of the regressor's train step (images/s), CPU default and the paper's ResNet50 at 224 px.

    python tools/bench_regressor.py                         # both configurations
    python tools/bench_regressor.py --configs cpu --steps 10
    python tools/bench_regressor.py --configs cpu48px cpu48px_frozen --input iuv --steps 10

Each configuration builds a state, a random :class:`~bodyjax.batch.Batch` with the sample record's
shapes (160 dense correspondences, 17 COCO keypoints, pixel-unit targets; made from stacked records
by :func:`bodyjax.data.sample.to_batch`) and times ``--steps`` calls of the jitted
:func:`bodyjax.regressor.train_step` after one warm-up call (which includes the compilation, reported
separately). The step is the full eq. (13): backbone forward/backward, the smooth-L1 regression and
the body model on the dense points and keypoints, and Adam. ``--input parts|iuv`` times the
label-map regressor (random ``iuv`` maps as input) instead of the RGB one.

Configurations:
  cpu       ``regressor.cpu_config()`` (ResNet18, width 32, 64 px), batch 32
  cpu64     ResNet18 at full width 64, 64 px, batch 32
  cpu48px   ResNet18, width 32, 48 px (the default config's network), batch 32
  cpu32px   ResNet18, width 32, 32 px, batch 32
  cpu48px_frozen  cpu48px with the stem frozen (``freeze_stem``: no gradient into the first
            convolution and BatchNorm; the default config's step)
  resnet50  ``RegressorConfig()`` (ResNet50, 224 px, the paper's network), batch 8
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import dataclasses  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

from bodyjax import body, regressor  # noqa: E402
from bodyjax.batch import Batch  # noqa: E402
from bodyjax.data import sample as sample_lib  # noqa: E402

CONFIGS = {
    "cpu": (regressor.cpu_config(), 32),
    "cpu64": (regressor.cpu_config(width=64), 32),
    "cpu48px": (regressor.cpu_config(image_size=48), 32),
    "cpu32px": (regressor.cpu_config(image_size=32), 32),
    "cpu48px_frozen": (regressor.cpu_config(image_size=48, freeze_stem=True), 32),
    "resnet50": (regressor.RegressorConfig(), 8),
}


def random_batch(config: regressor.RegressorConfig, batch_size: int, template, seed: int = 0) -> Batch:
    """A batch of the train step's shapes with random content (pixels of ``config.image_size``)."""
    rng = np.random.default_rng(seed)
    s = config.image_size
    b, n, k = batch_size, 160, template.num_keypoints
    iuv = np.concatenate([rng.integers(0, 25, (b, s, s, 1)), rng.integers(0, 255, (b, s, s, 2))], axis=-1)
    return sample_lib.to_batch({
        "image": rng.integers(0, 256, (b, s, s, 3), dtype=np.uint8),
        "iuv": iuv.astype(np.uint8),
        "dense_xy": rng.uniform(0, s - 1, (b, n, 2)).astype(np.float32),
        "dense_vertex": rng.integers(0, template.num_vertices, (b, n)).astype(np.int32),
        "dense_mask": np.ones((b, n), np.float32),
        "keypoints": rng.uniform(0, s - 1, (b, k, 2)).astype(np.float32),
        "keypoint_visible": np.ones((b, k), np.float32),
        "target_pose": rng.normal(0, 0.3, (b, 24, 3)).astype(np.float32),
        "target_segment_scales": np.ones((b, 24), np.float32),
        "target_rotation": np.tile(np.eye(3, dtype=np.float32), (b, 1, 1)),
        "target_scale": np.full((b,), s / 2.0, np.float32),
        "target_translation": np.full((b, 2), (s - 1) / 2.0, np.float32),
        "target_weight": np.ones((b,), np.float32),
    }, with_gt=False)


def bench(name: str, steps: int, input_kind: str = "rgb") -> dict:
    config, batch_size = CONFIGS[name]
    config = dataclasses.replace(config, input=input_kind)
    template = body.default_template()
    t0 = time.perf_counter()
    state = regressor.create_state(0, config)
    t_init = time.perf_counter() - t0
    batch = random_batch(config, batch_size, template)
    t0 = time.perf_counter()
    state, metrics = regressor.train_step(state, batch, template)
    jax.block_until_ready(metrics)
    t_first = time.perf_counter() - t0
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        state, metrics = regressor.train_step(state, batch, template)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t0)
    step = float(np.median(times))
    return {"name": name, "depth": config.depth, "width": config.width, "size": config.image_size,
            "batch": batch_size, "init_s": t_init, "first_s": t_first, "step_s": step,
            "best_s": min(times), "img_s": batch_size / step, "loss": float(metrics["loss"])}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=["cpu", "resnet50"], choices=sorted(CONFIGS))
    parser.add_argument("--steps", type=int, default=3, help="timed steps after the warm-up")
    parser.add_argument("--input", default="rgb", choices=regressor.INPUTS,
                        help="network input: RGB images (the paper) or part / IUV label maps")
    args = parser.parse_args(argv)
    print(f"jax {jax.__version__} on {jax.devices()[0].platform} x{jax.device_count()}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    print(f"{'config':10s} {'net':>14s} {'px':>4s} {'batch':>5s} {'init s':>7s} {'compile+1 s':>11s} "
          f"{'step s':>7s} {'best s':>7s} {'img/s':>7s}")
    for name in args.configs:
        r = bench(name, args.steps, args.input)
        net = f"ResNet{r['depth']}/w{r['width']}"
        print(f"{name:10s} {net:>14s} {r['size']:4d} {r['batch']:5d} {r['init_s']:7.1f} {r['first_s']:11.1f} "
              f"{r['step_s']:7.3f} {r['best_s']:7.3f} {r['img_s']:7.1f}", flush=True)
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
