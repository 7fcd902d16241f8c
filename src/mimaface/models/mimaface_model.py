"""``MIMAFaceModel``: the whole denoising network of the paper, composed from its parts.

Layout on disk (``save_pretrained`` / ``from_pretrained``)::

    DIR/mimaface_config.json     MIMAFaceConfig (scale, component configs, MIA / identity / ICA settings)
    DIR/unet/                    diffusers UNet2DConditionModel (SD-1.5 tree, conv_in widened to 8 inputs)
    DIR/motion_adapter/          diffusers MotionAdapter (AnimateDiff format; when the config has one)
    DIR/appearance_encoder/      transformers CLIPVisionModel
    DIR/mia/                     motion modulation + adapter f + null condition (config.json + model.safetensors)
    DIR/w_cond/                  ICA's W_cond conv
    DIR/identity_head/           the identity loss's projection head (the memory bank is training state)

Tensor conventions: latents ``(B, C, h, w)`` for images and ``(B, F, C, h, w)`` for F-frame clips;
source images ``(B, 3, H, W)`` RGB in ``[0, 1]`` (one per clip); coefficients ``pose (B[, F], 6)``,
``expression (B[, F], K)``, ``gaze (B[, F], 4)``; timesteps ``(B,)`` (shared by a clip's frames).
"""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import ModelMixin, MotionAdapter, UNet2DConditionModel
from diffusers.utils.accelerate_utils import apply_forward_hook
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel

from mimaface.errors import ModelLoadError
from mimaface.models import loading
from mimaface.models.appearance import AppearanceEncoder, MotionIdentityAppearance
from mimaface.models.config import MIMAFaceConfig
from mimaface.models.identity_loss import IdentityContrastiveLoss
from mimaface.models.unet import ConditionedUNet, zero_init_motion_modules

logger = logging.getLogger(__name__)

CONFIG_NAME = "mimaface_config.json"
SAVED_HOW = "a folder written by MIMAFaceModel.save_pretrained (mimaface_config.json, unet/, appearance_encoder/, mia/, w_cond/, ...)"
_CLIP_KEYS = ("hidden_size", "intermediate_size", "projection_dim", "num_hidden_layers", "num_attention_heads",
              "num_channels", "image_size", "patch_size", "hidden_act", "layer_norm_eps")


@dataclass
class AppearanceOutput:
    """The appearance condition and the CLIP tokens it came from."""

    condition: torch.Tensor  # (B, L, D) for images, (B, F, L, D) for clips
    id_token: torch.Tensor  # e_id (B, C)
    texture_tokens: torch.Tensor  # e_tex (B, P, C), before motion modulation


@dataclass
class MIMAFaceOutput:
    sample: torch.Tensor  # noise prediction, the noisy latents' shape
    condition: torch.Tensor  # the condition the UNet saw (after dropping), (B*F, L, D)
    id_token: torch.Tensor | None  # e_id of the source (None when a condition was passed in)
    dropped: torch.Tensor  # (B,) bool: samples whose condition was replaced by the null condition


def _public(config: Any) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dict(config).items() if not k.startswith("_")}


class MIMAFaceModel(ModelMixin):
    """The MIMAFace denoiser: CLIP + MIA appearance condition, render-conditioned SD UNet, ICA, motion modules.

    A diffusers ``ModelMixin`` (``dtype``, ``device``, model CPU offload hooks), so it is the
    ``model`` component of :class:`~mimaface.pipelines.pipeline.MIMAFacePipeline`; its own folder
    layout is in this module's docstring.

    Build random-initialised from a config (``MIMAFaceModel(MIMAFaceConfig.tiny())``), from
    pretrained SD-1.5 / CLIP / AnimateDiff folders (:meth:`from_components`), or from a saved
    model (:meth:`from_pretrained`). Components passed to the constructor are used as they are
    (the UNet's conv_in is widened in place).
    """

    def __init__(self, config: MIMAFaceConfig | None = None, *, unet: UNet2DConditionModel | None = None,
                 clip: CLIPVisionModel | None = None, motion_adapter: MotionAdapter | None = None) -> None:
        super().__init__()
        config = copy.deepcopy(config) if config is not None else MIMAFaceConfig.tiny()
        if unet is None:
            unet = UNet2DConditionModel(**config.unet)
        if motion_adapter is None and config.motion_adapter is not None:
            motion_adapter = MotionAdapter(**config.motion_adapter)
            zero_init_motion_modules(motion_adapter)  # fresh modules start as the identity
        if clip is None:
            clip = CLIPVisionModel(CLIPVisionConfig(**config.appearance_encoder))
        self.config = config
        self.denoiser = ConditionedUNet(unet, motion_adapter, latent_channels=config.latent_channels,
                                        render_channels=config.render_channels, ica_kernel_size=config.ica.kernel_size)
        self.appearance_encoder = AppearanceEncoder(clip, config.image_mean, config.image_std,
                                                    config.mia.clip_hidden_layer)
        self.mia = MotionIdentityAppearance(config.mia, config.clip_hidden_size, config.cross_attention_dim,
                                            config.num_patches)
        self.identity = IdentityContrastiveLoss(config.identity, config.clip_hidden_size) if config.identity.enabled else None
        self.stage: int | None = None

    # ---- parts ----
    @property
    def unet(self) -> UNet2DConditionModel:
        """The diffusers UNet (SD-1.5 module tree, conv_in widened)."""
        return self.denoiser.unet

    @property
    def motion_adapter(self) -> MotionAdapter | None:
        return self.denoiser.motion_adapter

    @property
    def w_cond(self) -> nn.Conv2d:
        return self.denoiser.w_cond

    @property
    def clip(self) -> CLIPVisionModel:
        return self.appearance_encoder.clip

    @property
    def condition_length(self) -> int:
        return self.config.condition_length

    # ---- appearance ----
    # apply_forward_hook: with model CPU offload these calls move the model to the accelerator as forward does.
    @apply_forward_hook
    def encode_source(self, source_image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """CLIP tokens of the source image(s): ``e_tex`` (B, P, C), ``e_id`` (B, C). Cache them for a video."""
        return self.appearance_encoder(source_image)

    @apply_forward_hook
    def condition_from_tokens(self, e_tex: torch.Tensor, e_id: torch.Tensor, pose: torch.Tensor,
                              expression: torch.Tensor, gaze: torch.Tensor) -> torch.Tensor:
        """MIA on cached CLIP tokens: (B, L, D) for (B, d) coefficients, (B, F, L, D) for (B, F, d)."""
        b = e_tex.shape[0]
        if pose.ndim == 2:
            for name, value in (("pose", pose), ("expression", expression), ("gaze", gaze)):
                if value.ndim != 2 or value.shape[0] != b:
                    raise ValueError(f"{name} must be (B, d) with B = {b} for images, got {tuple(value.shape)}")
            return self.mia(e_tex, e_id, pose, expression, gaze)
        if pose.ndim != 3:
            raise ValueError(f"pose must be (B, 6) or (B, F, 6), got {tuple(pose.shape)}")
        f = pose.shape[1]
        for name, value in (("pose", pose), ("expression", expression), ("gaze", gaze)):
            if value.ndim != 3 or value.shape[:2] != (b, f):
                raise ValueError(f"{name} must be (B, F, d) with B, F = {b}, {f}, got {tuple(value.shape)}")
        # One source per clip, its own motion per frame: each frame gets its own condition.
        condition = self.mia(e_tex.repeat_interleave(f, 0), e_id.repeat_interleave(f, 0), pose.flatten(0, 1),
                             expression.flatten(0, 1), gaze.flatten(0, 1))
        return condition.unflatten(0, (b, f))

    def encode_appearance(self, source_image: torch.Tensor, pose: torch.Tensor, expression: torch.Tensor,
                          gaze: torch.Tensor) -> AppearanceOutput:
        """Source image (B, 3, H, W) in [0, 1] + coefficients -> the UNet's appearance condition."""
        e_tex, e_id = self.encode_source(source_image)
        return AppearanceOutput(self.condition_from_tokens(e_tex, e_id, pose, expression, gaze), e_id, e_tex)

    @apply_forward_hook
    def null_condition(self, batch_size: int, num_frames: int | None = None) -> torch.Tensor:
        """The classifier-free-guidance null condition: (B, L, D), or (B, F, L, D) with ``num_frames``.

        A learned, zero-initialised sequence (``config.mia.null_condition = "learned"``), or zeros.
        """
        null = self.mia.null(batch_size)
        if num_frames is not None:
            null = null.unsqueeze(1).expand(-1, num_frames, -1, -1)
        return null

    # ---- the denoiser ----
    def forward(self, noisy_latents: torch.Tensor, timesteps: torch.Tensor | int, render_latents: torch.Tensor,
                source_image: torch.Tensor | None = None, pose: torch.Tensor | None = None,
                expression: torch.Tensor | None = None, gaze: torch.Tensor | None = None, *,
                ica_latents: torch.Tensor | None = None, ica_mask: torch.Tensor | None = None,
                condition: torch.Tensor | None = None, drop_condition: torch.Tensor | bool | None = None,
                return_dict: bool = False) -> torch.Tensor | MIMAFaceOutput:
        """Noise prediction for images (4-D latents; no motion modules) or clips (5-D; motion modules).

        ``condition``: a precomputed appearance condition (e.g. from :meth:`encode_appearance` or
        :meth:`null_condition`) instead of ``source_image`` + coefficients. ``drop_condition``:
        (B,) bool, or a bool for all; None draws it with ``config.condition_dropout`` in training
        mode (never in eval mode). ``ica_latents`` (B[, F], C, h, w) and ``ica_mask``
        (B[, F], 1, h, w) or (B[, F]) are W_cond's input (see :mod:`mimaface.models.ica`).
        """
        video = noisy_latents.ndim == 5
        if not video and noisy_latents.ndim != 4:
            raise ValueError(f"noisy latents must be (B, C, h, w) or (B, F, C, h, w), got {tuple(noisy_latents.shape)}")
        if render_latents.shape != noisy_latents.shape:
            raise ValueError(f"render latents {tuple(render_latents.shape)} must match the noisy latents "
                             f"{tuple(noisy_latents.shape)}")
        b = noisy_latents.shape[0]
        f = noisy_latents.shape[1] if video else 1
        h, w = noisy_latents.shape[-2:]
        device = noisy_latents.device

        id_token = None
        if condition is None:
            if source_image is None or pose is None or expression is None or gaze is None:
                raise ValueError("pass source_image, pose, expression and gaze, or a precomputed condition")
            if video and pose.ndim == 2:  # one set of coefficients for the whole clip
                pose, expression, gaze = (x.unsqueeze(1).expand(-1, f, -1) for x in (pose, expression, gaze))
            appearance = self.encode_appearance(source_image, pose, expression, gaze)
            condition, id_token = appearance.condition, appearance.id_token
        if video and condition.ndim == 3:
            condition = condition.unsqueeze(1).expand(-1, f, -1, -1)
        expected = (b, f) if video else (b,)
        if tuple(condition.shape[: len(expected)]) != expected or condition.ndim != len(expected) + 2:
            raise ValueError(f"condition {tuple(condition.shape)} does not match {'clips' if video else 'images'} "
                             f"of batch {b}")

        dropped = self._drop_mask(drop_condition, b, device)
        # Always through torch.where (no data-dependent branch): works on the meta device, and the
        # null condition and MIA stay in the graph whichever samples were dropped.
        null = self.null_condition(b, f if video else None).to(condition.dtype)
        condition = torch.where(dropped.view(b, *([1] * (condition.ndim - 1))), null, condition)
        condition = condition.flatten(0, 1) if video else condition

        timesteps = torch.as_tensor(timesteps, device=device)
        if timesteps.ndim == 0:
            timesteps = timesteps.expand(b)
        if timesteps.shape != (b,):
            raise ValueError(f"timesteps must be a scalar or (B,) = ({b},), got {tuple(timesteps.shape)}")
        if video:
            timesteps = timesteps.repeat_interleave(f)

        s = m = None
        if ica_latents is not None or ica_mask is not None:
            if ica_latents is None or ica_mask is None:
                raise ValueError("pass both ica_latents and ica_mask, or neither")
            if ica_latents.shape != noisy_latents.shape:
                raise ValueError(f"ica_latents {tuple(ica_latents.shape)} must match the noisy latents "
                                 f"{tuple(noisy_latents.shape)}")
            s = ica_latents.flatten(0, 1) if video else ica_latents
            m = self._mask(ica_mask, b, f, video, h, w).to(s)

        flat = (lambda x: x.flatten(0, 1)) if video else (lambda x: x)
        # With render_channels = 0 (the ablation without I_R) the render is not shown to the UNet.
        render = flat(render_latents)[:, : self.config.render_channels]
        out = self.denoiser(flat(noisy_latents), timesteps, condition, render, s, m, num_frames=f if video else None)
        sample = out.unflatten(0, (b, f)) if video else out
        if return_dict:
            return MIMAFaceOutput(sample=sample, condition=condition, id_token=id_token, dropped=dropped)
        return sample

    def _drop_mask(self, drop: torch.Tensor | bool | None, b: int, device: torch.device) -> torch.Tensor:
        if drop is None:
            p = self.config.condition_dropout
            if self.training and p > 0:
                return torch.rand(b, device=device) < p
            return torch.zeros(b, dtype=torch.bool, device=device)
        if isinstance(drop, bool):
            return torch.full((b,), drop, dtype=torch.bool, device=device)
        drop = torch.as_tensor(drop, device=device).bool().view(-1)
        if drop.shape != (b,):
            raise ValueError(f"drop_condition must have one entry per sample ({b}), got {tuple(drop.shape)}")
        return drop

    @staticmethod
    def _mask(mask: torch.Tensor, b: int, f: int, video: bool, h: int, w: int) -> torch.Tensor:
        """Any of (B[,F]), (B[,F],1,h,w), (B[,F],1,1,1) -> (B*F, 1, h, w)."""
        lead = (b, f) if video else (b,)
        if tuple(mask.shape) == lead:
            mask = mask.view(*lead, 1, 1, 1)
        if tuple(mask.shape[: len(lead)]) != lead or mask.ndim != len(lead) + 3 or mask.shape[len(lead)] != 1:
            raise ValueError(f"ica_mask must be {lead} or {lead + (1, h, w)}, got {tuple(mask.shape)}")
        mask = mask.expand(*lead, 1, h, w)
        return mask.flatten(0, 1) if video else mask

    # ---- identity loss ----
    def identity_loss(self, source_image: torch.Tensor, identity_labels: torch.Tensor,
                      id_token: torch.Tensor | None = None, generator: torch.Generator | None = None,
                      enqueue: bool = True) -> torch.Tensor:
        """Eq. 2 for a batch of sources (B, 3, H, W) with integer identity labels (B,).

        ``id_token``: the sources' e_id from the same step's forward (``return_dict=True``), so CLIP
        runs only on the augmented views. Unweighted: scale by ``config.identity.weight``.
        """
        if self.identity is None:
            raise RuntimeError("the identity loss is disabled in this model's config (identity.enabled = False)")
        augmented = self.identity.augment(source_image, generator=generator)
        if id_token is None:
            _, tokens = self.encode_source(torch.cat([source_image, augmented]))
            id_token, augmented_token = tokens.chunk(2)
        else:
            _, augmented_token = self.encode_source(augmented)
        return self.identity(id_token, augmented_token, identity_labels, enqueue=enqueue)

    # ---- training stages ----
    def set_stage(self, stage: int) -> list[nn.Parameter]:
        """Set ``requires_grad`` for a training stage and return the trainable parameters.

        Stage 1 (images): UNet, CLIP, MIA (modulation, adapter, null condition) and the identity
        head train; motion modules and W_cond are frozen. Stage 2 (clips): only W_cond and the
        motion modules train; the UNet and the appearance branch are frozen.
        """
        if stage not in (1, 2):
            raise ValueError(f"stage must be 1 or 2, got {stage!r}")
        if stage == 2 and self.motion_adapter is None:
            raise ValueError("stage 2 trains the motion modules, but this model has none (config.motion_adapter is None)")
        self.requires_grad_(stage == 1)
        self.w_cond.requires_grad_(stage == 2)
        if self.motion_adapter is not None:
            self.motion_adapter.requires_grad_(stage == 2)
        self.stage = stage
        return self.trainable_parameters()

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def enable_gradient_checkpointing(self) -> None:
        """Checkpoint the UNet, the motion modules and CLIP's layers."""
        self.denoiser.enable_gradient_checkpointing()
        kwargs = {"use_reentrant": False}
        if hasattr(self.clip, "activation_checkpointing_enable"):  # transformers >= 5 (the old name warns)
            self.clip.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            self.clip.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)

    # ---- saving and loading ----
    def save_pretrained(self, directory: str | Path, **kwargs: Any) -> None:
        """Write the layout in this module's docstring (safetensors + JSON configs). Keyword arguments a
        pipeline passes (``safe_serialization``, ...) are accepted: weights are always safetensors."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        self.unet.save_pretrained(d / "unet")
        with loading.quiet_transformers():
            self.clip.save_pretrained(d / "appearance_encoder")
        if self.motion_adapter is not None:
            self.motion_adapter.save_pretrained(d / "motion_adapter")
        loading.save_module(self.mia, d / "mia", {"mia": self.config.to_dict()["mia"],
                                                  "clip_hidden_size": self.config.clip_hidden_size,
                                                  "cross_attention_dim": self.config.cross_attention_dim,
                                                  "num_patches": self.config.num_patches})
        loading.save_module(self.w_cond, d / "w_cond", {"in_channels": self.w_cond.in_channels,
                                                        "out_channels": self.w_cond.out_channels,
                                                        "kernel_size": self.config.ica.kernel_size})
        if self.identity is not None:
            loading.save_module(self.identity.head, d / "identity_head", {"identity": self.config.to_dict()["identity"]})
        # The config last: a folder with it is a complete model.
        (d / CONFIG_NAME).write_text(json.dumps(self.config.to_dict(), indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, directory: str | Path, torch_dtype: torch.dtype | None = None, **kwargs: Any) -> MIMAFaceModel:
        """Load a model written by :meth:`save_pretrained`. Raises ModelLoadError for a missing or wrong folder.

        ``torch_dtype``: e.g. ``torch.bfloat16``. The loading options diffusers' pipeline loader passes
        (``low_cpu_mem_usage``, ``variant``, ...) are accepted; a device map is not supported."""
        if kwargs.get("device_map") is not None:
            raise ModelLoadError("MIMAFaceModel does not support device_map; load it, then call .to(device)")
        dtype = kwargs.get("dtype") or torch_dtype  # diffusers >= 0.36 says dtype
        d = Path(directory)
        if not d.is_dir():
            raise ModelLoadError(f"MIMAFace model folder '{d}' does not exist; expected {SAVED_HOW}")
        path = d / CONFIG_NAME
        if not path.is_file():
            raise ModelLoadError(f"'{d}' has no {CONFIG_NAME}, so it is not a saved MIMAFace model; expected {SAVED_HOW}")
        try:
            config = MIMAFaceConfig.from_dict(json.loads(path.read_text()))
        except (OSError, ValueError, TypeError) as exc:
            raise ModelLoadError(f"'{path}' is not a valid MIMAFace config ({exc}); expected {SAVED_HOW}") from None
        wanted = config.latent_channels + config.render_channels
        unet = loading.load_unet(d / "unet", (wanted,), "MIMAFace UNet", SAVED_HOW)
        clip = loading.load_clip_vision(d / "appearance_encoder", "MIMAFace appearance encoder", SAVED_HOW)
        adapter = None
        if config.motion_adapter is not None:
            adapter = loading.load_motion_adapter(d / "motion_adapter", "MIMAFace motion adapter", SAVED_HOW)
        model = cls(config, unet=unet, clip=clip, motion_adapter=adapter)
        loading.load_module(model.mia, d / "mia", "MIA", SAVED_HOW)
        loading.load_module(model.w_cond, d / "w_cond", "W_cond", SAVED_HOW)
        if model.identity is not None:
            loading.load_module(model.identity.head, d / "identity_head", "identity head", SAVED_HOW)
        if dtype is not None:
            # nn.Module.to: ModelMixin.to warns about fp32 modules even when there are none.
            nn.Module.to(model, dtype)
        return model.eval()

    @classmethod
    def from_components(cls, sd15_dir: str | Path, clip_dir: str | Path, motion_adapter_dir: str | Path | None = None,
                        config: MIMAFaceConfig | None = None, dtype: torch.dtype | None = None,
                        variant: str | None = None) -> MIMAFaceModel:
        """The paper's starting point: SD-1.5 (``sd15_dir`` with ``unet/`` and ``vae/``), CLIP
        (``clip_dir``), optionally AnimateDiff (``motion_adapter_dir``: a MotionAdapter folder or
        AnimateDiff's ``.ckpt``). Without one, fresh motion modules (zero-initialised output
        projections) are built when ``config.motion_adapter`` is set.

        ``config`` (default ``MIMAFaceConfig.sd15()``) supplies the MIA / identity / ICA settings;
        the component configs are taken from the folders. New parts are zero-initialised, so the
        UNet computes exactly what SD-1.5's does (for the same cross-attention condition) until
        trained. Returned in eval mode, like diffusers/transformers models; call ``.train()``.
        """
        config = copy.deepcopy(config) if config is not None else MIMAFaceConfig.sd15()
        sd15 = Path(sd15_dir)
        if not sd15.is_dir():
            state = "is a file, not a folder" if sd15.exists() else "does not exist"
            raise ModelLoadError(f"Stable Diffusion 1.5 folder '{sd15}' {state}; expected {loading.SD15_HOW}")
        unet = loading.load_unet(sd15 / "unet", (config.latent_channels,), "SD-1.5 UNet", loading.SD15_HOW,
                                 dtype=dtype, variant=variant)
        vae_config = loading.read_config(sd15 / "vae", "SD-1.5 VAE", loading.SD15_HOW)
        if vae_config.get("_class_name") != "AutoencoderKL":
            raise ModelLoadError(f"'{sd15 / 'vae'}' holds {vae_config.get('_class_name', 'an unknown model')}, not an AutoencoderKL; "
                                 f"expected {loading.SD15_HOW}")
        if vae_config.get("latent_channels") != unet.config.in_channels:
            raise ModelLoadError(f"the VAE in '{sd15 / 'vae'}' has {vae_config.get('latent_channels')} latent channels but "
                                 f"the UNet takes {unet.config.in_channels}; expected {loading.SD15_HOW}")
        clip = loading.load_clip_vision(Path(clip_dir), dtype=dtype)
        adapter = None
        if motion_adapter_dir is not None:
            adapter = loading.load_motion_adapter(Path(motion_adapter_dir), dtype=dtype)
        elif config.motion_adapter is not None:
            logger.info("no motion adapter given: motion modules start from scratch (zero-initialised outputs)")

        config.unet = _public(unet.config)
        config.vae = _public(vae_config)
        config.appearance_encoder = {k: getattr(clip.config, k) for k in _CLIP_KEYS}
        if adapter is not None:
            config.motion_adapter = _public(adapter.config)
        elif config.motion_adapter is not None:
            # Fresh motion modules shaped for the loaded UNet.
            config.motion_adapter["block_out_channels"] = list(unet.config.block_out_channels)
            config.motion_adapter["motion_layers_per_block"] = unet.config.layers_per_block
            config.motion_adapter["motion_norm_num_groups"] = unet.config.norm_num_groups
        try:
            model = cls(config, unet=unet, clip=clip, motion_adapter=adapter)
        except ModelLoadError as exc:
            raise ModelLoadError(f"{exc} (UNet from '{sd15 / 'unet'}', adapter from '{motion_adapter_dir}'); "
                                 f"expected {loading.ADAPTER_HOW} for an SD-1.5 UNet") from None
        if dtype is not None:
            model.to(dtype)
        return model.eval()
