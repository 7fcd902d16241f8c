"""Coefficient files (.npz) and hand-written MOTION.json."""

import json

import numpy as np
import pytest
from conftest import random_coefficients

from mimaface.errors import InputError
from mimaface.face3d.coefficients import (
    MotionCoefficients,
    load_motion,
    motion_from_json,
    save_motion_json,
)


def make_motion(model, frames=5):
    truth = random_coefficients(model, frames)
    return MotionCoefficients(truth["pose"], truth["expression"], truth["gaze"], truth["identity"],
                              model.expression_names, model.identity_names, fps=30.0, image_size=(640, 480),
                              landmarks=np.random.default_rng(0).uniform(0, 400, (frames, 478, 3)))


def test_npz_round_trip(model, tmp_path):
    motion = make_motion(model)
    motion.save(tmp_path / "m.npz")
    back = load_motion(tmp_path / "m.npz", model)
    for key in ("pose", "expression", "gaze", "identity", "landmarks"):
        np.testing.assert_allclose(getattr(back, key), getattr(motion, key), rtol=1e-6, atol=1e-4)
    assert back.expression_names == model.expression_names
    assert back.fps == 30.0 and back.image_size == (640, 480)
    assert list(tmp_path.iterdir()) == [tmp_path / "m.npz"]  # no temporary file left behind


def test_npz_errors(model, tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        make_motion(model).save(tmp_path / "missing" / "m.npz")
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(InputError, match="not a mimaface coefficient file"):
        load_motion(tmp_path / "bad.npz", model)
    with pytest.raises(InputError, match="unsupported motion file"):
        load_motion(tmp_path / "x.txt", model)


def test_motion_json_round_trip(model, tmp_path):
    motion = make_motion(model)
    motion.expression[:, model.expression_names.index("cheekPuff")] = 0.25  # held: keyed once
    motion.expression[:, model.expression_names.index("jawOpen")] = 0.0  # neutral: left out
    save_motion_json(motion, tmp_path / "MOTION.json")
    back = load_motion(tmp_path / "MOTION.json", model)
    for key in ("pose", "expression", "gaze", "identity"):
        np.testing.assert_array_equal(getattr(back, key), getattr(motion, key))  # exact: float64 as text
    assert back.fps == 30.0 and back.image_size == (640, 480) and back.landmarks is None
    frames = json.loads((tmp_path / "MOTION.json").read_text())["frames"]
    assert [entry["frame"] for entry in frames] == list(range(5))
    assert "cheekPuff" in frames[0] and "cheekPuff" not in frames[1] and all("jawOpen" not in e for e in frames)
    still = motion.select([2])  # one frame: every channel held, read back the same
    save_motion_json(still, tmp_path / "still.json")
    np.testing.assert_array_equal(load_motion(tmp_path / "still.json", model).pose, still.pose)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["MOTION.json", "still.json"]  # nothing temporary left


def test_json_keyframes_linear(model):
    motion = motion_from_json({"fps": 10, "interpolation": "linear", "frames": [
        {"frame": 0, "jawOpen": 0.0, "yaw": -10},
        {"frame": 10, "jawOpen": 1.0, "yaw": 10, "gazeLeftX": 0.2},
    ]}, model)
    assert motion.num_frames == 11 and motion.fps == 10
    jaw = motion.expression[:, model.expression_names.index("jawOpen")]
    np.testing.assert_allclose(jaw, np.linspace(0, 1, 11))
    np.testing.assert_allclose(motion.pose[:, 0], np.linspace(-10, 10, 11))
    np.testing.assert_allclose(motion.gaze[:, 0], 0.2)  # a single keyframe holds its value
    np.testing.assert_allclose(motion.pose[:, 5], 0.8)  # default scale
    assert motion.expression[:, model.expression_names.index("mouthPucker")].max() == 0.0


def test_json_smooth_has_no_overshoot_and_hits_keys(model, tmp_path):
    spec = {"fps": 25, "num_frames": 40, "frames": [
        {"time": 0.0, "mouthSmileLeft": 0.0}, {"time": 0.4, "mouthSmileLeft": 1.0},
        {"time": 0.8, "mouthSmileLeft": 1.0}, {"time": 1.2, "mouthSmileLeft": 0.2}]}
    path = tmp_path / "motion.json"
    path.write_text(json.dumps(spec))
    smile = load_motion(path, model).expression[:, model.expression_names.index("mouthSmileLeft")]
    assert len(smile) == 40
    assert smile[[0, 10, 20, 30]] == pytest.approx([0.0, 1.0, 1.0, 0.2])
    assert smile.min() >= 0.0 and smile.max() <= 1.0
    np.testing.assert_allclose(smile[10:21], 1.0)  # flat between equal keys: monotone cubic
    assert 0.0 < smile[5] < 1.0


def test_json_consecutive_frames_and_identity(model):
    motion = motion_from_json({"identity": {"faceWidth": 1.5}, "frames": [{"roll": 5}, {"roll": 10}, {"roll": 0}]}, model)
    np.testing.assert_allclose(motion.pose[:, 2], [5, 10, 0])
    assert motion.identity[model.identity_names.index("faceWidth")] == 1.5


def test_json_errors_name_the_problem(model, tmp_path):
    with pytest.raises(InputError, match=r"unknown channel 'jawOpn'.*valid names: .*jawOpen"):
        motion_from_json({"frames": [{"jawOpn": 1}]}, model)
    with pytest.raises(InputError, match="unknown identity name"):
        motion_from_json({"identity": {"noseSize": 1}, "frames": [{"yaw": 0}]}, model)
    with pytest.raises(InputError, match="non-empty"):
        motion_from_json({"frames": []}, model)
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(InputError, match="invalid JSON"):
        motion_from_json(tmp_path / "broken.json", model)
    with pytest.raises(InputError, match="interpolation"):
        motion_from_json({"interpolation": "cubic", "frames": [{"yaw": 0}]}, model)


def test_select_frames_with_and_without_landmarks(model):
    motion = make_motion(model, frames=6)
    motion.extra = {"mode": "talking"}
    picked = motion.select([4, 0, 4, -1])
    for key in ("pose", "expression", "gaze", "landmarks"):
        np.testing.assert_array_equal(getattr(picked, key), getattr(motion, key)[[4, 0, 4, 5]])
    assert picked.num_frames == 4
    np.testing.assert_array_equal(picked.identity, motion.identity)
    assert (picked.expression_names, picked.identity_names) == (model.expression_names, model.identity_names)
    assert (picked.fps, picked.image_size, picked.extra) == (30.0, (640, 480), {"mode": "talking"})
    picked.identity[0] += 1.0
    picked.pose[0, 0] += 1.0
    assert picked.identity[0] == motion.identity[0] + 1.0 and picked.pose[0, 0] == motion.pose[4, 0] + 1.0  # copies

    tail = motion.select(slice(1, None, 2))
    for key in ("pose", "expression", "gaze", "landmarks"):
        np.testing.assert_array_equal(getattr(tail, key), getattr(motion, key)[[1, 3, 5]])
    motion.landmarks = None
    first = motion.select(np.array([0]))
    assert first.landmarks is None and first.num_frames == 1
    np.testing.assert_array_equal(first.pose, motion.pose[:1])


def test_select_errors(model):
    motion = make_motion(model, frames=5)
    with pytest.raises(InputError, match=r"frame index 5 is out of range for a motion of 5 frames \(valid: -5 to 4\)"):
        motion.select([0, 5])
    with pytest.raises(InputError, match="frame index -6 is out of range"):
        motion.select(np.array([-6]))
    with pytest.raises(InputError, match="holds no frames"):
        motion.select([])
    with pytest.raises(InputError, match="holds no frames"):
        motion.select(slice(3, 3))
    with pytest.raises(InputError, match="must be integers"):
        motion.select([0.0, 1.0])
    with pytest.raises(InputError, match=r"sequence of frame indices or a slice, got an array of shape \(\)"):
        motion.select(2)
