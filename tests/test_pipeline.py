"""Extraction and rendering on real and generated media."""

import numpy as np
import pytest
import skimage.data
from scipy.spatial import ConvexHull
from skimage.draw import polygon

from mimaface.demo import asset_path, warped_clip
from mimaface.face3d.camera import normalized_to_pixels
from mimaface.face3d.coefficients import MotionCoefficients
from mimaface.face3d.pipeline import extract_motion, render_motion
from mimaface.media import load_image, write_image, write_video


def hull_mask(points_2d: np.ndarray, height: int, width: int) -> np.ndarray:
    hull = points_2d[ConvexHull(points_2d).vertices]
    mask = np.zeros((height, width), bool)
    rr, cc = polygon(hull[:, 1] - 0.5, hull[:, 0] - 0.5, (height, width))
    mask[rr, cc] = True
    return mask


@pytest.fixture(scope="module")
def astronaut_motion(tmp_path_factory):
    path = tmp_path_factory.mktemp("astronaut") / "astronaut.png"
    write_image(path, skimage.data.astronaut())
    return extract_motion(path, progress=False)


def test_astronaut_is_one_near_frontal_face(astronaut_motion):
    motion = astronaut_motion
    assert motion.num_frames == 1 and motion.image_size == (512, 512)
    yaw, pitch, roll = motion.pose[0, :3]
    assert abs(yaw) < 20 and abs(pitch) < 20 and abs(roll) < 15
    assert motion.landmarks.shape == (1, 478, 3)


def test_astronaut_render_covers_the_detected_face(astronaut_motion):
    motion = astronaut_motion
    render, mask = next(render_motion(motion, progress=False))
    assert render.shape == (512, 512, 3) and render[~mask].max() == 0
    face = hull_mask(motion.landmarks[0, :468, :2], 512, 512)
    iou = (mask & face).sum() / (mask | face).sum()
    assert iou >= 0.8, iou


def mouth_hole_pixels(model, jaw_open: float, name: str = "jawOpen") -> int:
    expression = np.zeros((1, model.num_expressions))
    expression[0, model.expression_names.index(name)] = jaw_open
    pose = np.array([[0.0, 0.0, 0.0, 0.0, 0.0, 1.2]])
    motion = MotionCoefficients(pose, expression, np.zeros((1, 4)), np.zeros(model.num_identities),
                                model.expression_names, model.identity_names, image_size=(256, 256))
    _, mask = next(render_motion(motion, model=model, progress=False))
    lips = normalized_to_pixels(model.landmarks(pose, expression=expression)[0], 256, 256)
    outer = model.regions["lips_outer_upper"].tolist() + model.regions["lips_outer_lower"].tolist()
    return int((hull_mask(lips[outer, :2], 256, 256) & ~mask).sum())


def test_jaw_open_opens_the_rendered_mouth(model):
    holes = [mouth_hole_pixels(model, v) for v in (0.0, 0.5, 1.0)]
    assert holes[0] < holes[1] < holes[2]
    assert holes[2] > 4 * holes[0] + 100, holes


def eye_hole_pixels(model, blink_left: float) -> tuple[int, int]:
    expression = np.zeros((1, model.num_expressions))
    expression[0, model.expression_names.index("eyeBlinkLeft")] = blink_left
    pose = np.array([[0.0, 0.0, 0.0, 0.0, 0.0, 1.2]])
    motion = MotionCoefficients(pose, expression, np.zeros((1, 4)), np.zeros(model.num_identities),
                                model.expression_names, model.identity_names, image_size=(256, 256))
    _, mask = next(render_motion(motion, model=model, progress=False))
    pts = normalized_to_pixels(model.landmarks(pose)[0], 256, 256)
    return tuple(int((hull_mask(pts[model.regions[eye], :2], 256, 256) & ~mask).sum())
                 for eye in ("left_eye", "right_eye"))


def test_eye_blink_left_closes_only_the_left_eye_in_the_render(model):
    left_open, right_open = eye_hole_pixels(model, 0.0)
    left_closed, right_closed = eye_hole_pixels(model, 1.0)
    assert left_closed < 0.3 * left_open
    assert right_closed == right_open


def test_video_extraction_follows_the_known_motion(tmp_path):
    portrait = load_image(asset_path("portrait.jpg"))
    frames, truth = warped_clip(portrait, num_frames=30)
    write_video(tmp_path / "clip.mp4", frames, 25.0)
    motion = extract_motion(tmp_path / "clip.mp4", progress=False)
    assert motion.num_frames == 30 and motion.fps == pytest.approx(25.0)
    roll = motion.pose[:, 2] - motion.pose[0, 2]
    assert np.abs(roll - (truth["roll"] - truth["roll"][0])).mean() < 2.0
    assert np.corrcoef(roll, truth["roll"])[0, 1] > 0.98
    # Scale follows the zoom, and the face centre follows the shift (normalised units: 2 px / height).
    scale_ratio = motion.pose[:, 5] / motion.pose[0, 5]
    np.testing.assert_allclose(scale_ratio, truth["zoom"] / truth["zoom"][0], atol=0.05)
    # The nose tip moves as the warp predicts from its position in the first frame.
    h, w = portrait.shape[:2]
    centre = np.array([w / 2, h / 2])

    def forward(t, p):  # input-photo pixel -> pixel of frame t
        a = np.deg2rad(truth["roll"][t])
        rot_t = np.array([[np.cos(a), np.sin(a)], [-np.sin(a), np.cos(a)]])
        return centre + truth["shift"][t] + truth["zoom"][t] * rot_t @ (p - centre)

    def backward(t, q):
        a = np.deg2rad(truth["roll"][t])
        rot_t = np.array([[np.cos(a), np.sin(a)], [-np.sin(a), np.cos(a)]])
        return centre + rot_t.T @ (q - centre - truth["shift"][t]) / truth["zoom"][t]

    nose_in_photo = backward(0, motion.landmarks[0, 1, :2])
    predicted = np.stack([forward(t, nose_in_photo) for t in range(30)])
    assert np.linalg.norm(motion.landmarks[:, 1, :2] - predicted, axis=1).mean() < 3.0
