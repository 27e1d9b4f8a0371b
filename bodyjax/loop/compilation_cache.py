"""JAX's persistent compilation cache for the experiments: time spent on learning, not compiling.

Layer: orchestration. About 80% of a small CPU run is XLA compilation; with the cache a second run
(or a resumed one) loads the compiled programs from disk. The experiments enable it by default in
``~/.cache/bodyjax/jax`` (``config.compilation_cache``; ``''`` turns it off, as does the
environment variable ``BODYJAX_NO_COMPILATION_CACHE=1``).
"""
from __future__ import annotations

import os
from typing import Optional

import jax

DEFAULT_DIR = "~/.cache/bodyjax/jax"


def enable(cache_dir: Optional[str] = DEFAULT_DIR, min_compile_seconds: float = 0.5) -> Optional[str]:
    """Turns the persistent compilation cache on in ``cache_dir`` (created if missing).

    Args:
      cache_dir: the directory; ``''`` or ``None`` leaves the cache off.
      min_compile_seconds: programs that compile faster than this are not written.

    Returns:
      The absolute directory, or ``None`` when the cache stays off.
    """
    if not cache_dir or os.environ.get("BODYJAX_NO_COMPILATION_CACHE", "") not in ("", "0"):
        return None
    path = os.path.abspath(os.path.expanduser(cache_dir))
    os.makedirs(path, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_seconds))
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path
