"""The denoising loop shared by validation during training and the inference pipeline."""

from __future__ import annotations

import torch
from diffusers import SchedulerMixin
from tqdm.auto import tqdm

from mimaface.models.ica import ICACondition
from mimaface.models.mimaface_model import MIMAFaceModel


@torch.no_grad()
def denoise(model: MIMAFaceModel, scheduler: SchedulerMixin, render_latents: torch.Tensor, condition: torch.Tensor, *,
            num_inference_steps: int = 20, guidance_scale: float = 2.0, generator: torch.Generator | None = None,
            latents: torch.Tensor | None = None, ica: ICACondition | None = None,
            progress_steps: bool = False) -> torch.Tensor:
    """Sample latents shaped like ``render_latents`` ((B, C, h, w) images or (B, F, C, h, w) clips).

    ``condition``: the appearance condition ((B, L, D), or (B, F, L, D) for clips). Classifier-free
    guidance mixes it with the model's null condition when ``guidance_scale != 1``. ``latents``:
    the initial noise (drawn from ``generator`` when None). ``ica``: W_cond's input for clips.
    ``progress_steps``: a transient progress bar over the steps.
    Returns the final (scaled) latents.
    """
    shape = render_latents.shape
    video = render_latents.ndim == 5
    if latents is None:
        latents = torch.randn(shape, generator=generator, device=generator.device if generator else None)
        latents = latents.to(render_latents)
    scheduler.set_timesteps(num_inference_steps, device=render_latents.device)
    latents = latents * scheduler.init_noise_sigma
    guided = guidance_scale != 1.0
    b = shape[0]
    if guided:
        null = model.null_condition(b, shape[1] if video else None).to(condition)
        condition = torch.cat([null, condition.expand_as(null) if condition.ndim == null.ndim else condition])
        render_latents = torch.cat([render_latents, render_latents])
    ica_latents = ica_mask = None
    if ica is not None:
        ica_latents, ica_mask = ica.latents.to(latents), ica.mask.to(latents)
        if guided:
            ica_latents, ica_mask = torch.cat([ica_latents, ica_latents]), torch.cat([ica_mask, ica_mask])
    for t in tqdm(scheduler.timesteps, desc="steps", leave=False, disable=not progress_steps):
        model_in = torch.cat([latents, latents]) if guided else latents
        model_in = scheduler.scale_model_input(model_in, t)
        pred = model(model_in, t, render_latents, condition=condition, drop_condition=False,
                     ica_latents=ica_latents, ica_mask=ica_mask)
        if guided:
            uncond, cond = pred.chunk(2)
            pred = uncond + guidance_scale * (cond - uncond)
        latents = _step(scheduler, pred, t, latents, generator)
    return latents


def _step(scheduler: SchedulerMixin, pred: torch.Tensor, t: torch.Tensor, latents: torch.Tensor,
          generator: torch.Generator | None) -> torch.Tensor:
    """One scheduler step; clips are stepped as a batch of frames (schedulers expect 4-D tensors)."""
    if latents.ndim == 5:
        b, f = latents.shape[:2]
        out = scheduler.step(pred.flatten(0, 1), t, latents.flatten(0, 1), generator=generator).prev_sample
        return out.unflatten(0, (b, f))
    return scheduler.step(pred, t, latents, generator=generator).prev_sample
