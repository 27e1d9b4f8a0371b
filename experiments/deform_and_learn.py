"""Deform-and-learn: the main job.

    python -m experiments.deform_and_learn --config configs/default.py --workdir workdir/default
    python -m experiments.deform_and_learn --config configs/default.py:bench --config.num_rounds=5 ...

Runs :func:`bodyjax.loop.experiment.train_and_evaluate`: the rounds of lifter → registration →
regressor → evaluation with a progress bar per stage, an orbax checkpoint after every stage (rerun
the same command to resume a killed run), a metrics table per round, TensorBoard scalars, pictures
and OBJ meshes in the work directory.
"""
from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "configs/default.py", "Experiment configuration.")
flags.DEFINE_string("workdir", "workdir/default", "Where checkpoints, metrics and pictures go.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not FLAGS["verbosity"].present:
        # orbax logs every checkpoint step at INFO: keep the console for progress bars and tables
        # (--verbosity=0 brings the INFO logs back)
        logging.set_verbosity(logging.WARNING)
    from bodyjax.loop.experiment import train_and_evaluate  # noqa: PLC0415 - after flag parsing

    train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
    app.run(main)
