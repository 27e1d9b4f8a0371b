"""The data set: sample ``i`` of seed ``s`` made from its own generator, one at a time or stacked.

Sample ``i`` of seed ``s`` uses ``np.random.default_rng([s, i])`` for all its draws (the person of
:mod:`~bodyjax.data.synthetic.scene`, then the rendering of :mod:`~bodyjax.data.synthetic.render`),
so it is the same whatever the start, order or number of workers.
"""
from __future__ import annotations

from typing import Iterator, Optional

import jax
import numpy as np

from bodyjax import body
from bodyjax.data import sample as sample_lib
from bodyjax.data.synthetic import render, scene
from bodyjax.data.synthetic.config import SyntheticConfig

#: People drawn and posed together (a few forward chunks).
_BLOCK = 4 * scene.CHUNK


def generate(template: body.BodyTemplate, cfg: SyntheticConfig = SyntheticConfig(), seed: int = 0,
             num_samples: int = 1, start: int = 0, with_extras: bool = False,
             timings: Optional[dict] = None) -> Iterator:
    """Yields samples ``start .. start + num_samples - 1`` of the data set with this ``seed``.

    Sample ``i`` uses ``np.random.default_rng([seed, i])`` for all its draws (params then appearance,
    exactly as :func:`~bodyjax.data.synthetic.scene.sample_params` followed by
    :func:`~bodyjax.data.synthetic.render.render_sample`), so it does not depend on ``start``, on the
    order or on how the indices are split among workers. The forward passes are batched (chunks of
    :data:`~bodyjax.data.synthetic.scene.CHUNK` through one jitted :func:`body.forward`);
    rasterisation is per sample.

    Args:
      template, cfg, seed: the data set.
      num_samples, start: the index range.
      with_extras: also yield the extras of :func:`~bodyjax.data.synthetic.render.render_sample`.
      timings: optional dict that accumulates ``[wall, process CPU]`` seconds per stage
        (``'params+forward'``, ``'rasterise'``, ``'shading+background'``,
        ``'correspondences+keypoints'``).

    Yields:
      sample dicts, or ``(sample, extras)`` pairs when ``with_extras``.
    """
    template = body.with_keypoints(template, cfg.keypoint_set)
    tables = render.tables(template)
    for lo in range(start, start + num_samples, _BLOCK):
        timer = render.Timer(timings)
        rngs = [np.random.default_rng([seed, i]) for i in range(lo, min(lo + _BLOCK, start + num_samples))]
        people = scene.draw_people(rngs, template, cfg)
        posed = scene.pose_bodies(template, people)
        timer.lap("params+forward")
        for j, rng in enumerate(rngs):
            timer = render.Timer(timings)
            one = jax.tree_util.tree_map(lambda a, j=j: a[j], posed)
            xy = one.vertices[:, :2]
            s, t = scene.frame(rng, xy.min(0), xy.max(0), cfg)
            person = scene.framed(jax.tree_util.tree_map(lambda a, j=j: a[j], people), s, t)
            timer.lap("params+forward")
            sample, extras = render.annotate(tables, cfg, person, one, rng, timings)
            yield (sample, extras) if with_extras else sample


def make_split(template: body.BodyTemplate, cfg: SyntheticConfig = SyntheticConfig(), seed: int = 0,
               num_samples: int = 1) -> dict:
    """Samples ``0 .. num_samples - 1`` of ``seed`` stacked into one dict (leading axis = sample)."""
    return sample_lib.stack(list(generate(template, cfg, seed, num_samples)))
