"""Multi-view cGAN lifter: 2D keypoints -> keypoint depths (appendix section 2, eq. 1-6, Fig. 2).

A generator ``G`` maps the 2D keypoints ``u`` of one person to the depth of every keypoint. The
lifted 3D pose ``(u_x, u_y, z)`` is rotated about the vertical axis by each angle ``phi`` of a fixed
list, projected orthographically and renormalised; a discriminator ``D`` tells these projections
(*fake*) from the data's 2D poses (*real*). Geometric losses (bone ratios, eq. 3; left/right
symmetry, eq. 4) and, from the second deform-and-learn round on, a joint loss to the registration's
3D joints (eq. 5) complete the generator loss (eq. 6).

Decisions (the paper leaves them open):

* **Normalisation.** See :mod:`bodyjax.lifter.views`.
* **Adversarial loss.** Eq. 1 as written (minimise ``log(1 - D(fake))``) saturates when ``D`` wins
  early; by default the generator minimises the non-saturating ``-log D(fake)`` instead, which has
  the same fixed point and much stronger early gradients. ``adversarial_loss='minimax'`` selects the
  literal eq. 1. ``D`` minimises the standard cross entropy ``-log D(real) - log(1 - D(fake))``
  (eq. 2 completed with its fake term), real = the batch's 2D poses, fake = each example rotated
  by each angle (the two terms are averaged separately, so real and fake carry equal weight).
* **Joint weight schedule.** ``mu`` decays GEOMETRICALLY from 100 to 1 over training
  (:func:`joint_weight_schedule`): the weight spans two orders of magnitude, and a geometric decay
  spends equal time per decade, whereas a linear one would keep ``mu >= 50`` for half the training.
* **Networks.** See :mod:`bodyjax.lifter.networks`.
* **Loss reductions.** Eq. 3 and eq. 4 are sums over the (visible) bones/pairs of one skeleton,
  averaged over the batch. Eq. 5 is implemented as the per-sample MEAN over visible joints of
  ``|p_i - p̄_i|^2`` (the text calls it an MSE), averaged over the samples that have 3D targets.
  Only the depth component of eq. 5 carries gradient: the lifted ``x, y`` are the input's.

Known limitation (of the objective, not of this implementation): eq. 1-4 cannot tell a lifted pose
``P`` from its depth mirror ``M_z P`` (z -> -z). ``R_y(phi) M_z = M_z R_y(-phi)`` and the projection
drops z, so rotating ``M_z P`` by ``phi`` and projecting gives EXACTLY the projection of ``P`` rotated
by ``-phi``: every view the discriminator sees is a real view of the true pose, whatever the angle
set (it need not be symmetric under ``phi -> -phi``) and whatever anatomical cue (knee or elbow
direction) the views show; bone lengths are mirror invariant too. Without 3D targets (round 1) the
depth sign is therefore a coin flip per example (measured with ``tools/eval_lifter.py``: about half
the test poses come out mirrored, so the round-1 error is no better than flat depths while the error
up to sign is much lower); the joint loss of later rounds (eq. 5) resolves it. Anatomy breaks the
symmetry only in 3D: the knee-direction prior :func:`bodyjax.losses.l_knee` and the face-direction prior
:func:`bodyjax.losses.l_face` (triple products, which change sign under a mirror), weighted by
``LifterConfig.knee_weight`` and ``face_weight``, are optional extensions of eq. 6 (off by default,
as they are not in the paper) that make round 1 pick the right sign for most examples. Evaluate
round-1 depths up to sign (per-sample min over the sign) as well as directly.

Visibility caveat: ``D`` sees real and fake poses with the same masks, but the fakes are ROTATED
views while the masks belong to the original views. Where the mask depends on the view (a strict
occlusion flag hides the far limbs of a side view and the face of a back view), ``D`` can tell
fakes from the mask alone, whatever the depths, and the generator learns little. Feed the lifter
*labelled* keypoints (COCO ``v > 0``: occluded but annotated joints count), not occlusion flags.
Even then COCO annotators label the face only when it is seen, so ``D`` would still win on rotated
views of labelled faces (measured: ``D`` at 0.87 / 0.12 on real / fake instead of 0.6 / 0.4):
``discriminator_keypoints='body'`` shows ``D`` the body keypoints only (``G`` still sees the face).

Layer: algorithms. Modules: :mod:`~bodyjax.lifter.views` (frames and rotated views),
:mod:`~bodyjax.lifter.networks` (G and D), :mod:`~bodyjax.lifter.model` (config, state, step,
predictions); the losses of eq. 1–6 are in :mod:`bodyjax.losses`. Every public name is importable
from ``bodyjax.lifter``.
"""
from bodyjax.lifter.model import (LifterConfig, LifterState, create_state, joint_weight_schedule, lift,
                                  predict_depths, train_step)
from bodyjax.lifter.networks import Discriminator, Generator
from bodyjax.lifter.views import (discriminator_mask, lift_normalized, normalize_joints3d,
                                  normalize_keypoints2d, project_views, rotate_about_vertical,
                                  weak_perspective_joints3d)

__all__ = ["LifterConfig", "LifterState", "create_state", "joint_weight_schedule", "lift", "predict_depths",
           "train_step", "Discriminator", "Generator", "discriminator_mask", "lift_normalized",
           "normalize_joints3d", "normalize_keypoints2d", "project_views", "rotate_about_vertical",
           "weak_perspective_joints3d"]
