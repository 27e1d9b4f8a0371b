"""The orchestration pieces: the epoch loop, chunks, the compilation cache."""
import os
import subprocess
import sys
import textwrap

import jax.numpy as jnp
import numpy as np
import pytest

from bodyjax.data import chunking
from bodyjax.loop import epochs


def test_run_epochs_averages_and_detects_divergence():
    def batches(epoch):
        for i in range(3):
            yield {"x": np.float32(epoch * 3 + i)}

    def step(state, batch, i):
        return state + 1, {"loss": jnp.asarray(batch["x"])}

    state, history = epochs.run_epochs(0, step, batches, 2)
    assert state == 6
    assert history["loss"] == [1.0, 4.0]

    def bad_step(state, batch, i):
        return state, {"loss": jnp.asarray(np.nan if i == 4 else 1.0)}

    with pytest.raises(FloatingPointError, match="epoch 2.*loss"):
        epochs.run_epochs(0, bad_step, batches, 2)


def test_array_batches_follow_the_epoch_seed():
    arrays = {"a": np.arange(10), "b": np.arange(10) * 2}
    e0 = list(epochs.array_batches(arrays, 3, seed=7, epoch=0))
    again = list(epochs.array_batches(arrays, 3, seed=7, epoch=0))
    e1 = list(epochs.array_batches(arrays, 3, seed=7, epoch=1))
    assert len(e0) == 3 and all(len(b["a"]) == 3 for b in e0)
    assert all(np.array_equal(x["a"], y["a"]) for x, y in zip(e0, again))
    assert not all(np.array_equal(x["a"], y["a"]) for x, y in zip(e0, e1))
    order = np.random.default_rng(epochs.epoch_seed(7, 0)).permutation(10)
    np.testing.assert_array_equal(np.concatenate([b["a"] for b in e0]), order[:9])
    assert all(np.array_equal(b["b"], 2 * b["a"]) for b in e0)


@pytest.mark.parametrize("m", [1, 5, 8, 13])
def test_map_chunks_pads_to_one_shape_and_drops_the_padding(m):
    seen = []

    def fn(tree):
        seen.append(tree["x"].shape)
        return {"y": tree["x"] * 2, "s": tree["x"].sum(-1)}

    x = np.arange(m * 3, dtype=np.float32).reshape(m, 3)
    out = chunking.map_chunks(fn, {"x": x}, 4)
    np.testing.assert_array_equal(out["y"], 2 * x)
    np.testing.assert_array_equal(out["s"], x.sum(-1))
    assert set(seen) == {(4, 3)}


def test_chunks_read_every_record_once():
    source = [{"i": np.int64(i), "v": np.float32(i) / 2} for i in range(7)]
    got = []
    for idx, records in chunking.chunks(source, 3, keys=("i",)):
        assert records["i"].shape == (3,)
        got.extend(records["i"][:len(idx)].tolist())
    assert got == list(range(7))
    with pytest.raises(ValueError, match="empty"):
        list(chunking.chunks([], 3))


def test_compilation_cache_is_created_and_reused(tmp_path):
    """A second process finds the first one's compiled program in the cache directory."""
    cache = tmp_path / "cache"
    script = textwrap.dedent(f"""
        import jax, jax.numpy as jnp
        from jax import monitoring
        hits = []
        monitoring.register_event_listener(lambda name, **kw: hits.append(name))
        from bodyjax.loop import compilation_cache
        print("dir", compilation_cache.enable({str(cache)!r}, min_compile_seconds=0.0))
        f = jax.jit(lambda x: jnp.sin(x) @ jnp.cos(x).T + 1.0)
        f(jnp.ones((64, 64))).block_until_ready()
        print("hits", sum("cache_hits" in h for h in hits))
    """)
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop("BODYJAX_NO_COMPILATION_CACHE", None)
    first = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    assert cache.is_dir() and any(cache.iterdir())
    assert "hits 0" in first.stdout
    second = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert second.returncode == 0, second.stderr[-2000:]
    hits = int(second.stdout.split("hits")[-1])
    assert hits >= 1, second.stdout
    off = subprocess.run([sys.executable, "-c", script.replace(repr(str(cache)), "''")], capture_output=True,
                         text=True, env=env, timeout=300)
    assert "dir None" in off.stdout


def test_profile_compilations_names_the_call_site_of_each_program():
    """tools/profile_compilations.py: a program compiled under a project function is counted at that
    function's line, with its name; other JAX messages go on to the root logger."""
    import logging

    import jax

    from bodyjax import body
    from bodyjax.loop import deform_and_learn as dnl

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools"))
    import profile_compilations  # noqa: PLC0415

    t = body.default_template()
    rng = np.random.default_rng(0)
    gt = rng.normal(0, 0.3, (5, 24, 3))
    log, logger, was = profile_compilations.CompilationLog(), logging.getLogger("jax"), jax.config.jax_log_compiles
    logger.addHandler(log)
    jax.config.update("jax_log_compiles", True)
    try:
        jax.clear_caches()                # so that the errors' program compiles here
        dnl.pose_metrics(gt + 0.01, gt - gt[:, :1], t.parents, 1.0, chunk=5)
    finally:
        jax.config.update("jax_log_compiles", was)
        logger.removeHandler(log)
    sites = {where: s for where, s in log.sites.items() if "_pose_errors" in s["names"]}
    assert len(sites) == 1, dict(log.sites)
    (where, s), = sites.items()
    assert where.startswith(os.path.join("bodyjax", "")) and s["count"] >= 1
    assert log.count >= 1 and log.count == sum(v["count"] for v in log.sites.values())
    report = log.report(top=3)
    assert report.splitlines()[0].startswith(f"{log.count} programs compiled")
