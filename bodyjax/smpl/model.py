"""The SMPL body model (Loper et al. 2015): loading the official model files and the forward pass.

The forward pass follows the SMPL paper's equations:

    T_P(β, θ) = T̄ + B_S(β) + B_P(θ)                     (rest shape with blend shapes)
    B_S(β)    = Σ_b β_b S_b                               (shape blend shapes, ``shapedirs``)
    B_P(θ)    = Σ_n (vec(R(θ)) − vec(R(θ*)))_n P_n        (pose blend shapes, ``posedirs``)
    J(β)      = 𝒥 (T̄ + B_S(β))                           (joint regressor, ``J_regressor``)
    M(β, θ)   = W(T_P(β, θ), J(β), θ, 𝒲)                  (linear blend skinning, ``weights``)

where ``vec(R(θ)) − vec(R(θ*))`` concatenates the row-major flattened ``R_j − I`` of every joint
except the root (``9 (J − 1)`` numbers, 207 for SMPL). The kinematic chain and the skinning are the
shared ones of :mod:`bodyjax.kinematics` with all segment scales equal to one.

Frame. Everything here is expressed in the official model's own frame: y up, the body faces +z and
its left side is +x. This is NOT the project's camera frame (y down, the template faces −z, see
:mod:`bodyjax.body`); a rotation of 180° about x, ``diag(1, −1, −1)``, maps one onto the other.

Speed. The blend shapes are stored as matrices ``shapedirs (B, V·3)`` and ``posedirs (P, V·3)`` so
that each costs one matrix product per batch, and the joint regressor is folded into the shape
space at load time (``joint_template = 𝒥 T̄``, ``joint_shapedirs = 𝒥 S``), which is exact because
the regressor is linear.

Files. :func:`load_smpl` builds the model from a file read by :mod:`bodyjax.formats.smpl_file` (the
official ``.pkl`` layout, read without chumpy or scipy installed, and the ``.npz`` layout with the
same keys; only load pickles from sources you trust) and optionally DensePose's ``UV_Processed.mat``.

The loop's body. :func:`to_body` turns a model (its mean shape or a given β) into the
:class:`bodyjax.body.BodyTemplate` that the registration, the lifter, the regressor, the metrics and
the pictures run on, in the project's camera frame; :func:`body_from_config` does it for an
experiment's ``config.body``.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence

import flax.struct
import jax.numpy as jnp
import numpy as np

from bodyjax import checks, kinematics
from bodyjax.formats import smpl_file
from bodyjax.formats.smpl_file import load_densepose_iuv
from bodyjax.rotations import axis_angle_to_matrix

Array = jnp.ndarray



# ---------------------------------------------------------------------------------------------
# Model


@flax.struct.dataclass
class SMPLModel:
    """An SMPL-family body model as a pytree (build it with :meth:`from_arrays` or :func:`load_smpl`).

    ``V`` vertices, ``J`` joints, ``B`` shape coefficients, ``P = 9 (J − 1)`` pose-blend-shape
    coefficients, ``F`` faces. The ``joint_*`` fields are derived from the others; after replacing a
    field, rebuild the model with :meth:`from_arrays` rather than ``dataclasses.replace``.

    Attributes:
      v_template: ``(V, 3)`` mean template ``T̄``.
      shapedirs: ``(B, V·3)`` shape blend shapes; row ``b`` is the official ``shapedirs[:, :, b]``
        flattened row-major (vertex-major, then xyz).
      posedirs: ``(P, V·3)`` pose blend shapes; row ``n`` is the official ``posedirs[:, :, n]``
        flattened the same way.
      J_regressor: ``(J, V)`` dense joint regressor ``𝒥``.
      joint_template: ``(J, 3)`` ``𝒥 T̄``.
      joint_shapedirs: ``(B, J·3)`` ``𝒥`` applied to each shape blend shape.
      weights: ``(V, J)`` skinning weights ``𝒲`` (rows sum to one).
      faces: ``(F, 3)`` int32 triangle vertex indices.
      densepose_iuv: ``(V, 3)`` per-vertex DensePose ``(I, U, V)`` (part index 1..24 stored as a
        float, U and V in [0, 1]) or ``None``.
      parents: static length-``J`` tuple of parent indices, ``parents[0] == -1``.
      source: static; the file the model was loaded from (``''`` when built from arrays), for
        messages.
    """

    v_template: Array
    shapedirs: Array
    posedirs: Array
    J_regressor: Array
    joint_template: Array
    joint_shapedirs: Array
    weights: Array
    faces: Array
    densepose_iuv: Optional[Array] = None
    parents: tuple = flax.struct.field(pytree_node=False, default=())
    source: str = flax.struct.field(pytree_node=False, default="")

    @property
    def num_vertices(self) -> int:
        return self.v_template.shape[-2]

    @property
    def num_joints(self) -> int:
        return len(self.parents)

    @property
    def num_betas(self) -> int:
        return self.shapedirs.shape[-2]

    @property
    def num_pose_basis(self) -> int:
        return self.posedirs.shape[-2]

    @classmethod
    def from_arrays(
        cls,
        v_template,
        shapedirs,
        posedirs,
        J_regressor,
        weights,
        faces,
        parents: Sequence[int],
        densepose_iuv=None,
        dtype=jnp.float32,
        source: str = "",
    ) -> "SMPLModel":
        """Builds a model from arrays in the official layout.

        Args:
          v_template: ``(V, 3)``.
          shapedirs: ``(V, 3, B)``.
          posedirs: ``(V, 3, P)`` with ``P = 9 (J − 1)``.
          J_regressor: ``(J, V)`` dense.
          weights: ``(V, J)``.
          faces: ``(F, 3)`` integers.
          parents: length-``J`` parent indices, ``parents[0] == -1``.
          densepose_iuv: optional ``(V, 3)`` table (see :func:`load_densepose_iuv`).
          dtype: float dtype of the stored arrays.
          source: the file the arrays came from (for messages).

        Returns:
          The model, its derived joint fields computed in float64.
        """
        v_template = np.asarray(v_template, np.float64)
        shapedirs = np.asarray(shapedirs, np.float64)
        posedirs = np.asarray(posedirs, np.float64)
        J_regressor = np.asarray(J_regressor, np.float64)
        V = v_template.shape[0]
        J = J_regressor.shape[0]
        B = shapedirs.shape[-1]
        P = posedirs.shape[-1]
        parents = tuple(int(p) for p in parents)
        if len(parents) != J or parents[0] != -1 or any(not 0 <= p < j for j, p in enumerate(parents) if j):
            raise ValueError(f"parents must have {J} entries, start with -1 and list parents before children, got {parents}")
        if v_template.shape != (V, 3) or shapedirs.shape != (V, 3, B) or posedirs.shape != (V, 3, P):
            raise ValueError(
                f"expected v_template (V,3), shapedirs (V,3,B), posedirs (V,3,P); got {v_template.shape}, "
                f"{shapedirs.shape}, {posedirs.shape}")
        weights = np.asarray(weights)
        if J_regressor.shape != (J, V) or weights.shape != (V, J):
            raise ValueError(f"expected J_regressor (J,V) = ({J},{V}) and weights (V,J) = ({V},{J}); got "
                             f"{J_regressor.shape}, {weights.shape}")
        if densepose_iuv is not None and np.shape(densepose_iuv) != (V, 3):
            raise ValueError(f"densepose_iuv must have shape ({V}, 3), got {np.shape(densepose_iuv)}")
        if P != 9 * (J - 1):
            raise ValueError(f"posedirs has {P} components but {J} joints need 9*(J-1) = {9 * (J - 1)}")
        joint_template = J_regressor @ v_template
        joint_shapedirs = np.einsum("jv,vcb->bjc", J_regressor, shapedirs).reshape(B, J * 3)
        return cls(
            v_template=jnp.asarray(v_template, dtype),
            shapedirs=jnp.asarray(np.moveaxis(shapedirs, -1, 0).reshape(B, V * 3), dtype),
            posedirs=jnp.asarray(np.moveaxis(posedirs, -1, 0).reshape(P, V * 3), dtype),
            J_regressor=jnp.asarray(J_regressor, dtype),
            joint_template=jnp.asarray(joint_template, dtype),
            joint_shapedirs=jnp.asarray(joint_shapedirs, dtype),
            weights=jnp.asarray(weights, dtype),
            faces=jnp.asarray(np.asarray(faces), jnp.int32),
            densepose_iuv=None if densepose_iuv is None else jnp.asarray(densepose_iuv, dtype),
            parents=parents,
            source=os.fspath(source),
        )

    def astype(self, dtype) -> "SMPLModel":
        """Returns the model with every floating-point array cast to ``dtype`` (faces stay int32)."""
        def cast(x):
            return x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x
        return self.replace(**{
            f: (None if getattr(self, f) is None else cast(getattr(self, f)))
            for f in ("v_template", "shapedirs", "posedirs", "J_regressor", "joint_template",
                      "joint_shapedirs", "weights", "faces", "densepose_iuv")})


@flax.struct.dataclass
class SMPLOutput:
    """Result of :func:`smpl_forward`, in the official model frame (y up, metres).

    Attributes:
      vertices: ``(..., V, 3)`` posed vertices.
      joints: ``(..., J, 3)`` posed skeleton joints (the kinematic-tree joints, no extra landmarks).
    """

    vertices: Array
    joints: Array


# ---------------------------------------------------------------------------------------------
# Forward pass


def smpl_forward(
    model: SMPLModel,
    betas: Array,
    pose: Array,
    translation: Optional[Array] = None,
    with_pose_blendshapes: bool = True,
) -> SMPLOutput:
    """The SMPL function ``M(β, θ) + t`` with arbitrary leading batch dimensions.

    Leading dimensions of ``betas``, ``pose`` and ``translation`` broadcast against each other.

    Args:
      model: an :class:`SMPLModel` with ``J`` joints and ``B`` shape coefficients.
      betas: ``(..., B')`` shape coefficients with ``B' ≤ B``; the first ``B'`` blend shapes are used.
      pose: ``(..., J, 3)`` axis-angle rotation of every joint relative to its parent, root included
        (``pose[..., 0, :]`` is the global orientation about the root joint).
      translation: optional ``(..., 3)`` added to vertices and joints.
      with_pose_blendshapes: static flag; ``False`` skips the pose-dependent corrective offsets.

    Returns:
      :class:`SMPLOutput` with ``vertices (..., V, 3)`` and ``joints (..., J, 3)`` in the official
      model frame (y up), not the project's camera frame.

    The kinematic chain unrolls over the joints at trace time, so call it under ``jax.jit``; eager
    calls dispatch every small operation separately.

    Raises:
      ValueError: naming the argument when ``betas``, ``pose`` or ``translation`` has the wrong
        trailing shape, too many coefficients, a non-numeric dtype, or leading shapes that do not
        broadcast (checked at trace time, so also under a caller's ``jax.jit``).
    """
    J, V = model.num_joints, model.num_vertices
    betas = jnp.asarray(betas)
    pose = jnp.asarray(pose)
    # Each argument has its own leading shape (they broadcast), so one Shapes per argument.
    checks.Shapes("smpl_forward").check("betas", betas, ("...", "B"))
    checks.Shapes("smpl_forward").check("pose", pose, ("...", J, 3))
    if translation is not None:
        checks.Shapes("smpl_forward").check("translation", translation, ("...", 3))
    for name, value in (("betas", betas), ("pose", pose), ("translation", translation)):
        if value is not None and not jnp.issubdtype(jnp.result_type(value), jnp.number):
            raise ValueError(f"smpl_forward: {name} has dtype {jnp.result_type(value)}, expected a number")
    num_b = betas.shape[-1]
    if num_b > model.num_betas:
        raise ValueError(f"smpl_forward: betas has {num_b} coefficients but the model has only "
                         f"{model.num_betas}")
    leads = {"betas": betas.shape[:-1], "pose": pose.shape[:-2]}
    if translation is not None:
        leads["translation"] = jnp.shape(translation)[:-1]
    try:
        batch = jnp.broadcast_shapes(*leads.values())
    except ValueError:
        raise ValueError("smpl_forward: the leading (batch) shapes of "
                         + ", ".join(f"{k} {v}" for k, v in leads.items()) + " do not broadcast") from None
    dtype = jnp.result_type(model.v_template.dtype, betas.dtype, pose.dtype)
    betas = jnp.broadcast_to(betas, batch + (num_b,)).astype(dtype)
    pose = jnp.broadcast_to(pose, batch + (J, 3)).astype(dtype)

    # Shape blend shapes and the regressed rest joints (one matmul each over the shape space).
    v_shaped = model.v_template + (betas @ model.shapedirs[:num_b]).reshape(batch + (V, 3))
    rest_joints = model.joint_template + (betas @ model.joint_shapedirs[:num_b]).reshape(batch + (J, 3))

    rotations = axis_angle_to_matrix(pose)  # (..., J, 3, 3)
    v_posed = v_shaped
    if with_pose_blendshapes:
        eye = jnp.eye(3, dtype=rotations.dtype)
        pose_feature = (rotations[..., 1:, :, :] - eye).reshape(batch + (9 * (J - 1),))
        v_posed = v_shaped + (pose_feature @ model.posedirs).reshape(batch + (V, 3))

    global_rot, joints = kinematics.chain(rotations, rest_joints, model.parents)
    transforms = kinematics.skinning_transforms(global_rot, joints, rest_joints)
    vertices = kinematics.blend_skin(v_posed, model.weights, transforms)
    if translation is not None:
        t = jnp.asarray(translation, dtype)[..., None, :]
        vertices = vertices + t
        joints = joints + t
    return SMPLOutput(vertices=vertices, joints=joints)


# ---------------------------------------------------------------------------------------------
# Loading


def load_smpl(path, densepose_iuv=None, dtype=jnp.float32) -> SMPLModel:
    """Loads an SMPL-family model file (``.pkl`` official layout, or ``.npz`` with the same keys).

    Required keys: ``v_template (V, 3)``, ``shapedirs (V, 3, B)``, ``posedirs (V, 3, 9(J−1))``,
    ``J_regressor (J, V)`` (dense or ``scipy.sparse``), ``weights (V, J)``, ``kintree_table (2, J)``
    (row 0: parents, its first entry is ignored and becomes −1; row 1: ``0..J−1``), ``f (F, 3)``.
    Arrays may be chumpy objects in a pickle; neither chumpy nor scipy needs to be installed (see
    :mod:`bodyjax.formats.smpl_file`).

    Args:
      path: the model file.
      densepose_iuv: optional per-vertex DensePose table: DensePose's ``UV_Processed.mat`` (needs
        scipy; a seam vertex takes its first entry) or a ``.npy``/``.npz`` table, see
        :func:`load_densepose_iuv`.
      dtype: float dtype of the model arrays.

    Returns:
      The :class:`SMPLModel` (``source`` = ``path``).

    Raises:
      FileNotFoundError: ``path`` or ``densepose_iuv`` does not exist.
      ValueError: naming the file and the field when a key is missing, an array has the wrong shape
        or type, holds non-finite values, a skinning-weight row does not sum to ~1, the kinematic
        tree is malformed, or a face index is out of range; also when the file cannot be parsed.
    """
    path = os.fspath(path)
    fields = smpl_file.read_smpl_file(path)
    iuv = None
    if densepose_iuv is not None:
        iuv = load_densepose_iuv(densepose_iuv, num_vertices=fields["v_template"].shape[0])
    return SMPLModel.from_arrays(
        fields["v_template"], fields["shapedirs"], fields["posedirs"], fields["J_regressor"],
        fields["weights"], fields["f"], fields["parents"], densepose_iuv=iuv, dtype=dtype, source=path)
