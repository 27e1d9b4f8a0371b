"""A 2D keypoint corpus for the lifter: the data set's people, projected, not rendered.

The paper trains its lifter on a separate corpus of 2D keypoints (MPII); this is its synthetic
analogue. Person ``i`` of corpus seed ``s`` is drawn exactly like a data-set person (pose, segment
scales, rotation, camera: :func:`~bodyjax.data.synthetic.scene.draw_people` and
:func:`~bodyjax.data.synthetic.scene.frame`) but from :func:`corpus_rng` ``(s, i)``, a stream that no
data-set sample uses, so the corpus never holds a person of the data set. Only the forward pass is
run (its vertex box frames the person), no rasteriser: tens of thousands of poses take seconds.

Keypoints are labelled the way an annotator labels them (:func:`labelled_keypoints`).
"""
from __future__ import annotations

from typing import Sequence

import jax
import numpy as np

from bodyjax import body
from bodyjax.data import sample as sample_lib
from bodyjax.data.synthetic import scene
from bodyjax.data.synthetic.config import SyntheticConfig

#: Spawn-key tag of the corpus streams (see :func:`corpus_rng`).
CORPUS_STREAM = 0x6C696674
#: People drawn and posed together.
_BLOCK = 1024
#: The face keypoints and the threshold on the cosine between a face point's outward direction and
#: the direction to the camera above which :func:`labelled_keypoints` labels it. Chosen for the best
#: agreement with the rendered data set's z-buffer visibility (300 samples of seed 100; about 0.9 on
#: other seeds): the nose and an ear still show on the contour when they point up to ~115-120° away
#: from the camera, an eye when it points within ~75° of it (the agreement is flat from 0.2 to 0.35;
#: 0.25 keeps the near eye of a head seen in profile, cosine 0.29, as the renderer does).
FACE_THRESHOLDS = {"nose": -0.45, "left_eye": 0.25, "right_eye": 0.25, "left_ear": -0.5, "right_ear": -0.5}


def corpus_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of person ``index`` of the corpus with this ``seed``.

    ``SeedSequence(seed, spawn_key=(CORPUS_STREAM, index))``: NumPy keeps spawned streams apart from
    the stream of a plain entropy list, so no data-set sample (``default_rng([seed', i])``) shares it.
    """
    return np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(CORPUS_STREAM, int(index))))


def labelled_keypoints(keypoints3d: np.ndarray, keypoints2d: np.ndarray, names: Sequence[str],
                       size: int) -> np.ndarray:
    """Which keypoints an annotator labels (COCO convention ``v > 0``), decided geometrically.

    * every keypoint: its projection is inside the image (nearest pixel centre in ``0..size-1``);
    * body keypoints (shoulders .. ankles, the joints): labelled whenever inside, seen or occluded;
    * face keypoints (nose, eyes, ears): labelled only when seen. Without a z-buffer this is the
      direction the point faces: its outward direction ``d = p − c`` from the head centre ``c`` (the
      midpoint of the ears) must point towards the camera (``−z``), ``−d_z / |d| >``
      :data:`FACE_THRESHOLDS` ``[name]``. So the nose and eyes are labelled when the face is turned
      towards the camera, an eye not when the head is turned so far that the nose hides it, and an
      ear when that side of the head faces the camera. Occlusion by the arms is not modelled.

    Args:
      keypoints3d: ``(..., K, 3)`` camera-frame keypoints (x right, y down, z away from the camera).
      keypoints2d: ``(..., K, 2)`` their projections, pixels.
      names: the ``K`` keypoint names (the face rule applies when both ears are among them).
      size: image side, pixels.

    Returns:
      ``(..., K)`` float32 in {0, 1}.
    """
    kp3 = np.asarray(keypoints3d, np.float64)
    kp2 = np.asarray(keypoints2d, np.float64)
    pix = np.rint(kp2)
    labelled = np.all((pix >= 0) & (pix <= size - 1), axis=-1) & np.all(np.isfinite(kp2), axis=-1)
    index = {n: k for k, n in enumerate(names)}
    if "left_ear" in index and "right_ear" in index:
        centre = 0.5 * (kp3[..., index["left_ear"], :] + kp3[..., index["right_ear"], :])
        for name, threshold in FACE_THRESHOLDS.items():
            if name in index:
                k = index[name]
                d = kp3[..., k, :] - centre
                facing = -d[..., 2] / np.maximum(np.linalg.norm(d, axis=-1), 1e-12)
                labelled[..., k] &= facing > threshold
    return labelled.astype(np.float32)


def pose_corpus(template: body.BodyTemplate, cfg: SyntheticConfig = SyntheticConfig(), seed: int = 0,
                num_poses: int = 1, with_params: bool = False) -> dict:
    """``num_poses`` people of the corpus ``seed``, as 2D keypoints with annotator labels.

    Args:
      template: the body.
      cfg: the data-set options (the people, the image size and the keypoint set).
      seed: the corpus seed (its streams are :func:`corpus_rng`, apart from the data set's).
      num_poses: how many people.
      with_params: also return the people's parameters as the record's ``gt_*`` fields
        (:func:`bodyjax.data.sample.params_to_record`).

    Returns:
      ``{'keypoints': (n, K, 2) float32 pixels, 'keypoint_visible': (n, K) float32}`` (plus
      ``gt_pose (n, 24, 3)``, ``gt_segment_scales``, ``gt_rotation``, ``gt_scale``,
      ``gt_translation`` with ``with_params``). The keypoints are computed as the data set's:
      ``s · (x, y) + t`` of the posed keypoints, in float64, stored as float32.
    """
    if num_poses < 1:
        raise ValueError(f"pose_corpus: num_poses must be at least 1, got {num_poses}")
    template = body.with_keypoints(template, cfg.keypoint_set)
    keypoints, visible, params = [], [], []
    for lo in range(0, num_poses, _BLOCK):
        rngs = [corpus_rng(seed, i) for i in range(lo, min(lo + _BLOCK, num_poses))]
        people = scene.draw_people(rngs, template, cfg)
        box_lo, box_hi, kp3 = scene.extent_and_keypoints(template, people)
        cams = [scene.frame(rng, a, b, cfg) for rng, a, b in zip(rngs, box_lo, box_hi)]
        s = np.array([c[0] for c in cams], np.float32)
        t = np.stack([c[1] for c in cams])
        kp3 = np.asarray(kp3, np.float64)
        kp2 = kp3[..., :2] * s[:, None, None].astype(np.float64) + t[:, None, :].astype(np.float64)
        keypoints.append(kp2.astype(np.float32))
        visible.append(labelled_keypoints(kp3, kp2, template.keypoint_names, cfg.image_size))
        if with_params:
            params.append(scene.framed(people, s, t))
    out = {"keypoints": np.concatenate(keypoints), "keypoint_visible": np.concatenate(visible)}
    if with_params:
        out.update(sample_lib.params_to_record(
            jax.tree_util.tree_map(lambda *a: np.concatenate(a), *params), "gt"))
    return out
