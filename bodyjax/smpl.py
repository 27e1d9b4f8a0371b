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

Files. :func:`load_smpl` reads the official ``.pkl`` layout (Python-2 pickles whose arrays may be
``chumpy`` objects and whose regressor may be a ``scipy.sparse`` matrix) without chumpy or scipy
installed, and the ``.npz`` layout with the same keys. Only load pickles from sources you trust; the
loader refuses every pickled global outside a small allow-list (numpy arrays, sparse matrices,
chumpy arrays, plain containers).
"""
from __future__ import annotations

import functools
import io
import os
import pickle
from typing import Any, Mapping, Optional, Sequence

import flax.struct
import jax.numpy as jnp
import numpy as np

from bodyjax import kinematics
from bodyjax.rotations import axis_angle_to_matrix

Array = jnp.ndarray

#: Keys every model file must hold.
REQUIRED_FIELDS = ("v_template", "shapedirs", "posedirs", "J_regressor", "weights", "kintree_table", "f")
#: Largest allowed deviation of a skinning-weight row sum from one.
WEIGHT_SUM_TOLERANCE = 1e-3
NUM_DENSEPOSE_PARTS = 24


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
    """
    J, V = model.num_joints, model.num_vertices
    betas = jnp.asarray(betas)
    pose = jnp.asarray(pose)
    num_b = betas.shape[-1]
    if num_b > model.num_betas:
        raise ValueError(f"betas has {num_b} coefficients but the model has only {model.num_betas}")
    if pose.shape[-2:] != (J, 3):
        raise ValueError(f"pose must have shape (..., {J}, 3), got {pose.shape}")
    batch = jnp.broadcast_shapes(betas.shape[:-1], pose.shape[:-2],
                                 () if translation is None else jnp.shape(translation)[:-1])
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
    Arrays may be chumpy objects in a pickle; neither chumpy nor scipy needs to be installed.

    Args:
      path: the model file.
      densepose_iuv: optional path to a per-vertex DensePose table, see :func:`load_densepose_iuv`.
      dtype: float dtype of the model arrays.

    Returns:
      The :class:`SMPLModel`.

    Raises:
      ValueError: naming the file and the field when a key is missing, an array has the wrong shape
        or type, holds non-finite values, a skinning-weight row does not sum to ~1, the kinematic
        tree is malformed, or a face index is out of range; also when the file cannot be parsed.
    """
    path = os.fspath(path)
    raw = _read_model_file(path)
    fields = _validated_fields(raw, path)
    iuv = None
    if densepose_iuv is not None:
        iuv = load_densepose_iuv(densepose_iuv, num_vertices=fields["v_template"].shape[0])
    return SMPLModel.from_arrays(
        fields["v_template"], fields["shapedirs"], fields["posedirs"], fields["J_regressor"],
        fields["weights"], fields["f"], fields["parents"], densepose_iuv=iuv, dtype=dtype)


def load_densepose_iuv(path, num_vertices: Optional[int] = None) -> np.ndarray:
    """Reads and validates a per-vertex DensePose ``(I, U, V)`` table supplied by the user.

    Accepted layouts:
      * ``.npy``: one array of shape ``(V, 3)`` with columns ``I, U, V``;
      * ``.npz`` with arrays ``I``, ``U``, ``V`` (any letter case), each of shape ``(V,)``;
      * ``.npz`` with an array named ``iuv`` / ``IUV`` of shape ``(V, 3)``, or with exactly one array
        (any name) of shape ``(V, 3)``.

    ``I`` is the DensePose part index and must be an integer in ``1..24``; ``U`` and ``V`` must lie in
    ``[0, 1]``; all values finite.

    Args:
      path: the table file.
      num_vertices: expected ``V`` (the model's vertex count), or ``None`` to skip that check.

    Returns:
      ``(V, 3)`` float32 array ``[I, U, V]``.

    Raises:
      ValueError: naming the file and the offending field.
    """
    path = os.fspath(path)
    try:
        loaded = np.load(path, allow_pickle=False)
    except Exception as e:  # noqa: BLE001 - re-raised with the file named
        raise ValueError(f"{path}: cannot read DensePose IUV table ({type(e).__name__}: {e})") from e
    if isinstance(loaded, np.ndarray):
        iuv, field = loaded, "array"
    else:
        with loaded:
            keys = {k.lower(): k for k in loaded.files}
            if all(c in keys for c in "iuv"):
                cols = []
                for c in "iuv":
                    col = np.asarray(loaded[keys[c]])
                    if col.ndim != 1:
                        raise ValueError(f"{path}: field {keys[c]!r} must have shape (V,), got {col.shape}")
                    cols.append(col)
                if len({c.shape for c in cols}) != 1:
                    raise ValueError(f"{path}: fields I, U, V have different shapes {[c.shape for c in cols]}")
                iuv, field = np.stack(cols, axis=-1), "I/U/V"
            elif "iuv" in keys:
                iuv, field = np.asarray(loaded[keys["iuv"]]), keys["iuv"]
            elif len(loaded.files) == 1:
                field = loaded.files[0]
                iuv = np.asarray(loaded[field])
            else:
                raise ValueError(f"{path}: expected arrays I, U, V or a single (V, 3) array 'iuv', "
                                 f"found {sorted(loaded.files)}")
    if not np.issubdtype(iuv.dtype, np.number) or iuv.ndim != 2 or iuv.shape[1] != 3:
        raise ValueError(f"{path}: field {field!r} must be a numeric (V, 3) array, got {iuv.dtype} {iuv.shape}")
    if num_vertices is not None and iuv.shape[0] != num_vertices:
        raise ValueError(f"{path}: field {field!r} has {iuv.shape[0]} rows but the model has {num_vertices} vertices")
    iuv = iuv.astype(np.float64)
    if not np.all(np.isfinite(iuv)):
        raise ValueError(f"{path}: field {field!r} holds non-finite values (first at row {_first_bad_row(~np.isfinite(iuv))})")
    parts = iuv[:, 0]
    bad = (np.abs(parts - np.round(parts)) > 1e-6) | (parts < 1) | (parts > NUM_DENSEPOSE_PARTS)
    if np.any(bad):
        r = int(np.argmax(bad))
        raise ValueError(f"{path}: field {field!r}: part index I must be an integer in 1..{NUM_DENSEPOSE_PARTS}, "
                         f"got {parts[r]} at row {r}")
    uv = iuv[:, 1:]
    bad = (uv < 0) | (uv > 1)
    if np.any(bad):
        r, c = np.argwhere(bad)[0]
        raise ValueError(f"{path}: field {field!r}: {'UV'[c]} must lie in [0, 1], got {uv[r, c]} at row {r}")
    iuv[:, 0] = np.round(parts)
    return iuv.astype(np.float32)


def _first_bad_row(mask: np.ndarray) -> int:
    return int(np.argwhere(mask)[0][0])


def _read_model_file(path: str) -> Mapping[str, Any]:
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError as e:
        raise ValueError(f"{path}: cannot open model file ({e})") from e
    if head.startswith(b"PK"):
        try:
            return _NpzFields(np.load(path, allow_pickle=False), path)
        except Exception as e:  # noqa: BLE001 - re-raised with the file named
            raise ValueError(f"{path}: cannot read npz model file ({type(e).__name__}: {e})") from e
    if path.lower().endswith(".npz"):
        raise ValueError(f"{path}: not an npz (zip) archive")
    try:
        with open(path, "rb") as fh:
            data = _ModelUnpickler(fh).load()
    except Exception as e:  # noqa: BLE001 - corrupt pickles raise many types; re-raised with the file named
        raise ValueError(f"{path}: cannot read pickled model file ({type(e).__name__}: {e})") from e
    if not isinstance(data, Mapping):
        raise ValueError(f"{path}: expected a pickled dict of model fields, got {type(data).__name__}")
    return data


class _NpzFields(Mapping):
    """Lazy view of an ``NpzFile`` that reports object arrays (which need pickle) clearly."""

    def __init__(self, npz, path):
        self._npz, self._path = npz, path

    def __getitem__(self, key):
        try:
            return self._npz[key]
        except ValueError as e:
            raise ValueError(f"{self._path}: field {key!r} is a pickled object array; store it as a plain "
                             f"numeric array ({e})") from e

    def __iter__(self):
        return iter(self._npz.files)

    def __len__(self):
        return len(self._npz.files)


def _validated_fields(raw: Mapping[str, Any], path: str) -> dict:
    missing = [k for k in REQUIRED_FIELDS if k not in raw]
    if missing:
        raise ValueError(f"{path}: missing field(s) {missing} (found {sorted(map(str, raw.keys()))})")
    out = {k: _to_numpy(raw[k], path, k) for k in REQUIRED_FIELDS}

    def check_shape(field, expected):
        shape = out[field].shape
        if len(shape) != len(expected) or any(e is not None and s != e for s, e in zip(shape, expected)):
            want = "(" + ", ".join("?" if e is None else str(e) for e in expected) + ")"
            raise ValueError(f"{path}: field {field!r} has shape {shape}, expected {want}")

    check_shape("v_template", (None, 3))
    V = out["v_template"].shape[0]
    check_shape("kintree_table", (2, None))
    J = out["kintree_table"].shape[1]
    check_shape("shapedirs", (V, 3, None))
    check_shape("posedirs", (V, 3, 9 * (J - 1)))
    check_shape("J_regressor", (J, V))
    check_shape("weights", (V, J))
    check_shape("f", (None, 3))

    for field in ("v_template", "shapedirs", "posedirs", "J_regressor", "weights"):
        arr = out[field]
        if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
            raise ValueError(f"{path}: field {field!r} must be a real numeric array, got dtype {arr.dtype}")
        finite = np.isfinite(arr)
        if not np.all(finite):
            idx = tuple(int(i) for i in np.argwhere(~finite)[0])
            raise ValueError(f"{path}: field {field!r} holds non-finite value {arr[idx]} at index {idx}")
        out[field] = arr.astype(np.float64)

    sums = out["weights"].sum(axis=1)
    dev = np.abs(sums - 1.0)
    if np.max(dev, initial=0.0) > WEIGHT_SUM_TOLERANCE:
        r = int(np.argmax(dev))
        raise ValueError(f"{path}: field 'weights': row {r} sums to {sums[r]:.6g}, expected 1 "
                         f"(tolerance {WEIGHT_SUM_TOLERANCE})")

    for field in ("kintree_table", "f"):
        arr = out[field]
        if not (np.issubdtype(arr.dtype, np.integer)
                or (np.issubdtype(arr.dtype, np.floating) and np.all(arr == np.round(arr)))):
            raise ValueError(f"{path}: field {field!r} must hold integers, got dtype {arr.dtype}")
    table = out["kintree_table"].astype(np.int64)
    if not np.array_equal(table[1], np.arange(J)):
        raise ValueError(f"{path}: field 'kintree_table': row 1 must list joints 0..{J - 1} in order, got {table[1].tolist()}")
    parents = [-1] + [int(p) for p in table[0, 1:]]
    for j, p in enumerate(parents[1:], start=1):
        if not 0 <= p < j:
            raise ValueError(f"{path}: field 'kintree_table': joint {j} has parent {p}; parents must precede their children")
    out["parents"] = tuple(parents)

    faces = out["f"].astype(np.int64)
    if faces.size and (faces.min() < 0 or faces.max() >= V):
        raise ValueError(f"{path}: field 'f': face indices must lie in [0, {V}), got range "
                         f"[{faces.min()}, {faces.max()}]")
    out["f"] = faces.astype(np.int32)
    return out


def _to_numpy(value, path: str, field: str) -> np.ndarray:
    """Converts a loaded field (ndarray, sparse matrix, chumpy stand-in, list) to a dense ndarray."""
    if isinstance(value, _PickledChumpy):
        value = value.recover(path, field)
    if isinstance(value, _PickledSparse):
        value = value.dense(path, field)
    elif hasattr(value, "toarray") and callable(value.toarray):  # a real scipy.sparse object
        value = value.toarray()
    try:
        arr = np.asarray(value)
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"{path}: field {field!r} cannot be converted to an array ({type(value).__name__})") from e
    if arr.dtype == object:
        raise ValueError(f"{path}: field {field!r} is not a numeric array (got {type(value).__name__} "
                         f"with dtype object)")
    return arr


# ---- pickle support without chumpy / scipy --------------------------------------------------


class _PickledChumpy:
    """Stand-in for any chumpy class: keeps the pickled state so the array value can be recovered.

    A plain ``chumpy.Ch`` pickles as ``NEWOBJ(cls)`` followed by its ``__dict__`` minus two caches;
    the array value is the ``'x'`` entry. Derived chumpy expressions (sums, products, ...) have no
    ``'x'`` and cannot be evaluated without chumpy.
    """

    _chumpy_name = "chumpy.Ch"

    def __new__(cls, *args, **kwargs):
        obj = object.__new__(cls)
        obj._args, obj._state = args, None
        return obj

    def __init__(self, *args, **kwargs):  # called only by protocol-0 INST/OBJ opcodes
        if args:
            self._args = args

    def __setstate__(self, state):
        self._state = state

    def recover(self, path: str, field: str, depth: int = 0) -> np.ndarray:
        state = self._state
        if isinstance(state, tuple) and len(state) == 2 and all(s is None or isinstance(s, dict) for s in state):
            merged = {}
            for s in state:
                merged.update(s or {})
            state = merged
        value = None
        if isinstance(state, dict) and "x" in state:
            value = state["x"]
        elif state is None and len(self._args) == 1:
            value = self._args[0]
        if value is None:
            keys = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise ValueError(
                f"{path}: field {field!r} is a chumpy object of class {self._chumpy_name} whose array value "
                f"cannot be recovered without chumpy (pickled state: {keys}); re-save the model with plain "
                f"numpy arrays")
        if isinstance(value, _PickledChumpy):
            if depth > 8:
                raise ValueError(f"{path}: field {field!r}: chumpy objects nested too deeply")
            return value.recover(path, field, depth + 1)
        if isinstance(value, _PickledSparse):
            return value.dense(path, field)
        return np.asarray(value)


@functools.lru_cache(maxsize=None)
def _chumpy_class(module: str, name: str) -> type:
    return type(name, (_PickledChumpy,), {"_chumpy_name": f"{module}.{name}", "__module__": __name__})


class _PickledSparse:
    """Stand-in for ``scipy.sparse`` matrices/arrays (csc, csr, coo) rebuilt densely with numpy."""

    _sparse_name = "csc_matrix"

    def __new__(cls, *args, **kwargs):
        obj = object.__new__(cls)
        obj._state = None
        return obj

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        self._state = state

    def dense(self, path: str, field: str) -> np.ndarray:
        name = self._sparse_name
        state = self._state if isinstance(self._state, dict) else {}
        fmt = name[:3]
        try:
            shape = tuple(int(s) for s in state.get("_shape", state.get("shape")))
            if len(shape) != 2:
                raise ValueError("only 2-d sparse matrices are supported")
            data = np.asarray(state["data"])
            out = np.zeros(shape, dtype=np.result_type(data.dtype, np.float64))
            if fmt in ("csc", "csr"):
                indices = np.asarray(state["indices"], np.int64)
                indptr = np.asarray(state["indptr"], np.int64)
                n_outer = shape[1] if fmt == "csc" else shape[0]
                if indptr.shape != (n_outer + 1,):
                    raise ValueError(f"indptr has shape {indptr.shape}, expected ({n_outer + 1},)")
                outer = np.repeat(np.arange(n_outer), np.diff(indptr))
                rows, cols = (indices, outer) if fmt == "csc" else (outer, indices)
            elif fmt == "coo":
                if "coords" in state:
                    rows, cols = (np.asarray(c, np.int64) for c in state["coords"])
                else:
                    rows, cols = np.asarray(state["row"], np.int64), np.asarray(state["col"], np.int64)
            else:
                raise ValueError(f"sparse format {name!r} is not supported (use csc, csr or coo)")
            np.add.at(out, (rows, cols), data)
            return out
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise ValueError(f"{path}: field {field!r}: cannot rebuild pickled sparse matrix {name} "
                             f"({type(e).__name__}: {e})") from e


@functools.lru_cache(maxsize=None)
def _sparse_class(name: str) -> type:
    return type(name, (_PickledSparse,), {"_sparse_name": name, "__module__": __name__})


_NUMPY_GLOBALS = frozenset({"_reconstruct", "scalar", "dtype", "ndarray", "_frombuffer", "frombuffer", "matrix"})
_BUILTIN_GLOBALS = frozenset({"set", "frozenset", "object", "slice", "complex", "list", "dict", "tuple",
                              "bytearray", "bytes", "int", "float", "str", "bool", "unicode", "long"})
_MODULE_ALIASES = {"__builtin__": "builtins", "copy_reg": "copyreg"}


class _ModelUnpickler(pickle.Unpickler):
    """Unpickler for model files: Python-2 pickles, chumpy and scipy.sparse replaced by stand-ins,
    every other global outside a small allow-list refused."""

    def __init__(self, fh: io.BufferedIOBase):
        super().__init__(fh, encoding="latin1")

    def find_class(self, module: str, name: str):
        root = module.split(".")[0]
        if root == "chumpy":
            return _chumpy_class(module, name)
        if root == "scipy" and module.startswith("scipy.sparse") and name.endswith(("_matrix", "_array")):
            return _sparse_class(name)
        if root == "numpy" and name in _NUMPY_GLOBALS:
            if module.startswith("numpy.core") and hasattr(np, "_core"):
                module = "numpy._core" + module[len("numpy.core"):]
            return super().find_class(module, name)
        if module in ("numpy", "numpy.dtypes"):
            obj = getattr(np if module == "numpy" else getattr(np, "dtypes", None), name, None)
            if isinstance(obj, type) and issubclass(obj, (np.generic, np.dtype)):
                return obj
        normalised = _MODULE_ALIASES.get(module, module)
        if ((normalised == "builtins" and name in _BUILTIN_GLOBALS)
                or (normalised == "copyreg" and name == "_reconstructor")
                or (normalised == "_codecs" and name == "encode")
                or (normalised == "collections" and name == "OrderedDict")):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"refusing to load global {module}.{name}: model files may only pickle numpy arrays, "
            f"scipy.sparse matrices, chumpy arrays and plain containers")
