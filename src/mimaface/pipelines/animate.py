"""``mimaface animate``: a portrait + a driving video, image or coefficient file -> a video.

Steps: find, crop and fit the source face; read the driving motion (face3d extraction for media,
as stored for ``.npz`` / ``MOTION.json``); retarget it onto the source (relative by default);
render I_R with the source's face shape; generate with the pipeline (clips joined through ICA);
paste the result back into the source picture (or keep the crop); write the MP4 at the driving
video's frame rate with its audio, and optionally PNG frames and a side-by-side video.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mimaface.errors import InputError
from mimaface.face3d.coefficients import MotionCoefficients, load_motion
from mimaface.face3d.pipeline import ExtractConfig, extract_motion
from mimaface.media import has_audio, is_video_path, iter_video_frames, load_image, write_image, write_video
from mimaface.pipelines.compositing import colour_transfer, paste_back, side_by_side
from mimaface.pipelines.pipeline import AnimationOutput, MIMAFacePipeline
from mimaface.pipelines.retarget import RetargetConfig, retarget
from mimaface.pipelines.source import SourceFace, prepare_source

MOTION_FILES = (".npz", ".json")
IMAGE_OUT = (".png", ".jpg", ".jpeg")


@dataclass
class AnimateOptions:
    num_inference_steps: int = 25
    guidance_scale: float = 2.0
    seed: int = 0
    scheduler: str | None = None  # ddim (default), euler, dpm++
    clip_length: int | None = None  # None: as trained
    overlap: int | None = None  # ICA k; None: as trained
    use_ica: bool = True
    batch_size: int = 1  # independent clips (no ICA) or frames (one driving frame) per forward
    retarget: RetargetConfig = field(default_factory=RetargetConfig)
    face_index: int | None = None  # which face of the source
    driving_face_index: int | None = None
    max_gap: int = 12  # driving video: longest faceless run interpolated
    paste: bool = True  # False: write the crops
    side_by_side: str | None = None  # path of a source | driving | I_R | result video
    frames_dir: str | None = None  # also write PNG frames here
    fps: float | None = None  # output rate for coefficient-file driving (default: the file's)


def read_driving(path: str | os.PathLike, options: AnimateOptions, progress: bool) -> MotionCoefficients:
    path = Path(path)
    if path.suffix.lower() in MOTION_FILES:
        return load_motion(path)
    config = ExtractConfig(face_index=options.driving_face_index, max_gap=options.max_gap)
    return extract_motion(path, config, progress=progress)


def animate(source_path: str | os.PathLike, driving_path: str | os.PathLike, output: str | os.PathLike,
            options: AnimateOptions | None = None, *, checkpoint: str | os.PathLike | None = None,
            pipeline: MIMAFacePipeline | None = None, progress: bool = True) -> AnimationOutput:
    """Run the whole job and write ``output`` (.mp4, or .png for a single driving image)."""
    options = options or AnimateOptions()
    output = Path(output)
    suffix = output.suffix.lower()
    if suffix not in (".mp4", *IMAGE_OUT):
        raise InputError(f"{output}: unsupported output format (use .mp4, or .png/.jpg for one frame)")
    if not output.parent.is_dir():
        raise InputError(f"{output}: cannot write, folder {output.parent} does not exist")
    pipeline = pipeline or MIMAFacePipeline.from_pretrained(checkpoint)
    source = prepare_source(load_image(source_path), pipeline.image_size, face_index=options.face_index,
                            name=str(source_path))
    driving = read_driving(driving_path, options, progress)
    if suffix in IMAGE_OUT and driving.num_frames != 1:
        raise InputError(f"{output}: an image output needs a single driving frame; the driving has {driving.num_frames}")
    motion = retarget(source.coefficients, driving, options.retarget)
    result = pipeline(source.crop, motion, num_inference_steps=options.num_inference_steps,
                      guidance_scale=options.guidance_scale, seed=options.seed, clip_length=options.clip_length,
                      overlap=options.overlap, use_ica=options.use_ica, scheduler=options.scheduler,
                      batch_size=options.batch_size, progress=progress)
    frames = compose(source, result, paste=options.paste)
    if suffix in IMAGE_OUT:
        write_image(output, frames[0])
    else:
        fps = options.fps or driving.fps
        audio = driving_path if is_video_path(driving_path) and has_audio(driving_path) else None
        write_video(output, frames, fps, audio_from=audio)
    if options.frames_dir:
        write_frames(Path(options.frames_dir), frames)
    if options.side_by_side:
        driving_frames = _driving_frames(driving_path, driving.num_frames)
        panels = (side_by_side(source.image, d, r, g) for d, r, g in zip(driving_frames, result.renders, frames))
        write_video(options.side_by_side, panels, options.fps or driving.fps)
    return result


def compose(source: SourceFace, result: AnimationOutput, paste: bool = True) -> list[np.ndarray]:
    """The frames to write: pasted into the source picture (colour-matched to the source crop) or the crops."""
    if not paste:
        return list(result.frames)
    gain, offset = colour_transfer(result.frames[0], source.crop)
    return [paste_back(source.image, frame, source.box, gain=gain, offset=offset) for frame in result.frames]


def write_frames(folder: Path, frames: list[np.ndarray]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, frame in enumerate(frames):
        write_image(folder / f"frame_{i:06d}.png", frame)


def _driving_frames(path: str | os.PathLike, count: int):
    """What to show as "driving" in the side-by-side: the video's frames, the image, or black."""
    if is_video_path(path):
        return iter_video_frames(path)
    if Path(path).suffix.lower() in MOTION_FILES:
        return (np.zeros((64, 64, 3), np.uint8) for _ in range(count))
    image = load_image(path)
    return (image for _ in range(count))

