"""The conditioned denoising UNet: render concat, ICA's W_cond, AnimateDiff motion modules.

* **Render latent.** ``conv_in`` of diffusers' SD-1.5 ``UNet2DConditionModel`` is widened from 4
  to 8 input channels; the new weights are zero, so a pretrained UNet computes what it did.
* **W_cond (ICA).** One zero-initialised conv over ``[s ; m]`` (latent channels of the preceding
  frames' latents + 1 mask channel) whose output is *added to conv_in's output*. Convolution is
  linear, so this equals extra zero-initialised ``conv_in`` input channels (the authors' release
  widens conv_in to 13); a separate module lets stage 2 train W_cond while the UNet is frozen.
* **Motion modules.** diffusers' ``MotionAdapter`` (AnimateDiff) holds the temporal transformers,
  so an AnimateDiff SD-1.5 adapter folder loads as it is. They run exactly where diffusers'
  ``UNetMotionModel`` runs them -- after each spatial transformer of the cross-attention blocks,
  after each resnet of the plain blocks, after each mid-block attention -- through forward hooks
  on the unchanged ``UNet2DConditionModel``. The UNet keeps SD-1.5's module tree and weight names
  (it saves and loads as a plain diffusers UNet), and image mode simply does not call them.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.utils.checkpoint
from diffusers import MotionAdapter, UNet2DConditionModel
from torch import nn

from mimaface.errors import ModelLoadError


def widen_conv_in(unet: UNet2DConditionModel, in_channels: int) -> None:
    """Give ``unet.conv_in`` ``in_channels`` inputs; the added input weights are zero."""
    old = unet.conv_in
    if old.in_channels == in_channels:
        return
    if old.in_channels > in_channels:
        raise ValueError(f"conv_in already has {old.in_channels} > {in_channels} input channels")
    new = nn.Conv2d(in_channels, old.out_channels, old.kernel_size, old.stride, old.padding,
                    device=old.weight.device, dtype=old.weight.dtype)
    with torch.no_grad():
        new.weight.zero_()
        new.weight[:, : old.in_channels].copy_(old.weight)
        new.bias.copy_(old.bias)
    unet.conv_in = new
    unet.register_to_config(in_channels=in_channels)  # so save_pretrained writes the widened UNet


def motion_modules(adapter: MotionAdapter) -> list[nn.Module]:
    """Every temporal transformer (``AnimateDiffTransformer3D``) of an adapter."""
    blocks = list(adapter.down_blocks) + ([adapter.mid_block] if adapter.mid_block is not None else []) + list(
        adapter.up_blocks)
    return [module for block in blocks for module in block.motion_modules]


def zero_init_motion_modules(adapter: MotionAdapter) -> None:
    """Zero each temporal transformer's output projection (AnimateDiff's ``zero_initialize``), so
    a fresh adapter adds nothing until trained."""
    for module in motion_modules(adapter):
        nn.init.zeros_(module.proj_out.weight)
        nn.init.zeros_(module.proj_out.bias)


def _layers_of(block: nn.Module) -> nn.ModuleList:
    """The sub-modules after which a motion module runs (AnimateDiff's placement)."""
    attentions = getattr(block, "attentions", None)
    return attentions if attentions is not None else block.resnets


def motion_adapter_problems(unet: UNet2DConditionModel, adapter: MotionAdapter) -> list[str]:
    """Why ``adapter`` cannot drive ``unet`` (empty when it fits)."""
    ucfg, acfg = unet.config, adapter.config
    problems = []
    if list(acfg.block_out_channels) != list(ucfg.block_out_channels):
        problems.append(f"block_out_channels {list(acfg.block_out_channels)} != UNet's {list(ucfg.block_out_channels)}")
    if acfg.conv_in_channels:
        problems.append("adapters with their own conv_in (conv_in_channels) are not supported")
    if problems:
        return problems
    for i, (block, mm) in enumerate(zip(unet.down_blocks, adapter.down_blocks)):
        if len(_layers_of(block)) != len(mm.motion_modules):
            problems.append(f"down block {i}: {len(mm.motion_modules)} motion modules for {len(_layers_of(block))} layers")
    for i, (block, mm) in enumerate(zip(unet.up_blocks, adapter.up_blocks)):
        if len(_layers_of(block)) != len(mm.motion_modules):
            problems.append(f"up block {i}: {len(mm.motion_modules)} motion modules for {len(_layers_of(block))} layers")
    if adapter.mid_block is not None:
        attentions = getattr(unet.mid_block, "attentions", None)
        if attentions is None or len(attentions) != len(adapter.mid_block.motion_modules):
            problems.append("the adapter's mid-block motion modules do not match the UNet's mid block")
    return problems


class _MotionHook:
    """Forward hook: apply one motion module to a UNet layer's output in video mode.

    A callable object rather than a closure so ``copy.deepcopy`` (EMA copies) re-targets it to the
    copied model, and so it pickles.
    """

    def __init__(self, owner: ConditionedUNet, path: tuple[str, int, int]) -> None:
        self.owner = owner
        self.path = path

    def __call__(self, module: nn.Module, args: Any, output: Any) -> Any:
        frames = self.owner._num_frames
        if frames is None:
            return None  # image mode: the layer's output as it is
        part, block, layer = self.path
        adapter = self.owner.motion_adapter
        container = adapter.mid_block if part == "mid_block" else getattr(adapter, part)[block]
        motion = container.motion_modules[layer]
        hidden = output[0] if isinstance(output, tuple) else getattr(output, "sample", output)
        if self.owner._checkpoint_motion and torch.is_grad_enabled():
            hidden = torch.utils.checkpoint.checkpoint(motion, hidden, num_frames=frames, use_reentrant=False)
        else:
            hidden = motion(hidden, num_frames=frames)
        if isinstance(output, tuple):
            return (hidden,) + tuple(output[1:])
        if isinstance(output, torch.Tensor):
            return hidden
        output.sample = hidden
        return output


class _ConvInHook:
    """Forward hook on ``conv_in``: add W_cond's output (ICA) when the current forward has one."""

    def __init__(self, owner: ConditionedUNet) -> None:
        self.owner = owner

    def __call__(self, module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor | None:
        residual = self.owner._ica_residual
        return None if residual is None else output + residual


class ConditionedUNet(nn.Module):
    """SD-1.5 UNet + render channels + W_cond + optional AnimateDiff motion modules.

    ``forward`` takes frames flattened into the batch, ``(B*F, C, h, w)`` with the frames of a
    clip consecutive (diffusers' ``UNetMotionModel`` layout after its reshape); ``num_frames=None``
    is image mode (no motion modules).
    """

    def __init__(self, unet: UNet2DConditionModel, motion_adapter: MotionAdapter | None = None, *,
                 latent_channels: int = 4, render_channels: int = 4, ica_kernel_size: int = 3) -> None:
        super().__init__()
        wanted = latent_channels + render_channels
        if unet.config.in_channels not in (latent_channels, wanted):
            raise ModelLoadError(
                f"the UNet has {unet.config.in_channels} input channels; MIMAFace needs a text-to-image UNet with "
                f"{latent_channels} (an SD-1.5 'unet/' folder) or a MIMAFace UNet with {wanted}")
        if unet.config.out_channels != latent_channels:
            raise ModelLoadError(f"the UNet predicts {unet.config.out_channels} channels, not {latent_channels}")
        widen_conv_in(unet, wanted)
        self.unet = unet
        self.latent_channels = latent_channels
        self.render_channels = render_channels
        if motion_adapter is not None:
            problems = motion_adapter_problems(unet, motion_adapter)
            if problems:
                raise ModelLoadError("the motion adapter does not fit the UNet: " + "; ".join(problems))
        self.motion_adapter = motion_adapter
        width = unet.config.block_out_channels[0]
        if ica_kernel_size % 2 != 1:
            raise ValueError("the W_cond kernel size must be odd (it keeps the latent size)")
        self.w_cond = nn.Conv2d(latent_channels + 1, width, ica_kernel_size, padding=ica_kernel_size // 2, bias=False,
                                device=unet.conv_in.weight.device, dtype=unet.conv_in.weight.dtype)
        nn.init.zeros_(self.w_cond.weight)

        # Per-forward state read by the hooks. _num_frames stays set after a forward on purpose:
        # gradient checkpointing may re-run a hooked layer during that forward's backward.
        self._num_frames: int | None = None
        self._ica_residual: torch.Tensor | None = None
        self._checkpoint_motion = False
        unet.conv_in.register_forward_hook(_ConvInHook(self))
        if motion_adapter is not None:
            self._register_motion_hooks()

    def _register_motion_hooks(self) -> None:
        for part in ("down_blocks", "up_blocks"):
            for i, block in enumerate(getattr(self.unet, part)):
                for j, layer in enumerate(_layers_of(block)):
                    layer.register_forward_hook(_MotionHook(self, (part, i, j)))
        if self.motion_adapter.mid_block is not None:
            for j, attention in enumerate(self.unet.mid_block.attentions):
                attention.register_forward_hook(_MotionHook(self, ("mid_block", 0, j)))

    @property
    def max_frames(self) -> int | None:
        return None if self.motion_adapter is None else int(self.motion_adapter.config.motion_max_seq_length)

    def enable_gradient_checkpointing(self) -> None:
        """Checkpoint the UNet's resnets/transformers and each motion module."""
        self.unet.enable_gradient_checkpointing()
        self._checkpoint_motion = True
        if self.motion_adapter is not None:
            # A motion hook on a checkpointed resnet would re-run inside its recomputation; those
            # blocks (SD's lowest resolution, 8x8 latents) are cheap to keep.
            for block in list(self.unet.down_blocks) + list(self.unet.up_blocks):
                if getattr(block, "attentions", None) is None:
                    block.gradient_checkpointing = False

    def disable_gradient_checkpointing(self) -> None:
        self.unet.disable_gradient_checkpointing()
        self._checkpoint_motion = False

    def ica_residual(self, ica_latents: torch.Tensor, ica_mask: torch.Tensor) -> torch.Tensor:
        """W_cond([s ; m]): (N, C, h, w) latents and (N, 1, h, w) mask -> (N, width, h, w)."""
        if ica_latents.shape[1] != self.latent_channels or ica_mask.shape[1] != 1:
            raise ValueError(f"ICA latents must have {self.latent_channels} channels and the mask 1, got "
                             f"{tuple(ica_latents.shape)} and {tuple(ica_mask.shape)}")
        return self.w_cond(torch.cat([ica_latents, ica_mask], dim=1).to(self.w_cond.weight.dtype))

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
                render_latents: torch.Tensor, ica_latents: torch.Tensor | None = None,
                ica_mask: torch.Tensor | None = None, num_frames: int | None = None) -> torch.Tensor:
        """Noise prediction (N, C, h, w) for noisy latents ``sample`` and render latents (N, C, h, w).

        ``ica_latents`` / ``ica_mask``: W_cond's input (both or neither). ``num_frames``: frames per
        clip in video mode (motion modules on), None for images.
        """
        if render_latents.shape[1] != self.render_channels or render_latents.shape[0] != sample.shape[0]:
            raise ValueError(f"render latents {tuple(render_latents.shape)} do not match the noisy latents "
                             f"{tuple(sample.shape)} ({self.render_channels} channels)")
        if (ica_latents is None) != (ica_mask is None):
            raise ValueError("pass both ica_latents and ica_mask, or neither")
        if num_frames is not None:
            if sample.shape[0] % num_frames:
                raise ValueError(f"batch of {sample.shape[0]} frames is not a whole number of {num_frames}-frame clips")
            if self.motion_adapter is None:
                num_frames = None  # no motion modules: frames are denoised independently
            elif num_frames > self.max_frames:
                raise ValueError(f"clips of {num_frames} frames exceed the motion modules' {self.max_frames}")
        residual = None if ica_latents is None else self.ica_residual(ica_latents, ica_mask)
        self._num_frames = num_frames
        self._ica_residual = residual
        try:
            x = torch.cat([sample, render_latents.to(sample.dtype)], dim=1)
            return self.unet(x, timestep, encoder_hidden_states, return_dict=False)[0]
        finally:
            self._ica_residual = None
