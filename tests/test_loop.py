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
