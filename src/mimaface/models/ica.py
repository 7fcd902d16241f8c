"""Inter-clip affinity (ICA) conditioning: what goes into W_cond, in training and at inference.

Paper eqs. 3-4: for an F-frame clip the first ``k`` frames' ground-truth latents (plus
``N(0, sigma^2)`` noise, standing in for the denoised latents seen at inference) fill ``s``
with mask ``m = 1``; the remaining frames are zeros with ``m = 0``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mimaface.models.config import ICAConfig


@dataclass
class ICACondition:
    """W_cond's input for a batch of clips."""

    latents: torch.Tensor  # s: (B, F, C, h, w)
    mask: torch.Tensor  # m: (B, F, 1, h, w)
    num_given: torch.Tensor  # k: (B,) long


def max_conditioning_frames(num_frames: int, config: ICAConfig) -> int:
    """The largest k the "uniform" distribution draws: ``k_max`` or floor(F * k_max_fraction)."""
    k_max = config.k_max if config.k_max is not None else int(num_frames * config.k_max_fraction)
    return max(0, min(k_max, num_frames))


def sample_num_given(batch_size: int, num_frames: int, config: ICAConfig,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw k per clip (B,): U{0..k_max} ("uniform", the paper) or the authors' mixture."""
    device = generator.device if generator is not None else None
    if config.k_distribution == "uniform":
        high = max_conditioning_frames(num_frames, config)
        return torch.randint(0, high + 1, (batch_size,), generator=generator, device=device).cpu()
    if config.k_distribution == "authors":
        low, high = config.authors_k_min, min(config.authors_k_max, num_frames)
        if not 0 <= low <= high:
            raise ValueError(f"authors_k_min..authors_k_max ({low}..{high}) is empty for {num_frames} frames")
        k = torch.randint(low, high + 1, (batch_size,), generator=generator, device=device).cpu()
        on = torch.rand(batch_size, generator=generator, device=device).cpu() < config.p_nonzero
        return torch.where(on, k, torch.zeros_like(k))
    raise ValueError(f"unknown k_distribution {config.k_distribution!r} (use 'uniform' or 'authors')")


def sample_ica_condition(latents: torch.Tensor, config: ICAConfig | None = None,
                         num_given: torch.Tensor | None = None,
                         generator: torch.Generator | None = None) -> ICACondition:
    """Training: the first k ground-truth latents + N(0, sigma^2) with mask 1, zeros elsewhere.

    ``latents`` (B, F, C, h, w) are the clip's clean (scaled) VAE latents. ``num_given`` fixes k
    per clip instead of drawing it.
    """
    config = config or ICAConfig()
    if latents.ndim != 5:
        raise ValueError(f"latents must be (B, F, C, h, w), got {tuple(latents.shape)}")
    b, f = latents.shape[:2]
    k = sample_num_given(b, f, config, generator) if num_given is None else num_given.long().cpu().view(b)
    if (k < 0).any() or (k > f).any():
        raise ValueError(f"k must lie in 0..{f}, got {k.tolist()}")
    frame = torch.arange(f).view(1, f)
    given = (frame < k.view(b, 1)).to(latents.device)  # (B, F)
    mask = given.to(latents.dtype).view(b, f, 1, 1, 1)
    noise = torch.randn(latents.shape, generator=generator,
                        device=generator.device if generator is not None else latents.device).to(latents)
    s = (latents + config.noise_std * noise) * mask
    return ICACondition(latents=s, mask=mask.expand(b, f, 1, *latents.shape[-2:]).contiguous(), num_given=k)


def ica_condition_from_previous(previous: torch.Tensor | None, num_frames: int, like: torch.Tensor) -> ICACondition:
    """Inference: the last k denoised latents of the previous clip, ``previous`` (B, k, C, h, w),
    become the first k frames of the next F-frame clip (no added noise); None gives k = 0.

    ``like`` (B, F, C, h, w) supplies shape, dtype and device.
    """
    b, f = like.shape[:2]
    if f != num_frames:
        raise ValueError(f"like has {f} frames, expected {num_frames}")
    s = torch.zeros_like(like)
    mask = torch.zeros(b, f, 1, *like.shape[-2:], dtype=like.dtype, device=like.device)
    k = 0 if previous is None else previous.shape[1]
    if k > f:
        raise ValueError(f"{k} conditioning frames do not fit a {f}-frame clip")
    if k:
        s[:, :k] = previous.to(like)
        mask[:, :k] = 1
    return ICACondition(latents=s, mask=mask, num_given=torch.full((b,), k, dtype=torch.long))
