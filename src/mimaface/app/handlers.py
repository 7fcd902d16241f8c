"""What the app's controls do, as thin functions over the shared ones: the source's faces
(:class:`~mimaface.face3d.landmarks.LandmarkDetector`), the one-frame preview (``prepare_engine_source``,
``read_driving``, ``retarget`` and the mesh-warp engine: tens of milliseconds), the motion editor
(:mod:`.keyframes`) and every job through :func:`~mimaface.pipelines.animate.animate`, with each engine
loaded on its first job and kept, its progress hook feeding the page's bar and the Cancel button.
A job gives the result, the side-by-side (source | driving | I_R | result) and the motion it animated
(the driving retargeted onto the source) as MOTION.json and ``.npz``.

Gradio passes control values positionally: a job's or preview's own inputs first, then the
:class:`Controls` shared by every tab, in the order of its fields.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import tempfile
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from mimaface.app import keyframes
from mimaface.audio import AudioMotionOptions
from mimaface.errors import MimafaceError
from mimaface.face3d.coefficients import MotionCoefficients, motion_from_json, motion_json_text, save_motion_json
from mimaface.face3d.landmarks import LandmarkDetector
from mimaface.face3d.render import overlay
from mimaface.media import is_video_path, load_image
from mimaface.pipelines.animate import AnimateOptions, Cancelled, animate, composed_frames, read_driving
from mimaface.pipelines.engines import Engine, choose_engine, prepare_engine_source
from mimaface.pipelines.options import SamplingOptions
from mimaface.pipelines.retarget import RetargetConfig, retarget
from mimaface.pipelines.source import SourceFace
from mimaface.provenance import ProvenanceOptions, model_sha256
from mimaface.provenance.watermark import Payload, Watermarker

LABEL_COLOUR = (255, 210, 0)  # the face picker's boxes and numbers
MAX_FACES = 8  # faces listed in the picker (detect_face's own search depth)
OVERLAY_ALPHA = 0.6  # I_R over the source in the motion editor (as `mimaface render --overlay`)
PROGRESS = gr.Progress()  # the default that makes Gradio pass a job its progress tracker (one per call)
BUNDLED_MODEL = "the bundled tiny model"  # the diffusion engine without --checkpoint


@dataclass
class Controls:
    """The settings every tab shares, as the page holds them (field order = the order of the inputs)."""

    source: str | None  # the portrait's file
    face: int | None  # its face to animate, 0 = largest
    mode: str
    pose_scale: float
    expression_scale: float
    gaze_scale: float
    keep_pose: bool
    keep_gaze: bool
    engine: str  # "warp" or "diffusion"
    steps: int
    guidance: float
    seed: int
    scheduler: str  # one of SCHEDULER_NAMES
    ica: bool

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    def retarget(self) -> RetargetConfig:
        return RetargetConfig(mode=self.mode, pose_multiplier=self.pose_scale,
                              expression_multiplier=self.expression_scale, gaze_multiplier=self.gaze_scale,
                              keep_pose=self.keep_pose, keep_gaze=self.keep_gaze)

    def options(self) -> AnimateOptions:
        sampling = SamplingOptions(num_inference_steps=int(self.steps), guidance_scale=float(self.guidance),
                                   seed=int(self.seed), scheduler=self.scheduler, use_ica=self.ica)
        return AnimateOptions(engine=self.engine, sampling=sampling, retarget=self.retarget(), face_index=self.face)


def user_errors(handler: Callable) -> Callable:
    """What a user can fix (an InputError, a face not found) shows as Gradio's error message, one line."""
    @functools.wraps(handler)
    def wrapped(*args, **kwargs):
        try:
            return handler(*args, **kwargs)
        except MimafaceError as exc:
            raise gr.Error(str(exc), print_exception=False) from None
    return wrapped


class Jobs:
    """The running job of each browser session, so its Cancel button reaches it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: dict[str, threading.Event] = {}

    def start(self, session: str) -> threading.Event:
        with self._lock:
            self._running[session] = event = threading.Event()
        return event

    def cancel(self, session: str) -> bool:
        with self._lock:
            event = self._running.get(session)
        if event is not None:
            event.set()
        return event is not None

    def finish(self, session: str, event: threading.Event) -> None:
        with self._lock:
            if self._running.get(session) is event:
                del self._running[session]


@functools.lru_cache(maxsize=4)
def _preview_source(path: str, stamp: int, face_index: int) -> SourceFace:
    """The warp's crop of a portrait (``stamp``: its modification time, so a changed file is read again)."""
    return prepare_engine_source("warp", load_image(path), None, face_index=face_index, name=Path(path).name)


@functools.lru_cache(maxsize=4)
def _driving_motion(path: str, stamp: int) -> MotionCoefficients:
    return read_driving(path, AnimateOptions(), progress=False)


def _stamp(path: str) -> int:
    return os.stat(path).st_mtime_ns


class Handlers:
    """The app's state (its engines, each loaded once; a warp engine of its own for previews; where
    results go) and its event handlers."""

    def __init__(self, engine: Engine, output_dir: str | os.PathLike,
                 checkpoint: str | os.PathLike | None = None) -> None:
        self.default_engine = engine.name
        self.checkpoint = checkpoint  # the diffusion engine's model (None: the bundled tiny one)
        self._engines = {engine.name: engine}
        self._engines_lock = threading.Lock()
        # Previews run beside jobs: a warp pipeline of their own (it caches its source rig).
        self.preview_engine = Engine.load("warp")
        self._preview_lock = threading.Lock()
        # Previews are generated pictures too: they carry the jobs' invisible watermark (no manifest: they
        # are shown, not written).
        self._preview_mark = Watermarker(Payload.for_model(model_sha256(self.preview_engine.pipeline)),
                                         ProvenanceOptions().psnr_db)
        self.output_dir = Path(output_dir)
        self.jobs = Jobs()
        self.slider_groups = keyframes.slider_groups()
        self.sliders = [slider for group in self.slider_groups.values() for slider in group]

    @property
    def diffusion_model(self) -> str:
        """What the diffusion engine loads, in words."""
        return f"the model in {self.checkpoint}" if self.checkpoint is not None else BUNDLED_MODEL

    def engine(self, name: str) -> Engine:
        """The engine ``name``, loaded on its first use and kept."""
        with self._engines_lock:
            if name not in self._engines:
                checkpoint = self.checkpoint if name == "diffusion" else None
                self._engines[name] = Engine.load(choose_engine(name, checkpoint), checkpoint)
            return self._engines[name]

    def engine_loaded(self, name: str) -> bool:
        return name in self._engines

    # -- the source ------------------------------------------------------------------------------
    @user_errors
    def faces(self, source: str | None):
        """(the photo with its faces boxed and numbered, the face picker, a status line)."""
        if source is None:
            return None, gr.update(choices=[], value=None), ""
        image = load_image(source)
        with LandmarkDetector(max_faces=MAX_FACES) as detector:
            found = detector.detect(image)
        if not found:
            return image, gr.update(choices=[], value=None), (
                "**No face found** in this photo. Use a photo with a roughly frontal, unobstructed face.")
        picture = Image.fromarray(image)
        draw = ImageDraw.Draw(picture)
        line = max(2, round(max(image.shape[:2]) / 200))
        font = ImageFont.load_default(size=max(14, round(max(image.shape[:2]) / 25)))
        choices = []
        for index, face in enumerate(found):
            x0, y0, x1, y1 = face.bbox
            draw.rectangle((x0, y0, x1, y1), outline=LABEL_COLOUR, width=line)
            # The number on a tag above the box's corner (inside it at the top of the picture).
            left, top, right, bottom = draw.textbbox((0, 0), str(index), font=font)
            width, height = right - left + 2 * line, bottom - top + 2 * line
            ty = y0 - height if y0 >= height else y0
            draw.rectangle((x0, ty, x0 + width, ty + height), fill=LABEL_COLOUR)
            draw.text((x0 + line - left, ty + line - top), str(index), fill=(0, 0, 0), font=font)
            choices.append((f"{index}: {x1 - x0:.0f} x {y1 - y0:.0f} px{' (largest)' if index == 0 else ''}", index))
        status = f"**{len(found)} face{'s' if len(found) > 1 else ''} found.**"
        return np.asarray(picture), gr.update(choices=choices, value=0), status

    # -- previews --------------------------------------------------------------------------------
    def _preview(self, driving: MotionCoefficients, frame: int,
                 controls: Controls) -> tuple[np.ndarray, np.ndarray] | None:
        """One frame of ``driving`` on the source through the mesh warp: (the result, watermarked, and its
        I_R over the source), both in the source's crop (head and shoulders). None without a source face."""
        if controls.source is None or controls.face is None:
            return None
        source = _preview_source(controls.source, _stamp(controls.source), int(controls.face))
        frame = min(max(int(frame), 0), driving.num_frames - 1)
        motion = retarget(source.coefficients, driving, controls.retarget()).select([frame])
        with self._preview_lock:
            engine = self.preview_engine
            picture, render, _ = next(composed_frames(source, engine,
                                                      engine.clips(source, motion, SamplingOptions()), paste=False))
        return self._preview_mark.mark(picture), overlay(source.crop, render, render > 0, OVERLAY_ALPHA)

    @user_errors
    def driving_loaded(self, driving: str | None):
        """(the frame slider, a status line) for a new driving video or image."""
        if driving is None:
            return gr.update(visible=False, value=0), ""
        motion = _driving_motion(driving, _stamp(driving))
        last = motion.num_frames - 1
        return (gr.update(visible=last > 0, maximum=max(last, 1), value=0),
                f"{motion.num_frames} frame(s) at {motion.fps:g} fps")

    @user_errors
    def preview_driving(self, driving: str | None, frame: int, *controls) -> np.ndarray | None:
        if driving is None:
            return None
        shown = self._preview(_driving_motion(driving, _stamp(driving)), frame, Controls(*controls))
        return None if shown is None else shown[0]

    # -- the motion editor -----------------------------------------------------------------------
    def motion_checked(self, text: str):
        """(the frame slider, a status line, the keyframe table) for the editor's text; mistakes while
        typing are shown, not raised."""
        try:
            spec = keyframes.parse(text)
            motion = motion_from_json(spec)
        except MimafaceError as exc:
            return gr.update(), f"**Not a valid MOTION.json:** {exc}", gr.update()
        return (gr.update(maximum=max(motion.num_frames - 1, 1), interactive=motion.num_frames > 1),
                f"{motion.num_frames} frame(s) at {motion.fps:g} fps", keyframes.listed(spec))

    def slider_values(self, text: str, frame: int) -> list:
        """Every slider's value at this frame (as animated); unchanged while the text is invalid."""
        try:
            motion = motion_from_json(keyframes.parse(text))
        except MimafaceError:
            return [gr.update()] * len(self.sliders)
        return [slider.shown(keyframes.value_at(motion, frame, slider.name)) for slider in self.sliders]

    def preview_motion(self, text: str, frame: int, *values_and_controls):
        """(I_R over the source, the warp's result) for this frame with the sliders' values, keyed or
        not; nothing new while the text is invalid."""
        values, controls = values_and_controls[:len(self.sliders)], values_and_controls[len(self.sliders):]
        try:
            motion = motion_from_json(keyframes.parse(text))
            frame = min(max(int(frame), 0), motion.num_frames - 1)
            edited = keyframes.with_values(motion, frame, {s.name: float(v) for s, v in zip(self.sliders, values)})
            shown = self._preview(edited, frame, Controls(*controls))
        except MimafaceError:
            return gr.update(), gr.update()
        return (None, None) if shown is None else (shown[1], shown[0])

    @user_errors
    def set_keys(self, text: str, frame: int, *values) -> str:
        """The sliders moved away from their values at this frame, keyed there."""
        spec = keyframes.parse(text)
        changed = keyframes.moved(motion_from_json(spec), int(frame), self.sliders, [float(v) for v in values])
        if not changed:
            gr.Info("No slider was moved at this frame: nothing to key.")
            return gr.update()
        return motion_json_text(keyframes.set_keys(spec, int(frame), changed))

    @user_errors
    def remove_keys(self, text: str, frame: int) -> str:
        return motion_json_text(keyframes.remove_keys(keyframes.parse(text), int(frame)))

    @user_errors
    def pick_keyframe(self, text: str, selected: gr.SelectData):
        """The frame of the keyframe table's row that was clicked."""
        return keyframes.listed(keyframes.parse(text))[selected.index[0]][0]

    @user_errors
    def open_motion(self, file: str | None):
        if file is None:
            return gr.update()
        spec = keyframes.parse(Path(file).read_text(encoding="utf-8"))
        motion_from_json(spec)
        return motion_json_text(spec)

    @user_errors
    def export_motion(self, text: str):
        """The editor's motion as MOTION.json and as a coefficient .npz, to download."""
        spec = keyframes.parse(text)
        motion = motion_from_json(spec)
        folder = Path(tempfile.mkdtemp(dir=self.output_dir))
        (folder / "MOTION.json").write_text(motion_json_text(spec), encoding="utf-8")
        motion.save(folder / "motion.npz")
        return gr.update(value=[str(folder / "MOTION.json"), str(folder / "motion.npz")], visible=True)

    # -- jobs --------------------------------------------------------------------------------------
    def _animate(self, driving: str, suffix: str, controls: Controls, request: gr.Request, progress: gr.Progress,
                 options: AnimateOptions | None = None) -> tuple:
        """Run ``animate`` with the chosen engine into a new folder: (the result, the side-by-side, the
        motion files), or nothing when cancelled."""
        if controls.source is None:
            raise gr.Error("Upload a source portrait first.", print_exception=False)
        if controls.face is None:
            raise gr.Error("No face to animate in the source portrait.", print_exception=False)
        folder = Path(tempfile.mkdtemp(dir=self.output_dir))
        output, panels = folder / f"animated{suffix}", folder / f"side_by_side{suffix}"
        motion_files = [folder / "MOTION.json", folder / "motion.npz"]
        options = dataclasses.replace(options or controls.options(), side_by_side=str(panels))
        desc, unit = ("denoising", "steps") if controls.engine == "diffusion" else ("warping", "frames")
        cancel = self.jobs.start(request.session_hash)

        def on_progress(done: int, total: int) -> None:
            progress((done, total), desc=desc, unit=unit)
            if cancel.is_set():
                raise Cancelled

        try:
            if not self.engine_loaded(controls.engine):
                progress(0, desc=f"loading the {controls.engine} engine")
            engine = self.engine(controls.engine)
            progress(0, desc="finding the face and reading the motion")
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", UserWarning)
                result = animate(controls.source, driving, output, options, engine=engine, progress=False,
                                 on_progress=on_progress)
            for warning in caught:  # e.g. no speech found in the audio
                gr.Warning(str(warning.message))
        except Cancelled:
            gr.Info("Cancelled: nothing was written.")
            return None, None, None
        finally:
            self.jobs.finish(request.session_hash, cancel)
        save_motion_json(result.motion, motion_files[0])
        result.motion.save(motion_files[1])
        return str(output), str(panels), [str(path) for path in motion_files]

    @user_errors
    def animate_driving(self, driving: str | None, request: gr.Request, progress: gr.Progress = PROGRESS,
                        *controls) -> tuple:
        """A driving video (-> MP4) or image (-> PNG)."""
        if driving is None:
            raise gr.Error("Upload a driving video or image first.", print_exception=False)
        return self._animate(driving, ".mp4" if is_video_path(driving) else ".png", Controls(*controls), request,
                             progress)

    @user_errors
    def animate_motion(self, text: str, request: gr.Request, progress: gr.Progress = PROGRESS, *controls) -> tuple:
        """The editor's MOTION.json (saved with the result) -> MP4."""
        spec = keyframes.parse(text)
        motion_from_json(spec)
        path = Path(tempfile.mkdtemp(dir=self.output_dir)) / "MOTION.json"
        path.write_text(motion_json_text(spec), encoding="utf-8")
        return self._animate(str(path), ".mp4", Controls(*controls), request, progress)

    @user_errors
    def animate_audio(self, audio: str | None, transcript: str, mouth_scale: float, blink: bool, still: bool,
                      request: gr.Request, progress: gr.Progress = PROGRESS, *controls) -> tuple:
        """Speech (a file or a recording) -> MP4 with that sound."""
        if audio is None:
            raise gr.Error("Upload or record some speech first.", print_exception=False)
        controls = Controls(*controls)
        options = controls.options()
        # As on the command line: the scales shape the motion made from the audio, so retargeting stays at 1.
        options.retarget = dataclasses.replace(options.retarget, pose_multiplier=1.0, expression_multiplier=1.0,
                                               gaze_multiplier=1.0)
        options.audio = AudioMotionOptions(transcript=transcript.strip() or None, mouth_scale=mouth_scale,
                                           pose_scale=controls.pose_scale, expression_scale=controls.expression_scale,
                                           gaze_scale=controls.gaze_scale, blink=blink, still=still)
        return self._animate(audio, ".mp4", controls, request, progress, options)

    def cancel(self, request: gr.Request) -> None:
        if not self.jobs.cancel(request.session_hash):
            gr.Info("Nothing is running.")
