"""What a run shows: the metrics table per round, TensorBoard scalars, pictures and meshes.

Layer: orchestration.
"""
from __future__ import annotations

import json
import os
from typing import Mapping, Sequence

import jax
import numpy as np

#: The table's columns: (metric key, header). ``{mpjpe}`` is the config's choice of MPJPE.
COLUMNS = (
    ("registration/train_{mpjpe}", "reg MPJPE"), ("registration/train_pa_mpjpe", "reg PA"),
    ("registration/replaced", "replaced"),
    ("regressor/test_{mpjpe}", "test MPJPE"), ("regressor/test_pa_mpjpe", "test PA"),
    ("regressor/test_one_view_pa_mpjpe", "1-view PA"), ("regressor/test_oracle_pa_mpjpe", "oracle PA"),
    ("baseline/mean_fit_pa_mpjpe", "mean-fit PA"), ("baseline/start_pa_mpjpe", "start PA"),
    ("regressor/test_pck150", "test PCK150"),
    ("regressor/test_pixel_error", "test px"), ("lifter/test_pa_mpjpe", "lifter PA"),
    ("baseline/flat_lifter_pa_mpjpe", "flat PA"), ("registration/flagged_fraction", "flagged"),
)


def format_table(history: Sequence[Mapping], mpjpe: str = "mpjpe") -> str:
    """The metrics of every round as a text table (columns a run does not have are left out)."""
    cols = [(k.format(mpjpe=mpjpe), name) for k, name in COLUMNS]
    cols = [(k, name) for k, name in cols if any(k in h for h in history)]
    head = f"{'round':>5} " + " ".join(f"{name:>11}" for _, name in cols)
    lines = [head, "-" * len(head)]
    for h in history:
        cells = []
        for k, _ in cols:
            v = h.get(k, float("nan"))
            fmt = ">11d" if k.endswith("replaced") and isinstance(v, int) else (
                ">11.3f" if "pck" in k or "flagged" in k else ">11.1f")
            cells.append(format(v, fmt))
        lines.append(f"{h['round']:>5} " + " ".join(cells))
    rescale = ("the canonical average skeleton (the paper's)" if mpjpe == "mpjpe"
               else "each target's own skeleton")
    return "\n".join(lines) + (
        f"\n(errors in mm over the 24 joints; MPJPE root-aligned after rescaling the bone-length sum to "
        f"{rescale}; PA after Procrustes. mean-fit: the mean of the training fits as a constant "
        "prediction; start: the regressor as loaded from its pretrained file, before any training; flat: the "
        "lifter's keypoints with all depths equal; oracle: the regressor on the label maps instead of the "
        "predicted ones; 1-view: with flip test-time averaging, the prediction on the input alone)")


def write_json(path: str, obj) -> None:
    """Writes ``obj`` as JSON atomically (a temporary file renamed over ``path``)."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


def tensorboard_writer(workdir: str):
    """A tensorboardX ``SummaryWriter`` in ``<workdir>/tensorboard`` (process 0 only, else ``None``)."""
    if jax.process_index() != 0:
        return None
    from tensorboardX import SummaryWriter  # noqa: PLC0415

    return SummaryWriter(os.path.join(workdir, "tensorboard"))


def write_scalars(writer, metrics: Mapping, step: int) -> None:
    """Every numeric metric of a round as a TensorBoard scalar at ``step``."""
    if writer is None:
        return
    for k, v in metrics.items():
        if isinstance(v, (int, float)) and k != "round":
            writer.add_scalar(k, v, step)
    writer.flush()


def write_pictures(workdir: str, state, template, data, config, history, num: int = 4) -> None:
    """Overlays of the fitted (train) and predicted (test) meshes, front and side views, the error
    plot and OBJ meshes, for round ``len(history)``."""
    import cv2  # noqa: PLC0415

    from bodyjax import body  # noqa: PLC0415
    from bodyjax.loop import deform_and_learn as dnl  # noqa: PLC0415
    from bodyjax.loop import epochs, pictures  # noqa: PLC0415

    out_dir = os.path.join(workdir, "pictures")
    os.makedirs(out_dir, exist_ok=True)
    r = len(history)
    n = min(num, len(data.train), len(data.test))
    train = epochs.read(data.train, np.arange(n), ("image",))
    # The evaluation's programs: its first chunk of test records, then the body at the fits' size.
    _, test = next(epochs.chunks(dnl._Select(data.test, ("image", "iuv")), config.chunk))
    first = lambda tree: jax.tree_util.tree_map(lambda a: np.asarray(a)[:n], tree)  # noqa: E731
    forward = lambda params: jax.device_get(jax.jit(body.forward)(template, params))  # noqa: E731
    fit_out = forward(first(state.fits))
    pred = forward(first(dnl.predict_records(state, template, test, config).params))
    size = 3 * train["image"].shape[1]
    rows = []
    for i in range(n):
        rows.append([
            pictures.label(pictures.overlay(train["image"][i], template, fit_out.vertices[i],
                                            fit_out.vertices2d[i]), "fit (train)"),
            pictures.label(pictures.overlay(test["image"][i], template, pred.vertices[i], pred.vertices2d[i]),
                           "predicted (test)"),
            pictures.label(pictures.render_view(template, np.asarray(pred.vertices[i]), size), "front"),
            pictures.label(pictures.render_view(template, pictures.side_view(pred.vertices[i]), size), "side"),
        ])
    cv2.imwrite(os.path.join(out_dir, f"round{r:02d}_results.png"), pictures.grid(rows))
    pictures.error_plot(history, os.path.join(out_dir, "error_per_round.png"))
    for i in range(min(n, 2)):
        pictures.write_obj(os.path.join(workdir, "meshes", f"round{r:02d}_test{i}.obj"),
                           np.asarray(pred.vertices[i]), np.asarray(template.faces))
