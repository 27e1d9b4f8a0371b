"""bodyjax: learning 3D human body shape and pose from dense image-surface correspondences.

A functional JAX/Flax implementation of deform-and-learn. Layers:

1. pure math: :mod:`bodyjax.rotations`, :mod:`bodyjax.kinematics`, :mod:`bodyjax.body`,
   :mod:`bodyjax.camera`, :mod:`bodyjax.smpl`, :mod:`bodyjax.losses`, :mod:`bodyjax.metrics`;
2. algorithms: :mod:`bodyjax.registration`, :mod:`bodyjax.lifter`, :mod:`bodyjax.regressor`;
3. orchestration: :mod:`bodyjax.data`, ``experiments/``, ``configs/``.

Submodules are imported explicitly (``from bodyjax import body``) so that importing the package
stays cheap.
"""

__version__ = "0.1.0"
