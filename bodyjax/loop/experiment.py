"""The deform-and-learn experiment: a config in, a trained run in a work directory out.

Layer: orchestration (the only place, with ``configs/`` and ``experiments/``, that reads configs).
:func:`train_and_evaluate` runs (or resumes) the rounds of :mod:`bodyjax.loop.deform_and_learn`
with a progress bar per stage, an orbax checkpoint after every stage (a killed run restarted with
the same work directory resumes at the stage it was in and ends with the same results; a damaged
newest checkpoint is skipped in favour of the previous one), a metrics table per round on stdout
and in ``<workdir>/metrics.json``, TensorBoard scalars and pictures.
"""
from __future__ import annotations

import dataclasses
import os
import time

import jax
import numpy as np
from absl import logging

from bodyjax.loop import checkpoints, compilation_cache, reporting
from bodyjax.loop import deform_and_learn as dnl


# ----------------------------------------------------------------------------------------------
# Config → library objects


def loop_config(config) -> "dnl.LoopConfig":
    """The static :class:`~bodyjax.loop.deform_and_learn.LoopConfig` of an experiment config.

    Each algorithm's block maps straight onto its dataclass; an unknown key raises a ``TypeError``
    naming it (a misspelt ``--config.lifter.knee_wieght`` is not silently ignored).
    """
    from bodyjax import iuv_net, lifter, registration, regressor  # noqa: PLC0415
    from bodyjax.data import augment, fit_views  # noqa: PLC0415

    def build(cls, block, name):
        try:
            return cls(**block.to_dict())
        except TypeError as e:
            raise TypeError(f"config.{name}: {e} (fields of {cls.__name__}: "
                            f"{[f.name for f in dataclasses.fields(cls)]})") from None

    return dnl.LoopConfig(
        lifter=build(lifter.LifterConfig, config.lifter, "lifter"),
        registration_first=build(registration.RegistrationConfig, config.registration_first,
                                 "registration_first"),
        registration=build(registration.RegistrationConfig, config.registration, "registration"),
        registration_relax=(build(registration.RegistrationConfig, config.registration_relax, "registration_relax")
                            if "registration_relax" in config else None),
        regressor=build(regressor.RegressorConfig, config.regressor, "regressor"),
        augment=build(augment.AugmentConfig, config.augment, "augment"),
        iuv_net=build(iuv_net.IUVNetConfig, config.iuv_net, "iuv_net"),
        fit_views=(build(fit_views.FitViewsConfig, config.fit_views, "fit_views") if "fit_views" in config
                   else fit_views.FitViewsConfig()),
        image_size=int(config.data.image_size), keypoint_set=config.data.keypoint_set,
        **config.loop.to_dict())


def load_template(config):
    """The body of the run (``config.body``): the embedded MakeHuman body or an SMPL model."""
    from bodyjax import body  # noqa: PLC0415

    kind = config.body.kind
    if kind == "default":
        return body.default_template(config.data.keypoint_set)
    if kind == "smpl":
        from bodyjax import smpl  # noqa: PLC0415

        return smpl.body_from_config(config.body, config.data.keypoint_set)
    raise ValueError(f"config.body.kind must be 'default' or 'smpl', got {kind!r}")


def load_data(config, workdir: str, template) -> "dnl.Data":
    """The run's splits as streamed sources (built once and cached by tensorflow-datasets), and the
    lifter's 2D corpus when configured. Synthetic data: the train split is ``data.seed``'s; the test
    split is ``data.test_seed``'s when that is set (``>= 0``: the same people for every data seed),
    else ``data.seed``'s own."""
    from bodyjax.data import pipeline, synthetic, tfds_builders  # noqa: PLC0415

    test_seed = config.data.get("test_seed", -1)
    if not isinstance(test_seed, int) or test_seed < -1:
        raise ValueError(f"config.data.test_seed must be -1 (the data seed's own test split) or a seed "
                         f">= 0, got {test_seed!r}")
    if test_seed != -1 and config.data.source != "synthetic":
        raise ValueError(f"config.data.test_seed={test_seed} applies to the synthetic source only "
                         f"(config.data.source={config.data.source!r})")
    data_dir = config.data.data_dir or os.path.join(os.path.dirname(os.path.abspath(workdir)), "data")
    corpus = load_corpus(config, template)
    if config.data.source == "synthetic":
        cfg = synthetic.SyntheticConfig(image_size=config.data.image_size,
                                        max_points=config.data.max_points,
                                        num_points=(max(1, (5 * config.data.max_points) // 8),
                                                    config.data.max_points),
                                        keypoint_set=config.data.keypoint_set)
        own_test = test_seed in (-1, config.data.seed)
        builder = tfds_builders.build_synthetic(data_dir, cfg, config.data.train_size,
                                                config.data.test_size if own_test else 0, config.data.seed,
                                                template=template)
        if own_test:
            return dnl.Data(pipeline.data_source(builder, "train"), pipeline.data_source(builder, "test"), corpus)
        # another seed's test split, the same people for every data seed (the builder needs a train
        # split: one person of that seed, unused)
        tests = tfds_builders.build_synthetic(data_dir, cfg, 1, config.data.test_size, test_seed, template=template)
        return dnl.Data(pipeline.data_source(builder, "train"), pipeline.data_source(tests, "test"), corpus)
    if config.data.source == "densepose_coco":
        if not config.data.manual_dir:
            raise ValueError("config.data.manual_dir must point at the DensePose-COCO files "
                             "(see configs/densepose_coco.py)")
        index, label = None, "default_template"
        if config.body.kind == "smpl":
            # The annotations map onto SMPL exactly through DensePose's own UV table.
            from bodyjax.formats import densepose_uv  # noqa: PLC0415

            if not config.body.uv_table:
                raise ValueError("config.body.uv_table: DensePose-COCO on the SMPL body needs DensePose's "
                                 "UV_Processed.mat (the part charts of the annotations)")
            index = densepose_uv.load_uv_processed(config.body.uv_table, template.num_vertices).index()
            label = "smpl:" + tfds_builders.template_fingerprint(template)[:12]
        dp_config = tfds_builders.densepose_config(image_size=config.data.image_size,
                                                   max_points=config.data.max_points, body_label=label)
        builder = tfds_builders.build_densepose_coco(data_dir, config.data.manual_dir, dp_config, index=index)

        def split(name, n):
            return pipeline.data_source(builder, name if n < 0 else f"{name}[:{n}]")
        return dnl.Data(split("train", config.data.train_size), split("minival", config.data.test_size), corpus)
    raise ValueError(f"config.data.source must be 'synthetic' or 'densepose_coco', got {config.data.source!r}")


def load_corpus(config, template):
    """The lifter's separate 2D keypoint corpus (``config.data.lifter_corpus``), or ``None``."""
    name = config.data.lifter_corpus
    if not name:
        return None
    if name == "synthetic":
        from bodyjax.data import synthetic  # noqa: PLC0415

        cfg = synthetic.SyntheticConfig(image_size=config.data.image_size,
                                        keypoint_set=config.data.keypoint_set)
        return synthetic.pose_corpus(template, cfg, config.data.seed, config.data.lifter_corpus_size)
    from bodyjax.data import mpii  # noqa: PLC0415

    return mpii.load_keypoint_corpus(name, config.data.keypoint_set)


# ----------------------------------------------------------------------------------------------


def _progress_bar(desc: str, total: int, unit: str):
    from tqdm import tqdm  # noqa: PLC0415

    bar = tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, mininterval=1.0)

    def progress(done, info=None):
        if isinstance(info, dict):
            bar.update(1)
            bar.set_postfix({k: f"{v:.3g}" for k, v in list(info.items())[:3]})
        else:
            bar.update(done - bar.n)
    return bar, progress


def train_and_evaluate(config, workdir: str) -> list:
    """Runs (or resumes) the configured deform-and-learn experiment; returns the metrics per round."""
    if config.distributed:
        jax.distributed.initialize()
    cache = compilation_cache.enable(config.compilation_cache)
    os.makedirs(workdir, exist_ok=True)
    logging.info("devices: %s (process %d of %d); compilation cache: %s", jax.devices(),
                 jax.process_index(), jax.process_count(), cache or "off")
    template = load_template(config)
    loop = loop_config(config)
    if config.distributed:
        loop = dataclasses.replace(loop, shard_by_process=True)
    if not config.iterate:  # 6.3's ablation: one registration, then one long regressor training
        loop = dataclasses.replace(loop, regressor=dataclasses.replace(
            loop.regressor, num_epochs=loop.regressor.num_epochs * config.num_rounds))
    num_rounds = config.num_rounds if config.iterate else 1

    t0 = time.time()
    data = load_data(config, workdir, template)
    print(f"data: {len(data.train)} train / {len(data.test)} test images ({config.data.source}, "
          f"{config.data.image_size} px)" + (f", lifter corpus of {len(data.corpus['keypoints'])} poses"
                                             if data.corpus is not None else "")
          + f" in {time.time() - t0:.1f}s", flush=True)

    state = dnl.init_state(config.seed, template, len(data.train), loop)
    mgr = checkpoints.manager(workdir)
    state, step = checkpoints.restore_newest(mgr, state, report=lambda line: print(line, flush=True))
    metrics_path = os.path.join(workdir, "metrics.json")
    history = []
    if step is not None:
        import json  # noqa: PLC0415

        if os.path.exists(metrics_path):
            with open(metrics_path) as f:
                history = json.load(f)
        # keep finished rounds and the round in progress (its completed stages' metrics)
        # Finished rounds and the round in progress; a stage that is re-run recomputes its values.
        history = [h for h in history if h["round"] <= int(state.round) + (int(state.stage) > 0)]
        if int(state.round) >= num_rounds:
            print(f"checkpoint {step}: all {num_rounds} rounds are done; nothing to run", flush=True)
        else:
            print(f"resuming from checkpoint {step}: round {int(state.round) + 1}, stage "
                  f"'{dnl.STAGES[int(state.stage)]}'", flush=True)
    writer = reporting.tensorboard_writer(workdir)
    try:
        stages_run = 0
        while int(state.round) < num_rounds:
            r, name = int(state.round), dnl.STAGES[int(state.stage)]
            desc = f"round {r + 1}/{num_rounds} {name}"
            total = {"dense": loop.iuv_net.num_epochs, "lifter": loop.lifter.num_epochs,
                     "regressor": loop.regressor.num_epochs, "registration": len(data.train)}.get(name, 1)
            unit = "img" if name == "registration" else ("epoch" if name != "evaluate" else "step")
            t_stage = time.time()
            bar, progress = _progress_bar(desc, total, unit)
            with bar:
                state, stage_metrics = dnl.run_stage(state, template, data, loop, progress)
                bar.update(total - bar.n)
            per_person = stage_metrics.pop(dnl.PER_PERSON, None)
            if per_person is not None and jax.process_index() == 0:  # before the metrics and checkpoint
                write_test_errors(workdir, r + 1, per_person)
            stage_metrics[f"time/{name}_s"] = time.time() - t_stage
            _check_finite(stage_metrics, desc)
            if history and history[-1]["round"] == r + 1:
                history[-1].update(stage_metrics)
            else:
                history.append({"round": r + 1, **stage_metrics})
            # metrics first, then the checkpoint: a kill in between re-runs the stage, which
            # recomputes the same values
            reporting.write_json(metrics_path, history)
            if name == "evaluate":
                reporting.write_scalars(writer, history[-1], r + 1)
                print("\n" + reporting.format_table(history, config.evaluation.table_mpjpe), flush=True)
                if config.pictures and jax.process_index() == 0:
                    reporting.write_pictures(workdir, state, template, data, loop, history)
            checkpoints.save(mgr, r * len(dnl.STAGES) + dnl.STAGES.index(name) + 1, state)
            stages_run += 1
            if config.stop_after_stages >= 0 and stages_run >= config.stop_after_stages:
                print(f"stopping after {stages_run} stages (config.stop_after_stages)", flush=True)
                raise SystemExit(3)
    finally:  # the writer's thread and the checkpointer's, also on a stop or an error
        if writer is not None:
            writer.close()
        mgr.close()
    print(f"done: {num_rounds} rounds in {time.time() - t0:.0f}s; results in {workdir}", flush=True)
    return history


def write_test_errors(workdir: str, round_: int, per_person: dict) -> str:
    """Writes one round's per-person test errors (``evaluate_stage``'s ``PER_PERSON``) atomically to
    ``<workdir>/test_errors_round<r>.npz``: one ``(M,)`` float64 array per metric name (``/`` written as
    ``.``), in the test split's order, so two runs on the same split compare person by person
    (``experiments/ablate_levers.py``'s paired column). Returns the path."""
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, f"test_errors_round{round_}.npz")
    tmp = path + ".tmp.npz"
    np.savez(tmp, **{k.replace("/", "."): np.asarray(v, np.float64) for k, v in per_person.items()})
    os.replace(tmp, path)
    return path


def read_test_errors(workdir: str, round_: int) -> dict:
    """The per-person test errors :func:`write_test_errors` wrote for ``round_`` (names with ``/``)."""
    path = os.path.join(workdir, f"test_errors_round{round_}.npz")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no per-person test errors for round {round_} (written by the "
                                f"evaluate stage of runs with 3D ground truth on the test split)")
    with np.load(path) as f:
        return {k.replace(".", "/"): f[k] for k in f.files}


def _check_finite(stage_metrics: dict, where: str) -> None:
    bad = {k: v for k, v in stage_metrics.items() if isinstance(v, float) and not np.isfinite(v)}
    if bad:
        raise FloatingPointError(f"{where}: non-finite metrics {bad}: training diverged")
