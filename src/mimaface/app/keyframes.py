"""The motion editor's operations on a MOTION.json (see :mod:`mimaface.face3d.coefficients`): parse the
editor's text, its sliders (the named blendshapes by face region, head rotation, gaze) and the values
they show at a frame, keying the sliders that were moved, listing and removing keyframes. The text
stays a MOTION.json that ``mimaface animate`` reads as it is."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass

import numpy as np

from mimaface.errors import InputError
from mimaface.face3d.coefficients import MotionCoefficients, motion_from_json
from mimaface.face3d.model import GAZE_NAMES, FaceModel
from mimaface.face3d.pose import POSE_NAMES

#: The blendshape groups by name prefix (ARKit names), in the order the editor shows them.
EXPRESSION_GROUPS = {"Jaw and mouth": ("jaw", "mouth"), "Brows": ("brow",), "Eyes": ("eye",),
                     "Cheeks and nose": ("cheek", "nose")}
ROTATION_RANGE = {"yaw": 45.0, "pitch": 30.0, "roll": 30.0}  # degrees either way
GAZE_RANGE = 0.3  # iris offset in eye widths either way


@dataclass(frozen=True)
class SliderChannel:
    """One slider of the editor: a MOTION.json channel and its range."""

    name: str
    minimum: float
    maximum: float
    step: float

    def shown(self, value: float) -> float:
        """``value`` as the slider shows it: on its steps, inside its range."""
        return round(min(max(round(value / self.step) * self.step, self.minimum), self.maximum), 4)


def slider_groups(model: FaceModel | None = None) -> dict[str, list[SliderChannel]]:
    """The editor's sliders by group: head pose (yaw, pitch, roll), the face model's blendshapes by
    region, gaze. A blendshape no region claims goes to "Other"."""
    model = model or FaceModel.load()
    groups = {"Head pose": [SliderChannel(name, -limit, limit, 0.5) for name, limit in ROTATION_RANGE.items()]}
    left = list(model.expression_names)
    for group, prefixes in EXPRESSION_GROUPS.items():
        groups[group] = [SliderChannel(name, 0.0, 1.0, 0.01) for name in left if name.startswith(prefixes)]
        left = [name for name in left if not name.startswith(prefixes)]
    if left:
        groups["Other"] = [SliderChannel(name, 0.0, 1.0, 0.01) for name in left]
    groups["Gaze"] = [SliderChannel(name, -GAZE_RANGE, GAZE_RANGE, 0.01) for name in GAZE_NAMES]
    return groups


def channel_names(model: FaceModel | None = None) -> list[str]:
    """Every name a keyframe may set: pose, then blendshapes, then gaze."""
    model = model or FaceModel.load()
    return [*POSE_NAMES, *model.expression_names, *GAZE_NAMES]


def parse(text: str) -> dict:
    """The editor's text as a MOTION.json object (one InputError line when it is not JSON)."""
    try:
        spec = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"not valid JSON: {exc}") from None
    if not isinstance(spec, dict):
        raise InputError('a MOTION.json is an object with a "frames" list')
    return spec


def value_at(motion: MotionCoefficients, frame: int, channel: str) -> float:
    """The value ``channel`` takes at ``frame`` (interpolated between keyframes, as animated)."""
    array, column = _column(motion, channel)
    return float(array[min(max(int(frame), 0), motion.num_frames - 1), column])


def with_values(motion: MotionCoefficients, frame: int, values: dict[str, float]) -> MotionCoefficients:
    """A copy of ``motion`` whose channels take ``values`` at ``frame`` (the sliders before they are keyed)."""
    motion = motion.select(slice(None))
    for channel, value in values.items():
        array, column = _column(motion, channel)
        array[frame, column] = value
    return motion


def moved(motion: MotionCoefficients, frame: int, sliders: list[SliderChannel], values: list[float]) -> dict[str, float]:
    """The sliders' values that differ from what they showed at ``frame`` (the channels to key)."""
    return {slider.name: slider.shown(value) for slider, value in zip(sliders, values)
            if slider.shown(value) != slider.shown(value_at(motion, frame, slider.name))}


def set_keys(spec: dict, frame: int, values: dict[str, float]) -> dict:
    """A copy of ``spec`` with each channel of ``values`` keyed at ``frame`` (``num_frames`` grows to hold it)."""
    known = channel_names()
    unknown = [channel for channel in values if channel not in known]
    if unknown:
        raise InputError(f"unknown channel {unknown[0]!r}")
    spec = _by_frame(spec)
    entries = spec["frames"]
    entry = next((e for e in entries if e["frame"] == frame), None)
    if entry is None:
        entry = {"frame": frame}
        entries.append(entry)
        entries.sort(key=lambda e: e["frame"])
    entry.update({channel: round(float(value), 4) for channel, value in values.items()})
    if "num_frames" in spec and frame >= int(spec["num_frames"]):
        spec["num_frames"] = frame + 1
    return spec


def remove_keys(spec: dict, frame: int) -> dict:
    """A copy of ``spec`` without the keyframes at ``frame``; the motion keeps its length (an entry
    emptied is dropped, unless it is the last one: a MOTION.json has at least one)."""
    length = motion_from_json(spec).num_frames
    spec = _by_frame(spec)
    entries = spec["frames"]
    entry = next((e for e in entries if e["frame"] == frame and len(e) > 1), None)
    if entry is None:
        raise InputError(f"frame {frame} has no keyframe")
    if len(entries) > 1:
        entries.remove(entry)
    else:
        entries[0] = {"frame": frame}
    spec["num_frames"] = length
    return spec


def listed(spec: dict) -> list[list]:
    """The keyframes as table rows: [frame, "channel value, ..."] for each entry that keys something."""
    return [[entry["frame"], ", ".join(f"{key} {value:g}" for key, value in entry.items() if key != "frame")]
            for entry in _by_frame(spec)["frames"] if len(entry) > 1]


def _column(motion: MotionCoefficients, channel: str) -> tuple[np.ndarray, int]:
    """The array holding ``channel`` and its column."""
    if channel in POSE_NAMES:
        return motion.pose, POSE_NAMES.index(channel)
    if channel in GAZE_NAMES:
        return motion.gaze, GAZE_NAMES.index(channel)
    if channel in motion.expression_names:
        return motion.expression, motion.expression_names.index(channel)
    raise InputError(f"unknown channel {channel!r}")


def _by_frame(spec: dict) -> dict:
    """A checked deep copy whose entries all say their frame (``"time"`` and position converted), as
    :func:`motion_from_json` reads them."""
    motion_from_json(spec)  # the same checks and messages as animate's
    spec = copy.deepcopy(spec)
    fps = float(spec.get("fps", 25.0))
    for position, entry in enumerate(spec["frames"]):
        if "frame" not in entry:
            frame = float(entry.pop("time")) * fps if "time" in entry else position
            entry["frame"] = int(frame) if float(frame).is_integer() else frame
        spec["frames"][position] = {"frame": entry.pop("frame"), **entry}
    return spec
