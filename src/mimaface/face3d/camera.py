"""Image coordinate conventions shared by detection, fitting and rendering.

Two frames are used throughout ``mimaface.face3d``:

* **pixel** coordinates, as MediaPipe reports them scaled to the image: ``X`` to the right,
  ``Y`` down, both in pixels with pixel ``(row i, column j)`` centred at ``(j + 0.5, i + 0.5)``;
  ``Z`` is relative depth in the same pixel units, *smaller is closer to the camera*.
  Landmarks are stored in this frame.
* **normalised** coordinates, where the face model is posed and rendered: origin at the
  image centre, ``x`` right, ``y`` up, ``z`` towards the camera, unit = half the image
  height. Because one unit is tied to the height only, a pose is independent of the
  resolution and the aspect ratio is never distorted. The camera is orthographic
  (weak perspective): a posed vertex projects to ``(x, y)``.
"""

from __future__ import annotations

import numpy as np


def pixels_to_normalized(points: np.ndarray, width: int, height: int) -> np.ndarray:
    """Map ``(..., 2|3)`` pixel coordinates to normalised coordinates."""
    points = np.asarray(points, dtype=np.float64)
    out = np.empty_like(points)
    out[..., 0] = (2.0 * points[..., 0] - width) / height
    out[..., 1] = (height - 2.0 * points[..., 1]) / height
    if points.shape[-1] == 3:
        out[..., 2] = -2.0 * points[..., 2] / height
    return out


def normalized_to_pixels(points: np.ndarray, width: int, height: int) -> np.ndarray:
    """Inverse of :func:`pixels_to_normalized`."""
    points = np.asarray(points, dtype=np.float64)
    out = np.empty_like(points)
    out[..., 0] = (points[..., 0] * height + width) / 2.0
    out[..., 1] = (height - points[..., 1] * height) / 2.0
    if points.shape[-1] == 3:
        out[..., 2] = -points[..., 2] * height / 2.0
    return out
