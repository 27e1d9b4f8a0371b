"""Data: the fixed-shape sample record, the synthetic data set, real-format loaders, builders.

Submodules: :mod:`bodyjax.data.sample` (the record), :mod:`bodyjax.data.synthetic`,
:mod:`bodyjax.data.densepose_coco`, :mod:`bodyjax.data.mpii`, :mod:`bodyjax.data.h36m`,
:mod:`bodyjax.data.transforms` (crops and flips), :mod:`bodyjax.data.tfds_builders` (array_record
data sets without TensorFlow) and :mod:`bodyjax.data.pipeline` (reading them back, grain loaders).
"""
