"""``mimaface animate``: a portrait + a driving video, image, audio or coefficient file -> a video.

Two engines (:mod:`mimaface.pipelines.engines`): the mesh warp (the default without a
``--checkpoint``: the bundled diffusion model knows only synthetic faces) and the diffusion model.
Steps: find, crop and fit the source face; read the driving motion (face3d extraction for media,
as stored for ``.npz`` / ``MOTION.json``, :func:`mimaface.audio.audio_to_motion` for speech: an audio
file, or a video with ``from_audio``); retarget it onto the source (relative by default);
then, clip by clip as the pipeline yields them: render I_R with the source's face shape,
generate (clips joined through ICA), paste the result back into the source picture through a
face-shaped mask (or keep the crop) and encode, so memory does not grow with the video. The MP4
has the driving video's frame rate and its audio, or the driving audio file, or ``audio_track``
(padded or cut to exactly the frames made);
optionally PNG frames and a side-by-side video are written in the same pass.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm.auto import tqdm

from mimaface.audio import AudioMotionOptions, audio_to_motion, is_audio_path
from mimaface.errors import InputError
from mimaface.face3d.coefficients import MotionCoefficients, check_fps, load_motion
from mimaface.face3d.pipeline import ExtractConfig, extract_motion
from mimaface.limits import check_count, limits
from mimaface.media import (
    VideoWriter,
    check_output_file,
    existing_file,
    is_video_path,
    iter_video_frames,
    load_image,
    write_image,
)
from mimaface.pipelines.compositing import PasteBack, side_by_side
from mimaface.pipelines.engines import Engine, choose_engine, prepare_engine_source
from mimaface.pipelines.options import SamplingOptions
from mimaface.pipelines.retarget import RetargetConfig, retarget
from mimaface.pipelines.settings import check_generation, read_settings
from mimaface.pipelines.source import SourceFace
from mimaface.provenance import ProvenanceOptions, Stamp
from mimaface.values import is_whole

if TYPE_CHECKING:  # the diffusion pipeline (diffusers, ~6 s to import) is imported where it is used, so a
    from mimaface.pipelines.pipeline import MIMAFacePipeline  # bad input to the warp engine fails at once

MOTION_FILES = (".npz", ".json")
IMAGE_OUT = (".png", ".jpg", ".jpeg")


@dataclass
class AnimateOptions:
    engine: str | None = None  # "warp" or "diffusion"; None: diffusion with a checkpoint, else warp
    sampling: SamplingOptions = field(default_factory=SamplingOptions)
    retarget: RetargetConfig = field(default_factory=RetargetConfig)
    face_index: int | None = None  # which face of the source
    driving_face_index: int | None = None
    max_gap: int = ExtractConfig.max_gap  # driving video: longest faceless run interpolated
    paste: bool = True  # False: write the crops
    side_by_side: str | None = None  # path of a source | driving | I_R | result video (.mp4; .png: one frame)
    frames_dir: str | None = None  # also write PNG frames here
    fps: float | None = None  # output rate for coefficient-file driving (default: the file's)
    from_audio: bool = False  # a driving video: its audio track (speech) drives, not its face
    audio: AudioMotionOptions = field(default_factory=AudioMotionOptions)  # motion made from audio driving
    audio_track: str | None = None  # the output's sound (default: the driving's, video or audio)
    provenance: ProvenanceOptions = field(default_factory=ProvenanceOptions)  # watermark and C2PA manifest


class Cancelled(Exception):
    """Raised by an ``on_progress`` hook to stop :func:`animate`; the output is not written."""


#: ``on_progress(done, total)``: called as generation advances (see :class:`GenerationProgress`); it may
#: raise :class:`Cancelled`.
ProgressHook = Callable[[int, int], None]


@dataclass
class AnimateResult:
    output: Path
    num_frames: int
    num_clips: int
    motion: MotionCoefficients  # what was animated: the driving retargeted onto the source (its crop's frame)


def driving_kind(path: str | os.PathLike, options: AnimateOptions) -> str:
    """How a driving file is read: "motion" (.npz / MOTION.json, parsed), "audio" (speech), "video" or "image"
    (face3d extraction)."""
    if Path(path).suffix.lower() in MOTION_FILES:
        return "motion"
    if options.from_audio or is_audio_path(path):
        return "audio"
    return "video" if is_video_path(path) else "image"


def read_driving(path: str | os.PathLike, options: AnimateOptions, progress: bool) -> MotionCoefficients:
    kind = driving_kind(path, options)
    if kind == "motion":
        return load_motion(path)
    if kind == "audio":
        audio = dataclasses.replace(options.audio, fps=options.fps or options.audio.fps)
        return audio_to_motion(path, audio, progress=progress)
    config = ExtractConfig(face_index=options.driving_face_index, max_gap=options.max_gap)
    return extract_motion(path, config, progress=progress)


def check_options(options: AnimateOptions) -> None:
    """The numbers of ``options`` (one InputError line for the first out of range; the retargeting's are
    :class:`RetargetConfig`'s own); what depends on the model is
    :func:`~mimaface.pipelines.settings.check_generation`'s."""
    options.sampling.check()
    if options.fps is not None:
        check_fps(options.fps, "fps")
    if not (is_whole(options.max_gap) and options.max_gap >= 0):
        raise InputError(f"max_gap must be a whole number of at least 0, got {options.max_gap!r}")


def _check_image_outputs(driving: MotionCoefficients, outputs: tuple) -> None:
    for path in outputs:
        if path is not None and Path(path).suffix.lower() in IMAGE_OUT and driving.num_frames != 1:
            raise InputError(f"{path}: an image output needs a single driving frame; the driving has {driving.num_frames}")


def animate(source_path: str | os.PathLike, driving_path: str | os.PathLike, output: str | os.PathLike,
            options: AnimateOptions | None = None, *, checkpoint: str | os.PathLike | None = None,
            engine: Engine | None = None, progress: bool = True,
            on_progress: ProgressHook | None = None) -> AnimateResult:
    """Run the whole job and write ``output`` (.mp4, or .png for a single driving image).

    ``engine``: a loaded engine to reuse (the app's); else ``options.engine`` is loaded (with
    ``checkpoint`` for the diffusion model). The inputs are read and checked before the model is
    loaded, so a bad input fails at once. ``progress``: a status line per phase and progress bars
    (on stderr). ``on_progress``: the same progress as the generation bar's, for a caller (the app);
    raising :class:`Cancelled` from it stops the job."""
    options = options or AnimateOptions()
    status: Callable[[str], None] = (lambda line: print(line, file=sys.stderr, flush=True)) if progress else (lambda line: None)
    output = Path(output)
    suffix = output.suffix.lower()
    # First what costs nothing: the numbers, the paths, the model's settings and a motion file's contents.
    check_options(options)
    inputs = {"source": existing_file(source_path), "driving": existing_file(driving_path)}
    if options.audio_track is not None:
        inputs["audio track"] = existing_file(options.audio_track)
    check_output_file(output, (".mp4", *IMAGE_OUT), inputs)
    if options.side_by_side:
        check_output_file(options.side_by_side, (".mp4", *IMAGE_OUT), inputs | {"output": output})
    if options.frames_dir and Path(options.frames_dir).exists() and not Path(options.frames_dir).is_dir():
        raise InputError(f"{options.frames_dir}: is a file, expected a folder for the frames")
    name = engine.name if engine is not None else choose_engine(options.engine, checkpoint)
    if engine is None and options.engine is None and name == "warp":
        status("no --checkpoint: animating with the mesh-warp engine (the bundled diffusion model knows only "
               "synthetic faces; --engine diffusion uses it)")
    kind = driving_kind(driving_path, options)
    driving = None
    if kind == "motion":
        driving = read_driving(driving_path, options, progress)
        _check_image_outputs(driving, (output, options.side_by_side))
    image_size = None
    if name == "diffusion":
        settings = engine.pipeline.settings() if engine is not None else read_settings(checkpoint)
        image_size = settings["image_size"]
        single = kind == "image" or (driving is not None and driving.num_frames == 1)
        sampling = options.sampling
        check_generation(settings, video=not single and settings["max_clip_length"] is not None,
                         num_inference_steps=sampling.num_inference_steps, clip_length=sampling.clip_length,
                         overlap=sampling.overlap, use_ica=sampling.use_ica, batch_size=sampling.batch_size,
                         num_frames=None if driving is None else driving.num_frames)

    status(f"finding the face in {source_path}")
    picture = load_image(source_path)
    if options.paste:  # the frames are the whole picture
        check_count(max(picture.shape[:2]), limits().output_side, f"pixels wide or high ({picture.shape[1]}x"
                    f"{picture.shape[0]})", where=f"{source_path} (the output takes its size; --crop writes the face "
                    "crop alone)", name="output_side")
    source = prepare_engine_source(name, picture, image_size, face_index=options.face_index, name=str(source_path))
    status(f"reading the driving motion from {driving_path}")
    if driving is None:
        driving = read_driving(driving_path, options, progress)
        _check_image_outputs(driving, (output, options.side_by_side))
    motion = retarget(source.coefficients, driving, options.retarget)
    fps = options.fps or driving.fps

    if engine is None:
        status("loading the mesh-warp engine" if name == "warp" else
               f"loading the model from {checkpoint or 'the bundled tiny model'}")
        engine = Engine.load(name, checkpoint)
    if name == "diffusion":
        engine.pipeline.set_progress_bar_config(disable=True)  # GenerationProgress has the bar
    stamp = Stamp.for_job(options.provenance, engine.pipeline, engine=name, source=source_path)
    sign = stamp.sign if stamp is not None else None  # every file, before it is renamed into place
    status(f"provenance: watermark (model {stamp.payload.model_hash}) and a C2PA manifest signed with "
           f"{stamp.signer}" if stamp is not None else "provenance off (--no-watermark): the outputs carry none")
    size = source.crop.shape[0]
    status(f"generating {motion.num_frames} frame(s) at {size} px with the {name} engine")
    work = GenerationProgress(name, motion.num_frames, on_progress, bar=progress)
    clips = engine.clips(source, motion, options.sampling, work.step, renders=options.side_by_side is not None)
    frames = work.frames(composed_frames(source, engine, clips, paste=options.paste, stamp=stamp))

    num_clips = 0
    with contextlib.ExitStack() as stack:
        stack.callback(work.close)
        writer = None
        if suffix not in IMAGE_OUT:
            audio = options.audio_track or (driving_path if is_video_path(driving_path) or is_audio_path(driving_path)
                                            else None)  # the writer skips a silent one
            writer = stack.enter_context(VideoWriter(output, fps, audio_from=audio, finish=sign))
        panels = None
        if options.side_by_side:
            if Path(options.side_by_side).suffix.lower() not in IMAGE_OUT:
                panels = stack.enter_context(VideoWriter(options.side_by_side, fps, finish=sign))
            driving_frames = _driving_frames(driving_path)
        if options.frames_dir:
            Path(options.frames_dir).mkdir(parents=True, exist_ok=True)
        for index, (frame, render, clip_index) in enumerate(frames):
            num_clips = clip_index + 1
            if writer is not None:
                writer.write(frame)
            else:
                write_image(output, frame, finish=sign)
            if options.frames_dir:
                write_image(Path(options.frames_dir) / f"frame_{index:06d}.png", frame, finish=sign)
            if options.side_by_side:
                panel = side_by_side(source.image, next(driving_frames), render, frame)
                panel = stamp.mark(panel) if stamp is not None else panel  # marked as a whole too
                if panels is not None:
                    panels.write(panel)
                else:
                    write_image(options.side_by_side, panel, finish=sign)
    status(f"wrote {output}")
    return AnimateResult(output, motion.num_frames, num_clips, motion)


class GenerationProgress:
    """One job's progress, for the command line's bar and a caller's hook alike: (done, total) in
    denoising steps over all clips (clips x steps) for the diffusion engine, reported after every
    step, and in frames for the warp (it has no steps), reported as each frame is written. Each
    report is where a hook may raise :class:`Cancelled`."""

    def __init__(self, engine: str, num_frames: int, hook: ProgressHook | None, *, bar: bool) -> None:
        self.by_steps = engine == "diffusion"
        self.hook = hook
        self.done, self.total = 0, None if self.by_steps else num_frames  # steps: known at the first one
        self.bar = tqdm(total=self.total, desc="denoising" if self.by_steps else "warping",
                        unit="step" if self.by_steps else "frame", leave=False, disable=not bar)

    def step(self, pipeline: MIMAFacePipeline, step: int, timestep, callback_kwargs: dict) -> dict:
        """The diffusion pipeline's ``callback_on_step_end``."""
        steps = pipeline.num_timesteps
        self._report(pipeline.clip_index * steps + step + 1, pipeline.num_clips * steps)
        return callback_kwargs

    def frames(self, frames: Iterator) -> Iterator:
        """``frames`` passed through, each counted once the consumer comes back for the next (it is written)."""
        for count, item in enumerate(frames, 1):
            yield item
            if not self.by_steps:
                self._report(count, self.total)
        if self.total is not None and self.done < self.total:  # batched independent clips report by group
            self._report(self.total, self.total)

    def _report(self, done: int, total: int) -> None:
        self.done, self.total = done, total
        self.bar.total = total
        self.bar.update(done - self.bar.n)
        if self.hook is not None:
            self.hook(done, total)

    def close(self) -> None:
        self.bar.close()


def composed_frames(source: SourceFace, engine: Engine, clips, *, paste: bool = True,
                    stamp: Stamp | None = None) -> Iterator[tuple[np.ndarray, np.ndarray, int]]:
    """(frame to write, its I_R (None where the clips hold none), clip index) for every frame the engine
    yields: pasted into the source picture through the engine's mask (colour-matched once) or the
    crops, and watermarked by ``stamp`` (None: --no-watermark)."""
    from mimaface.pipelines.pipeline import to_uint8

    paste_back = (PasteBack(source.image, source.box, source.crop, engine.source_silhouette(source),
                            match_colour=engine.name != "warp") if paste else None)
    for clip in clips:
        renders = clip.renders if clip.renders is not None else [None] * len(clip)
        for crop, render in zip(to_uint8(clip.frames), renders):
            frame = paste_back(crop, engine.frame_silhouette(render, crop)) if paste_back else crop
            yield (stamp.mark(frame) if stamp is not None else frame), render, clip.clip_index


def _driving_frames(path: str | os.PathLike) -> Iterator[np.ndarray]:
    """What to show as "driving" in the side-by-side: the video's frames (its last one repeated if
    the motion is longer), the image, or black."""
    frame = np.zeros((64, 64, 3), np.uint8)
    if is_video_path(path):
        for frame in iter_video_frames(path):
            yield frame
    elif Path(path).suffix.lower() not in MOTION_FILES and not is_audio_path(path):
        frame = load_image(path)
    while True:
        yield frame
