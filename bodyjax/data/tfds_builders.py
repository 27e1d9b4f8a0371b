"""tensorflow-datasets builders: the synthetic set and DensePose-COCO as cached ``array_record`` files.

Both builders write the sample record of :mod:`bodyjax.data.sample` (every field as a fixed-shape
``tfds.features.Tensor``) in the ``array_record`` format, which needs no TensorFlow to write or to
read: :func:`bodyjax.data.pipeline.data_source` (or ``builder.as_data_source()`` /
``tfds.data_source(...)``) gives random access, and grain batches it.

Images are stored RAW by default (``image_encoding='raw'``: a ``(H, W, 3)`` uint8 Tensor feature
with ``Encoding.BYTES``, like every array field). Measured on the development machine: reading a
whole 128 px record back takes ~0.35 ms, of which the raw image is a ~4 µs byte copy, whereas
decoding the same image from PNG with OpenCV adds ~0.3 ms (224 px: 10 µs vs 0.8 ms); PNG only saves
~35 % of the space on these noisy renderings (128 px: 31 kB vs 49 kB). ``image_encoding='png'``
(``cv2.imencode``, lossless, a bytes feature) is there for large real-image sets where disk matters
more than decoding time. ``tfds.features.Image`` is not used: it needs TensorFlow to encode.

Records are written in generation order (``disable_shuffling=True``): element ``i`` of a split is
the ``i``-th generated sample, so reading back is reproducible and comparable with the generator.
Shuffling is the loader's job (:func:`bodyjax.data.pipeline.make_loader`).

Synthetic set (:class:`SyntheticBodies`, built with :func:`build_synthetic`)
----------------------------------------------------------------------------
Split ``'train'`` is ``synthetic.generate(template, cfg, seed, train_size)`` (indices
``0 .. train_size - 1`` of the seed's stream); split ``'test'`` is
``synthetic.generate(template, cfg, seed, test_size, start=TEST_START)``: the same seed, indices
from :data:`TEST_START` = 2**32 on. Sample ``i`` of a seed only depends on ``(seed, i)``, so the
splits never overlap, whatever their sizes. Each record also has a ``sample_index`` (int64, the
stream index) metadata field.

The config name encodes every setting (image size, ``N_max``, keypoint set, split sizes, seed) and
ends with a digest of ALL of them: the full :class:`~bodyjax.data.synthetic.SyntheticConfig`, the
template's arrays, the image encoding, and the source code of the generator modules
(:data:`GENERATOR_MODULES`). Different settings or generator code therefore always land in a
different directory (``<data_dir>/synthetic_bodies/<config name>/<version>``): stale data is never
reused, and a second build with the same settings reuses the files without generating anything.
(The price of hashing the code: editing one of those modules, even a comment, regenerates on the
next build, ~1 min for a few thousand samples; old directories are left in place. Numerical
differences between JAX backends, CPU vs GPU forward passes, are not part of the digest.)

DensePose-COCO (:class:`DensePoseCoco`, built with :func:`build_densepose_coco`)
------------------------------------------------------------------------------
Reads the official release from ``manual_dir`` (see :data:`DENSEPOSE_MANUAL_INSTRUCTIONS`), turns
every kept person (:func:`bodyjax.data.densepose_coco.load_densepose_coco`) into a fixed-shape sample
cropped around the person box (:func:`~bodyjax.data.densepose_coco.make_sample`) and logs the
:class:`~bodyjax.data.densepose_coco.LoadReport` of each split; the reports are also saved in the
data set's metadata (``builder.info.metadata['load_reports']``). Metadata fields ``image_id`` and
``annotation_id`` (int64) travel with each record. Its config name digests the explicit settings
only (not the code: a full build reads ~50k people from the COCO images and is worth keeping across
edits); bump :attr:`DensePoseCoco.VERSION` when the conversion changes.

Typical use::

    builder = build_synthetic("/data/bodyjax", SyntheticConfig(image_size=64), 4096, 512, seed=0)
    train = pipeline.data_source(builder, "train")           # decoded sample dicts
    raw = tfds.data_source(f"synthetic_bodies/{builder.builder_config.name}",
                           data_dir="/data/bodyjax", download=False)   # tfds's own reader

    dp = build_densepose_coco("/data/bodyjax", "/data/densepose_manual", densepose_config(image_size=128))
    minival = pipeline.data_source(dp, "minival")
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import sys
from typing import Any, Mapping, Optional, Sequence

import cv2
import numpy as np
import tensorflow_datasets as tfds
import tqdm
from absl import logging

from bodyjax import body, skeletons
from bodyjax.data import densepose_coco
from bodyjax.data import sample as sample_lib
from bodyjax.data import synthetic
from bodyjax.data import transforms
from bodyjax.data.iuv import IUVIndex

FILE_FORMAT = "array_record"
IMAGE_ENCODINGS = ("raw", "png")
#: First stream index of the synthetic ``'test'`` split (the train split uses ``0 .. train_size-1``).
TEST_START = 1 << 32
#: Modules whose source code is part of the synthetic config digest (they decide the stored data).
GENERATOR_MODULES = ("bodyjax.data.synthetic", "bodyjax.data.synthetic.config",
                     "bodyjax.data.synthetic.poses", "bodyjax.data.synthetic.scene",
                     "bodyjax.data.synthetic.surface", "bodyjax.data.synthetic.appearance",
                     "bodyjax.data.synthetic.visibility", "bodyjax.data.synthetic.render",
                     "bodyjax.data.synthetic.dataset", "bodyjax.data.synthetic.rotations64",
                     "bodyjax.data.chunking", "bodyjax.render",
                     "bodyjax.body", "bodyjax.kinematics", "bodyjax.rotations", "bodyjax.linalg",
                     "bodyjax.data.sample", "bodyjax.data.tfds_builders")
#: Record fields (the sample record) vs metadata fields (dropped by the pipeline unless asked for).
RECORD_KEYS = tuple(sample_lib.sample_spec((1, 1), 1, 1))
SYNTHETIC_METADATA = {"sample_index": np.int64}
DENSEPOSE_METADATA = {"image_id": np.int64, "annotation_id": np.int64}


# ---------------------------------------------------------------------------------------------
# Features and encoding shared by both builders


def record_features(image_size, max_points: int, num_keypoints: int, image_encoding: str = "raw",
                    metadata: Optional[Mapping[str, Any]] = None) -> tfds.features.FeaturesDict:
    """The ``FeaturesDict`` of a sample record: one ``Tensor`` per field, exact shapes and dtypes.

    Args:
      image_size: ``(H, W)`` or ``H`` of the images.
      max_points, num_keypoints: ``N_max`` and ``K`` of the record.
      image_encoding: ``'raw'`` (``image`` is a ``(H, W, 3)`` uint8 Tensor) or ``'png'`` (``image``
        is a scalar bytes Tensor holding a PNG of the BGR image, as written by ``cv2.imencode``).
      metadata: extra scalar fields ``{name: numpy dtype}`` stored with each record.
    """
    _check_encoding(image_encoding)
    spec = sample_lib.sample_spec(transforms.size_hw(image_size), max_points, num_keypoints)
    # Arrays are stored as raw bytes (Encoding.BYTES): the default encoding widens every element to
    # an int64 / float protobuf list, which is ~17x slower to write, ~3x slower to read and ~45 %
    # larger for the record (measured, 128 px). Scalars keep the default encoding.
    feats = {k: tfds.features.Tensor(shape=shape, dtype=dtype,
                                     encoding=tfds.features.Encoding.BYTES if shape else
                                     tfds.features.Encoding.NONE)
             for k, (shape, dtype) in spec.items()}
    if image_encoding == "png":
        feats["image"] = tfds.features.Tensor(shape=(), dtype=np.object_)
    for k, dtype in (metadata or {}).items():
        feats[k] = tfds.features.Tensor(shape=(), dtype=dtype)
    return tfds.features.FeaturesDict(feats)


def encode_sample(sample: Mapping[str, np.ndarray], image_encoding: str = "raw",
                  metadata: Optional[Mapping[str, Any]] = None) -> dict:
    """A sample record as a builder example (the image PNG-encoded when ``image_encoding='png'``)."""
    out = {k: np.asarray(sample[k]) for k in RECORD_KEYS}
    if image_encoding == "png":
        ok, buf = cv2.imencode(".png", np.ascontiguousarray(out["image"][..., ::-1]))
        if not ok:
            raise ValueError("cv2.imencode failed to encode a PNG")
        out["image"] = buf.tobytes()
    for k, v in (metadata or {}).items():
        out[k] = v
    return out


def decode_image(value) -> np.ndarray:
    """A stored image (raw ``(H, W, 3)`` array or PNG bytes) as ``(H, W, 3)`` uint8 RGB."""
    if isinstance(value, (bytes, bytearray, memoryview)) or (
            isinstance(value, np.ndarray) and value.dtype == object):
        raw = bytes(value.item() if isinstance(value, np.ndarray) else value)
        image = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_COLOR)
        if image is None:
            raise ValueError("cannot decode a stored PNG image")
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return np.array(value, np.uint8)          # a writable copy (tfds returns read-only buffers)


def _check_encoding(image_encoding: str) -> None:
    if image_encoding not in IMAGE_ENCODINGS:
        raise ValueError(f"image_encoding must be one of {IMAGE_ENCODINGS}, got {image_encoding!r}")


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def template_fingerprint(template: body.BodyTemplate) -> str:
    """sha256 of every field of a template (array bytes, shapes and dtypes, static fields)."""
    h = hashlib.sha256()
    for field in dataclasses.fields(template):
        value = getattr(template, field.name)
        h.update(field.name.encode())
        if value is None:  # an absent optional field (an object array's bytes would be a pointer)
            h.update(b"None")
        elif isinstance(value, (tuple, str, int, float)):
            h.update(repr(value).encode())
        else:
            arr = np.ascontiguousarray(np.asarray(value))
            h.update(f"{arr.dtype.str}{arr.shape}".encode())
            h.update(arr.tobytes())
    return h.hexdigest()


def generator_code_fingerprint() -> str:
    """sha256 of the source files of :data:`GENERATOR_MODULES`."""
    import importlib  # noqa: PLC0415

    h = hashlib.sha256()
    for name in GENERATOR_MODULES:
        module = sys.modules.get(name) or importlib.import_module(name)
        with open(module.__file__, "rb") as f:
            h.update(name.encode())
            h.update(f.read())
    return h.hexdigest()


_DEFAULT_TEMPLATE_FINGERPRINT: Optional[str] = None


def _default_template_fingerprint() -> str:
    global _DEFAULT_TEMPLATE_FINGERPRINT
    if _DEFAULT_TEMPLATE_FINGERPRINT is None:
        _DEFAULT_TEMPLATE_FINGERPRINT = template_fingerprint(body.default_template())
    return _DEFAULT_TEMPLATE_FINGERPRINT


# ---------------------------------------------------------------------------------------------
# Synthetic bodies


@dataclasses.dataclass(eq=False, repr=False)
class SyntheticBodiesConfig(tfds.core.BuilderConfig):
    """Settings of one synthetic data set; make it with :func:`synthetic_config` (which names it).

    Attributes:
      synthetic: the :class:`~bodyjax.data.synthetic.SyntheticConfig` (image size, ``N_max``,
        keypoint set and all appearance options).
      train_size, test_size: samples in the ``'train'`` and ``'test'`` splits (``test_size = 0``:
        no test split).
      seed: the generator seed.
      image_encoding: ``'raw'`` or ``'png'`` (see the module docstring).
      template_fingerprint: :func:`template_fingerprint` of the body the samples are made from.
      code_fingerprint: :func:`generator_code_fingerprint` at the time the config was made.
    """

    synthetic: synthetic.SyntheticConfig = synthetic.SyntheticConfig()
    train_size: int = 4096
    test_size: int = 512
    seed: int = 0
    image_encoding: str = "raw"
    template_fingerprint: str = ""
    code_fingerprint: str = ""

    def __repr__(self) -> str:
        return f"SyntheticBodiesConfig(name={self.name!r})"

    def settings(self) -> dict:
        """Every setting that decides the data, as a JSON-able dict."""
        return {"synthetic": dataclasses.asdict(self.synthetic), "train_size": self.train_size,
                "test_size": self.test_size, "seed": self.seed, "image_encoding": self.image_encoding,
                "template": self.template_fingerprint, "code": self.code_fingerprint,
                "builder_version": str(SyntheticBodies.VERSION)}


def synthetic_config(cfg: synthetic.SyntheticConfig = synthetic.SyntheticConfig(), train_size: int = 4096,
                     test_size: int = 512, seed: int = 0, image_encoding: str = "raw",
                     template: Optional[body.BodyTemplate] = None) -> SyntheticBodiesConfig:
    """The named :class:`SyntheticBodiesConfig` of these settings.

    The name reads ``s{image_size}_p{max_points}_{keypoint_set}_n{train}-{test}_seed{seed}_{digest}``
    where ``digest`` (12 hex digits) covers every setting, the template and the generator code.

    Args:
      cfg: the synthetic-data options.
      train_size, test_size: split sizes (``train_size >= 1``, ``test_size >= 0``).
      seed: generator seed (``>= 0``).
      image_encoding: ``'raw'`` or ``'png'``.
      template: the body (default: :func:`bodyjax.body.default_template`); pass the same template
        to :class:`SyntheticBodies` when building.
    """
    _check_encoding(image_encoding)
    if int(train_size) < 1 or int(test_size) < 0:
        raise ValueError(f"need train_size >= 1 and test_size >= 0, got {train_size}, {test_size}")
    if int(seed) < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    config = SyntheticBodiesConfig(
        name="pending", synthetic=cfg, train_size=int(train_size), test_size=int(test_size),
        seed=int(seed), image_encoding=image_encoding,
        template_fingerprint=(_default_template_fingerprint() if template is None
                              else template_fingerprint(template)),
        code_fingerprint=generator_code_fingerprint())
    settings = config.settings()
    config.name = (f"s{cfg.image_size}_p{cfg.max_points}_{cfg.keypoint_set}_n{config.train_size}-"
                   f"{config.test_size}_seed{config.seed}_{_digest(settings)[:12]}")
    config.description = "synthetic bodies: " + json.dumps(settings, sort_keys=True, default=str)
    return config


class SyntheticBodies(tfds.core.GeneratorBasedBuilder):
    """The synthetic data set (:mod:`bodyjax.data.synthetic`) as a tfds builder (``array_record``).

    Construct with a config from :func:`synthetic_config` (without one: the default settings),
    e.g. ``SyntheticBodies(data_dir=d, config=synthetic_config(cfg, 1000, 100))``, then
    ``download_and_prepare()``; or simply call :func:`build_synthetic`.

    Args:
      template: the body the samples are made from (default: the default template); must match the
        config's ``template_fingerprint`` when generating.
      show_progress: tqdm progress bar per split while generating.
      file_format, data_dir, config, version: as for ``tfds.core.GeneratorBasedBuilder``.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Sample record of bodyjax.data.sample; raw or PNG images."}
    # Nothing is downloaded, so no checksums file. (Also avoids tfds's code-path lookup, which
    # imports the `importlib_resources` backport on Python >= 3.9 where it is not installed.)
    code_path = None

    def __init__(self, *, template: Optional[body.BodyTemplate] = None, show_progress: bool = True,
                 file_format: str = FILE_FORMAT, **kwargs):
        self._template = template
        self._show_progress = show_progress
        if kwargs.get("config") is None:
            kwargs["config"] = synthetic_config(template=template)
        super().__init__(file_format=file_format, **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        c = self.builder_config
        num_kp = skeletons.get_keypoint_set(c.synthetic.keypoint_set).num_keypoints
        return tfds.core.DatasetInfo(
            builder=self,
            description=("Synthetic posed and rendered bodies with dense correspondences, keypoints "
                         "and ground truth (bodyjax.data.synthetic)."),
            features=record_features(c.synthetic.image_size, c.synthetic.max_points, num_kp,
                                     c.image_encoding, SYNTHETIC_METADATA),
            disable_shuffling=True,
            metadata=tfds.core.MetadataDict(settings=c.settings()),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download
        c = self.builder_config
        template = body.default_template() if self._template is None else self._template
        if template_fingerprint(template) != c.template_fingerprint:
            raise ValueError(f"SyntheticBodies: the template does not match config {c.name!r} "
                             "(make the config with synthetic_config(..., template=the same template))")
        splits = {"train": self._generate_examples(template, "train", 0, c.train_size)}
        if c.test_size:
            splits["test"] = self._generate_examples(template, "test", TEST_START, c.test_size)
        return splits

    def _generate_examples(self, template, split: str, start: int, num_samples: int):
        c = self.builder_config
        samples = synthetic.generate(template, c.synthetic, c.seed, num_samples, start=start)
        bar = tqdm.tqdm(samples, total=num_samples, desc=f"synthetic_bodies {split}", unit=" samples",
                        disable=not self._show_progress)
        for i, sample in enumerate(bar):
            yield i, encode_sample(sample, c.image_encoding, {"sample_index": start + i})


def build_synthetic(data_dir, cfg: synthetic.SyntheticConfig = synthetic.SyntheticConfig(),
                    train_size: int = 4096, test_size: int = 512, seed: int = 0,
                    image_encoding: str = "raw", template: Optional[body.BodyTemplate] = None,
                    show_progress: bool = True) -> SyntheticBodies:
    """Generates the synthetic set once and caches it under ``data_dir``; returns the built builder.

    A later call with the same settings (and the same generator code) only opens the existing
    files; any different setting gives a different config name, hence a fresh directory
    ``<data_dir>/synthetic_bodies/<name>/1.0.0``. Generation is single-process (~100–200 samples/s
    at 64–128 px), with a tqdm bar per split.

    Args:
      data_dir: root folder of the tfds data sets.
      cfg, train_size, test_size, seed, image_encoding, template: see :func:`synthetic_config`.
      show_progress: show the progress bars.

    Returns:
      the :class:`SyntheticBodies` builder, prepared (read it with
      :func:`bodyjax.data.pipeline.data_source`).
    """
    config = synthetic_config(cfg, train_size, test_size, seed, image_encoding, template)
    builder = SyntheticBodies(data_dir=os.path.expanduser(os.fspath(data_dir)), config=config,
                              template=template, show_progress=show_progress)
    if is_built(builder):
        logging.info("synthetic_bodies: reusing %s", builder.data_dir)
    else:
        size = record_bytes(builder.info.features)
        if image_encoding == "png":
            size += int(np.prod(transforms.size_hw(cfg.image_size))) * 3
        for split, n in (("train_size", train_size), ("test_size", test_size)):
            check_split_memory("build_synthetic", n, size, split)
        _prepare_quietly(builder)
    return builder


def is_built(builder) -> bool:
    """Whether the builder's version directory holds a finished data set.

    tfds writes into a temporary ``incomplete.*`` directory and renames it when done, so a
    ``dataset_info.json`` in the final directory means a complete build.
    """
    return os.path.isfile(os.path.join(os.fspath(builder.data_dir), "dataset_info.json"))


def _prepare_quietly(builder, download_config=None) -> None:
    """``download_and_prepare`` with tfds's own progress bars off (ours have totals), each split
    written from memory (:func:`splits_in_memory`)."""
    from tensorflow_datasets.core.utils import tqdm_utils  # noqa: PLC0415

    was_active = getattr(tqdm_utils, "_active", True)
    tfds.display_progress_bar(False)
    try:
        with splits_in_memory():
            builder.download_and_prepare(download_config=download_config)
    finally:
        tfds.display_progress_bar(was_active)


@contextlib.contextmanager
def splits_in_memory():
    """Lets tfds write a split of any size without TensorFlow, by holding it in memory.

    tfds's writer gathers a split's serialized records in memory and, past 1 GB
    (``tensorflow_datasets.core.shuffle.MAX_MEM_BUFFER_SIZE``), moves them to temporary files
    through ``tf.io.gfile``, that is through TensorFlow, which bodyjax does not install: a split
    above ~37,000 synthetic records at 64 px failed with ``No module named 'tensorflow'`` after
    generating them. Without TensorFlow this lifts the bound while the block runs (a split then
    needs its own size in memory: :func:`build_synthetic` checks that beforehand with
    :func:`check_split_memory`; DensePose-COCO's split sizes are known only once its annotations
    are read); with TensorFlow installed it changes nothing.
    """
    import importlib.util  # noqa: PLC0415

    from tensorflow_datasets.core import shuffle  # noqa: PLC0415

    if importlib.util.find_spec("tensorflow") is not None:
        yield
        return
    if not hasattr(shuffle, "MAX_MEM_BUFFER_SIZE"):
        raise RuntimeError("tensorflow_datasets.core.shuffle.MAX_MEM_BUFFER_SIZE is gone in tfds "
                           f"{tfds.__version__}: bodyjax.data.tfds_builders.splits_in_memory needs updating")
    bound = shuffle.MAX_MEM_BUFFER_SIZE
    shuffle.MAX_MEM_BUFFER_SIZE = sys.maxsize
    try:
        yield
    finally:
        shuffle.MAX_MEM_BUFFER_SIZE = bound


def available_memory() -> Optional[int]:
    """Bytes of memory available to a new allocation (``MemAvailable`` of ``/proc/meminfo``), or
    ``None`` where that is not known."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_split_memory(name: str, num_records: int, record_bytes: int, what: str) -> None:
    """Raises ``ValueError`` (naming ``what``, e.g. ``'train_size'``) when a split of ``num_records``
    records of ``record_bytes`` each would not fit in the available memory while it is written
    (:func:`splits_in_memory`); nothing when the available memory is unknown."""
    need = int(num_records) * int(record_bytes)
    free = available_memory()
    if free is not None and need > 0.8 * free:
        raise ValueError(
            f"{name}: {what}={num_records} records of ~{record_bytes / 1e3:.0f} kB need ~{need / 1e9:.1f} GB "
            f"of memory while the split is written (tfds writes to disk past 1 GB only through TensorFlow), "
            f"and {free / 1e9:.1f} GB are available: build fewer records, or install tensorflow")


def record_bytes(features: tfds.features.FeaturesDict) -> int:
    """Bytes of one record's arrays (an upper bound of a raw record's serialized payload; a PNG
    image field counts nothing here)."""
    total = 0
    for feature in features.values():
        shape, dtype = feature.shape, np.dtype(feature.np_dtype)
        if dtype != np.object_ and all(d is not None for d in shape):
            total += int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    return total


# ---------------------------------------------------------------------------------------------
# DensePose-COCO

#: split -> (annotation file, image folder), both relative to ``manual_dir``.
DENSEPOSE_FILES = {
    "train": ("densepose_coco_2014_train.json", "train2014"),
    "valminusminival": ("densepose_coco_2014_valminusminival.json", "val2014"),
    "minival": ("densepose_coco_2014_minival.json", "val2014"),
}

DENSEPOSE_MANUAL_INSTRUCTIONS = """\
Put the DensePose-COCO annotations and the COCO 2014 images in `manual_dir`:

    manual_dir/
      densepose_coco_2014_train.json            (split 'train')
      densepose_coco_2014_valminusminival.json  (split 'valminusminival', optional)
      densepose_coco_2014_minival.json          (split 'minival')
      train2014/COCO_train2014_000000000036.jpg ...   (images named by `file_name` in the JSON)
      val2014/COCO_val2014_000000000136.jpg ...

The JSONs come with the DensePose release, the images from the COCO 2014 train/val archives.
Only the splits named in the config's `splits` are read (default: 'train' and 'minival').
"""


@dataclasses.dataclass(eq=False, repr=False)
class DensePoseCocoConfig(tfds.core.BuilderConfig):
    """Settings of the DensePose-COCO samples; make it with :func:`densepose_config`.

    Attributes:
      image_size: ``(H, W)`` of the person crops.
      max_points: ``N_max`` (more points: deterministic strided subset).
      crop_context: the person box is enlarged this many times before cropping.
      box_frame: divisor of ``dp_x`` / ``dp_y`` (255 or 256, see :mod:`bodyjax.data.densepose_coco`).
      min_points, min_keypoints: annotations with fewer are skipped.
      splits: which of :data:`DENSEPOSE_FILES` to build.
      image_encoding: ``'raw'`` or ``'png'``.
      skip_missing_images: skip (and count) people whose image file is missing instead of raising.
      body: label of the body whose IUV index maps points to vertices (``'default_template'``, or
        your own label when passing ``index`` to :class:`DensePoseCoco`).
    """

    image_size: tuple = (224, 224)
    max_points: int = 200
    crop_context: float = 1.2
    box_frame: float = 255.0
    min_points: int = 1
    min_keypoints: int = 0
    splits: tuple = ("train", "minival")
    image_encoding: str = "raw"
    skip_missing_images: bool = False
    body: str = "default_template"

    def __repr__(self) -> str:
        return f"DensePoseCocoConfig(name={self.name!r})"

    def settings(self) -> dict:
        """Every setting that decides the data, as a JSON-able dict."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(DensePoseCocoConfig)
                if f.name not in {g.name for g in dataclasses.fields(tfds.core.BuilderConfig)}}


def densepose_config(image_size=224, max_points: int = 200, crop_context: float = 1.2,
                     box_frame: float = 255.0, min_points: int = 1, min_keypoints: int = 0,
                     splits: Sequence[str] = ("train", "minival"), image_encoding: str = "raw",
                     skip_missing_images: bool = False, body_label: str = "default_template"
                     ) -> DensePoseCocoConfig:
    """The named :class:`DensePoseCocoConfig` (name: ``s{H}x{W}_p{N_max}_{splits}_{digest}``)."""
    _check_encoding(image_encoding)
    splits = tuple(splits)
    unknown = [s for s in splits if s not in DENSEPOSE_FILES]
    if unknown or not splits:
        raise ValueError(f"splits must be a non-empty subset of {tuple(DENSEPOSE_FILES)}, got {splits}")
    h, w = transforms.size_hw(image_size)
    config = DensePoseCocoConfig(
        name="pending", image_size=(h, w), max_points=int(max_points), crop_context=float(crop_context),
        box_frame=float(box_frame), min_points=int(min_points), min_keypoints=int(min_keypoints),
        splits=splits, image_encoding=image_encoding, skip_missing_images=bool(skip_missing_images),
        body=body_label)
    settings = config.settings()
    config.name = f"s{h}x{w}_p{max_points}_{'-'.join(splits)}_{_digest(settings)[:12]}"
    config.description = "DensePose-COCO samples: " + json.dumps(settings, sort_keys=True, default=str)
    return config


class DensePoseCoco(tfds.core.GeneratorBasedBuilder):
    """DensePose-COCO people as fixed-shape sample records, read from ``manual_dir``.

    See :data:`DENSEPOSE_MANUAL_INSTRUCTIONS` for the layout, or use :func:`build_densepose_coco`.

    Args:
      index: the :class:`~bodyjax.data.iuv.IUVIndex` mapping (I, U, V) to vertices (default: from
        the default template); give the config a matching ``body`` label when passing one.
      show_progress: tqdm progress bar per split.
      file_format, data_dir, config, version: as for ``tfds.core.GeneratorBasedBuilder``.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Person crops of DensePose-COCO 2014 in the bodyjax sample record."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = DENSEPOSE_MANUAL_INSTRUCTIONS
    code_path = None  # see SyntheticBodies.code_path

    def __init__(self, *, index: Optional[IUVIndex] = None, show_progress: bool = True,
                 file_format: str = FILE_FORMAT, **kwargs):
        self._index = index
        self._show_progress = show_progress
        self.load_reports: dict = {}
        if kwargs.get("config") is None:
            kwargs["config"] = densepose_config()
        super().__init__(file_format=file_format, **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        c = self.builder_config
        return tfds.core.DatasetInfo(
            builder=self,
            description="DensePose-COCO 2014 people cropped to fixed-size samples (bodyjax).",
            features=record_features(c.image_size, c.max_points, densepose_coco.NUM_COCO_KEYPOINTS,
                                     c.image_encoding, DENSEPOSE_METADATA),
            disable_shuffling=True,
            metadata=tfds.core.MetadataDict(settings=c.settings()),
            homepage="http://densepose.org",
        )

    def _split_generators(self, dl_manager):
        c = self.builder_config
        try:
            manual_dir = os.fspath(dl_manager.manual_dir)
        except AssertionError as e:     # tfds: manual_dir missing or empty
            json_name = DENSEPOSE_FILES[c.splits[0]][0]
            raise FileNotFoundError(f"DensePose-COCO: annotation file {json_name} not found: {e}") from e
        paths = {}
        for split in c.splits:
            json_name, image_dir = DENSEPOSE_FILES[split]
            json_path = os.path.join(manual_dir, json_name)
            if not os.path.isfile(json_path):
                raise FileNotFoundError(
                    f"DensePose-COCO split {split!r}: annotation file {json_name} not found in "
                    f"manual_dir {manual_dir!r} (looked for {json_path}).\n{DENSEPOSE_MANUAL_INSTRUCTIONS}")
            image_path = os.path.join(manual_dir, image_dir)
            if not os.path.isdir(image_path):
                raise FileNotFoundError(
                    f"DensePose-COCO split {split!r}: image folder {image_dir}/ not found in manual_dir "
                    f"{manual_dir!r} (looked for {image_path}).\n{DENSEPOSE_MANUAL_INSTRUCTIONS}")
            paths[split] = (json_path, image_path)
        index = self._index
        if index is None:
            index = IUVIndex.from_template(body.default_template())
        return {split: self._generate_examples(split, json_path, image_path, index)
                for split, (json_path, image_path) in paths.items()}

    def _generate_examples(self, split: str, json_path: str, image_dir: str, index: IUVIndex):
        c = self.builder_config
        records, report = densepose_coco.load_densepose_coco(
            json_path, image_dir, index, image_size=c.image_size, max_points=c.max_points,
            box_frame=c.box_frame, min_points=c.min_points, min_keypoints=c.min_keypoints)
        logging.info("DensePose-COCO %s: %s", split, report)
        missing = 0
        bar = tqdm.tqdm(records, desc=f"densepose_coco {split}", unit=" people",
                        disable=not self._show_progress)
        bar.set_postfix(annotations=report.total, kept=report.kept, skipped=report.num_skipped)
        key = 0
        for record in bar:
            try:
                sample = densepose_coco.load_sample(record, c.image_size, c.max_points, c.crop_context)
            except FileNotFoundError:
                if not c.skip_missing_images:
                    raise
                missing += 1
                continue
            meta = {"image_id": record["image_id"], "annotation_id": record["annotation_id"]}
            yield key, encode_sample(sample, c.image_encoding, meta)
            key += 1
        entry = report.as_dict()
        entry["missing_images"] = missing
        entry["written"] = key
        if missing:
            logging.warning("DensePose-COCO %s: skipped %d people whose image file is missing",
                            split, missing)
        self.load_reports[split] = entry
        reports = dict(self.info.metadata.get("load_reports", {}))
        reports[split] = entry
        self.info.metadata["load_reports"] = reports


def build_densepose_coco(data_dir, manual_dir, config: Optional[DensePoseCocoConfig] = None,
                         index: Optional[IUVIndex] = None, show_progress: bool = True) -> DensePoseCoco:
    """Builds (once; cached like :func:`build_synthetic`) the DensePose-COCO samples.

    Args:
      data_dir: root folder of the tfds data sets.
      manual_dir: folder with the release files (:data:`DENSEPOSE_MANUAL_INSTRUCTIONS`).
      config: from :func:`densepose_config` (default: its defaults).
      index: optional :class:`~bodyjax.data.iuv.IUVIndex` (see :class:`DensePoseCoco`).

    Raises:
      FileNotFoundError: ``manual_dir`` lacks an annotation file or image folder of a configured
        split (the message names it).
    """
    config = densepose_config() if config is None else config
    builder = DensePoseCoco(data_dir=os.path.expanduser(os.fspath(data_dir)), config=config, index=index,
                            show_progress=show_progress)
    if is_built(builder):
        logging.info("densepose_coco: reusing %s", builder.data_dir)
        return builder
    manual_dir = os.path.expanduser(os.fspath(manual_dir))
    if not os.path.isdir(manual_dir):
        raise FileNotFoundError(f"DensePose-COCO manual_dir not found: {manual_dir}\n"
                                f"{DENSEPOSE_MANUAL_INSTRUCTIONS}")
    _prepare_quietly(builder, tfds.download.DownloadConfig(manual_dir=manual_dir))
    return builder
