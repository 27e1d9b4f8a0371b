"""The embedded default: synthetic data, the default template, CPU-sized networks.

    python -m experiments.deform_and_learn --config configs/default.py --workdir workdir/default

Finishes 3 deform-and-learn rounds in minutes on a 2-core CPU. Every number of the papers lives here
under the paper's name, with the equation it belongs to; the CPU-sized choices say so.
Variants: ``--config configs/default.py:smoke`` shrinks everything further (tests, a quick look).
"""
import ml_collections


def get_config(variant: str = ""):
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.num_rounds = 3                      # deform-and-learn rounds (Fig. 2 plots 5)
    c.iterate = True                      # False: one registration, one long regressor training (6.3)
    c.distributed = False                 # call jax.distributed.initialize() (multi-host)
    c.stop_after_stages = -1              # testing aid: exit after this many stages (simulated kill)
    c.pictures = True

    c.data = ml_collections.ConfigDict()
    c.data.source = "synthetic"           # 'synthetic' or 'densepose_coco'
    c.data.data_dir = ""                  # tfds data dir ('' = <workdir>/../data, shared across runs)
    c.data.manual_dir = ""                # DensePose-COCO: the JSONs and COCO images (densepose_coco.py)
    c.data.image_size = 64                # CPU-sized (the paper crops 224 px)
    c.data.train_size = 600
    c.data.test_size = 150
    c.data.max_points = 160               # ~100-200 DensePose points per person
    c.data.keypoint_set = "coco17"        # the keypoint set of eq. 9, the lifter and the regressor
    c.data.seed = 0

    c.lifter = ml_collections.ConfigDict()   # appendix 2 and 5.1
    c.lifter.hidden = 256                 # CPU-sized (paper-size default 1024)
    c.lifter.num_layers = 8               # "eight linear layers"
    c.lifter.epsilon = 0.1                # ε of eq. 6
    c.lifter.mu_start = 100.0             # μ of eq. 6 decreases from 100 ...
    c.lifter.mu_end = 1.0                 # ... to 1
    c.lifter.angles_deg = (45.0, 60.0, 90.0, 135.0, 180.0, 235.0, 270.0)  # φ of eq. 1
    c.lifter.learning_rate = 1e-3         # CPU-sized short training (paper, 5.1: 2e-4)
    c.lifter.epochs = 20                  # CPU-sized (paper: 50 per round)
    c.lifter.batch_size = 128             # CPU-sized (paper: 1024)
    c.lifter.use_depths = True            # z^GAN in eq. 9
    c.lifter.knee_weight = 1.0            # EXTENSION (not in the paper): knee-direction prior that breaks
                                          # eq. 1-4's exact depth-mirror ambiguity (bodyjax/lifter.py)
    c.lifter.face_weight = 1.0            # EXTENSION: face-direction prior (nose in front of the ears)
    c.lifter.discriminator_keypoints = "body"  # D sees the body keypoints: the face is labelled only
                                          # when seen, so a rotated labelled face would betray the fakes
    c.lifter.visibility = "labelled"      # body keypoints count as labelled (COCO convention)

    c.registration = ml_collections.ConfigDict()  # appendix 3 and 5.1
    c.registration.learning_rate = 0.1
    c.registration.w_dense = 1000.0       # ω_dense, eq. 7
    c.registration.w_kp = 1.0             # ω_KP
    c.registration.w_scale = 10.0         # ω_scale
    c.registration.w_joint = 0.001        # ω_joint
    c.registration.w_det = 1.0            # ω_det
    c.registration.first_steps = 300      # round 1: 300 forward-backward passes from the T-pose ...
    c.registration.first_w_scale = 100.0  # ... with a stiff body
    c.registration.first_w_joint = 1.0
    c.registration.later_steps = 100      # later rounds: 100 passes from the regressor's prediction
    c.registration.batch_size = 200       # images per jitted call (paper: 10 on a GPU)
    c.registration.dense_reduction = "mean"

    c.regressor = ml_collections.ConfigDict()  # appendix 4 and 5.1
    c.regressor.depth = 18                # CPU-sized (paper: ResNet50)
    c.regressor.width = 32                # CPU-sized (standard 64)
    c.regressor.image_size = 64           # CPU-sized (paper: 224)
    c.regressor.pose_head = "quaternion"  # 132 outputs; 'rot6d' (SPIN) or 'matrix_svd' (NBF)
    c.regressor.learning_rate = 1e-3      # CPU-sized from scratch (paper: 1e-4, ImageNet-pretrained)
    c.regressor.epochs = 8                # per round, CPU-sized (paper: 30)
    c.regressor.batch_size = 32           # CPU-sized (paper: 30)
    c.regressor.alpha = 1.0               # α of eq. 13 (regression, eq. 14)
    c.regressor.beta = 10.0               # β (dense)
    c.regressor.gamma = 1.0               # γ (keypoints)
    c.regressor.augment = True            # scale, rotation, flip with left/right swap, colour
    c.regressor.flip_prob = 0.0           # no flips on the synthetic set: its renderer mixes the fixed,
                                          # side-specific DensePose part colours into the clothes, so a
                                          # mirrored image contradicts its swapped labels (real data: 0.5)
    c.regressor.pretrained = ""           # torchvision-layout ResNet50 weights (.safetensors/.npz)

    if variant == "smoke":
        c.num_rounds = 2
        c.pictures = False
        c.data.image_size = 32
        c.data.train_size = 16
        c.data.test_size = 8
        c.data.max_points = 64
        c.lifter.hidden = 32
        c.lifter.epochs = 2
        c.lifter.batch_size = 8
        c.registration.first_steps = 20
        c.registration.later_steps = 10
        c.registration.batch_size = 8
        c.regressor.width = 8
        c.regressor.image_size = 32
        c.regressor.epochs = 1
        c.regressor.batch_size = 8
    elif variant:
        raise ValueError(f"unknown variant {variant!r} of configs/default.py (known: smoke)")
    return c
