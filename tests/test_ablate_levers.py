"""The ablation script's levers name real config fields and change them."""
import copy

import pytest

from configs import default
from experiments import ablate_levers


@pytest.mark.parametrize("lever", sorted(ablate_levers.LEVERS))
def test_lever_fields_exist_and_change_the_config(lever):
    config = default.get_config()
    changed = copy.deepcopy(config)
    for dotted, value in ablate_levers.LEVERS[lever].items():
        node = config
        *path, leaf = dotted.split(".")
        for p in path:
            node = node[p]
        assert leaf in node, f"{lever}: {dotted} is not a field of configs/default.py"
        ablate_levers._set(changed, dotted, value)
    from bodyjax.loop import experiment

    experiment.loop_config(changed)  # every field still maps onto the dataclasses
    if lever != "all":
        assert changed.to_dict() != config.to_dict(), f"{lever} changes nothing in the default config"


def test_paired_column_pairs_each_lever_with_all_of_its_seed(tmp_path):
    """The table's paired column: a lever's per-person errors minus ``all``'s of the same seed; a run on
    other people and a seed without ``all`` are said, not paired."""
    import numpy as np

    from bodyjax.loop import experiment

    rng = np.random.default_rng(0)
    people = rng.uniform(1, 2, 50)
    base = rng.gamma(4.0, 20.0, 50)
    runs = {"all_seed0": base, "single_seed0": base + 1.0 + rng.normal(0, 0.5, 50), "single_seed1": base}
    for name, errors in runs.items():
        experiment.write_test_errors(str(tmp_path / name), 1, {"regressor/test_pa_mpjpe": errors,
                                                              "test/gt_fingerprint": people})
    experiment.write_test_errors(str(tmp_path / "other_seed0"), 3, {"regressor/test_pa_mpjpe": base,
                                                                    "test/gt_fingerprint": people + 1})
    rows = [{"lever": n.rsplit("_seed", 1)[0], "seed": int(n[-1])} for n in (*runs, "other_seed0")]
    lines = ablate_levers.paired_to_all(rows, str(tmp_path))
    diff = np.mean(runs["single_seed0"] - base)
    assert len(lines) == 2 and lines[0].startswith(f"  single seed 0: {diff:+.2f} +- ") and "on 50 people" in lines[0]
    assert lines[1].startswith("  other seed 0: not paired") and "same 50 test people" in lines[1]
