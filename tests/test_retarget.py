"""Retargeting a single driving frame (the image-driven mode) and, unchanged, a driving video."""

from __future__ import annotations

import numpy as np
import pytest
import skimage.data
from matplotlib.cbook import get_sample_data

from mimaface.cli import main as cli_main
from mimaface.face3d.coefficients import MotionCoefficients
from mimaface.face3d.model import FaceModel
from mimaface.media import load_image, write_image
from mimaface.pipelines.retarget import RetargetConfig, retarget

FACE = FaceModel.load()
NAMES = list(FACE.expression_names)


def motion(pose: list[list[float]], expression: dict[str, float] | list[dict[str, float]],
           gaze: list[list[float]]) -> MotionCoefficients:
    """Motion of len(pose) frames with the named blendshapes set (the same in every frame, or one dict each)."""
    n = len(pose)
    per_frame = expression if isinstance(expression, list) else [expression] * n
    values = np.zeros((n, len(NAMES)))
    for row, named in zip(values, per_frame):
        for name, value in named.items():
            row[NAMES.index(name)] = value
    return MotionCoefficients(np.array(pose, float), values, np.array(gaze, float), np.zeros(FACE.num_identities),
                              FACE.expression_names, FACE.identity_names, image_size=(64, 64))


SOURCE = motion([[5, -3, 2, 0.1, -0.05, 0.9]], {"eyeWideLeft": 0.8, "eyeWideRight": 0.8, "jawOpen": 0.1},
                [[0.02, 0.0, 0.02, 0.0]])
SMILE = motion([[15, 0, 0, 0.3, 0.2, 0.5]], {"mouthSmileLeft": 0.8, "mouthSmileRight": 0.8},
               [[0.1, 0.05, 0.1, 0.05]])
SURPRISE = motion([[-10, 6, -4, -0.2, 0.1, 1.2]], {"jawOpen": 0.7, "browInnerUp": 0.9}, [[-0.1, 0.0, -0.1, 0.0]])


def test_one_driving_frame_gives_its_expression_gaze_and_rotation_from_frontal():
    smile, surprise = retarget(SOURCE, SMILE), retarget(SOURCE, SURPRISE)
    # the source turns by the driving's rotation away from frontal and keeps its translation and scale
    assert np.allclose(smile.pose[0], [5 + 15, -3 + 0, 2 + 0, 0.1, -0.05, 0.9])
    assert np.allclose(surprise.pose[0], [5 - 10, -3 + 6, 2 - 4, 0.1, -0.05, 0.9])
    # the driving's expression and gaze as they are (the source's wide eyes are gone)
    assert np.allclose(smile.expression, SMILE.expression) and np.allclose(smile.gaze, SMILE.gaze)
    assert np.allclose(surprise.expression, SURPRISE.expression) and np.allclose(surprise.gaze, SURPRISE.gaze)
    assert np.array_equal(smile.identity, SOURCE.identity) and smile.num_frames == 1


def test_one_driving_frame_with_multipliers_and_keep_options():
    half = retarget(SOURCE, SMILE, RetargetConfig(pose_multiplier=0.5, expression_multiplier=0.5, gaze_multiplier=0))
    assert np.allclose(half.pose[0], [5 + 7.5, -3, 2, 0.1, -0.05, 0.9])
    assert np.allclose(half.expression, (SOURCE.expression + SMILE.expression) / 2)  # half way from the source's
    assert np.allclose(half.gaze, SOURCE.gaze)
    kept = retarget(SOURCE, SMILE, RetargetConfig(keep_pose=True, keep_gaze=True))
    assert np.allclose(kept.pose, SOURCE.pose) and np.allclose(kept.gaze, SOURCE.gaze)
    assert np.allclose(kept.expression, SMILE.expression)


def test_several_driving_frames_transfer_the_change_from_the_first():
    video = motion([SMILE.pose[0].tolist(), SURPRISE.pose[0].tolist()],
                   [{"mouthSmileLeft": 0.8, "mouthSmileRight": 0.8}, {"jawOpen": 0.7, "browInnerUp": 0.9}],
                   [SMILE.gaze[0].tolist(), SURPRISE.gaze[0].tolist()])
    out = retarget(SOURCE, video)
    assert np.allclose(out.pose[0], SOURCE.pose[0]) and np.allclose(out.expression[0], SOURCE.expression[0])
    assert np.allclose(out.gaze[0], SOURCE.gaze[0])
    assert np.allclose(out.pose[1, :3], SOURCE.pose[0, :3] + [-25, 6, -4])
    assert np.allclose(out.pose[1, 5], 0.9 * 1.2 / 0.5)
    assert np.allclose(out.pose[1, 3:5], SOURCE.pose[0, 3:5] + np.array([-0.5, -0.1]) * 0.9 / 0.5)
    change = video.expression[1] - video.expression[0]
    assert np.allclose(out.expression[1], np.clip(SOURCE.expression[0] + change, 0, 1))


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    paths = {"astronaut": folder / "astronaut.png", "hopper": folder / "hopper.png",
             "cameraman": folder / "cameraman.png"}
    write_image(paths["astronaut"], skimage.data.astronaut())
    write_image(paths["hopper"], load_image(get_sample_data("grace_hopper.jpg", asfileobj=False)))
    write_image(paths["cameraman"], np.repeat(skimage.data.camera()[..., None], 3, 2))
    return paths


def test_two_driving_photos_give_two_pictures(photos, tmp_path):
    out = {}
    for name in ("hopper", "cameraman"):
        out[name] = tmp_path / f"{name}.png"
        assert cli_main(["animate", "--source", str(photos["astronaut"]), "--driving", str(photos[name]), "-o",
                         str(out[name]), "--steps", "2", "-q"]) == 0
    a, b = load_image(out["hopper"]).astype(int), load_image(out["cameraman"]).astype(int)
    assert a.shape == b.shape == skimage.data.astronaut().shape  # pasted back into the whole picture
    assert np.abs(a - b).mean(-1).max() > 40  # not the same face (they were byte-identical)
