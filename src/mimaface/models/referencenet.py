"""The ReferenceNet design that MIMAFace does without, built from the same diffusers UNet (for comparison).

Animate Anyone, AniPortrait, Hallo and EchoMimic encode the source with a **reference UNet**, a
copy of the SD-1.5 UNet that sees the source's VAE latent at ``t = 0``, and feed its features to
the denoising UNet through **reference attention**: every self-attention of the denoiser attends
to its own tokens and to the reference UNet's tokens at the same place::

    denoiser attn1(x) = softmax(q(x) [k(x); k(r)]^T / sqrt(d)) [v(x); v(r)]

where ``r`` is the input of the reference UNet's matching self-attention (Moore-AnimateAnyone's
``ReferenceAttentionControl``: the "bank" of normalised hidden states). Both UNets take CLIP's
projected image embedding (one token) as their cross-attention condition; CLIP is frozen. Here this
is done with diffusers attention processors on two unchanged ``UNet2DConditionModel`` trees:
:class:`ReferenceWriteProcessor` on the reference UNet's ``attn1`` layers stores their input,
:class:`ReferenceReadProcessor` on the denoiser's reads it.

To compare only the appearance path, the motion condition is MIMAFace's own: the denoiser is a
:class:`~mimaface.models.unet.ConditionedUNet` (the I_R latent concatenated at ``conv_in``), where
those methods use a pose guider of a few convolutions -- a negligible cost beside two UNets. What
stage 1 trains (:meth:`ReferenceNetModel.set_trainable`) follows Moore-AnimateAnyone's stage 1: the
denoising UNet whole and the reference UNet except its last up block (whose outputs reach nothing
that the denoiser reads); CLIP and the VAE stay frozen. At inference the reference features do not
depend on the noisy latent, so the released pipelines compute them once per video
(:meth:`ReferenceNetModel.encode_reference`) and every denoising step reads the stored bank.
"""

from __future__ import annotations

import copy

import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from mimaface.models.appearance import AppearanceEncoder
from mimaface.models.config import CLIP_IMAGE_MEAN, CLIP_IMAGE_STD, MIMAFaceConfig
from mimaface.models.unet import ConditionedUNet


class ReferenceBank:
    """What the reference pass leaves for the denoiser: each self-attention's input, by layer name."""

    def __init__(self) -> None:
        self.features: dict[str, torch.Tensor] = {}

    def clear(self) -> None:
        self.features = {}


class ReferenceWriteProcessor(AttnProcessor2_0):
    """Self-attention of the reference UNet that also stores its input in the bank."""

    def __init__(self, bank: ReferenceBank, name: str) -> None:
        super().__init__()
        self.bank, self.name = bank, name

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        self.bank.features[self.name] = hidden_states
        return super().__call__(attn, hidden_states, *args, **kwargs)


class ReferenceReadProcessor(AttnProcessor2_0):
    """Self-attention of the denoiser over its own tokens and the reference's (keys and values concatenated).

    The bank holds R reference samples; a batch of N = R * n samples (frames of a clip, or the two
    halves of classifier-free guidance for one source) reads each reference n times, in order.
    """

    def __init__(self, bank: ReferenceBank, name: str) -> None:
        super().__init__()
        self.bank, self.name = bank, name

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 *args, **kwargs) -> torch.Tensor:
        reference = self.bank.features.get(self.name)
        if reference is None:
            raise RuntimeError(f"no reference features for {self.name}: run encode_reference first")
        if hidden_states.shape[0] % reference.shape[0]:
            raise ValueError(f"a batch of {hidden_states.shape[0]} cannot read {reference.shape[0]} references")
        reference = reference.repeat_interleave(hidden_states.shape[0] // reference.shape[0], dim=0)
        context = torch.cat([hidden_states, reference.to(hidden_states.dtype)], dim=1)
        return super().__call__(attn, hidden_states, context, *args, **kwargs)


def self_attention_names(unet: UNet2DConditionModel) -> list[str]:
    """The processor names of the UNet's self-attention layers (``...transformer_blocks.N.attn1.processor``)."""
    return [name for name in unet.attn_processors if name.endswith("attn1.processor")]


class ReferenceNetModel(nn.Module):
    """Reference UNet + reference attention in a render-conditioned denoising UNet, CLIP image embedding.

    ``unet``: a 4-channel text-to-image UNet; the reference UNet is a copy of it (the same weights,
    as those methods initialise both from SD-1.5), the denoiser is ``unet`` itself with ``conv_in``
    widened for the render latent. ``image_encoder``: CLIP with its visual projection to the UNet's
    cross-attention width.
    """

    def __init__(self, unet: UNet2DConditionModel, image_encoder: CLIPVisionModelWithProjection, *,
                 latent_channels: int = 4, render_channels: int = 4,
                 image_mean: tuple[float, ...] = CLIP_IMAGE_MEAN, image_std: tuple[float, ...] = CLIP_IMAGE_STD) -> None:
        super().__init__()
        if image_encoder.config.projection_dim != unet.config.cross_attention_dim:
            raise ValueError(f"CLIP projects to {image_encoder.config.projection_dim}, the UNet attends to "
                             f"{unet.config.cross_attention_dim}")
        self.reference_unet = copy.deepcopy(unet)
        self.denoiser = ConditionedUNet(unet, None, latent_channels=latent_channels, render_channels=render_channels)
        self.image_encoder = AppearanceEncoder(image_encoder, image_mean, image_std)
        self.bank = ReferenceBank()
        self._condition: torch.Tensor | None = None
        self.reference_unet.set_attn_processor(
            {name: ReferenceWriteProcessor(self.bank, name) if name.endswith("attn1.processor") else AttnProcessor2_0()
             for name in self.reference_unet.attn_processors})
        self.denoiser.unet.set_attn_processor(
            {name: ReferenceReadProcessor(self.bank, name) if name.endswith("attn1.processor") else AttnProcessor2_0()
             for name in self.denoiser.unet.attn_processors})

    @classmethod
    def from_config(cls, config: MIMAFaceConfig) -> ReferenceNetModel:
        """Random-initialised, with the shapes of ``config``'s UNet and CLIP (the same as MIMAFace's)."""
        unet = UNet2DConditionModel(**config.unet)
        clip = CLIPVisionModelWithProjection(CLIPVisionConfig(**config.appearance_encoder))
        return cls(unet, clip, latent_channels=config.latent_channels, render_channels=config.render_channels,
                   image_mean=config.image_mean, image_std=config.image_std)

    @property
    def clip(self) -> CLIPVisionModelWithProjection:
        return self.image_encoder.clip

    def image_condition(self, source_image: torch.Tensor) -> torch.Tensor:
        """CLIP's projected image embedding of the source(s), (B, 1, D): both UNets' cross-attention condition."""
        _, pooled = self.image_encoder(source_image)  # CLIP's pooled output (its post-LayerNorm class token)
        return self.clip.visual_projection(pooled).unsqueeze(1)

    def encode_reference(self, source_latents: torch.Tensor, source_image: torch.Tensor) -> None:
        """The reference pass: the reference UNet on the source latents (B, C, h, w) at t = 0 fills the bank;
        the CLIP condition is kept with it. Once per source (per video at inference)."""
        with torch.no_grad():  # CLIP is frozen
            condition = self.image_condition(source_image)
        self.bank.clear()
        timesteps = torch.zeros(source_latents.shape[0], dtype=torch.long, device=source_latents.device)
        self.reference_unet(source_latents, timesteps, condition.to(self.reference_unet.dtype), return_dict=False)
        self._condition = condition

    def forward(self, noisy_latents: torch.Tensor, timesteps: torch.Tensor, render_latents: torch.Tensor,
                source_latents: torch.Tensor | None = None, source_image: torch.Tensor | None = None) -> torch.Tensor:
        """Noise prediction for (N, C, h, w) latents. With ``source_latents`` and ``source_image`` the reference
        pass runs first (training); without them the bank of the last :meth:`encode_reference` is read."""
        if (source_latents is None) != (source_image is None):
            raise ValueError("pass both source_latents and source_image, or neither")
        if source_latents is not None:
            self.encode_reference(source_latents, source_image)
        if self._condition is None:
            raise RuntimeError("no reference: pass source_latents and source_image, or run encode_reference first")
        condition = self._condition.repeat_interleave(noisy_latents.shape[0] // self._condition.shape[0], dim=0)
        return self.denoiser(noisy_latents, timesteps, condition.to(noisy_latents.dtype), render_latents)

    def set_trainable(self) -> list[nn.Parameter]:
        """Stage 1 of those methods: the denoiser and the reference UNet train, except the reference UNet's last
        up block and output layers (nothing the denoiser reads depends on them); CLIP and W_cond are frozen
        (W_cond is MIMAFace's ICA input, unused here). Returns the trainable parameters."""
        self.requires_grad_(True)
        self.image_encoder.requires_grad_(False)
        self.denoiser.w_cond.requires_grad_(False)
        reference = self.reference_unet
        for module in (reference.up_blocks[-1], reference.conv_norm_out, reference.conv_out):
            module.requires_grad_(False)
        return [p for p in self.parameters() if p.requires_grad]

    def enable_gradient_checkpointing(self) -> None:
        self.reference_unet.enable_gradient_checkpointing()
        self.denoiser.enable_gradient_checkpointing()
