"""Random but plausible motion for a clip: head pose, speech-like expressions, blinks and gaze.

Two kinds of clip:

* ``"talking"``: the head wanders smoothly round a random mean pose; the jaw and lips move
  syllable by syllable (about 4 per second, in phrases separated by pauses), each syllable a
  viseme (open, rounded, spread, or lips pressed together); smiles, brow raises and frowns come
  and go; the eyes blink every 2-6 s for 0.15-0.3 s and look about in saccades.
* ``"portrait"``: one fixed expression and gaze (no blinks), the head nearly still.

Every expression channel stays in [0, 1] and the antagonist pairs of
:data:`mimaface.face3d.blendshapes.ANTAGONISTS` are driven by one signed track each, so the two
sides are never active together. Pose tracks are monotone-cubic curves through random key values
inside the limits, so they never overshoot them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.interpolate import PchipInterpolator

from mimaface.face3d.blendshapes import ANTAGONISTS

MODES = ("talking", "portrait")


@dataclass(frozen=True)
class MotionConfig:
    """Ranges and rates of the random motion."""

    yaw_limit: float = 35.0  # degrees
    pitch_limit: float = 35.0
    roll_limit: float = 15.0
    translation_limit: float = 0.12  # normalised image units (half the image height = 1)
    scale_range: tuple[float, float] = (0.68, 1.0)
    syllables_per_second: float = 4.0
    blink_interval: tuple[float, float] = (2.0, 6.0)  # seconds between blinks
    blink_duration: tuple[float, float] = (0.15, 0.3)
    gaze_x_limit: float = 0.17  # fraction of the eye's width
    gaze_y_limit: float = 0.07
    portrait_drift: float = 2.5  # degrees of head motion in a portrait clip


@dataclass
class ClipMotion:
    """Per-frame coefficients of one clip."""

    pose: np.ndarray  # (T,6)
    expression: np.ndarray  # (T,K)
    gaze: np.ndarray  # (T,4)
    mode: str


def smooth_track(rng: np.random.Generator, times: np.ndarray, low: float, high: float, interval: float,
                 centre: float | None = None, spread: float | None = None) -> np.ndarray:
    """A smooth random curve over ``times`` within [low, high]: monotone cubic through key values
    drawn every ~``interval`` seconds, around ``centre`` by up to ``spread`` if given."""
    keys = [times[0] - rng.uniform(0.0, interval)]
    while keys[-1] <= times[-1] + 1e-9:
        keys.append(keys[-1] + interval * rng.uniform(0.5, 1.5))
    keys = np.array(keys)
    if centre is None:
        values = rng.uniform(low, high, len(keys))
    else:
        values = np.clip(centre + rng.uniform(-spread, spread, len(keys)), low, high)
    return PchipInterpolator(keys, values)(times)


def _bump(times: np.ndarray, centre: float, duration: float, rise: float = 0.5) -> np.ndarray:
    """A raised-cosine pulse from ``centre - rise*duration`` to ``centre + (1-rise)*duration``, peak 1."""
    start, end = centre - rise * duration, centre + (1.0 - rise) * duration
    up = np.clip((times - start) / max(centre - start, 1e-6), 0.0, 1.0)
    down = np.clip((end - times) / max(end - centre, 1e-6), 0.0, 1.0)
    phase = np.where(times < centre, up, down)
    return 0.5 - 0.5 * np.cos(np.pi * phase)


def _episodes(rng: np.random.Generator, times: np.ndarray, rate: float, duration: tuple[float, float],
              amplitude: tuple[float, float]) -> np.ndarray:
    """A sum of random pulses occurring ``rate`` times per second on average."""
    out = np.zeros_like(times)
    t, end = times[0] - duration[1], times[-1] + duration[1]
    while True:
        t += rng.exponential(1.0 / rate)
        if t > end:
            break
        out = np.maximum(out, rng.uniform(*amplitude) * _bump(times, t, rng.uniform(*duration)))
    return out


class MotionSampler:
    """Samples :class:`ClipMotion` for a face model's expression names."""

    def __init__(self, expression_names: tuple[str, ...], config: MotionConfig | None = None):
        self.names = tuple(expression_names)
        self.config = config or MotionConfig()
        self._col = {name: i for i, name in enumerate(self.names)}

    def sample(self, rng: np.random.Generator, num_frames: int, fps: float, mode: str = "talking") -> ClipMotion:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        times = np.arange(num_frames, dtype=np.float64) / fps
        pose = self._pose(rng, times, still=mode == "portrait")
        if mode == "portrait":
            expression = np.repeat(self._portrait_expression(rng)[None], num_frames, 0)
            gaze = np.repeat(self._gaze_target(rng)[None], num_frames, 0)
        else:
            expression = self._talking_expression(rng, times)
            gaze = self._gaze(rng, times)
        expression = np.clip(expression, 0.0, 1.0)
        for a, b in ANTAGONISTS:  # belt and braces: the signed tracks already guarantee it
            ia, ib = self._col[a], self._col[b]
            both = (expression[:, ia] > 0) & (expression[:, ib] > 0)
            weaker = np.where(expression[:, ia] >= expression[:, ib], ib, ia)
            expression[both, weaker[both]] = 0.0
        return ClipMotion(pose, expression, gaze, mode)

    # -- pose ---------------------------------------------------------------------------------
    def _pose(self, rng: np.random.Generator, times: np.ndarray, still: bool) -> np.ndarray:
        c = self.config
        limits = (c.yaw_limit, c.pitch_limit, c.roll_limit)
        pose = np.empty((len(times), 6))
        for k, limit in enumerate(limits):
            centre = rng.uniform(-0.75, 0.75) * limit
            spread = c.portrait_drift * (0.4 if k == 2 else 1.0) if still else 0.35 * limit
            pose[:, k] = smooth_track(rng, times, -limit, limit, rng.uniform(0.8, 2.0), centre, spread)
        for k in (3, 4):
            centre = rng.uniform(-0.7, 0.7) * c.translation_limit
            spread = 0.005 if still else 0.35 * c.translation_limit
            pose[:, k] = smooth_track(rng, times, -c.translation_limit, c.translation_limit, rng.uniform(1.0, 2.5), centre, spread)
        lo, hi = c.scale_range
        pose[:, 5] = smooth_track(rng, times, lo, hi, rng.uniform(1.0, 3.0), rng.uniform(lo, hi), 0.005 if still else 0.04)
        return pose

    # -- expressions --------------------------------------------------------------------------
    def _set(self, expression: np.ndarray, name: str, value) -> None:
        expression[..., self._col[name]] = value

    def _signed(self, expression: np.ndarray, pair: tuple[str, str], value: np.ndarray) -> None:
        """Drive an antagonist pair from one signed track: positive -> first name, negative -> second."""
        self._set(expression, pair[0], np.clip(value, 0.0, 1.0))
        self._set(expression, pair[1], np.clip(-value, 0.0, 1.0))

    def _talking_expression(self, rng: np.random.Generator, times: np.ndarray) -> np.ndarray:
        c = self.config
        T = len(times)
        e = np.zeros((T, len(self.names)))
        # Syllables in phrases: each a pulse of the jaw shaped by a random viseme.
        jaw = np.zeros(T)
        funnel, pucker, stretch, press = (np.zeros(T) for _ in range(4))
        t = times[0] - rng.uniform(0.0, 1.0)
        phrase_end = t + rng.uniform(0.8, 3.0)
        speaking = rng.random() < 0.85
        while t < times[-1] + 0.3:
            if t > phrase_end:  # a pause, then a new phrase
                t += rng.uniform(0.15, 0.7)
                phrase_end = t + rng.uniform(0.8, 3.0)
                continue
            duration = rng.uniform(0.12, 0.32)
            if speaking:
                pulse = _bump(times, t, duration, rise=rng.uniform(0.35, 0.6))
                viseme = rng.choice(4, p=[0.5, 0.2, 0.2, 0.1])
                amplitude = rng.uniform(0.08, 0.6)
                if viseme == 3:  # lips pressed (p, b, m): the jaw barely moves
                    press = np.maximum(press, rng.uniform(0.2, 0.45) * pulse)
                    amplitude *= 0.15
                elif viseme == 1:  # rounded (o, u, w)
                    funnel = np.maximum(funnel, rng.uniform(0.2, 0.6) * pulse)
                    pucker = np.maximum(pucker, rng.uniform(0.0, 0.5) * pulse)
                    amplitude *= 0.6
                elif viseme == 2:  # spread (i, e)
                    stretch = np.maximum(stretch, rng.uniform(0.15, 0.5) * pulse)
                jaw = np.maximum(jaw, amplitude * pulse)
            t += 1.0 / c.syllables_per_second * rng.uniform(0.6, 1.4)
        self._set(e, "jawOpen", jaw)
        self._set(e, "mouthFunnel", funnel)
        self._set(e, "mouthPucker", pucker)
        self._set(e, "mouthRollLower", 0.8 * press)
        self._set(e, "mouthRollUpper", 0.5 * press)
        side = rng.uniform(0.8, 1.2)
        self._set(e, "mouthStretchLeft", stretch * side)
        self._set(e, "mouthStretchRight", stretch / side)
        lip_share = rng.uniform(0.1, 0.5)
        for s in ("Left", "Right"):
            self._set(e, f"mouthUpperUp{s}", lip_share * jaw * rng.uniform(0.7, 1.0))
            self._set(e, f"mouthLowerDown{s}", lip_share * jaw * rng.uniform(0.7, 1.0))
        # Smiles come and go; sometimes lopsided. Frowns only when not smiling.
        smile = smooth_track(rng, times, 0.0, 1.0, rng.uniform(0.8, 2.5), rng.uniform(0.0, 0.5), 0.45)
        smile = np.clip(smile - rng.uniform(0.0, 0.3), 0.0, 1.0)
        tilt = rng.uniform(-0.25, 0.25) if rng.random() < 0.3 else 0.0
        self._set(e, "mouthSmileLeft", smile * (1 + tilt))
        self._set(e, "mouthSmileRight", smile * (1 - tilt))
        self._set(e, "cheekSquintLeft", 0.5 * smile * (1 + tilt))
        self._set(e, "cheekSquintRight", 0.5 * smile * (1 - tilt))
        self._set(e, "eyeSquintLeft", 0.3 * smile)
        self._set(e, "eyeSquintRight", 0.3 * smile)
        frown = _episodes(rng, times, 0.2, (0.6, 1.6), (0.1, 0.5)) * np.clip(1.0 - 3.0 * smile, 0.0, 1.0)
        self._set(e, "mouthFrownLeft", frown)
        self._set(e, "mouthFrownRight", frown)
        # Brows: raised for emphasis or lowered in a frown, from one signed track.
        raise_ = _episodes(rng, times, 0.5, (0.4, 1.4), (0.2, 1.0))
        lower = _episodes(rng, times, 0.15, (0.5, 1.5), (0.2, 0.7))
        brow = raise_ - lower
        up = np.clip(brow, 0.0, 1.0)
        outer = rng.uniform(0.3, 1.0)
        asym = rng.uniform(0.7, 1.0, 2)
        self._set(e, "browInnerUp", up)
        self._set(e, "browOuterUpLeft", up * outer * asym[0])
        self._set(e, "browOuterUpRight", up * outer * asym[1])
        self._set(e, "browDownLeft", np.clip(-brow, 0.0, 1.0))
        self._set(e, "browDownRight", np.clip(-brow, 0.0, 1.0))
        self._set(e, "noseSneerLeft", 0.3 * np.clip(-brow, 0.0, 1.0))
        self._set(e, "noseSneerRight", 0.3 * np.clip(-brow, 0.0, 1.0))
        # Eyes a little wider than the model's mean (whose photos squint) in many clips.
        wide = np.maximum(_episodes(rng, times, 0.1, (0.5, 1.5), (0.1, 0.6)) * (up > 0.3),
                          rng.uniform(0.0, 0.5) * (rng.random() < 0.6))
        self._set(e, "eyeWideLeft", wide)
        self._set(e, "eyeWideRight", wide)
        # Small drifts of the jaw and lips sideways (antagonist pairs: one signed track each).
        self._signed(e, ("jawLeft", "jawRight"), smooth_track(rng, times, -0.25, 0.25, 1.5) * (rng.random() < 0.5))
        self._signed(e, ("mouthLeft", "mouthRight"), smooth_track(rng, times, -0.3, 0.3, 1.2) * (rng.random() < 0.5))
        self._set(e, "jawForward", np.clip(smooth_track(rng, times, -0.2, 0.2, 2.0), 0.0, None))
        self._set(e, "cheekPuff", _episodes(rng, times, 0.05, (0.5, 1.0), (0.2, 0.6)))
        # Blinks (both eyes; now and then one lags a little).
        blink = self._blinks(rng, times)
        lag = rng.uniform(0.85, 1.0)
        self._set(e, "eyeBlinkLeft", blink)
        self._set(e, "eyeBlinkRight", blink * lag)
        return e

    def _blinks(self, rng: np.random.Generator, times: np.ndarray) -> np.ndarray:
        c = self.config
        out = np.zeros_like(times)
        t = times[0] - rng.uniform(0.0, c.blink_interval[1]) + rng.uniform(0.0, c.blink_interval[0])
        while t < times[-1] + 0.3:
            duration = rng.uniform(*c.blink_duration)
            # Lids close faster than they open; a blink may fall between frames, but it always
            # shows if the frame interval is shorter than the blink.
            out = np.maximum(out, _bump(times, t + 0.4 * duration, duration, rise=0.4))
            t += rng.uniform(*c.blink_interval)
        return out

    def _portrait_expression(self, rng: np.random.Generator) -> np.ndarray:
        e = np.zeros(len(self.names))
        kind = rng.choice(["neutral", "smile", "laugh", "talking", "surprised"], p=[0.3, 0.3, 0.15, 0.15, 0.1])
        smile = {"neutral": 0.0, "smile": rng.uniform(0.3, 0.9), "laugh": rng.uniform(0.6, 1.0),
                 "talking": rng.uniform(0.0, 0.3), "surprised": 0.0}[kind]
        jaw = {"neutral": 0.0, "smile": rng.uniform(0.0, 0.15), "laugh": rng.uniform(0.25, 0.6),
               "talking": rng.uniform(0.1, 0.45), "surprised": rng.uniform(0.3, 0.6)}[kind]
        self._set(e, "mouthSmileLeft", smile)
        self._set(e, "mouthSmileRight", smile)
        self._set(e, "cheekSquintLeft", 0.5 * smile)
        self._set(e, "cheekSquintRight", 0.5 * smile)
        self._set(e, "jawOpen", jaw)
        brow = rng.uniform(0.5, 1.0) if kind == "surprised" else rng.uniform(0.0, 0.3)
        self._set(e, "browInnerUp", brow)
        self._set(e, "browOuterUpLeft", brow * 0.8)
        self._set(e, "browOuterUpRight", brow * 0.8)
        wide = rng.uniform(0.3, 0.8) if kind == "surprised" else rng.uniform(0.0, 0.5) * (rng.random() < 0.6)
        self._set(e, "eyeWideLeft", wide)
        self._set(e, "eyeWideRight", wide)
        return e

    # -- gaze ---------------------------------------------------------------------------------
    def _gaze_target(self, rng: np.random.Generator) -> np.ndarray:
        c = self.config
        x = np.clip(rng.normal(0.0, 0.5 * c.gaze_x_limit), -c.gaze_x_limit, c.gaze_x_limit)
        y = np.clip(rng.normal(0.0, 0.5 * c.gaze_y_limit), -c.gaze_y_limit, c.gaze_y_limit)
        return np.array([x, y, x, y])

    def _gaze(self, rng: np.random.Generator, times: np.ndarray) -> np.ndarray:
        """Fixations joined by quick saccades (~40 ms), plus a faint drift."""
        out = np.empty((len(times), 4))
        current = self._gaze_target(rng)
        out[:] = current
        t = times[0] + rng.uniform(0.0, 1.0)
        while t < times[-1]:
            target = self._gaze_target(rng)
            ramp = np.clip((times - t) / 0.04, 0.0, 1.0)[:, None]
            out = out + (target - current) * ramp
            current = target
            t += rng.uniform(0.3, 1.5)
        drift = np.stack([smooth_track(rng, times, -0.01, 0.01, 1.0) for _ in range(2)], -1)
        return out + np.concatenate([drift, drift], -1)
