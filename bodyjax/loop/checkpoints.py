"""Checkpoints of the loop state: orbax, one per stage, and a resume that survives a damaged one.

Layer: orchestration. :func:`restore_newest` tries the checkpoints from the newest to the oldest
and resumes from the first one that reads back completely; every one it skips is reported in one
line (its step, its path and the reason), so a file truncated by a kill or a full disk costs one
stage of work, not the run.
"""
from __future__ import annotations

import contextlib
import gc
import logging
import os
from typing import Any, Callable, Optional, Tuple

import jax
import numpy as np
import orbax.checkpoint as ocp


def manager(workdir: str, max_to_keep: int = 2) -> ocp.CheckpointManager:
    """The orbax ``CheckpointManager`` of a run (``<workdir>/checkpoints``, the newest ``max_to_keep``)."""
    return ocp.CheckpointManager(
        os.path.abspath(os.path.join(workdir, "checkpoints")),
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True))


def save(mgr: ocp.CheckpointManager, step: int, state: Any) -> None:
    """Saves ``state`` as checkpoint ``step`` and waits until it is on disk."""
    mgr.save(step, args=ocp.args.StandardSave(state))
    mgr.wait_until_finished()


def restore_newest(mgr: ocp.CheckpointManager, state: Any,
                   report: Callable[[str], None] = print) -> Tuple[Any, Optional[int]]:
    """Restores the newest READABLE checkpoint into ``state``'s structure.

    Args:
      mgr: the run's manager.
      state: a state of the right structure (its shapes and dtypes are the restore target).
      report: receives one line per skipped checkpoint.

    Returns:
      ``(state, step)``; ``(state, None)`` unchanged when no checkpoint can be read.
    """
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, state)
    for step in sorted(mgr.all_steps(), reverse=True):
        try:
            with _quiet_failed_reads():
                restored = mgr.restore(step, args=ocp.args.StandardRestore(abstract))
            _check_structure(restored, abstract)
        except Exception as e:  # noqa: BLE001 - any failure to read means: try the previous one
            path = os.path.join(str(mgr.directory), str(step))
            reason = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
            report(f"checkpoint {step} at {path} cannot be read ({type(e).__name__}: {reason}); "
                   "skipping it")
            continue
        return restored, step
    return state, None


@contextlib.contextmanager
def _quiet_failed_reads():
    """Silences the per-array read errors a damaged checkpoint leaves behind in asyncio futures
    (one long TensorStore message per array); the failure itself is reported in one line."""
    logger = logging.getLogger("asyncio")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        gc.collect()   # the abandoned futures log when they are collected: collect them now
        logger.setLevel(level)


def _check_structure(restored, abstract) -> None:
    got = jax.tree_util.tree_structure(restored)
    want = jax.tree_util.tree_structure(abstract)
    if got != want:
        raise ValueError(f"restored structure differs from the state's: {got} vs {want}")
    for a, b in zip(jax.tree_util.tree_leaves(restored), jax.tree_util.tree_leaves(abstract)):
        if tuple(np.shape(a)) != tuple(np.shape(b)):
            raise ValueError(f"restored array of shape {np.shape(a)}, expected {np.shape(b)}")
