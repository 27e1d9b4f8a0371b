"""Random plausible body parameters for tests (shared by the augmentation and regressor tests)."""
import numpy as np

from bodyjax import body


def rot_y(phi: float) -> np.ndarray:
    """The rotation by ``phi`` about the vertical (y) axis, float64 ``(3, 3)``."""
    c, s = np.cos(phi), np.sin(phi)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def random_params(rng: np.random.Generator, m: int, size: int) -> body.BodyParams:
    """Pixel-unit :class:`BodyParams` (float32 NumPy) of m plausible people in size×size images."""
    pose = rng.normal(0.0, 0.25, (m, 24, 3))
    pose[:, 0] = 0.0
    return body.BodyParams(
        pose=pose.astype(np.float32),
        segment_scales=rng.uniform(0.9, 1.1, (m, 24)).astype(np.float32),
        rotation=np.stack([rot_y(p) for p in rng.uniform(-np.pi, np.pi, m)]).astype(np.float32),
        scale=rng.uniform(0.4, 0.5, m).astype(np.float32) * size,
        translation=((size - 1) / 2 + rng.uniform(-0.05, 0.05, (m, 2)) * size).astype(np.float32),
    )
