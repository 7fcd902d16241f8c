"""The face crop: boxes from the fitted pose, the crop of a box, and landmarks mapped into it."""

import numpy as np
import pytest
from conftest import random_coefficients

from mimaface.face3d.camera import normalized_to_pixels
from mimaface.face3d.crop import boxes_from_pose, crop_square, landmarks_to_crop, neutral_face_box


def test_boxes_from_pose_centre_side_and_offset():
    width, height, extent = 640, 480, 1.5
    pose = np.array([[0.0, 0.0, 0.0, 0.25, -0.5, 0.8],  # frontal
                     [30.0, 0.0, 0.0, 0.0, 0.0, 1.0]])  # turned: the reference's depth moves the centre
    reference = np.array([0.0, 0.0, 0.1])
    boxes = boxes_from_pose(pose, reference, extent, width, height, crop_scale=2.0)
    face = np.array([0.8, 1.0]) * extent * height / 2  # 144 and 180 px
    np.testing.assert_allclose(boxes[0], [(0.25 * height + width) / 2, (height + 0.5 * height) / 2, 2.0 * face[0]])
    np.testing.assert_allclose(boxes[1], [width / 2 + 0.1 * np.sin(np.deg2rad(30)) * height / 2, height / 2,
                                          2.0 * face[1]])
    lower = boxes_from_pose(pose, reference, extent, width, height, crop_scale=2.0, offset_y=0.25)
    np.testing.assert_allclose(lower - boxes, np.stack([np.zeros(2), 0.25 * face, np.zeros(2)], 1))


def test_neutral_face_box_is_the_frontal_face_box(model):
    identity = random_coefficients(model, 1)["identity"]
    width, height = 400, 300
    pose = np.array([[0.0, 0.0, 0.0, 0.1, 0.2, 0.7]])
    reference, extent = neutral_face_box(model, identity)
    box = boxes_from_pose(pose, reference, extent, width, height, crop_scale=1.0)[0]
    pixels = normalized_to_pixels(model.posed_vertices(pose[0], identity), width, height)
    lo, hi = pixels[:, :2].min(0), pixels[:, :2].max(0)
    np.testing.assert_allclose(box, [*(lo + hi) / 2, (hi - lo).max()])
    assert reference[2] == pytest.approx(model.vertices(identity)[:, 2].mean())


def test_crop_square_pads_outside_and_maps_like_the_landmarks():
    frame = np.zeros((60, 80, 3), np.uint8)
    frame[20:24, 30:34] = 255  # a white square centred at (32, 22) in pixel coordinates
    frame[:, :5] = (0, 0, 200)  # a blue left edge
    box = np.array([[10.0, 22.0, 50.0]])  # centre x, y, side: reaches 15 px past the left edge
    crop = crop_square(frame, 10 - 25, 22 - 25, 50, 100)
    mapped = landmarks_to_crop(np.array([[[32.0, 22.0, 4.0]]]), box, 100)[0, 0]
    np.testing.assert_allclose(mapped, [94.0, 50.0, 8.0])
    ys, xs = np.nonzero(crop[..., 0] > 128)
    assert abs(xs.mean() + 0.5 - mapped[0]) < 1.0 and abs(ys.mean() + 0.5 - mapped[1]) < 1.0
    assert crop[:, :25].max() == 0  # outside the frame: black
    assert crop[10:, 35:38, 2].min() > 150  # the blue edge of the frame
    edge = crop_square(frame, 10 - 25, 22 - 25, 50, 100, pad_mode="edge")
    assert edge[:, :25, 2].min() > 150  # padded with the edge colour
