"""``MIMAFacePipeline``: a source face crop + per-frame motion -> any number of generated frames.

A ``diffusers.DiffusionPipeline`` with three components: ``model`` (:class:`MIMAFaceModel`: CLIP
+ MIA, the render-conditioned UNet, W_cond, motion modules), ``vae`` and ``scheduler``. Its
config holds what inference must know of training: the crop size, the clip length F and the ICA
overlap k. One layout on disk, written by ``save_pretrained`` and read by ``from_pretrained``::

    DIR/model_index.json   the pipeline class, its components and settings (image_size, clip_length, overlap)
    DIR/model/             MIMAFaceModel.save_pretrained (mimaface_config.json, unet/, appearance_encoder/, ...)
    DIR/vae/               diffusers AutoencoderKL
    DIR/scheduler/         the sampler's config (DDIM; the noise schedule training used)

Long videos are generated as clips of F frames, every clip starting from the same initial noise.
With ICA (the default) clip c > 0 re-uses the last k denoised latents of clip c - 1 through W_cond
(paper Sec. 3.4), so each new clip adds F - k frames; without it (``use_ica=False``, the ablation)
clips are independent. Sharing the initial noise is what the ablation relies on; with ICA it also
helps: on held-out identities, fresh noise per clip roughly doubled the change at clip boundaries.
The source's CLIP tokens are computed once; only the motion modulation differs from frame to frame.

:meth:`MIMAFacePipeline.generate_clips` yields each clip's new frames as soon as they are final, so
memory does not grow with the video: I_R is rendered, encoded, denoised and decoded clip by clip.
``__call__`` collects that stream.

This module works on aligned square crops at the model's resolution and on coefficients in that
crop's frame (what the data sets store). Finding and aligning the face in an arbitrary photo,
retargeting a driving video's motion and pasting the result back are built on top of it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import PIL.Image
import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DiffusionPipeline,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    SchedulerMixin,
)
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.utils import BaseOutput
from diffusers.utils import logging as diffusers_logging
from diffusers.utils.torch_utils import randn_tensor

from mimaface.errors import InputError, ModelLoadError
from mimaface.face3d.coefficients import MotionCoefficients
from mimaface.face3d.model import FaceModel
from mimaface.face3d.pipeline import render_motion
from mimaface.models.ica import ica_condition_from_previous, max_conditioning_frames
from mimaface.models.mimaface_model import MIMAFaceModel
from mimaface.pipelines.options import SCHEDULER_NAMES, SamplingOptions, check_sampling
from mimaface.pipelines.settings import SAVED_HOW, check_generation, check_settings, pipeline_folder, read_settings

#: The samplers by name, configured from the pipeline's noise schedule:
#: ``pipeline.scheduler = SCHEDULERS[name].from_config(pipeline.scheduler.config)``.
SCHEDULERS: dict[str, type[SchedulerMixin]] = dict(zip(SCHEDULER_NAMES, (DDIMScheduler, EulerDiscreteScheduler,
                                                                         DPMSolverMultistepScheduler)))

OUTPUT_TYPES = ("np", "pil", "pt", "latent")


@dataclass
class GeneratedClip:
    """New frames of one clip (or one batch of independent frames), final when yielded."""

    start: int  # index of the first of these frames in the video
    frames: np.ndarray | torch.Tensor | list[PIL.Image.Image]  # as ``output_type`` asks (latents for "latent")
    renders: np.ndarray | None  # (n, S, S) uint8, the I_R of these frames (None: the warp, not asked for them)
    clip_index: int

    def __len__(self) -> int:
        return len(self.renders) if self.renders is not None else len(self.frames)


@dataclass
class MIMAFacePipelineOutput(BaseOutput):
    """``frames``: (N, S, S, 3) float in [0, 1] ("np"), (N, 3, S, S) ("pt"), PIL images ("pil") or latents
    ("latent"); ``renders``: (N, S, S) uint8 I_R; ``clip_starts``: the first new frame of each clip."""

    frames: np.ndarray | torch.Tensor | list[PIL.Image.Image]
    renders: np.ndarray
    clip_starts: list[int]


def clip_windows(num_frames: int, clip_length: int, overlap: int) -> list[tuple[int, int]]:
    """(start, first new frame) of each clip covering ``num_frames`` frames.

    Clip c spans frames ``start .. start + clip_length - 1`` (frames past the end repeat the last
    frame's motion); its first ``overlap`` frames are the previous clip's last ones.
    """
    if clip_length < 1:
        raise InputError(f"clip_length must be at least 1, got {clip_length}")
    if not 0 <= overlap < clip_length:
        raise InputError(f"the ICA overlap must be at least 0 and below the clip length {clip_length}, got {overlap}")
    windows = [(0, 0)]
    while windows[-1][0] + clip_length < num_frames:
        start = windows[-1][0] + clip_length - overlap
        windows.append((start, start + overlap))
    return windows


def join_clips(clips: list[GeneratedClip], output_type: str) -> tuple:
    """The frames (as ``output_type`` gives them) and I_R of streamed clips, joined in order."""
    renders = np.concatenate([clip.renders for clip in clips])
    if output_type == "pil":
        return [image for clip in clips for image in clip.frames], renders
    if output_type == "np":
        return np.concatenate([clip.frames for clip in clips]), renders
    return torch.cat([clip.frames for clip in clips]), renders


@dataclass
class GeneratedVideo:
    """A whole generated video in uint8, collected from a clip stream (what evaluation keeps and the demo measures)."""

    frames: np.ndarray  # (N, S, S, 3) uint8
    renders: np.ndarray  # (N, S, S) uint8 I_R
    clip_starts: list[int]

    @classmethod
    def from_clips(cls, clips: Iterable[GeneratedClip]) -> GeneratedVideo:
        """From ``generate_clips(..., output_type="np")`` of either engine."""
        clips = list(clips)
        frames, renders = join_clips(clips, "np")
        return cls(to_uint8(frames), renders, [clip.start for clip in clips])


def to_uint8(frames: np.ndarray) -> np.ndarray:
    """Frames in [0, 1] (the "np" output) -> uint8, rounded half to even (as ``np.round``).

    OpenCV's saturating scale does the clip above 1, the scaling, the rounding and the cast in one
    pass: 1.0 ms a 512 px frame, where numpy's four passes took 3.4 (a tenth of the warp engine's)."""
    import cv2

    frames = np.asarray(frames)
    if frames.size == 0:
        return np.zeros(frames.shape, np.uint8)
    positive = np.maximum(frames, 0.0)  # (the "Abs" of convertScaleAbs would fold negatives up)
    rows = positive.reshape(-1, frames.shape[-1]) if frames.ndim > 1 else positive[None]
    return cv2.convertScaleAbs(rows, alpha=255.0).reshape(frames.shape)


class MIMAFacePipeline(DiffusionPipeline):
    """The trained model, its VAE and noise schedule, and the face model that renders I_R.

    ``image_size``: the crop size the model was trained at; ``clip_length``: F of stage 2;
    ``overlap``: the ICA frames k carried from clip to clip (None: the largest number of
    conditioning frames training drew, at least 1).
    """

    model_cpu_offload_seq = "model->vae"
    _callback_tensor_inputs = ["latents"]

    def __init__(self, model: MIMAFaceModel, vae: AutoencoderKL, scheduler: SchedulerMixin, image_size: int = 64,
                 clip_length: int = 8, overlap: int | None = None) -> None:
        super().__init__()
        self.register_modules(model=model, vae=vae, scheduler=scheduler)
        if overlap is None:
            overlap = max(1, max_conditioning_frames(clip_length, model.config.ica))
        check_settings(image_size, clip_length, overlap, "MIMAFacePipeline", model.config.vae_scale_factor)
        self.register_to_config(image_size=int(image_size), clip_length=int(clip_length), overlap=int(overlap))
        self.face_model = FaceModel.load()
        self._interrupt = False
        self._clip_index = 0
        self._num_clips = 0

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike | None = None, **kwargs) -> MIMAFacePipeline:
        """Load a local folder in the layout above (None: the bundled tiny model). Keyword arguments
        are diffusers' (``torch_dtype``, component overrides such as ``scheduler=...``). Raises
        ModelLoadError, one line, for a folder that is missing or not a MIMAFace pipeline."""
        folder = pipeline_folder(pretrained_model_name_or_path)
        for name in ("model", "vae", "scheduler"):
            if name not in kwargs and not (folder / name).is_dir():
                raise ModelLoadError(f"'{folder}' has no {name}/ folder; expected {SAVED_HOW}")
        kwargs.setdefault("local_files_only", True)  # weights are never downloaded
        # diffusers' "Loading pipeline components" bar: a fraction of a second of noise for our users.
        bars_were_on = diffusers_logging.is_progress_bar_enabled()
        diffusers_logging.disable_progress_bar()
        try:
            return super().from_pretrained(folder, **kwargs)
        finally:
            if bars_were_on:
                diffusers_logging.enable_progress_bar()

    @classmethod
    def read_settings(cls, pretrained_model_name_or_path: str | os.PathLike | None = None) -> dict:
        """:func:`~mimaface.pipelines.settings.read_settings`: a saved folder's settings, without loading
        any weights (or torch)."""
        return read_settings(pretrained_model_name_or_path)

    def settings(self) -> dict:
        """:meth:`read_settings` of this loaded pipeline."""
        return {**self.config, "max_clip_length": self.model.denoiser.max_frames,
                "num_train_timesteps": self.scheduler.config.get("num_train_timesteps")}

    # -- settings -----------------------------------------------------------------------------
    @property
    def image_size(self) -> int:
        """The crop size the model was trained at."""
        return int(self.config.image_size)

    @property
    def interrupt(self) -> bool:
        """Set ``pipeline._interrupt = True`` (e.g. in a step callback) to stop after the current step."""
        return self._interrupt

    @property
    def clip_index(self) -> int:
        """The clip being denoised (for callbacks: progress is clips x steps)."""
        return self._clip_index

    @property
    def num_clips(self) -> int:
        return self._num_clips

    @property
    def num_timesteps(self) -> int:
        return len(self.scheduler.timesteps)

    # -- pieces -------------------------------------------------------------------------------
    def render(self, motion: MotionCoefficients) -> np.ndarray:
        """I_R (N, S, S) uint8 of ``motion`` (its identity, its crop frame) at the model's size."""
        size = self.image_size
        return np.stack([image[..., 0] for image, _ in render_motion(motion, (size, size), model=self.face_model,
                                                                      progress=False)])

    def _vae_dtype(self) -> torch.dtype:
        """diffusers' convention: an fp16 VAE whose config says ``force_upcast`` runs in fp32."""
        if self.vae.dtype == torch.float16 and self.vae.config.force_upcast:
            return torch.float32
        return self.vae.dtype

    def encode_renders(self, renders: np.ndarray, chunk_size: int) -> torch.Tensor:
        """I_R (N, S, S) uint8 -> scaled latents in the model's dtype."""
        x = torch.from_numpy(renders).float().div(127.5).sub(1).unsqueeze(1).expand(-1, 3, -1, -1)
        vae, dtype = self.vae, self._vae_dtype()
        latents = [vae.encode(chunk.to(self._execution_device, dtype)).latent_dist.mean for chunk in x.split(chunk_size)]
        return (torch.cat(latents) * vae.config.scaling_factor).to(self.model.dtype)

    def decode_latents(self, latents: torch.Tensor, chunk_size: int) -> torch.Tensor:
        """Scaled latents (N, C, h, w) -> images (N, 3, S, S) float32 in [0, 1], on the CPU."""
        vae, dtype = self.vae, self._vae_dtype()
        images = [vae.decode(chunk.to(dtype) / vae.config.scaling_factor).sample.float().cpu()
                  for chunk in latents.split(chunk_size)]
        return (torch.cat(images) / 2 + 0.5).clamp(0, 1)

    # -- generation ---------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(self, source_image: np.ndarray, motion: MotionCoefficients, *,
                 num_inference_steps: int = SamplingOptions.num_inference_steps,
                 guidance_scale: float = SamplingOptions.guidance_scale,
                 generator: torch.Generator | list[torch.Generator] | None = None, latents: torch.Tensor | None = None,
                 clip_length: int | None = None, overlap: int | None = None, use_ica: bool = SamplingOptions.use_ica,
                 batch_size: int = SamplingOptions.batch_size, decode_chunk_size: int = 16, output_type: str = "np",
                 return_dict: bool = True,
                 callback_on_step_end: Callable | PipelineCallback | MultiPipelineCallbacks | None = None,
                 callback_on_step_end_tensor_inputs: list[str] | None = None) -> MIMAFacePipelineOutput | tuple:
        """Animate ``source_image`` (S, S, 3) uint8, an aligned crop at the model's size, with ``motion``
        (coefficients in that crop's frame, with the identity to render I_R with).

        One frame of motion, or a model without motion modules, is the image mode: frames are
        independent (``batch_size`` of them per forward). Otherwise clips of ``clip_length`` frames,
        joined through ICA over ``overlap`` frames (``use_ica=False``: independent clips, ``batch_size``
        per forward). ``generator``: one, or a list with one per frame in image mode; ``latents``:
        the initial noise ((F, C, h, w) shared by every clip, or (N, C, h, w) in image mode).
        ``callback_on_step_end(pipeline, step, timestep, callback_kwargs)`` runs after every
        denoising step of every clip (``pipeline.clip_index`` / ``num_clips`` say which clip); it may
        return ``{"latents": ...}`` to replace them. Returns :class:`MIMAFacePipelineOutput` (or a tuple).
        """
        clips = list(self.generate_clips(
            source_image, motion, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
            generator=generator, latents=latents, clip_length=clip_length, overlap=overlap, use_ica=use_ica,
            batch_size=batch_size, decode_chunk_size=decode_chunk_size, output_type=output_type,
            callback_on_step_end=callback_on_step_end,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs))
        frames, renders = join_clips(clips, output_type)
        starts = list(range(len(renders))) if self._image_mode(motion) else [clip.start for clip in clips]
        if not return_dict:
            return frames, renders, starts
        return MIMAFacePipelineOutput(frames=frames, renders=renders, clip_starts=starts)

    def _image_mode(self, motion: MotionCoefficients) -> bool:
        return motion.num_frames == 1 or self.model.motion_adapter is None

    @torch.no_grad()
    def generate_clips(self, source_image: np.ndarray, motion: MotionCoefficients, *,
                       num_inference_steps: int = SamplingOptions.num_inference_steps,
                       guidance_scale: float = SamplingOptions.guidance_scale,
                       generator: torch.Generator | list[torch.Generator] | None = None,
                       latents: torch.Tensor | None = None, clip_length: int | None = None, overlap: int | None = None,
                       use_ica: bool = SamplingOptions.use_ica, batch_size: int = SamplingOptions.batch_size,
                       decode_chunk_size: int = 16, output_type: str = "np",
                       callback_on_step_end: Callable | PipelineCallback | MultiPipelineCallbacks | None = None,
                       callback_on_step_end_tensor_inputs: list[str] | None = None) -> Iterator[GeneratedClip]:
        """The streaming form of ``__call__`` (same arguments): yields each clip's new frames, in order,
        as soon as they are final. Memory is bounded by one clip, whatever the number of frames."""
        size = self.image_size
        if not isinstance(source_image, np.ndarray) or source_image.shape != (size, size, 3) or source_image.dtype != np.uint8:
            got = f"{source_image.shape} {source_image.dtype}" if isinstance(source_image, np.ndarray) else type(source_image).__name__
            raise InputError(f"the source crop must be a ({size}, {size}, 3) uint8 array for this model, got {got}")
        if not isinstance(motion, MotionCoefficients):
            raise InputError(f"motion must be MotionCoefficients, got {type(motion).__name__}")
        motion.for_model(self.face_model)
        n = motion.num_frames
        check_sampling({"num_inference_steps": num_inference_steps, "guidance_scale": guidance_scale,
                        "clip_length": clip_length, "overlap": overlap, "use_ica": use_ica, "batch_size": batch_size,
                        "decode_chunk_size": decode_chunk_size})
        f, k = check_generation(self.settings(), video=not self._image_mode(motion),
                                num_inference_steps=num_inference_steps, clip_length=clip_length, overlap=overlap,
                                use_ica=use_ica, batch_size=batch_size, num_frames=n)
        if generator is not None and not all(isinstance(g, torch.Generator) for g in
                                             (generator if isinstance(generator, list) else [generator])):
            raise InputError(f"generator must be a torch.Generator or a list of them, got {generator!r}")
        if latents is not None and not (isinstance(latents, torch.Tensor) and torch.isfinite(latents).all()):
            raise InputError("latents must be a tensor of finite numbers")
        if output_type not in OUTPUT_TYPES:
            raise InputError(f"output_type must be one of {', '.join(OUTPUT_TYPES)}, got {output_type!r}")
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        tensor_inputs = list(callback_on_step_end_tensor_inputs or ["latents"])
        if not set(tensor_inputs) <= set(self._callback_tensor_inputs):
            raise InputError(f"callback_on_step_end_tensor_inputs may name {self._callback_tensor_inputs}, got {tensor_inputs}")

        device, dtype = self._execution_device, self.model.dtype
        self._interrupt = False
        self._guidance_scale = guidance_scale
        step = dict(num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, generator=generator,
                    callback=callback_on_step_end, tensor_inputs=tensor_inputs)
        source = torch.from_numpy(np.array(source_image)).permute(2, 0, 1).float().div(255).unsqueeze(0)
        e_tex, e_id = self.model.encode_source(source.to(device, dtype))  # once for the whole video
        coefficients = {key: torch.as_tensor(getattr(motion, key), dtype=dtype) for key in ("pose", "expression", "gaze")}
        channels, h = self.model.config.latent_channels, size // self.model.config.vae_scale_factor

        def conditions(index: torch.Tensor) -> torch.Tensor:
            """(B, L, D) for frame indices (B,), (B, F, L, D) for (B, F)."""
            b = index.shape[0]
            return self.model.condition_from_tokens(e_tex.expand(b, -1, -1), e_id.expand(b, -1),
                                                    *(c[index].to(device) for c in coefficients.values()))

        def finish(new: torch.Tensor, renders: np.ndarray, start: int, clip_index: int) -> GeneratedClip:
            return GeneratedClip(start, self._postprocess(new, output_type, decode_chunk_size), renders, clip_index)

        if self._image_mode(motion):  # frames are independent
            noise = self._image_noise(n, (channels, h, h), generator, latents, dtype)
            chunks = torch.arange(n).split(batch_size)
            self._num_clips = len(chunks)
            try:
                with self.progress_bar(total=len(chunks) * num_inference_steps) as bar:
                    for c, chunk in enumerate(chunks):
                        self._clip_index = c
                        renders = self.render(motion.select(chunk.numpy()))
                        like = self.encode_renders(renders, decode_chunk_size)
                        out = self._denoise(like, conditions(chunk), noise(chunk).to(device), bar=bar, **step)
                        if out is None:
                            return
                        yield finish(out, renders, int(chunk[0]), c)
            finally:
                self.maybe_free_model_hooks()
            return

        windows = clip_windows(n, f, k)
        self._num_clips = len(windows)
        index = torch.stack([torch.clamp(torch.arange(start, start + f), max=n - 1) for start, _ in windows])
        shared = self._video_noise(f, (channels, h, h), generator, latents, dtype).to(device)
        # With ICA the clips are sequential (each needs the previous one's last k latents); without it
        # they are independent, batch_size at a time.
        groups = torch.arange(len(windows)).split(1 if use_ica else batch_size)
        previous = None
        try:
            with self.progress_bar(total=len(windows) * num_inference_steps) as bar:
                for group in groups:
                    self._clip_index = int(group[0])
                    frames = index[group]  # (B, F)
                    renders = self.render(motion.select(frames.flatten().numpy())).reshape(*frames.shape, size, size)
                    like = self.encode_renders(renders.reshape(-1, size, size), decode_chunk_size).unflatten(0, frames.shape)
                    ica = ica_condition_from_previous(previous, f, like) if use_ica else None
                    out = self._denoise(like, conditions(frames), shared.expand_as(like).clone(), ica=ica, bar=bar, **step)
                    if out is None:
                        return
                    for row, c in enumerate(group.tolist()):
                        start, first_new = windows[c]
                        new = slice(first_new - start, min(start + f, n) - start)
                        yield finish(out[row, new], renders[row, new], first_new, c)
                    previous = out[:, f - k:] if k else None
        finally:
            self.maybe_free_model_hooks()

    def _image_noise(self, n: int, shape: tuple[int, ...], generator, latents: torch.Tensor | None,
                     dtype: torch.dtype) -> Callable[[torch.Tensor], torch.Tensor]:
        """Initial noise of the frames ``index`` picks; drawn frame by frame, so it does not depend on batch_size."""
        if latents is not None:
            if tuple(latents.shape) != (n, *shape):
                raise InputError(f"latents must be {(n, *shape)} in image mode, got {tuple(latents.shape)}")
            return lambda index: latents[index].to(dtype)
        if isinstance(generator, list) and len(generator) != n:
            raise InputError(f"one generator per frame in image mode: {n} needed, got {len(generator)}")
        generators = generator if isinstance(generator, list) else [generator] * n
        return lambda index: torch.cat([randn_tensor((1, *shape), generator=generators[i], dtype=dtype)
                                        for i in index.tolist()])

    @staticmethod
    def _video_noise(f: int, shape: tuple[int, ...], generator, latents: torch.Tensor | None,
                     dtype: torch.dtype) -> torch.Tensor:
        """The initial noise (1, F, C, h, w) every clip starts from."""
        if latents is not None:
            latents = latents if latents.ndim == 5 else latents.unsqueeze(0)
            if tuple(latents.shape) != (1, f, *shape):
                raise InputError(f"latents must be {(f, *shape)} (shared by every clip), got {tuple(latents.shape)}")
            return latents.to(dtype)
        if isinstance(generator, list):
            if len(generator) != 1:
                raise InputError(f"clips share one initial noise: pass one generator, got a list of {len(generator)}")
            generator = generator[0]
        return randn_tensor((1, f, *shape), generator=generator, dtype=dtype)

    def _denoise(self, render_latents: torch.Tensor, condition: torch.Tensor, latents: torch.Tensor, *,
                 num_inference_steps: int, guidance_scale: float, generator, callback, tensor_inputs: list[str], bar,
                 ica=None) -> torch.Tensor | None:
        """Sample latents shaped like ``render_latents`` ((B, C, h, w) images or (B, F, C, h, w) clips)
        from ``latents`` (the initial noise). Classifier-free guidance mixes ``condition`` with the
        model's null condition when ``guidance_scale != 1``. None when interrupted."""
        model, scheduler = self.model, self.scheduler
        shape = render_latents.shape
        video = render_latents.ndim == 5
        scheduler.set_timesteps(num_inference_steps, device=render_latents.device)
        latents = latents * scheduler.init_noise_sigma
        guided = guidance_scale != 1.0
        if guided:
            null = model.null_condition(shape[0], shape[1] if video else None).to(condition)
            condition = torch.cat([null, condition])
            render_latents = torch.cat([render_latents, render_latents])
        ica_latents = ica_mask = None
        if ica is not None:
            ica_latents, ica_mask = ica.latents.to(latents), ica.mask.to(latents)
            if guided:
                ica_latents, ica_mask = torch.cat([ica_latents, ica_latents]), torch.cat([ica_mask, ica_mask])
        step_generator = generator[0] if isinstance(generator, list) else generator
        for i, t in enumerate(scheduler.timesteps):
            if self.interrupt:
                return None
            model_in = torch.cat([latents, latents]) if guided else latents
            model_in = scheduler.scale_model_input(model_in, t)
            pred = model(model_in, t, render_latents, condition=condition, drop_condition=False,
                         ica_latents=ica_latents, ica_mask=ica_mask)
            if guided:
                uncond, cond = pred.chunk(2)
                pred = uncond + guidance_scale * (cond - uncond)
            # Schedulers expect 4-D tensors: a clip is stepped as a batch of frames.
            flat = (lambda x: x.flatten(0, 1)) if video else (lambda x: x)
            stepped = scheduler.step(flat(pred), t, flat(latents), generator=step_generator).prev_sample
            latents = stepped.unflatten(0, shape[:2]) if video else stepped
            if callback is not None:
                outputs = callback(self, i, t, {"latents": latents} if "latents" in tensor_inputs else {})
                latents = (outputs or {}).get("latents", latents)
            bar.update()
        return latents

    def _postprocess(self, latents: torch.Tensor, output_type: str, chunk_size: int):
        if output_type == "latent":
            return latents
        images = self.decode_latents(latents, chunk_size)
        if output_type == "pt":
            return images
        array = images.permute(0, 2, 3, 1).numpy()
        if output_type == "np":
            return array
        return [PIL.Image.fromarray(frame) for frame in to_uint8(array)]
