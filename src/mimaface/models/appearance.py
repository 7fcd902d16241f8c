"""The appearance branch: the CLIP vision encoder and MIA (motion modulation + adapter f).

Paper, "Motion-Identity Modulated Appearance Learning Module": the source image goes through
CLIP; the patch tokens ``e_tex`` are modulated by the motion coefficients (eq. 1)::

    e'_tex = e_tex + CrossAttn(q = e_tex, k = v = [rho; beta; g])

and ``[e'_tex ; e_id]`` go through the adapter ``f`` (a 3-layer transformer) and a projection to
the UNet's cross-attention width. That sequence replaces the text condition of Stable Diffusion.

Coefficient tokens: eq. 1 uses ``[rho; beta; g]`` itself as the key/value *sequence*, so each
coefficient is one token: ``token_i = x_i * w_i + b_i`` with a learned embedding ``w_i`` per
coefficient scaled by its (normalised) value ``x_i``, plus a learned per-coefficient bias ``b_i``
(the coefficient's "name", so a coefficient at 0 is still a distinct key rather than a zero
vector). A patch token can then attend to the few coefficients that move its region (``jawOpen``
for a mouth patch, gaze for an eye patch) instead of to one pooled motion vector; 46 tokens of
CLIP width cost nothing next to the 256 patches.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.attention_processor import Attention
from torch import nn

from mimaface.models.config import MIAConfig


class AppearanceEncoder(nn.Module):
    """CLIP vision tower (``transformers.CLIPVisionModel``) returning ``(e_tex, e_id)``.

    Takes RGB images in ``[0, 1]`` of any size, ``(N, 3, H, W)``; resizes them to CLIP's input
    size and applies CLIP's normalisation, so callers never handle CLIP preprocessing.
    """

    def __init__(self, clip: nn.Module, image_mean: tuple[float, ...], image_std: tuple[float, ...],
                 hidden_layer: int = -1) -> None:
        super().__init__()
        self.clip = clip
        self.hidden_layer = hidden_layer
        self.register_buffer("image_mean", torch.tensor(image_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("image_std", torch.tensor(image_std).view(1, 3, 1, 1), persistent=False)

    @property
    def image_size(self) -> int:
        return int(self.clip.config.image_size)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"source images must be (N, 3, H, W) RGB in [0, 1], got {tuple(images.shape)}")
        size = self.image_size
        # In fp32 whatever the model's dtype: antialiased bicubic resizing has no bf16 kernel on the CPU.
        images = images.float()
        if images.shape[-2:] != (size, size):
            images = F.interpolate(images, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
        return (images - self.image_mean.float()) / self.image_std.float()

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``images`` (N, 3, H, W) in [0, 1] -> ``e_tex`` (N, P, C) patch tokens, ``e_id`` (N, C) class token."""
        pixel_values = self.preprocess(images).to(self.clip.dtype)
        want_hidden = self.hidden_layer != -1
        out = self.clip(pixel_values=pixel_values, output_hidden_states=want_hidden)
        hidden = out.hidden_states[self.hidden_layer] if want_hidden else out.last_hidden_state
        # CLIP's final LayerNorm on every token: e_id is then exactly CLIP's pooled output, the
        # patch tokens share its scale, and every CLIP parameter takes part (no unused parameters
        # under DistributedDataParallel). transformers 4 nests the tower under ``vision_model``.
        tower = getattr(self.clip, "vision_model", self.clip)
        hidden = tower.post_layernorm(hidden)
        return hidden[:, 1:], hidden[:, 0]


class CoefficientTokenizer(nn.Module):
    """One token per motion coefficient: ``token_i = x_i * w_i + b_i`` (see the module docstring)."""

    def __init__(self, num_coefficients: int, dim: int) -> None:
        super().__init__()
        # N(0, 1) like nn.Embedding: tokens at the scale of LayerNorm-ed hidden states.
        self.weight = nn.Parameter(torch.randn(num_coefficients, dim))
        self.bias = nn.Parameter(torch.randn(num_coefficients, dim))

    def forward(self, coefficients: torch.Tensor) -> torch.Tensor:
        """(N, K) normalised coefficients -> (N, K, dim) tokens."""
        return coefficients.unsqueeze(-1).to(self.weight.dtype) * self.weight + self.bias


class MotionModulation(nn.Module):
    """Eq. 1: ``e'_tex = e_tex + CrossAttn(LN(e_tex), tokens([rho; beta; g]))``.

    The attention's output projection is zero-initialised, so ``e'_tex == e_tex`` exactly at the
    start and CLIP's pretrained features reach the adapter unchanged.
    """

    def __init__(self, dim: int, num_coefficients: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"modulation heads ({heads}) must divide the CLIP width ({dim})")
        self.tokenizer = CoefficientTokenizer(num_coefficients, dim)
        self.norm = nn.LayerNorm(dim)
        self.attn = Attention(query_dim=dim, cross_attention_dim=dim, heads=heads, dim_head=dim // heads,
                              bias=True, out_bias=True)
        nn.init.zeros_(self.attn.to_out[0].weight)
        nn.init.zeros_(self.attn.to_out[0].bias)

    def forward(self, e_tex: torch.Tensor, coefficients: torch.Tensor) -> torch.Tensor:
        tokens = self.tokenizer(coefficients)
        return e_tex + self.attn(self.norm(e_tex), encoder_hidden_states=tokens)


class GroupTokens(nn.Module):
    """The authors' release: each coefficient group linearly projected to one token (for "concat")."""

    def __init__(self, config: MIAConfig, dim: int) -> None:
        super().__init__()
        self.pose = nn.Linear(config.pose_dim, dim)
        self.expression = nn.Linear(config.expression_dim, dim)
        self.gaze = nn.Linear(config.gaze_dim, dim)
        self.sizes = (config.pose_dim, config.expression_dim, config.gaze_dim)

    def forward(self, coefficients: torch.Tensor) -> torch.Tensor:
        pose, expression, gaze = coefficients.split(self.sizes, dim=-1)
        return torch.stack([self.pose(pose), self.expression(expression), self.gaze(gaze)], dim=1)


class AppearanceAdapter(nn.Module):
    """The adapter ``f``: in-projection, ``layers`` transformer blocks, projection to the UNet's
    cross-attention width, LayerNorm (as the authors' release ends it)."""

    def __init__(self, in_dim: int, dim: int, out_dim: int, layers: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"adapter heads ({heads}) must divide the adapter width ({dim})")
        self.proj_in = nn.Linear(in_dim, dim)
        self.blocks = nn.ModuleList(
            BasicTransformerBlock(dim, heads, dim // heads, activation_fn="gelu", attention_bias=True)
            for _ in range(layers)
        )
        self.proj_out = nn.Linear(dim, out_dim)
        self.norm_out = nn.LayerNorm(out_dim)

    def forward(self, tokens: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        hidden = self.proj_in(tokens)
        if extra is not None:  # tokens already at adapter width (the "concat" variant's motion tokens)
            hidden = torch.cat([hidden, extra], dim=1)
        for block in self.blocks:
            hidden = block(hidden)
        return self.norm_out(self.proj_out(hidden))


class MotionIdentityAppearance(nn.Module):
    """MIA after CLIP: motion modulation of ``e_tex`` and the adapter ``f`` -> the UNet condition.

    Also holds the classifier-free-guidance null condition (:meth:`null`).
    """

    def __init__(self, config: MIAConfig, clip_dim: int, cross_attention_dim: int, num_patches: int) -> None:
        super().__init__()
        self.config = config
        adapter_dim = config.adapter_dim or cross_attention_dim
        shift = torch.cat([torch.tensor(config.pose_shift, dtype=torch.float32),
                           torch.zeros(config.expression_dim + config.gaze_dim)])
        scale = torch.cat([torch.tensor(config.pose_scale, dtype=torch.float32),
                           torch.full((config.expression_dim,), float(config.expression_scale)),
                           torch.full((config.gaze_dim,), float(config.gaze_scale))])
        if shift.numel() != config.num_coefficients or scale.numel() != config.num_coefficients:
            raise ValueError("pose_shift / pose_scale must have pose_dim entries")
        self.register_buffer("coefficient_shift", shift, persistent=False)
        self.register_buffer("coefficient_scale", scale, persistent=False)

        if config.modulation == "cross_attention":
            self.modulation: MotionModulation | None = MotionModulation(clip_dim, config.num_coefficients,
                                                                        config.modulation_heads)
            self.group_tokens: GroupTokens | None = None
            length = num_patches + 1
        elif config.modulation == "concat":
            self.modulation = None
            self.group_tokens = GroupTokens(config, adapter_dim)
            length = num_patches + 1 + 3
        elif config.modulation == "none":  # the ablation: motion reaches the UNet through I_R only
            self.modulation = None
            self.group_tokens = None
            length = num_patches + 1
        else:
            raise ValueError(f"unknown MIA modulation {config.modulation!r} (use 'cross_attention', 'concat' or 'none')")
        self.adapter = AppearanceAdapter(clip_dim, adapter_dim, cross_attention_dim, config.adapter_layers,
                                         config.adapter_heads)
        null = torch.zeros(length, cross_attention_dim)
        if config.null_condition == "learned":
            self.null_condition = nn.Parameter(null)
        elif config.null_condition == "zero":
            self.register_buffer("null_condition", null, persistent=False)
        else:
            raise ValueError(f"unknown null_condition {config.null_condition!r} (use 'learned' or 'zero')")

    def normalize_coefficients(self, pose: torch.Tensor, expression: torch.Tensor, gaze: torch.Tensor) -> torch.Tensor:
        """(N, 6), (N, K), (N, 4) raw coefficients -> (N, 6+K+4) normalised."""
        c = self.config
        for name, value, size in (("pose", pose, c.pose_dim), ("expression", expression, c.expression_dim),
                                  ("gaze", gaze, c.gaze_dim)):
            if value.shape[-1] != size:
                raise ValueError(f"{name} must have {size} values per frame, got shape {tuple(value.shape)}")
        raw = torch.cat([pose, expression, gaze], dim=-1).to(self.coefficient_scale.dtype)
        return (raw - self.coefficient_shift) * self.coefficient_scale

    def modulate(self, e_tex: torch.Tensor, coefficients: torch.Tensor) -> torch.Tensor:
        """Eq. 1 (identity for "concat", whose motion enters in :meth:`forward`, and for "none")."""
        return e_tex if self.modulation is None else self.modulation(e_tex, coefficients)

    def forward(self, e_tex: torch.Tensor, e_id: torch.Tensor, pose: torch.Tensor, expression: torch.Tensor,
                gaze: torch.Tensor) -> torch.Tensor:
        """Per-sample tokens and coefficients (all with the same leading N) -> (N, L, cross_dim)."""
        coefficients = self.normalize_coefficients(pose, expression, gaze).to(e_tex.dtype)
        tokens = torch.cat([self.modulate(e_tex, coefficients), e_id.unsqueeze(1)], dim=1)
        extra = None if self.group_tokens is None else self.group_tokens(coefficients)
        return self.adapter(tokens, extra)

    def null(self, batch_size: int) -> torch.Tensor:
        """The null condition for classifier-free guidance, (batch_size, L, cross_dim)."""
        return self.null_condition.unsqueeze(0).expand(batch_size, -1, -1)
