"""Timed phones -> a viseme track -> ARKit blendshape curves for the mouth.

The shapes are Rhubarb Lip Sync's nine (after Preston Blair's mouth chart); the rules follow the
ideas of its animation steps, written here for continuous blendshapes:

=====  ===============================================  ==========================================
shape  what the mouth does                              phones (ARPAbet)
=====  ===============================================  ==========================================
``X``  rest: closed, relaxed                            pauses
``A``  lips pressed together                            M; the closure before P and B
``B``  slightly open, teeth together, lips spread       IY IH; most consonants may take it
``C``  open                                             EH AE, a short AH; start of EY AY
``D``  wide open                                        AA, a long AH; start of a long AY AW
``E``  slightly rounded, open                           AO ER; start of OW OY
``F``  puckered                                         UW UH W; end of OW
``G``  upper teeth on the lower lip                     F V
``H``  open, tongue raised                              a long L
=====  ===============================================  ==========================================

Steps (each time constant is a field of :class:`VisemeRules`):

1. **Rules**: each phone allows one shape (vowels) or a set (consonants: T, K, N, R, S... can be
   said with the lips in many positions); diphthongs are two shapes (60 % / 40 %); AH, AY, AW, ER
   and L depend on their length. **P and B close the lips before they are heard**: shape ``A``
   for an occlusion of half the previous phone (``closure_min``..``closure_max``) before the phone.
2. **Choice and vowel anticipation**: left to right, each flexible phone takes the allowed shape
   nearest (in blendshape space) to the one before it, relaxed; a vowel with a single shape is
   anticipated: the consonants up to ``anticipation`` seconds before it take the shape nearest to
   it, so lips round before an "oo".
3. **Pauses**: a gap inside speech shorter than ``pause_hold`` keeps the previous shape; up to
   ``pause_relax`` it relaxes (a less open shape, never the next one); longer ones close the mouth
   (``X``).
4. **Minimum durations**: a shape shorter than ``min_shape`` is absorbed by its more similar
   neighbour, except a lip closure, which is lengthened (to the left first) so it registers.
5. **Coarticulation and tweens** (for the curves): shape changes are ramps rather than jumps;
   the mouth pops open quickly (``tween_open`` after the change) and closes slowly (over up to
   ``tween_close``, centred on the change), and a closure is complete when its ``A`` begins.
   Each frame's value is the mean of the curve over the frame's time. Opening amplitude
   follows loudness (``loudness_gain``); the pressed-lip shapes are left as they are.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mimaface.audio.speech import VOWELS, Phone

VISEMES = ("A", "B", "C", "D", "E", "F", "G", "H", "X")


def _both(name: str, value: float) -> dict[str, float]:
    return {f"{name}Left": value, f"{name}Right": value}


#: The documented table: blendshape values of each viseme (names not listed are 0).
VISEME_BLENDSHAPES: dict[str, dict[str, float]] = {
    "X": {},
    "A": {"mouthRollLower": 0.2, "mouthRollUpper": 0.15},
    "B": {"jawOpen": 0.08, **_both("mouthStretch", 0.3), **_both("mouthLowerDown", 0.15),
          **_both("mouthUpperUp", 0.1)},
    "C": {"jawOpen": 0.3, **_both("mouthLowerDown", 0.35), **_both("mouthUpperUp", 0.15),
          **_both("mouthStretch", 0.15)},
    "D": {"jawOpen": 0.6, **_both("mouthLowerDown", 0.45), **_both("mouthUpperUp", 0.2)},
    "E": {"jawOpen": 0.3, "mouthFunnel": 0.45, "mouthPucker": 0.2, **_both("mouthLowerDown", 0.15)},
    "F": {"jawOpen": 0.12, "mouthPucker": 0.75, "mouthFunnel": 0.35},
    "G": {"jawOpen": 0.06, "mouthRollLower": 0.6, **_both("mouthUpperUp", 0.25)},
    "H": {"jawOpen": 0.22, **_both("mouthLowerDown", 0.25), **_both("mouthStretch", 0.1)},
}
MOUTH_BLENDSHAPES = tuple(sorted({name for values in VISEME_BLENDSHAPES.values() for name in values}))
#: Channels loudness does not scale: pressing the lips together is not quieter for a quiet voice.
PRESSED = frozenset({"mouthRollLower", "mouthRollUpper"})

#: What a shape relaxes to in a short pause (a step towards rest).
RELAXED = {"A": "A", "B": "B", "C": "B", "D": "C", "E": "C", "F": "B", "G": "X", "H": "B", "X": "X"}

ANY = "ABCDEFGHX"
ANY_OPEN = "BCDEFGH"


@dataclass
class VisemeRules:
    closure_min: float = 0.04  # the lip closure before P / B (seconds)
    closure_max: float = 0.12
    anticipation: float = 0.2  # how far back a vowel's shape may reach
    short_vowel: float = 0.2  # shorter AH / AY: the less open shape
    pause_hold: float = 0.12  # shorter gaps keep the previous shape
    pause_relax: float = 0.35  # gaps up to this relax; longer ones close the mouth
    min_shape: float = 0.06  # shortest shape kept
    tween_open: float = 0.03  # opening ramp
    tween_close: float = 0.08  # longest closing ramp
    loudness_range: float = 24.0  # dB below/above the speech level over which the opening scales by -/+ 100 %
    loudness_gain: tuple[float, float] = (0.55, 1.3)  # limits of that scaling


@dataclass(frozen=True)
class Shape:
    """A viseme held from ``start`` to ``end`` (seconds)."""

    viseme: str
    start: float
    end: float

    @property
    def duration(self) -> float:
        return self.end - self.start


def shape_vector(viseme: str, names: tuple[str, ...] = MOUTH_BLENDSHAPES) -> np.ndarray:
    values = VISEME_BLENDSHAPES[viseme]
    return np.array([values.get(name, 0.0) for name in names])


_VECTORS = {v: shape_vector(v) for v in VISEMES}


def _distance(a: str, b: str) -> float:
    return float(np.linalg.norm(_VECTORS[a] - _VECTORS[b]))


def _openness(viseme: str) -> float:
    values = VISEME_BLENDSHAPES[viseme]
    return values.get("jawOpen", 0.0) + 0.5 * values.get("mouthLowerDownLeft", 0.0)


def _nearest(reference: str, allowed: str) -> str:
    """The allowed shape that is least effort from ``reference`` (ties: the first listed)."""
    return min(allowed, key=lambda v: _distance(reference, v))


# ------------------------------------------------------------------------------------ 1. rules


@dataclass
class _Rule:
    start: float
    end: float
    allowed: str
    vowel: bool  # a vowel with one shape: anticipated


def phone_rules(phones: list[Phone], duration: float, rules: VisemeRules) -> list[_Rule]:
    """Allowed shapes over time: the phones' rules, pauses (``X``) between them, closures before P / B."""
    out: list[_Rule] = []
    cursor = 0.0
    for phone in sorted(phones, key=lambda p: p.start):
        start, end = max(phone.start, cursor), min(phone.end, duration)
        if end <= start:
            continue
        if start > cursor:
            out.append(_Rule(cursor, start, "X", False))
        if phone.name in ("P", "B"):
            previous = out[-1] if out else None
            occlusion = np.clip((previous.end - previous.start) / 2 if previous else rules.closure_min,
                                rules.closure_min, rules.closure_max)
            closure_start = max(start - occlusion, previous.start if previous else 0.0)
            while out and out[-1].start >= closure_start:
                out.pop()
            if out:
                out[-1].end = closure_start
            if closure_start < start:
                out.append(_Rule(closure_start, start, "A", False))
        for part_start, part_end, allowed in _phone_parts(phone.name, start, end, rules):
            out.append(_Rule(part_start, part_end, allowed, phone.name in VOWELS and len(allowed) == 1))
        cursor = end
    if cursor < duration:
        out.append(_Rule(cursor, duration, "X", False))
    return out


def _phone_parts(name: str, start: float, end: float, rules: VisemeRules) -> list[tuple[float, float, str]]:
    length = end - start
    short = length < rules.short_vowel

    def two(first: str, second: str) -> list[tuple[float, float, str]]:
        middle = start + 0.6 * length
        return [(start, middle, first), (middle, end, second)]

    diphthongs = {"EY": ("C", "B"), "AY": ("C" if short else "D", "B"), "OW": ("E", "F"), "OY": ("E", "B"),
                  "AW": ("C" if length < 1.5 * rules.short_vowel else "D", "E")}
    if name in diphthongs:
        return two(*diphthongs[name])
    single = {
        "AA": "D", "AE": "C", "AH": "C" if short else "D", "AO": "E", "EH": "C", "IH": "B", "IY": "B", "UH": "F",
        "UW": "F", "ER": "BC" if length < 0.07 else "E",
        "P": ANY, "B": ANY, "M": "A", "F": "G", "V": "G", "W": "F",
        "T": "BF" + ANY_OPEN, "D": "BF" + ANY_OPEN, "K": "BCEFH" + ANY_OPEN, "G": "BCEFH" + ANY_OPEN,
        "CH": "BF", "JH": "BF", "SH": "BF", "ZH": "BF", "S": "BF", "Z": "BF", "TH": "BF", "DH": "BF",
        "HH": ANY, "N": "BCFH", "NG": "BCEF", "L": "BEFH" if short else "H", "R": "BEF", "Y": "BCF",
    }
    # A consonant's first-listed shapes are its typical ones; the open shapes after them let a
    # plosive take the next vowel's shape, but never a closed one (its release is audible).
    return [(start, end, "".join(dict.fromkeys(single.get(name, "B"))))]


# ------------------------------------------------------------------------------------ 2.-4. the track


def viseme_track(phones: list[Phone], duration: float, rules: VisemeRules | None = None) -> list[Shape]:
    """The viseme track of ``duration`` seconds for timed ``phones`` (steps 1 to 4 of the module notes)."""
    rules = rules or VisemeRules()
    if duration <= 0:
        return []
    spans = phone_rules(phones, duration, rules)
    chosen = _choose(spans, rules)
    track = _merge([Shape(v, s.start, s.end) for v, s in zip(chosen, spans)])
    track = _merge(_pauses(track, rules))
    return _merge(_minimum_durations(track, rules))


def _choose(spans: list[_Rule], rules: VisemeRules) -> list[str]:
    chosen: list[str] = []
    reference = "X"
    anticipated_until = -1  # spans before this index were already shaped by a vowel ahead
    for i, span in enumerate(spans):
        shape = _nearest(reference, span.allowed)
        chosen.append(shape)
        if span.vowel:
            target = shape
            for j in range(i - 1, anticipated_until, -1):
                if span.start - spans[j].start > rules.anticipation or spans[j].allowed == "X":
                    break
                chosen[j] = _nearest(target, spans[j].allowed)
                if chosen[j] != target:
                    break
            anticipated_until = i
            reference = shape
        else:
            reference = RELAXED[shape]
    return chosen


def _merge(track: list[Shape]) -> list[Shape]:
    out: list[Shape] = []
    for shape in track:
        if shape.end <= shape.start:
            continue
        if out and out[-1].viseme == shape.viseme:
            out[-1] = Shape(shape.viseme, out[-1].start, shape.end)
        else:
            out.append(shape)
    return out


def _pauses(track: list[Shape], rules: VisemeRules) -> list[Shape]:
    out = list(track)
    for i in range(1, len(track) - 1):
        pause = track[i]
        if pause.viseme != "X":
            continue
        previous, following = out[i - 1].viseme, track[i + 1].viseme
        if pause.duration < rules.pause_hold:
            shape = previous
        elif pause.duration <= rules.pause_relax:
            shape = RELAXED[previous]
            while shape == following and RELAXED[shape] != shape:
                shape = RELAXED[shape]
            if shape == following:
                shape = "X"
        else:
            shape = "X"
        out[i] = Shape(shape, pause.start, pause.end)
    return out


def _minimum_durations(track: list[Shape], rules: VisemeRules) -> list[Shape]:
    track = list(track)
    for _ in range(4 * len(track)):
        short = [i for i, s in enumerate(track) if s.duration < rules.min_shape - 1e-9 and len(track) > 1]
        if not short:
            break
        i = min(short, key=lambda k: track[k].duration)
        shape = track[i]
        if shape.viseme == "A" and _lengthen(track, i, rules.min_shape):
            continue
        neighbours = [k for k in (i - 1, i + 1) if 0 <= k < len(track)]
        into = min(neighbours, key=lambda k: (_distance(shape.viseme, track[k].viseme), k))
        other = track[into]
        track[into] = Shape(other.viseme, min(other.start, shape.start), max(other.end, shape.end))
        del track[i]
        track = _merge(track)
    return track


def _lengthen(track: list[Shape], i: int, length: float) -> bool:
    """Lengthen shape ``i`` to ``length`` by taking time from its neighbours (the previous one first),
    neither of which may become shorter than ``length``. False if they cannot spare it."""
    need = length - track[i].duration
    spare_before = max(0.0, track[i - 1].duration - length) if i > 0 else 0.0
    spare_after = max(0.0, track[i + 1].duration - length) if i + 1 < len(track) else 0.0
    if spare_before + spare_after < need:
        return False
    before = min(need, spare_before)
    after = need - before
    start, end = track[i].start - before, track[i].end + after
    if i > 0:
        track[i - 1] = Shape(track[i - 1].viseme, track[i - 1].start, start)
    if i + 1 < len(track):
        track[i + 1] = Shape(track[i + 1].viseme, end, track[i + 1].end)
    track[i] = Shape(track[i].viseme, start, end)
    return True


# ------------------------------------------------------------------------------------ 5. curves


def frame_visemes(track: list[Shape], num_frames: int, fps: float) -> list[str]:
    """The viseme shown in each frame: the one covering most of the frame's time."""
    if not track:
        return ["X"] * num_frames
    ends = np.array([s.end for s in track])
    samples = (np.arange(num_frames)[:, None] + (np.arange(8)[None] + 0.5) / 8) / fps
    index = np.minimum(np.searchsorted(ends, samples, side="right"), len(track) - 1)
    letters = np.array([s.viseme for s in track])[index]
    out = []
    for row in letters:
        values, counts = np.unique(row, return_counts=True)
        out.append(str(values[np.argmax(counts)]))
    return out


def mouth_curves(track: list[Shape], num_frames: int, fps: float, rules: VisemeRules | None = None,
                 gain: np.ndarray | None = None, names: tuple[str, ...] = MOUTH_BLENDSHAPES) -> np.ndarray:
    """(num_frames, len(names)) blendshape values: the track with its ramps (step 5), each frame the
    mean over its time, opening channels scaled by the per-frame ``gain``."""
    rules = rules or VisemeRules()
    edges = np.arange(num_frames + 1) / fps
    if not track:
        return np.zeros((num_frames, len(names)))
    times, values = _keyframes(track, rules, names)
    integral = _integrate(times, values, edges)
    curves = np.diff(integral, axis=0) * fps
    if gain is not None:
        scaled = np.array([name not in PRESSED for name in names])
        curves[:, scaled] *= gain[:, None]
    return np.clip(curves, 0.0, 1.0)


def loudness_gain(frame_db: np.ndarray, speech_db: float, rules: VisemeRules | None = None) -> np.ndarray:
    """How much wider than the table the mouth opens at each frame's loudness (1 at the speech level)."""
    rules = rules or VisemeRules()
    low, high = rules.loudness_gain
    return np.clip(1.0 + (frame_db - speech_db) / rules.loudness_range, low, high)


def _keyframes(track: list[Shape], rules: VisemeRules, names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Times and values of the piecewise-linear curve: each shape held, ramps at its changes."""
    vectors = [shape_vector(s.viseme, names) for s in track]
    times = [track[0].start]
    values = [vectors[0]]
    for i in range(len(track) - 1):
        first, second = track[i], track[i + 1]
        boundary = first.end
        if second.viseme == "A":  # the lips are closed when the closure begins
            ramp = min(rules.tween_close, first.duration / 2)
            begin, end = boundary - ramp, boundary
        elif _openness(second.viseme) > _openness(first.viseme):  # pop open
            ramp = min(rules.tween_open, second.duration / 2)
            begin, end = boundary, boundary + ramp
        else:  # close slowly
            ramp = min(rules.tween_close, first.duration / 3, second.duration / 3)
            begin, end = boundary - ramp / 2, boundary + ramp / 2
        times += [begin, end]
        values += [vectors[i], vectors[i + 1]]
    times.append(track[-1].end)
    values.append(vectors[-1])
    return np.array(times), np.array(values)


def _integrate(times: np.ndarray, values: np.ndarray, at: np.ndarray) -> np.ndarray:
    """The integral from times[0] of the piecewise-linear curve through (times, values), at ``at``
    (held constant outside the keyframes)."""
    steps = np.diff(times)[:, None]
    cumulative = np.concatenate([np.zeros((1, values.shape[1])),
                                 np.cumsum(steps * (values[:-1] + values[1:]) / 2, axis=0)])
    clipped = np.clip(at, times[0], times[-1])
    index = np.clip(np.searchsorted(times, clipped, side="right") - 1, 0, len(times) - 2)
    t0, t1 = times[index], times[index + 1]
    width = np.where(t1 > t0, t1 - t0, 1.0)
    fraction = np.where(t1 > t0, (clipped - t0) / width, 0.0)[:, None]
    here = values[index] + fraction * (values[index + 1] - values[index])
    inside = cumulative[index] + (clipped - t0)[:, None] * (values[index] + here) / 2
    before = np.minimum(at - times[0], 0.0)[:, None] * values[0]
    after = np.maximum(at - times[-1], 0.0)[:, None] * values[-1]
    return inside + before + after
