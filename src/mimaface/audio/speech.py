"""Speech in an audio file -> timed phones and a loudness envelope.

* **Decoding**: any file ffmpeg reads (wav, mp3, m4a, flac, ogg, or a video's audio track), any
  sample rate and channel count, is resampled to 16 kHz mono 16-bit by the ffmpeg binary of
  ``imageio-ffmpeg`` and streamed in chunks; nothing holds the whole file.
* **Loudness**: RMS level in dB (full scale) per 10 ms frame, the recogniser's frame rate.
* **Phones** (pocketsphinx 5, whose wheel ships the US English acoustic model, the CMU
  pronouncing dictionary and a phone language model): without a transcript a free *phone loop*
  (``allphone`` search); with one, *forced alignment* (word -> phone -> frame). The recogniser
  sees the audio in stretches of at most ``SpeechConfig.max_stretch`` seconds, so memory does
  not grow with the length. The phone loop cuts each at its quietest moment near the end. For
  alignment each stretch first takes the next words of the transcript through a grammar that may
  stop after any word (the last stretch must take them all, when it can); the words that end
  ``commit_margin`` before the stretch does are then aligned to phones, with the pauses the
  grammar found, and the next stretch starts where the last of them ends (so a word is never cut
  in two). A first word the audio does not hold is passed over. Alignment runs with
  ``bestpath=False`` (the default silently dropped the last word) and without pruning (with the
  default beams 18 % of the benchmark's sentences found no path at all).

Phones are ARPAbet without stress marks (``AA`` ... ``ZH``, the dictionary's 39); silences and
noise are left out; the phone loop's filler for unnamed speech counts as a neutral vowel.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from mimaface.errors import InputError
from mimaface.media import existing_file, ffmpeg_input

SAMPLE_RATE = 16000
#: The recogniser's and the envelope's frame: 10 ms.
FRAME_SECONDS = 0.01
HOP = int(SAMPLE_RATE * FRAME_SECONDS)
#: A pocketsphinx frame f is analysed in a 25.6 ms window starting at f x 10 ms, so its centre lies
#: 12.8 ms later; the boundary between frames f-1 and f is midway between their centres.
BOUNDARY_OFFSET = 0.0078
SILENT_DB = -90.0

AUDIO_EXTENSIONS = frozenset({".wav", ".mp3", ".m4a", ".flac", ".ogg", ".oga", ".opus", ".aac", ".wma",
                              ".aif", ".aiff", ".mka", ".webm"})
"""Read as audio (a video's audio track is read through the same path)."""

PHONES = ("AA", "AE", "AH", "AO", "AW", "AY", "B", "CH", "D", "DH", "EH", "ER", "EY", "F", "G", "HH", "IH", "IY",
          "JH", "K", "L", "M", "N", "NG", "OW", "OY", "P", "R", "S", "SH", "T", "TH", "UH", "UW", "V", "W", "Y", "Z",
          "ZH")
SILENCE = "<sil>"  # the dictionary's pause
VOWELS = frozenset({"AA", "AE", "AH", "AO", "AW", "AY", "EH", "ER", "EY", "IH", "IY", "OW", "OY", "UH", "UW"})


def is_audio_path(path: str | os.PathLike) -> bool:
    """True if the extension is an audio format (see :data:`AUDIO_EXTENSIONS`)."""
    return Path(path).suffix.lower() in AUDIO_EXTENSIONS


@dataclass(frozen=True)
class Phone:
    name: str  # ARPAbet, no stress
    start: float  # seconds
    end: float

    @property
    def duration(self) -> float:
        return self.end - self.start


@dataclass
class SpeechConfig:
    chunk_seconds: float = 5.0  # what ffmpeg hands over at a time
    max_stretch: float = 20.0  # the longest audio the recogniser decodes at once (bounds its memory)
    cut_window: float = 8.0  # the phone loop cuts a full stretch at its quietest 0.3 s in its last cut_window s
    words_per_second: float = 8.0  # at most this many transcript words are offered to one stretch (+ 3)
    commit_margin: float = 2.0  # words ending this close to a stretch's end are aligned with the next stretch
    align_beam: float = 1e-200  # the aligner's beams: in effect no pruning
    # the phone loop's search settings (pocketsphinx's recommended ones for allphone)
    loop_beam: float = 1e-20
    loop_language_weight: float = 2.0


@dataclass
class SpeechAnalysis:
    duration: float  # seconds of audio
    loudness: np.ndarray  # (N,) dB per 10 ms frame
    voicing: np.ndarray  # (N,) periodicity per 10 ms frame, 0 (noise, silence) to 1 (a clear voice)
    phones: list[Phone] = field(default_factory=list)
    mode: str = "loop"  # "align" (transcript), "loop" (phone loop) or "loudness" (no phones)
    words: list[Phone] = field(default_factory=list)  # aligned words (``name`` = the word) with their times
    unmatched_words: list[str] = field(default_factory=list)  # transcript words not found in the audio


# ------------------------------------------------------------------------------------ decoding


def probe_audio(path: str | os.PathLike) -> float | None:
    """The duration (seconds) ffmpeg states for a file with an audio track (None if it states none).
    Not a media file, or one without audio: an :class:`InputError`."""
    import imageio_ffmpeg

    path = existing_file(path)
    result = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-nostdin", *ffmpeg_input(path)],
                            check=False, capture_output=True, text=True, errors="replace")
    streams = [line for line in result.stderr.splitlines() if "Stream #" in line]
    if not streams:
        reason = _last_line(result.stderr)
        raise InputError(f"{path}: not a readable audio or video file ({reason})")
    if not any("Audio:" in line for line in streams):
        raise InputError(f"{path}: the file has no audio track")
    match = re.search(r"Duration: (\d+):(\d+):(\d+(?:\.\d+)?)", result.stderr)
    if not match:
        return None
    hours, minutes, seconds = match.groups()
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def read_pcm(path: str | os.PathLike, chunk_seconds: float = SpeechConfig.chunk_seconds) -> Iterator[np.ndarray]:
    """The audio track as 16 kHz mono int16 chunks of ``chunk_seconds`` (the last one shorter),
    decoded and resampled by ffmpeg as they are read."""
    import imageio_ffmpeg

    path = existing_file(path)
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-loglevel", "error", *ffmpeg_input(path), "-map", "0:a:0",
           "-vn", "-ac", "1", "-ar", str(SAMPLE_RATE), "-f", "s16le", "-"]
    chunk_bytes = 2 * max(HOP, int(chunk_seconds * SAMPLE_RATE) // HOP * HOP)
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL)
        try:
            pending = b""
            while True:
                data = process.stdout.read(chunk_bytes - len(pending))
                if not data:
                    break
                pending += data
                if len(pending) == chunk_bytes:
                    yield np.frombuffer(pending, np.int16)
                    pending = b""
            if len(pending) >= 2:
                yield np.frombuffer(pending[: len(pending) // 2 * 2], np.int16)
        finally:
            process.stdout.close()
            if process.poll() is None:
                process.kill()  # the consumer stopped early
            returncode = process.wait()
        if returncode not in (0, -9):
            log.seek(0)
            reason = _last_line(log.read().decode("utf-8", "replace")) or f"ffmpeg exit status {returncode}"
            raise InputError(f"{path}: could not decode the audio ({reason})")


def frame_loudness(samples: np.ndarray) -> np.ndarray:
    """RMS level in dB full scale of each whole 10 ms frame of int16 ``samples`` (floored at -90)."""
    count = len(samples) // HOP
    frames = samples[: count * HOP].reshape(count, HOP).astype(np.float64) / 32768.0
    rms = np.sqrt((frames**2).mean(1))
    return np.maximum(20.0 * np.log10(rms + 1e-12), SILENT_DB)


class Envelope:
    """Loudness and voicing per 10 ms frame of a stream of int16 chunks.

    Voicing is the peak of the normalised autocorrelation (Hann window of 40 ms around the frame,
    corrected for the window's own autocorrelation, as Boersma's pitch detector does) over the
    lags of a 60-400 Hz voice: near 1 for vowels, low for breath, hiss and noise."""

    WINDOW = 640  # samples (40 ms)
    LAGS = (SAMPLE_RATE // 400, SAMPLE_RATE // 60)

    def __init__(self) -> None:
        self.pending = np.zeros((self.WINDOW - HOP) // 2, np.float64)  # silence before the start
        self.loudness: list[np.ndarray] = []
        self.voicing: list[np.ndarray] = []
        window = np.hanning(self.WINDOW)
        self._window = window
        self._window_correlation = self._correlation(window[None])[0]

    def feed(self, chunk: np.ndarray, *, last: bool = False) -> None:
        data = np.concatenate([self.pending, chunk.astype(np.float64) / 32768.0])
        lead = (self.WINDOW - HOP) // 2
        if last:  # the frames that end inside the audio, windows padded with silence
            count = (len(data) - lead) // HOP
            data = np.concatenate([data, np.zeros(self.WINDOW)])
        else:
            count = max(0, (len(data) - self.WINDOW) // HOP + 1)
        if count:
            starts = np.arange(count) * HOP
            windows = data[starts[:, None] + np.arange(self.WINDOW)]
            frames = windows[:, lead:lead + HOP]
            self.loudness.append(np.maximum(20.0 * np.log10(np.sqrt((frames**2).mean(1)) + 1e-12), SILENT_DB))
            self.voicing.append(self._voicing(windows))
        self.pending = data[count * HOP:] if not last else np.empty(0)

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        return (np.concatenate(self.loudness) if self.loudness else np.empty(0),
                np.concatenate(self.voicing) if self.voicing else np.empty(0))

    def _correlation(self, windows: np.ndarray) -> np.ndarray:
        spectrum = np.fft.rfft(windows, 2 * self.WINDOW, axis=1)
        return np.fft.irfft(np.abs(spectrum) ** 2, axis=1)[:, : self.LAGS[1] + 1]

    def _voicing(self, windows: np.ndarray) -> np.ndarray:
        centred = windows - windows.mean(1, keepdims=True)
        r = self._correlation(centred * self._window)
        energy = r[:, :1]
        normalised = np.where(energy > 1e-10, r / np.maximum(energy, 1e-12), 0.0) / (
            self._window_correlation / self._window_correlation[0])
        return np.clip(normalised[:, self.LAGS[0]:].max(1), 0.0, 1.0)


# ------------------------------------------------------------------------------------ analysis


def analyse_speech(path: str | os.PathLike, transcript: str | None = None, *, phones: bool = True,
                   config: SpeechConfig | None = None, progress: bool = False) -> SpeechAnalysis:
    """Loudness and (``phones``) timed phones of the speech in ``path``: forced alignment to
    ``transcript`` when given, else the phone loop."""
    config = config or SpeechConfig()
    total = probe_audio(path)
    recogniser = None
    mode = "loudness"
    if phones:
        words = transcript_words(transcript) if transcript is not None else None
        if words is not None and not words:
            raise InputError("the transcript has no words")
        recogniser = _Aligner(words, config) if words else _PhoneLoop(config)
        mode = "align" if words else "loop"
    envelope = Envelope()
    found: list[Phone] = []
    stretch = np.empty(0, np.int16)
    stretch_start = 0  # in samples
    samples = 0
    with tqdm(total=round(total, 1) if total else None, unit="s", desc="speech", disable=not progress,
              leave=False, bar_format="{l_bar}{bar}| {n:.1f}/{total_fmt} s") as bar:
        for chunk in read_pcm(path, config.chunk_seconds):
            samples += len(chunk)
            envelope.feed(chunk)
            if recogniser is not None:
                stretch = np.concatenate([stretch, chunk])
                while len(stretch) >= config.max_stretch * SAMPLE_RATE:
                    phones_found, used = recogniser.decode(stretch, stretch_start / SAMPLE_RATE, last=False)
                    found += phones_found
                    stretch, stretch_start = stretch[used:], stretch_start + used
            bar.update(len(chunk) / SAMPLE_RATE)
        if samples == 0:
            raise InputError(f"{path}: the audio track is empty")
        envelope.feed(np.empty(0, np.int16), last=True)
        if recogniser is not None and len(stretch):
            found += recogniser.decode(stretch, stretch_start / SAMPLE_RATE, last=True)[0]
    loudness, voicing = envelope.result()
    aligned = isinstance(recogniser, _Aligner)
    return SpeechAnalysis(duration=samples / SAMPLE_RATE, loudness=loudness, voicing=voicing, phones=found,
                          mode=mode, words=recogniser.aligned if aligned else [],
                          unmatched_words=recogniser.unmatched() if aligned else [])


def _quietest_cut(stretch: np.ndarray, window: float) -> int:
    """A sample index in the last ``window`` seconds of ``stretch`` at the centre of its quietest 0.3 s."""
    level = frame_loudness(stretch)
    smooth = np.convolve(level, np.ones(30) / 30, mode="same")
    first = max(1, len(level) - int(window / FRAME_SECONDS))
    last = max(first + 1, len(level) - 15)
    return (first + int(np.argmin(smooth[first:last]))) * HOP


def _decoder(**settings):
    import pocketsphinx

    model = Path(pocketsphinx.get_model_path()) / "en-us"
    # dither: digital silence (exact zeros, as synthesised speech has) has no log energy and made every
    # alignment fail; a fixed seed keeps the output deterministic.
    return pocketsphinx.Decoder(hmm=str(model / "en-us"), dict=str(model / "cmudict-en-us.dict"), lm=None,
                                dither=True, seed=1, loglevel="FATAL", **settings)


#: The phone loop's filler for speech it cannot name (it took whole vowels of a female voice for it):
#: kept as a neutral vowel, so the speech gate, not the filler, decides whether the mouth moves.
UNNAMED_SPEECH = {"+SPN+": "AH"}


def _phone_name(word: str) -> str | None:
    return word if word in PHONES else UNNAMED_SPEECH.get(word)


def _frame_time(start: float, frame: int) -> float:
    return start + frame * FRAME_SECONDS + BOUNDARY_OFFSET


class _PhoneLoop:
    """Free phone recognition: any phone may follow any other, weighted by the phone language model."""

    def __init__(self, config: SpeechConfig) -> None:
        import pocketsphinx

        phone_lm = Path(pocketsphinx.get_model_path()) / "en-us" / "en-us-phone.lm.bin"
        self.decoder = _decoder(allphone=str(phone_lm), backtrace=True, beam=config.loop_beam,
                                pbeam=config.loop_beam, lw=config.loop_language_weight)
        self.config = config

    def decode(self, pcm: np.ndarray, start: float, *, last: bool) -> tuple[list[Phone], int]:
        """The phones of ``pcm`` (up to its quietest moment near the end, unless ``last``) and how
        many samples that was."""
        used = len(pcm) if last else _quietest_cut(pcm, self.config.cut_window)
        d = self.decoder
        d.start_utt()
        d.process_raw(pcm[:used].tobytes(), full_utt=True)
        d.end_utt()
        return [Phone(_phone_name(s.word), _frame_time(start, s.start_frame), _frame_time(start, s.end_frame + 1))
                for s in d.seg() if _phone_name(s.word)], used


class _Aligner:
    """Forced alignment of a transcript, stretch by stretch (see the module notes)."""

    def __init__(self, words: list[str], config: SpeechConfig) -> None:
        # Pauses are explicit in the grammars below (pocketsphinx's filler insertion would also offer
        # noise words), and nothing is pruned: with the default beams, 26 of 144 espeak-ng sentences
        # found no path at all (a grammar of a few words is cheap to search whole).
        self.decoder = _decoder(bestpath=False, fsgusefiller=False, beam=config.align_beam, pbeam=config.align_beam,
                                wbeam=config.align_beam)
        for word in sorted(set(words)):
            if self.decoder.lookup_word(word) is None:
                self.decoder.add_word(word, " ".join(spell(word)), True)
        self.words, self.next, self.config = words, 0, config
        self.aligned: list[Phone] = []
        self.skipped: list[str] = []

    def unmatched(self) -> list[str]:
        """Words passed over or never reached."""
        return self.skipped + self.words[self.next:]

    def decode(self, pcm: np.ndarray, start: float, *, last: bool) -> tuple[list[Phone], int]:
        """The phones of the words this stretch holds and how many samples are done with: all of them
        for the ``last`` stretch, else up to the end of the last word that ends ``commit_margin``
        before the stretch does (the words after it are found again at the start of the next one)."""
        remaining = self.words[self.next:]
        if not remaining:
            return [], len(pcm)
        frames = len(pcm) // HOP
        offered = remaining[: int(len(pcm) / SAMPLE_RATE * self.config.words_per_second) + 3]
        limit = frames if last else frames - int(self.config.commit_margin / FRAME_SECONDS)
        for skip in (0, 1):  # a first word that is not there is passed over once
            words = offered[skip:]
            whole = last and len(words) == len(remaining) - skip  # the last stretch takes them all if it can
            said = self._match(pcm, words, stop_anywhere=False) if whole else None
            if said is None:
                said = self._match(pcm, words, stop_anywhere=True) or []
            ends = [k for k, (token, _, end) in enumerate(said) if token != SILENCE and end <= limit]
            if ends:
                break
        else:
            return [], len(pcm) if last else max(HOP, limit * HOP)  # no words: nothing said here
        kept = said if last else said[: ends[-1] + 1]
        count = sum(1 for token, _, _ in kept if token != SILENCE)
        self.skipped += offered[:skip]
        self.next += skip + count
        used = len(pcm) if last else (kept[-1][2] + 1) * HOP
        return self._align(pcm[:used], [token for token, _, _ in kept], start), used

    def _match(self, pcm: np.ndarray, words: list[str], *, stop_anywhere: bool) -> list[tuple[str, int, int]] | None:
        """The first words of ``words`` this stretch holds, with the pauses between them
        (:data:`SILENCE`), as (word, first frame, last frame): the best path through a chain of the
        words with an optional pause at every step, ending after the last word or (``stop_anywhere``)
        after any of them or none. None if no path reaches the end."""
        final = len(words) + 1
        transitions = [(i, i + 1, 1.0, word) for i, word in enumerate(words)] + [(len(words), final, 1.0)]
        transitions += [(i, i, 0.5, SILENCE) for i in range(len(words) + 1)]
        if stop_anywhere:
            transitions += [(i, final, 0.1) for i in range(len(words))]
        d = self.decoder
        d.add_fsg("words", d.create_fsg("words", 0, final, transitions))
        d.activate_search("words")
        d.start_utt()
        d.process_raw(pcm.tobytes(), full_utt=True)
        d.end_utt()
        if d.hyp() is None:
            return None
        out: list[tuple[str, int, int]] = []
        for segment in d.seg():
            token = re.sub(r"\(\d+\)$", "", segment.word)
            if token != SILENCE and token.startswith(("<", "[", "(")):
                continue
            if out and token == SILENCE == out[-1][0]:
                out[-1] = (SILENCE, out[-1][1], segment.end_frame)
            else:
                out.append((token, segment.start_frame, segment.end_frame))
        return out

    def _align(self, pcm: np.ndarray, tokens: list[str], start: float) -> list[Phone]:
        d = self.decoder
        data = pcm.tobytes()
        try:
            d.set_align_text(" ".join(tokens))
        except RuntimeError as exc:
            raise InputError(f"the transcript could not be aligned ({exc})") from None
        for second_pass in (False, True):  # words, then phones and states within them
            if second_pass:
                d.set_alignment()
            d.start_utt()
            d.process_raw(data, full_utt=True)
            d.end_utt()
        alignment = d.get_alignment()
        if alignment is None:
            return []
        self.aligned += [Phone(w.name, _frame_time(start, w.start), _frame_time(start, w.start + w.duration))
                         for w in alignment if w.name != SILENCE]
        return [Phone(p.name, _frame_time(start, p.start), _frame_time(start, p.start + p.duration))
                for word in alignment for p in word if _phone_name(p.name)]


# ------------------------------------------------------------------------------------ transcripts


def transcript_words(text: str) -> list[str]:
    """The words of a transcript as the dictionary spells them: lower case, numbers written out,
    punctuation dropped (apostrophes inside words kept)."""
    words = []
    for token in re.findall(r"[a-z0-9']+", text.lower()):
        for part in re.findall(r"[a-z']+|[0-9]+", token):
            if part.isdigit():
                words += _number_words(int(part)) if len(part) <= 6 else [_DIGITS[int(c)] for c in part]
            elif part.strip("'"):
                words.append(part.strip("'") if part.startswith("'") and part.endswith("'") else part)
    return words


_DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_TEENS = ("ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
          "nineteen")
_TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")


def _number_words(n: int) -> list[str]:
    if n < 10:
        return [_DIGITS[n]]
    if n < 20:
        return [_TEENS[n - 10]]
    if n < 100:
        return [_TENS[n // 10]] + (_number_words(n % 10) if n % 10 else [])
    if n < 1000:
        return _number_words(n // 100) + ["hundred"] + (_number_words(n % 100) if n % 100 else [])
    return _number_words(n // 1000) + ["thousand"] + (_number_words(n % 1000) if n % 1000 else [])


#: Letter groups -> phones, longest first, for words the dictionary lacks (a rough fallback: their
#: mouth shapes come out plausible, their exact vowels may not).
_SPELLING = {
    "tch": "CH", "igh": "AY", "sch": "S K",
    "ch": "CH", "sh": "SH", "th": "TH", "ph": "F", "wh": "W", "ng": "NG", "ck": "K", "qu": "K W", "gh": "",
    "ee": "IY", "ea": "IY", "oo": "UW", "ou": "AW", "ow": "OW", "oa": "OW", "ai": "EY", "ay": "EY", "oi": "OY",
    "oy": "OY", "au": "AO", "aw": "AO", "ie": "IY", "ei": "EY", "er": "ER", "ir": "ER", "ur": "ER", "ar": "AA R",
    "or": "AO R", "ew": "UW",
    "a": "AE", "b": "B", "c": "K", "d": "D", "e": "EH", "f": "F", "g": "G", "h": "HH", "i": "IH", "j": "JH", "k": "K",
    "l": "L", "m": "M", "n": "N", "o": "AA", "p": "P", "q": "K", "r": "R", "s": "S", "t": "T", "u": "AH", "v": "V",
    "w": "W", "x": "K S", "y": "IY", "z": "Z",
}


def spell(word: str) -> list[str]:
    """A pronunciation by letter rules, for a word the dictionary does not have."""
    letters = re.sub(r"[^a-z]", "", word.lower())
    if len(letters) > 3 and letters.endswith("e") and letters[-2] not in "aeiou":
        letters = letters[:-1]  # silent final e
    phones: list[str] = []
    i = 0
    while i < len(letters):
        for size in (3, 2, 1):
            group = letters[i:i + size]
            if len(group) == size and group in _SPELLING:
                phones += _SPELLING[group].split()
                i += size
                break
        else:
            i += 1
    deduplicated = [p for k, p in enumerate(phones) if k == 0 or p != phones[k - 1]]
    return deduplicated or ["AH"]


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""
