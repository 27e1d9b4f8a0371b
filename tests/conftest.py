"""Shared pytest fixtures."""
import os

# Keep tests on the CPU and quiet; tests that need several devices set XLA_FLAGS in a subprocess.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
