"""SMPL-family model files: the official ``.pkl`` layout and the ``.npz`` layout with the same keys.

Reading only: the arrays come out validated, in the official layout and float64; building the model
from them is :mod:`bodyjax.smpl`'s job (:func:`bodyjax.smpl.load_smpl`).

=================  ===============  ==============================================================
field              shape            meaning
=================  ===============  ==============================================================
``v_template``     ``(V, 3)``       mean template ``T̄`` (y up, the body facing +z, metres)
``shapedirs``      ``(V, 3, B)``    shape blend shapes
``posedirs``       ``(V, 3, P)``    pose blend shapes, ``P = 9 (J − 1)``
``J_regressor``    ``(J, V)``       joint regressor (dense, or a ``scipy.sparse`` matrix in a pickle)
``weights``        ``(V, J)``       skinning weights, rows sum to one
``kintree_table``  ``(2, J)``       row 0: parents (the first entry is ignored; the release stores
                                    4294967295), row 1: ``0..J−1``
``f``              ``(F, 3)``       triangles (0-based vertex indices)
=================  ===============  ==============================================================

The official ``.pkl`` is a Python-2 pickle whose arrays may be ``chumpy`` objects and whose
regressor may be a ``scipy.sparse`` matrix; :func:`read_smpl_file` reads it without chumpy or scipy
installed. Only load pickles from sources you trust; the reader refuses every pickled global outside
a small allow-list (numpy arrays, sparse matrices, chumpy arrays, plain containers).

:func:`load_densepose_iuv` reads a per-vertex DensePose ``(I, U, V)`` table (``.npy``/``.npz``, or
DensePose's own ``UV_Processed.mat`` through :mod:`bodyjax.formats.densepose_uv`);
:func:`save_smpl_npz` writes arrays in the ``.npz`` layout.

Layer: orchestration (files in, validated arrays out; every error names the file and the field).
"""
from __future__ import annotations

import functools
import io
import os
import pickle
from typing import Any, Mapping, Optional

import numpy as np

#: Keys every model file must hold.
REQUIRED_FIELDS = ("v_template", "shapedirs", "posedirs", "J_regressor", "weights", "kintree_table", "f")
#: Largest allowed deviation of a skinning-weight row sum from one.
WEIGHT_SUM_TOLERANCE = 1e-3
NUM_DENSEPOSE_PARTS = 24
#: First bytes of a MATLAB v5/v7 file (DensePose's ``UV_Processed.mat``).
_MAT_MAGIC = b"MATLAB"


def load_densepose_iuv(path, num_vertices: Optional[int] = None) -> np.ndarray:
    """Reads and validates a per-vertex DensePose ``(I, U, V)`` table supplied by the user.

    Accepted layouts:
      * DensePose's ``UV_Processed.mat`` (MATLAB; recognised by its header), read by
        :func:`bodyjax.formats.densepose_uv.load_uv_processed` and reduced to one row per vertex with
        :meth:`~bodyjax.formats.densepose_uv.UVTable.per_vertex` (a seam vertex takes its first
        entry; keep the :class:`~bodyjax.formats.densepose_uv.UVTable` itself for the exact
        nearest-entry lookup). Needs scipy;
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
      FileNotFoundError: ``path`` does not exist.
      ValueError: naming the file and the offending field.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: DensePose IUV table not found")
    if _is_mat_file(path):
        from bodyjax.formats import densepose_uv  # noqa: PLC0415 - scipy only for .mat files

        table = densepose_uv.load_uv_processed(path, num_vertices=num_vertices)
        parts, uv = table.per_vertex(num_vertices if num_vertices is not None
                                     else int(table.vertex_ids.max()) + 1)
        return np.concatenate([parts[:, None].astype(np.float32), uv.astype(np.float32)], axis=1)
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


def _is_mat_file(path: str) -> bool:
    """Whether ``path`` starts like a MATLAB v5/v7 file (or, failing that, is named ``*.mat``)."""
    with open(path, "rb") as fh:
        head = fh.read(len(_MAT_MAGIC))
    return head == _MAT_MAGIC or path.lower().endswith(".mat")


def _first_bad_row(mask: np.ndarray) -> int:
    return int(np.argwhere(mask)[0][0])


def read_smpl_file(path) -> dict:
    """Reads and validates an SMPL-family model file (``.pkl`` official layout, or ``.npz``).

    Args:
      path: the model file (the table of the module docstring lists its fields).

    Returns:
      ``{field: array}`` for every :data:`REQUIRED_FIELDS` entry in the official layout (float64
      arrays; ``J_regressor`` dense; ``f`` int32 ``(F, 3)``; ``kintree_table`` as stored) plus
      ``'parents'``, the length-``J`` tuple of parent indices with ``parents[0] == -1``.

    Raises:
      FileNotFoundError: ``path`` does not exist.
      ValueError: naming the file and the field when a key is missing, an array has the wrong shape
        or type, holds non-finite values, a skinning-weight row does not sum to ~1, the kinematic
        tree is malformed, or a face index is out of range; also when the file cannot be parsed.
    """
    path = os.fspath(path)
    return _validated_fields(_read_model_file(path), path)


def save_smpl_npz(path, v_template, shapedirs, posedirs, J_regressor, weights, parents, faces) -> str:
    """Writes a model in the ``.npz`` layout (the official keys, dense ``J_regressor``, float64).

    Args:
      path: the ``.npz`` file to write.
      v_template: ``(V, 3)``; shapedirs: ``(V, 3, B)``; posedirs: ``(V, 3, 9 (J − 1))``;
      J_regressor: ``(J, V)``; weights: ``(V, J)``; parents: length-``J`` parent indices
        (``parents[0] == -1``, stored as 4294967295 like the release); faces: ``(F, 3)``.

    Returns:
      ``path`` as a string. The file is read back with :func:`read_smpl_file`, so a malformed
      model raises ``ValueError`` here rather than at its first use.
    """
    path = os.fspath(path)
    parents = np.asarray(parents, np.int64)
    kintree = np.stack([parents, np.arange(parents.shape[0], dtype=np.int64)])
    kintree[0, 0] = 4294967295
    arrays = {
        "v_template": np.asarray(v_template, np.float64), "shapedirs": np.asarray(shapedirs, np.float64),
        "posedirs": np.asarray(posedirs, np.float64), "J_regressor": np.asarray(J_regressor, np.float64),
        "weights": np.asarray(weights, np.float64), "kintree_table": kintree,
        "f": np.asarray(faces).astype(np.uint32),
    }
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)
    read_smpl_file(path)
    return path


def _read_model_file(path: str) -> Mapping[str, Any]:
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: model file not found")
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
