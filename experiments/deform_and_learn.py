"""Deform-and-learn: the main job.

    python -m experiments.deform_and_learn --config configs/default.py --workdir workdir/default
    python -m experiments.deform_and_learn --config configs/default.py --config.num_rounds=5 ...

Runs the rounds of :mod:`bodyjax.deform_and_learn` (lifter → registration → regressor → evaluation)
with a progress bar per stage, an orbax checkpoint after every stage (a killed run restarted with the
same ``--workdir`` resumes at the stage it was in and ends with the same results), a metrics table per
round on stdout and in ``<workdir>/metrics.json``, TensorBoard scalars in ``<workdir>/tensorboard``
and pictures in ``<workdir>/pictures``: overlays of the fitted (train) and predicted (test) meshes,
front and side views, and the error-per-round plot. Meshes are exported as OBJ.
"""
from __future__ import annotations

import json
import os
import time

import jax
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "configs/default.py", "Experiment configuration.")
flags.DEFINE_string("workdir", "workdir/default", "Where checkpoints, metrics and pictures go.")


# ----------------------------------------------------------------------------------------------
# Config → library settings


def loop_settings(config):
    """Builds the static :class:`~bodyjax.deform_and_learn.LoopSettings` of a config."""
    from bodyjax import augment, deform_and_learn, lifter, registration, regressor

    c = config
    size = (c.data.image_size, c.data.image_size)
    reg_common = dict(learning_rate=c.registration.learning_rate, w_dense=c.registration.w_dense,
                      w_kp=c.registration.w_kp, w_det=c.registration.w_det,
                      dense_reduction=c.registration.dense_reduction, use_depth=c.lifter.use_depths,
                      keypoint_set=c.data.keypoint_set)
    return deform_and_learn.LoopSettings(
        image_size=size, keypoint_set=c.data.keypoint_set,
        lifter=lifter.LifterHParams(
            hidden=c.lifter.hidden, num_layers=c.lifter.num_layers, epsilon=c.lifter.epsilon,
            mu_start=c.lifter.mu_start, mu_end=c.lifter.mu_end,
            angles_deg=tuple(float(a) for a in c.lifter.angles_deg),
            learning_rate=c.lifter.learning_rate, batch_size=c.lifter.batch_size,
            num_epochs=c.lifter.epochs, knee_weight=c.lifter.knee_weight,
            face_weight=c.lifter.face_weight,
            discriminator_keypoints=c.lifter.discriminator_keypoints),
        lifter_epochs=c.lifter.epochs, lifter_batch_size=c.lifter.batch_size,
        use_lifter_depths=c.lifter.use_depths,
        first_registration=registration.RegistrationConfig(
            num_steps=c.registration.first_steps, w_scale=c.registration.first_w_scale,
            w_joint=c.registration.first_w_joint, **reg_common),
        later_registration=registration.RegistrationConfig(
            num_steps=c.registration.later_steps, w_scale=c.registration.w_scale,
            w_joint=c.registration.w_joint, **reg_common),
        registration_batch_size=c.registration.batch_size,
        regressor=regressor.RegressorConfig(
            depth=c.regressor.depth, width=c.regressor.width, image_size=c.regressor.image_size,
            pose_head=c.regressor.pose_head, keypoint_set=c.data.keypoint_set),
        regressor_hparams=regressor.RegressorHParams(
            learning_rate=c.regressor.learning_rate, num_epochs=c.regressor.epochs,
            batch_size=c.regressor.batch_size, alpha=c.regressor.alpha, beta=c.regressor.beta,
            gamma=c.regressor.gamma),
        regressor_epochs=c.regressor.epochs, regressor_batch_size=c.regressor.batch_size,
        augment=(augment.AugmentConfig(flip_prob=c.regressor.flip_prob) if c.regressor.augment
                 else None),
        lifter_visibility=c.lifter.visibility)


# ----------------------------------------------------------------------------------------------
# Data


def load_data(config, workdir: str, template):
    """Train and test splits as stacked NumPy dicts (built once and cached by tensorflow-datasets)."""
    from bodyjax.data import pipeline, synthetic, tfds_builders

    data_dir = config.data.data_dir or os.path.join(os.path.dirname(os.path.abspath(workdir)), "data")
    if config.data.source == "synthetic":
        cfg = synthetic.SyntheticConfig(image_size=config.data.image_size,
                                        max_points=config.data.max_points,
                                        num_points=(max(1, (5 * config.data.max_points) // 8),
                                                    config.data.max_points),
                                        keypoint_set=config.data.keypoint_set)
        builder = tfds_builders.build_synthetic(data_dir, cfg, config.data.train_size,
                                                config.data.test_size, config.data.seed,
                                                template=template)
        return (pipeline.to_arrays(pipeline.data_source(builder, "train")),
                pipeline.to_arrays(pipeline.data_source(builder, "test")))
    if config.data.source == "densepose_coco":
        if not config.data.manual_dir:
            raise ValueError("config.data.manual_dir must point at the DensePose-COCO files "
                             "(see configs/densepose_coco.py)")
        dp_config = tfds_builders.densepose_config(image_size=config.data.image_size,
                                                   max_points=config.data.max_points)
        builder = tfds_builders.build_densepose_coco(data_dir, config.data.manual_dir, dp_config)
        train = pipeline.to_arrays(pipeline.data_source(builder, "train"))
        test = pipeline.to_arrays(pipeline.data_source(builder, "minival"))
        cap = lambda d, n: d if n < 0 else {k: v[:n] for k, v in d.items()}  # noqa: E731
        return cap(train, config.data.train_size), cap(test, config.data.test_size)
    raise ValueError(f"config.data.source must be 'synthetic' or 'densepose_coco', got {config.data.source!r}")


# ----------------------------------------------------------------------------------------------
# Checkpoints


def checkpoint_manager(workdir: str):
    import orbax.checkpoint as ocp

    return ocp.CheckpointManager(
        os.path.abspath(os.path.join(workdir, "checkpoints")),
        options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True))


def restore_latest(manager, state):
    """Restores the latest checkpoint into ``state``'s structure, or returns ``state`` unchanged."""
    import orbax.checkpoint as ocp

    step = manager.latest_step()
    if step is None:
        return state, None
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, state)
    restored = manager.restore(step, args=ocp.args.StandardRestore(abstract))
    return restored, step


# ----------------------------------------------------------------------------------------------
# Reporting


def format_table(history) -> str:
    keys = [("registration/train_mpjpe", "reg MPJPE"), ("registration/train_pa_mpjpe", "reg PA"),
            ("regressor/test_mpjpe", "test MPJPE"), ("regressor/test_pa_mpjpe", "test PA"),
            ("regressor/test_pck150", "test PCK150"), ("regressor/test_pixel_error", "test px"),
            ("lifter/test_pa_mpjpe", "lifter PA"), ("registration/flagged_fraction", "flagged")]
    head = f"{'round':>5} " + " ".join(f"{name:>11}" for _, name in keys)
    lines = [head, "-" * len(head)]
    for h in history:
        vals = " ".join(f"{h.get(k, float('nan')):>11.3f}" if "pck" in k or "flagged" in k
                        else f"{h.get(k, float('nan')):>11.1f}" for k, _ in keys)
        lines.append(f"{h['round']:>5} {vals}")
    return "\n".join(lines) + "\n(errors in mm over the 24 joints; MPJPE bone-length rescaled, PA after Procrustes)"


def write_pictures(workdir: str, state, template, train, test, history, num: int = 4):
    from bodyjax import body, regressor
    from bodyjax.camera import weak_perspective
    from experiments import pictures

    out_dir = os.path.join(workdir, "pictures")
    os.makedirs(out_dir, exist_ok=True)
    r = len(history)
    fit_out = jax.jit(body.forward)(template, jax.tree_util.tree_map(lambda a: a[:num], state.fits))
    pred = regressor.predict(state.regressor, test["image"][:num], template)
    pred_2d = weak_perspective(pred.vertices, scale=pred.params.scale, translation=pred.params.translation)
    size = 3 * train["image"].shape[1]
    rows = []
    for i in range(num):
        rows.append([
            pictures.label(pictures.overlay(train["image"][i], template, fit_out.vertices[i],
                                            fit_out.vertices2d[i]), "fit (train)"),
            pictures.label(pictures.overlay(test["image"][i], template, pred.vertices[i],
                                            pred_2d[i]), "predicted (test)"),
            pictures.label(pictures.render_view(template, np.asarray(pred.vertices[i]), size), "front"),
            pictures.label(pictures.render_view(template, pictures.side_view(pred.vertices[i]), size), "side"),
        ])
    import cv2

    cv2.imwrite(os.path.join(out_dir, f"round{r:02d}_results.png"), pictures.grid(rows))
    pictures.error_plot(history, os.path.join(out_dir, "error_per_round.png"))
    for i in range(min(num, 2)):
        pictures.write_obj(os.path.join(workdir, "meshes", f"round{r:02d}_test{i}.obj"),
                           np.asarray(pred.vertices[i]), np.asarray(template.faces))


# ----------------------------------------------------------------------------------------------


def train_and_evaluate(config, workdir: str) -> list:
    """Runs (or resumes) the configured deform-and-learn experiment; returns the metrics per round."""
    from tqdm import tqdm

    from bodyjax import body, deform_and_learn

    if config.distributed:
        jax.distributed.initialize()
    os.makedirs(workdir, exist_ok=True)
    logging.info("devices: %s (process %d of %d)", jax.devices(), jax.process_index(), jax.process_count())
    template = body.default_template(config.data.keypoint_set)
    settings = loop_settings(config)
    if not config.iterate:  # 6.3's ablation: one registration, then one long regressor training
        settings = deform_and_learn.dataclasses.replace(
            settings, regressor_epochs=settings.regressor_epochs * config.num_rounds)
    num_rounds = config.num_rounds if config.iterate else 1

    t0 = time.time()
    train, test = load_data(config, workdir, template)
    print(f"data: {len(train['image'])} train / {len(test['image'])} test images "
          f"({config.data.source}, {config.data.image_size} px) in {time.time() - t0:.1f}s", flush=True)

    state = deform_and_learn.init_state(config.seed, template, len(train["image"]), settings)
    manager = checkpoint_manager(workdir)
    state, step = restore_latest(manager, state)
    metrics_path = os.path.join(workdir, "metrics.json")
    history = json.load(open(metrics_path)) if (step is not None and os.path.exists(metrics_path)) else []
    # keep finished rounds and the round in progress (its completed stages' metrics)
    history = [h for h in history if h["round"] <= int(state.round) + (int(state.stage) > 0)]
    if step is not None:
        print(f"resuming from checkpoint {step}: round {int(state.round) + 1}, "
              f"stage '{deform_and_learn.STAGES[int(state.stage)]}'", flush=True)
    writer = _tensorboard(workdir)
    stages_run = 0
    while int(state.round) < num_rounds:
        r, name = int(state.round), deform_and_learn.STAGES[int(state.stage)]
        desc = f"round {r + 1}/{num_rounds} {name}"
        total = {"lifter": settings.lifter_epochs, "regressor": settings.regressor_epochs,
                 "registration": len(train["image"])}.get(name, 1)
        t_stage = time.time()
        with tqdm(total=total, desc=desc, unit="epoch" if name in ("lifter", "regressor") else "img",
                  dynamic_ncols=True, mininterval=1.0) as bar:
            def progress(done, info=None, _bar=bar):
                if isinstance(info, dict):
                    _bar.update(1)
                    _bar.set_postfix({k: f"{v:.3g}" for k, v in list(info.items())[:3]})
                else:
                    _bar.update(done - _bar.n)
            state, stage_metrics = deform_and_learn.run_stage(state, template, train, test, settings, progress)
            bar.update(total - bar.n)
        stage_metrics[f"time/{name}_s"] = time.time() - t_stage
        _check_finite(stage_metrics, desc)
        if history and history[-1]["round"] == r + 1:
            history[-1].update(stage_metrics)
        else:
            history.append({"round": r + 1, **stage_metrics})
        # metrics first, then the checkpoint: a kill in between re-runs the stage, which
        # recomputes the same values
        _write_json(metrics_path, history)
        if name == "evaluate":
            if writer is not None:
                for k, v in history[-1].items():
                    if isinstance(v, (int, float)) and k != "round":
                        writer.add_scalar(k, v, r + 1)
                writer.flush()
            print("\n" + format_table(history), flush=True)
            if config.pictures and jax.process_index() == 0:
                write_pictures(workdir, state, template, train, test, history)
        manager.save(r * len(deform_and_learn.STAGES) + int(stage_index(name)) + 1,
                     args=_save_args(state))
        manager.wait_until_finished()
        stages_run += 1
        if config.stop_after_stages >= 0 and stages_run >= config.stop_after_stages:
            print(f"stopping after {stages_run} stages (config.stop_after_stages)", flush=True)
            raise SystemExit(3)
    print(f"done: {num_rounds} rounds in {time.time() - t0:.0f}s; results in {workdir}", flush=True)
    return history


def stage_index(name: str) -> int:
    from bodyjax import deform_and_learn

    return deform_and_learn.STAGES.index(name)


def _save_args(state):
    import orbax.checkpoint as ocp

    return ocp.args.StandardSave(state)


def _check_finite(stage_metrics: dict, where: str) -> None:
    bad = {k: v for k, v in stage_metrics.items() if isinstance(v, float) and not np.isfinite(v)}
    if bad:
        raise FloatingPointError(f"{where}: non-finite metrics {bad}: training diverged")


def _write_json(path: str, obj) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


def _tensorboard(workdir: str):
    try:
        from tensorboardX import SummaryWriter
    except ImportError:  # pragma: no cover - tensorboardX is a dependency; stay usable without it
        logging.warning("tensorboardX not installed: no TensorBoard scalars")
        return None
    if jax.process_index() != 0:
        return None
    return SummaryWriter(os.path.join(workdir, "tensorboard"))


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not FLAGS["verbosity"].present:
        # orbax logs every checkpoint step at INFO: keep the console for progress bars and tables
        # (--verbosity=0 brings the INFO logs back)
        logging.set_verbosity(logging.WARNING)
    train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
    app.run(main)
