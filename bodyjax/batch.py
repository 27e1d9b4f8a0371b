"""The batch: one documented pytree for the registration, the lifter, the regressor and evaluation.

A :class:`Batch` holds ``B`` people. Its required fields are the 2D annotations every algorithm
reads (dense correspondences and keypoints); the optional ones are ``None`` when absent, which jit
treats as a different (static) structure, so a batch without images or targets traces without them.

=====================  ==================  =======  ==========================================================
field                  shape               dtype    meaning
=====================  ==================  =======  ==========================================================
dense_xy               (B, N, 2)           float    image points of the dense correspondences, pixels
dense_vertex           (B, N)              int      body vertex matched to each image point
dense_mask             (B, N)              float    1 for a real correspondence, 0 for padding
keypoints              (B, K, 2)           float    2D keypoints, pixels
keypoint_visible       (B, K)              float    1 if annotated (and visible), else 0
image                  (B, H, W, 3)        uint8    RGB image (the regressor's input)
iuv                    (B, H, W, 3)        uint8    per-pixel labels: part 0..24 (0 background,
                                                    UNLABELLED = 255: no label), round(UV_SCALE·U),
                                                    round(UV_SCALE·V) (255: no chart label); the part /
                                                    IUV predictor's targets and the oracle maps
gt                     BodyParams (B,)     float    ground-truth θ, pixels: EVALUATION ONLY
gt_joints3d            (B, 24, 3)          float    ground-truth camera-frame joints, metres, root-relative
has_gt                 (B,)                float    1 where ``gt``/``gt_joints3d`` are known
target                 BodyParams (B,)     float    θ_fit, pixels: the regressor's regression target (eq. 14)
target_weight          (B,)                float    weight of the regression term (0 = no target)
keypoint_depth         (B, K)              float    the lifter's root-relative depths z^GAN, pixels (eq. 9)
keypoint_depth_mask    (B, K)              float    which depths count
target_keypoints3d     (B, K, 3)           float    3D keypoints of the fits, pixel units ``(x, y, s·z)``:
                                                    the lifter's eq. 5 targets
target_keypoints3d_mask (B,)               float    1 where ``target_keypoints3d`` is valid
=====================  ==================  =======  ==========================================================

Pixels follow OpenCV (pixel centres at integers, x right, y down). The sample record of
:mod:`bodyjax.data.sample` (one flat dict per person, as stored on disk) becomes a batch with
:func:`bodyjax.data.sample.to_batch`; the ground truth never reaches a training loss.
"""
from __future__ import annotations

from typing import Optional

import flax.struct
import jax.numpy as jnp

from bodyjax import checks
from bodyjax.body import BodyParams, check_params

Array = jnp.ndarray

#: Value of an ``iuv`` channel without a label (the part, or the U, V pair).
UNLABELLED = 255
#: Scale of the stored U and V: ``round(UV_SCALE · u)`` for ``u`` in [0, 1].
UV_SCALE = 254


@flax.struct.dataclass
class Batch:
    """A batch of people (see the module docstring for every field)."""

    dense_xy: Array
    dense_vertex: Array
    dense_mask: Array
    keypoints: Array
    keypoint_visible: Array
    image: Optional[Array] = None
    iuv: Optional[Array] = None
    gt: Optional[BodyParams] = None
    gt_joints3d: Optional[Array] = None
    has_gt: Optional[Array] = None
    target: Optional[BodyParams] = None
    target_weight: Optional[Array] = None
    keypoint_depth: Optional[Array] = None
    keypoint_depth_mask: Optional[Array] = None
    target_keypoints3d: Optional[Array] = None
    target_keypoints3d_mask: Optional[Array] = None

    @property
    def size(self) -> int:
        """``B``, the number of people."""
        return self.dense_xy.shape[0]

    def check(self, where: str = "batch", num_keypoints: Optional[int] = None,
              require: tuple = ()) -> "Batch":
        """Checks every present field's shape and dtype; returns the batch unchanged.

        Args:
          where: the caller, for the message (e.g. ``"register"``).
          num_keypoints: expected ``K`` (the body's keypoint count), or ``None``.
          require: optional fields that must be present (e.g. ``("image", "target")``).

        Raises:
          ValueError: naming the field, the shape found and the one expected, or a missing field.
        """
        if not isinstance(self.dense_xy, (jnp.ndarray,)) and not hasattr(self.dense_xy, "shape"):
            raise ValueError(f"{where}: batch.dense_xy must be an array, got {type(self.dense_xy).__name__}")
        s = checks.Shapes(where, **({} if num_keypoints is None else {"K": num_keypoints}))
        s.check("batch.dense_xy", self.dense_xy, ("B", "N", 2), "float")
        s.check("batch.dense_vertex", self.dense_vertex, ("B", "N"), "int")
        s.check("batch.dense_mask", self.dense_mask, ("B", "N"))
        s.check("batch.keypoints", self.keypoints, ("B", "K", 2), "float")
        s.check("batch.keypoint_visible", self.keypoint_visible, ("B", "K"))
        for name in require:
            if getattr(self, name) is None:
                raise ValueError(f"{where}: batch.{name} is required but missing (None)")
        if self.image is not None:
            s.check("batch.image", self.image, ("B", "H", "W", 3))
        if self.iuv is not None:
            s.check("batch.iuv", self.iuv, ("B", "H", "W", 3), "uint8")
        for name in ("gt", "target"):
            params = getattr(self, name)
            if params is not None:
                check_params(params, f"{where}: batch.{name}", batch_shape=(s.dims["B"],))
        if self.gt_joints3d is not None:
            s.check("batch.gt_joints3d", self.gt_joints3d, ("B", "J", 3), "float")
        for name in ("has_gt", "target_weight", "target_keypoints3d_mask"):
            if getattr(self, name) is not None:
                s.check(f"batch.{name}", getattr(self, name), ("B",))
        for name in ("keypoint_depth", "keypoint_depth_mask"):
            if getattr(self, name) is not None:
                s.check(f"batch.{name}", getattr(self, name), ("B", "K"))
        if self.target_keypoints3d is not None:
            s.check("batch.target_keypoints3d", self.target_keypoints3d, ("B", "K", 3), "float")
        return self

    def take(self, index) -> "Batch":
        """The people ``index`` (an int array or slice) of every present field."""
        import jax  # noqa: PLC0415

        return jax.tree_util.tree_map(lambda a: a[index], self)

    def without(self, *names: str) -> "Batch":
        """The batch with the named optional fields set to ``None``."""
        return self.replace(**{n: None for n in names})
