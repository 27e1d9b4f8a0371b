"""Throughput of the synthetic data generator, with a per-stage breakdown.

    python tools/bench_synthetic.py --num 200 --image-size 128

Generates ``--num`` samples (after a warm-up that compiles the jitted forward pass) in one process
and prints samples/s for the whole pipeline and the seconds spent per stage:

* params+forward: pose / shape / rotation draws, the batched jitted ``body.forward`` and the camera fit;
* rasterise: z-buffer and the per-pixel surface (vertex, part, U, V);
* shading+background: palette, texture, lighting, background, blur and noise;
* correspondences+keypoints: dense correspondence sampling, visibility tests, keypoints, the record.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

from bodyjax import body  # noqa: E402
from bodyjax.data import synthetic  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num", type=int, default=200)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=1, help="runs; the best is reported too")
    args = parser.parse_args(argv)

    template = body.default_template()
    cfg = synthetic.SyntheticConfig(image_size=args.image_size)
    t0 = time.perf_counter()
    list(synthetic.generate(template, cfg, args.seed + 1, 4))       # compile + warm caches
    warm = time.perf_counter() - t0

    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count()
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    print(f"cores: os.cpu_count()={os.cpu_count()}, usable={affinity}; "
          f"load average (1/5/15 min) before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"jax {jax.__version__} on {jax.default_backend()}; image {cfg.image_size}x{cfg.image_size}, "
          f"max_points {cfg.max_points}, {template.num_vertices} vertices / "
          f"{template.faces.shape[0]} faces; warm-up (jit compile, 4 samples) {warm:.2f} s")

    runs = []
    for _ in range(args.repeats):
        timings: dict = {}
        c0, t0 = time.process_time(), time.perf_counter()
        n = 0
        for _sample in synthetic.generate(template, cfg, args.seed, args.num, timings=timings):
            n += 1
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        runs.append((wall, cpu, timings))

    for r, (wall, cpu, timings) in enumerate(runs):
        print(f"\nrun {r + 1}: {args.num} samples in {wall:.2f} s wall, {cpu:.2f} s CPU (this process, "
              f"all threads) -> {args.num / wall:.1f} samples/s wall, {args.num / cpu:.1f} per CPU-second")
        print(f"  {'stage':<28}{'wall s':>8}{'ms/sample':>11}{'share':>7}{'CPU s':>8}{'ms/sample':>11}")
        tw = sum(v[0] for v in timings.values())
        tc = sum(v[1] for v in timings.values())
        rows = [(k, v[0], v[1]) for k, v in timings.items()]
        rows.append(("(other: generator overhead)", wall - tw, cpu - tc))
        for stage, w, c in rows:
            print(f"  {stage:<28}{w:>8.3f}{1e3 * w / args.num:>11.2f}{w / wall:>7.0%}"
                  f"{c:>8.3f}{1e3 * c / args.num:>11.2f}")
    best = min(w for w, _, _ in runs)
    best_cpu = min(c for _, c, _ in runs)
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    print(f"\nbest: {args.num / best:.1f} samples/s wall ({args.num / best_cpu:.1f} per CPU-second); "
          f"load average after: "
          f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    main()
