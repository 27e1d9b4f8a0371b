"""Input pipeline: random-access sources of sample records, grain loaders and simple batching.

Sources
-------
:func:`data_source` opens a split written by a builder of :mod:`bodyjax.data.tfds_builders` (through
tfds's ``as_data_source``: ``array_record`` files, no TensorFlow) as a :class:`RecordSource`: a
``Sequence`` whose item ``i`` is the ``i``-th record of the split as a sample dict of
:mod:`bodyjax.data.sample` with the exact dtypes (``image`` decoded to ``(H, W, 3)`` uint8 RGB,
scalars as 0-d arrays). Any object with ``__len__`` and ``__getitem__`` returning sample dicts (a
list of dicts, too) works wherever a source is expected below.

Batching
--------
* :func:`make_loader`: a ``grain.python.DataLoader`` (``IndexSampler`` + ``Batch``). The order is
  a deterministic function of ``seed`` (a new permutation every epoch when shuffling); epochs follow
  each other as one stream, so with ``drop_remainder=False`` or ``len(source) % batch_size != 0`` a
  batch may straddle two epochs (use ``num_epochs=None`` and count steps, the usual JAX training
  loop). ``worker_count > 0`` reads and transforms in worker processes: the program's entry point
  then needs an ``if __name__ == '__main__':`` guard (workers re-import the main module), and absl
  flags must be parsed (``app.run(main)``; when they are not, :func:`make_loader` marks them as
  parsed so that grain can read its own flags with their defaults). With ``W`` workers grain builds
  each batch inside one worker from every ``W``-th record of the stream and hands the batches out
  round-robin: the batches are deterministic for a fixed ``(seed, worker_count)`` but differ from
  those of another worker count, and ``drop_remainder`` applies per worker (up to ``W·(B-1)``
  records of a finite stream are dropped; choose ``num_epochs=None`` or sizes divisible by
  ``W·B``). Start-up costs a few seconds per worker (each imports JAX, tfds, ...); delete the
  loader and its iterators when done so that grain frees its shared memory before exit.
* :func:`iterate_batches`: the same in-process without grain: epoch by epoch, never straddling,
  permutation ``np.random.default_rng([seed, epoch]).permutation(n)``. (It is deterministic too,
  but NOT the same order as :func:`make_loader`.)
* :func:`to_arrays`: a whole (small) source stacked into one dict of arrays, e.g. the few thousand
  64–128 px images of the default experiment held in memory (4096 × 128² × 3 B ≈ 200 MB of images).

Transforms (``transforms=`` of the two batchers): grain transformations (``grain.python.MapTransform``,
``RandomMapTransform``, ``FilterTransform``) are used as they are; any other callable
``sample -> sample`` is wrapped as a ``MapTransform``. Random transforms get grain's per-record
generator in :func:`make_loader` and ``np.random.default_rng([seed, epoch, position, j])`` (``j``:
the transform's place in the list) in :func:`iterate_batches`. With workers, transforms travel to
the worker processes with cloudpickle (as grain does), so closures and lambdas work too.

Multi-host: ``shard_by_process=True`` (``grain.python.ShardByJaxProcess``) gives JAX process ``p``
of ``P`` the contiguous block ``[p·⌊n/P⌋, (p+1)·⌊n/P⌋)`` of the records (the remainder is dropped
so that every process sees as many records, and the per-process loaders stay in lock step);
shuffling permutes within the block every epoch. ``batch_size`` is then the per-process batch.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

import grain.python as grain
import numpy as np

from bodyjax.data import sample as sample_lib
from bodyjax.data import tfds_builders


class RecordSource(Sequence):
    """A split of a tfds builder as a random-access sequence of decoded sample records.

    Implements the grain ``RandomAccessDataSource`` protocol (``__len__``, ``__getitem__``) and
    pickles (for grain worker processes).

    Attributes:
      name: ``'<builder name>/<config name>:<split>'``.
      keys: the fields returned (the record fields, plus metadata fields when asked for).
    """

    def __init__(self, tfds_source, dtypes: Mapping[str, Any], keys: Sequence[str], name: str = ""):
        self._source = tfds_source
        self._dtypes = {k: np.dtype(v) for k, v in dtypes.items()}
        self.keys = tuple(keys)
        self.name = name

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        index = int(index)
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"{self.name}: index {index} out of range [0, {len(self)})")
        return self._decode(self._source[index])

    def __getitems__(self, indices: Sequence[int]) -> list:
        """Several records at once (tfds reads them in one batched call)."""
        indices = [int(i) for i in indices]
        return [self._decode(r) for r in self._source.__getitems__(indices)]

    def _decode(self, example: Mapping[str, Any]) -> dict:
        out = {}
        for k in self.keys:
            if k == "image":
                out[k] = tfds_builders.decode_image(example[k])
            else:
                out[k] = np.array(example[k], self._dtypes[k])   # a writable copy
        return out

    def __repr__(self) -> str:
        return f"RecordSource({self.name!r}, {len(self)} records)"


def data_source(builder, split: str, with_metadata: bool = False) -> RecordSource:
    """The split ``split`` of a built builder as a :class:`RecordSource`.

    Args:
      builder: a prepared builder (e.g. from :func:`bodyjax.data.tfds_builders.build_synthetic`).
      split: ``'train'``, ``'test'``, ... (tfds split syntax such as ``'train[:100]'`` works too).
      with_metadata: also return the builder's metadata fields (``sample_index`` for the synthetic
        set, ``image_id`` / ``annotation_id`` for DensePose-COCO) as 0-d int64 arrays.

    Raises:
      ValueError: the builder has not been built yet.
    """
    if not tfds_builders.is_built(builder):
        raise ValueError(f"{builder.name}: no data in {builder.data_dir}; build it first "
                         "(build_synthetic / build_densepose_coco / download_and_prepare)")
    features = builder.info.features
    dtypes = {k: features[k].np_dtype for k in features.keys()}
    keys = [k for k in tfds_builders.RECORD_KEYS if k in dtypes]
    missing = [k for k in tfds_builders.RECORD_KEYS if k not in dtypes]
    if missing:
        raise ValueError(f"{builder.name}: features lack record fields {missing}")
    if with_metadata:
        keys += [k for k in dtypes if k not in tfds_builders.RECORD_KEYS]
    source = builder.as_data_source(split=split)
    return RecordSource(source, dtypes, keys, name=f"{builder.name}/{builder.builder_config.name}:{split}")


class ArraySource(Sequence):
    """Stacked in-memory records ``{key: (M, ...) array}`` as a random-access source of records.

    For small data (tests, tools) and for what a run computes itself; the data sets on disk are
    :class:`RecordSource`\ s.
    """

    def __init__(self, arrays: Mapping[str, np.ndarray], name: str = "arrays"):
        self.arrays = {k: np.asarray(v) for k, v in arrays.items()}
        lengths = {k: len(v) for k, v in self.arrays.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"{name}: fields have different lengths {lengths}")
        self.name = name

    def __len__(self) -> int:
        return len(next(iter(self.arrays.values())))

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        return {k: np.array(v[int(index)]) for k, v in self.arrays.items()}

    def __getitems__(self, indices: Sequence[int]) -> list:
        return [self[i] for i in indices]

    def __repr__(self) -> str:
        return f"ArraySource({self.name!r}, {len(self)} records)"


class JoinedSource(Sequence):
    """A source whose record ``i`` is ``source[i]`` plus the fields ``extra[k][i]``.

    The regressor's training records are the sample records joined with their targets θ_fit
    (``target_*`` fields, :func:`bodyjax.data.sample.params_to_record`) and ``target_weight``.
    """

    def __init__(self, source, extra: Mapping[str, np.ndarray]):
        self.source = source
        self.extra = {k: np.asarray(v) for k, v in extra.items()}
        for k, v in self.extra.items():
            if len(v) != len(source):
                raise ValueError(f"JoinedSource: field {k!r} has {len(v)} rows for {len(source)} records")

    def __len__(self) -> int:
        return len(self.source)

    def _join(self, record: dict, i: int) -> dict:
        record = dict(record)
        record.update({k: np.array(v[i]) for k, v in self.extra.items()})
        return record

    def __getitem__(self, index):
        return self._join(self.source[int(index)], int(index))

    def __getitems__(self, indices: Sequence[int]) -> list:
        indices = [int(i) for i in indices]
        records = (self.source.__getitems__(indices) if hasattr(self.source, "__getitems__")
                   else [self.source[i] for i in indices])
        return [self._join(r, i) for r, i in zip(records, indices)]


class ConcatSource(Sequence):
    """The records of several sources one after the other (records ``0 .. len(a) - 1`` are ``a``'s).

    Every source must give records with the same fields: the regressor's training images joined
    with their fits, then the rendered views of the fits (:mod:`bodyjax.data.fit_views`).
    """

    def __init__(self, *sources):
        self.sources = [s for s in sources if len(s)]
        if not self.sources:
            raise ValueError("ConcatSource: every source is empty")
        keys = [set(s[0]) for s in self.sources]
        if any(k != keys[0] for k in keys):
            raise ValueError(f"ConcatSource: the sources' records have different fields {keys}")
        self.offsets = np.cumsum([0] + [len(s) for s in self.sources])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def _locate(self, index: int) -> tuple[int, int]:
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"ConcatSource: index {index} out of range for {len(self)} records")
        which = int(np.searchsorted(self.offsets, index, side="right")) - 1
        return which, index - int(self.offsets[which])

    def __getitem__(self, index):
        which, i = self._locate(index)
        return self.sources[which][i]

    def __getitems__(self, indices: Sequence[int]) -> list:
        return [self[i] for i in indices]

    def __repr__(self) -> str:
        return f"ConcatSource({len(self)} records from {len(self.sources)} sources)"


# ---------------------------------------------------------------------------------------------
# Transforms


def _is_grain_transform(t) -> bool:
    return any(hasattr(t, m) for m in ("map", "random_map", "filter", "map_with_index"))


class CallableMap(grain.MapTransform):
    """A callable ``sample -> sample`` as a ``grain.python.MapTransform``."""

    def __init__(self, fn: Callable[[dict], dict]):
        self.fn = fn

    def map(self, element):
        return self.fn(element)

    def __repr__(self) -> str:
        return f"CallableMap({self.fn!r})"


def _wrap_transforms(transforms: Sequence[Any]) -> list:
    out = []
    for t in transforms:
        if _is_grain_transform(t):
            out.append(t)
        elif callable(t):
            out.append(CallableMap(t))
        else:
            raise TypeError(f"transform {t!r} is neither a grain transformation nor a callable")
    return out


def _apply_transforms(sample: dict, transforms: Sequence[Any], rng_key: tuple,
                      stream_index: int) -> Optional[dict]:
    """In-process application of :func:`iterate_batches` transforms (None = filtered out)."""
    for j, t in enumerate(transforms):
        if hasattr(t, "random_map"):
            sample = t.random_map(sample, np.random.default_rng(list(rng_key) + [j]))
        elif hasattr(t, "map"):
            sample = t.map(sample)
        elif hasattr(t, "filter"):
            if not t.filter(sample):
                return None
        elif hasattr(t, "map_with_index"):
            sample = t.map_with_index(stream_index, sample)
        elif callable(t):
            sample = t(sample)
        else:
            raise TypeError(f"transform {t!r} is neither a grain transformation nor a callable")
    return sample


# ---------------------------------------------------------------------------------------------
# Loaders


def _check_seed(seed: int) -> int:
    seed = int(seed)
    if seed < 0 or seed.bit_length() > 32:
        raise ValueError(f"seed must be a non-negative 32-bit integer, got {seed}")
    return seed


def _ensure_absl_flags_parsed() -> None:
    from absl import flags  # noqa: PLC0415

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def make_loader(source, batch_size: int, shuffle: bool = True, seed: int = 0,
                num_epochs: Optional[int] = 1, worker_count: int = 0, drop_remainder: bool = True,
                transforms: Sequence[Any] = (), shard_by_process: bool = False,
                worker_buffer_size: int = 1, read_threads: Optional[int] = None):
    """A grain ``DataLoader`` of batches (dicts of arrays with a leading ``batch_size`` axis).

    Args:
      source: random-access source of sample dicts (:func:`data_source`, a list, ...).
      batch_size: samples per batch (per process with ``shard_by_process``).
      shuffle: a new random permutation every epoch (deterministic from ``seed``).
      seed: non-negative 32-bit integer; decides the order and the random transforms.
      num_epochs: passes over the data; ``None`` = endless.
      worker_count: worker processes (0 = in this process). See the module docstring.
      drop_remainder: drop the last incomplete batch of the stream.
      transforms: per-sample transforms applied before batching (see the module docstring).
      shard_by_process: split the records among JAX processes (``grain.python.ShardByJaxProcess``).
      worker_buffer_size: batches prepared in advance per worker.
      read_threads: threads reading records from ``source`` in each process (grain's
        ``ReadOptions.num_threads``); ``None`` = grain's default (16, for remote storage); 0 reads
        in the loading thread, grain's advice for local or in-memory data (no GIL contention).

    Returns:
      ``grain.python.DataLoader``; iterate it for ``{key: (batch_size, ...) array}`` batches.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if len(source) == 0:
        raise ValueError("make_loader: the source is empty")
    seed = _check_seed(seed)
    if worker_count:
        _ensure_absl_flags_parsed()
    shard_options = (grain.ShardByJaxProcess(drop_remainder=True) if shard_by_process
                     else grain.NoSharding())
    sampler = grain.IndexSampler(num_records=len(source), shard_options=shard_options, shuffle=shuffle,
                                 num_epochs=num_epochs, seed=seed)
    read_options = None
    if read_threads is not None:
        if int(read_threads) < 0:
            raise ValueError(f"make_loader: read_threads must be >= 0 (or None), got {read_threads}")
        read_options = grain.ReadOptions(num_threads=int(read_threads),
                                         prefetch_buffer_size=max(int(batch_size), 16 * int(read_threads)))
    operations = _wrap_transforms(transforms) + [grain.Batch(batch_size=int(batch_size),
                                                             drop_remainder=drop_remainder)]
    return grain.DataLoader(data_source=source, sampler=sampler, operations=operations,
                            worker_count=int(worker_count), worker_buffer_size=int(worker_buffer_size),
                            shard_options=shard_options, read_options=read_options)


def epoch_order(num_records: int, shuffle: bool, seed: int, epoch: int) -> np.ndarray:
    """The record order of one epoch of :func:`iterate_batches` ``(num_records,)`` int64."""
    if not shuffle:
        return np.arange(num_records)
    return np.random.default_rng([_check_seed(seed), int(epoch)]).permutation(num_records)


def iterate_batches(source, batch_size: int, shuffle: bool = True, seed: int = 0,
                    num_epochs: Optional[int] = 1, drop_remainder: bool = True,
                    transforms: Sequence[Any] = ()) -> Iterator[dict]:
    """Batches of ``source`` in this process, epoch by epoch (a simple alternative to grain).

    Epoch ``e`` visits :func:`epoch_order` ``(n, shuffle, seed, e)``; batches never straddle two
    epochs; with ``drop_remainder`` the last ``n % batch_size`` samples of each epoch are skipped.
    Arguments as for :func:`make_loader` (``num_epochs=None``: endless).

    Yields:
      ``{key: (B, ...) array}`` batches, ``B = batch_size`` (the last one may be smaller without
      ``drop_remainder``).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n = len(source)
    if n == 0:
        raise ValueError("iterate_batches: the source is empty")
    seed = _check_seed(seed)
    epoch = 0
    while num_epochs is None or epoch < num_epochs:
        pending = []
        for pos, i in enumerate(epoch_order(n, shuffle, seed, epoch)):
            sample = source[int(i)]
            if transforms:
                sample = _apply_transforms(dict(sample), transforms, (seed, epoch, pos), epoch * n + pos)
                if sample is None:
                    continue
            pending.append(sample)
            if len(pending) == batch_size:
                yield sample_lib.stack(pending)
                pending = []
        if pending and not drop_remainder:
            yield sample_lib.stack(pending)
        epoch += 1


def to_arrays(source, indices: Optional[Sequence[int]] = None, chunk: int = 256,
              show_progress: bool = False) -> dict:
    """Stacks (a subset of) a source into one dict of arrays with a leading sample axis.

    Memory is allocated once (no list of samples is kept). Reads ``chunk`` records per call when
    the source supports batched reads (``__getitems__``).

    Args:
      source: random-access source of sample dicts.
      indices: records to take, in order (default: all).
      chunk: records per read.
      show_progress: tqdm bar.

    Returns:
      ``{key: (n, ...) array}`` with the dtypes of the records.
    """
    idx = np.arange(len(source)) if indices is None else np.asarray(indices, np.int64).reshape(-1)
    if idx.size == 0:
        raise ValueError("to_arrays: no records")
    batched = hasattr(source, "__getitems__")
    out = None
    starts = range(0, idx.size, chunk)
    if show_progress:
        import tqdm  # noqa: PLC0415

        starts = tqdm.tqdm(starts, desc="to_arrays", unit=" chunks")
    for lo in starts:
        part = [int(i) for i in idx[lo:lo + chunk]]
        samples = source.__getitems__(part) if batched else [source[i] for i in part]
        if out is None:
            first = {k: np.asarray(v) for k, v in samples[0].items()}
            out = {k: np.empty((idx.size,) + v.shape, v.dtype) for k, v in first.items()}
        for j, s in enumerate(samples):
            for k in out:
                out[k][lo + j] = s[k]
    return out
