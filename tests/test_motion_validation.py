"""Motion files and the face fitter refuse bad input with one line naming the file, the field and the
limit (before allocating anything from it); a full disk in ``synth`` and ``preprocess`` is one line,
exit 2, with no half-written clip (README "Safety and limits")."""

import errno
import io
import json
import os
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest

from mimaface.cli import main as cli_main
from mimaface.data import preprocess
from mimaface.data.clipstore import list_clips
from mimaface.demo import asset_path
from mimaface.errors import InputError
from mimaface.face3d.coefficients import MotionCoefficients, load_motion, motion_from_json
from mimaface.face3d.fitting import FaceFitter
from mimaface.limits import limits
from mimaface.media import load_image, write_video

T = 5


def refused(call, *fragments: str) -> str:
    """The InputError of ``call()``: one line holding every fragment."""
    with pytest.raises(InputError) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


def peak_bytes(call) -> int:
    """The most memory Python and numpy held while ``call()`` ran (it may raise)."""
    tracemalloc.start()
    try:
        call()
    except InputError:
        pass
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return peak


def all_files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# -------------------------------------------------------------------------------------- MOTION.json


def write_json(tmp_path: Path, text: str, name: str = "MOTION.json") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_a_motion_json_above_the_size_limit_is_refused_before_it_is_read(model, tmp_path):
    path = tmp_path / "big.json"
    with open(path, "wb") as fh:
        fh.truncate(limits().motion_json_bytes + 1)  # sparse: NUL bytes, which would be "invalid JSON" if read
    refused(lambda: motion_from_json(path, model), str(path), "file size", f"limit of {limits().motion_json_bytes}")


@pytest.mark.parametrize("depth", [33, 100_000])
def test_deep_nesting_is_refused(model, tmp_path, depth):
    # depth counts the outer object: "x" holds depth - 1 nested lists
    text = '{"frames": [{"yaw": 1}], "x": ' + "[" * (depth - 1) + "]" * (depth - 1) + "}"
    refused(lambda: motion_from_json(write_json(tmp_path, text), model), "MOTION.json", "nested deeper",
            "limit of 32 levels")


def test_nesting_at_the_limit_is_accepted(model, tmp_path):
    text = '{"frames": [{"yaw": 1}], "x": ' + "[" * 31 + "]" * 31 + "}"
    assert motion_from_json(write_json(tmp_path, text), model).num_frames == 1


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_literals_are_refused_with_their_place(model, tmp_path, literal):
    text = '{"fps": 25,\n "frames": [{"frame": 0, "yaw": ' + literal + "}]}"
    refused(lambda: motion_from_json(write_json(tmp_path, text), model), "MOTION.json", literal,
            "line 2 column 33", "must be finite")


@pytest.mark.parametrize("number", ["1e400", "-1e400", "9" * 5000])
def test_numbers_too_large_to_hold_name_the_field(model, tmp_path, number):
    text = '{"frames": [{"frame": 0}, {"frame": 1, "jawOpen": ' + number + "}]}"
    refused(lambda: motion_from_json(write_json(tmp_path, text), model), "MOTION.json: frame entry 1, jawOpen",
            "must be a finite number")


def test_a_5000_digit_num_frames_is_refused(model, tmp_path):
    text = '{"num_frames": ' + "9" * 5000 + ', "frames": [{"yaw": 1}]}'
    refused(lambda: motion_from_json(write_json(tmp_path, text), model), "num_frames must be a finite number")


@pytest.mark.parametrize(("value", "shown"), [('"abc"', '"abc"'), ("[1]", "[1]"), ("true", "true"), ("null", "null"),
                                              ("{}", "{}")])
def test_values_that_are_not_numbers_name_the_entry_and_channel(model, tmp_path, value, shown):
    text = '{"frames": [{"yaw": 0}, {"yaw": ' + value + "}]}"
    refused(lambda: motion_from_json(write_json(tmp_path, text), model),
            f"MOTION.json: frame entry 1, yaw must be a number, got {shown}")


@pytest.mark.parametrize("fps", ["0", "-5", "1000", '"25"', "false"])
def test_fps_must_be_a_number_above_0_and_within_the_limit(model, tmp_path, fps):
    text = '{"fps": ' + fps + ', "frames": [{"yaw": 1}]}'
    refused(lambda: motion_from_json(write_json(tmp_path, text), model), "MOTION.json: fps must be")


def test_fps_at_the_limit_is_accepted(model):
    assert motion_from_json({"fps": limits().fps, "frames": [{"yaw": 1}]}, model).fps == limits().fps


def test_a_billion_frames_is_refused_before_any_allocation(model, tmp_path):
    path = write_json(tmp_path, '{"num_frames": 1000000000, "frames": [{"yaw": 1}]}')
    refused(lambda: motion_from_json(path, model), "num_frames: 1000000000 frames is more than the limit of 90000",
            "MIMAFACE_MAX_FRAMES")
    assert peak_bytes(lambda: motion_from_json(path, model)) < 5 * 2**20


@pytest.mark.parametrize(("value", "fragment"), [("0", "at least 1"), ("2.5", "whole number"), ('"5"', "a number"),
                                                 ("true", "a number")])
def test_num_frames_must_be_a_whole_number_from_1(model, tmp_path, value, fragment):
    path = write_json(tmp_path, '{"num_frames": ' + value + ', "frames": [{"yaw": 1}]}')
    refused(lambda: motion_from_json(path, model), "MOTION.json: num_frames", fragment)


def test_num_frames_given_as_a_whole_float_is_read(model):
    assert motion_from_json({"num_frames": 4.0, "frames": [{"yaw": 1}]}, model).num_frames == 4


@pytest.mark.parametrize("entry", ['{"frame": 1e15, "yaw": 1}', '{"time": 1e12, "yaw": 1}'])
def test_a_far_frame_is_refused_before_any_allocation(model, tmp_path, entry):
    path = write_json(tmp_path, '{"frames": [' + entry + "]}")
    refused(lambda: motion_from_json(path, model), "MOTION.json: frame entry 0", "beyond the limit of 90000 frames")
    assert peak_bytes(lambda: motion_from_json(path, model)) < 5 * 2**20


@pytest.mark.parametrize(("entry", "fragment"), [('{"frame": -1}', "before the first frame"),
                                                 ('{"time": -0.5}', "before the first frame"),
                                                 ('{"frame": "3"}', "frame must be a number"),
                                                 ('{"time": 1e999}', "time must be a finite number")])
def test_frame_indices_and_times_must_be_finite_and_not_negative(model, tmp_path, entry, fragment):
    path = write_json(tmp_path, '{"frames": [' + entry + "]}")
    refused(lambda: motion_from_json(path, model), "MOTION.json: frame entry 0", fragment)


def test_the_frames_limit_is_raised_by_its_environment_variable(model, monkeypatch):
    monkeypatch.setenv("MIMAFACE_MAX_FRAMES", "10")
    refused(lambda: motion_from_json({"num_frames": 11, "frames": [{"yaw": 1}]}, model),
            "11 frames is more than the limit of 10 (set MIMAFACE_MAX_FRAMES")
    refused(lambda: motion_from_json({"frames": [{"yaw": 1}] * 11}, model), '"frames": 11 frame entries')
    refused(lambda: motion_from_json({"frames": [{"frame": 10, "yaw": 1}]}, model), "beyond the limit of 10 frames")
    assert motion_from_json({"frames": [{"frame": 9, "yaw": 1}]}, model).num_frames == 10
    monkeypatch.setenv("MIMAFACE_MAX_FRAMES", "100")
    assert motion_from_json({"num_frames": 11, "frames": [{"yaw": 1}]}, model).num_frames == 11


@pytest.mark.parametrize(("size", "fragment"), [("[200000, 200000]", "200000 pixels is more than the limit of 4096"),
                                                ("[0, 10]", "width must be at least 1"),
                                                ("[64, 64.5]", "height must be a whole number"),
                                                ("[1, 2, 3]", "two whole numbers"), ('"512"', "two whole numbers")])
def test_image_size_must_be_two_whole_numbers_within_the_limit(model, tmp_path, size, fragment):
    path = write_json(tmp_path, '{"image_size": ' + size + ', "frames": [{"yaw": 1}]}')
    refused(lambda: motion_from_json(path, model), "MOTION.json: image_size", fragment)


@pytest.mark.parametrize(("identity", "fragment"), [('{"faceWidth": 1e999}', "identity faceWidth must be a finite"),
                                                    ('{"faceWidth": "wide"}', "identity faceWidth must be a number"),
                                                    ("[1]", '"identity" must be an object')])
def test_identity_values_must_be_finite_numbers(model, tmp_path, identity, fragment):
    path = write_json(tmp_path, '{"identity": ' + identity + ', "frames": [{"yaw": 1}]}')
    refused(lambda: motion_from_json(path, model), "MOTION.json: ", fragment)


def test_a_dict_is_checked_the_same_way(model):
    refused(lambda: motion_from_json({"fps": float("nan"), "frames": [{"yaw": 1}]}, model), "motion: fps must be")
    refused(lambda: motion_from_json({"frames": [{"yaw": float("inf")}]}, model), "motion: frame entry 0, yaw")
    nested: list = []
    for _ in range(40):
        nested = [nested]
    refused(lambda: motion_from_json({"frames": [{"yaw": 1}], "x": nested}, model), "motion: the JSON is nested deeper")
    refused(lambda: motion_from_json(None, model), "a MOTION.json path or a dict, got NoneType")


def test_large_head_angles_are_legal(model):
    motion = motion_from_json({"frames": [{"yaw": 100, "roll": -200}, {"yaw": -170, "pitch": 95}]}, model)
    np.testing.assert_array_equal(motion.pose[:, :3], [[100, 95, -200], [-170, 95, -200]])  # pitch: held


# ---------------------------------------------------------------------------------------- .npz files


def good_arrays(model, frames: int = T) -> dict[str, np.ndarray]:
    pose = np.zeros((frames, 6), np.float32)
    pose[:, 5] = 0.8
    return {"pose": pose, "expression": np.zeros((frames, model.num_expressions), np.float32),
            "expression_names": np.array(model.expression_names), "gaze": np.zeros((frames, 4), np.float32),
            "identity": np.zeros(model.num_identities, np.float32), "identity_names": np.array(model.identity_names),
            "fps": np.float64(25), "image_size": np.array([64, 64]), "format_version": np.int64(1),
            "landmarks": np.zeros((frames, 478, 3), np.float32)}


def npy_header(shape: tuple, descr: str = "<f4") -> bytes:
    """An .npy header declaring ``shape`` (what a crafted file holds, with no data after it)."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_2_0(buffer, {"descr": descr, "fortran_order": False, "shape": shape})
    return buffer.getvalue()


def write_npz(path: Path, arrays: dict, members: dict[str, bytes] | None = None) -> Path:
    """An .npz of ``arrays`` (numpy's own writer) plus raw zip ``members``."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    if members:
        with zipfile.ZipFile(buffer, "a", zipfile.ZIP_DEFLATED) as archive:
            for name, data in members.items():
                archive.writestr(name, data)
    path.write_bytes(buffer.getvalue())
    return path


def test_a_valid_npz_reads_back(model, tmp_path):
    motion = load_motion(write_npz(tmp_path / "m.npz", good_arrays(model)), model)
    assert motion.num_frames == T and motion.fps == 25.0 and motion.image_size == (64, 64)
    assert motion.landmarks.shape == (T, 478, 3)


class _Payload:
    """Unpickling this creates a file: proof that a pickle ran."""

    marker = ""

    def __reduce__(self):
        return open, (self.marker, "w")


def test_a_pickled_object_array_is_refused_and_never_runs(model, tmp_path):
    _Payload.marker = str(tmp_path / "pwned")
    arrays = good_arrays(model) | {"identity_names": np.array([_Payload()] * model.num_identities, dtype=object)}
    path = write_npz(tmp_path / "m.npz", arrays)
    refused(lambda: load_motion(path, model), str(path), "identity_names holds object, expected strings")
    assert not (tmp_path / "pwned").exists()


def test_a_small_file_declaring_a_huge_landmarks_array_is_refused_before_allocation(model, tmp_path):
    # The case: 566 KB on disk, 1.84 GB declared (320000 x 478 x 3 float32) and no data.
    big = 320_000
    arrays = {k: v for k, v in good_arrays(model).items() if k != "landmarks"}
    path = write_npz(tmp_path / "m.npz", arrays, {"landmarks.npy": npy_header((big, 478, 3)) + bytes(566_000)})
    assert path.stat().st_size < 600_000
    refused(lambda: load_motion(path, model), str(path), "landmarks has shape (320000, 478, 3), expected (5, 478, 3)")
    assert peak_bytes(lambda: MotionCoefficients.load(path)) < 5 * 2**20


def test_a_header_declaring_more_data_than_the_file_holds_is_refused_before_allocation(model, tmp_path):
    # Within every limit (an hour of frames) but the landmarks' 516 MB are only declared, never written.
    frames = limits().frames
    arrays = {k: v for k, v in good_arrays(model, frames).items() if k != "landmarks"}
    path = write_npz(tmp_path / "m.npz", arrays, {"landmarks.npy": npy_header((frames, 478, 3))})
    refused(lambda: load_motion(path, model), f"{path}: landmarks: the header declares {frames * 478 * 3 * 4} bytes",
            "the file holds 0")
    assert peak_bytes(lambda: MotionCoefficients.load(path)) < 5 * 2**20


def test_more_frames_than_the_limit_are_refused_from_the_header(model, tmp_path):
    arrays = {k: v for k, v in good_arrays(model).items() if k != "pose"}
    path = write_npz(tmp_path / "m.npz", arrays, {"pose.npy": npy_header((10**9, 6))})
    refused(lambda: load_motion(path, model), f"{path}: pose: 1000000000 frames is more than the limit of 90000",
            "MIMAFACE_MAX_FRAMES")


@pytest.mark.parametrize(("key", "value", "fragment"), [
    ("pose", np.zeros((T, 5), np.float32), "pose has shape (5, 5), expected (5, 6)"),
    ("expression", np.zeros((T, 3), np.float32), "expression has shape (5, 3), expected (5, 36)"),
    ("gaze", np.zeros((T, 3), np.float32), "gaze has shape (5, 3), expected (5, 4)"),
    ("identity", np.zeros(11, np.float32), "identity has shape (11,), expected (12,)"),
    ("identity", np.zeros((1, 12), np.float32), "identity has shape (1, 12), expected (12,)"),
    ("landmarks", np.zeros((T, 468, 3), np.float32), "landmarks has shape (5, 468, 3), expected (5, 478, 3)"),
    ("pose", np.zeros((0, 6), np.float32), "pose holds no frames"),
    ("pose", np.array([["a"] * 6] * T), "pose holds <U1, expected floating-point numbers"),
    ("expression_names", np.zeros(36), "expression_names holds float64, expected strings"),
    ("expression_names", np.array(["x" * 65] * 36), "expression_names: 65 characters in a name is more than"),
    ("fps", np.array([25.0, 25.0]), "fps has shape (2,), expected ()"),
    ("image_size", np.array([64.0, 64.0]), "image_size holds float64, expected integers"),
])
def test_array_shapes_and_types_are_checked_from_the_header(model, tmp_path, key, value, fragment):
    path = write_npz(tmp_path / "m.npz", good_arrays(model) | {key: value})
    refused(lambda: load_motion(path, model), f"{path}: {fragment}")


@pytest.mark.parametrize(("key", "index", "fragment"), [("pose", (2, 0), "pose[2, 0] is nan"),
                                                        ("expression", (1, 3), "expression[1, 3] is inf"),
                                                        ("gaze", (4, 1), "gaze[4, 1] is nan"),
                                                        ("identity", (7,), "identity[7] is -inf"),
                                                        ("landmarks", (3, 100, 2), "landmarks[3, 100, 2] is nan")])
def test_non_finite_values_are_refused(model, tmp_path, key, index, fragment):
    arrays = good_arrays(model)
    arrays[key][index] = {"pose": np.nan, "expression": np.inf, "gaze": np.nan, "identity": -np.inf,
                          "landmarks": np.nan}[key]
    path = write_npz(tmp_path / "m.npz", arrays)
    refused(lambda: load_motion(path, model), f"{path}: {fragment}", "every value must be finite")


@pytest.mark.parametrize(("key", "value", "fragment"), [
    ("fps", np.float64(np.nan), "fps must be a finite number"), ("fps", np.float64(-1), "fps must be above 0"),
    ("fps", np.float64(0), "fps must be above 0"), ("fps", np.float64(1000), "fps must be above 0 and at most 240, got 1000"),
    ("image_size", np.array([0, 64]), "image_size width must be at least 1"),
    ("image_size", np.array([64, 200000]), "image_size height: 200000 pixels is more than the limit of 4096"),
    ("format_version", np.int64(2), "format_version is 2; this mimaface reads version 1"),
])
def test_scalars_are_checked(model, tmp_path, key, value, fragment):
    path = write_npz(tmp_path / "m.npz", good_arrays(model) | {key: value})
    refused(lambda: load_motion(path, model), f"{path}: {fragment}")


def test_a_missing_array_or_a_file_that_is_not_a_zip_names_the_file(model, tmp_path):
    arrays = {k: v for k, v in good_arrays(model).items() if k != "gaze"}
    path = write_npz(tmp_path / "m.npz", arrays)
    refused(lambda: load_motion(path, model), f"{path}: not a mimaface coefficient file (no 'gaze' array)")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    refused(lambda: load_motion(tmp_path / "junk.npz", model), f"{tmp_path / 'junk.npz'}: not a mimaface coefficient")


def test_a_file_of_another_face_model_names_the_file(model, tmp_path):
    arrays = good_arrays(model) | {"identity": np.zeros(11, np.float32),
                                   "identity_names": np.array(model.identity_names[:11])}
    path = write_npz(tmp_path / "m.npz", arrays)
    assert MotionCoefficients.load(path).identity.shape == (11,)  # a consistent file of its own
    refused(lambda: load_motion(path, model),
            f"{path} was made with a different face model: its 11 identity names differ from the model's 12")


@pytest.mark.parametrize("name", ["missing.npz", "missing.json"])
def test_load_motion_names_a_missing_file(model, tmp_path, name):
    refused(lambda: load_motion(tmp_path / name, model), f"{tmp_path / name}: no such file")


def test_load_motion_refuses_an_unknown_suffix_and_a_folder(model, tmp_path):
    refused(lambda: load_motion(tmp_path / "m.txt", model), f"{tmp_path / 'm.txt'}: unsupported motion file")
    (tmp_path / "folder.json").mkdir()
    refused(lambda: load_motion(tmp_path / "folder.json", model), f"{tmp_path / 'folder.json'}: cannot read it")


# ------------------------------------------------------------------------------ MotionCoefficients


def coefficients(model, **changes) -> MotionCoefficients:
    pose = np.zeros((T, 6))
    pose[:, 5] = 0.8
    values = {"pose": pose, "expression": np.zeros((T, model.num_expressions)), "gaze": np.zeros((T, 4)),
              "identity": np.zeros(model.num_identities), "expression_names": model.expression_names,
              "identity_names": model.identity_names} | changes
    return MotionCoefficients(**values)


def with_value(array: np.ndarray, index: tuple, value: float) -> np.ndarray:
    array = array.copy()
    array[index] = value
    return array


@pytest.mark.parametrize(("field", "fragment"), [("pose", "pose[1, 0] is nan"), ("expression", "expression[1, 0] is nan"),
                                                 ("gaze", "gaze[1, 0] is nan"), ("landmarks", "landmarks[1, 0, 0] is nan")])
def test_coefficients_must_be_finite(model, field, fragment):
    base = {"pose": np.zeros((T, 6)), "expression": np.zeros((T, model.num_expressions)), "gaze": np.zeros((T, 4)),
            "landmarks": np.zeros((T, 478, 3))}[field]
    refused(lambda: coefficients(model, **{field: with_value(base, (1, 0), np.nan)}), fragment)


@pytest.mark.parametrize(("changes", "fragment"), [
    ({"identity": np.full(12, np.inf)}, "identity[0] is inf"),
    ({"identity": np.zeros((1, 12))}, "identity has shape (1, 12), expected (12,)"),
    ({"landmarks": np.zeros((T, 468, 3))}, "landmarks have shape (5, 468, 3), expected (5, 478, 3)"),
    ({"pose": np.zeros((T, 5))}, "inconsistent motion arrays"),
    ({"pose": [[0.0] * 6] * T}, "pose must be a numpy array of numbers, got list"),
    ({"fps": 0}, "fps must be above 0"), ({"fps": float("nan")}, "fps must be a finite number"),
    ({"fps": -25.0}, "fps must be above 0"), ({"fps": 241}, "at most 240"), ({"fps": "25"}, "fps must be a number"),
    ({"image_size": (0, 64)}, "image_size width must be at least 1"),
    ({"image_size": 64}, "image_size must be two whole numbers"),
])
def test_coefficients_check_shapes_rates_and_sizes(model, changes, fragment):
    refused(lambda: coefficients(model, **changes), fragment)


def test_coefficients_need_one_frame_and_at_most_the_limit(model, monkeypatch):
    empty = {"pose": np.zeros((0, 6)), "expression": np.zeros((0, model.num_expressions)), "gaze": np.zeros((0, 4))}
    refused(lambda: coefficients(model, **empty), "the motion has no frames")
    monkeypatch.setenv("MIMAFACE_MAX_FRAMES", "4")
    refused(lambda: coefficients(model), "the motion: 5 frames is more than the limit of 4 (set MIMAFACE_MAX_FRAMES")
    monkeypatch.setenv("MIMAFACE_MAX_FRAMES", "5")
    assert coefficients(model).num_frames == 5


def test_valid_coefficients_keep_their_values(model):
    motion = coefficients(model, fps=np.float32(30), image_size=[np.int64(640), 480])
    assert motion.fps == 30.0 and type(motion.fps) is float
    assert motion.image_size == (640, 480) and all(type(v) is int for v in motion.image_size)


# -------------------------------------------------------------------------------------- FaceFitter.fit


@pytest.fixture(scope="module")
def fitter(model):
    return FaceFitter(model)


LANDMARKS = np.random.default_rng(0).uniform(100, 300, (1, 478, 3))


@pytest.mark.parametrize(("landmarks", "fragment"), [
    (LANDMARKS[:, :468], "expected 478 landmarks (MediaPipe with iris), got 468"),
    (LANDMARKS[0], "got (478, 3): for one image use landmarks[None]"),
    (LANDMARKS[..., :2], "expected 3 coordinates (x, y, z) per landmark, got 2"),
    (LANDMARKS[:0], "landmarks hold no frames"),
    (np.full((1, 478, 3), np.nan), "landmarks[0, 0, 0] is nan; every value must be finite"),
    (with_value(LANDMARKS, (0, 5, 1), np.inf), "landmarks[0, 5, 1] is inf"),
    (None, "landmarks must be an array of numbers of shape (T, 478, 3), got NoneType"),
    ([[1.0, 2.0, 3.0]] * 5, "landmarks must have shape (T, 478, 3), got (5, 3)"),
    ([[1.0, 2.0, 3.0], [1.0]], "got a list that is not one"),
    (LANDMARKS.astype(str), "got a <U"),
])
def test_fit_refuses_bad_landmarks(fitter, landmarks, fragment):
    refused(lambda: fitter.fit(landmarks, 512, 512), fragment)


@pytest.mark.parametrize(("arguments", "fragment"), [
    ({"width": 0}, "width must be at least 1 pixel, got 0"), ({"height": -3}, "height must be at least 1 pixel"),
    ({"width": 512.5}, "width must be a whole number"), ({"height": "512"}, "height must be a number"),
    ({"width": None}, "width must be a number, got null"),
    ({"identity": np.zeros(3)}, "identity must have shape (12,)"),
    ({"identity": np.full(12, np.nan)}, "identity[0] is nan"),
    ({"identity": "x"}, "identity must be an array of 12 numbers"),
    ({"fps": 0}, "fps must be above 0"), ({"fps": float("inf")}, "fps must be a finite number"),
    ({"smooth": "yes"}, "smooth must be True, False or None"),
])
def test_fit_refuses_bad_arguments(fitter, arguments, fragment):
    values = {"width": 512, "height": 512} | arguments
    refused(lambda: fitter.fit(LANDMARKS, **values), fragment)


def test_fit_accepts_whole_float_sizes_and_a_given_identity(fitter, model):
    identity = np.linspace(-1, 1, model.num_identities)
    fit = fitter.fit(LANDMARKS, 512.0, np.int64(512), identity=list(identity), smooth=False)
    assert fit.pose.shape == (1, 6) and np.isfinite(fit.pose).all()
    np.testing.assert_array_equal(fit.identity, identity)


# ------------------------------------------------------------------------------------- the command line


@pytest.mark.parametrize(("text", "fragment"), [
    ('{"frames": [{"yaw": NaN}]}', "NaN at line 1 column 21"),
    ('{"num_frames": 100000000, "frames": [{"yaw": 1}]}', "100000000 frames is more than the limit of 90000"),
    ('{"fps": -25, "frames": [{"yaw": 1}]}', "fps must be above 0"),
])
def test_render_of_a_bad_motion_json_is_one_line_and_exit_2(tmp_path, capsys, text, fragment):
    path = write_json(tmp_path, text, "bad.json")
    assert cli_main(["render", str(path), "-o", str(tmp_path / "out.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"mimaface render: error: {path}: ") and fragment in err and "\n" not in err
    assert all_files(tmp_path) == ["bad.json"]


# ------------------------------------------------------------------------------------------ a full disk


def full_np_save(where: str):
    """``np.save`` that writes part of the file, then fails as on a full disk, for paths containing ``where``."""
    real = np.save

    def save(file, array, *args, **kwargs):
        if where in str(file):
            Path(file).write_bytes(b"\x93NUMPY part of a file")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(file, array, *args, **kwargs)

    return save


def full_write_bytes(where: str):
    """``Path.write_bytes`` (the atomic writers' and ``MotionCoefficients.save``'s) failing as on a full disk."""
    real = Path.write_bytes

    def write_bytes(self, data):
        if where in str(self):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, data)

    return write_bytes


SYNTH = ["--identities", "2", "--clips-per-identity", "1", "--frames", "3", "--size", "64", "--no-sheets", "-q"]


@pytest.mark.parametrize("writer", ["frames", "motion"])
def test_full_disk_in_synth_is_one_line_and_leaves_no_partial_clip(tmp_path, capsys, monkeypatch, writer):
    out = tmp_path / "data"
    if writer == "frames":
        monkeypatch.setattr(np, "save", full_np_save("id00001"))
    else:
        monkeypatch.setattr(Path, "write_bytes", full_write_bytes("id00001"))
    # two forked workers: they inherit the patched writer; the failure comes back from one of them
    assert cli_main(["synth", "-o", str(out), "--workers", "2", *SYNTH]) == 2
    err = capsys.readouterr().err.strip()
    clip = out / "test" / "id00001" / "clip000"  # 2 identities, test fraction 0.1: id00001 is held out
    assert err.startswith(f"mimaface synth: error: {clip}: could not write it: no space left on the device, ")
    assert err.endswith(" MiB free there") and "\n" not in err
    assert list(clip.parent.iterdir()) == []  # nothing of the failed clip, not even a hidden part
    # The other worker is stopped where it is: a clip it finished is whole (a killed write is only hidden).
    for visible in (c for c in out.glob("*/*/*") if not c.name.startswith(".")):
        assert sorted(p.name for p in visible.iterdir()) == ["clip.json", "frames.npy", "motion.npz", "renders.npy"]
    assert not (out / ".lock").exists()
    monkeypatch.undo()
    assert cli_main(["synth", "-o", str(out), "--workers", "1", *SYNTH]) == 0  # space again: it finishes
    assert [c.clip for split in ("train", "test") for c in list_clips(out, split)] == ["clip000", "clip000"]


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """Two short videos of the bundled portrait, one identity."""
    folder = tmp_path_factory.mktemp("videos")
    (folder / "alice").mkdir()
    frames = np.stack([load_image(asset_path("portrait.jpg"))] * 8)
    for name in ("a", "b"):
        write_video(folder / "alice" / f"{name}.mp4", frames, 25.0)
    return folder


PREPROCESS = ["--size", "64", "--min-clip-frames", "4", "-q"]


def test_full_disk_in_preprocess_is_one_line_and_the_video_is_retried(videos, tmp_path, capsys, monkeypatch):
    out = tmp_path / "data"
    monkeypatch.setattr(np, "save", full_np_save("a-000"))
    assert cli_main(["preprocess", str(videos), "-o", str(out), "--workers", "1", *PREPROCESS]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"mimaface preprocess: error: {out / 'train' / 'alice' / 'a-000'}: could not write it: "
                          "no space left on the device, ") and "\n" not in err
    files = all_files(out)
    assert not any(part.startswith(".") for name in files for part in Path(name).parts)
    assert "train/alice/a-000" not in files and "train/alice/b-000" not in files  # the run stopped at a.mp4
    records = [json.loads(line) for line in (out / preprocess.LOG_NAME).read_text().splitlines()]
    assert [(r["video"], r["status"], r["retry"]) for r in records if "video" in r] == [("alice/a.mp4", "failed", True)]
    monkeypatch.undo()
    assert cli_main(["preprocess", str(videos), "-o", str(out), "--workers", "1", *PREPROCESS]) == 0
    assert [c.clip for c in list_clips(out, "train")] == ["a-000", "b-000"]  # retried, not skipped as failed


def test_a_clip_that_cannot_be_written_stops_preprocess_workers_too(videos, tmp_path, capsys):
    # Worker processes are spawned (no patch reaches them): a file where the identity folder goes
    # makes every clip write fail there.
    out = tmp_path / "data"
    (out / "train").mkdir(parents=True)
    (out / "train" / "alice").write_text("in the way")
    assert cli_main(["preprocess", str(videos), "-o", str(out), "--workers", "2", *PREPROCESS]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mimaface preprocess: error: ") and "\n" not in err
    assert f"{out / 'train' / 'alice'}/" in err and ": could not write it (" in err
    records = [json.loads(line) for line in (out / preprocess.LOG_NAME).read_text().splitlines()]
    assert [r.get("stop") for r in records if "video" in r] == [True]  # the first failure ended the run


def test_full_disk_while_logging_is_one_line(tmp_path, monkeypatch):
    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    log = tmp_path / preprocess.LOG_NAME
    refused(lambda: preprocess._RunLog(log).write({"event": "start"}), f"{log}: could not write it: no space left")
