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
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from scipy.interpolate import PchipInterpolator

from mimaface.errors import InputError
from mimaface.face3d.model import GAZE_NAMES, FaceModel
from mimaface.face3d.pose import POSE_NAMES
from mimaface.files import write_npz, write_text

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
        t = len(self.pose)
        if self.pose.shape != (t, 6) or self.gaze.shape != (t, 4) or self.expression.shape != (t, len(self.expression_names)):
            raise InputError(f"inconsistent motion arrays: pose {self.pose.shape}, expression {self.expression.shape}, gaze {self.gaze.shape}")

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
        path = Path(path)
        if not path.is_file():
            raise InputError(f"{path}: no such file")
        try:
            data = np.load(path)
            return cls(
                pose=data["pose"].astype(np.float64),
                expression=data["expression"].astype(np.float64),
                gaze=data["gaze"].astype(np.float64),
                identity=data["identity"].astype(np.float64),
                expression_names=tuple(str(n) for n in data["expression_names"]),
                identity_names=tuple(str(n) for n in data["identity_names"]),
                fps=float(data["fps"]),
                image_size=tuple(int(v) for v in data["image_size"]),
                landmarks=data["landmarks"].astype(np.float64) if "landmarks" in data.files else None,
            )
        except (KeyError, ValueError, OSError) as exc:
            raise InputError(f"{path}: not a mimaface coefficient file ({exc})") from None

    def for_model(self, model: FaceModel) -> MotionCoefficients:
        """Check the coefficient columns match ``model`` (same names, same order)."""
        if self.expression_names != model.expression_names or self.identity_names != model.identity_names:
            raise InputError("coefficient file was made with a different face model (blendshape or identity names differ)")
        return self


def load_motion(path: str | os.PathLike, model: FaceModel | None = None) -> MotionCoefficients:
    """Load a coefficient ``.npz`` or a ``MOTION.json``."""
    model = model or FaceModel.load()
    suffix = Path(path).suffix.lower()
    if suffix == ".npz":
        return MotionCoefficients.load(path).for_model(model)
    if suffix == ".json":
        return motion_from_json(path, model)
    raise InputError(f"{path}: unsupported motion file (expected .npz or .json)")


def motion_from_json(path_or_dict: str | os.PathLike | dict, model: FaceModel | None = None) -> MotionCoefficients:
    """Parse a ``MOTION.json`` (path or already-parsed dict) into per-frame coefficients."""
    model = model or FaceModel.load()
    if isinstance(path_or_dict, dict):
        spec, where = path_or_dict, "motion"
    else:
        where = str(path_or_dict)
        try:
            spec = json.loads(Path(path_or_dict).read_text())
        except FileNotFoundError:
            raise InputError(f"{where}: no such file") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InputError(f"{where}: invalid JSON ({exc})") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("frames"), list) or not spec["frames"]:
        raise InputError(f'{where}: expected an object with a non-empty "frames" list')

    fps = float(spec.get("fps", 25.0))
    channels = {name: (0, i) for i, name in enumerate(POSE_NAMES)}
    channels |= {name: (1, i) for i, name in enumerate(model.expression_names)}
    channels |= {name: (2, i) for i, name in enumerate(GAZE_NAMES)}

    keyframes: dict[str, list[tuple[float, float]]] = {}
    for position, entry in enumerate(spec["frames"]):
        if not isinstance(entry, dict):
            raise InputError(f"{where}: frame entry {position} is not an object")
        if "frame" in entry:
            t = float(entry["frame"])
        elif "time" in entry:
            t = float(entry["time"]) * fps
        else:
            t = float(position)
        for key, value in entry.items():
            if key in ("frame", "time"):
                continue
            if key not in channels:
                raise InputError(f"{where}: unknown channel {key!r} in frame entry {position}; valid names: "
                                 + ", ".join(sorted(channels)))
            keyframes.setdefault(key, []).append((t, float(value)))

    last = max(t for keys in keyframes.values() for t, _ in keys) if keyframes else 0.0
    num_frames = int(spec.get("num_frames", int(round(last)) + 1))
    if num_frames < 1:
        raise InputError(f"{where}: num_frames must be at least 1")
    frames = np.arange(num_frames, dtype=np.float64)
    pose = np.zeros((num_frames, 6))
    pose[:, 5] = DEFAULT_SCALE
    expression = np.zeros((num_frames, model.num_expressions))
    gaze = np.zeros((num_frames, 4))
    targets = (pose, expression, gaze)
    interpolation = spec.get("interpolation", "smooth")
    if interpolation not in ("smooth", "linear"):
        raise InputError(f'{where}: "interpolation" must be "smooth" or "linear", not {interpolation!r}')
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

    identity = np.zeros(model.num_identities)
    for key, value in (spec.get("identity") or {}).items():
        if key not in model.identity_names:
            raise InputError(f"{where}: unknown identity name {key!r}; valid names: " + ", ".join(model.identity_names))
        identity[model.identity_names.index(key)] = float(value)
    size = tuple(int(v) for v in spec.get("image_size", DEFAULT_IMAGE_SIZE))
    return MotionCoefficients(pose, expression, gaze, identity, model.expression_names, model.identity_names,
                              fps=fps, image_size=size)


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
