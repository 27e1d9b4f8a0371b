"""Two runs compared person by person on the same test split (a paired comparison).

    python tools/compare_runs.py workdir/levers/single_seed0 workdir/levers/all_seed0
    python tools/compare_runs.py A B --metric regressor/test_mpjpe --first 300

Each run's evaluate stage writes its per-person test errors (``test_errors_round<r>.npz``, see
``bodyjax.loop.experiment.write_test_errors``); this reads each run's last round (or ``--round``),
checks that both scored the same people in the same order, and prints both means and the paired
difference B - A with its standard error and 95 % interval (Student's t on the per-person
differences). A negative difference means B's error is lower. The difference between two runs of
one seed is free of the test split's own sampling spread, which the spread of the means over seeds
is not (BENCHMARKS, :bench).
"""
from __future__ import annotations

import argparse
import glob
import os
import re
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from bodyjax.loop import experiment  # noqa: E402


def paired_difference(a, b) -> dict:
    """Mean of ``b - a`` over people, its standard error, the 95 % interval (Student's t with
    ``n - 1`` degrees of freedom) and the fraction of people with ``b < a``; float64."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.ndim != 1 or a.shape != b.shape or a.size < 2:
        raise ValueError(f"need two 1-D arrays of the same length >= 2, got shapes {a.shape} and {b.shape}")
    from scipy import stats  # noqa: PLC0415

    d = b - a
    n = d.size
    se = float(np.std(d, ddof=1) / np.sqrt(n))
    half = float(stats.t.ppf(0.975, n - 1) * se)
    mean = float(np.mean(d))
    return {"n": n, "mean_a": float(np.mean(a)), "mean_b": float(np.mean(b)), "diff": mean, "se": se,
            "ci95": (mean - half, mean + half), "b_better": float(np.mean(d < 0))}


def last_round(workdir: str) -> int:
    """The highest round with per-person test errors in ``workdir``."""
    rounds = [int(m.group(1)) for f in glob.glob(os.path.join(workdir, "test_errors_round*.npz"))
              if (m := re.search(r"test_errors_round(\d+)\.npz$", f))]
    if not rounds:
        raise FileNotFoundError(f"{workdir}: no test_errors_round<r>.npz (a run's evaluate stage writes them)")
    return max(rounds)


def compare(workdir_a: str, workdir_b: str, metric: str = "regressor/test_pa_mpjpe", round_: int = 0,
            first: int = 0) -> dict:
    """:func:`paired_difference` of ``metric`` between two runs' rounds (``round_ = 0``: each run's last),
    on their first ``first`` people (0: all) after checking they are the same people."""
    runs = []
    for w in (workdir_a, workdir_b):
        errors = experiment.read_test_errors(w, round_ or last_round(w))
        if metric not in errors:
            raise KeyError(f"{w}: no per-person {metric!r}; it has {sorted(errors)}")
        runs.append(errors)
    fa, fb = runs[0]["test/gt_fingerprint"], runs[1]["test/gt_fingerprint"]
    n = min(len(fa), len(fb)) if first == 0 else first
    if n > min(len(fa), len(fb)) or not np.allclose(fa[:n], fb[:n], rtol=1e-9, atol=0.0):
        raise ValueError(f"{workdir_a} and {workdir_b} did not score the same {n} test people in the same "
                         f"order ({len(fa)} and {len(fb)} people): a paired comparison needs one test split")
    return paired_difference(runs[0][metric][:n], runs[1][metric][:n])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("a", help="the first run's work directory (the reference)")
    ap.add_argument("b", help="the second run's work directory")
    ap.add_argument("--metric", default="regressor/test_pa_mpjpe",
                    help="per-person metric (regressor/test_[one_view_|oracle_]{pa_mpjpe,mpjpe}, "
                         "baseline/start_{pa_mpjpe,mpjpe})")
    ap.add_argument("--round", type=int, default=0, help="round to read in both runs (0: each run's last)")
    ap.add_argument("--first", type=int, default=0, help="only the first N test people (0: all)")
    args = ap.parse_args(argv)
    r = compare(args.a, args.b, args.metric, args.round, args.first)
    lo, hi = r["ci95"]
    print(f"{args.metric} on {r['n']} test people: A {r['mean_a']:.2f}, B {r['mean_b']:.2f}; "
          f"B - A = {r['diff']:+.2f} +- {r['se']:.2f} (s.e.), 95 % [{lo:+.2f}, {hi:+.2f}]; "
          f"B lower for {100 * r['b_better']:.0f} % of people")


if __name__ == "__main__":
    main()
