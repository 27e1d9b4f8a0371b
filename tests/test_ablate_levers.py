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
