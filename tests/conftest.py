import numpy as np
import pytest

from mimaface.face3d.blendshapes import ANTAGONISTS
from mimaface.face3d.model import FaceModel


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
