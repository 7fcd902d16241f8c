"""``MIMAFacePipeline``: a source face crop + per-frame motion -> any number of generated frames.

Long videos are generated as clips of F frames, every clip starting from the same initial noise.
With ICA (the default) clip c > 0 re-uses the last k denoised latents of clip c - 1 through W_cond
(paper Sec. 3.4), so each new clip adds F - k frames; without it (``use_ica=False``, the ablation)
clips are independent. Sharing the initial noise is what the ablation relies on; with ICA it also
helps: on held-out identities, fresh noise per clip roughly doubled the change at clip boundaries.
The source's CLIP tokens are computed once; only the motion modulation differs from frame to frame.

This module works on aligned square crops at the model's resolution and on coefficients in that
crop's frame (what the data sets store). Finding and aligning the face in an arbitrary photo,
retargeting a driving video's motion and pasting the result back are built on top of it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler, SchedulerMixin
from tqdm.auto import tqdm

from mimaface.errors import InputError
from mimaface.face3d.coefficients import MotionCoefficients
from mimaface.face3d.model import FaceModel
from mimaface.face3d.pipeline import render_motion
from mimaface.models import loading
from mimaface.models.ica import ica_condition_from_previous, max_conditioning_frames
from mimaface.models.mimaface_model import MIMAFaceModel
from mimaface.pipelines.sampling import denoise

#: Scheduler names accepted by the pipeline (diffusers classes, configured from the model's noise schedule).
SCHEDULERS: dict[str, type[SchedulerMixin]] = {
    "ddim": DDIMScheduler,
    "euler": EulerDiscreteScheduler,
    "dpm++": DPMSolverMultistepScheduler,
}

BUNDLED_MODEL = Path(__file__).resolve().parents[1] / "assets" / "tiny_model"
PIPELINE_CONFIG = "pipeline_config.json"


@dataclass
class AnimationOutput:
    frames: np.ndarray  # (N, S, S, 3) uint8, the generated crops
    renders: np.ndarray  # (N, S, S) uint8, the I_R each frame was generated from
    clip_starts: list[int]  # index of the first new frame of each clip (clip boundaries)


def clip_windows(num_frames: int, clip_length: int, overlap: int) -> list[tuple[int, int]]:
    """(start, first new frame) of each clip covering ``num_frames`` frames.

    Clip c spans frames ``start .. start + clip_length - 1`` (frames past the end repeat the last
    frame's motion); its first ``overlap`` frames are the previous clip's last ones.
    """
    if clip_length < 1 or not 0 <= overlap < clip_length:
        raise InputError(f"need clip_length >= 1 and 0 <= overlap < clip_length, got {clip_length} and {overlap}")
    windows = [(0, 0)]
    while windows[-1][0] + clip_length < num_frames:
        start = windows[-1][0] + clip_length - overlap
        windows.append((start, start + overlap))
    return windows


class MIMAFacePipeline:
    """The trained model (denoiser, VAE, noise schedule) and the face model that renders I_R."""

    def __init__(self, model: MIMAFaceModel, vae, scheduler: SchedulerMixin, face_model: FaceModel | None = None,
                 device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)
        self.vae = vae.eval().to(self.device)
        self.scheduler = scheduler
        self.face_model = face_model or FaceModel.load()
        # What training used (written beside the model by `mimaface train`): the crop size, clip length F.
        self.settings: dict = {"image_size": int(vae.config.sample_size),
                               "clip_length": 8 if model.config.scale == "tiny" else 12}

    @classmethod
    def from_pretrained(cls, directory: str | Path | None = None, device: str | torch.device = "cpu") -> MIMAFacePipeline:
        """Load a folder written by training (``RUN_DIR/final``); None = the bundled tiny model."""
        directory = Path(directory) if directory is not None else BUNDLED_MODEL
        model = MIMAFaceModel.from_pretrained(directory)
        vae = loading.load_vae(directory / "vae", how="the vae/ folder of a trained MIMAFace model (RUN_DIR/final)")
        scheduler_dir = directory / "scheduler"
        if not (scheduler_dir / "scheduler_config.json").is_file():
            raise loading.ModelLoadError(f"'{directory}' has no scheduler/scheduler_config.json; expected a folder "
                                         f"written by `mimaface train` (RUN_DIR/final)")
        scheduler = DDIMScheduler.from_pretrained(scheduler_dir)
        pipeline = cls(model, vae, scheduler, device=device)
        settings = directory / PIPELINE_CONFIG
        if settings.is_file():
            pipeline.settings.update(json.loads(settings.read_text()))
        return pipeline

    # -- sizes and defaults -------------------------------------------------------------------
    @property
    def image_size(self) -> int:
        """The crop size the model was trained at."""
        return int(self.settings["image_size"])

    @property
    def default_clip_length(self) -> int:
        """F as trained in stage 2."""
        return int(self.settings["clip_length"])

    def default_overlap(self, clip_length: int) -> int:
        """k as trained: the largest number of conditioning frames training drew (at least 1)."""
        return max(1, max_conditioning_frames(clip_length, self.model.config.ica))

    def make_scheduler(self, name: str | None) -> SchedulerMixin:
        if name is None:
            return self.scheduler
        if name not in SCHEDULERS:
            raise InputError(f"unknown scheduler {name!r} (use one of {', '.join(SCHEDULERS)})")
        return SCHEDULERS[name].from_config(self.scheduler.config)

    # -- pieces -------------------------------------------------------------------------------
    def render(self, motion: MotionCoefficients) -> np.ndarray:
        """I_R (N, S, S) uint8 of ``motion`` (its identity, its crop frame) at the model's size."""
        size = self.image_size
        return np.stack([image[..., 0] for image, _ in render_motion(motion, (size, size), model=self.face_model,
                                                                      progress=False)])

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) in [-1, 1] -> scaled latents."""
        latents = [self.vae.encode(chunk.to(self.device, self.vae.dtype)).latent_dist.mean for chunk in images.split(32)]
        return torch.cat(latents) * self.vae.config.scaling_factor

    def decode(self, latents: torch.Tensor) -> np.ndarray:
        """Scaled latents (N, C, h, w) -> (N, S, S, 3) uint8."""
        images = [self.vae.decode(chunk.to(self.vae.dtype) / self.vae.config.scaling_factor).sample
                  for chunk in latents.split(32)]
        x = torch.cat(images).float().clamp(-1, 1)
        return ((x + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()

    # -- generation ---------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(self, source: np.ndarray, motion: MotionCoefficients, *, num_inference_steps: int = 25,
                 guidance_scale: float = 2.0, seed: int = 0, clip_length: int | None = None,
                 overlap: int | None = None, use_ica: bool = True, scheduler: str | None = None,
                 batch_size: int = 1, progress: bool = True) -> AnimationOutput:
        """Animate ``source`` (S, S, 3) uint8, an aligned crop at the model's size, with ``motion``
        (coefficients in that crop's frame, with the identity to render I_R with). One frame of
        motion is the image-driven mode (one denoising pass of the image model). ``batch_size``:
        independent units denoised per forward (frames in image mode, clips with ``use_ica=False``;
        ICA clips are sequential by nature)."""
        size = self.image_size
        if source.shape != (size, size, 3) or source.dtype != np.uint8:
            raise InputError(f"the source crop must be ({size}, {size}, 3) uint8 for this model, got "
                             f"{source.shape} {source.dtype}")
        n = motion.num_frames
        if n < 1:
            raise InputError("the motion has no frames")
        renders = self.render(motion)
        render_latents = self.encode(_unit(np.repeat(renders[..., None], 3, -1)))
        source_t = torch.from_numpy(np.array(source)).permute(2, 0, 1).float().div(255).unsqueeze(0).to(self.device)
        e_tex, e_id = self.model.encode_source(source_t)  # once for the whole video
        coefficients = {key: torch.as_tensor(getattr(motion, key), dtype=torch.float32, device=self.device)
                        for key in ("pose", "expression", "gaze")}
        sampler = self.make_scheduler(scheduler)
        generator = torch.Generator().manual_seed(seed)
        kwargs = {"num_inference_steps": num_inference_steps, "guidance_scale": guidance_scale,
                  "progress_steps": progress}
        if batch_size < 1:
            raise InputError(f"batch_size must be at least 1, got {batch_size}")

        def conditions(index: torch.Tensor) -> torch.Tensor:
            """(B, L, D) for frame indices (B,), (B, F, L, D) for (B, F)."""
            b = index.shape[0]
            return self.model.condition_from_tokens(e_tex.expand(b, -1, -1), e_id.expand(b, -1),
                                                    *(c[index] for c in coefficients.values()))

        def noise(shape: tuple[int, ...]) -> torch.Tensor:
            return torch.randn(shape, generator=generator).to(render_latents)

        if n == 1 or self.model.motion_adapter is None:  # image mode: frames are independent
            # Noise is drawn frame by frame, so the result does not depend on batch_size.
            starts = noise((n, *render_latents.shape[1:]))
            latents = []
            for chunk in tqdm(torch.arange(n).split(batch_size), desc="frames", disable=not progress or n == 1):
                latents.append(denoise(self.model, sampler, render_latents[chunk], conditions(chunk),
                                       latents=starts[chunk], **kwargs))
            return AnimationOutput(self.decode(torch.cat(latents)), renders, list(range(n)))

        f = clip_length or self.default_clip_length
        k = (self.default_overlap(f) if overlap is None else overlap) if use_ica else 0
        windows = clip_windows(n, f, k)
        index = [torch.clamp(torch.arange(start, start + f), max=n - 1) for start, _ in windows]
        outputs = []
        fixed = noise((1, f, *render_latents.shape[1:]))
        if use_ica:  # sequential: each clip needs the previous one's last k latents
            previous = None
            for (start, first_new), frames in tqdm(list(zip(windows, index)), desc="clips",
                                                   disable=not progress or len(windows) == 1):
                like = render_latents[frames].unsqueeze(0)
                latents = denoise(self.model, sampler, like, conditions(frames[None]), latents=fixed.clone(),
                                  ica=ica_condition_from_previous(previous, f, like), **kwargs)
                outputs.append(latents[0, first_new - start:])
                previous = latents[:, f - k:] if k else None
        else:  # the ablation: independent clips, batch_size clips at a time
            for chunk in tqdm(torch.arange(len(windows)).split(batch_size), desc="clips",
                              disable=not progress or len(windows) == 1):
                frames = torch.stack([index[i] for i in chunk.tolist()])
                like = render_latents[frames]
                latents = denoise(self.model, sampler, like, conditions(frames), latents=fixed.expand_as(like), **kwargs)
                outputs.extend(latents)
        latents = torch.cat(outputs)[:n]
        return AnimationOutput(self.decode(latents), renders, [first_new for _, first_new in windows])


def _unit(images: np.ndarray) -> torch.Tensor:
    """(N, S, S, 3) uint8 -> (N, 3, S, S) float in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1)
