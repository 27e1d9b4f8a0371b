"""Contact sheet of synthetic samples with their annotations drawn.

    python tools/contact_sheet.py --out contact_sheet.png --seed 0

Writes a 4 × 4 grid (by default) of samples. Each tile shows the rendered image (upscaled) with the
dense correspondences (dots coloured by the DensePose part of their vertex), the visible keypoints
(white dots) and the skeleton lines between visible keypoints. Below each image: the IUV part map.
"""
from __future__ import annotations

import argparse
import os
import sys

import cv2
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bodyjax import body, render  # noqa: E402
from bodyjax.data import synthetic  # noqa: E402

# COCO-17 skeleton (keypoint index pairs).
COCO_EDGES = ((0, 1), (0, 2), (1, 3), (2, 4), (5, 6), (5, 7), (7, 9), (6, 8), (8, 10), (5, 11),
              (6, 12), (11, 12), (11, 13), (13, 15), (12, 14), (14, 16))


def skeleton_edges(template: body.BodyTemplate) -> tuple:
    if template.keypoint_set == "coco17":
        return COCO_EDGES
    return tuple((j, p) for j, p in enumerate(template.parents) if p >= 0)


def draw_tile(sample: dict, extras: dict, template: body.BodyTemplate, zoom: int) -> np.ndarray:
    """One BGR tile: annotated image on top of its part map."""
    img = cv2.resize(sample["image"][..., ::-1], None, fx=zoom, fy=zoom,
                     interpolation=cv2.INTER_NEAREST)
    img = np.ascontiguousarray(img)
    part_rgb = render.part_colors(np.arange(25))
    part_ids = np.asarray(template.part_ids)

    def pt(xy):
        # pixel centre (x, y) -> centre of the upscaled pixel
        return int(round((xy[0] + 0.5) * zoom - 0.5)), int(round((xy[1] + 0.5) * zoom - 0.5))

    for xy, v, m in zip(sample["dense_xy"], sample["dense_vertex"], sample["dense_mask"]):
        if m > 0:
            c = part_rgb[part_ids[v]][::-1] * 255
            cv2.circle(img, pt(xy), max(1, zoom // 2), tuple(float(x) for x in c), -1)
    kp, vis = sample["keypoints"], sample["keypoint_visible"]
    for a, b in skeleton_edges(template):
        if vis[a] > 0 and vis[b] > 0:
            cv2.line(img, pt(kp[a]), pt(kp[b]), (255, 255, 255), 1, cv2.LINE_AA)
    for k in range(len(kp)):
        if vis[k] > 0:
            cv2.circle(img, pt(kp[k]), zoom + 1, (0, 0, 0), -1)
            cv2.circle(img, pt(kp[k]), zoom, (255, 255, 255), -1)
    iuv = extras["iuv"]
    parts = part_rgb[iuv[..., 0].astype(int)][..., ::-1]
    parts[iuv[..., 0] == 0] = 1.0
    parts = cv2.resize((parts * 255).astype(np.uint8), None, fx=zoom, fy=zoom,
                       interpolation=cv2.INTER_NEAREST)
    n_dense = int(sample["dense_mask"].sum())
    n_kp = int(vis.sum())
    cv2.putText(parts, f"{n_dense} pts {n_kp} kp", (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([img, parts], axis=0)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="contact_sheet.png")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--rows", type=int, default=4)
    parser.add_argument("--cols", type=int, default=4)
    parser.add_argument("--zoom", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=128)
    args = parser.parse_args(argv)

    template = body.default_template()
    cfg = synthetic.SyntheticConfig(image_size=args.image_size)
    n = args.rows * args.cols
    tiles = [draw_tile(s, e, template, args.zoom)
             for s, e in synthetic.generate(template, cfg, args.seed, n, args.start, with_extras=True)]
    h, w = tiles[0].shape[:2]
    pad = 4
    sheet = np.full((args.rows * (h + pad) + pad, args.cols * (w + pad) + pad, 3), 40, np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, args.cols)
        y, x = pad + r * (h + pad), pad + c * (w + pad)
        sheet[y:y + h, x:x + w] = tile
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    cv2.imwrite(args.out, sheet)
    print(f"wrote {args.out} ({n} samples, seed {args.seed}, start {args.start})")


if __name__ == "__main__":
    main()
