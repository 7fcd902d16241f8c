"""A voice recording -> per-frame motion coefficients (:func:`audio_to_motion`).

The result is an ordinary :class:`~mimaface.face3d.coefficients.MotionCoefficients`, the same
thing ``mimaface extract`` makes from a video, so everything downstream (retargeting, both
engines, ``render``) takes it as it takes any driving motion. Frame 0 is the rest face (mouth
closed, head level, eyes on the camera): relative retargeting, the default, measures the motion
from frame 0, so the source keeps its own resting face and only the talking is added.

Groups and their options (each a field of :class:`AudioMotionOptions`): the mouth
(``mouth_scale``; lip sync from phones, or ``lip_sync="loudness"``: the opening from the
loudness envelope alone, the baseline), the head (``pose_scale``, or ``pose_from``: the head
motion of a motion file instead), the brows (``expression_scale``), the gaze (``gaze_scale``) and
the blinks (``blink``); ``still``: the mouth only.

**Speech and silence.** Phones count as speech only in stretches that hold voiced sound near the
speech level (``SpeechGate``): breaths, hiss and noise are unvoiced or quiet, so the lips stay
closed through them. Audio with no speech at all gives a warning and an idle face (mouth closed,
blinking, looking about, a slight sway of the head).
"""

from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mimaface.audio.speech import FRAME_SECONDS, VOWELS, Phone, SpeechAnalysis, SpeechConfig, analyse_speech
from mimaface.audio.talking import TalkingConfig, TalkingInputs, talking_motion
from mimaface.audio.visemes import (
    MOUTH_BLENDSHAPES,
    VisemeRules,
    frame_visemes,
    loudness_gain,
    mouth_curves,
    shape_vector,
    viseme_track,
)
from mimaface.errors import InputError
from mimaface.face3d.coefficients import DEFAULT_SCALE, MotionCoefficients, load_motion
from mimaface.face3d.model import GAZE_NAMES, FaceModel
from mimaface.face3d.pose import POSE_NAMES
from mimaface.files import atomic_output

LIP_SYNC_MODES = ("phones", "loudness")
BROWS = ("browInnerUp", "browOuterUpLeft", "browOuterUpRight")
BLINKS = ("eyeBlinkLeft", "eyeBlinkRight")


@dataclass
class SpeechGate:
    """What counts as speech: stretches of phones (split at gaps of ``gap`` s) holding at least
    ``voiced_frames`` voiced 10 ms frames (voicing >= ``voicing``) no more than ``margin`` dB below
    the speech level (the ``level_percentile`` of voiced frames' loudness, at least ``floor_db``)."""

    gap: float = 0.25
    voicing: float = 0.5
    voiced_frames: int = 3
    margin: float = 20.0
    level_percentile: float = 90.0
    floor_db: float = -60.0


@dataclass
class AudioMotionOptions:
    fps: float = 25.0
    seed: int = 0
    transcript: str | None = None  # the words said: forced alignment; None: the phone loop
    lip_sync: str = "phones"  # one of LIP_SYNC_MODES
    mouth_scale: float = 1.0
    pose_scale: float = 1.0  # the head
    expression_scale: float = 1.0  # the brows (the face besides mouth and lids)
    gaze_scale: float = 1.0
    blink: bool = True
    still: bool = False  # the mouth only: no head motion, gaze, brows or blinks
    pose_from: str | None = None  # a motion file (.npz / MOTION.json) whose head motion is used instead
    rules: VisemeRules = field(default_factory=VisemeRules)
    talking: TalkingConfig = field(default_factory=TalkingConfig)
    gate: SpeechGate = field(default_factory=SpeechGate)
    speech: SpeechConfig = field(default_factory=SpeechConfig)

    def check(self) -> None:
        if not (math.isfinite(self.fps) and 0 < self.fps <= 240):
            raise InputError(f"--fps must be between 0 and 240, got {self.fps:g}")
        if self.lip_sync not in LIP_SYNC_MODES:
            raise InputError(f"unknown lip-sync mode {self.lip_sync!r} (use one of {', '.join(LIP_SYNC_MODES)})")
        for name in ("mouth_scale", "pose_scale", "expression_scale", "gaze_scale"):
            value = getattr(self, name)
            if not (math.isfinite(value) and 0 <= value <= 10):
                raise InputError(f"--{name.replace('_', '-')} must be between 0 and 10, got {value:g}")


def audio_to_motion(path: str | os.PathLike, options: AudioMotionOptions | None = None, *,
                    progress: bool = False) -> MotionCoefficients:
    """Motion coefficients of a face saying what ``path`` (any audio file, or a video's audio track)
    says: ``round(duration x fps)`` frames."""
    options = options or AudioMotionOptions()
    options.check()
    model = FaceModel.load()
    head_source = load_motion(options.pose_from, model) if options.pose_from and not options.still else None
    analysis = analyse_speech(path, options.transcript, phones=options.lip_sync == "phones", config=options.speech,
                              progress=progress)
    motion = motion_from_speech(analysis, options, model, head_source)
    if analysis.unmatched_words:
        missing = analysis.unmatched_words
        warnings.warn(f"{path}: {len(missing)} word(s) of the transcript were not found in the audio (from "
                      f"{' '.join(missing[:5])!r}{' ...' if len(missing) > 5 else ''})", stacklevel=2)
    if not motion.extra["speaking"].any():
        warnings.warn(f"{path}: no speech found; the face stays idle (mouth closed, blinking)", stacklevel=2)
    return motion


def motion_from_speech(analysis: SpeechAnalysis, options: AudioMotionOptions, model: FaceModel | None = None,
                       head_source: MotionCoefficients | None = None) -> MotionCoefficients:
    """The motion of an analysed recording (:func:`audio_to_motion` after the audio is read)."""
    model = model or FaceModel.load()
    fps = options.fps
    count = max(1, round(analysis.duration * fps))
    frame_db = _per_frame(analysis.loudness, count, fps)
    names = model.expression_names
    expression = np.zeros((count, len(names)))
    mouth_columns = [names.index(n) for n in MOUTH_BLENDSHAPES]

    if options.lip_sync == "phones":
        phones, speech_db = speech_phones(analysis, options.gate)
        track = viseme_track(phones, analysis.duration, options.rules)
        visemes = frame_visemes(track, count, fps)
        gain = loudness_gain(frame_db, speech_db, options.rules) if speech_db is not None else None
        mouth = mouth_curves(track, count, fps, options.rules, gain)
        extra = {"phones": phones, "track": track}
    else:
        phones, speech_db = [], _percentile_level(analysis.loudness, options.gate)
        mouth, visemes = loudness_mouth(frame_db, speech_db)
        extra = {}
    mouth[0] = 0.0  # frame 0 is the rest face (see the module notes)
    expression[:, mouth_columns] = options.mouth_scale * mouth
    speaking = np.array([v != "X" for v in visemes])

    pose = np.zeros((count, 6))
    pose[:, 5] = DEFAULT_SCALE
    gaze = np.zeros((count, 4))
    if not options.still:
        level = speech_db if speech_db is not None else float(np.max(frame_db, initial=-90.0))
        inputs = TalkingInputs(fps=fps, loudness=frame_db, speaking=speaking, speech_db=level)
        talking = talking_motion(inputs, options.talking, options.seed)
        pose[:, :3] = options.pose_scale * talking.head
        if head_source is not None:
            pose = head_motion_from(head_source, count, fps, options.pose_scale)
        gaze[:] = options.gaze_scale * np.tile(talking.gaze, 2)
        for name in BROWS:
            expression[:, names.index(name)] = options.expression_scale * talking.brows
        if options.blink:
            for name in BLINKS:
                expression[:, names.index(name)] = talking.blink
        extra |= {"stresses": talking.stresses, "blinks": talking.blinks if options.blink else np.empty(0, int)}
    extra |= {"visemes": visemes, "speaking": speaking, "mode": analysis.mode, "speech_db": speech_db}
    return MotionCoefficients(pose=pose, expression=np.clip(expression, 0.0, 1.0), gaze=gaze,
                              identity=np.zeros(model.num_identities), expression_names=names,
                              identity_names=model.identity_names, fps=fps, extra=extra)


def speech_phones(analysis: SpeechAnalysis, gate: SpeechGate) -> tuple[list[Phone], float | None]:
    """The phones that are speech (see :class:`SpeechGate`) and the speech level in dB (None: no voice)."""
    voiced = analysis.voicing >= gate.voicing
    if not voiced.any():
        return [], None
    level = max(float(np.percentile(analysis.loudness[voiced], gate.level_percentile)), gate.floor_db)
    loud_voice = voiced & (analysis.loudness >= level - gate.margin)
    kept: list[Phone] = []
    island: list[Phone] = []
    for phone in [*sorted(analysis.phones, key=lambda p: p.start), None]:
        if phone is not None and (not island or phone.start - island[-1].end < gate.gap):
            island.append(phone)
            continue
        if island:
            first = int(island[0].start / FRAME_SECONDS)
            last = math.ceil(island[-1].end / FRAME_SECONDS)
            has_vowel = any(p.name in VOWELS for p in island)
            if has_vowel and loud_voice[first:last].sum() >= gate.voiced_frames:
                kept += island
        island = [phone] if phone is not None else []
    return kept, (level if kept else None)


def loudness_mouth(frame_db: np.ndarray, speech_db: float | None, span: float = 30.0) -> tuple[np.ndarray, list[str]]:
    """The baseline: the wide-open shape scaled by loudness (0 at ``span`` dB below the speech level,
    1 at it), and the viseme each opening would be drawn with."""
    if speech_db is None:
        return np.zeros((len(frame_db), len(MOUTH_BLENDSHAPES))), ["X"] * len(frame_db)
    opening = np.clip((frame_db - (speech_db - span)) / span, 0.0, 1.0)
    visemes = [("X" if o < 0.15 else "B" if o < 0.45 else "C" if o < 0.75 else "D") for o in opening]
    return opening[:, None] * shape_vector("D")[None], visemes


def head_motion_from(source: MotionCoefficients, count: int, fps: float, scale: float) -> np.ndarray:
    """The head motion of ``source`` relative to its first frame, resampled to ``count`` frames at
    ``fps`` (played forwards and backwards again when it is shorter), as poses from the rest pose."""
    positions = np.arange(count) / fps * source.fps
    last = source.num_frames - 1
    if last > 0:
        period = 2 * last
        positions = np.mod(positions, period)
        positions = np.where(positions > last, period - positions, positions)
    else:
        positions = np.zeros(count)
    frames = np.arange(source.num_frames)
    resampled = np.stack([np.interp(positions, frames, source.pose[:, k]) for k in range(6)], 1)
    reference = source.pose[0]
    pose = np.zeros((count, 6))
    pose[:, :3] = scale * (resampled[:, :3] - reference[:3])
    pose[:, 3:5] = scale * (resampled[:, 3:5] - reference[3:5]) * (DEFAULT_SCALE / reference[5])
    pose[:, 5] = DEFAULT_SCALE * (resampled[:, 5] / reference[5]) ** scale
    pose[0] = [0, 0, 0, 0, 0, DEFAULT_SCALE]
    return pose


def save_motion(motion: MotionCoefficients, path: str | os.PathLike) -> None:
    """Write ``.npz`` (the coefficient file) or ``.json`` (a MOTION.json with a keyframe per frame)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".npz":
        motion.save(path)
        return
    if suffix != ".json":
        raise InputError(f"{path}: unsupported motion file (use .npz or .json)")
    channels = {name: motion.pose[:, i] for i, name in enumerate(POSE_NAMES)}
    channels |= {name: motion.expression[:, i] for i, name in enumerate(motion.expression_names)}
    channels |= {name: motion.gaze[:, i] for i, name in enumerate(GAZE_NAMES)}
    rest = {"scale": DEFAULT_SCALE}
    used = {name: values for name, values in channels.items() if np.abs(values - rest.get(name, 0.0)).max() > 1e-6}
    frames = [{"frame": i, **{name: round(float(values[i]), 5) for name, values in used.items()}}
              for i in range(motion.num_frames)]
    spec = {"fps": motion.fps, "num_frames": motion.num_frames, "interpolation": "linear",
            "image_size": list(motion.image_size), "frames": frames}
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(spec, separators=(",", ":")))


def _per_frame(values: np.ndarray, count: int, fps: float) -> np.ndarray:
    """The mean of a 10 ms series over each video frame (the last value held past its end)."""
    if len(values) == 0:
        return np.full(count, -90.0)
    edges = np.round(np.arange(count + 1) / fps / FRAME_SECONDS).astype(int)
    edges = np.clip(edges, 0, len(values))
    cumulative = np.concatenate([[0.0], np.cumsum(values)])
    sizes = edges[1:] - edges[:-1]
    means = (cumulative[edges[1:]] - cumulative[edges[:-1]]) / np.maximum(sizes, 1)
    return np.where(sizes > 0, means, values[np.minimum(edges[:-1], len(values) - 1)])


def _percentile_level(loudness: np.ndarray, gate: SpeechGate) -> float | None:
    """The baseline's speech level: loud frames, without voicing (it knows only loudness)."""
    audible = loudness[loudness > -80.0]
    if audible.size == 0:
        return None
    return max(float(np.percentile(audible, gate.level_percentile)), gate.floor_db)
