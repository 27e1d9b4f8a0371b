"""The body regressor (appendix section 4, eq. 13–14): a ResNet maps an image to θ = [a, S, R, s, t].

Layer: algorithms. One job per module:

* :mod:`bodyjax.regressor.head` — the head's output layout, decoding to
  :class:`~bodyjax.body.BodyParams` and the representation eq. 14 compares;
* :mod:`bodyjax.regressor.network` — the input encodings (RGB, part maps, IUV maps) and the Flax
  ResNet + head;
* :mod:`bodyjax.regressor.mirror` — left/right mirrors of the input and the output, and their mean
  (flip test-time averaging);
* :mod:`bodyjax.regressor.model` — :class:`RegressorConfig`, the train state, eq. 13, the jitted
  ``train_step`` / ``eval_step`` and ``predict``.

Every public name is importable from ``bodyjax.regressor``.
"""
from bodyjax.regressor.head import (HeadOutput, POSE_DIMS, POSE_HEADS, decode_head, encode_head,
                                    head_size, pose_rotations, regression_vectors, rest_head,
                                    split_head)
from bodyjax.regressor.mirror import average_params, mirror_images, mirror_maps, mirror_params
from bodyjax.regressor.model import (NETWORK_FIELDS, PRETRAINED_IUV_48, PRETRAINED_IUV_64_FITS, STEM,
                                     Prediction, RegressorConfig, RegressorState, cpu_config, create_state,
                                     init_key, eval_step, is_params_file, load_params, loss_terms, make_mesh,
                                     predict, replicate, save_params, train_step)
from bodyjax.regressor.network import (HEADS, IMAGENET_MEAN, IMAGENET_STD, INPUTS, Regressor, encode_maps,
                                       input_channels, network_input, preprocess)

__all__ = [
    "HeadOutput", "POSE_DIMS", "POSE_HEADS", "decode_head", "encode_head", "head_size", "pose_rotations",
    "regression_vectors", "rest_head", "split_head", "Prediction", "RegressorConfig", "RegressorState",
    "NETWORK_FIELDS", "PRETRAINED_IUV_48", "PRETRAINED_IUV_64_FITS", "STEM", "is_params_file", "load_params",
    "save_params", "cpu_config", "create_state", "init_key", "eval_step", "loss_terms", "make_mesh", "predict",
    "replicate", "train_step", "HEADS", "IMAGENET_MEAN", "IMAGENET_STD", "INPUTS", "Regressor", "encode_maps",
    "input_channels", "network_input", "preprocess", "average_params", "mirror_images", "mirror_maps",
    "mirror_params",
]
