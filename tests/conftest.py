"""Shared pytest set-up."""
import os

# Keep tests on the CPU and quiet; tests that need several devices set XLA_FLAGS in a subprocess.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The experiments turn JAX's persistent compilation cache on process-wide; in the test process the
# in-memory jit caches already serve repeated runs, and a process-wide cache would outlive the test
# that enabled it. tests/test_loop.py checks the cache itself in subprocesses.
os.environ.setdefault("BODYJAX_NO_COMPILATION_CACHE", "1")


import gc  # noqa: E402

import jax  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drops JAX's compiled programs after each test module.

    A full run compiles thousands of XLA programs in one process; kept alive, their code and memory
    maps accumulate until XLA's CPU compiler crashed late in the run (a segfault inside
    ``backend_compile_and_load``, in a different test each time). An experiment is one process and
    compiles a few dozen.
    """
    yield
    jax.clear_caches()
    gc.collect()
