"""The embedded synthetic data set: the default template posed, rendered and annotated.

Every sample is a person made from the default template (or any :class:`~bodyjax.body.BodyTemplate`):

* a pose drawn from a mixture of archetypes with per-joint perturbations inside the joint-limit table
  :data:`JOINT_LIMITS`, and segment scales ``1 ± a few %`` (:mod:`.poses`);
* a global rotation (a full turn about the vertical axis and a tilt of up to ±15°) and a
  weak-perspective camera fitted so that the whole projected body lies inside the frame
  (:mod:`.scene`);
* a z-buffered, shaded, textured RGB rendering on a random textured background (:mod:`.surface`,
  :mod:`.appearance`);
* per-pixel part and (U, V) labels, DensePose-like dense correspondences, and keypoints with
  occlusion-aware visibility (:mod:`.render`, :mod:`.visibility`).

Samples follow the record of :mod:`bodyjax.data.sample`. ``keypoints`` holds the projections of all
``K`` keypoints, hidden ones included (``keypoint_visible`` = 0 for them). The ground truth is the
exact parameter set that was rendered: ``gt_pose[0] = 0`` (the root orientation is in
``gt_rotation``, orthonormal with det +1), ``gt_joints3d`` is ``R · joints`` minus the pelvis, metres.
Sample ``i`` of seed ``s`` depends only on ``(s, i)`` (its generator is
``np.random.default_rng([s, i])``), so it is the same whatever the start, order or number of workers
(:mod:`.dataset`).

:func:`pose_corpus` draws the same people without rendering them: a 2D keypoint corpus for the
lifter, on a random stream of its own (:mod:`.corpus`).

Modules, each one step:

==============  ===================================================================================
config          :class:`SyntheticConfig`, the options
poses           joint limits, pose archetypes, :func:`sample_pose`, segment scales
scene           global rotation, forward passes, the camera that frames a person, :func:`sample_params`
surface         the z-buffer and the surface seen at every pixel (face, vertex, part, U, V)
appearance      palette, texture, shading, :func:`make_background`
visibility      z-buffer visibility of vertices (:func:`vertex_visible`) and keypoints
render          one person into the record (:func:`render_sample`)
dataset         the indexed stream of samples (:func:`generate`, :func:`make_split`)
corpus          the 2D keypoint corpus (:func:`pose_corpus`)
rotations64     :mod:`bodyjax.rotations` on the host in float64, for the samplers
==============  ===================================================================================

Typical use::

    template = body.default_template()
    cfg = SyntheticConfig()
    batch = make_split(template, cfg, seed=0, num_samples=256)      # stacked dict
    for sample in generate(template, cfg, seed=1, num_samples=10):    # one dict at a time
        ...
"""
from bodyjax.data.synthetic.appearance import make_background
from bodyjax.data.synthetic.config import ARCHETYPES, SyntheticConfig
from bodyjax.data.synthetic.corpus import CORPUS_STREAM, corpus_rng, labelled_keypoints, pose_corpus
from bodyjax.data.synthetic.dataset import generate, make_split
from bodyjax.data.synthetic.poses import (JOINT_LIMITS, POSE_NOISE, hinge_angles, sample_pose,
                                          sample_segment_scales)
from bodyjax.data.synthetic.render import render_sample
from bodyjax.data.synthetic.scene import sample_params
from bodyjax.data.synthetic.visibility import (JOINT_DEPTH_RADIUS, JOINT_PARTS, keypoint_visibility,
                                               vertex_visible)

__all__ = [
    "ARCHETYPES", "CORPUS_STREAM", "JOINT_DEPTH_RADIUS", "JOINT_LIMITS", "JOINT_PARTS", "POSE_NOISE",
    "SyntheticConfig", "corpus_rng", "generate", "hinge_angles", "keypoint_visibility",
    "labelled_keypoints", "make_background", "make_split", "pose_corpus", "render_sample",
    "sample_params", "sample_pose", "sample_segment_scales", "vertex_visible",
]
