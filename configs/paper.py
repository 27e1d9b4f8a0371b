"""The paper's sizes and weights (appendix 5.1) on the synthetic data; a GPU/TPU configuration.

    python -m experiments.deform_and_learn --config configs/paper.py --workdir workdir/paper
"""
from configs import default


def get_config(variant: str = ""):
    c = default.get_config()
    c.num_rounds = 5
    c.data.image_size = 224
    c.data.train_size = 40_000            # ~40k DensePose-COCO training images in the paper
    c.data.test_size = 2_000
    c.data.max_points = 200
    c.lifter.hidden = 1024
    c.lifter.learning_rate = 2e-4
    c.lifter.epochs = 50
    c.lifter.batch_size = 1024
    c.lifter.knee_weight = 0.0            # the paper's eq. 6 exactly
    c.lifter.face_weight = 0.0            # (D on the body keypoints, inherited: data labelling, not eq. 6)
    c.registration.batch_size = 1000      # one jitted call fits the whole chunk (paper: 10)
    c.regressor.depth = 50
    c.regressor.width = 64
    c.regressor.image_size = 224
    c.regressor.learning_rate = 1e-4
    c.regressor.epochs = 30
    c.regressor.batch_size = 30
    if variant:
        raise ValueError(f"configs/paper.py has no variant {variant!r}")
    return c
