"""The main job's every-round behaviour on the default config (slow: the whole run, 7–16 minutes).

    python -m pytest -q -m slow tests/test_default_fidelity.py
"""
import pytest

from bodyjax.loop import experiment
from configs import default


@pytest.mark.slow
def test_default_run_improves_every_round(tmp_path):
    """README command 1's run: the regressor's test PA-MPJPE and bone-rescaled MPJPE fall every
    round, the registration's training PA-MPJPE never rises, and the final regressor is well below
    the mean-fit baseline on the same split (the fidelity target, 0.75 ×; measured 0.66 ×)."""
    config = default.get_config()
    config.data.data_dir = str(tmp_path / "data")
    config.compilation_cache = ""
    config.pictures = False
    history = experiment.train_and_evaluate(config, str(tmp_path / "run"))
    assert [h["round"] for h in history] == [1, 2, 3]
    test_pa = [h["regressor/test_pa_mpjpe"] for h in history]
    test_mpjpe = [h["regressor/test_mpjpe"] for h in history]
    reg_pa = [h["registration/train_pa_mpjpe"] for h in history]
    assert all(b < a for a, b in zip(test_pa, test_pa[1:])), test_pa
    assert all(b < a for a, b in zip(test_mpjpe, test_mpjpe[1:])), test_mpjpe
    assert all(b <= a for a, b in zip(reg_pa, reg_pa[1:])), reg_pa
    assert test_pa[-1] <= 0.75 * history[-1]["baseline/mean_fit_pa_mpjpe"], (test_pa, history[-1])
    assert history[-1]["lifter/test_pa_mpjpe"] < history[-1]["baseline/flat_lifter_pa_mpjpe"]
