"""The SMPL body model (Loper et al. 2015) and the way from an SMPL model to the loop's body.

Layer: pure math (the model) and its file boundary. Modules: :mod:`bodyjax.smpl.model`
(:class:`SMPLModel`, :func:`smpl_forward`, :func:`load_smpl`; the file formats themselves are in
:mod:`bodyjax.formats.smpl_file`) and :mod:`bodyjax.smpl.as_body` (:func:`to_body`,
:func:`body_from_config`). Every public name is importable from ``bodyjax.smpl``.
"""
from bodyjax.formats.smpl_file import (NUM_DENSEPOSE_PARTS, REQUIRED_FIELDS, WEIGHT_SUM_TOLERANCE,
                                       load_densepose_iuv)
from bodyjax.smpl.as_body import (COCO17_NAMES, DENSEPOSE_PART_MIRROR, FRAME, SEGMENT_PARTS,
                                  SMPL_FACE_VERTICES, body_from_config, mirror_map, to_body)
from bodyjax.smpl.model import SMPLModel, SMPLOutput, load_smpl, smpl_forward

__all__ = [
    "NUM_DENSEPOSE_PARTS", "REQUIRED_FIELDS", "WEIGHT_SUM_TOLERANCE", "SMPLModel", "SMPLOutput",
    "smpl_forward", "load_smpl", "load_densepose_iuv", "to_body", "body_from_config", "mirror_map",
    "FRAME", "SMPL_FACE_VERTICES", "COCO17_NAMES", "SEGMENT_PARTS", "DENSEPOSE_PART_MIRROR",
]
