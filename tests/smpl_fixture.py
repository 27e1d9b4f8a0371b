"""Writes small random body-model files in the exact layout of the official SMPL release.

The official ``.pkl`` is a protocol-2 pickle of a dict with the keys ``v_template (V, 3)``,
``shapedirs (V, 3, B)``, ``posedirs (V, 3, 207)``, ``J_regressor`` and ``J_regressor_prior``
(``scipy.sparse.csc_matrix (24, V)``), ``weights`` and ``weights_prior (V, 24)``, ``J (24, 3)``,
``kintree_table (2, 24)`` (int64, first parent stored as 4294967295), ``f (F, 3)`` (uint32),
``vert_sym_idxs (V,)``, ``pose_training_info`` (dict), ``bs_style`` ('lbs'), ``bs_type`` ('lrotmin').
The ``.npz`` variant holds the same arrays with a dense ``J_regressor`` (SMPL-X style).

All floating-point values are float32-representable (stored as float64 like the release), so any
reader that rounds to float32 sees exactly the same model. The random model is loosely body-like
(vertices scattered around a y-up T-pose skeleton, weights and regressor concentrated on the nearest
joint) but every skinning weight is positive. Depends only on numpy (and scipy for the sparse
regressor in the ``.pkl``); with ``chumpy=True`` the dense arrays are pickled as ``chumpy.ch.Ch``
objects, as in the release, using chumpy itself when installed and an equivalent stand-in otherwise.
"""
from __future__ import annotations

import contextlib
import os
import pickle
import sys
import types

import numpy as np

SMPL_PARENTS = (-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21)

# Rough y-up T-pose joint positions (metres), SMPL joint order, body facing +z, its left at +x.
_REST_JOINTS = np.array([
    [0.00, 0.00, 0.00], [0.06, -0.09, 0.00], [-0.06, -0.09, 0.00], [0.00, 0.11, -0.02],
    [0.10, -0.47, 0.00], [-0.10, -0.47, 0.00], [0.00, 0.24, 0.00], [0.09, -0.87, -0.04],
    [-0.09, -0.87, -0.04], [0.00, 0.30, 0.02], [0.11, -0.93, 0.08], [-0.11, -0.93, 0.08],
    [0.00, 0.52, -0.01], [0.07, 0.43, -0.01], [-0.07, 0.43, -0.01], [0.01, 0.61, 0.04],
    [0.18, 0.46, -0.02], [-0.18, 0.46, -0.02], [0.44, 0.44, -0.04], [-0.44, 0.44, -0.04],
    [0.69, 0.45, -0.04], [-0.69, 0.45, -0.04], [0.77, 0.44, -0.05], [-0.77, 0.44, -0.05]])


def _f32(x: np.ndarray) -> np.ndarray:
    """Rounds to the nearest float32 and stores as float64 (as the release does)."""
    return np.asarray(x, np.float32).astype(np.float64)


def random_smpl_arrays(num_vertices: int = 6890, num_betas: int = 10, seed: int = 0) -> dict:
    """The random model as plain numpy arrays in the official layout (dense ``J_regressor``)."""
    if num_vertices < 24:
        raise ValueError(f"num_vertices must be at least 24, got {num_vertices}")
    rng = np.random.default_rng(seed)
    V, J, B = num_vertices, 24, num_betas
    owner = np.concatenate([np.arange(J), rng.integers(0, J, V - J)])  # every joint owns a vertex
    rng.shuffle(owner)
    v_template = _f32(_REST_JOINTS[owner] + 0.05 * rng.normal(size=(V, 3)))

    weights = 0.05 * rng.random((V, J)) + 1e-3
    weights[np.arange(V), owner] += 1.0
    weights /= weights.sum(axis=1, keepdims=True)
    weights = _f32(weights)

    regressor = np.zeros((J, V))
    per_joint = max(1, min(8, V // J))
    for j in range(J):
        ids = np.flatnonzero(owner == j)
        ids = rng.choice(ids, size=min(per_joint, ids.size), replace=False)
        w = rng.random(ids.size) + 0.5
        regressor[j, ids] = w / w.sum()
    regressor = _f32(regressor)

    shapedirs = _f32(0.01 * rng.normal(size=(V, 3, B)))
    posedirs = _f32(0.005 * rng.normal(size=(V, 3, 9 * (J - 1))))

    num_faces = 2 * V - 4  # a closed genus-0 mesh, as the release (13776 faces for 6890 vertices)
    a = rng.integers(0, V, num_faces)
    d1 = rng.integers(1, V, num_faces)
    d2 = rng.integers(1, V - 1, num_faces)
    d2 = d2 + (d2 >= d1)  # skip d1, so the three corners are distinct
    faces = np.stack([a, (a + d1) % V, (a + d2) % V], axis=1).astype(np.uint32)

    kintree = np.stack([np.array(SMPL_PARENTS, np.int64), np.arange(J, dtype=np.int64)])
    kintree[0, 0] = 4294967295
    return dict(
        v_template=v_template, shapedirs=shapedirs, posedirs=posedirs, J_regressor=regressor,
        J_regressor_prior=regressor.copy(), weights=weights, weights_prior=weights.copy(),
        J=_f32(regressor @ v_template), kintree_table=kintree, f=faces,
        vert_sym_idxs=np.arange(V, dtype=np.int64), bs_style="lbs", bs_type="lrotmin")


@contextlib.contextmanager
def _chumpy_ch_class():
    """Yields a class that pickles exactly like ``chumpy.ch.Ch`` (real chumpy when installed)."""
    try:
        import chumpy  # noqa: F401
        from chumpy.ch import Ch

        yield lambda a: Ch(a)
        return
    except ImportError:
        pass
    saved = {k: sys.modules.get(k) for k in ("chumpy", "chumpy.ch")}
    pkg, mod = types.ModuleType("chumpy"), types.ModuleType("chumpy.ch")

    class Ch:  # state layout of a plain chumpy array: its __dict__ minus two caches
        def __init__(self, x):
            self.__dict__.update(x=np.asarray(x), _dirty_vars=set(), _itr=None, _depends_on_deps={},
                                 _make_dense=False, _make_sparse=False)

    Ch.__module__, Ch.__qualname__ = "chumpy.ch", "Ch"
    mod.Ch, pkg.ch, pkg.Ch = Ch, mod, Ch
    sys.modules.update({"chumpy": pkg, "chumpy.ch": mod})
    try:
        yield Ch
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


def write_random_smpl(path, num_vertices: int = 6890, num_betas: int = 10, seed: int = 0,
                      fmt: str = "pkl", chumpy: bool = False) -> str:
    """Writes a random SMPL-layout model file and returns its path.

    Args:
      path: output file name (written as given, whatever its extension).
      num_vertices: ``V`` (6890 in the release).
      num_betas: ``B``, the number of shape blend shapes.
      seed: random seed; equal seeds give equal models in both formats.
      fmt: ``'pkl'`` (protocol-2 pickle, sparse regressor, as released) or ``'npz'``.
      chumpy: ``'pkl'`` only: pickle ``v_template``, ``shapedirs``, ``posedirs``, ``weights`` and ``J``
        as chumpy arrays, as the release does (needs no chumpy installed).

    Returns:
      ``path`` as a string.
    """
    path = os.fspath(path)
    data = random_smpl_arrays(num_vertices, num_betas, seed)
    if fmt == "npz":
        if chumpy:
            raise ValueError("chumpy=True only applies to fmt='pkl'")
        with open(path, "wb") as fh:
            np.savez(fh, **{k: np.asarray(v) for k, v in data.items()})
        return path
    if fmt != "pkl":
        raise ValueError(f"fmt must be 'pkl' or 'npz', got {fmt!r}")
    import scipy.sparse

    data["J_regressor"] = scipy.sparse.csc_matrix(data["J_regressor"])
    data["J_regressor_prior"] = scipy.sparse.csc_matrix(data["J_regressor_prior"])
    data["pose_training_info"] = {"num_subjects": 1, "num_poses": 1, "seed": seed}
    with contextlib.ExitStack() as stack:
        if chumpy:
            ch = stack.enter_context(_chumpy_ch_class())
            for k in ("v_template", "shapedirs", "posedirs", "weights", "J"):
                data[k] = ch(data[k])
        with open(path, "wb") as fh:
            pickle.dump(data, fh, protocol=2)
    return path
