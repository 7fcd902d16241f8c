"""Measure the invisible watermark (README "Provenance"): robustness, false positives, cost.

    python scripts/watermark_robustness.py                      # ours: writes docs/provenance/robustness.{md,json}
    python scripts/watermark_robustness.py --compare            # also the library methods it was chosen against
    python scripts/watermark_robustness.py --timing             # only the CPU time to mark a 256/512/1280 px frame

1. Test videos: real photos that ship in installable packages (scikit-image's astronaut, at 512 px
   and scaled to 256 px, matplotlib's Grace Hopper, at 512 x 600 and scaled to 256 x 300, the
   insightface wheel's group photo ``t1.jpg``) and mimaface's own 256 px ``portrait.jpg`` (the
   demo's; a crop of the astronaut) animated by the bundled ``talk.json`` with the warp engine and
   no provenance (``mimaface animate --no-watermark``): 75 frames each.
2. Each method marks those frames (PSNR against the unmarked frames; CPU time per frame, OpenCV
   on one thread as the rest of the timing, with the machine's load average) and the
   result is encoded as ``mimaface animate`` encodes (H.264 CRF 18), then attacked with ffmpeg:
   re-encoding at CRF 23 and 28, 0.5x downscaling, a 10 % crop (90 % of the width and height kept,
   off-centre), half the frame rate, and all of these at once (crop, downscale, half rate, CRF 28).
   Every attack is an H.264 re-encode (CRF 23 unless said). Each attacked video is read back
   (ours: :func:`mimaface.provenance.watermark.detect`, voting over all frames).
3. False positives: unmarked videos (the test videos and their attacked copies), unmarked photos
   (every photo bundled in scikit-image, matplotlib and insightface, plus random crops and
   rescales of them) and SynthTalk (``mimaface synth``: each clip as a video and its first frame
   as a photo). The mark counts as found at >= 28 of the 32 magic bits at the best of 4
   alignments; under "no watermark" that happens with probability <= 4 P(Binomial(32, 1/2) >= 28)
   = 3.9e-5.

``--compare`` needs the libraries (not dependencies of mimaface; ``--no-deps`` keeps
invisible-watermark from installing a second OpenCV wheel beside mediapipe's):
``pip install --no-deps invisible-watermark==0.2.0 blind-watermark==0.4.4 PyWavelets onnxruntime``.
Their bits are voted over frames (the mean of each bit over frames) and "detected" means >= 28 of
their 32 bits right (the verifier is given their payload). They run on the first
``--compare-frames`` frames of the two 512 px videos (:data:`COMPARED`; RivaGAN takes seconds per
frame on a CPU). Their decoders get the frames resized back to the marked size (an oracle ours
does not need: it finds the scale itself).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from mimaface.media import load_image, read_video, write_image, write_video
from mimaface.provenance import ProvenanceOptions
from mimaface.provenance.watermark import (
    CANDIDATES,
    MAGIC_BITS,
    MAGIC_THRESHOLD,
    NUM_BITS,
    Payload,
    Watermarker,
    binomial_tail,
    detect,
    expected_bits,
    false_positive_bound,
)

ROOT = Path(__file__).resolve().parents[1]

CROP = "crop=trunc(iw*0.45)*2:trunc(ih*0.45)*2:trunc(iw*0.07):trunc(ih*0.03)"  # 90 % kept, off-centre
HALF = "scale=trunc(iw/4)*2:trunc(ih/4)*2"
ATTACKS = {
    "H.264 CRF 23": ("null", 23),
    "H.264 CRF 28": ("null", 28),
    "0.5x downscale": (HALF, 23),
    "10% crop": (CROP, 23),
    "half frame rate": ("fps=fps=source_fps/2", 23),
    "all combined (crop, 0.5x, half rate, CRF 28)": (f"{CROP},{HALF},fps=fps=source_fps/2", 28),
}
PAYLOAD = Payload(1, "3f2a9")  # any payload; this one is fixed so runs compare
COMPARED = ("astronaut 512x512", "Grace Hopper 512x600")  # the videos the library methods run on


def ffmpeg() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def attack(src: Path, dst: Path, name: str, fps: float) -> None:
    filters, crf = ATTACKS[name]
    subprocess.run([ffmpeg(), "-y", "-nostdin", "-loglevel", "error", "-i", str(src), "-vf",
                    filters.replace("source_fps", f"{fps:g}"), "-c:v", "libx264", "-crf", str(crf),
                    "-pix_fmt", "yuv420p", "-an", str(dst)], check=True)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255.0 ** 2 / np.mean((a.astype(np.float64) - b) ** 2)))


# ----------------------------------------------------------------------------------- test data


def real_photos() -> dict[str, np.ndarray]:
    """Every photo that ships in the installed packages (and the insightface wheel's)."""
    import matplotlib
    import skimage.data

    sys.path.insert(0, str(ROOT / "scripts"))
    from build_face_model import bundled_photos

    photos = dict(bundled_photos([]))
    for name in ("brick", "cat", "chelsea", "clock", "coffee", "coins", "grass", "gravel", "horse", "hubble_deep_field",
                 "immunohistochemistry", "moon", "page", "rocket", "text", "logo", "colorwheel"):
        try:
            photos[f"skimage/{name}"] = load_image(getattr(skimage.data, name)())
        except Exception as err:  # noqa: BLE001 - some need a download; say which
            print(f"  (skimage.data.{name} unavailable: {type(err).__name__})")
    sample = Path(matplotlib.get_data_path()) / "sample_data"
    for name in ("Minduka_Present_Blue_Pack.png", "logo2.png"):
        photos[f"matplotlib/{name}"] = load_image(sample / name)
    return photos


def make_videos(work: Path, photos: dict[str, np.ndarray]) -> dict[str, Path]:
    """The unmarked test videos (warp engine, talk.json)."""
    from PIL import Image

    from mimaface.demo import asset_path
    from mimaface.pipelines.animate import AnimateOptions, animate

    def scaled(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        return np.asarray(Image.fromarray(image).resize(size, Image.LANCZOS))

    sources = {"astronaut 512x512": photos["skimage/astronaut"],
               "astronaut 256x256": scaled(photos["skimage/astronaut"], (256, 256)),
               "portrait.jpg 256x256": load_image(asset_path("portrait.jpg")),
               "Grace Hopper 512x600": photos["matplotlib/grace_hopper"],
               "Grace Hopper 256x300": scaled(photos["matplotlib/grace_hopper"], (256, 300)),
               "insightface t1 1280x886": photos["insightface/t1.jpg"]}
    videos = {}
    options = AnimateOptions(provenance=ProvenanceOptions(enabled=False))
    for name, image in sources.items():
        source = work / f"{name.split()[0].replace('.', '_')}_{image.shape[1]}x{image.shape[0]}.png"
        write_image(source, image)
        videos[name] = work / f"{source.stem}.mp4"
        animate(source, ROOT / "src/mimaface/assets/talk.json", videos[name], options, progress=False)
        print(f"  {name}: {videos[name].name}", flush=True)
    return videos


def synthtalk_clips(work: Path) -> list[np.ndarray]:
    from mimaface.synthtalk import SynthConfig, generate_dataset

    folder = work / "synthtalk"
    generate_dataset(folder, SynthConfig(identities=20, clips_per_identity=1, frames=24, size=256, seed=3, workers=1),
                     progress=False)
    return [np.load(path) for path in sorted(folder.rglob("frames.npy"))]


# ------------------------------------------------------------------------------------- methods


class Ours:
    name = "mimaface (ours)"

    def __init__(self) -> None:
        self.marker = Watermarker(PAYLOAD, ProvenanceOptions().psnr_db)
        self.expected = expected_bits(PAYLOAD)

    def mark(self, frame: np.ndarray) -> np.ndarray:
        return self.marker.mark(frame)

    def read(self, frames: np.ndarray, marked_size: tuple[int, int]) -> tuple[float, bool, bool]:
        """(bit accuracy over all bits, found, payload read right)."""
        found = detect(frames)
        return float(np.mean(found.bits == self.expected)), found.found, found.payload == PAYLOAD


class Library:
    """An invisible-watermark or blind-watermark method with a 32-bit payload, bits voted over frames."""

    def __init__(self, method: str) -> None:
        import cv2

        self.cv2, self.method, self.name = cv2, method, method
        self.expected = np.random.default_rng(7).integers(0, 2, 32)
        if method == "blind-watermark":
            import multiprocessing

            # blind-watermark sets the start method when imported, an error once anything else has.
            set_start_method, multiprocessing.set_start_method = multiprocessing.set_start_method, lambda *a, **k: None
            try:
                import blind_watermark
            finally:
                multiprocessing.set_start_method = set_start_method
            blind_watermark.bw_notes.close()
            return
        from imwatermark import WatermarkDecoder, WatermarkEncoder

        self.encoder = WatermarkEncoder()
        self.encoder.set_watermark("bits", self.expected.tolist())
        self.decoder = WatermarkDecoder("bits", 32)
        self.name = f"invisible-watermark {method}"
        if method == "rivaGan":
            WatermarkEncoder.loadModel()

    def mark(self, frame: np.ndarray) -> np.ndarray:
        bgr = self.cv2.cvtColor(frame, self.cv2.COLOR_RGB2BGR)
        if self.method == "blind-watermark":
            from blind_watermark import WaterMark

            marker = WaterMark(password_img=1, password_wm=1)
            marker.read_img(img=bgr)
            marker.read_wm(self.expected.astype(bool).tolist(), mode="bit")
            out = np.clip(marker.embed(), 0, 255).astype(np.uint8)
        else:
            out = self.encoder.encode(bgr, self.method)
        return self.cv2.cvtColor(out, self.cv2.COLOR_BGR2RGB)

    def read(self, frames: np.ndarray, marked_size: tuple[int, int]) -> tuple[float, bool, bool]:
        votes = []
        for frame in frames:
            if frame.shape[:2] != marked_size:  # the oracle: back to the marked size
                frame = self.cv2.resize(frame, marked_size[::-1], interpolation=self.cv2.INTER_CUBIC)
            bgr = self.cv2.cvtColor(frame, self.cv2.COLOR_RGB2BGR)
            if self.method == "blind-watermark":
                from blind_watermark import WaterMark

                bits = WaterMark(password_img=1, password_wm=1).extract(embed_img=bgr, wm_shape=32, mode="bit")
            else:
                bits = self.decoder.decode(bgr, self.method)
            votes.append(np.asarray(bits, float) > 0.5)
        voted = np.mean(votes, 0) > 0.5
        right = int(np.sum(voted == self.expected))
        return right / 32, right >= MAGIC_THRESHOLD, right == 32  # as ours, one alignment


# ---------------------------------------------------------------------------------- measuring


def robustness(method, videos: dict[str, Path], work: Path, max_frames: int | None) -> dict:
    rows = {}
    for name, video in videos.items():
        frames, fps = read_video(video)
        frames = frames[:max_frames]
        load = os.getloadavg()[0]
        start = time.process_time()
        marked = [method.mark(f) for f in frames]
        ms = (time.process_time() - start) / len(frames) * 1000
        psnrs = [psnr(m, f) for m, f in zip(marked, frames)]
        clean = work / f"{method.name.split()[-1]}_{video.stem}.mp4"
        write_video(clean, marked, fps)
        size = frames[0].shape[:2]
        results = {"clean (CRF 18)": method.read(read_video(clean)[0], size)}  # the column names of report()
        for attack_name in ATTACKS:
            attacked = clean.with_name(f"{clean.stem}_{len(results)}.mp4")
            attack(clean, attacked, attack_name, fps)
            results[attack_name] = method.read(read_video(attacked)[0], size)
        rows[name] = {"psnr_db_mean": float(np.mean(psnrs)), "psnr_db_min": float(np.min(psnrs)),
                      "ms_per_frame": ms, "load_average": load, "frames": len(frames), "size": f"{size[1]}x{size[0]}",
                      "attacks": {k: {"bit_accuracy": v[0], "detected": v[1], "payload_right": v[2]}
                                  for k, v in results.items()}}
        print(f"  {method.name}, {name}: PSNR {rows[name]['psnr_db_mean']:.2f} dB, {ms:.1f} ms/frame; "
              + ", ".join(f"{k.split(' (')[0]} {v[0]:.2f}{'+' if v[1] else '-'}" for k, v in results.items()),
              flush=True)
    return rows


def false_positives(videos: dict[str, Path], photos: dict[str, np.ndarray], clips: list[np.ndarray], work: Path,
                    variants: int) -> dict:
    """Read every unmarked file; the counts of magic bits matched, per kind."""
    rng = np.random.default_rng(0)
    kinds: dict[str, list[int]] = {"real videos (and attacked copies)": [], "real photos (and crops, rescales)": [],
                                   "SynthTalk videos": [], "SynthTalk frames": []}
    for name, video in videos.items():
        fps = read_video(video)[1]
        copies = [video]
        for index, attack_name in enumerate(ATTACKS):
            copies.append(work / f"unmarked_{video.stem}_{index}.mp4")
            attack(video, copies[-1], attack_name, fps)
        kinds["real videos (and attacked copies)"] += [detect(read_video(c)[0]).magic_matches for c in copies]
    for name, photo in photos.items():
        kinds["real photos (and crops, rescales)"].append(detect([photo]).magic_matches)
        h, w = photo.shape[:2]
        for _ in range(variants):
            keep = rng.uniform(0.5, 1.0)
            ch, cw = max(32, int(h * keep)), max(32, int(w * keep))
            y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
            scale = rng.uniform(0.4, 1.6)
            from PIL import Image

            crop = Image.fromarray(photo[y:y + ch, x:x + cw]).resize((max(16, int(cw * scale)), max(16, int(ch * scale))))
            kinds["real photos (and crops, rescales)"].append(detect([np.asarray(crop)]).magic_matches)
        print(f"  photos: {name} done", flush=True)
    for clip in clips:
        kinds["SynthTalk videos"].append(detect(clip).magic_matches)
        kinds["SynthTalk frames"].append(detect(clip[:1]).magic_matches)
    return {kind: {"files": len(m), "found": int(np.sum(np.asarray(m) >= MAGIC_THRESHOLD)), "max_matches": int(max(m)),
                   "mean_matches": float(np.mean(m)), "sd_matches": float(np.std(m))} for kind, m in kinds.items()}


def marking_ms_per_frame(photos: dict[str, np.ndarray], repeats: int = 40) -> dict:
    """CPU time to mark one frame (``--timing``): the best of three runs of ``repeats`` marks."""
    from PIL import Image

    astronaut = photos["skimage/astronaut"]
    frames = {"256x256": np.asarray(Image.fromarray(astronaut).resize((256, 256), Image.LANCZOS)),
              "512x512": astronaut, "1280x886": photos["insightface/t1.jpg"]}
    marker = Watermarker(PAYLOAD, ProvenanceOptions().psnr_db)
    out = {"load_average": os.getloadavg()[0]}
    for size, frame in frames.items():
        runs = []
        for _ in range(3):
            start = time.process_time()
            for _ in range(repeats):
                marker.mark(frame)
            runs.append((time.process_time() - start) / repeats * 1000)
        out[size] = min(runs)
    return out


def warp_ms_per_frame(work: Path, photo: np.ndarray) -> dict:
    """The warp engine's own CPU time per frame at 512 px, with and without provenance (whole job)."""
    from mimaface.pipelines.animate import AnimateOptions, animate

    source = work / "astronaut_for_timing.png"
    write_image(source, photo)
    out = {}
    for label, enabled in (("without provenance", False), ("with provenance", True)):
        start = time.process_time()
        result = animate(source, ROOT / "src/mimaface/assets/talk.json", work / f"timing_{enabled}.mp4",
                         AnimateOptions(provenance=ProvenanceOptions(enabled=enabled)), progress=False)
        out[label] = (time.process_time() - start) / result.num_frames * 1000
    return out


# ------------------------------------------------------------------------------------- report


def null_moments() -> tuple[float, float]:
    """Mean and SD of the magic bits matched without a mark: the best of CANDIDATES Binomial(32, 1/2)."""
    cdf = np.cumsum([binomial_tail(k, MAGIC_BITS) - binomial_tail(k + 1, MAGIC_BITS) for k in range(MAGIC_BITS + 1)])
    pmf = np.diff(np.concatenate([[0.0], cdf ** CANDIDATES]))
    k = np.arange(MAGIC_BITS + 1)
    mean = float(np.sum(k * pmf))
    return mean, float(np.sqrt(np.sum((k - mean) ** 2 * pmf)))


def report(results: dict) -> str:
    columns = ["clean (CRF 18)", *ATTACKS]
    lines = ["| method | video | PSNR (dB) | ms/frame | " + " | ".join(columns) + " |",
             "| --- | --- | ---: | ---: |" + " ---: |" * len(columns)]
    for method, videos in results["robustness"].items():
        for video, row in videos.items():
            cells = [f"{a['bit_accuracy']:.2f} {'✓' if a['detected'] else '✗'}" for a in row["attacks"].values()]
            lines.append(f"| {method} | {video} | {row['psnr_db_mean']:.1f} | {row['ms_per_frame']:.1f} | "
                         + " | ".join(cells) + " |")
    mean, sd = null_moments()
    lines += ["", f"| unmarked files | files | found | most magic bits matched | mean ± sd (no mark: {mean:.1f} ± {sd:.2f}) |",
              "| --- | ---: | ---: | ---: | ---: |"]
    for kind, row in results["false_positives"].items():
        lines.append(f"| {kind} | {row['files']} | {row['found']} | {row['max_matches']}/32 | "
                     f"{row['mean_matches']:.1f} ± {row['sd_matches']:.2f} |")
    total = sum(row["files"] for row in results["false_positives"].values())
    lines += ["", (f"Found: >= {MAGIC_THRESHOLD} of {MAGIC_BITS} magic bits at the best of {CANDIDATES} alignments; "
                   f"P(false positive) per file <= {false_positive_bound(MAGIC_THRESHOLD):.1e}; {total} unmarked files read. "
                   f"Without a mark the count is the best of {CANDIDATES} Binomial({MAGIC_BITS}, 1/2) draws.")]
    if "warp_ms_per_frame" in results:
        t = results["warp_ms_per_frame"]
        lines.append(f"Whole `animate` job (warp, astronaut 512 px, CPU time per frame): "
                     f"{t['without provenance']:.1f} ms without provenance, {t['with provenance']:.1f} ms with it.")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "provenance")
    parser.add_argument("--compare", action="store_true", help="also the library methods (see the docstring)")
    parser.add_argument("--compare-frames", type=int, default=8)
    parser.add_argument("--photo-variants", type=int, default=12, help="random crops/rescales per photo")
    parser.add_argument("--report-only", action="store_true", help="rewrite robustness.md from robustness.json")
    parser.add_argument("--timing", action="store_true", help="only print the CPU time to mark a frame")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.report_only:
        (args.out / "robustness.md").write_text(report(json.loads((args.out / "robustness.json").read_text())))
        return
    import cv2

    cv2.setNumThreads(1)  # CPU times per frame are one core's (OMP_NUM_THREADS does not reach OpenCV's threads)
    if args.timing:
        timing = marking_ms_per_frame(real_photos())
        print(f"marking, CPU ms per frame (best of 3 x 40, load average {timing.pop('load_average'):.1f}): "
              + ", ".join(f"{size} {ms:.2f}" for size, ms in timing.items()))
        return
    methods = [Ours()]
    if args.compare:
        methods += [Library(m) for m in ("dwtDct", "dwtDctSvd", "rivaGan", "blind-watermark")]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        print("photos and test videos", flush=True)
        photos = real_photos()
        videos = make_videos(work, photos)
        results = {"payload_bits": NUM_BITS, "robustness": {}}
        for method in methods:
            print(f"robustness: {method.name}", flush=True)
            ours = isinstance(method, Ours)
            results["robustness"][method.name] = robustness(
                method, videos if ours else {name: videos[name] for name in COMPARED}, work,
                None if ours else args.compare_frames)
        print("false positives", flush=True)
        results["false_positives"] = false_positives(videos, photos, synthtalk_clips(work), work, args.photo_variants)
        results["warp_ms_per_frame"] = warp_ms_per_frame(work, photos["skimage/astronaut"])
    (args.out / "robustness.json").write_text(json.dumps(results, indent=2) + "\n")
    table = report(results)
    (args.out / "robustness.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
