"""DensePose ``(I, U, V)`` → body vertex mapping by nearest neighbour in each part's UV chart.

DensePose annotates an image point with a body part ``I`` (1..24, see the project conventions) and
chart coordinates ``(U, V)`` in ``[0, 1]²``. Deform-and-learn (appendix, section 5.2) turns such a
point into a correspondence with a template vertex by searching, **within the part ``I``**, the
vertex whose own chart coordinates are nearest to ``(U, V)``. The search goes from image points to
vertices because the annotated points are much sparser than the mesh.

:class:`IUVIndex` holds, per part, the chart coordinates of the vertices of that part and answers
such queries for many points at once.

Bodies it can be built from (all give an ``(R,)`` part id and ``(R, 2)`` chart coordinates per row,
``R`` usually the vertex count):

* the default template (:func:`IUVIndex.from_template`: its ``part_ids`` and ``uv``). Its charts
  follow the DensePose PART SEMANTICS (which surface region each index denotes) but are the
  template's OWN parameterisation, not the DensePose/SMPL atlas: real DensePose ``(I, U, V)``
  therefore maps only APPROXIMATELY onto it (right part, roughly the right place in the part);
* SMPL with the user's per-vertex DensePose table (:func:`IUVIndex.from_iuv_table` for a ``(V, 3)``
  ``[I, U, V]`` array, or :func:`IUVIndex.from_body` for a :class:`bodyjax.smpl.SMPLModel` whose
  ``densepose_iuv`` is set). This is the exact path: the annotations were made on that atlas. The
  table must use the same ``(U, V)`` convention as the annotations. Seam vertices that appear in
  several charts can be given as several rows with ``vertex_ids`` naming the vertex of each row.
  DensePose's own ``UV_Processed.mat`` (:mod:`bodyjax.formats.densepose_uv`) gives exactly that:
  :func:`IUVIndex.from_uv_table` builds one row per table entry.

Invalid queries (part not an integer in 1..24, U or V outside ``[0, 1]`` or not finite, or a part
that has no vertex in the index) either raise ``ValueError`` (``strict=True``, the default of
:meth:`IUVIndex.lookup`) or are returned as vertex ``-1`` (``strict=False``); :meth:`IUVIndex.valid`
gives the mask. The DensePose-COCO loader checks annotations first and skips/counts bad ones.

Search backends: ``'numpy'`` (brute force per part, in chunks; always available, fine for ~15k
vertices × a few hundred points), ``'scipy'`` (a ``cKDTree`` per part; scipy is only a test extra)
and ``'auto'`` (scipy when importable, else numpy). Both return the nearest row; exact ties (two
rows at the same distance) may be broken differently by the two backends.
"""
from __future__ import annotations

import numpy as np

NUM_PARTS = 24

# Upper bound on the elements of one (points × vertices × 2) distance block of the numpy backend.
_CHUNK_ELEMENTS = 1 << 22


def _scipy_kdtree():
    try:
        from scipy.spatial import cKDTree  # noqa: PLC0415 - optional dependency
    except Exception:  # noqa: BLE001 - any import problem means "not available"
        return None
    return cKDTree


class IUVIndex:
    """Per-part nearest-neighbour search from DensePose ``(I, U, V)`` to vertex ids.

    Args:
      part_ids: ``(R,)`` integer part of each row, 1..24 (float arrays holding integers accepted).
      uv: ``(R, 2)`` chart coordinates of each row in ``[0, 1]``.
      vertex_ids: optional ``(R,)`` vertex id of each row (default ``arange(R)``); lets a seam
        vertex appear in several charts.
      backend: ``'auto'``, ``'numpy'`` or ``'scipy'`` (see the module docstring).

    Raises:
      ValueError: on shape mismatches, non-finite values, part ids outside 1..24, UV outside [0, 1],
        or negative vertex ids.
    """

    def __init__(self, part_ids, uv, vertex_ids=None, backend: str = "auto"):
        part_ids = np.asarray(part_ids)
        uv = np.asarray(uv, dtype=np.float64)
        if part_ids.ndim != 1:
            raise ValueError(f"IUVIndex: part_ids must have shape (R,), got {part_ids.shape}")
        if uv.shape != (part_ids.shape[0], 2):
            raise ValueError(f"IUVIndex: uv must have shape ({part_ids.shape[0]}, 2), got {uv.shape}")
        if not np.issubdtype(part_ids.dtype, np.number):
            raise ValueError(f"IUVIndex: part_ids must be numeric, got {part_ids.dtype}")
        pf = part_ids.astype(np.float64)
        if not (np.all(np.isfinite(pf)) and np.all(np.isfinite(uv))):
            raise ValueError("IUVIndex: part_ids and uv must be finite")
        if np.any(pf != np.round(pf)) or np.any((pf < 1) | (pf > NUM_PARTS)):
            raise ValueError(f"IUVIndex: part ids must be integers in 1..{NUM_PARTS}")
        if np.any((uv < 0) | (uv > 1)):
            raise ValueError("IUVIndex: uv must lie in [0, 1]")
        if vertex_ids is None:
            vertex_ids = np.arange(part_ids.shape[0])
        vertex_ids = np.asarray(vertex_ids)
        if vertex_ids.shape != part_ids.shape or not np.issubdtype(vertex_ids.dtype, np.integer):
            raise ValueError(f"IUVIndex: vertex_ids must be integers of shape {part_ids.shape}")
        if vertex_ids.size and vertex_ids.min() < 0:
            raise ValueError("IUVIndex: vertex_ids must be non-negative")
        if backend not in ("auto", "numpy", "scipy"):
            raise ValueError(f"IUVIndex: unknown backend {backend!r}; expected 'auto', 'numpy' or 'scipy'")
        kdtree = _scipy_kdtree() if backend in ("auto", "scipy") else None
        if backend == "scipy" and kdtree is None:
            raise ValueError("IUVIndex: backend 'scipy' requested but scipy is not installed")
        self.backend = "scipy" if kdtree is not None else "numpy"
        self.num_vertices = int(vertex_ids.max()) + 1 if vertex_ids.size else 0
        parts = pf.astype(np.int64)
        self._uv = {}
        self._ids = {}
        self._trees = {}
        for p in range(1, NUM_PARTS + 1):
            rows = np.nonzero(parts == p)[0]
            if rows.size == 0:
                continue
            self._uv[p] = uv[rows]
            self._ids[p] = vertex_ids[rows].astype(np.int32)
            if kdtree is not None:
                self._trees[p] = kdtree(uv[rows])

    # ------------------------------------------------------------------------------------------
    # Constructors

    @classmethod
    def from_template(cls, template, backend: str = "auto") -> "IUVIndex":
        """From a :class:`bodyjax.body.BodyTemplate` (its ``part_ids (V,)`` and ``uv (V, 2)``)."""
        return cls(np.asarray(template.part_ids), np.asarray(template.uv), backend=backend)

    @classmethod
    def from_iuv_table(cls, table, vertex_ids=None, backend: str = "auto") -> "IUVIndex":
        """From a per-vertex DensePose table ``(R, 3)`` with columns ``I, U, V`` (e.g. SMPL's)."""
        table = np.asarray(table, dtype=np.float64)
        if table.ndim != 2 or table.shape[1] != 3:
            raise ValueError(f"IUVIndex: IUV table must have shape (R, 3), got {table.shape}")
        return cls(table[:, 0], table[:, 1:], vertex_ids=vertex_ids, backend=backend)

    @classmethod
    def from_uv_table(cls, table, backend: str = "auto") -> "IUVIndex":
        """From DensePose's chart table (:class:`bodyjax.formats.densepose_uv.UVTable`), one row per
        ENTRY (``entry_parts (E,)``, ``uv (E, 2)``, ``vertex_ids (E,)``), so seam vertices are found
        from every chart they lie in."""
        return cls(table.entry_parts, table.uv, vertex_ids=table.vertex_ids, backend=backend)

    @classmethod
    def from_body(cls, body, backend: str = "auto") -> "IUVIndex":
        """From a template (``part_ids``/``uv``) or an SMPL model with ``densepose_iuv`` set."""
        if getattr(body, "part_ids", None) is not None and getattr(body, "uv", None) is not None:
            return cls.from_template(body, backend=backend)
        table = getattr(body, "densepose_iuv", None)
        if table is not None:
            return cls.from_iuv_table(np.asarray(table), backend=backend)
        raise ValueError("IUVIndex.from_body: the body has neither part_ids/uv nor a densepose_iuv table "
                         "(load SMPL with densepose_iuv=... to use the official per-vertex table)")

    # ------------------------------------------------------------------------------------------
    # Queries

    @property
    def parts(self) -> tuple:
        """Part ids that have at least one vertex in the index."""
        return tuple(sorted(self._uv))

    def valid(self, parts, uv) -> np.ndarray:
        """``(N,)`` bool: part an integer in 1..24 present in the index, U and V finite in [0, 1]."""
        parts = np.asarray(parts, dtype=np.float64).reshape(-1)
        uv = np.asarray(uv, dtype=np.float64).reshape(-1, 2)
        if uv.shape[0] != parts.shape[0]:
            raise ValueError(f"IUVIndex: {parts.shape[0]} parts but {uv.shape[0]} uv rows")
        with np.errstate(invalid="ignore"):
            ok = np.isfinite(parts) & np.all(np.isfinite(uv), axis=1)
            ok &= np.all((uv >= 0) & (uv <= 1), axis=1)
            ok &= (parts == np.round(parts)) & (parts >= 1) & (parts <= NUM_PARTS)
        present = np.zeros(NUM_PARTS + 1, bool)
        present[list(self._uv)] = True
        ok[ok] &= present[parts[ok].astype(np.int64)]
        return ok

    def lookup(self, parts, uv, strict: bool = True) -> np.ndarray:
        """Nearest vertex in each point's part chart.

        Args:
          parts: ``(N,)`` DensePose part ids (1..24; floats holding integers accepted).
          uv: ``(N, 2)`` chart coordinates ``(U, V)``.
          strict: raise on invalid points (default) or return ``-1`` for them.

        Returns:
          ``(N,)`` int32 vertex ids (``-1`` for invalid points when ``strict=False``).

        Raises:
          ValueError: shapes do not match, or (``strict``) a point is invalid; the message gives the
            first invalid point's index and values.
        """
        parts = np.asarray(parts, dtype=np.float64).reshape(-1)
        uv = np.asarray(uv, dtype=np.float64).reshape(-1, 2)
        ok = self.valid(parts, uv)
        if strict and not np.all(ok):
            i = int(np.argmin(ok))
            raise ValueError(f"IUVIndex.lookup: point {i} is invalid (part={parts[i]}, uv={uv[i].tolist()}); "
                             f"parts must be integers in the index {self.parts} and U, V finite in [0, 1]")
        out = np.full(parts.shape[0], -1, np.int32)
        if not np.any(ok):
            return out
        pint = np.where(ok, parts, 0).astype(np.int64)
        for p in np.unique(pint[ok]):
            sel = np.nonzero(ok & (pint == p))[0]
            out[sel] = self._ids[p][self._nearest(int(p), uv[sel])]
        return out

    def _nearest(self, part: int, query: np.ndarray) -> np.ndarray:
        """Row (within ``part``) nearest to each ``(n, 2)`` query."""
        if part in self._trees:
            _, rows = self._trees[part].query(query, k=1)
            return np.asarray(rows, np.int64)
        ref = self._uv[part]
        chunk = max(1, _CHUNK_ELEMENTS // max(1, 2 * ref.shape[0]))
        rows = np.empty(query.shape[0], np.int64)
        for start in range(0, query.shape[0], chunk):
            q = query[start:start + chunk]
            d2 = np.sum(np.square(q[:, None, :] - ref[None, :, :]), axis=-1)
            rows[start:start + chunk] = np.argmin(d2, axis=1)
        return rows
