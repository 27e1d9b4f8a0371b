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
import shutil  # noqa: E402
import tempfile  # noqa: E402

import jax  # noqa: E402
import pytest  # noqa: E402

#: One persistent compilation cache for the whole test session (all pytest-xdist workers): the
#: modules compile many of the same programs (the loop's stages, the body, the regressor's step),
#: and the module-level ``jax.clear_caches()`` below drops the in-memory copies. Created by the
#: controlling process, removed at its end; ``BODYJAX_TEST_COMPILATION_CACHE=0`` turns it off.
_CACHE_ENV = "BODYJAX_TEST_COMPILATION_CACHE_DIR"


def pytest_configure(config):
    _compile_fast_when_not_slow(config)
    if os.environ.get("BODYJAX_TEST_COMPILATION_CACHE", "1") == "0":
        return
    if not hasattr(config, "workerinput"):      # the controlling process (or the only one)
        os.environ[_CACHE_ENV] = tempfile.mkdtemp(prefix="bodyjax-test-jax-cache-")
        config._bodyjax_cache_dir = os.environ[_CACHE_ENV]
    path = os.environ.get(_CACHE_ENV)
    if path:
        jax.config.update("jax_compilation_cache_dir", path)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def _compile_fast_when_not_slow(config):
    """LLVM optimisation level 0 for the fast suite (the default ``-m "not slow"``, CI's).

    Most of that suite's time is XLA compiling small programs that then run for milliseconds:
    at level 0 (the HLO passes still run) a ResNet-18 gradient compiles in 4.8 s instead of 7.7 s
    and the suite takes 704 s instead of 1,185 s on 2 cores. The slow tests train for real, and
    level 0 slows that compute by up to 2.3 × (the main job's round-1 registration 214 s against
    95 s), so any other selection (``-m slow``, ``-m ""``) keeps XLA's level, as
    does ``BODYJAX_TEST_XLA_OPT=default``. Set before any test runs (the XLA backend starts on the
    first computation); the pytest-xdist workers and the tests' subprocesses inherit it.
    """
    if os.environ.get("BODYJAX_TEST_XLA_OPT", "0") == "default":
        return
    if " ".join((config.getoption("markexpr", "") or "").split()) != "not slow":
        return
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_backend_optimization_level" not in flags:
        os.environ["XLA_FLAGS"] = (flags + " --xla_backend_optimization_level=0").strip()


def pytest_unconfigure(config):
    path = getattr(config, "_bodyjax_cache_dir", None)
    if path:
        shutil.rmtree(path, ignore_errors=True)


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
