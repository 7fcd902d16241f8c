import os
from pathlib import Path

import numpy as np
import pytest

from mimaface.face3d.blendshapes import ANTAGONISTS
from mimaface.face3d.model import FaceModel


@pytest.fixture(scope="session", autouse=True)
def config_folder(tmp_path_factory):
    """Signing keys and settings go to a temporary folder, never the user's ~/.config (also for the
    commands the tests run as subprocesses, which inherit the environment)."""
    old = os.environ.get("MIMAFACE_CONFIG_DIR")
    os.environ["MIMAFACE_CONFIG_DIR"] = str(tmp_path_factory.mktemp("config"))
    yield
    if old is None:
        os.environ.pop("MIMAFACE_CONFIG_DIR")
    else:
        os.environ["MIMAFACE_CONFIG_DIR"] = old


@pytest.fixture(scope="session")
def model() -> FaceModel:
    return FaceModel.load()


def random_coefficients(model: FaceModel, frames: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random identity, expressions (one of each antagonist pair active), poses and gazes."""
    rng = np.random.default_rng(seed)
    expression = rng.uniform(0.0, 0.8, (frames, model.num_expressions))
    names = list(model.expression_names)
    for a, b in ANTAGONISTS:
        off = rng.random(frames) < 0.5
        expression[off, names.index(a)] = 0.0
        expression[~off, names.index(b)] = 0.0
    pose = np.stack([rng.uniform(-30, 30, frames), rng.uniform(-20, 20, frames), rng.uniform(-15, 15, frames),
                     rng.uniform(-0.2, 0.2, frames), rng.uniform(-0.2, 0.2, frames), rng.uniform(0.6, 1.2, frames)], 1)
    return {
        "identity": rng.normal(size=model.num_identities),
        "expression": expression,
        "pose": pose,
        "gaze": rng.uniform(-0.15, 0.15, (frames, 4)),
    }


def motion_of(n: int, seed: int = 0):
    """Coefficients of n frames for a 64 px crop: a yaw sweep, small random expressions, mean identity."""
    from mimaface.face3d.coefficients import MotionCoefficients

    face = FaceModel.load()
    rng = np.random.default_rng(seed)
    pose = np.zeros((n, 6))
    pose[:, 0] = np.linspace(-15, 15, n)
    pose[:, 5] = 0.8
    return MotionCoefficients(pose, rng.uniform(0, 0.3, (n, face.num_expressions)), np.zeros((n, 4)),
                              np.zeros(face.num_identities), face.expression_names, face.identity_names,
                              image_size=(64, 64))


@pytest.fixture(scope="session")
def training_synthtalk(tmp_path_factory) -> Path:
    """A small SynthTalk set for the training tests (5 identities x 2 clips x 12 frames, 64 px)."""
    from mimaface.synthtalk.generator import SynthConfig, generate_dataset

    root = tmp_path_factory.mktemp("synth") / "data"
    generate_dataset(root, SynthConfig(identities=5, clips_per_identity=2, frames=12, size=64, seed=3,
                                       test_fraction=0.4, workers=1), progress=False)
    return root


@pytest.fixture(scope="session")
def tiny_synthtalk(tmp_path_factory) -> Path:
    """A small SynthTalk data set: 18 training and 2 held-out identities, 2 clips of 10 frames, 64 px."""
    from mimaface.synthtalk import SynthConfig, generate_dataset

    root = tmp_path_factory.mktemp("synthtalk") / "data"
    generate_dataset(root, SynthConfig(identities=20, clips_per_identity=2, frames=10, size=64, seed=3, workers=1),
                     progress=False)
    return root


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory) -> Path:
    """A random-weight pipeline folder in the layout training writes (clips of 6 frames, 64 px)."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler

    from mimaface.models import MIMAFaceConfig, MIMAFaceModel
    from mimaface.models.config import TINY_VAE_CONFIG
    from mimaface.pipelines.pipeline import MIMAFacePipeline
    from mimaface.training.tasks import SD15_NOISE_SCHEDULE

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("model") / "final"
    MIMAFacePipeline(MIMAFaceModel(MIMAFaceConfig.tiny()), AutoencoderKL(**TINY_VAE_CONFIG),
                     DDIMScheduler(**SD15_NOISE_SCHEDULE), image_size=64, clip_length=6).save_pretrained(folder)
    return folder
