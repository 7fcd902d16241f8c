"""The face crop: a square around the projected neutral face of the fitted pose.

Its centre is where the centre of the subject's neutral face projects, its side ``crop_scale``
times the extent of the subject's neutral frontal landmarks at the fitted scale. An open mouth or
a turned head therefore neither moves nor zooms the crop (the landmarks' own box grows by about
10 % when the jaw drops). Boxes are ``(cx, cy, side)`` in pixels of the full frame; the crop of a
box and the map of landmarks into it are the same similarity.
"""

from __future__ import annotations

import math

import numpy as np

from mimaface.face3d.camera import normalized_to_pixels
from mimaface.face3d.model import FaceModel
from mimaface.face3d.pose import apply_pose


def neutral_face_box(model: FaceModel, identity: np.ndarray) -> tuple[np.ndarray, float]:
    """Model-space centre of the subject's neutral face (its landmark box centre, at the mesh's mean
    depth) and the extent (longer side of the frontal landmark box) in model units."""
    verts = model.vertices(identity)
    lo, hi = verts[:, :2].min(0), verts[:, :2].max(0)
    centre = np.array([(lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, verts[:, 2].mean()])
    return centre, float((hi - lo).max())


def boxes_from_pose(pose: np.ndarray, reference: np.ndarray, extent: float, width: int, height: int,
                    crop_scale: float, offset_y: float = 0.0) -> np.ndarray:
    """Per-frame ``(cx, cy, side)`` in pixels from fitted poses ``(T, 6)`` and the :func:`neutral_face_box`
    ``reference`` and ``extent``; ``offset_y`` moves the centre down by that many face extents."""
    centre = normalized_to_pixels(apply_pose(reference[None, None], pose)[:, 0], width, height)
    face = pose[:, 5] * extent * height / 2.0  # neutral frontal landmark extent in pixels
    return np.stack([centre[:, 0], centre[:, 1] + offset_y * face, crop_scale * face], 1)


def crop_square(frame: np.ndarray, left: float, top: float, side: float, size: int,
                pad_mode: str = "constant") -> np.ndarray:
    """The square ``[left, left + side) x [top, top + side)`` of ``frame`` (sub-pixel, padded where it
    leaves the frame) resized to ``size`` x ``size`` (bicubic, antialiased when shrinking)."""
    from PIL import Image

    height, width = frame.shape[:2]
    x0, y0 = math.floor(left), math.floor(top)
    x1, y1 = math.ceil(left + side), math.ceil(top + side)
    x1, y1 = max(x1, x0 + 1), max(y1, y0 + 1)
    sub = frame[max(y0, 0):max(min(y1, height), 0), max(x0, 0):max(min(x1, width), 0)]
    pads = ((max(0, -y0), max(0, y1 - height)), (max(0, -x0), max(0, x1 - width)), (0, 0))
    if sub.size == 0:
        sub = np.zeros((y1 - y0, x1 - x0, 3), np.uint8)
    elif any(p for pair in pads for p in pair):
        sub = np.pad(sub, pads, mode=pad_mode)
    box = (left - x0, top - y0, min(left - x0 + side, x1 - x0), min(top - y0 + side, y1 - y0))
    return np.asarray(Image.fromarray(np.ascontiguousarray(sub)).resize((size, size), Image.BICUBIC, box=box))


def landmarks_to_crop(landmarks: np.ndarray, boxes: np.ndarray, size: int) -> np.ndarray:
    """Map ``(T, N, 3)`` full-frame pixel landmarks into the pixels of the ``size`` crops of
    ``boxes`` ``(T, 3)`` = centre x, centre y, side (the same map as :func:`crop_square`)."""
    boxes = np.asarray(boxes, np.float64)
    k = (size / boxes[:, 2])[:, None]
    out = np.array(landmarks, np.float64)
    out[..., 0] = (out[..., 0] - (boxes[:, 0] - boxes[:, 2] / 2)[:, None]) * k
    out[..., 1] = (out[..., 1] - (boxes[:, 1] - boxes[:, 2] / 2)[:, None]) * k
    out[..., 2] = out[..., 2] * k
    return out
