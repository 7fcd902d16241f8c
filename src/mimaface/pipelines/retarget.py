"""Driving motion -> the motion to render for the source (its face shape, its crop frame).

``relative`` (the default, as FOMM and LivePortrait do for cross-identity): each frame's change
from a reference is added to the source's own coefficients, so the source keeps its framing and
only the *motion* transfers. For a driving video (or any motion of several frames) the reference
is the driving's first frame: the source keeps its pose and resting expression, translation moves
in units of the face's size and scale changes by the same ratio. A single driving frame (an image)
has no motion of its own, so its reference is a frontal head (yaw = pitch = roll = 0) with the
source's own expression and gaze: the source takes the driving's expression and gaze as they are
and its head turns by the driving's rotation away from frontal, keeping its own translation and
scale. ``absolute``: the driving coefficients as they are (pose in the normalised image frame:
origin at the centre, unit = half the height). Both render with the source's identity (face
shape). Per-group multipliers scale the change from the reference; ``keep_pose`` / ``keep_gaze``
hold the source's own.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import numpy as np

from mimaface.errors import InputError
from mimaface.face3d.coefficients import MotionCoefficients
from mimaface.values import is_finite_number


@dataclass
class RetargetConfig:
    mode: Literal["relative", "absolute"] = "relative"
    pose_multiplier: float = 1.0
    expression_multiplier: float = 1.0
    gaze_multiplier: float = 1.0
    keep_pose: bool = False
    keep_gaze: bool = False

    def __post_init__(self) -> None:
        if self.mode not in ("relative", "absolute"):
            raise InputError(f"mode must be 'relative' or 'absolute', got {self.mode!r}")
        for name in ("pose_multiplier", "expression_multiplier", "gaze_multiplier"):
            if not is_finite_number(getattr(self, name)):
                raise InputError(f"{name} must be a finite number, got {getattr(self, name)!r}")


def retarget(source: MotionCoefficients, driving: MotionCoefficients, config: RetargetConfig | None = None) -> MotionCoefficients:
    """Per-frame coefficients for the source: ``driving.num_frames`` frames, the source's identity and frame."""
    cfg = config or RetargetConfig()
    if source.expression_names != driving.expression_names:
        raise InputError("the source and driving coefficients come from different face models")
    n = driving.num_frames
    src_pose, src_expr, src_gaze = source.pose[0], source.expression[0], source.gaze[0]
    mp, me, mg = cfg.pose_multiplier, cfg.expression_multiplier, cfg.gaze_multiplier
    if cfg.mode == "relative":
        # the reference the driving's change is measured from (translation and scale: always its first frame)
        ref_pose, ref_expr, ref_gaze = driving.pose[0].copy(), driving.expression[0], driving.gaze[0]
        if n == 1:  # an image: its rotation from frontal, its expression and gaze as they are
            ref_pose[:3] = 0.0
            ref_expr, ref_gaze = src_expr, src_gaze
        d_pose = driving.pose - ref_pose
        pose = np.empty((n, 6))
        pose[:, :3] = src_pose[:3] + mp * d_pose[:, :3]
        # translation in face sizes of the driving, applied in face sizes of the source
        pose[:, 3:5] = src_pose[3:5] + mp * d_pose[:, 3:5] * (src_pose[5] / ref_pose[5])
        pose[:, 5] = src_pose[5] * (driving.pose[:, 5] / ref_pose[5]) ** mp
        expression = src_expr + me * (driving.expression - ref_expr)
        gaze = src_gaze + mg * (driving.gaze - ref_gaze)
    else:
        pose = driving.pose.copy()
        pose[:, :3] *= mp
        expression = me * driving.expression
        gaze = mg * driving.gaze
    if cfg.keep_pose:
        pose = np.repeat(src_pose[None], n, 0)
    if cfg.keep_gaze:
        gaze = np.repeat(src_gaze[None], n, 0)
    return dataclasses.replace(driving, pose=pose, expression=np.clip(expression, 0.0, 1.0), gaze=gaze,
                               identity=source.identity.copy(), image_size=source.image_size, landmarks=None,
                               identity_names=source.identity_names)
