"""The training losses, as modules: Accelerate wraps them (DDP / FSDP / DeepSpeed) as a whole.

Putting the whole loss inside one ``forward`` keeps every trained parameter (the identity
head included) under the distributed wrapper, and the identity memory bank's all-gather runs
on every process in the same order.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler
from diffusers.training_utils import compute_snr
from torch import nn

from mimaface.models.config import ICAConfig
from mimaface.models.ica import sample_ica_condition
from mimaface.models.mimaface_model import MIMAFaceModel


class VAEObjective(nn.Module):
    """The latent codec: L1 reconstruction + ``kl_weight`` * KL (summed over latent elements)."""

    def __init__(self, vae: AutoencoderKL, kl_weight: float = 1e-6) -> None:
        super().__init__()
        self.vae = vae
        self.kl_weight = kl_weight

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        posterior = self.vae.encode(images).latent_dist
        reconstruction = self.vae.decode(posterior.sample()).sample
        l1 = (reconstruction.float() - images.float()).abs().mean()
        kl = posterior.kl().mean()
        return l1 + self.kl_weight * kl, {"l1": l1.detach(), "kl": kl.detach()}


class DenoisingObjective(nn.Module):
    """Stages 1 and 2: the denoising loss (+ λ·identity loss in stage 1).

    Images: ``latents`` (B, C, h, w); clips: (B, F, C, h, w) with ICA conditioning drawn per clip
    (paper eqs. 3-4). ``source`` (B, 3, H, W) in [-1, 1]; coefficients (B[, F], d).
    """

    def __init__(self, model: MIMAFaceModel, noise_scheduler: DDPMScheduler, *, snr_gamma: float | None = None,
                 identity_weight: float = 0.0, ica: ICAConfig | None = None) -> None:
        super().__init__()
        self.model = model
        self.noise_scheduler = noise_scheduler
        self.snr_gamma = snr_gamma
        self.identity_weight = identity_weight
        self.ica = ica or model.config.ica

    def forward(self, latents: torch.Tensor, render_latents: torch.Tensor, source: torch.Tensor, pose: torch.Tensor,
                expression: torch.Tensor, gaze: torch.Tensor,
                identity: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        b = latents.shape[0]
        video = latents.ndim == 5
        scheduler = self.noise_scheduler
        noise = torch.randn_like(latents)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (b,), device=latents.device)
        noisy = scheduler.add_noise(latents, noise, timesteps)
        ica_latents = ica_mask = None
        if video:
            ica = sample_ica_condition(latents, self.ica)
            ica_latents, ica_mask = ica.latents, ica.mask
        source01 = (source + 1) / 2
        out = self.model(noisy, timesteps, render_latents, source01, pose, expression, gaze,
                         ica_latents=ica_latents, ica_mask=ica_mask, return_dict=True)
        if scheduler.config.prediction_type == "v_prediction":
            target = scheduler.get_velocity(latents, noise, timesteps)
        else:
            target = noise
        per_sample = F.mse_loss(out.sample.float(), target.float(), reduction="none").flatten(1).mean(1)
        if self.snr_gamma is not None:
            snr = compute_snr(scheduler, timesteps)
            weight = snr.clamp(max=self.snr_gamma)
            weight = weight / (snr + 1) if scheduler.config.prediction_type == "v_prediction" else weight / snr
            per_sample = per_sample * weight
        denoise = per_sample.mean()
        logs = {"denoise": denoise.detach()}
        loss = denoise
        if self.identity_weight > 0 and not video:
            if identity is None:
                raise ValueError("the identity loss needs identity labels")
            identity_loss = self.model.identity_loss(source01, identity, id_token=out.id_token)
            loss = loss + self.identity_weight * identity_loss
            logs["identity"] = identity_loss.detach()
        return loss, logs
