"""The options of the synthetic data set: one frozen dataclass of plain values."""
from __future__ import annotations

import dataclasses

from bodyjax import body

#: The pose archetypes of :func:`~bodyjax.data.synthetic.poses.sample_pose`, in the order of
#: :attr:`SyntheticConfig.archetype_weights`.
ARCHETYPES = ("standing", "walking", "reaching", "sitting", "crouching", "bending")


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    """Options of the synthetic data set (plain values; a config system may build one from its own).

    Attributes:
      image_size: side of the square images, pixels.
      max_points: ``N_max`` of the record (padding length of the dense correspondences).
      num_points: ``(lo, hi)`` range of the number of dense correspondences drawn per image.
      keypoint_set: ``'coco17'`` or ``'joints24'``.
      archetype_weights: mixture weights of :data:`ARCHETYPES`, in that order.
      pose_noise: multiplier of the per-joint perturbation table :data:`POSE_NOISE`.
      scale_spread: std of the log segment scales (smoothed along the tree, symmetric part).
      global_scale_spread: std of a log scale shared by all segments (body size).
      scale_asymmetry: std of the independent (left/right asymmetric) part of the log scales.
      scale_clip: bounds of the segment scales.
      yaw_range: rotation about the vertical (y) axis, degrees.
      tilt: maximum tilt about the x and z axes, degrees.
      fill: range of the fraction of the image taken by the larger side of the projected body box.
      margin: minimum distance in pixels between the projected body and the image border.
      background: ``'mixed'`` (random choice), ``'noise'``, ``'gradient'``, ``'stripes'``,
        ``'checker'`` or ``'flat'``.
      clutter: maximum number of random shapes drawn on the background.
      part_color_weight: range of the weight of the fixed DensePose part colours in the body colour
        (the rest is a random per-sample clothing / skin palette).
      color_jitter: per-part random colour offset (std, in [0, 1] units).
      texture: amplitude of the per-vertex texture noise and stripes on the body.
      ambient: range of the ambient light level.
      pixel_noise: range of the std of the Gaussian pixel noise (0..255 units).
      blur_prob: probability of a 3×3 Gaussian blur of the final image.
      visibility_tolerance: depth tolerance of the vertex z-buffer test, metres.
    """

    image_size: int = 128
    max_points: int = 160
    num_points: tuple = (100, 160)
    keypoint_set: str = "coco17"
    archetype_weights: tuple = (0.22, 0.2, 0.2, 0.12, 0.1, 0.16)
    pose_noise: float = 1.0
    scale_spread: float = 0.05
    global_scale_spread: float = 0.04
    scale_asymmetry: float = 0.01
    scale_clip: tuple = (0.8, 1.25)
    yaw_range: tuple = (-180.0, 180.0)
    tilt: float = 15.0
    fill: tuple = (0.7, 0.92)
    margin: float = 2.0
    background: str = "mixed"
    clutter: int = 4
    part_color_weight: tuple = (0.15, 0.45)
    color_jitter: float = 0.06
    texture: float = 0.12
    ambient: tuple = (0.3, 0.55)
    pixel_noise: tuple = (0.0, 6.0)
    blur_prob: float = 0.3
    visibility_tolerance: float = 0.01

    def __post_init__(self):
        if len(self.archetype_weights) != len(ARCHETYPES):
            raise ValueError(f"archetype_weights needs {len(ARCHETYPES)} entries ({ARCHETYPES}), "
                             f"got {len(self.archetype_weights)}")
        if not 0 < self.num_points[0] <= self.num_points[1] <= self.max_points:
            raise ValueError(f"num_points {self.num_points} must satisfy 0 < lo <= hi <= max_points "
                             f"({self.max_points})")
        if self.keypoint_set not in body.KEYPOINT_SETS:
            raise ValueError(f"keypoint_set {self.keypoint_set!r} not in {body.KEYPOINT_SETS}")
