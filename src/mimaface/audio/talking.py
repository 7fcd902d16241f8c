"""Everything a talking face does besides the lips: head motion, blinks, gaze and brows.

All of it is made at the video's frame rate from the loudness envelope and the speech track, with
a seeded generator per group (so switching blinks off does not change the head motion):

* **Head**: a slow sway (a few sinusoids of 0.05-0.4 Hz per angle, random phases, larger while
  speaking) plus a nod (pitch down and back, about 0.4 s) on each stressed syllable, and a tilt
  (roll) or turn (yaw) on some phrase starts. Stressed syllables are loudness peaks inside speech
  that stand ``stress_prominence`` dB above their surroundings and lie near the speech level.
  Each angle is softly bounded (``max_degrees``).
* **Blinks**: the next blink comes 2-6 s after the last (a gamma interval with mean
  ``blink_mean``), or at a phrase end inside that window when there is one (with probability
  ``phrase_end_blink``): people blink more at pauses. Each lasts 0.15-0.3 s: lids close in 40 %
  of it and open more slowly; the closed moment falls on a frame.
* **Gaze**: fixations of 0.4-3 s; after each, a saccade (50 ms) either back to the camera or to a
  small offset, more often looking away at phrase starts.
* **Brows**: raised (``browInnerUp``, ``browOuterUp*``) on the most emphatic stressed syllables.

Everything starts from rest: frame 0 is the neutral face, and the head and brows ease in over
``ease_in`` seconds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import median_filter


@dataclass
class TalkingConfig:
    sway_degrees: tuple[float, float, float] = (2.5, 1.5, 1.2)  # yaw, pitch, roll of the slow sway
    nod_degrees: float = 3.0  # a nod on a stressed syllable of full strength
    tilt_degrees: float = 2.5  # a tilt or turn at a phrase start
    max_degrees: tuple[float, float, float] = (10.0, 8.0, 6.0)  # soft bound of yaw, pitch, roll
    stress_prominence: float = 3.0  # dB above the surroundings for a stressed syllable
    stress_spacing: float = 0.5  # seconds between nods at least
    blink_interval: tuple[float, float] = (2.0, 6.0)
    blink_mean: float = 3.8
    blink_duration: tuple[float, float] = (0.15, 0.3)
    phrase_end_blink: float = 0.8
    fixation: tuple[float, float] = (0.4, 3.0)
    gaze_offset: tuple[float, float] = (0.06, 0.03)  # spread of x and y when looking away (eye widths)
    look_away: float = 0.35  # probability of looking away after a fixation (doubled at phrase starts)
    brow_raise: float = 0.45
    brow_spacing: float = 1.2
    pause: float = 0.3  # a silence this long ends a phrase
    ease_in: float = 0.5


@dataclass
class TalkingInputs:
    """What the speech says about time, per frame."""

    fps: float
    loudness: np.ndarray  # (T,) dB
    speaking: np.ndarray  # (T,) bool: the mouth is moving (speech, short pauses included)
    speech_db: float  # the speech level (dB)


@dataclass
class TalkingMotion:
    head: np.ndarray  # (T, 3) yaw, pitch, roll (degrees)
    blink: np.ndarray  # (T,) eyeBlink of both eyes
    gaze: np.ndarray  # (T, 2) x, y of both eyes
    brows: np.ndarray  # (T,) browInnerUp and browOuterUp*
    stresses: np.ndarray  # frames of the stressed syllables
    blinks: np.ndarray  # frames where the lids are closed


def phrase_bounds(speaking: np.ndarray, fps: float, pause: float) -> tuple[np.ndarray, np.ndarray]:
    """Frames where phrases start and end: runs of speech separated by at least ``pause`` of silence."""
    padded = np.concatenate([[False], speaking, [False]]).astype(int)
    starts = np.flatnonzero(np.diff(padded) == 1)
    ends = np.flatnonzero(np.diff(padded) == -1)
    if len(starts) == 0:
        return starts, ends
    gap = round(pause * fps)
    keep_start = np.concatenate([[True], starts[1:] - ends[:-1] >= gap])
    keep_end = np.concatenate([starts[1:] - ends[:-1] >= gap, [True]])
    return starts[keep_start], ends[keep_end]


def stressed_syllables(inputs: TalkingInputs, config: TalkingConfig) -> tuple[np.ndarray, np.ndarray]:
    """Frames and strengths (0..1) of stressed syllables: prominent loudness peaks inside speech."""
    loud = inputs.loudness
    if len(loud) < 3:
        return np.empty(0, int), np.empty(0)
    width = max(1, round(0.3 * inputs.fps))
    surroundings = median_filter(loud, size=2 * width + 1, mode="nearest")
    peak = (loud[1:-1] >= loud[:-2]) & (loud[1:-1] > loud[2:])
    frames = np.flatnonzero(peak) + 1
    prominence = loud[frames] - surroundings[frames]
    keep = inputs.speaking[frames] & (prominence >= config.stress_prominence) & (loud[frames] >= inputs.speech_db - 8)
    frames, prominence = frames[keep], prominence[keep]
    spacing = config.stress_spacing * inputs.fps
    chosen: list[int] = []
    for i in np.argsort(-prominence, kind="stable"):  # strongest first, then thin out
        if all(abs(frames[i] - c) >= spacing for c in chosen):
            chosen.append(i)
    chosen.sort()
    strengths = np.clip((loud[frames[chosen]] - inputs.speech_db + 8) / 10, 0.2, 1.0)
    return frames[chosen], strengths


def talking_motion(inputs: TalkingInputs, config: TalkingConfig, seed: int) -> TalkingMotion:
    """Head, blink, gaze and brow curves for ``len(inputs.loudness)`` frames."""
    count, fps = len(inputs.loudness), inputs.fps
    head_rng, blink_rng, gaze_rng, brow_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(4))
    times = np.arange(count) / fps
    starts, ends = phrase_bounds(inputs.speaking, fps, config.pause)
    stresses, strengths = stressed_syllables(inputs, config)
    ease = _smoothstep(np.clip(times / config.ease_in, 0.0, 1.0)) if config.ease_in > 0 else np.ones(count)

    # head: sway, louder while speaking; nods on stresses; a tilt or turn on some phrase starts
    activity = _moving_average(inputs.speaking.astype(float), int(2 * fps))
    head = np.zeros((count, 3))
    for axis, amplitude in enumerate(config.sway_degrees):
        frequencies = head_rng.uniform(0.05, 0.4, 3)
        phases = head_rng.uniform(0, 2 * np.pi, 3)
        weights = head_rng.dirichlet(np.ones(3))
        sway = (weights[:, None] * np.sin(2 * np.pi * frequencies[:, None] * times + phases[:, None])).sum(0)
        head[:, axis] = amplitude * sway * (0.5 + 0.5 * activity)
    nod = _pulse(fps, rise=0.12, fall=0.3)
    for frame, strength in zip(stresses, strengths):
        _add(head[:, 1], frame - round(0.05 * fps), -config.nod_degrees * strength * nod)
    for frame in starts:
        if head_rng.random() < 0.5:
            axis = 2 if head_rng.random() < 0.6 else 0
            _add(head[:, axis], frame, config.tilt_degrees * head_rng.choice([-1, 1]) * _pulse(fps, 0.3, 1.0))
    bound = np.array(config.max_degrees)
    head = bound * np.tanh(head / bound) * ease[:, None]

    blink, blink_frames = _blinks(count, fps, ends, config, blink_rng)
    gaze = _gaze(count, fps, starts, config, gaze_rng)

    brows = np.zeros(count)
    raised: list[int] = []
    for i in np.argsort(-strengths, kind="stable"):
        if strengths[i] < 0.6 or any(abs(stresses[i] - r) < config.brow_spacing * fps for r in raised):
            continue
        raised.append(int(stresses[i]))
        amount = config.brow_raise * strengths[i] * brow_rng.uniform(0.7, 1.0)
        _add(brows, int(stresses[i]) - round(0.1 * fps), amount * _pulse(fps, 0.12, 0.5, hold=0.2), np.maximum)
    return TalkingMotion(head=head, blink=blink, gaze=gaze * ease[:, None], brows=brows * ease, stresses=stresses,
                         blinks=blink_frames)


def _blinks(count: int, fps: float, phrase_ends: np.ndarray, config: TalkingConfig,
            rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    low, high = config.blink_interval
    shape = 4.0  # gamma shape: intervals spread about the mean, rarely near the limits
    closed: list[int] = []
    blink = np.zeros(count)
    last = -rng.uniform(0.0, low - 0.5)  # seconds: as if the last blink were a moment before the start
    end_times = phrase_ends / fps
    while True:
        due = [t for t in end_times if last + low <= t <= last + high]
        if due and rng.random() < config.phrase_end_blink:
            at = due[0] + 0.1
        else:
            at = last + float(np.clip(rng.gamma(shape, config.blink_mean / shape), low, high))
        frame = round(at * fps)
        if frame >= count:
            break
        length = rng.uniform(*config.blink_duration)
        closing, opening = max(1, round(0.4 * length * fps)), max(1, round(0.6 * length * fps))
        curve = np.concatenate([_smoothstep(np.arange(1, closing + 1) / closing),
                                _smoothstep(1 - np.arange(1, opening + 1) / (opening + 1))])
        _add(blink, frame - closing + 1, curve, np.maximum)
        closed.append(frame)
        last = frame / fps
    blink[0] = 0.0
    return blink, np.array(closed, int)


def _gaze(count: int, fps: float, phrase_starts: np.ndarray, config: TalkingConfig,
          rng: np.random.Generator) -> np.ndarray:
    gaze = np.zeros((count, 2))
    saccade = max(1, round(0.05 * fps))
    steps = _smoothstep(np.arange(1, saccade + 1) / saccade)[:, None]
    previous = np.zeros(2)
    frame = round(rng.uniform(*config.fixation) * fps)
    while frame < count:
        near = np.searchsorted(phrase_starts, frame - 0.3 * fps)
        near_start = near < len(phrase_starts) and phrase_starts[near] <= frame + 0.3 * fps
        looking = not (previous == 0).all()
        target = (rng.normal(0.0, config.gaze_offset)
                  if not looking and rng.random() < config.look_away * (2 if near_start else 1) else np.zeros(2))
        following = min(count, frame + max(saccade + 1, round(rng.uniform(*config.fixation) * fps)))
        gaze[frame:following] = target
        ramp = gaze[frame:min(following, frame + saccade)]
        ramp[:] = previous + (target - previous) * steps[: len(ramp)]
        previous, frame = target, following
    return gaze


def _pulse(fps: float, rise: float, fall: float, hold: float = 0.0) -> np.ndarray:
    """A smooth bump: up in ``rise`` seconds, held, down in ``fall`` (peak 1)."""
    up = _smoothstep(np.arange(1, max(1, round(rise * fps)) + 1) / max(1, round(rise * fps)))
    top = np.ones(round(hold * fps))
    down = _smoothstep(1 - np.arange(1, max(1, round(fall * fps)) + 1) / max(1, round(fall * fps)))
    return np.concatenate([up, top, down])


def _add(curve: np.ndarray, start: int, bump: np.ndarray, combine=np.add) -> None:
    """Put ``bump`` into ``curve`` from frame ``start`` (clipped to the curve), adding or combining."""
    first, last = max(0, start), min(len(curve), start + len(bump))
    if last > first:
        curve[first:last] = combine(curve[first:last], bump[first - start:last - start])


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


def _moving_average(x: np.ndarray, width: int) -> np.ndarray:
    if width <= 1 or len(x) == 0:
        return x
    kernel = np.ones(width) / width
    return np.convolve(np.pad(x, (width // 2, width - 1 - width // 2), mode="edge"), kernel, mode="valid")
