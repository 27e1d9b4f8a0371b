"""Poses the default body in a few poses and writes a picture: front and side views.

    python -m experiments.pose_demo --workdir workdir/pose_demo

Writes ``pose_demo.png`` (one column per pose: shaded front view, side view, DensePose parts).
"""
from __future__ import annotations

import os

import cv2
import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from bodyjax import body, render
from bodyjax.loop.pictures import render_view
from bodyjax.rotations import axis_angle_to_matrix

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", "workdir/pose_demo", "Where to write the picture.")
flags.DEFINE_integer("size", 256, "Height of each panel in pixels.")

_DEG = np.pi / 180.0


def demo_poses(template: body.BodyTemplate) -> dict[str, np.ndarray]:
    """A few recognisable poses as ``(24, 3)`` axis-angles (hinges bent along their flexion axes)."""
    hinge = np.asarray(template.hinge_axes)
    x = np.array([1.0, 0.0, 0.0])
    z = np.array([0.0, 0.0, 1.0])

    def pose(**joints):
        a = np.zeros((24, 3))
        for name, value in joints.items():
            a[body.JOINT_NAMES.index(name)] = value
        return a

    return {
        "rest": pose(),
        "walk": pose(L_hip=-25 * _DEG * x, R_hip=20 * _DEG * x, R_knee=40 * _DEG * hinge[5],
                     L_shoulder=35 * _DEG * z, R_shoulder=-35 * _DEG * z,
                     L_elbow=20 * _DEG * hinge[18], R_elbow=30 * _DEG * hinge[19]),
        "sit": pose(L_hip=-85 * _DEG * x, R_hip=-85 * _DEG * x, L_knee=85 * _DEG * hinge[4],
                    R_knee=85 * _DEG * hinge[5], L_shoulder=30 * _DEG * z,
                    R_shoulder=-30 * _DEG * z, L_elbow=40 * _DEG * hinge[18],
                    R_elbow=40 * _DEG * hinge[19]),
        "reach": pose(L_shoulder=(30 * _DEG) * z, R_shoulder=-120 * _DEG * x + 40 * _DEG * z,
                      spine2=10 * _DEG * x, L_knee=10 * _DEG * hinge[4]),
    }


def main(argv):
    del argv
    template = body.default_template()
    poses = demo_poses(template)
    params = body.rest_params(template, (len(poses),))
    params = params.replace(pose=jnp.asarray(np.stack(list(poses.values())), jnp.float32))
    front = jax.jit(body.forward)(template, params)
    side_rot = axis_angle_to_matrix(jnp.asarray([0.0, 90 * _DEG, 0.0]))
    side = jax.jit(body.forward)(template, params.replace(
        rotation=jnp.broadcast_to(side_rot, params.rotation.shape)))

    parts = render.part_colors(np.asarray(template.part_ids))
    columns = []
    for i in range(len(poses)):
        pick = lambda o: jax.tree_util.tree_map(lambda a: a[i], o)  # noqa: E731
        columns.append(np.concatenate([
            render_view(template, pick(front).vertices, FLAGS.size),
            render_view(template, pick(side).vertices, FLAGS.size),
            render_view(template, pick(front).vertices, FLAGS.size, parts, shaded=False),
        ], axis=0))
    sheet = np.concatenate(columns, axis=1)
    for i, name in enumerate(poses):
        cv2.putText(sheet, name, (i * FLAGS.size + 8, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 1)
    os.makedirs(FLAGS.workdir, exist_ok=True)
    path = os.path.join(FLAGS.workdir, "pose_demo.png")
    cv2.imwrite(path, sheet)
    print(f"wrote {path} ({len(poses)} poses: {', '.join(poses)})")


if __name__ == "__main__":
    app.run(main)
