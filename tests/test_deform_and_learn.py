"""The main job: runs end to end, resumes exactly after a kill or from a damaged checkpoint."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from bodyjax import iuv_net, regressor
from bodyjax.loop import deform_and_learn as dnl
from bodyjax.loop import experiment
from configs import default, paper

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


#: The loop's options the reference run turns on, so that the resume tests cover their state.
OPTIONS = {"loop.keep_best_fits": True, "fit_views.per_fit": 1.0, "regressor.test_flip": True}


def smoke_config(root, **overrides):
    config = default.get_config("smoke")
    config.data.train_size = 8
    config.data.test_size = 4
    config.loop.registration_chunk = 8
    config.data.data_dir = str(root / "data")
    config.compilation_cache = str(root / "jax_cache")
    for key, value in overrides.items():
        node = config
        *path, leaf = key.split(".")
        for p in path:
            node = node[p]
        node[leaf] = value
    return config


def read_metrics(workdir):
    with open(os.path.join(workdir, "metrics.json")) as f:
        return json.load(f)


def comparable(history):
    """Metrics without wall-clock times."""
    return [{k: v for k, v in h.items() if not k.startswith("time/")} for h in history]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted run of the smoke configuration with the fits dictionary, the rendered
    views of the fits and flip test-time averaging (options off in the default; shared)."""
    from compilations import recorded

    root = tmp_path_factory.mktemp("dnl")
    config = smoke_config(root, **OPTIONS)
    with recorded() as compiling:        # JAX's "Compiling jit(f) with global shapes ..." records
        history = experiment.train_and_evaluate(config, str(root / "reference"))
    COMPILED.update({name: compiling.count(name) for name in ("_register", "_data_objective", "_step", "_pose_errors")},
                    all=len(compiling))
    return root, config, history


#: How often the reference run compiled some of its programs (filled by ``reference``).
COMPILED: dict = {}


def test_runs_all_rounds_and_reports(reference):
    root, config, history = reference
    assert [h["round"] for h in history] == [1, 2]
    for key in ("registration/train_mpjpe", "regressor/test_pa_mpjpe", "lifter/test_pa_mpjpe",
                "registration/flagged_fraction", "baseline/mean_fit_pa_mpjpe",
                "baseline/flat_lifter_pa_mpjpe", "registration/replaced", "regressor/test_one_view_pa_mpjpe"):
        assert all(key in h for h in history), key
    assert comparable(read_metrics(str(root / "reference"))) == comparable(history)
    assert os.listdir(os.path.join(root, "reference", "tensorboard"))


def test_rounds_share_one_registration_program(reference):
    """Round 1 (from the T-pose, stiff then relaxed) and round 2 (from the regressor's prediction,
    laid out on its device mesh) fit with one compiled program, and the fits dictionary compares
    the new and the stored fits with one. The lifter trains every round with one step (round 1
    without targets), and the evaluation scores the training fits, the test predictions and the
    mean-fit baseline with one program of errors."""
    assert reference[2][-1]["round"] == 2
    assert COMPILED["all"] > 0            # the compilations were seen
    assert COMPILED["_register"] <= 1 and COMPILED["_data_objective"] <= 1, COMPILED
    assert COMPILED["_step"] <= 1 and COMPILED["_pose_errors"] <= 1, COMPILED


def test_fits_dictionary_never_worsens_the_image_terms(reference):
    """Round 2's stored fits have image terms no higher than round 1's (per image)."""
    root, config, history = reference
    assert history[0]["registration/replaced"] == 8
    assert 0 <= history[1]["registration/replaced"] <= 8


def test_per_person_test_errors_are_written_and_paired(reference, tmp_path):
    """Each round's evaluation writes the per-person test errors whose means are the table's numbers;
    tools/compare_runs.py pairs two runs on them and refuses two different test splits."""
    sys.path.insert(0, os.path.join(REPO, "tools"))
    import compare_runs

    root, config, history = reference
    workdir = str(root / "reference")
    for h in history:
        errors = experiment.read_test_errors(workdir, h["round"])
        assert len(errors["test/gt_fingerprint"]) == config.data.test_size
        for key in ("regressor/test_pa_mpjpe", "regressor/test_mpjpe", "regressor/test_one_view_pa_mpjpe"):
            assert errors[key].shape == (config.data.test_size,)
            np.testing.assert_allclose(np.mean(errors[key]), h[key], rtol=1e-12)
    assert compare_runs.last_round(workdir) == history[-1]["round"]
    same = compare_runs.compare(workdir, workdir)
    assert same["diff"] == 0.0 and same["se"] == 0.0 and same["mean_a"] == history[-1]["regressor/test_pa_mpjpe"]
    r1 = compare_runs.compare(workdir, workdir, round_=1)       # round 1 against round 1 of the same run
    assert r1["mean_a"] == history[0]["regressor/test_pa_mpjpe"]
    other = tmp_path / "other"
    other.mkdir()
    errors = experiment.read_test_errors(workdir, 2)
    errors["test/gt_fingerprint"] = errors["test/gt_fingerprint"] + 1.0      # other people
    experiment.write_test_errors(str(other), 2, errors)
    with pytest.raises(ValueError, match="same 4 test people"):
        compare_runs.compare(workdir, str(other))


def test_test_seed_scores_every_data_seed_on_the_same_people(tmp_path):
    """``data.test_seed``: data seeds 0 and 1 train on different people and test on seed 0's own test
    split, person for person; an invalid value is named."""
    from bodyjax import body

    template = body.default_template("coco17")
    splits = {}
    for seed in (0, 1):
        config = smoke_config(tmp_path, **{"data.seed": seed, "data.test_seed": 0, "data.train_size": 3,
                                           "data.test_size": 2})
        data = experiment.load_data(config, str(tmp_path / "run"), template)
        splits[seed] = [[data.train[i]["gt_joints3d"] for i in range(3)], [data.test[i] for i in range(2)]]
    for i in range(2):
        for key in ("image", "gt_joints3d", "iuv"):
            np.testing.assert_array_equal(splits[0][1][i][key], splits[1][1][i][key])
    assert not np.allclose(splits[0][0][0], splits[1][0][0])
    with pytest.raises(ValueError, match="test_seed must be -1"):
        experiment.load_data(smoke_config(tmp_path, **{"data.test_seed": -2}), str(tmp_path / "run"), template)
    with pytest.raises(ValueError, match="synthetic source only"):
        experiment.load_data(smoke_config(tmp_path, **{"data.test_seed": 0, "data.source": "densepose_coco"}),
                             str(tmp_path / "run"), template)


def test_paired_difference_matches_scipys_paired_t_test():
    """The paired difference's standard error and interval against SciPy's ``ttest_rel``."""
    from scipy import stats

    sys.path.insert(0, os.path.join(REPO, "tools"))
    import compare_runs

    rng = np.random.default_rng(0)
    a = rng.gamma(4.0, 20.0, 300)
    b = a + rng.normal(-1.0, 5.0, 300)
    r = compare_runs.paired_difference(a, b)
    ref = stats.ttest_rel(b, a)
    np.testing.assert_allclose(r["diff"] / r["se"], ref.statistic, rtol=1e-12)
    np.testing.assert_allclose(r["ci95"], tuple(ref.confidence_interval(0.95)), rtol=1e-12)
    assert r["b_better"] == np.mean(b < a) and r["n"] == 300
    with pytest.raises(ValueError, match="same length"):
        compare_runs.paired_difference(a, b[:-1])


@pytest.mark.slow  # ~50 s; CI resumes from a damaged copy of the reference (one stage)
def test_killed_run_resumes_to_the_same_result(reference):
    """Stops right after stage 7 (round 2's lifter) and resumes to the uninterrupted metrics."""
    root, config, history = reference
    workdir = str(root / "killed")
    config = smoke_config(root, **OPTIONS, stop_after_stages=7)
    with pytest.raises(SystemExit):
        experiment.train_and_evaluate(config, workdir)
    config.stop_after_stages = -1
    resumed = experiment.train_and_evaluate(config, workdir)
    assert comparable(resumed) == comparable(history)


def test_finished_run_reopened_runs_nothing(reference, capsys):
    """The same command on a finished run says so and returns its metrics, training nothing."""
    root, config, history = reference
    capsys.readouterr()
    again = experiment.train_and_evaluate(config, str(root / "reference"))
    captured = capsys.readouterr()
    out = captured.out + captured.err                # (the progress bars are on stderr)
    assert "all 2 rounds are done; nothing to run" in out and "resuming" not in out
    assert "round 1/2" not in out and comparable(again) == comparable(history)


def test_damaged_checkpoint_is_skipped(reference, capsys):
    """The newest checkpoint of a run (a copy of the reference's) is truncated: the rerun says so,
    resumes from the previous one, reruns the last stage and ends with the uninterrupted metrics.

    (A copy costs one stage; a run stopped mid-way and resumed is the slow test above.)
    """
    root, config, history = reference
    workdir = root / "damaged"
    shutil.copytree(root / "reference", workdir)
    steps = sorted(int(d) for d in os.listdir(workdir / "checkpoints") if d.isdigit())
    last = 2 * len(dnl.STAGES)
    assert steps == [last - 1, last]
    data_files = [os.path.join(d, f) for d, _, fs in os.walk(workdir / "checkpoints" / str(last)) for f in fs
                  if os.path.basename(d) == "d"]
    assert data_files
    for path in data_files:
        with open(path, "r+b") as f:
            f.truncate(max(1, os.path.getsize(path) // 3))
    capsys.readouterr()
    resumed = experiment.train_and_evaluate(config, str(workdir))
    out = capsys.readouterr().out
    assert f"checkpoint {last}" in out and "cannot be read" in out and "skipping it" in out
    assert f"resuming from checkpoint {last - 1}" in out
    assert comparable(resumed) == comparable(history)
    assert comparable(read_metrics(str(workdir))) == comparable(history)


@pytest.mark.slow
def test_sigkill_mid_stage_then_resume(reference):
    """A real SIGKILL in the middle of a stage (subprocess), then a resume to completion."""
    root, config, history = reference
    workdir = str(root / "sigkill")
    cmd = [sys.executable, "-m", "experiments.deform_and_learn", "--config", "configs/default.py:smoke",
           "--config.data.train_size=8", "--config.data.test_size=4", "--config.loop.registration_chunk=8",
           "--config.loop.keep_best_fits=True", "--config.fit_views.per_fit=1", "--config.regressor.test_flip=True",
           f"--config.data.data_dir={root / 'data'}",
           f"--config.compilation_cache={root / 'jax_cache'}", f"--workdir={workdir}"]
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "BODYJAX_NO_COMPILATION_CACHE": "0"}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = ""
    deadline = time.time() + 600
    while time.time() < deadline:
        line = proc.stdout.readline()
        seen += line
        if "round 1/2 regressor" in line:  # mid round 1, after three checkpoints
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, seen[-2000:]
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "resuming from checkpoint" in out.stdout
    assert comparable(read_metrics(workdir)) == comparable(history)


def test_every_config_file_has_a_smoke_variant_that_builds():
    import importlib

    for name in ("default", "paper", "densepose_coco"):
        module = importlib.import_module(f"configs.{name}")
        config = module.get_config("smoke")
        loop = experiment.loop_config(config)
        assert loop.regressor.num_epochs == 1
        with pytest.raises(ValueError, match="unknown variant"):
            module.get_config("nonsense")


def test_config_blocks_map_straight_onto_the_dataclasses():
    config = default.get_config()
    loop = experiment.loop_config(config)
    assert loop.registration.num_steps == 100 and loop.registration.w_scale == 10.0
    assert loop.registration_first.w_scale == 100.0 and loop.registration_relax.w_scale == 1.0
    assert loop.registration_first.w_depth == 0.0 and loop.registration_relax.w_depth == 0.0
    assert loop.registration.w_depth == 0.0
    # linked fields: the later rounds' weight changes round 1's (stiff and relaxed) too
    config.registration.w_dense = 500.0
    linked = experiment.loop_config(config)
    assert linked.registration_first.w_dense == 500.0 and linked.registration_relax.w_dense == 500.0
    # ... but not the depth weight: round 1's lifter is another one
    config.registration.w_depth = 0.5
    assert experiment.loop_config(config).registration_first.w_depth == 0.0
    # the default freezes the pretrained stem; :bench and :smoke (no pretrained network) train it
    assert loop.regressor.freeze_stem and loop.regressor.pretrained
    bench = experiment.loop_config(default.get_config("bench")).regressor
    assert not bench.freeze_stem
    # :bench starts from the network pretrained on other people's fits, at the paper's fine-tuning rate
    assert bench.pretrained == regressor.PRETRAINED_IUV_64_FITS and bench.learning_rate == 1e-4
    assert bench.image_size == 64 and bench.test_flip and not loop.regressor.test_flip
    assert loop.regressor.pretrained == regressor.PRETRAINED_IUV_48 and loop.regressor.learning_rate == 1e-3
    # both read the shipped part predictor's maps as they are (no fine-tuning in round 1) ...
    bench_iuv = experiment.loop_config(default.get_config("bench")).iuv_net
    assert bench_iuv.num_epochs == 0 and bench_iuv.pretrained == iuv_net.PRETRAINED_64
    assert loop.iuv_net.num_epochs == 0 and loop.iuv_net.pretrained == iuv_net.PRETRAINED_64
    # :bench reads the maps averaged over four shifted views; the default and the paper one view
    assert bench_iuv.test_shifts == 4 and loop.iuv_net.test_shifts == 1
    assert experiment.loop_config(paper.get_config()).iuv_net.test_shifts == 1
    # ... which a run without a pretrained predictor must train
    config.iuv_net.pretrained = ""
    with pytest.raises(ValueError, match=r"iuv_net.num_epochs=0 .* iuv_net.pretrained is ''"):
        experiment.loop_config(config)
    config.iuv_net.num_epochs = 5
    assert experiment.loop_config(config).iuv_net.num_epochs == 5
    config.regressor.input = "rgb"   # the paper's regressor reads no maps: no predictor needed
    config.iuv_net.num_epochs, config.fit_views.per_fit = 0, 0.0
    config.regressor.freeze_stem, config.regressor.pretrained = False, ""
    assert not experiment.loop_config(config).uses_maps
    config = default.get_config()
    assert not experiment.loop_config(default.get_config("smoke")).regressor.freeze_stem
    # a frozen stem needs a pretrained one (a random stem would stay random)
    config.regressor.freeze_stem, config.regressor.pretrained = True, ""
    with pytest.raises(ValueError, match="regressor.freeze_stem=True .* regressor.pretrained is ''"):
        experiment.loop_config(config)
    config.regressor.freeze_stem = False
    # the data path: records read in the loading thread, small splits held in memory
    assert loop.read_threads == 0 and loop.memory_records_mb > 0
    config.loop.read_threads = -1
    with pytest.raises(ValueError, match="read_threads must be >= 0 .* got -1"):
        experiment.loop_config(config)
    config.loop.read_threads = 0
    config.lifter.knee_wieght = 1.0
    with pytest.raises(TypeError, match="config.lifter.*knee_wieght"):
        experiment.loop_config(config)


def test_paper_config_keeps_the_papers_registration_and_regressor():
    from configs import paper

    loop = experiment.loop_config(paper.get_config())
    assert loop.registration_first.num_steps == 300 and loop.registration_first.w_scale == 100.0
    assert loop.registration_relax.num_steps == 0       # nothing after the stiff round 1
    assert loop.registration_first.w_depth == loop.registration.w_depth == 1.0   # eq. 9 as written
    assert loop.registration.num_steps == 100 and loop.registration.learning_rate == 0.1
    assert loop.regressor.joints3d_weight == 0.0 and loop.regressor.lr_final_fraction == 1.0
    assert loop.regressor.input == "rgb" and not loop.keep_best_fits
    assert not loop.regressor.freeze_stem and loop.augment.for_maps().flip_prob == 0.0
    assert loop.regressor.pretrained == "" and loop.regressor.head == "linear" and not loop.regressor.coords
    assert not loop.regressor.test_flip


class _CountingSource:
    """A source that counts the records read from it (each read of a stored split decodes one)."""

    def __init__(self, arrays):
        self.arrays, self.reads = arrays, 0

    def __len__(self):
        return len(self.arrays["a"])

    def __getitem__(self, i):
        self.reads += 1
        return {k: np.array(v[int(i)]) for k, v in self.arrays.items()}


def test_stage_records_reads_a_small_split_once_and_streams_a_large_one():
    import dataclasses

    from bodyjax.loop import experiment
    from configs import default

    loop = experiment.loop_config(default.get_config("smoke"))
    rng = np.random.default_rng(0)
    arrays = {"a": rng.normal(size=(300, 4)).astype(np.float32), "b": rng.integers(0, 9, (300, 2, 2)),
              "unused": np.zeros((300, 1000), np.uint8)}
    source = _CountingSource(arrays)
    held = dnl.stage_records(source, ("a", "b"), loop, "test records")
    assert source.reads == 301            # one record to size them, then each once
    streamed = dnl.stage_records(source, ("a", "b"), dataclasses.replace(loop, memory_records_mb=0.0), "x")
    for i in (0, 255, 256, 299):
        got, ref = held[i], streamed[i]
        assert set(got) == {"a", "b"} == set(ref)
        for k in got:
            assert got[k].dtype == ref[k].dtype
            np.testing.assert_array_equal(got[k], arrays[k][i])
            np.testing.assert_array_equal(ref[k], arrays[k][i])
    reads = source.reads
    [held[i] for i in range(300)]
    assert source.reads == reads          # held in memory: nothing more read
    over_budget = dataclasses.replace(loop, memory_records_mb=300 * 24 / 2 ** 20)   # below 300 x 48 bytes
    assert dnl.stage_records(source, ("a", "b"), over_budget, "x")[7]["b"].shape == (2, 2)
    assert source.reads == reads + 2      # sized with one record, then streamed


def test_mean_params_is_the_mean_of_the_fits():
    import jax.numpy as jnp

    from bodyjax import body
    from bodyjax.loop import deform_and_learn as dnl
    from bodyjax.rotations import axis_angle_to_quaternion

    rng = np.random.default_rng(0)
    m = 50
    pose = rng.normal(size=(m, 24, 3)) * 0.3
    fits = body.BodyParams(pose=pose.astype(np.float32),
                           segment_scales=(1 + 0.05 * rng.normal(size=(m, 24))).astype(np.float32),
                           rotation=np.broadcast_to(np.eye(3, dtype=np.float32), (m, 3, 3)).copy(),
                           scale=rng.uniform(20, 30, m).astype(np.float32),
                           translation=rng.uniform(20, 40, (m, 2)).astype(np.float32))
    mean = dnl.mean_params(fits)
    np.testing.assert_allclose(mean.segment_scales, fits.segment_scales.mean(0), rtol=1e-5)
    np.testing.assert_allclose(mean.scale, fits.scale.mean(), rtol=1e-5)
    np.testing.assert_allclose(mean.rotation, np.eye(3), atol=1e-5)
    # NumPy reference of the pose: normalised mean of the (w >= 0) unit quaternions, to axis-angle
    q = np.asarray(axis_angle_to_quaternion(jnp.asarray(pose)), np.float64).mean(0)
    q /= np.linalg.norm(q, axis=-1, keepdims=True)
    angle = 2 * np.arctan2(np.linalg.norm(q[:, 1:], axis=-1), q[:, 0])
    ref = q[:, 1:] / np.maximum(np.linalg.norm(q[:, 1:], axis=-1, keepdims=True), 1e-12) * angle[:, None]
    np.testing.assert_allclose(mean.pose, ref, atol=1e-4)


def _procrustes_error_mm(pred, gt):
    """PA-MPJPE of one person, float64 NumPy: the similarity (scale, rotation, translation) that best
    maps ``pred`` onto ``gt`` in least squares (Umeyama), then the mean joint distance."""
    x, y = pred - pred.mean(0), gt - gt.mean(0)
    u, s, vt = np.linalg.svd(x.T @ y)
    d = np.sign(np.linalg.det(u @ vt))
    fix = np.diag([1.0, 1.0, d])
    rot = u @ fix @ vt
    scale = np.trace(np.diag(s) @ fix) / np.sum(x ** 2)
    return np.mean(np.linalg.norm(scale * x @ rot - y, axis=-1))


def test_pose_metrics_match_numpy_for_any_chunk():
    """The loop's errors: root-aligned MPJPE and PA-MPJPE against float64 NumPy references, the
    same for every chunk size (the chunks are padded and the means taken on the host)."""
    from bodyjax import body
    from bodyjax.loop import deform_and_learn as dnl

    t = body.default_template()
    rng = np.random.default_rng(4)
    m = 11
    gt = rng.normal(0, 0.3, (m, 24, 3))
    gt -= gt[:, :1]                                      # root-relative targets (metres)
    pred = gt + rng.normal(0, 0.05, (m, 24, 3)) + rng.normal(0, 1.0, (m, 1, 3))   # any root
    canonical = dnl.canonical_bone_sum(t)
    out = {c: dnl.pose_metrics(pred, gt, t.parents, canonical, chunk=c) for c in (1, 4, 64)}
    for c in (1, 4):
        for k, v in out[64].items():
            assert out[c][k] == pytest.approx(v, rel=1e-5, abs=1e-4), (c, k)
    root = pred - pred[:, :1]
    np.testing.assert_allclose(out[4]["mpjpe_root"], np.mean(np.linalg.norm(root - gt, axis=-1)) * 1000, rtol=1e-5)
    pa = np.mean([_procrustes_error_mm(root[i] * 1000, gt[i] * 1000) for i in range(m)])
    np.testing.assert_allclose(out[4]["pa_mpjpe"], pa, rtol=1e-4)


def test_keep_best_keeps_the_lower_objective_fit():
    from bodyjax import body
    from bodyjax.loop import deform_and_learn as dnl

    t = body.default_template()
    old = body.rest_params(t, (4,), scale=1.0)
    new = body.rest_params(t, (4,), scale=2.0)
    old = jax_tree_numpy(old)
    new = jax_tree_numpy(new)
    old_obj = np.array([1.0, 1.0, 1.0, 1.0])
    new_obj = np.array([0.5, 2.0, 0.5, 2.0])
    old_flag = np.array([False, False, False, True])
    new_flag = np.array([False, False, True, False])
    fits, flagged, replaced = dnl.keep_best(old, old_obj, old_flag, new, new_obj, new_flag)
    # 0: better -> new; 1: worse -> old; 2: better but flagged -> old; 3: old flagged -> new
    np.testing.assert_array_equal(replaced, [True, False, False, True])
    np.testing.assert_array_equal(fits.scale, [2.0, 1.0, 1.0, 2.0])
    np.testing.assert_array_equal(flagged, [False, False, False, False])


def jax_tree_numpy(tree):
    import jax

    return jax.tree_util.tree_map(np.asarray, tree)
