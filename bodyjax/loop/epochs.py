"""The one epoch loop of the project, and the batches it consumes.

Layer: orchestration. Every trainer (the lifter, the part / IUV predictor, the regressor) is a pure
jitted ``step(state, batch, ...)`` of its algorithm module; :func:`run_epochs` calls it over
epochs of batches, averages the step metrics per epoch and reports progress.

One RNG convention, for every stage:

* a stage has one integer ``seed`` (drawn from the loop's PRNG key, see
  :func:`bodyjax.loop.deform_and_learn.stage_seed`);
* epoch ``e`` uses ``epoch_seed(seed, e)`` for its order (and, through grain, for the per-record
  random transforms such as the augmentation);
* randomness inside a jitted step comes from ``jax.random.fold_in(key, step_index)``.

Batches: :func:`array_batches` for small in-memory arrays (the lifter's 2D keypoints: NumPy
indexing, microseconds per batch), :func:`record_batches` for the image records, streamed from a
random-access source (the tfds ``array_record`` splits of :mod:`bodyjax.data.pipeline`) through a
grain ``DataLoader`` with the pipeline's transforms, sharded among JAX processes when asked.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Dict, Iterable, Iterator, Mapping, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from bodyjax.data.chunking import chunks, concatenate, map_chunks, read  # noqa: F401 - re-exported

StepFn = Callable[[Any, Any, int], Tuple[Any, Mapping[str, Any]]]


def epoch_seed(seed: int, epoch: int) -> int:
    """The 32-bit seed of epoch ``epoch`` of a stage seeded with ``seed``."""
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(epoch)]).generate_state(1)[0])


def array_batches(arrays: Mapping[str, np.ndarray], batch_size: int, seed: int, epoch: int,
                  shuffle: bool = True) -> Iterator[dict]:
    """One epoch of mini-batches of in-memory arrays (leading axis ``M``), the last partial one dropped.

    The order is ``np.random.default_rng(epoch_seed(seed, epoch)).permutation(M)``.

    Yields:
      ``{key: (B, ...) array}`` with ``B = min(batch_size, M)``.
    """
    m = len(next(iter(arrays.values())))
    bs = max(1, min(int(batch_size), m))
    order = (np.random.default_rng(epoch_seed(seed, epoch)).permutation(m) if shuffle
             else np.arange(m))
    for i in range(m // bs):
        idx = order[i * bs:(i + 1) * bs]
        yield {k: v[idx] for k, v in arrays.items()}


def record_batches(source, batch_size: int, seed: int, epoch: int, transforms: Sequence[Any] = (),
                   shuffle: bool = True, worker_count: int = 0,
                   shard_by_process: bool = False, read_threads: Optional[int] = None) -> Iterator[dict]:
    """One epoch of batches of records streamed from ``source`` through grain.

    Args:
      source: a random-access source of sample records (:func:`bodyjax.data.pipeline.data_source`).
      batch_size: records per batch (per process with ``shard_by_process``); the last partial
        batch is dropped.
      seed, epoch: the stage seed and the epoch (see the module docstring).
      transforms: grain transforms applied per record before batching (e.g.
        :class:`bodyjax.data.augment.Augment`).
      shuffle: a permutation of the records (else their order).
      worker_count: grain worker processes (0: in this process).
      shard_by_process: give each JAX process its block of the records.
      read_threads: threads reading the records (see :func:`bodyjax.data.pipeline.make_loader`).

    Yields:
      ``{key: (B, ...) array}`` batches.
    """
    from bodyjax.data import pipeline  # noqa: PLC0415 - grain only where records are streamed

    loader = pipeline.make_loader(source, batch_size, shuffle=shuffle, seed=epoch_seed(seed, epoch),
                                  num_epochs=1, worker_count=worker_count, drop_remainder=True,
                                  transforms=transforms, shard_by_process=shard_by_process,
                                  read_threads=read_threads)
    yield from loader


def run_epochs(state, step: StepFn, batches: Callable[[int], Iterable[Any]], num_epochs: int,
               progress: Optional[Callable[[int, Dict[str, float]], None]] = None,
               ) -> Tuple[Any, Dict[str, list]]:
    """Trains ``state`` for ``num_epochs`` epochs.

    Args:
      state: the algorithm's train state.
      step: ``step(state, batch, step_index) -> (state, metrics)``: a closure over the algorithm's
        jitted step (it holds the schedule and the step's randomness).
      batches: ``batches(epoch)`` yields the epoch's batches.
      num_epochs: epochs to run.
      progress: optional ``progress(epoch, epoch_mean_metrics)`` after every epoch.

    Returns:
      ``(state, history)``; ``history[name]`` lists the per-epoch means of each step metric, and
      ``history['seconds']`` the wall time of each epoch.

    Raises:
      FloatingPointError: a step returned a non-finite loss (the training diverged); the message
        names the epoch, the step and the metric.
    """
    history: Dict[str, list] = {}
    index = 0
    for epoch in range(int(num_epochs)):
        t0 = time.perf_counter()
        collected = []
        for batch in batches(epoch):
            state, metrics = step(state, batch, index)
            collected.append(metrics)
            index += 1
        if not collected:
            raise ValueError(f"epoch {epoch} had no batch (fewer records than one batch?)")
        means = jax.device_get(jax.tree_util.tree_map(lambda *xs: jnp.mean(jnp.stack(xs)), *collected))
        means = {k: float(v) for k, v in means.items()}
        bad = [k for k, v in means.items() if not np.isfinite(v)]
        if bad:
            raise FloatingPointError(f"training diverged in epoch {epoch + 1} (steps up to {index}): "
                                     f"non-finite {bad}")
        means["seconds"] = time.perf_counter() - t0
        for k, v in means.items():
            history.setdefault(k, []).append(v)
        if progress is not None:
            progress(epoch, means)
    return state, history
