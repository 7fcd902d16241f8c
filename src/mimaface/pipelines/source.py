"""The source portrait: its face found, cropped and aligned like the training data, and fitted.

The crop follows the preprocessing rules (:mod:`mimaface.data.preprocess`): a square around the
projected neutral face of the fitted pose, ``crop_scale`` times the face's extent, so an open
mouth or a turned head neither moves nor zooms it. The coefficients are then refitted in the
crop's own frame, which is the frame the model's I_R renders live in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mimaface.errors import InputError
from mimaface.face3d.coefficients import MotionCoefficients
from mimaface.face3d.crop import boxes_from_pose, crop_square, landmarks_to_crop, neutral_face_box
from mimaface.face3d.fitting import FaceFitter
from mimaface.face3d.landmarks import detect_face
from mimaface.limits import limits
from mimaface.media import check_image_pixels, load_image
from mimaface.values import is_finite_number, is_whole

MIN_FACE_PIXELS = 24
NATIVE_MAX_SIZE = 1024  # the largest crop taken at the photo's own resolution


@dataclass
class SourceFace:
    """A source ready to animate."""

    image: np.ndarray  # (H, W, 3) uint8, the whole picture (for pasting back)
    crop: np.ndarray  # (S, S, 3) uint8, the aligned crop the model sees
    box: np.ndarray  # (3,) crop centre x, centre y, side, in pixels of ``image``
    coefficients: MotionCoefficients  # one frame: pose, expression, gaze and identity in the crop's frame


def prepare_source(image: np.ndarray, size: int | None, *, face_index: int | None = None, crop_scale: float = 1.8,
                   crop_offset_y: float = 0.0, max_size: int = NATIVE_MAX_SIZE, fitter: FaceFitter | None = None,
                   name: str = "the source") -> SourceFace:
    """Detect the face (the largest, or ``face_index``), crop it at ``size`` x ``size`` and fit it.
    ``size`` None: the photo's own resolution (the box side in pixels, even, at most ``max_size``).
    ``image``: any image array :func:`~mimaface.media.load_image` takes (of at most ``limits().image_pixels``);
    sizes are ``MIN_FACE_PIXELS`` to ``limits().output_side``, ``crop_scale`` a positive number."""
    image = _rgb(image, name)
    side = limits().output_side
    for what, value in (("size", size), ("max_size", max_size)):
        if value is not None and not (is_whole(value) and MIN_FACE_PIXELS <= value <= side):
            raise InputError(f"{name}: the crop {what} must be a whole number from {MIN_FACE_PIXELS} to {side} "
                             f"(the limit of an output's side), got {value!r}")
    for what, value, low in (("crop_scale", crop_scale, 0.0), ("crop_offset_y", crop_offset_y, -math.inf)):
        if not (is_finite_number(value) and value > low):
            raise InputError(f"{name}: {what} must be a finite number{' above 0' if low == 0 else ''}, got {value!r}")
    fitter = fitter or FaceFitter()
    height, width = image.shape[:2]
    face = detect_face(image, face_index, source=name)
    landmarks = face.landmarks[None].astype(np.float64)
    if max(face.bbox[2] - face.bbox[0], face.bbox[3] - face.bbox[1]) < MIN_FACE_PIXELS:
        raise InputError(f"{name}: the face is only {face.bbox[2] - face.bbox[0]:.0f} px wide; at least "
                         f"{MIN_FACE_PIXELS} px are needed")
    fit = fitter.fit(landmarks, width, height, smooth=False)
    reference, extent = neutral_face_box(fitter.model, fit.identity)
    box = boxes_from_pose(fit.pose, reference, extent, width, height, crop_scale, crop_offset_y)[0]
    check_image_pixels(math.ceil(box[2]), math.ceil(box[2]), f"{name}: the crop (crop_scale {crop_scale:g})")
    if size is None:
        size = int(min(max_size, max(MIN_FACE_PIXELS, round(box[2] / 2) * 2)))
    crop = crop_square(image, box[0] - box[2] / 2, box[1] - box[2] / 2, box[2], size)
    in_crop = landmarks_to_crop(landmarks, box[None], size)
    refit = fitter.fit(in_crop, size, size, identity=fit.identity, smooth=False)
    m = fitter.model
    # The detected landmarks travel with the fit: the warp engine pins its mesh to them.
    coefficients = MotionCoefficients(refit.pose, refit.expression, refit.gaze, fit.identity, m.expression_names,
                                      m.identity_names, landmarks=in_crop.astype(np.float32), image_size=(size, size))
    return SourceFace(image, crop, box, coefficients)


def aligned_source(crop: np.ndarray, coefficients: MotionCoefficients) -> SourceFace:
    """A source that is already an aligned crop with known coefficients (a data set frame)."""
    crop = _rgb(crop, "the source crop")
    size = crop.shape[0]
    if crop.shape[1] != size:
        raise InputError(f"an aligned source crop must be square, got {crop.shape[1]}x{crop.shape[0]}")
    return SourceFace(crop, crop, np.array([size / 2, size / 2, float(size)]), coefficients)


def _rgb(image: np.ndarray, name: str) -> np.ndarray:
    """An image array as RGB uint8, as :func:`~mimaface.media.load_image` converts one (grey expanded, alpha
    composited on white, floats in [0, 1] and finite), within the pixel limit."""
    if not isinstance(image, np.ndarray):
        raise InputError(f"{name}: expected an image array (H x W x 3), got {type(image).__name__}")
    return load_image(image, name=name)
