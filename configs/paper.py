"""The paper's sizes and weights (appendix 5.1) on the synthetic data; a GPU/TPU configuration.

    python -m experiments.deform_and_learn --config configs/paper.py --workdir workdir/paper

Every extension of the CPU default is off here: the paper's eq. 6 without priors, the RGB regressor,
no rendered views of the fits, no fits dictionary, the stiff round 1, the lifter on a separate 2D corpus only. Variants: ``:smoke`` (a quick look at the paper's settings at tiny sizes).
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
    c.lifter.num_epochs = 50
    c.lifter.batch_size = 1024
    c.lifter.knee_weight = 0.0            # the paper's eq. 6 exactly
    c.lifter.face_weight = 0.0            # (D on the body keypoints, inherited: data labelling, not eq. 6)
    c.loop.registration_chunk = 1000      # one jitted call fits the whole chunk (paper: 10)
    c.loop.keep_best_fits = False         # the paper keeps the latest fits
    c.registration_relax.num_steps = 0    # the paper's stiff round 1, nothing after it
    c.registration.w_depth = 1.0          # eq. 9 as written: z^GAN weighs as the 2D keypoints (both rounds)
    c.registration_first.w_depth = 1.0
    c.registration_first.num_steps = 300  # "300 passes" from the T-pose (5.1)
    c.loop.lifter_keypoints = "corpus"    # the paper trains the lifter on a separate 2D corpus (MPII);
    c.data.lifter_corpus = "synthetic"    # here its synthetic analogue (or a MPII JSON path)
    c.data.lifter_corpus_size = 40_000    # ~40k people annotated in MPII
    c.regressor.depth = 50
    c.regressor.width = 64
    c.regressor.image_size = 224
    c.regressor.input = "rgb"             # the paper's regressor reads the image
    c.fit_views.per_fit = 0.0             # no rendered views of the fits (they are label maps)
    c.regressor.learning_rate = 1e-4
    c.regressor.lr_final_fraction = 1.0   # a constant rate
    c.regressor.joints3d_weight = 0.0     # eq. 13 as written
    c.regressor.num_epochs = 30
    c.regressor.batch_size = 30
    c.iuv_net.image_size = 224
    c.regressor.pretrained = ""           # the paper: ImageNet weights (give a torchvision ResNet50 file)
    c.regressor.freeze_stem = False       # the paper fine-tunes the whole network
    c.regressor.test_flip = False         # one prediction per image
    c.iuv_net.pretrained = ""             # (the two-stage regressor is off here; when turned on, its
    c.iuv_net.num_epochs = 5              # predictor trains in round 1 on the run's dense labels)
    c.iuv_net.test_shifts = 1             # one view per map
    if variant:
        default.apply_variant(c, variant, "configs/paper.py")
    return c
