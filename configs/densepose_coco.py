"""Real data: DensePose-COCO from a manual directory, the paper's networks.

    python -m experiments.deform_and_learn --config configs/densepose_coco.py \
        --config.data.manual_dir=/path/to/densepose --workdir workdir/densepose

``manual_dir`` holds densepose_coco_2014_train.json, densepose_coco_2014_minival.json and the COCO
train2014/ and val2014/ images (see bodyjax/data/tfds_builders.py). With ``--config.body.kind=smpl``
and the paths of the SMPL model file and DensePose's UV_Processed.mat (``body.smpl_path``,
``body.uv_table``) the body is SMPL's mean shape and the (I, U, V) annotations map exactly onto it
(the README's "Real data" section); the default MakeHuman body's charts map them only approximately.
There is no 3D ground truth: evaluation reports 2D errors. Variants: ``:smoke``.
"""
from configs import default, paper


def get_config(variant: str = ""):
    c = paper.get_config()
    c.data.source = "densepose_coco"
    c.data.manual_dir = ""
    c.data.train_size = -1                # all usable annotations
    c.data.test_size = -1
    c.augment.flip_prob = 0.5             # real images: left/right flips with the label swap
    c.augment.map_flip_prob = 0.5         # and the two-stage regressor's maps (regressor.input='iuv'):
                                          # parts swapped; U, V kept only where the charts mirror
                                          # as 1 - U (not DensePose's on SMPL: body.chart_mirror)
    if variant:
        default.apply_variant(c, variant, "configs/densepose_coco.py")
    return c
