"""Human3.6M Protocol #1 evaluation of a trained run (the paper's Table 1).

    python -m experiments.evaluate_h36m --config configs/default.py --workdir workdir/default \
        --h36m_npz /data/h36m/h36m_valid_protocol1.npz --h36m_images /data/h36m \
        [--h36m_train_npz /data/h36m/h36m_train.npz] [--crop_context 1.2]

Loads the run's newest readable checkpoint (the same ``--config`` as the training run, with its
overrides), predicts the test frames (S9, S11) and prints the paper's Table 1 with this run's
MPJPE and the per-action errors on the 17 H36M joints and the 14 LSP joints; the numbers go to
``<workdir>/h36m_eval.json``. ``imgname`` in the npz is relative to ``--h36m_images``. The canonical
skeleton of the rescaled MPJPE comes from the training subjects (S1, S5, S6, S7, S8) of
``--h36m_train_npz`` (default: the same npz). An SMPL body needs ``--config.body.h36m_regressor``
(SPIN's ``J_regressor_h36m.npy``); the default body uses the mapping of
:func:`bodyjax.data.h36m.default_body_h36m_map`. See :mod:`bodyjax.loop.h36m_eval`.
"""
from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "configs/default.py", "The run's experiment configuration.")
flags.DEFINE_string("workdir", "workdir/default", "The run's work directory.")
flags.DEFINE_string("h36m_npz", None, "Preprocessed Human3.6M npz (SPIN layout) with the test subjects.")
flags.DEFINE_string("h36m_images", None, "Folder the npz's imgname entries are relative to.")
flags.DEFINE_string("h36m_train_npz", None, "npz with the training subjects (default: --h36m_npz).")
flags.DEFINE_float("crop_context", 1.2, "Enlargement of the person box (side 200 * scale) before the crop.")
flags.DEFINE_enum("units", "auto", ["auto", "m", "mm"], "Unit of the npz's 3D joints S.")
flags.mark_flags_as_required(["h36m_npz", "h36m_images"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    from bodyjax.loop import h36m_eval  # noqa: PLC0415 - after flag parsing

    h36m_eval.evaluate_run(FLAGS.config, FLAGS.workdir, FLAGS.h36m_npz, FLAGS.h36m_images,
                           train_npz=FLAGS.h36m_train_npz, context=FLAGS.crop_context, units=FLAGS.units)


if __name__ == "__main__":
    app.run(main)
