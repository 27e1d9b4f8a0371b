"""Shared pytest set-up."""
import os

# Keep tests on the CPU and quiet; tests that need several devices set XLA_FLAGS in a subprocess.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The experiments turn JAX's persistent compilation cache on process-wide; in the test process the
# in-memory jit caches already serve repeated runs, and a process-wide cache would outlive the test
# that enabled it. tests/test_loop.py checks the cache itself in subprocesses.
os.environ.setdefault("BODYJAX_NO_COMPILATION_CACHE", "1")
