"""Ablation of the fidelity levers: the main job with each lever turned off (or on), side by side.

    python -m experiments.ablate_levers --config configs/default.py --workdir workdir/levers
    python -m experiments.ablate_levers --config configs/default.py:bench --workdir workdir/levers_bench \
        --levers=all,single --seeds=0,1,2

Each variant is the configured experiment with a few fields changed (:data:`LEVERS`); every run
has its own work directory under ``--workdir`` (``<lever>_seed<s>``) and resumes if interrupted.
The table gives, per variant, the final round's numbers and the wall time, next to the full
configuration (``all``) and to the paper's choices (``paper``: every extension off).
"""
from __future__ import annotations

import copy
import json
import os
import time

from absl import app, flags

from bodyjax import regressor
from bodyjax.loop.experiment import train_and_evaluate
from experiments import deform_and_learn  # noqa: F401 - defines --config and --workdir

FLAGS = flags.FLAGS
FLAGS.set_default("workdir", "workdir/levers")
flags.DEFINE_list("levers", ["all", "last_default", "previous_default", "paper", "rgb", "fit_views", "no_corpus",
                             "no_best_fits", "lifter_depths", "no_joints3d", "constant_lr", "oracle_maps"],
                  "Variants to run (see LEVERS).")
flags.DEFINE_list("seeds", ["0"], "Seeds (config.seed and config.data.seed) of each variant.")

#: Variant name -> the config fields it changes (dotted paths) relative to the configured experiment.
LEVERS = {
    "all": {},
    # configs/paper.py's method choices at the configured sizes: every extension off, the lifter on
    # the separate 2D corpus alone
    "paper": {"regressor.input": "rgb", "regressor.pretrained": "", "regressor.freeze_stem": False, "fit_views.per_fit": 0.0, "loop.lifter_keypoints": "corpus", "loop.keep_best_fits": False,
              "registration_relax.num_steps": 0, "lifter.knee_weight": 0.0, "lifter.face_weight": 0.0,
              "registration.w_depth": 1.0, "registration_first.w_depth": 1.0, "registration_first.num_steps": 300,
              "regressor.joints3d_weight": 0.0,
              "regressor.lr_final_fraction": 1.0},
    "paper_on_images": {"regressor.input": "rgb", "regressor.pretrained": "", "regressor.freeze_stem": False, "fit_views.per_fit": 0.0, "loop.lifter_keypoints": "images", "loop.keep_best_fits": False,
                        "registration_relax.num_steps": 0, "lifter.knee_weight": 0.0, "lifter.face_weight": 0.0,
                        "registration.w_depth": 1.0, "registration_first.w_depth": 1.0,
                        "registration_first.num_steps": 300, "regressor.joints3d_weight": 0.0,
                        "regressor.lr_final_fraction": 1.0},
    "rgb": {"regressor.input": "rgb", "regressor.pretrained": "", "regressor.freeze_stem": False, "fit_views.per_fit": 0.0},   # the views are label maps
    # rendered views of the fits at the same compute: half the epochs over twice the records
    "fit_views": {"fit_views.per_fit": 1.0, "regressor.num_epochs": 5},
    "no_corpus": {"loop.lifter_keypoints": "images"},
    "no_best_fits": {"loop.keep_best_fits": False},
    # the lifter's depths in the registration (eq. 9 as written: weight 1), in every round / the later ones
    "lifter_depths": {"registration.w_depth": 1.0, "registration_first.w_depth": 1.0, "registration_relax.w_depth": 1.0},
    "lifter_depths_later": {"registration.w_depth": 1.0},
    # round 1 relaxed with the later rounds' step and segment-scale weight (the previous stop's relax)
    "relax_as_later": {"registration_relax.learning_rate": 0.1, "registration_relax.w_scale": 10.0},
    "no_joints3d": {"regressor.joints3d_weight": 0.0},
    # the regressor from scratch instead of the shipped 2D-pretrained one
    "no_pretrained_regressor": {"regressor.pretrained": "", "regressor.freeze_stem": False},
    # the regressor from the shipped file pretrained on the fits of deform-and-learn's round 1 on other
    # people (tools/pretrain_regressor.py --targets fits) instead of the 2D-pretrained one
    "fits_pretrained": {"regressor.pretrained": regressor.PRETRAINED_IUV_64_FITS, "regressor.image_size": 64},
    # the part / IUV predictor fine-tuned in round 1 on the run's dense labels (the default: as shipped)
    "finetune_predictor": {"iuv_net.num_epochs": 5},
    "ief_head": {"regressor.head": "ief"},
    "constant_lr": {"regressor.lr_final_fraction": 1.0},
    "no_priors": {"lifter.knee_weight": 0.0, "lifter.face_weight": 0.0},
    "oracle_maps": {"loop.regressor_maps": "labels"},
    # the two-stage regressor's label maps flipped left/right (U -> 1 - U on the mirror-symmetric charts)
    "map_flips": {"augment.map_flip_prob": 0.5},
    # the part predictor's maps averaged over four 1-px shifts of each crop, as :bench reads them (the
    # default reads one view; :bench's one view is --config.iuv_net.test_shifts=1)
    "shifted_maps": {"iuv_net.test_shifts": 4},
    # the pretrained stem trained with the rest (the frozen stem is the default)
    "no_frozen_stem": {"regressor.freeze_stem": False},
    "single": {"iterate": False},
    # the regressor's compute spent otherwise (each at about the default's regressor compute)
    "input_64px": {"regressor.image_size": 64, "regressor.num_epochs": 6, "regressor.pretrained": "", "regressor.freeze_stem": False},
    "images_600": {"data.train_size": 600, "regressor.num_epochs": 30},
    # the default of the previous stop (round 1 with the lifter's depths, 300 stiff + 200 relaxed passes
    # at the later rounds' weights; the latest fits; eq. 13 as written; a constant rate)
    "last_default": {"registration.w_depth": 1.0, "registration_first.w_depth": 1.0, "registration_first.num_steps": 300,
                     "registration_relax.num_steps": 200, "registration_relax.learning_rate": 0.1,
                     "registration_relax.w_scale": 10.0, "registration_relax.w_depth": 1.0,
                     "loop.keep_best_fits": False, "regressor.joints3d_weight": 0.0, "regressor.lr_final_fraction": 1.0,
                     "regressor.pretrained": "", "regressor.freeze_stem": False},
    # the defaults before the fidelity levers (the landed main's main job), for the before/after row
    "previous_default": {"regressor.input": "rgb", "regressor.pretrained": "", "regressor.freeze_stem": False, "fit_views.per_fit": 0.0, "loop.lifter_keypoints": "images", "data.lifter_corpus": "",
                         "loop.keep_best_fits": False, "registration_relax.num_steps": 0,
                         "registration.w_depth": 1.0, "registration_first.w_depth": 1.0, "registration_first.num_steps": 300,
                         "regressor.joints3d_weight": 0.0, "regressor.lr_final_fraction": 1.0,
                         "lifter.num_epochs": 20, "regressor.num_epochs": 8, "regressor.image_size": 64,
                         "data.train_size": 600},
}

KEYS = (("registration/train_pa_mpjpe", "reg PA"), ("regressor/test_pa_mpjpe", "test PA"),
        ("regressor/test_mpjpe", "test MPJPE"), ("regressor/test_one_view_pa_mpjpe", "1-view PA"),
        ("regressor/test_oracle_pa_mpjpe", "oracle PA"),
        ("baseline/mean_fit_pa_mpjpe", "mean-fit PA"), ("lifter/test_pa_mpjpe", "lifter PA"),
        ("dense/test_part_miou", "part mIoU"))


def _set(config, dotted: str, value) -> None:
    node = config
    *path, leaf = dotted.split(".")
    for p in path:
        node = node[p]
    node[leaf] = value


def main(argv):
    del argv
    rows = []
    for lever in FLAGS.levers:
        if lever not in LEVERS:
            raise app.UsageError(f"unknown lever {lever!r}; known: {sorted(LEVERS)}")
        for seed in (int(s) for s in FLAGS.seeds):
            config = copy.deepcopy(FLAGS.config)
            config.seed = seed
            config.data.seed = seed
            for k, v in LEVERS[lever].items():
                _set(config, k, v)
            workdir = os.path.join(FLAGS.workdir, f"{lever}_seed{seed}")
            t0 = time.time()
            history = train_and_evaluate(config, workdir)
            seconds = sum(v for h in history for k, v in h.items() if k.startswith("time/"))
            rows.append({"lever": lever, "seed": seed, "seconds": seconds, "wall": time.time() - t0,
                         **{k: history[-1].get(k, float("nan")) for k, _ in KEYS},
                         "history": history})
    with open(os.path.join(FLAGS.workdir, "levers.json"), "w") as f:
        json.dump(rows, f, indent=1)
    print(f"\n{'lever':<18}{'seed':>5}" + "".join(f"{name:>12}" for _, name in KEYS) + f"{'stage s':>10}")
    for r in rows:
        print(f"{r['lever']:<18}{r['seed']:>5}" + "".join(f"{r[k]:>12.1f}" for k, _ in KEYS)
              + f"{r['seconds']:>10.0f}")
    print("(final round; mm; stage s = the stages' wall time, without data generation)")
    paired = paired_to_all(rows, FLAGS.workdir)
    if paired:
        print("\npaired with 'all' of the same seed on the same test people (tools/compare_runs.py):")
        for line in paired:
            print(line)


def paired_to_all(rows, workdir: str) -> list:
    """Lines of the table's paired column: per lever and seed in ``rows``, its final test PA-MPJPE minus
    the ``all`` run's of the same seed, person by person (both runs under ``workdir``), or why not."""
    compare_runs = _compare_runs()
    lines = []
    for r in rows:
        base = os.path.join(workdir, f"all_seed{r['seed']}")
        if r["lever"] == "all" or not any(o["lever"] == "all" and o["seed"] == r["seed"] for o in rows):
            continue
        run = os.path.join(workdir, f"{r['lever']}_seed{r['seed']}")
        try:
            p = compare_runs.compare(base, run)
        except (FileNotFoundError, KeyError, ValueError) as e:
            lines.append(f"  {r['lever']} seed {r['seed']}: not paired ({e})")
            continue
        lo, hi = p["ci95"]
        lines.append(f"  {r['lever']} seed {r['seed']}: {p['diff']:+.2f} +- {p['se']:.2f} mm (s.e.; 95 % "
                     f"[{lo:+.2f}, {hi:+.2f}]) on {p['n']} people")
    return lines


def _compare_runs():
    import importlib.util  # noqa: PLC0415

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools", "compare_runs.py")
    spec = importlib.util.spec_from_file_location("compare_runs", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


if __name__ == "__main__":
    app.run(main)
