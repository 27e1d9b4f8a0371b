"""Human3.6M Protocol #1 evaluation of a trained run (the paper's Table 1).

Layer: orchestration. :func:`evaluate_run` loads the regressor (and the part / IUV predictor when
the regressor reads maps) from the run's newest readable checkpoint, crops every test frame (S9,
S11) of a preprocessed H36M npz around its person box, predicts the body, reads the 17 H36M joints
off it (:func:`body_joint_map`) and scores them against the npz's ground truth:

* ``mpjpe``: the paper's metric (section 6.1, after Zhou et al. 2017): the prediction, root-aligned,
  is scaled about its root so that its bone-length sum equals that of the canonical average
  skeleton of the training subjects S1, S5, S6, S7, S8 (:func:`bodyjax.data.h36m.canonical_skeleton`
  on the npz's training split: each subject's mean bone lengths, averaged over the subjects);
* ``mpjpe_root``: root-aligned MPJPE without rescaling;
* ``pa_mpjpe``: MPJPE after a similarity Procrustes alignment;

on H36M-17 (root: the pelvis) and on its LSP-14 subset (root: the hip midpoint; its own canonical
skeleton over :data:`~bodyjax.data.h36m.LSP14_PARENTS`), per action and overall. ``overall`` is the
mean over the frames; ``action_mean`` the mean of the per-action means (the papers differ in which
they report; Table 1 does not say).

The per-frame errors are the ones :func:`bodyjax.loop.deform_and_learn.pose_metrics` averages (same
functions, same units), so the loop's evaluation of the same predictions gives the same numbers.

Crops: the person box is SPIN's (centre ``center``, side ``200 · scale`` pixels), enlarged
``context`` times (1.2, as the other loaders' crops) and resized to the run's image size
(``config.data.image_size``) with :func:`bodyjax.data.transforms.crop_to_person`.
"""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Callable, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from bodyjax import body, metrics
from bodyjax.data import h36m, transforms
from bodyjax.loop import checkpoints
from bodyjax.loop import deform_and_learn as dnl

#: Table 1 of the paper: (group, method, MPJPE mm).
TABLE1 = (
    ("Full 3D supervision", "HMR [KBJM18]", 87.97),
    ("Full 3D supervision", "HoloPose [GK19]", 60.27),
    ("Full 3D supervision", "Sun et al. [SXLW17]", 49.6),
    ("Semi 3D supervision", "Rhodin et al. [RSF18]", 131.7),
    ("Use external 3D data", "HMR (unpaired) [KBJM18]", 106.84),
    ("No 3D training data", "Kudo et al. [KOMO18]", 173.2),
    ("No 3D training data", "Ours (Mosh)", 96.99),
    ("No 3D training data", "Ours (DensePose)", 115.3),
)
METRICS = ("mpjpe", "mpjpe_root", "pa_mpjpe")
#: The evaluation joint sets: name -> (indices into H36M-17, parents, root).
JOINT_SETS = {
    "h36m17": (tuple(range(17)), h36m.H36M17_PARENTS, h36m.H36M17_ROOT),
    "lsp14": (h36m.LSP14_IN_H36M17, h36m.LSP14_PARENTS, h36m.LSP14_ROOT),
}


# ----------------------------------------------------------------------------------------------
# The body's H36M joints


def body_joint_map(config, template: body.BodyTemplate) -> h36m.JointMap:
    """H36M-17 on the run's body: ``config.body.h36m_regressor`` (SMPL) or the default body's map.

    ``h36m_regressor = 'joints'`` asks for :func:`bodyjax.data.h36m.default_body_h36m_map` on any
    body (joints and two head vertices: the default body's own mapping, also for that body written in
    the SMPL layout by ``tools/export_smpl_layout.py``; for SMPL itself a further approximation).

    Raises:
      ValueError: an SMPL body without ``config.body.h36m_regressor``; the regressor file's errors.
    """
    path = config.body.get("h36m_regressor", "")
    if path == "joints":
        return h36m.default_body_h36m_map(template)
    if path:
        reg = h36m.load_joint_regressor(path, int(template.vertices.shape[0]))
        return h36m.regressor_h36m_map(reg, int(template.joints.shape[0]))
    if config.body.kind == "smpl":
        raise ValueError("config.body.h36m_regressor: the SMPL body needs SPIN's J_regressor_h36m.npy "
                         "(17, V) for the Human3.6M joints")
    return h36m.default_body_h36m_map(template)


def prediction_joints(pred, joint_map: h36m.JointMap) -> np.ndarray:
    """``(B, K, 3)`` float32 joints of the map on a regressor prediction (metres, camera frame ``R X``).

    Args:
      pred: a :class:`bodyjax.regressor.Prediction` with its ``vertices`` (``with_vertices=True``).
    """
    if pred.vertices is None:
        raise ValueError("prediction_joints: the prediction needs its vertices (with_vertices=True)")
    vertices = np.asarray(pred.vertices)[:, np.asarray(joint_map.vertex_ids)]
    return joint_map.apply(np.asarray(pred.joints), vertices).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# Metrics


def frame_errors(pred17, gt17, canonical: Mapping[str, float]) -> dict:
    """Per-frame errors in mm: ``{set: {metric: (M,)}}`` for the sets of :data:`JOINT_SETS`.

    Args:
      pred17: ``(M, 17, 3)`` predicted H36M-17 joints, metres (any origin).
      gt17: ``(M, 17, 3)`` ground truth, metres (any origin).
      canonical: ``{set: canonical bone-length sum in metres}``.
    """
    out = {}
    for name, (idx, parents, root) in JOINT_SETS.items():
        idx = np.asarray(idx)
        values = _errors(jnp.asarray(np.asarray(pred17)[:, idx], jnp.float32),
                         jnp.asarray(np.asarray(gt17)[:, idx], jnp.float32), tuple(parents),
                         root if isinstance(root, int) else tuple(root), jnp.float32(canonical[name] * 1000.0))
        out[name] = {k: np.asarray(v) for k, v in values.items()}
    return out


@functools.partial(jax.jit, static_argnames=("parents", "root"))
def _errors(pred, gt, parents, root, reference_mm):
    pred_mm = metrics.root_align(pred, root) * 1000.0
    gt_mm = metrics.root_align(gt, root) * 1000.0
    return {"mpjpe": metrics.mpjpe_rescaled(pred_mm, gt_mm, parents, reference=reference_mm, root=root),
            "mpjpe_root": metrics.mpjpe(pred_mm, gt_mm, root=root),
            "pa_mpjpe": metrics.pa_mpjpe(pred_mm, gt_mm)}


def summarize(errors: Mapping[str, Mapping[str, np.ndarray]], actions: Sequence[str]) -> dict:
    """Per-action and overall means of :func:`frame_errors`.

    Returns:
      ``{set: {'per_action': {action: {'frames', metric...}}, 'overall': {...}, 'action_mean': {...}}}``
      (actions in :data:`bodyjax.data.h36m.ACTIONS` order, unknown ones after).
    """
    actions = np.asarray(actions, dtype=str)
    order = [a for a in h36m.ACTIONS if a in set(actions.tolist())]
    order += sorted(set(actions.tolist()) - set(order))
    out = {}
    for name, errs in errors.items():
        per_action = {}
        for a in order:
            rows = actions == a
            per_action[a] = {"frames": int(rows.sum()),
                             **{k: float(np.mean(np.asarray(v, np.float64)[rows])) for k, v in errs.items()}}
        out[name] = {
            "per_action": per_action,
            "overall": {"frames": int(len(actions)),
                        **{k: float(np.mean(np.asarray(v, np.float64))) for k, v in errs.items()}},
            "action_mean": {k: float(np.mean([per_action[a][k] for a in order])) for k in errs},
        }
    return out


def canonical_skeletons(train: Mapping[str, np.ndarray]) -> dict:
    """Canonical average skeletons (``{set: {'bone_lengths', 'sum', 'subjects'}}``, metres) of the
    training split of :func:`bodyjax.data.h36m.load_h36m`."""
    gt17, valid = h36m.h36m17_from_spin24(train["S"])
    out = {}
    for name, (idx, parents, _) in JOINT_SETS.items():
        idx = np.asarray(idx)
        out[name] = h36m.canonical_skeleton(gt17[:, idx], train["subject"], parents, valid[:, idx])
    return out


# ----------------------------------------------------------------------------------------------
# Frames and predictions


def person_boxes(center: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """SPIN's person boxes ``(M, 4)`` COCO ``[x, y, w, h]``: side ``200 · scale`` around ``center``."""
    side = 200.0 * np.asarray(scale, np.float64)
    c = np.asarray(center, np.float64)
    return np.stack([c[:, 0] - side / 2, c[:, 1] - side / 2, side, side], axis=-1)


def crop_frames(image_dir: str, imgnames: Sequence[str], boxes: np.ndarray, size: int,
                context: float = 1.2) -> np.ndarray:
    """Reads and crops frames: ``(n, size, size, 3)`` uint8 (each file ``image_dir/imgname``)."""
    from bodyjax.data.densepose_coco import read_image  # noqa: PLC0415

    out = np.zeros((len(imgnames), size, size, 3), np.uint8)
    for i, (name, box) in enumerate(zip(imgnames, boxes)):
        image = read_image(os.path.join(image_dir, str(name)))
        out[i] = transforms.crop_to_person(image, box, size, context=context)[0]
    return out


def predict_joints(state: dnl.LoopState, template: body.BodyTemplate, loop: dnl.LoopConfig,
                   joint_map: h36m.JointMap, images: np.ndarray) -> np.ndarray:
    """The run's H36M-17 prediction ``(n, 17, 3)`` (metres, camera frame) for person crops ``(n, S, S, 3)``."""
    pred = dnl.predict_records(state, template, {"image": images}, loop, predicted_maps=True,
                               with_vertices=True)
    return prediction_joints(pred, joint_map)


def checkpoint_num_train(mgr) -> Optional[int]:
    """The number of training fits in the newest checkpoint whose metadata reads (``None`` if none)."""
    import orbax.checkpoint as ocp  # noqa: PLC0415

    for step in sorted(mgr.all_steps(), reverse=True):
        try:
            meta = ocp.StandardCheckpointer().metadata(os.path.join(str(mgr.directory), str(step), "default"))
            meta = getattr(meta, "item_metadata", meta)
            return int(getattr(meta, "tree", meta)["fits"]["scale"].shape[0])
        except Exception:  # noqa: BLE001 - a damaged checkpoint: try the previous one
            continue
    return None


def restore_run(config, workdir: str, template: body.BodyTemplate, loop: dnl.LoopConfig,
                report: Callable[[str], None] = print):
    """The run's newest readable :class:`~bodyjax.loop.deform_and_learn.LoopState` and its step.

    Raises:
      FileNotFoundError: no readable checkpoint in ``<workdir>/checkpoints``.
    """
    directory = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"no checkpoints in the work directory: {directory} does not exist")
    mgr = checkpoints.manager(workdir)
    num_train = checkpoint_num_train(mgr)
    if num_train is None:
        raise FileNotFoundError(f"no readable checkpoint in {directory}")
    # The restore target is the state's structure only (shapes, dtypes and the static fields), traced
    # without running or compiling the networks' initialisers. Its Python scalars (an untrained
    # TrainState's step) become arrays, so a checkpoint that stored such a leaf either way reads back.
    abstract = jax.eval_shape(lambda: dnl.init_state(int(config.seed), template, num_train, loop))
    state, step = checkpoints.restore_newest(mgr, abstract, report=report)
    if step is None:
        raise FileNotFoundError(f"no readable checkpoint in {directory}")
    return state, step


# ----------------------------------------------------------------------------------------------
# The whole evaluation


def evaluate_predictions(pred17: np.ndarray, test: Mapping[str, np.ndarray],
                         train: Mapping[str, np.ndarray]) -> dict:
    """Scores H36M-17 predictions of the test frames of :func:`~bodyjax.data.h36m.load_h36m`.

    Args:
      pred17: ``(M, 17, 3)`` metres, one per test row.
      test, train: the npz's test and training splits (the latter for the canonical skeletons).

    Returns:
      ``{'canonical': ..., 'h36m17': ..., 'lsp14': ..., 'frames': M, 'skipped_frames': n}`` (mm;
      frames whose ground truth lacks one of the 17 joints are left out and counted).
    """
    gt17, valid = h36m.h36m17_from_spin24(test["S"])
    keep = np.all(valid > 0, axis=-1)
    canonical = canonical_skeletons(train)
    errors = frame_errors(np.asarray(pred17)[keep], gt17[keep], {k: v["sum"] for k, v in canonical.items()})
    actions = [h36m.parse_action(n) for n in np.asarray(test["imgname"])[keep]]
    out = {"frames": int(keep.sum()), "skipped_frames": int((~keep).sum()),
           "canonical": {k: {"bone_lengths_mm": (v["bone_lengths"] * 1000.0).tolist(),
                             "sum_mm": v["sum"] * 1000.0, "subject_frames": v["subjects"]}
                         for k, v in canonical.items()}}
    out.update(summarize(errors, actions))
    return out


def evaluate_run(config, workdir: str, npz_path: str, image_dir: str, train_npz: Optional[str] = None,
                 context: float = 1.2, units: str = "auto", progress: bool = True,
                 report: Callable[[str], None] = print) -> dict:
    """Evaluates a run on Human3.6M Protocol #1; writes ``<workdir>/h36m_eval.json`` and returns it.

    The predicted and ground-truth H36M-17 joints of every test frame (metres; the prediction in the
    camera frame, the ground truth relative to its pelvis) go to ``<workdir>/h36m_predictions.npz``
    (``imgname``, ``pred_h36m17``, ``gt_h36m17``).

    Args:
      config: the run's experiment config (``configs/*.py``).
      workdir: the run's work directory (its ``checkpoints/``).
      npz_path: the preprocessed H36M npz (test rows: S9, S11).
      image_dir: the folder ``imgname`` is relative to.
      train_npz: the npz holding the training subjects for the canonical skeleton (default:
        ``npz_path``; SPIN ships ``h36m_train.npz`` separately from ``h36m_valid_protocol1.npz``).
      context: crop context around the person box.
      units: ``S``'s unit (see :func:`bodyjax.data.h36m.load_h36m`).
      progress: a tqdm bar over the frames.
      report: receives the printed lines (checkpoint notes, the table).
    """
    from bodyjax.loop import experiment, reporting  # noqa: PLC0415

    template = experiment.load_template(config)
    loop = experiment.loop_config(config)
    # the checkpoint holds the trained weights: no need to read the ImageNet file again
    loop = dataclasses.replace(loop, regressor=dataclasses.replace(loop.regressor, pretrained=""))
    joint_map = body_joint_map(config, template)
    test = h36m.load_h36m(npz_path, "test", units)
    if len(test["imgname"]) == 0:
        raise ValueError(f"{npz_path}: no test frame (subjects S9, S11) in field 'imgname'")
    bad = np.flatnonzero(~(np.asarray(test["scale"]) > 0))
    if bad.size:
        raise ValueError(f"{npz_path}: field 'scale' must be positive to crop the person (test rows "
                         f"{bad[:5].tolist()}, e.g. {test['imgname'][bad[0]]})")
    train = h36m.load_h36m(train_npz or npz_path, "train", units)
    state, step = restore_run(config, workdir, template, loop, report)
    boxes = person_boxes(test["center"], test["scale"])
    size = loop.image_size
    preds = []
    bar = None
    if progress:
        from tqdm import tqdm  # noqa: PLC0415

        bar = tqdm(total=len(boxes), desc="h36m test frames", unit="img", dynamic_ncols=True, mininterval=1.0)
    for lo in range(0, len(boxes), loop.chunk):
        hi = min(lo + loop.chunk, len(boxes))
        images = crop_frames(image_dir, test["imgname"][lo:hi], boxes[lo:hi], size, context)
        preds.append(predict_joints(state, template, loop, joint_map, images))
        if bar is not None:
            bar.update(hi - lo)
    if bar is not None:
        bar.close()
    pred17 = np.concatenate(preds)
    results = evaluate_predictions(pred17, test, train)
    np.savez(os.path.join(workdir, "h36m_predictions.npz"), imgname=np.asarray(test["imgname"]),
             pred_h36m17=pred17, gt_h36m17=h36m.h36m17_from_spin24(test["S"])[0])
    results.update({
        "workdir": os.path.abspath(workdir), "checkpoint_step": int(step), "round": int(state.round),
        "stage": dnl.STAGES[int(state.stage)], "npz": os.path.abspath(npz_path),
        "train_npz": os.path.abspath(train_npz or npz_path), "crop_context": float(context),
        "body": config.body.kind,
        "approximate_joints": [n for n, e in zip(joint_map.names, joint_map.exact) if not e],
    })
    reporting.write_json(os.path.join(workdir, "h36m_eval.json"), results)
    report(format_table(results))
    return results


def format_table(results: Mapping) -> str:
    """The paper's Table 1 with this run's MPJPE, then the per-action errors (mm)."""
    lines = ["Table 1: Human3.6M Protocol #1, MPJPE [mm] (bone lengths rescaled to the canonical average "
             "skeleton of S1, S5, S6, S7, S8)"]
    group = None
    for g, method, value in TABLE1:
        lines.append(f"  {g if g != group else '':<22} {method:<26} {value:>8.2f}")
        group = g
    o17 = results["h36m17"]["overall"]
    lines.append(f"  {'':<22} {'This run (17 joints)':<26} {o17['mpjpe']:>8.2f}")
    lines.append(f"  {'':<22} {'This run (14 LSP joints)':<26} {results['lsp14']['overall']['mpjpe']:>8.2f}")
    lines.append("")
    head = (f"{'action':<14} {'frames':>6} | {'MPJPE':>7} {'root':>7} {'PA':>7} | {'MPJPE':>7} {'root':>7} "
            f"{'PA':>7}")
    lines += [f"{'':<14} {'':>6} | {'H36M-17 joints':^23} | {'LSP-14 joints':^23}", head, "-" * len(head)]

    def row(label, a, b, frames):
        cells = " ".join(f"{a[k]:>7.1f}" for k in METRICS) + " | " + " ".join(f"{b[k]:>7.1f}" for k in METRICS)
        return f"{label:<14} {str(frames):>6} | {cells}"

    for action, a in results["h36m17"]["per_action"].items():
        lines.append(row(action, a, results["lsp14"]["per_action"][action], a["frames"]))
    lines.append("-" * len(head))
    lines.append(row("overall", o17, results["lsp14"]["overall"], o17["frames"]))
    lines.append(row("action mean", results["h36m17"]["action_mean"], results["lsp14"]["action_mean"], ""))
    approx = results.get("approximate_joints")
    lines.append("(MPJPE: rescaled to the canonical skeleton, then root-aligned; root: root-aligned only; "
                 "PA: after Procrustes. Roots: the pelvis (17), the hip midpoint (14)."
                 + (f" Approximate joints on this body: {', '.join(approx)}." if approx else "") + ")")
    return "\n".join(lines)
