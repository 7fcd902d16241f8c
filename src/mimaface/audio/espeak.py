"""Speech whose phone timings are known exactly: espeak-ng, for measuring lip sync.

espeak-ng's library (Debian's ``libespeak-ng1``, reached through ctypes; nothing to build)
reports, with ``espeakINITIALIZE_PHONEME_EVENTS``, every phoneme it speaks with the sample at
which it starts, through its synthesis callback. :func:`synthesise` returns the audio and those
phones, mapped from espeak's English phoneme names to the recogniser's ARPAbet
(:data:`ESPEAK_TO_ARPABET`; a two-phone name such as ``@L`` is split in half). Only the
benchmark and the tests use it; ``apt-get install libespeak-ng1`` provides the library.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mimaface.audio.speech import Phone
from mimaface.errors import MimafaceError

#: espeak-ng's English phoneme names -> ARPAbet ("" joins the previous phone; None is a pause).
ESPEAK_TO_ARPABET: dict[str, str | None] = {
    "_": None, "_:": None, "_!": None, "_;": None, ";": "", "?": "",
    "p": "P", "b": "B", "t": "T", "t#": "T", "t[": "T", "d": "D", "d#": "D", "k": "K", "g": "G",
    "f": "F", "v": "V", "T": "TH", "D": "DH", "s": "S", "z": "Z", "S": "SH", "Z": "ZH", "h": "HH", "x": "K",
    "tS": "CH", "dZ": "JH", "m": "M", "n": "N", "n-": "N", "N": "NG", "l": "L", "l/": "L", "l/2": "L", "r": "R",
    "r-": "R", "r/": "R", "w": "W", "w#": "W", "j": "Y",
    "@": "AH", "@2": "AH", "@5": "AH", "@L": "AH L", "3": "ER", "3:": "ER", "V": "AH", "VR": "AH R", "a#": "AH",
    "a": "AE", "aa": "AE", "A:": "AA", "A@": "AA R", "0": "AA", "O:": "AO", "O2": "AO", "O@": "AO R", "o@": "AO R",
    "E": "EH", "e": "EH", "e@": "EH R", "eI": "EY", "I": "IH", "I2": "IH", "I#": "IH", "i": "IY", "i:": "IY",
    "i@": "IY ER", "i@3": "IY ER", "U": "UH", "U@": "UH R", "u:": "UW", "oU": "OW", "o": "OW", "aU": "AW",
    "aI": "AY", "aI2": "AY", "aI3": "AY", "aI@": "AY ER", "OI": "OY",
}

_PHONEME_EVENT, _END_EVENT, _MESSAGE_END = 7, 5, 6
_RATE, _SYNCHRONOUS, _PHONEME_EVENTS, _DONT_EXIT = 1, 2, 0x0001, 0x8000


class EspeakError(MimafaceError):
    """espeak-ng's library is missing or refused a voice."""


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    _fields_ = [("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint), ("text_position", ctypes.c_int),
                ("length", ctypes.c_int), ("audio_position", ctypes.c_int), ("sample", ctypes.c_int),
                ("user_data", ctypes.c_void_p), ("id", _EventId)]


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))


@dataclass
class Spoken:
    samples: np.ndarray  # int16, mono
    sample_rate: int
    phones: list[Phone]  # ARPAbet, exact times (pauses left out)
    espeak_phones: list[tuple[str, float]]  # espeak's own names and start times

    @property
    def duration(self) -> float:
        return len(self.samples) / self.sample_rate

    def write_wav(self, path: str | Path) -> None:
        with wave.open(str(path), "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(self.sample_rate)
            out.writeframes(self.samples.tobytes())


class _Espeak:
    """The library, initialised once per process (espeak-ng keeps global state)."""

    def __init__(self) -> None:
        name = ctypes.util.find_library("espeak-ng") or "libespeak-ng.so.1"
        try:
            self.lib = ctypes.CDLL(name)
        except OSError:
            raise EspeakError("espeak-ng's library is not installed (apt-get install libespeak-ng1)") from None
        self.lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        self.lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                                          ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        self.sample_rate = self.lib.espeak_Initialize(_SYNCHRONOUS, 0, None, _PHONEME_EVENTS | _DONT_EXIT)
        if self.sample_rate <= 0:
            raise EspeakError("espeak-ng could not be initialised")
        self.chunks: list[np.ndarray] = []
        self.events: list[tuple[int, int, str]] = []
        self.callback = _CALLBACK(self._collect)  # kept referenced: the library calls it
        self.lib.espeak_SetSynthCallback(self.callback)

    def _collect(self, wav, count, events) -> int:
        if count > 0:
            self.chunks.append(np.ctypeslib.as_array(wav, (count,)).copy())
        i = 0
        while events[i].type != 0:
            event = events[i]
            name = event.id.string.decode("ascii", "replace") if event.type == _PHONEME_EVENT else ""
            self.events.append((event.type, event.sample, name))
            i += 1
        return 0

    def speak(self, text: str, voice: str, rate: int) -> tuple[np.ndarray, list[tuple[int, int, str]]]:
        if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise EspeakError(f"espeak-ng has no voice {voice!r}")
        self.lib.espeak_SetParameter(_RATE, int(rate), 0)
        self.chunks, self.events = [], []
        data = text.encode("utf-8")
        self.lib.espeak_Synth(data, len(data) + 1, 0, 1, 0, 0, None, None)
        self.lib.espeak_Synchronize()
        samples = np.concatenate(self.chunks) if self.chunks else np.zeros(0, np.int16)
        return samples.astype(np.int16), self.events


_engine: _Espeak | None = None


def synthesise(text: str, voice: str = "en-us", rate: int = 175) -> Spoken:
    """``text`` spoken by espeak-ng (``voice``: a name such as ``en-us``, ``en``, ``en-us+f3``;
    ``rate`` in words per minute), with every phone's exact start and end."""
    global _engine
    if _engine is None:
        _engine = _Espeak()
    samples, events = _engine.speak(text, voice, rate)
    sample_rate = _engine.sample_rate
    duration = len(samples) / sample_rate
    marks = [(sample / sample_rate, name) for kind, sample, name in events if kind == _PHONEME_EVENT]
    ends = [t for t, _ in marks[1:]] + [duration]
    phones: list[Phone] = []
    for (start, name), end in zip(marks, ends):
        if name not in ESPEAK_TO_ARPABET:
            raise EspeakError(f"no ARPAbet for espeak's phoneme {name!r} (add it to ESPEAK_TO_ARPABET)")
        mapped = ESPEAK_TO_ARPABET[name]
        if mapped is None or end <= start:
            continue
        if mapped == "":
            if phones and abs(phones[-1].end - start) < 1e-9:
                phones[-1] = Phone(phones[-1].name, phones[-1].start, end)
            continue
        parts = mapped.split()
        step = (end - start) / len(parts)
        phones += [Phone(part, start + k * step, start + (k + 1) * step) for k, part in enumerate(parts)]
    return Spoken(samples, sample_rate, phones, marks)
