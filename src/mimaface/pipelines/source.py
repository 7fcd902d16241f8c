"""The source portrait: its face found, cropped and aligned like the training data, and fitted.

The crop follows the preprocessing rules (:mod:`mimaface.data.preprocess`): a square around the
projected neutral face of the fitted pose, ``crop_scale`` times the face's extent, so an open
mouth or a turned head neither moves nor zooms it. The coefficients are then refitted in the
crop's own frame, which is the frame the model's I_R renders live in.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mimaface.errors import InputError
from mimaface.face3d.coefficients import MotionCoefficients
from mimaface.face3d.crop import boxes_from_pose, crop_square, landmarks_to_crop, neutral_face_box
from mimaface.face3d.fitting import FaceFitter
from mimaface.face3d.landmarks import detect_face

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
    ``size`` None: the photo's own resolution (the box side in pixels, even, at most ``max_size``)."""
    image = _rgb(image, name)
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
    """Grey (H, W) or (H, W, 1) and RGBA images become RGB uint8."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise InputError(f"{name}: expected an RGB, RGBA or grey image, got an array of shape {image.shape}")
    if image.dtype != np.uint8:
        raise InputError(f"{name}: expected 8-bit pixels, got {image.dtype}")
    if image.shape[2] == 1:
        image = np.repeat(image, 3, 2)
    return np.ascontiguousarray(image[..., :3])
