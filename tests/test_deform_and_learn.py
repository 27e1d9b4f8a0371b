"""The main job: runs end to end, and a killed run resumes to exactly the uninterrupted result."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from configs import default
from experiments import deform_and_learn as experiment

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def smoke_config(**overrides):
    config = default.get_config("smoke")
    config.data.train_size = 8
    config.data.test_size = 4
    config.registration.batch_size = 8
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
    """One uninterrupted run of the smoke configuration (shared by the tests of this module)."""
    root = tmp_path_factory.mktemp("dnl")
    config = smoke_config(**{"data.data_dir": str(root / "data")})
    history = experiment.train_and_evaluate(config, str(root / "reference"))
    return root, config, history


def test_runs_all_rounds_and_reports(reference):
    root, config, history = reference
    assert [h["round"] for h in history] == [1, 2]
    for key in ("registration/train_mpjpe", "regressor/test_pa_mpjpe", "lifter/test_pa_mpjpe",
                "registration/flagged_fraction"):
        assert all(key in h for h in history), key
    assert comparable(read_metrics(str(root / "reference"))) == comparable(history)
    assert os.listdir(os.path.join(root, "reference", "tensorboard"))


@pytest.mark.parametrize("stop_after", [pytest.param(2, marks=pytest.mark.slow), 5])
def test_killed_run_resumes_to_the_same_result(reference, stop_after):
    """Stops right after stage `stop_after` (2: mid round 1; 5: after round 2's lifter) and resumes."""
    root, config, history = reference
    workdir = str(root / f"killed{stop_after}")
    config = smoke_config(**{"data.data_dir": str(root / "data"), "stop_after_stages": stop_after})
    with pytest.raises(SystemExit):
        experiment.train_and_evaluate(config, workdir)
    config.stop_after_stages = -1
    resumed = experiment.train_and_evaluate(config, workdir)
    assert comparable(resumed) == comparable(history)


@pytest.mark.slow
def test_sigkill_mid_stage_then_resume(reference):
    """A real SIGKILL in the middle of a stage (subprocess), then a resume to completion."""
    root, config, history = reference
    workdir = str(root / "sigkill")
    cmd = [sys.executable, "-m", "experiments.deform_and_learn", "--config", "configs/default.py:smoke",
           "--config.data.train_size=8", "--config.data.test_size=4", "--config.registration.batch_size=8",
           f"--config.data.data_dir={root / 'data'}", f"--workdir={workdir}"]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = ""
    deadline = time.time() + 600
    while time.time() < deadline:
        line = proc.stdout.readline()
        seen += line
        if "round 1/2 regressor" in line:  # mid round 1, after two checkpoints
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, seen[-2000:]
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "resuming from checkpoint" in out.stdout
    assert comparable(read_metrics(workdir)) == comparable(history)
