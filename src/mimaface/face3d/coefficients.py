"""Motion coefficient files: the ``.npz`` format and hand-written ``MOTION.json``.

``.npz`` (written by ``mimaface extract``; every array is optional only where noted):

=====================  ==============  ===========================================================
key                    shape / type    meaning
=====================  ==============  ===========================================================
``pose``               (T,6) float32   yaw, pitch, roll (degrees), tx, ty, scale (normalised image
                                       frame, see :mod:`mimaface.face3d.camera` and ``pose``)
``expression``         (T,K) float32   blendshape coefficients in [0, 1]
``expression_names``   (K,) str        ARKit-style blendshape names, in column order
``gaze``               (T,4) float32   leftX, leftY, rightX, rightY (see :mod:`.model`)
``identity``           (M,) float32    identity coefficients (standard-normal prior)
``identity_names``     (M,) str        identity basis names
``landmarks``          (T,478,3) f32   detected landmarks in pixels (optional: absent for motion
                                       that was not detected, e.g. from MOTION.json)
``fps``                () float        frame rate
``image_size``         (2,) int        width, height of the frames the pose refers to
``format_version``     () int          1
=====================  ==============  ===========================================================

``MOTION.json`` — motion written by hand, as keyframes::

    {"fps": 25, "num_frames": 50, "interpolation": "smooth",
     "identity": {"faceWidth": 1.0},
     "frames": [{"frame": 0, "jawOpen": 0.0, "yaw": 0},
                {"frame": 12, "jawOpen": 0.6, "yaw": 10},
                {"frame": 49, "jawOpen": 0.0, "yaw": -10, "gazeLeftX": 0.1, "gazeRightX": 0.1}]}

Keys of a frame are blendshape names, pose names (``yaw pitch roll tx ty scale``) and gaze names
(``gazeLeftX gazeLeftY gazeRightX gazeRightY``). Each channel is interpolated between the
keyframes that set it (``"linear"``, or ``"smooth"``: monotone cubic, no overshoot), held
constant before its first and after its last keyframe, and defaults to neutral (0; ``scale``
0.8) when never set. Without ``"frame"`` keys, entries are consecutive frames. ``"time"`` (in
seconds) may be used instead of ``"frame"``. :func:`save_motion_json` writes any motion (an
extracted or retargeted one) as a MOTION.json that reads back as the same coefficients.

Both are checked before anything is allocated from them, against :func:`mimaface.limits.limits`: an
``.npz`` array's shape and type are read from its header before its data, a MOTION.json's size before
it is read and its frame counts and indices before any array is made; every number must be finite.
A bad file is one :class:`~mimaface.errors.InputError` line naming the file, the field and the limit.
"""

from __future__ import annotations

import json
import math
import os
import re
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO

import numpy as np
from scipy.interpolate import PchipInterpolator

from mimaface.errors import InputError, one_line
from mimaface.face3d.model import GAZE_NAMES, NUM_LANDMARKS, FaceModel
from mimaface.face3d.pose import POSE_NAMES
from mimaface.files import write_npz, write_text
from mimaface.limits import Limits, check_count, limits
from mimaface.values import is_finite_number, is_number

FORMAT_VERSION = 1
DEFAULT_SCALE = 0.8
DEFAULT_IMAGE_SIZE = (512, 512)


@dataclass
class MotionCoefficients:
    """A face's motion over ``T`` frames, in the face model's coefficients."""

    pose: np.ndarray
    expression: np.ndarray
    gaze: np.ndarray
    identity: np.ndarray
    expression_names: tuple[str, ...]
    identity_names: tuple[str, ...]
    fps: float = 25.0
    image_size: tuple[int, int] = DEFAULT_IMAGE_SIZE
    landmarks: np.ndarray | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        arrays = {"pose": self.pose, "expression": self.expression, "gaze": self.gaze, "identity": self.identity}
        if self.landmarks is not None:
            arrays["landmarks"] = self.landmarks
        for name, array in arrays.items():
            if not isinstance(array, np.ndarray) or array.dtype.kind not in "fiu":
                got = f"a {array.dtype} array" if isinstance(array, np.ndarray) else type(array).__name__
                raise InputError(f"{name} must be a numpy array of numbers, got {got}")
        t = len(self.pose) if self.pose.ndim else 0
        if self.pose.shape != (t, 6) or self.gaze.shape != (t, 4) or self.expression.shape != (t, len(self.expression_names)):
            raise InputError(f"inconsistent motion arrays: pose {self.pose.shape}, expression {self.expression.shape}, gaze {self.gaze.shape}")
        if self.identity.shape != (len(self.identity_names),):
            raise InputError(f"identity has shape {self.identity.shape}, expected ({len(self.identity_names)},): "
                             "one value per identity name")
        if self.landmarks is not None and self.landmarks.shape != (t, NUM_LANDMARKS, 3):
            raise InputError(f"landmarks have shape {self.landmarks.shape}, expected ({t}, {NUM_LANDMARKS}, 3)")
        if t < 1:
            raise InputError("the motion has no frames")
        check_count(t, limits().frames, "frames", where="the motion", name="frames")
        for name, array in arrays.items():
            check_finite(array, name)
        self.fps = check_fps(self.fps, "fps")
        self.image_size = check_image_size(self.image_size, "image_size")

    @property
    def num_frames(self) -> int:
        return len(self.pose)

    def select(self, frames: Sequence[int] | np.ndarray | slice) -> MotionCoefficients:
        """The motion of some frames, in the given order (repeats allowed): pose, expression, gaze and
        landmarks (when present) selected by ``frames``, an index sequence (negative counts from the
        end) or a slice; identity, names, fps, image size and extra kept (copied)."""
        count = self.num_frames
        index = np.arange(count)[frames] if isinstance(frames, slice) else np.asarray(frames)
        if index.ndim != 1:
            raise InputError(f"frames must be a sequence of frame indices or a slice, got an array of shape "
                             f"{index.shape}")
        if index.size == 0:
            raise InputError(f"the selection holds no frames (the motion has {count})")
        if not np.issubdtype(index.dtype, np.integer):
            raise InputError(f"frame indices must be integers, got {index.dtype}")
        outside = index[(index < -count) | (index >= count)]
        if outside.size:
            raise InputError(f"frame index {int(outside[0])} is out of range for a motion of {count} frames "
                             f"(valid: {-count} to {count - 1})")
        return replace(self, pose=self.pose[index], expression=self.expression[index], gaze=self.gaze[index],
                       identity=self.identity.copy(), extra=dict(self.extra),
                       landmarks=None if self.landmarks is None else self.landmarks[index])

    def save(self, path: str | os.PathLike) -> None:
        """Write the ``.npz`` atomically (a temporary file renamed into place)."""
        arrays = {
            "pose": self.pose.astype(np.float32),
            "expression": self.expression.astype(np.float32),
            "expression_names": np.array(self.expression_names),
            "gaze": self.gaze.astype(np.float32),
            "identity": self.identity.astype(np.float32),
            "identity_names": np.array(self.identity_names),
            "fps": np.float64(self.fps),
            "image_size": np.array(self.image_size, dtype=np.int64),
            "format_version": np.int64(FORMAT_VERSION),
        }
        if self.landmarks is not None:
            arrays["landmarks"] = self.landmarks.astype(np.float32)
        write_npz(path, arrays)

    @classmethod
    def load(cls, path: str | os.PathLike) -> MotionCoefficients:
        """Read a coefficient ``.npz``. Each array's shape and type are checked from its header before
        its data is read (so a small file cannot declare a huge array), no pickled object is ever
        read, and every value is checked; a bad file is an InputError naming it and the array."""
        path = Path(path)
        if not path.is_file():
            raise InputError(f"{path}: no such file")
        try:
            with zipfile.ZipFile(path) as archive:
                arrays = _read_npz(archive, path)
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as exc:
            raise InputError(f"{path}: not a mimaface coefficient file ({one_line(exc)})") from None
        version = int(arrays.get("format_version", FORMAT_VERSION))
        if version != FORMAT_VERSION:
            raise InputError(f"{path}: format_version is {version}; this mimaface reads version {FORMAT_VERSION}")
        try:
            return cls(
                pose=arrays["pose"].astype(np.float64),
                expression=arrays["expression"].astype(np.float64),
                gaze=arrays["gaze"].astype(np.float64),
                identity=arrays["identity"].astype(np.float64),
                expression_names=tuple(str(n) for n in arrays["expression_names"]),
                identity_names=tuple(str(n) for n in arrays["identity_names"]),
                fps=float(arrays["fps"]),
                image_size=check_image_size(arrays["image_size"].tolist(), "image_size", limits().output_side),
                landmarks=arrays["landmarks"].astype(np.float64) if "landmarks" in arrays else None,
            )
        except InputError as exc:
            raise InputError(f"{path}: {exc}") from None

    def for_model(self, model: FaceModel, source: str = "the motion") -> MotionCoefficients:
        """Check the coefficient columns match ``model`` (same names, same order); ``source`` (a file
        name) starts the message."""
        for what, own, expected in (("expression", self.expression_names, model.expression_names),
                                    ("identity", self.identity_names, model.identity_names)):
            if own != expected:
                raise InputError(f"{source} was made with a different face model: its {len(own)} {what} names "
                                 f"differ from the model's {len(expected)}")
        return self


# What each array of a coefficient .npz must be: its shape (a letter is a size the arrays share: T frames,
# K expression columns, M identity columns) and the kinds of numpy dtype it may have.
_NPZ_ARRAYS: dict[str, tuple[tuple[int | str, ...], str]] = {
    "pose": (("T", 6), "f"),
    "expression_names": (("K",), "U"),
    "expression": (("T", "K"), "f"),
    "gaze": (("T", 4), "f"),
    "identity_names": (("M",), "U"),
    "identity": (("M",), "f"),
    "landmarks": (("T", NUM_LANDMARKS, 3), "f"),
    "fps": ((), "fiu"),
    "image_size": ((2,), "iu"),
    "format_version": ((), "iu"),
}
_NPZ_OPTIONAL = frozenset({"landmarks", "format_version"})
_KIND_NAMES = {"f": "floating-point numbers", "U": "strings", "fiu": "a number", "iu": "integers"}


def _read_npz(archive: zipfile.ZipFile, path: Path) -> dict[str, np.ndarray]:
    """The arrays of a coefficient file, every header checked (shape, dtype, declared size against the
    limits and against the bytes the archive holds) before any array's data is read."""
    lim = limits()
    members = set(archive.namelist())
    sizes: dict[str, int] = {}
    present = []
    for key, (shape, kinds) in _NPZ_ARRAYS.items():
        member, where = f"{key}.npy", f"{path}: {key}"
        if member not in members:
            if key in _NPZ_OPTIONAL:
                continue
            raise InputError(f"{path}: not a mimaface coefficient file (no {key!r} array)")
        info = archive.getinfo(member)
        with archive.open(info) as fh:
            found, dtype = _npy_header(fh)
            header_bytes = fh.tell()
        if dtype.kind not in kinds:
            raise InputError(f"{where} holds {dtype}, expected {_KIND_NAMES[kinds]}")
        if len(found) == len(shape):
            for axis, n in zip(shape, found):
                if isinstance(axis, str):
                    sizes.setdefault(axis, n)
        expected = tuple(sizes.get(axis, axis) if isinstance(axis, str) else axis for axis in shape)
        if found != expected:
            raise InputError(f"{where} has shape {found}, expected {expected}")
        if key == "pose":
            if found[0] < 1:
                raise InputError(f"{where} holds no frames")
            check_count(found[0], lim.frames, "frames", where=where, name="frames")
        if dtype.kind == "U":
            check_count(found[0], lim.motion_columns, "names", where=where, name="motion_columns")
            check_count(dtype.itemsize // 4, lim.motion_name_chars, "characters in a name", where=where,
                        name="motion_name_chars")
        data_bytes = math.prod(found) * dtype.itemsize
        if header_bytes + data_bytes > info.file_size:
            raise InputError(f"{where}: the header declares {data_bytes} bytes of data, the file holds "
                             f"{max(info.file_size - header_bytes, 0)}")
        present.append(key)
    arrays = {}
    for key in present:
        with archive.open(f"{key}.npy") as fh:
            arrays[key] = np.lib.format.read_array(fh, allow_pickle=False)
    return arrays


def _npy_header(fh: IO[bytes]) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype from the header of an ``.npy`` stream (its data is not read)."""
    version = np.lib.format.read_magic(fh)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
    elif version == (2, 0):
        shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
    else:
        raise ValueError(f"unsupported .npy format version {version}")
    return shape, dtype


def load_motion(path: str | os.PathLike, model: FaceModel | None = None) -> MotionCoefficients:
    """Load a coefficient ``.npz`` or a ``MOTION.json`` (checked: see the module notes)."""
    model = model or FaceModel.load()
    suffix = Path(path).suffix.lower()
    if suffix == ".npz":
        return MotionCoefficients.load(path).for_model(model, str(path))
    if suffix == ".json":
        return motion_from_json(path, model)
    raise InputError(f"{path}: unsupported motion file (expected .npz or .json)")


def motion_from_json(path_or_dict: str | os.PathLike | dict, model: FaceModel | None = None) -> MotionCoefficients:
    """Parse a ``MOTION.json`` (path or already-parsed dict) into per-frame coefficients, every value
    checked against :func:`mimaface.limits.limits` before any array is made."""
    model = model or FaceModel.load()
    lim = limits()
    if isinstance(path_or_dict, dict):
        spec, where = path_or_dict, "motion"
    elif isinstance(path_or_dict, (str, os.PathLike)):
        where = str(path_or_dict)
        spec = _read_json(Path(path_or_dict), lim)
    else:
        raise InputError(f"a motion is a MOTION.json path or a dict, got {type(path_or_dict).__name__}")
    _check_depth(spec, lim.motion_json_depth, where)
    if not isinstance(spec, dict) or not isinstance(spec.get("frames"), list) or not spec["frames"]:
        raise InputError(f'{where}: expected an object with a non-empty "frames" list')
    check_count(len(spec["frames"]), lim.frames, "frame entries", where=f'{where}: "frames"', name="frames")

    fps = check_fps(spec.get("fps", 25.0), f"{where}: fps")
    channels = {name: (0, i) for i, name in enumerate(POSE_NAMES)}
    channels |= {name: (1, i) for i, name in enumerate(model.expression_names)}
    channels |= {name: (2, i) for i, name in enumerate(GAZE_NAMES)}

    keyframes: dict[str, list[tuple[float, float]]] = {}
    for position, entry in enumerate(spec["frames"]):
        label = f"{where}: frame entry {position}"
        if not isinstance(entry, dict):
            raise InputError(f"{label} is not an object")
        if "frame" in entry:
            t = finite_number(entry["frame"], f"{label}, frame")
            at = f"frame {t:g}"
        elif "time" in entry:
            seconds = finite_number(entry["time"], f"{label}, time")
            t = seconds * fps
            at = f"time {seconds:g} s (frame {t:g} at {fps:g} fps)"
        else:
            t, at = float(position), ""
        if t < 0:
            raise InputError(f"{label}: {at} is before the first frame (0)")
        if t >= lim.frames:  # checked here: the arrays below have a row per frame
            raise InputError(f"{label}: {at} is beyond the limit of {lim.frames} frames "
                             f"(set {Limits.variable('frames')} to allow more)")
        for key, value in entry.items():
            if key in ("frame", "time"):
                continue
            if key not in channels:
                raise InputError(f"{where}: unknown channel {key!r} in frame entry {position}; valid names: "
                                 + ", ".join(sorted(channels)))
            keyframes.setdefault(key, []).append((t, finite_number(value, f"{label}, {key}")))

    last = max(t for keys in keyframes.values() for t, _ in keys) if keyframes else 0.0
    num_frames = whole_number(spec.get("num_frames", round(last) + 1), f"{where}: num_frames")
    if num_frames < 1:
        raise InputError(f"{where}: num_frames must be at least 1, got {num_frames}")
    check_count(num_frames, lim.frames, "frames", where=f"{where}: num_frames", name="frames")
    interpolation = spec.get("interpolation", "smooth")
    if interpolation not in ("smooth", "linear"):
        raise InputError(f'{where}: "interpolation" must be "smooth" or "linear", not {interpolation!r}')
    identity_spec = spec.get("identity")
    identity_spec = {} if identity_spec is None else identity_spec
    if not isinstance(identity_spec, dict):
        raise InputError(f'{where}: "identity" must be an object of identity names and values, got '
                         f"{_shown(identity_spec)}")
    identity = np.zeros(model.num_identities)
    for key, value in identity_spec.items():
        if key not in model.identity_names:
            raise InputError(f"{where}: unknown identity name {key!r}; valid names: " + ", ".join(model.identity_names))
        identity[model.identity_names.index(key)] = finite_number(value, f"{where}: identity {key}")
    size = check_image_size(spec.get("image_size", DEFAULT_IMAGE_SIZE), f"{where}: image_size", lim.output_side)

    frames = np.arange(num_frames, dtype=np.float64)
    pose = np.zeros((num_frames, 6))
    pose[:, 5] = DEFAULT_SCALE
    expression = np.zeros((num_frames, model.num_expressions))
    gaze = np.zeros((num_frames, 4))
    targets = (pose, expression, gaze)
    smooth = interpolation == "smooth"
    for key, points in keyframes.items():
        group, column = channels[key]
        times, values = (np.array(v) for v in zip(*sorted(dict(points).items())))
        if smooth and len(times) > 1:
            curve = PchipInterpolator(times, values, extrapolate=False)(np.clip(frames, times[0], times[-1]))
        else:
            curve = np.interp(frames, times, values)
        targets[group][:, column] = curve
    expression = np.clip(expression, 0.0, 1.0)
    return MotionCoefficients(pose, expression, gaze, identity, model.expression_names, model.identity_names,
                              fps=fps, image_size=size)


class _NonFinite(Exception):
    """A NaN or Infinity literal in a MOTION.json (JSON has none; Python's reader would accept them)."""


# A JSON string, or one of the literals Python's reader accepts beyond JSON: to find where the literal is.
_STRING_OR_LITERAL = re.compile(r'"(?:[^"\\]|\\.)*"|(-?Infinity|NaN)')
# Longer integers are beyond every limit. Read as floats (inf beyond 1e308) they fail the range checks with
# the field named, where int() would stop at Python's int-string limit (4300 digits) with a ValueError.
_INT_DIGITS = 20


def _parse_int(text: str) -> int | float:
    return int(text) if len(text) <= _INT_DIGITS else float(text)


def _refuse_literal(literal: str) -> None:
    raise _NonFinite(literal)


def _read_json(path: Path, lim: Limits) -> object:
    """The parsed MOTION.json at ``path``: its size checked before it is read, NaN and Infinity refused."""
    try:
        with path.open("rb") as fh:
            check_count(os.fstat(fh.fileno()).st_size, lim.motion_json_bytes, "bytes", where=f"{path}: file size",
                        name="motion_json_bytes")
            raw = bytearray()  # read in pieces, bounded even if the file grows or is not a regular file
            while len(raw) <= lim.motion_json_bytes and (piece := fh.read(1 << 20)):
                raw += piece
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    check_count(len(raw), lim.motion_json_bytes, "bytes", where=f"{path}: file size", name="motion_json_bytes")
    try:
        text = raw.decode("utf-8")
        return json.loads(text, parse_constant=_refuse_literal, parse_int=_parse_int)
    except _NonFinite:
        match = next(m for m in _STRING_OR_LITERAL.finditer(text) if m.group(1))
        line = text.count("\n", 0, match.start(1)) + 1
        column = match.start(1) - text.rfind("\n", 0, match.start(1))
        raise InputError(f"{path}: {match.group(1)} at line {line} column {column}: every number in a "
                         "MOTION.json must be finite") from None
    except RecursionError:
        raise InputError(f"{path}: the JSON is nested deeper than the limit of {lim.motion_json_depth} "
                         "levels") from None
    except ValueError as exc:  # also UnicodeDecodeError
        raise InputError(f"{path}: invalid JSON ({exc})") from None


def _check_depth(value: object, limit: int, where: str) -> None:
    """Refuse lists and objects nested more than ``limit`` deep (walked without recursion)."""
    stack = [(value, 1)] if isinstance(value, (dict, list, tuple)) else []
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            raise InputError(f"{where}: the JSON is nested deeper than the limit of {limit} levels")
        children = item.values() if isinstance(item, dict) else item
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list, tuple)))


def _shown(value: object) -> str:
    """``value`` as a short JSON-like text, for an error message."""
    text = json.dumps(value, default=repr)
    return text if len(text) <= 40 else text[:37] + "..."


def finite_number(value: object, what: str) -> float:
    """``value`` as a float when it is a finite real number (a bool is not a number); else an InputError
    that starts with ``what`` (the file and the field)."""
    if not is_number(value):
        raise InputError(f"{what} must be a number, got {_shown(value)}")
    if not is_finite_number(value):
        raise InputError(f"{what} must be a finite number (at most 1.8e308 in size), got {_shown(value)}")
    return float(value)


def whole_number(value: object, what: str) -> int:
    """``value`` as an int when it is a finite whole number (``25`` or ``25.0``); else an InputError."""
    number = finite_number(value, what)
    if not number.is_integer():
        raise InputError(f"{what} must be a whole number, got {number:g}")
    return int(number)


def check_fps(value: object, what: str) -> float:
    """A frame rate: a finite number above 0 and at most ``limits().fps``; else an InputError."""
    fps = finite_number(value, what)
    limit = limits().fps
    if not 0 < fps <= limit:
        raise InputError(f"{what} must be above 0 and at most {limit:g}, got {fps:g}")
    return fps


def check_image_size(value: object, what: str, limit: int | None = None) -> tuple[int, int]:
    """``(width, height)``: two whole numbers of at least 1 (and at most ``limit``); else an InputError."""
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise InputError(f"{what} must be two whole numbers (width, height), got {_shown(value)}")
    size = (whole_number(value[0], f"{what} width"), whole_number(value[1], f"{what} height"))
    for side, name in zip(size, ("width", "height")):
        if side < 1:
            raise InputError(f"{what} {name} must be at least 1, got {side}")
        if limit is not None:
            check_count(side, limit, "pixels", where=f"{what} {name}", name="output_side")
    return size


def check_finite(array: np.ndarray, what: str) -> None:
    """Refuse an array holding NaN or an infinity, naming the first such entry."""
    bad = ~np.isfinite(array)
    if bad.any():
        index = tuple(int(i) for i in np.argwhere(bad)[0])
        raise InputError(f"{what}[{', '.join(map(str, index))}] is {array[index]}; every value must be finite")


def motion_json_text(spec: dict) -> str:
    """A MOTION.json object as text with one keyframe per line, so it is easy to read and to diff."""
    parts = [f" {json.dumps(key)}: {json.dumps(value)}" for key, value in spec.items() if key != "frames"]
    frames = ",\n".join(f"  {json.dumps(entry)}" for entry in spec["frames"])
    parts.append(f' "frames": [\n{frames}\n ]')
    return "{\n" + ",\n".join(parts) + "\n}\n"


def save_motion_json(motion: MotionCoefficients, path: str | os.PathLike) -> None:
    """Write ``motion`` as a MOTION.json (atomically) that :func:`motion_from_json` reads back as the same
    coefficients (landmarks are not kept): linear, a channel keyed at every frame where it moves, at
    frame 0 where it holds one value, and left out where that value is its neutral one."""
    frames = [{"frame": index} for index in range(motion.num_frames)]
    channels = [*zip(POSE_NAMES, motion.pose.T), *zip(motion.expression_names, motion.expression.T),
                *zip(GAZE_NAMES, motion.gaze.T)]
    for name, values in channels:
        if np.any(values != values[0]):
            for entry, value in zip(frames, values):
                entry[name] = float(value)
        elif values[0] != (DEFAULT_SCALE if name == "scale" else 0.0):
            frames[0][name] = float(values[0])
    spec = {"fps": float(motion.fps), "num_frames": motion.num_frames, "interpolation": "linear",
            "image_size": [int(v) for v in motion.image_size]}
    identity = {name: float(value) for name, value in zip(motion.identity_names, motion.identity) if value != 0}
    if identity:
        spec["identity"] = identity
    spec["frames"] = [entry for entry in frames if len(entry) > 1] or frames[:1]
    write_text(path, motion_json_text(spec))
