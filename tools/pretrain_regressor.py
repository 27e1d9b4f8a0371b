"""Pretrains the two-stage regressor on the 2D labels of synthetic people; writes the shipped asset.

    python tools/pretrain_regressor.py                   # rebuilds bodyjax/assets/regressor_iuv_s48.npz
    python tools/pretrain_regressor.py --epochs 1 --images 2000 --out /tmp/reg.npz   # a quick one
    python tools/pretrain_regressor.py --targets fits --workdir DIR   # rebuilds regressor_iuv_s64_fits.npz
    python tools/pretrain_regressor.py --targets fits --workdir DIR2 --fits-from DIR --out FILE
                                                         # the same round's regressor stage again, on DIR's fits

EXTENSION (the paper fine-tunes an ImageNet-pretrained ResNet50, which cannot be downloaded here).
The regressor of the CPU default reads IUV maps (:mod:`bodyjax.regressor.network`); before an
experiment it is trained once, like an ImageNet-pretrained backbone, on other people than the
experiment's: the pool of :mod:`tools/pretrain_iuv_net.py` (the synthetic data set with ``--seed``
7919; every person of a seed is drawn from its own random stream, so it is disjoint from the
experiments' seed-0 data). It sees **2D labels only**: the loss is eq. 13 with its parameter term
weighted 0 (``target_weight`` 0: no body parameters, no 3D joints), i.e. ``β L_dense + γ L_KP``,
the dense correspondences and the 2D keypoints the sample record carries (what DensePose-COCO
annotates). The network learns where the body's points and keypoints are in a map; their depth is
left to the experiment's fits.

The maps are those the experiment's regressor reads (``--maps predicted``, the default): the
shipped part / IUV predictor (``bodyjax/assets/iuv_net_s64.npz``) run on the pool's images, or the
rendered label maps (``--maps labels``). The shipped 2D file was made with the predictor's first
stage (``python tools/pretrain_iuv_net.py --out FILE``, before its later stages from ``--init``):
pass that ``FILE`` as ``--iuv-net`` to rebuild it exactly; the fits file, with the shipped predictor.
The flags' defaults (:data:`DEFAULTS` for those that depend on ``--targets``) are the shipped
files' (their metadata records them). The experiments load
the file through ``config.regressor.pretrained`` (:func:`bodyjax.regressor.load_params`: the whole
network, backbone and head) and fine-tune it every round.

The run is deterministic given its flags on a given platform; the metadata stored in the file
records the flags, the wall time and the held-out 2D keypoint error.

``--targets fits`` (EXTENSION, still no 3D label): a second stage from the 2D-pretrained file
(``--init``). It runs round 1 of deform-and-learn itself on the pool
(:func:`bodyjax.loop.experiment.train_and_evaluate` with the settings of ``configs/default.py``'s
``--variant``, ``bench`` by default; ``--seed``'s people, ``--images`` of them, one round, the
part predictor used as loaded, not fine-tuned):
every pool image is registered to its dense points and 2D keypoints, and the regressor is trained
on those fits with the experiment's own eq. 13 (and its 3D joint term, from the fits). The fits
come from the 2D labels, the body model and its priors alone; the pool's ground truth is read only
for the run's own evaluation table (on its held-out split), as in every experiment. The work
directory holds the run's checkpoints (rerun the command to resume it) and its ``metrics.json``;
the file's metadata records the run's table row. ``--fits-from DIR`` reuses the fits of a finished
round with the same pool (:func:`start_from_fits`): only the regressor stage and the evaluation run,
and with the same flags the file is the one the whole round writes, to the bit (a test checks it).
The fits do not read the part / IUV predictor, so such a round may read another one's maps
(``--iuv-net``), and ``--map-flip-prob`` (EXTENSION) flips a share of them in its regressor stage.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from bodyjax import body, iuv_net, metrics, pretrained, regressor  # noqa: E402
from bodyjax.data import augment, pipeline, sample, synthetic, tfds_builders  # noqa: E402
from bodyjax.data.pipeline import ArraySource  # noqa: E402
from bodyjax.loop import epochs  # noqa: E402

#: The defaults of the flags that depend on ``--targets``: those of the shipped files
#: (``regressor_iuv_s48.npz``, ``regressor_iuv_s64_fits.npz``; their metadata records them).
DEFAULTS = {"2d": {"images": 16000, "epochs": 10, "image_size": 48, "map_flip_prob": 0.0,
                   "out": regressor.PRETRAINED_IUV_48},
            "fits": {"images": 32000, "epochs": 8, "image_size": 64, "map_flip_prob": 0.5,
                     "out": regressor.PRETRAINED_IUV_64_FITS}}

#: The fields of the sample record the 2D pretraining reads.
FIELDS = ("image", "iuv", "dense_xy", "dense_vertex", "dense_mask", "keypoints", "keypoint_visible")


def pool_maps(images: np.ndarray, labels: np.ndarray, maps: str, iuv_path: str) -> np.ndarray:
    """The pool's network-input maps: the rendered ``labels`` or the shipped predictor's output."""
    if maps == "labels":
        return labels
    state = iuv_net.load_params(iuv_net.create_state(0, iuv_net.IUVNetConfig(image_size=images.shape[1])),
                                iuv_path, "--iuv-net")
    return np.concatenate([np.asarray(iuv_net.predict(state, images[i:i + 500]))
                           for i in range(0, len(images), 500)])


def with_rest_targets(records: dict, template) -> dict:
    """``records`` with rest-pose targets weighted 0 (the step's parameter and 3D terms vanish)."""
    n = len(records["iuv"])
    rest = body.rest_params(template, (n,))
    return dict(records, **sample.params_to_record(rest, "target"),
                target_weight=np.zeros(n, np.float32))


def parser() -> argparse.ArgumentParser:
    """The tool's command line."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=None, help="the written file: default the shipped file of --targets")
    p.add_argument("--data-dir", default=os.path.expanduser("~/.cache/bodyjax/data"))
    p.add_argument("--seed", type=int, default=7919, help="synthetic pool seed (not an experiment's)")
    p.add_argument("--images", type=int, default=None,
                   help=f"pool images: default {DEFAULTS['2d']['images']} (--targets 2d), "
                        f"{DEFAULTS['fits']['images']} (--targets fits)")
    p.add_argument("--held-out", type=int, default=300)
    p.add_argument("--data-size", type=int, default=64, help="pool image size, px (the maps are resampled)")
    p.add_argument("--maps", default="predicted", choices=("predicted", "labels"))
    p.add_argument("--iuv-net", default=None,
                   help="the part / IUV predictor of --maps predicted (default: the shipped one) and of "
                        "--targets fits' round (default: the variant's)")
    p.add_argument("--image-size", type=int, default=None,
                   help=f"the network's input, px: default {DEFAULTS['2d']['image_size']} (--targets 2d), "
                        f"{DEFAULTS['fits']['image_size']} (--targets fits)")
    p.add_argument("--depth", type=int, default=18)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--epochs", type=int, default=None,
                   help=f"default: {DEFAULTS['2d']['epochs']} (--targets 2d), {DEFAULTS['fits']['epochs']} "
                        f"(--targets fits)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--lr-final-fraction", type=float, default=0.05)
    p.add_argument("--targets", default="2d", choices=("2d", "fits"),
                   help="2d: the 2D labels alone; fits: deform-and-learn's round 1 on the pool, from --init")
    p.add_argument("--init", default=regressor.PRETRAINED_IUV_48, help="--targets fits: the starting network")
    p.add_argument("--workdir", default="", help="--targets fits: the round's work directory (required)")
    p.add_argument("--fits-from", default="",
                   help="--targets fits: the work directory of a finished round with the same pool flags "
                        "whose fits this round reuses (it re-runs only the regressor stage and the evaluation)")
    p.add_argument("--map-flip-prob", type=float, default=None,
                   help="--targets fits: EXTENSION, the share of label maps flipped in the regressor stage "
                        "(config.augment.map_flip_prob: parts swapped, U mirrored, the targets mirrored; "
                        "default 0.5, the shipped file's)")
    p.add_argument("--variant", default="bench", help="--targets fits: the variant of configs/default.py "
                   "whose settings the round takes (smoke: a quick check)")
    return p


def parse_args(argv=None, p=None) -> argparse.Namespace:
    """The command line with the defaults of ``--targets`` filled in (:data:`DEFAULTS`): those that
    rebuild the shipped file of each stage."""
    args = (p or parser()).parse_args(argv)
    for name, value in DEFAULTS[args.targets].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.targets == "2d" and args.iuv_net is None:
        args.iuv_net = iuv_net.PRETRAINED_64
    if not 0.0 <= args.map_flip_prob <= 1.0 or (args.targets == "2d" and args.map_flip_prob):
        (p or parser()).error(f"--map-flip-prob {args.map_flip_prob}: a probability in [0, 1], "
                              "read by --targets fits only")
    return args


def main(argv=None) -> dict:
    p = parser()
    args = parse_args(argv, p)
    if args.targets == "fits":
        return fits_stage(args, p)

    t0 = time.time()
    template = body.default_template()
    cfg = synthetic.SyntheticConfig(image_size=args.data_size)
    pool = tfds_builders.build_synthetic(args.data_dir, cfg, args.images, args.held_out, args.seed,
                                         template=template)
    train = epochs.read(pipeline.data_source(pool, "train"), np.arange(args.images), FIELDS)
    held = epochs.read(pipeline.data_source(pool, "test"), np.arange(args.held_out), FIELDS)
    train["iuv"] = pool_maps(train["image"], train["iuv"], args.maps, args.iuv_net)
    held["iuv"] = pool_maps(held["image"], held["iuv"], args.maps, args.iuv_net)
    print(f"pool: {args.images} + {args.held_out} images of {args.data_size} px, {args.maps} maps "
          f"({time.time() - t0:.0f} s)", flush=True)

    config = regressor.cpu_config(depth=args.depth, width=args.width, image_size=args.image_size,
                                  input="iuv", learning_rate=args.lr, num_epochs=args.epochs,
                                  batch_size=args.batch_size, lr_final_fraction=args.lr_final_fraction)
    state = regressor.create_state(args.seed, config)
    source = ArraySource(with_rest_targets(train, template), name="pretraining pool")
    steps = len(source) // args.batch_size
    schedule = optax.cosine_decay_schedule(args.lr, max(1, args.epochs * steps), alpha=args.lr_final_fraction)
    transform = augment.Augment(augment.MirrorTables.of(template), args.image_size,
                                augment.AugmentConfig(flip_prob=0.0))

    def batches(epoch):
        for records in epochs.record_batches(source, args.batch_size, args.seed, epoch, [transform],
                                             read_threads=0):
            yield sample.to_batch(records, with_gt=False)

    def held_out_px() -> float:
        pred = regressor.predict(state, template, iuv=held["iuv"], with_vertices=False)
        return float(jnp.mean(metrics.pixel_error(pred.keypoints2d, jnp.asarray(held["keypoints"]),
                                                  held["keypoint_visible"])))

    curve = []

    def progress(epoch, m):
        curve.append((epoch + 1, held_out_px()))
        print(f"epoch {epoch + 1}/{args.epochs}: loss {m['loss']:.4f} (l_dense {m['l_dense']:.5f}, l_kp "
              f"{m['l_kp']:.4f}); held-out keypoints {curve[-1][1]:.2f} px of {args.data_size} "
              f"({time.time() - t0:.0f} s)", flush=True)

    def step(s, batch, i):
        nonlocal state
        state, out = regressor.train_step(s, batch, template, learning_rate=schedule(i))
        return state, out

    state, _ = epochs.run_epochs(state, step, batches, args.epochs, progress)
    flags = {k: v for k, v in vars(args).items() if k not in ("out", "data_dir", "iuv_net")}
    info = {"tool": "tools/pretrain_regressor.py", "flags": flags, "held_out_keypoint_px": curve[-1][1],
            "curve": curve, "wall_seconds": round(time.time() - t0),
            "labels": "2D only (dense correspondences, 2D keypoints; eq. 13 with the parameter term 0)"}
    if args.maps == "predicted":
        info["predictor"] = predictor_record(args.iuv_net)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    regressor.save_params(args.out, state, info, dtype=np.float16)
    print(f"wrote {args.out}: held-out keypoints {curve[-1][1]:.2f} px after {args.epochs} epochs "
          f"({time.time() - t0:.0f} s)")
    return info


def repo_relative(path: str) -> str:
    """``path`` relative to the repository when inside it (as recorded in the files), else absolute."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    where = os.path.abspath(path)
    return os.path.relpath(where, repo) if where.startswith(repo + os.sep) else where


def predictor_record(path: str) -> dict:
    """What the written file's maps came from: the predictor file (:func:`repo_relative`) and the
    held-out part mIoU of its last stage and of the stage it started from."""
    info = pretrained.read_weights(path, "--iuv-net", "part / IUV predictor")[1]
    return {"file": repo_relative(path),
            "held_out_part_miou": info.get("held_out_part_miou"),
            "init_held_out_part_miou": info.get("init_info", {}).get("held_out_part_miou")}


def fits_config(args):
    """The experiment config of ``--targets fits``'s round (``configs/default.py`` and the flags)."""
    from configs import default  # noqa: PLC0415

    config = default.get_config(args.variant)
    config.seed = config.data.seed = args.seed
    config.data.train_size, config.data.test_size = args.images, args.held_out
    config.data.image_size = args.data_size
    config.data.data_dir = args.data_dir
    config.num_rounds, config.pictures = 1, False
    if args.iuv_net is not None:
        config.iuv_net.pretrained = args.iuv_net
    config.iuv_net.num_epochs = 0           # the predictor's maps as the 2D stage read them
    config.regressor.update(pretrained=args.init, depth=args.depth, width=args.width,
                            image_size=args.image_size, learning_rate=args.lr, batch_size=args.batch_size,
                            lr_final_fraction=args.lr_final_fraction)
    config.regressor.num_epochs = args.epochs
    config.augment.map_flip_prob = args.map_flip_prob
    return config


def restore_round(config, workdir: str):
    """The loop state of the newest checkpoint of ``workdir`` (run with ``config``), and its step."""
    from bodyjax.loop import checkpoints, experiment  # noqa: PLC0415
    from bodyjax.loop import deform_and_learn as dnl  # noqa: PLC0415

    template = experiment.load_template(config)
    state = dnl.init_state(config.seed, template, config.data.train_size, experiment.loop_config(config))
    mgr = checkpoints.manager(workdir)
    try:
        return checkpoints.restore_newest(mgr, state)
    finally:
        mgr.close()


def start_from_fits(config, source: str, workdir: str) -> None:
    """Starts ``workdir``'s round at its regressor stage, with the fits of ``source``'s finished round.

    Round 1's fits start from the T-pose and its lifter from the 2D corpus: neither reads the
    regressor, so a finished round of the same pool (``--seed``, ``--images``, ``--held-out``,
    ``--data-size``) holds the fits and the lifter this round would compute. Nor do they read the
    part / IUV predictor, whose maps the regressor stage computes: the round may use another one
    (``--iuv-net``). Its newest checkpoint is rewound to the state after the registration (round 1,
    stage ``regressor``, the regressor as ``--init`` loads it, the predictor as ``config`` loads it)
    and saved as ``workdir``'s checkpoint with
    its ``metrics.json``; :func:`~bodyjax.loop.experiment.train_and_evaluate` then resumes there, so
    the written file is the one the whole round would write. A ``workdir`` with checkpoints of its
    own is left as it is (the command resumes it).

    Raises:
      ValueError: ``source`` holds no finished round 1 of this pool's seed.
    """
    import shutil  # noqa: PLC0415

    from bodyjax.loop import checkpoints, experiment  # noqa: PLC0415
    from bodyjax.loop import deform_and_learn as dnl  # noqa: PLC0415

    mgr = checkpoints.manager(workdir)
    try:
        if mgr.latest_step() is not None:
            return
        if not os.path.isdir(os.path.join(source, "checkpoints")):
            raise ValueError(f"--fits-from: no checkpoints in {source!r}")
        state, step = restore_round(config, source)
        fresh = dnl.init_state(config.seed, experiment.load_template(config), config.data.train_size,
                               experiment.loop_config(config))
        if step is None or int(state.round) != 1 or int(state.stage) != 0:
            raise ValueError(f"--fits-from: {source!r} holds no finished round 1 (its newest checkpoint: "
                             f"{step}, round {int(state.round) + 1}, stage {int(state.stage)})")
        if not np.array_equal(np.asarray(state.rng), np.asarray(fresh.rng)):
            raise ValueError(f"--fits-from: {source!r} is a round of another seed than --seed {config.seed}")
        state = state.replace(round=jnp.asarray(0, jnp.int32),
                              stage=jnp.asarray(dnl.STAGES.index("regressor"), jnp.int32),
                              regressor=dnl.pretrained_regressor(experiment.loop_config(config)),
                              iuv_net=fresh.iuv_net)
        if os.path.exists(os.path.join(source, "metrics.json")):  # the table's row, before the checkpoint
            shutil.copyfile(os.path.join(source, "metrics.json"), os.path.join(workdir, "metrics.json"))
        # the step train_and_evaluate gives the end of round 1's registration
        checkpoints.save(mgr, dnl.STAGES.index("registration") + 1, state)
    finally:
        mgr.close()
    print(f"--fits-from: round 1 resumes at its regressor stage with the fits of {source}", flush=True)


def fits_stage(args, p) -> dict:
    """``--targets fits``: deform-and-learn's round 1 on the pool, from ``--init``; writes ``--out``."""
    if not args.workdir:
        p.error("--targets fits needs --workdir (the round's checkpoints and metrics)")
    if not os.path.exists(args.init):
        p.error(f"--init: no file {args.init!r}")
    if os.path.abspath(args.init) == os.path.abspath(args.out):
        p.error("--targets fits would overwrite its own --init: give another --out")
    from bodyjax.loop import experiment  # noqa: PLC0415

    t0 = time.time()
    config = fits_config(args)
    if not config.iuv_net.pretrained:
        p.error(f"--targets fits reads the part / IUV predictor's maps as loaded, and --variant "
                f"{args.variant!r} has none (iuv_net.pretrained ''): give --iuv-net FILE")
    if args.fits_from:
        start_from_fits(config, args.fits_from, args.workdir)
    history = experiment.train_and_evaluate(config, args.workdir)
    state, step = restore_round(config, args.workdir)
    row = {k: v for k, v in history[-1].items() if not k.startswith(("time/", "dense/", "lifter/"))}
    flags = {k: v for k, v in vars(args).items()
             if k not in ("out", "data_dir", "iuv_net", "workdir", "maps", "fits_from")}
    flags["epochs"] = int(config.regressor.num_epochs)
    flags["init"] = repo_relative(args.init)
    info = {"tool": "tools/pretrain_regressor.py", "flags": flags, "wall_seconds": round(time.time() - t0),
            "stage_seconds": round(sum(v for k, v in history[-1].items() if k.startswith("time/"))),
            "labels": "2D only: round 1 of deform-and-learn on the pool (its fits of the dense points "
                      "and 2D keypoints as targets), from the 2D-pretrained --init",
            "round": row, "predictor": predictor_record(config.iuv_net.pretrained)}
    if args.fits_from:
        info["fits_from"] = os.path.abspath(args.fits_from)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    regressor.save_params(args.out, state.regressor, info, dtype=np.float16)
    print(f"wrote {args.out} (checkpoint {step} of {args.workdir}; {time.time() - t0:.0f} s)", flush=True)
    return info


if __name__ == "__main__":
    main()
