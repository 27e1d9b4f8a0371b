"""The embedded default: synthetic data, the default template, CPU-sized networks.

    python -m experiments.deform_and_learn --config configs/default.py --workdir workdir/default

Finishes 3 deform-and-learn rounds in minutes on a 2-core CPU. Every number of the papers lives here
under the paper's name, with the equation it belongs to; the CPU-sized choices say so, and so do the
EXTENSIONS (what the papers do not have). Each algorithm's block maps straight onto its dataclass
(``LifterConfig(**c.lifter)``, ``RegistrationConfig(**c.registration)``, ...).

Variants (``--config configs/default.py:VARIANT``): ``smoke`` shrinks everything (tests, a quick
look), ``bench`` is the larger setting where fidelity is measured (3,000 images, the regressor's stem
trained, starting from the network pretrained on other people's fits; 20–36 min on 2 cores).
"""
import ml_collections

from bodyjax import iuv_net, regressor
from bodyjax.loop import compilation_cache


def get_config(variant: str = ""):
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.num_rounds = 3                      # deform-and-learn rounds (Fig. 2 plots 5)
    c.iterate = True                      # False: one registration, one long regressor training (6.3)
    c.distributed = False                 # call jax.distributed.initialize() (multi-host)
    c.stop_after_stages = -1              # testing aid: exit after this many stages (simulated kill)
    c.pictures = True
    c.compilation_cache = compilation_cache.DEFAULT_DIR  # JAX's persistent cache ('' = off)

    c.body = ml_collections.ConfigDict()
    c.body.kind = "default"               # 'default' (the embedded MakeHuman body) or 'smpl'
    c.body.smpl_path = ""                 # 'smpl': the licensed SMPL model file (.pkl / .npz)
    c.body.betas = ()                     # 'smpl': the shape β of the body (empty: the mean shape)
    c.body.uv_table = ""                  # 'smpl': DensePose's UV_Processed.mat (the part charts)
    c.body.pose_blend_shapes = True       # 'smpl': apply SMPL's pose blend shapes ("optionally")
    c.body.h36m_regressor = ""            # 'smpl': J_regressor_h36m.npy for Human3.6M evaluation
                                          # ('joints': the default body's joint + vertex mapping)
    c.body.face_vertices = ""             # 'smpl': JSON of the face keypoints' vertex ids ('' = SMPL's)

    c.data = ml_collections.ConfigDict()
    c.data.source = "synthetic"           # 'synthetic' or 'densepose_coco'
    c.data.data_dir = ""                  # tfds data dir ('' = <workdir>/../data, shared across runs)
    c.data.manual_dir = ""                # DensePose-COCO: the JSONs and COCO images (densepose_coco.py)
    c.data.image_size = 64                # CPU-sized (the paper crops 224 px)
    c.data.train_size = 1800              # CPU-sized: more distinct images beat more epochs (BENCHMARKS)
    c.data.test_size = 150
    c.data.max_points = 160               # ~100-200 DensePose points per person
    c.data.keypoint_set = "coco17"        # the keypoint set of eq. 9, the lifter and the regressor
    c.data.seed = 0
    c.data.test_seed = -1                 # synthetic: the test split's seed (-1: data.seed's own; :bench
                                          # fixes it, so every seed is scored on the same people)
    c.data.lifter_corpus = "synthetic"    # separate 2D keypoints for the lifter (the paper: MPII):
                                          # 'synthetic' (posed bodies, no rendering: the analogue of
                                          # MPII for the synthetic set), a MPII/COCO keypoint JSON
                                          # path, or '' (none)
    c.data.lifter_corpus_size = 10_000    # 'synthetic' corpus size (CPU-sized; tens of thousands cost seconds)

    c.lifter = ml_collections.ConfigDict()   # bodyjax.lifter.LifterConfig (appendix 2 and 5.1)
    c.lifter.hidden = 256                 # CPU-sized (paper-size default 1024)
    c.lifter.num_layers = 8               # "eight linear layers"
    c.lifter.epsilon = 0.1                # ε of eq. 6
    c.lifter.mu_start = 100.0             # μ of eq. 6 decreases from 100 ...
    c.lifter.mu_end = 1.0                 # ... to 1
    c.lifter.angles_deg = (45.0, 60.0, 90.0, 135.0, 180.0, 235.0, 270.0)  # φ of eq. 1
    c.lifter.learning_rate = 1e-3         # CPU-sized short training (paper, 5.1: 2e-4)
    c.lifter.num_epochs = 3               # CPU-sized (paper: 50 per round), over corpus + images. The
                                          # default's fits weigh its depths 0, so its epochs buy only its
                                          # own row: 8 epochs took ~100 s more for ~5 mm lower lifter PA
                                          # (BENCHMARKS, the main job: the compilations, stop 26)
    c.lifter.batch_size = 128             # CPU-sized (paper: 1024)
    c.lifter.knee_weight = 1.0            # EXTENSION (not in the paper): knee-direction prior that breaks
                                          # eq. 1-4's exact depth-mirror ambiguity (bodyjax.losses.l_knee)
    c.lifter.face_weight = 1.0            # EXTENSION: face-direction prior (nose in front of the ears)
    c.lifter.discriminator_keypoints = "body"  # D sees the body keypoints: the face is labelled only
                                          # when seen, so a rotated labelled face would betray the fakes

    c.registration = ml_collections.ConfigDict()  # bodyjax.registration.RegistrationConfig, later rounds
    c.registration.num_steps = 100        # later rounds: 100 passes from the regressor's prediction (5.1)
    c.registration.learning_rate = 0.1    # Adam
    c.registration.w_dense = 1000.0       # ω_dense, eq. 7
    c.registration.w_kp = 1.0             # ω_KP
    c.registration.w_scale = 10.0         # ω_scale (segment-scale smoothness, eq. 10)
    c.registration.w_angle = 0.001        # ω_joint (joint-angle term, eq. 11)
    c.registration.w_det = 1.0            # ω_det
    c.registration.dense_reduction = "mean"
    c.registration.use_depth = True       # z^GAN in eq. 9
    c.registration.w_depth = 0.0          # its weight beside the 2D keypoint terms (1.0: eq. 9 as written).
                                          # EXTENSION 0.0: at the CPU size the lifter's depths move the fits
                                          # away from the dense points' own evidence (BENCHMARKS); the
                                          # lifter is still trained and scored every round
    # Round 1 (5.1): passes from the T-pose with a stiff body (the paper: 300; CPU-sized 100, as the
    # relaxed fit below goes on from it); the other fields follow the later rounds' (linked:
    # --config.registration.w_dense=... changes both) except the depth weight, its own: round 1's
    # lifter is trained on 2D alone. EXTENSION: w_depth 0 (the paper: 1, eq. 9): at the CPU size that
    # lifter's depths are worse than the dense points' own evidence (BENCHMARKS).
    first = dict(num_steps=100, w_scale=100.0, w_angle=1.0, w_depth=0.0)
    c.registration_first = ml_collections.ConfigDict(
        {k: first.get(k, c.registration.get_ref(k)) for k in c.registration.keys()})
    # EXTENSION: round 1 then continues from the stiff fit with a soft body (ω_scale 1), a smaller
    # step and no depths; num_steps 0 = the paper's round 1. The other fields follow the later rounds'.
    relax = dict(num_steps=700, learning_rate=0.05, w_scale=1.0, w_depth=0.0)
    c.registration_relax = ml_collections.ConfigDict(
        {k: relax.get(k, c.registration.get_ref(k)) for k in c.registration.keys()})

    c.regressor = ml_collections.ConfigDict()  # bodyjax.regressor.RegressorConfig (appendix 4, 5.1)
    c.regressor.depth = 18                # CPU-sized (paper: ResNet50)
    c.regressor.width = 32                # CPU-sized (standard 64)
    c.regressor.image_size = 48           # CPU-sized (paper: 224): the 64-px maps resampled to 48 px,
                                          # ~0.55x the network's compute of 64 px (BENCHMARKS)
    c.regressor.input = "iuv"             # EXTENSION (two-stage, as Neural Body Fitting): the regressor
                                          # reads the IUV map predicted from the image ('rgb' = the
                                          # paper; 'parts' = NBF's part map)
    c.regressor.pose_head = "quaternion"  # 132 outputs; 'rot6d' (SPIN) or 'matrix_svd' (NBF)
    c.regressor.learning_rate = 1e-3      # CPU-sized from scratch (paper: 1e-4, ImageNet-pretrained)
    c.regressor.lr_final_fraction = 0.05  # EXTENSION: cosine decay to 5 % within each round (1.0: the
                                          # paper's constant rate; BENCHMARKS)
    c.regressor.num_epochs = 10           # per round, CPU-sized (paper: 30)
    c.regressor.batch_size = 32           # CPU-sized (paper: 30)
    c.regressor.alpha = 1.0               # α of eq. 13 (regression, eq. 14)
    c.regressor.beta = 10.0               # β (dense)
    c.regressor.gamma = 1.0               # γ (keypoints)
    c.regressor.joints3d_weight = 100.0   # EXTENSION: a 4th term of eq. 13, the fits' root-relative 3D
                                          # joints (m²); 0 = eq. 13 as written
    c.regressor.head = "linear"           # the paper's one dense layer ('ief': HMR's iterative error
                                          # feedback, an EXTENSION; not better here, BENCHMARKS)
    c.regressor.coords = False            # EXTENSION (CoordConv): x, y channels appended to the input
    c.regressor.pretrained = regressor.PRETRAINED_IUV_48  # EXTENSION (the paper: ImageNet weights): the
                                          # whole network pretrained on other synthetic people's 2D labels
                                          # alone (dense points, keypoints; tools/pretrain_regressor.py),
                                          # for this network (ResNet18, width 32, IUV at 48 px); '' =
                                          # from scratch; or torchvision-layout ResNet weights
    c.regressor.test_flip = False         # EXTENSION: flip test-time averaging: every prediction (the
                                          # test split's, the later rounds' fit starts, the pictures) is
                                          # the mean of the one on the map and, mirrored back, the one on
                                          # its mirror image (2x the prediction's compute; training is
                                          # unchanged; bodyjax.regressor.mirror)
    c.regressor.freeze_stem = True        # EXTENSION: the pretrained stem (first convolution and
                                          # BatchNorm) not trained: its backward pass is ~43 % of the
                                          # network's step at 48 px on a CPU; the regressor stage 1.5x
                                          # faster for ~1 mm of final test PA (BENCHMARKS)

    c.augment = ml_collections.ConfigDict()  # bodyjax.data.augment.AugmentConfig (not in the paper)
    c.augment.enabled = True              # scale, rotation, shift, colour
    c.augment.flip_prob = 0.0             # no flips on the synthetic set: its renderer mixes the fixed,
                                          # side-specific DensePose part colours into the clothes, so a
                                          # mirrored image contradicts its swapped labels (real data: 0.5)
    c.augment.map_flip_prob = 0.0         # EXTENSION: flips of the label maps the two-stage regressor
                                          # reads (parts swapped, U -> 1 - U on the mirror-symmetric
                                          # charts: exact whatever the image's colours); off: no gain
                                          # measured (BENCHMARKS)

    c.iuv_net = ml_collections.ConfigDict()  # bodyjax.iuv_net.IUVNetConfig: EXTENSION, the first stage
    c.iuv_net.image_size = 64             # of the two-stage regressor (used when regressor.input != 'rgb')
    c.iuv_net.num_epochs = 0              # fine-tuning of the pretrained predictor in round 1: none, it
                                          # is used as shipped (5 epochs took the default's test part
                                          # mIoU 0.330 -> 0.325, the final PA 89.5 -> 88.3 mm, within a
                                          # run's noise, for ~50 s; :bench's regressor learnt on the
                                          # shipped maps: BENCHMARKS). '' pretrained needs epochs here
    c.iuv_net.batch_size = 32
    c.iuv_net.learning_rate = 1e-3
    c.iuv_net.body_weight = 0.5           # EXTENSION: body and background pixels weighted apart in the
                                          # part cross-entropy (None: one mean over all pixels)
    c.iuv_net.pretrained = iuv_net.PRETRAINED_64  # pretrained on other synthetic people's 2D labels
                                          # (tools/pretrain_iuv_net.py); '' = from scratch
    c.iuv_net.test_shifts = 1             # EXTENSION: shift test-time averaging of the maps (1 = one view;
                                          # 2, 4: the part probabilities averaged over the crop shifted
                                          # by a pixel; every map of the run, training and test)

    c.fit_views = ml_collections.ConfigDict()  # bodyjax.data.fit_views.FitViewsConfig: EXTENSION (two-
    c.fit_views.per_fit = 0.0             # stage regressor): every round it also trains on this many views
    c.fit_views.yaw_deg = 180.0           # of each fit rendered into a label map, turned about the vertical
    c.fit_views.limb_mix = 0.5            # by up to this angle, each limb taken from another fit with this
                                          # probability (made from the fits: no ground truth). Off: at equal
                                          # compute no better than more epochs on the images (BENCHMARKS)

    c.loop = ml_collections.ConfigDict()  # bodyjax.loop.deform_and_learn.LoopConfig
    c.loop.registration_chunk = 200       # images per jitted registration call (paper: 10 on a GPU)
    c.loop.use_lifter_depths = True       # z^GAN of eq. 9 from the lifter
    c.loop.lifter_visibility = "labelled"  # body keypoints count as labelled (COCO convention)
    c.loop.lifter_keypoints = "both"      # 'images', 'corpus' (data.lifter_corpus, as the paper's
                                          # MPII) or 'both' (EXTENSION: corpus + the images' keypoints)
    c.loop.keep_best_fits = True          # EXTENSION: SPIN's fits dictionary (a new fit replaces the
                                          # stored one only if its data objective is lower): round 1's
                                          # long fits are kept where 100 passes from the regressor's
                                          # start do worse (BENCHMARKS)
    c.loop.regressor_maps = "predicted"   # two-stage: train on the predicted maps (as at test time)
                                          # or on the rendered label maps ('labels')
    c.loop.workers = 0                    # grain worker processes (0: in the main process)
    c.loop.read_threads = 0               # threads reading records per process (grain's default, 16, is
                                          # for remote storage: ~1.5 ms a record of GIL contention here)
    c.loop.memory_records_mb = 1024.0     # the per-epoch stages read a split's fields into memory up to
                                          # this size (decoding a record ~0.8 ms; 0: always streamed)

    c.evaluation = ml_collections.ConfigDict()
    c.evaluation.table_mpjpe = "mpjpe"    # the table's MPJPE: 'mpjpe' (rescaled to the canonical
                                          # average skeleton, the paper's) or 'mpjpe_target'

    if variant:
        apply_variant(c, variant, "configs/default.py")
    return c


def apply_variant(c, variant: str, where: str):
    """Shrinks (``smoke``) or grows (``bench``) a config in place; shared by every config file."""
    if variant == "smoke":
        c.num_rounds = 2
        c.pictures = False
        c.data.image_size = 32
        c.data.train_size = 16
        c.data.test_size = 8
        c.data.max_points = 64
        c.data.lifter_corpus_size = 256
        c.lifter.hidden = 32
        c.lifter.num_epochs = 2
        c.lifter.batch_size = 8
        c.registration.num_steps = 10
        c.registration_first.num_steps = 20
        c.loop.registration_chunk = 8
        c.regressor.depth = 18
        c.regressor.width = 8
        c.regressor.image_size = 32
        c.regressor.num_epochs = 1
        c.regressor.batch_size = 8
        c.regressor.pretrained = ""       # the shipped regressor is for width 32 at 48 px
        c.regressor.freeze_stem = False   # (so the stem trains)
        c.iuv_net.image_size = 32
        c.iuv_net.pretrained = ""         # the shipped predictor is for 64-px crops
        c.iuv_net.num_epochs = 1
        c.iuv_net.batch_size = 8
    elif variant == "bench":
        c.data.train_size = 3000
        c.data.test_size = 3000           # one test split for every seed, 10x the people of stop 33's
        c.data.test_seed = 0              # (BENCHMARKS: the same network scored 75.2 / 75.8 / 74.1 mm on
                                          # the seeds' own 300-person splits, a spread larger than the
                                          # effects measured); runs pair person by person on it
                                          # (tools/compare_runs.py)
        c.regressor.freeze_stem = False   # fidelity first: the stem trains (~1 mm in the default's
                                          # final test PA; the budget has room for it, BENCHMARKS)
        c.regressor.pretrained = regressor.PRETRAINED_IUV_64_FITS  # EXTENSION: the 2D-pretrained
                                          # network after deform-and-learn's round 1 on 32,000 other
                                          # people (their fits as targets: no 3D label; tools/
                                          # pretrain_regressor.py --targets fits): final test PA
                                          # 85.8 -> 82.4 mm over 3 seeds (16,000 people), 80.3 with
                                          # the predictor's second stage, 78.7 on its maps with
                                          # 32,000 people, 77.1 read at 64 px with flip averaging,
                                          # 75.2 on the predictor's third stage's maps, half of
                                          # them flipped in its training, 74.3 on its fourth's
                                          # (each seed's own 300 test people; 76.1 on the 3,000
                                          # shared now), 74.37 on the maps averaged over four
                                          # shifts (BENCHMARKS). The table's `start PA` scores
                                          # it before the run trains it
        c.regressor.image_size = 64       # the file's input: the maps at their own 64 px (BENCHMARKS:
                                          # 1.4 mm of the file's one-view test PA over 48 px, seed 0)
        c.regressor.test_flip = True      # EXTENSION (BENCHMARKS; the table's `1-view PA` column
                                          # is the prediction without it)
        c.regressor.learning_rate = 1e-4  # the paper's rate for fine-tuning a pretrained network: at
                                          # 1e-3 the run ended worse than the network it started from
        c.iuv_net.test_shifts = 4         # EXTENSION: the maps averaged over the four 1-px shifts of
                                          # the predictor's 2-px grid (BENCHMARKS: test part mIoU 0.363
                                          # -> 0.387, the untrained file's test PA 76.6 -> 75.1 mm, seed 0)
    else:
        raise ValueError(f"unknown variant {variant!r} of {where} (known: smoke, bench)")
