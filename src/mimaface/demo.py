"""``mimaface demo``: the main job (the bundled tiny model on held-out SynthTalk identities), and the\nwarped-photo test clip."""

from __future__ import annotations

import dataclasses
import importlib.resources
import json
from pathlib import Path

import numpy as np
from PIL import Image

from mimaface import files
from mimaface.errors import InputError
from mimaface.evaluation.metrics import boundary_consistency, masked_psnr, psnr
from mimaface.face3d.coefficients import MotionCoefficients, motion_from_json
from mimaface.media import load_image, write_image, write_video
from mimaface.pipelines.compositing import side_by_side
from mimaface.pipelines.options import SamplingOptions
from mimaface.pipelines.pipeline import GeneratedVideo, MIMAFacePipeline
from mimaface.pipelines.retarget import RetargetConfig, retarget
from mimaface.pipelines.settings import BUNDLED_MODEL
from mimaface.pipelines.source import aligned_source
from mimaface.provenance import ProvenanceOptions, Stamp
from mimaface.synthtalk import SynthConfig, held_out_identities, render_clip, render_identity


def asset_path(name: str) -> Path:
    return Path(str(importlib.resources.files("mimaface") / "assets" / name))


def warped_clip(image: np.ndarray, num_frames: int = 40, *, max_roll: float = 20.0, max_shift: float = 0.08,
                max_zoom: float = 0.15) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """A video made by rotating, shifting and zooming a photo smoothly over time.

    Returns ``(frames (T,H,W,3), truth)`` where ``truth`` holds the per-frame in-plane rotation
    ``roll`` (degrees, counter-clockwise), ``shift`` (pixels, x right / y down) and ``zoom``
    (scale factor), all about the image centre.
    """
    h, w = image.shape[:2]
    phase = np.linspace(0.0, 2.0 * np.pi, num_frames)
    roll = max_roll * np.sin(phase)
    shift = np.stack([max_shift * w * np.sin(2 * phase), max_shift * h * (1 - np.cos(phase)) / 2], -1)
    zoom = 1.0 + max_zoom * np.sin(phase / 2)
    frames = []
    centre = np.array([w / 2.0, h / 2.0])
    for angle, offset, z in zip(roll, shift, zoom):
        a = np.deg2rad(angle)
        # Output pixel p comes from input pixel centre + R^-1 (p - centre - offset) / z (y down, so a
        # counter-clockwise rotation on screen is a clockwise one in array coordinates).
        inv = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]) / z
        src_origin = centre - inv @ (centre + offset)
        coeffs = (inv[0, 0], inv[0, 1], src_origin[0], inv[1, 0], inv[1, 1], src_origin[1])
        frames.append(np.asarray(Image.fromarray(image).transform((w, h), Image.AFFINE, coeffs, Image.BICUBIC)))
    return np.stack(frames), {"roll": roll, "shift": shift, "zoom": zoom}


DRIVING_FRAMES = 72  # 12 clips of 8 frames joined through ICA (k = 2)


def run_demo(output: Path, *, checkpoint: str | Path | None = None, steps: int = SamplingOptions.num_inference_steps,
             progress: bool = True, provenance: ProvenanceOptions | None = None) -> dict:
    """The main job: a held-out SynthTalk identity animated (1) by another held-out identity's motion,
    checked against SynthTalk's exact ground truth, with and without ICA, and (2) by the bundled
    hand-written MOTION.json. Writes videos, ``summary.png`` and ``metrics.json`` to ``output``; the
    videos and the figure are watermarked and signed (``provenance``, default on; the metrics are
    measured on the frames as generated)."""
    output.mkdir(parents=True, exist_ok=True)
    pipeline = MIMAFacePipeline.from_pretrained(checkpoint)
    pipeline.set_progress_bar_config(disable=not progress, leave=False)

    def generate(motion: MotionCoefficients, **options) -> GeneratedVideo:
        sampling = SamplingOptions(num_inference_steps=steps, **options)
        return GeneratedVideo.from_clips(pipeline.generate_clips(source.crop, motion, **sampling.pipeline_kwargs()))

    recipe = training_recipe(checkpoint)
    held = sorted(held_out_identities(recipe))
    if len(held) < 2:
        raise InputError("the model's training data recipe holds out fewer than two identities")
    a, b = held[0], held[1]
    frames_a, _, motion_a = render_clip(recipe, a, 0)
    source = aligned_source(frames_a[0], dataclasses.replace(motion_a.select([0]), landmarks=None, extra={}))
    stamp = Stamp.for_job(provenance or ProvenanceOptions(), pipeline, engine="diffusion", source=source.crop)
    mark = stamp.mark if stamp is not None else (lambda frame: frame)
    sign = stamp.sign if stamp is not None else None
    # A new, longer performance of B (SynthTalk motion is seeded per clip; B's look is the held-out one).
    long = dataclasses.replace(recipe, frames=DRIVING_FRAMES)
    for clip in range(16):  # the first talking (not still-portrait) performance
        driving_frames, _, driving = render_clip(long, b, clip)
        if driving.extra.get("mode") == "talking":
            break

    # 1. Cross-identity with exact ground truth: same camera, so absolute coefficients; A's face shape.
    motion = retarget(source.coefficients, driving, RetargetConfig(mode="absolute"))
    truth = render_identity(recipe, a, motion)
    with_ica = generate(motion)
    without_ica = generate(motion, use_ica=False)
    still = np.repeat(source.crop[None], len(truth), 0)
    # The face: where the driven face (I_R) or the source's own face is.
    face = (with_ica.renders > 0) | (pipeline.render(source.coefficients)[0] > 0)
    metrics = {
        "frames": len(truth), "clips": len(with_ica.clip_starts),
        "psnr_db": {"generated": psnr(with_ica.frames, truth), "generated_no_ica": psnr(without_ica.frames, truth),
                    "source_held_still": psnr(still, truth)},
        "face_psnr_db": {"generated": masked_psnr(with_ica.frames, truth, face),
                         "generated_no_ica": masked_psnr(without_ica.frames, truth, face),
                         "source_held_still": masked_psnr(still, truth, face)},
        "boundary_consistency": {
            "ica": boundary_consistency(with_ica.frames, with_ica.clip_starts),
            "no_ica": boundary_consistency(without_ica.frames, without_ica.clip_starts),
            "ground_truth": boundary_consistency(truth, with_ica.clip_starts)},
    }
    panels = (side_by_side(source.crop, d, r, g, n, t) for d, r, g, n, t in
              zip(driving_frames, with_ica.renders, with_ica.frames, without_ica.frames, truth))
    write_video(output / "cross_identity.mp4", map(mark, panels), driving.fps, finish=sign)

    # 2. The hand-written MOTION.json, relative to the source's own pose and expression.
    talk = retarget(source.coefficients, motion_from_json(asset_path("talk.json")))
    talked = generate(talk)
    write_video(output / "motion_json.mp4", (mark(side_by_side(source.crop, r, g)) for r, g in
                                             zip(talked.renders, talked.frames)), talk.fps, finish=sign)
    with files.atomic_output(output / "summary.png") as figure:
        _summary(figure, source.crop, driving_frames, with_ica, without_ica, truth, talked)
        if stamp is not None:  # it shows generated frames: marked and signed as the videos are
            write_image(figure, mark(load_image(figure)), finish=sign)
    files.write_json(output / "metrics.json", metrics)
    p, fp, c = metrics["psnr_db"], metrics["face_psnr_db"], metrics["boundary_consistency"]
    print(f"held-out identity {a} driven by held-out identity {b}: {metrics['frames']} frames in {metrics['clips']} clips")
    print(f"  PSNR against the exact ground truth: generated {p['generated']:.2f} dB, without ICA "
          f"{p['generated_no_ica']:.2f} dB, source held still {p['source_held_still']:.2f} dB")
    print(f"  on the face: generated {fp['generated']:.2f} dB, without ICA {fp['generated_no_ica']:.2f} dB, "
          f"source held still {fp['source_held_still']:.2f} dB")
    print(f"  clip-boundary change / within-clip change: ICA {c['ica']['ratio']:.2f}, no ICA "
          f"{c['no_ica']['ratio']:.2f}, ground truth {c['ground_truth']['ratio']:.2f}")
    print(f"outputs in {output}/ (cross_identity.mp4: source | driving | I_R | generated | no ICA | truth)")
    return metrics


def training_recipe(checkpoint: str | Path | None) -> SynthConfig:
    """The SynthTalk settings the model was trained on (``training.json`` beside the bundled model)."""
    folder = Path(checkpoint) if checkpoint is not None else BUNDLED_MODEL
    record = folder / "training.json"
    if record.is_file():
        return SynthConfig(**json.loads(record.read_text())["data"]["config"])
    return SynthConfig(identities=400, clips_per_identity=2, frames=24, size=64, seed=0)


def _summary(path: Path, source: np.ndarray, driving: np.ndarray, with_ica, without_ica, truth: np.ndarray,
             talked) -> None:
    """Every few frames: driving, I_R, generated, without ICA, ground truth; then the MOTION.json run."""
    from mimaface.figures import image_grid

    picks = np.linspace(0, len(truth) - 1, 8).round().astype(int)
    talk_picks = np.linspace(0, len(talked.frames) - 1, 8).round().astype(int)
    grey = lambda r: np.repeat(r[..., None], 3, -1)  # noqa: E731
    blank = np.full_like(source, 255)
    rows = [[source] + [driving[i] for i in picks], [blank] + [grey(with_ica.renders[i]) for i in picks],
            [blank] + [with_ica.frames[i] for i in picks], [blank] + [without_ica.frames[i] for i in picks],
            [blank] + [truth[i] for i in picks], [source] + [grey(talked.renders[i]) for i in talk_picks],
            [blank] + [talked.frames[i] for i in talk_picks]]
    image_grid(rows, path, row_labels=["driving", "I_R", "generated", "no ICA", "ground truth", "JSON: I_R",
                                       "JSON: generated"],
               column_labels=["source"] + [f"frame {i}" for i in picks],
               title="held-out identity (source) reenacted by another held-out identity, then by talk.json")
