"""Real data: DensePose-COCO from a manual directory, the paper's networks.

    python -m experiments.deform_and_learn --config configs/densepose_coco.py \
        --config.data.manual_dir=/path/to/densepose --workdir workdir/densepose

``manual_dir`` holds densepose_coco_2014_train.json, densepose_coco_2014_minival.json and the COCO
train2014/ and val2014/ images (see bodyjax/data/tfds_builders.py). The default template's charts map
DensePose (I, U, V) onto the body only approximately; SMPL with the official per-vertex IUV table is
the exact path. There is no 3D ground truth: evaluation reports 2D errors.
"""
from configs import paper


def get_config(variant: str = ""):
    c = paper.get_config()
    c.data.source = "densepose_coco"
    c.data.manual_dir = ""
    c.data.train_size = -1                # all usable annotations
    c.data.test_size = -1
    c.regressor.flip_prob = 0.5           # real images: left/right flips with the label swap
    if variant:
        raise ValueError(f"configs/densepose_coco.py has no variant {variant!r}")
    return c
