"""The paper's ablation (section 6.3): iterative rounds against one long regressor training.

    python -m experiments.ablation_iterative --config configs/default.py --workdir workdir/ablation

Runs the configured deform-and-learn experiment twice with the same data, seed and regressor budget:
``iterative`` (``num_rounds`` rounds of lifter → registration → regressor) and ``single`` (one round
whose regressor trains for ``num_rounds × epochs``, ``--config.iterate=False``), then prints the
final test errors side by side. Each run resumes from its own subdirectory if interrupted.
"""
from __future__ import annotations

import copy
import os

from absl import app, flags

from bodyjax.loop.experiment import train_and_evaluate
from experiments import deform_and_learn  # noqa: F401 - defines --config and --workdir

FLAGS = flags.FLAGS
FLAGS.set_default("workdir", "workdir/ablation")  # here: the parent directory of the two runs

KEYS = (("regressor/test_mpjpe", "test MPJPE mm"), ("regressor/test_pa_mpjpe", "test PA-MPJPE mm"),
        ("regressor/test_pck150", "test PCK@150"), ("registration/train_pa_mpjpe", "fit PA-MPJPE mm"))


def main(argv):
    del argv
    results = {}
    for name, iterate in (("iterative", True), ("single", False)):
        config = copy.deepcopy(FLAGS.config)
        config.iterate = iterate
        results[name] = train_and_evaluate(config, os.path.join(FLAGS.workdir, name))[-1]
    print(f"\n{'':<14}" + "".join(f"{label:>18}" for _, label in KEYS))
    for name, final in results.items():
        print(f"{name:<14}" + "".join(f"{final.get(k, float('nan')):>18.3f}" for k, _ in KEYS))
    print(f"(same data, seed and total regressor epochs: {FLAGS.config.num_rounds} × "
          f"{FLAGS.config.regressor.num_epochs})")


if __name__ == "__main__":
    app.run(main)
