"""Dataclass configs of the MIMAFace network, at two scales from one code path.

``MIMAFaceConfig.sd15()`` is the paper's network: the Stable Diffusion 1.5 UNet, the CLIP
ViT-L/14 vision tower and an AnimateDiff v3 (``v3_sd15_mm``) motion adapter. When the model is
built from pretrained folders (:meth:`MIMAFaceModel.from_components`) the component configs are
read from those folders; the dicts here are the real configs, used to build the same shapes
without weights (tests, the meta device).

``MIMAFaceConfig.tiny()`` has the same structure with widths a CPU can train (for
64 px data, 4 latent channels at /4 through a tiny VAE whose config is :attr:`MIMAFaceConfig.vae`).

Everything JSON-serialises (:meth:`MIMAFaceConfig.to_dict` / :meth:`MIMAFaceConfig.from_dict`),
which is how ``save_pretrained`` stores it.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

# --- The real configs of the pretrained components (diffusers / transformers keyword arguments) ---

#: ``stable-diffusion-v1-5/stable-diffusion-v1-5`` ``unet/config.json`` (859,520,964 parameters).
SD15_UNET_CONFIG: dict[str, Any] = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "center_input_sample": False,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "block_out_channels": [320, 640, 1280, 1280],
    "layers_per_block": 2,
    "downsample_padding": 1,
    "mid_block_scale_factor": 1,
    "act_fn": "silu",
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
}

#: ``stable-diffusion-v1-5`` ``vae/config.json`` (the model never runs it; pipelines and the trainer do).
SD15_VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "act_fn": "silu",
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 512,
    "scaling_factor": 0.18215,
}

#: ``openai/clip-vit-large-patch14`` vision tower (``CLIPVisionConfig``; 303,179,776 parameters).
CLIP_VIT_L14_VISION_CONFIG: dict[str, Any] = {
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "projection_dim": 768,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "num_channels": 3,
    "image_size": 224,
    "patch_size": 14,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
}

#: AnimateDiff v3 motion adapter (``v3_sd15_mm``, as the authors used; diffusers ``MotionAdapter``).
#: v3 has no motion module in the UNet's mid block (``motion_module_mid_block: false``).
ANIMATEDIFF_V3_ADAPTER_CONFIG: dict[str, Any] = {
    "block_out_channels": [320, 640, 1280, 1280],
    "motion_layers_per_block": 2,
    "motion_transformer_layers_per_block": 1,
    "motion_mid_block_layers_per_block": 1,
    "motion_transformer_layers_per_mid_block": 1,
    "motion_num_attention_heads": 8,
    "motion_norm_num_groups": 32,
    "motion_max_seq_length": 32,
    "use_motion_mid_block": False,
    "conv_in_channels": None,
}

# --- Tiny scale: same block types and wiring, CPU-sized widths ---

TINY_UNET_CONFIG: dict[str, Any] = {
    "sample_size": 16,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "block_out_channels": [32, 64, 64],
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "cross_attention_dim": 64,
    "attention_head_dim": 4,
}

#: A /4 VAE for 64 px data (16x16x4 latents, 12x fewer numbers than pixels; SD-1.5's is /8 at 512 px):
#: ``mimaface train --stage vae`` trains it and sets its ``scaling_factor`` from the data.
TINY_VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 3,
    "up_block_types": ["UpDecoderBlock2D"] * 3,
    "block_out_channels": [32, 64, 64],
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 8,
    "sample_size": 64,
    "scaling_factor": 1.0,
}

TINY_CLIP_VISION_CONFIG: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "projection_dim": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_channels": 3,
    "image_size": 64,
    "patch_size": 8,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
}

TINY_MOTION_ADAPTER_CONFIG: dict[str, Any] = {
    "block_out_channels": [32, 64, 64],
    "motion_layers_per_block": 1,
    "motion_transformer_layers_per_block": 1,
    "motion_mid_block_layers_per_block": 1,
    "motion_transformer_layers_per_mid_block": 1,
    "motion_num_attention_heads": 2,
    "motion_norm_num_groups": 8,
    "motion_max_seq_length": 32,
    "use_motion_mid_block": True,
    "conv_in_channels": None,
}

#: OpenAI CLIP's pixel normalisation (``CLIPImageProcessor``).
CLIP_IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class AugmentConfig:
    """Photometric augmentations for the identity contrastive loss (each on/off, with a probability).

    They change pixel colours only, never geometry: the augmented image keeps the source's
    structure, so (source, augmented) is a positive pair that differs "in pixels"."""

    grayscale: bool = True
    grayscale_p: float = 0.2
    color_jitter: bool = True
    color_jitter_p: float = 0.8
    brightness: float = 0.3  # factor in [1-b, 1+b]
    saturation: float = 0.3
    hue: float = 0.05  # fraction of a full hue turn
    contrast: bool = True
    contrast_p: float = 0.5
    contrast_strength: float = 0.3
    # filters: one of the enabled ones is applied with probability filter_p
    edge_enhance: bool = True
    blur: bool = True
    sharpen: bool = True
    filter_p: float = 0.5
    blur_sigma: tuple[float, float] = (0.5, 1.5)
    lighting: bool = True  # directional low-frequency gain plus a colour cast
    lighting_p: float = 0.5
    lighting_strength: float = 0.3
    noise: bool = True
    noise_p: float = 0.3
    noise_std: float = 0.04
    vignette: bool = True
    vignette_p: float = 0.3
    vignette_strength: float = 0.5


@dataclass
class IdentityLossConfig:
    """Identity contrastive loss (paper eq. 2): InfoNCE over cosine similarity of ID tokens."""

    enabled: bool = True
    weight: float = 0.1  # the paper gives none; multiply the returned loss by this
    temperature: float = 0.07
    bank_size: int = 4096  # ID tokens kept in the memory bank (raw e_id, projected on use)
    head: Literal["mlp", "linear", "none"] = "mlp"  # projection head before the cosine similarity
    head_hidden_dim: int = 1024
    head_dim: int = 128
    enqueue_augmented: bool = False  # also store the augmented views' tokens in the bank
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class MIAConfig:
    """Motion-Identity modulated Appearance: motion modulation of the CLIP tokens and the adapter f."""

    # "cross_attention": the paper's eq. 1. "concat": the authors' release (one linear token per
    # coefficient group appended to the adapter's input sequence), kept for comparison. "none": no
    # coefficient modulation (the paper's ablation; motion enters through I_R only).
    modulation: Literal["cross_attention", "concat", "none"] = "cross_attention"
    pose_dim: int = 6  # yaw, pitch, roll (degrees), tx, ty, scale
    expression_dim: int = 36  # blendshape coefficients in [0, 1]
    gaze_dim: int = 4  # leftX, leftY, rightX, rightY
    # Coefficients are normalised as (x - shift) * scale to roughly [-1, 1] before embedding.
    pose_shift: tuple[float, ...] = (0.0, 0.0, 0.0, 0.0, 0.0, 0.9)
    pose_scale: tuple[float, ...] = (1 / 30, 1 / 30, 1 / 30, 5.0, 5.0, 5.0)
    expression_scale: float = 1.0
    gaze_scale: float = 5.0
    modulation_heads: int = 8
    clip_hidden_layer: int = -1  # which CLIP layer's tokens are e_tex / e_id (-1: the last)
    adapter_layers: int = 3  # the paper's "3-layer transformer"
    adapter_dim: int | None = None  # transformer width; None: the UNet's cross-attention width
    adapter_heads: int = 8
    # "learned": a zero-initialised learned null condition (starts as the authors' zeros, then is
    # trained on the dropped 10 %); "zero": a fixed all-zero condition.
    null_condition: Literal["learned", "zero"] = "learned"

    @property
    def num_coefficients(self) -> int:
        return self.pose_dim + self.expression_dim + self.gaze_dim


@dataclass
class ICAConfig:
    """Inter-clip affinity: the W_cond conv and how training picks the k conditioning frames."""

    kernel_size: int = 3  # W_cond: one conv, same kernel as conv_in (so it equals extra conv_in channels)
    noise_std: float = 0.1  # sigma of eq. 4
    # "uniform": k ~ U{0..k_max} (paper eq. 3, k_max = floor(F * k_max_fraction) unless k_max is set).
    # "authors": k = 0 with probability 1 - p_nonzero, else k ~ U{authors_k_min..authors_k_max}.
    k_distribution: Literal["uniform", "authors"] = "uniform"
    k_max_fraction: float = 0.25
    k_max: int | None = None
    p_nonzero: float = 0.5
    authors_k_min: int = 1
    authors_k_max: int = 4


_SUBCONFIGS = {"mia": MIAConfig, "identity": IdentityLossConfig, "ica": ICAConfig}


@dataclass
class MIMAFaceConfig:
    """The whole network. Component dicts are diffusers/transformers keyword arguments."""

    scale: str = "tiny"
    unet: dict[str, Any] = field(default_factory=lambda: copy.deepcopy(TINY_UNET_CONFIG))  # base UNet, 4 input channels
    appearance_encoder: dict[str, Any] = field(default_factory=lambda: copy.deepcopy(TINY_CLIP_VISION_CONFIG))
    motion_adapter: dict[str, Any] | None = field(default_factory=lambda: copy.deepcopy(TINY_MOTION_ADAPTER_CONFIG))
    vae: dict[str, Any] | None = field(default_factory=lambda: copy.deepcopy(TINY_VAE_CONFIG))
    render_channels: int = 4  # the I_R latent concatenated with z_t; 0 = the ablation without I_R
    image_mean: tuple[float, float, float] = CLIP_IMAGE_MEAN
    image_std: tuple[float, float, float] = CLIP_IMAGE_STD
    condition_dropout: float = 0.1  # classifier-free guidance: P(appearance condition -> null) in training
    mia: MIAConfig = field(default_factory=MIAConfig)
    identity: IdentityLossConfig = field(default_factory=IdentityLossConfig)
    ica: ICAConfig = field(default_factory=ICAConfig)

    # -- derived sizes --
    @property
    def latent_channels(self) -> int:
        return int(self.unet.get("in_channels", 4))

    @property
    def cross_attention_dim(self) -> int:
        return int(self.unet["cross_attention_dim"])

    @property
    def clip_hidden_size(self) -> int:
        return int(self.appearance_encoder["hidden_size"])

    @property
    def num_patches(self) -> int:
        return (int(self.appearance_encoder["image_size"]) // int(self.appearance_encoder["patch_size"])) ** 2

    @property
    def condition_length(self) -> int:
        """Tokens in the appearance condition: e'_tex patches, e_id (and 3 motion tokens for "concat")."""
        return self.num_patches + 1 + (3 if self.mia.modulation == "concat" else 0)

    @property
    def vae_scale_factor(self) -> int:
        blocks = (self.vae or SD15_VAE_CONFIG)["block_out_channels"]
        return 2 ** (len(blocks) - 1)

    # -- the two scales --
    @classmethod
    def tiny(cls, **overrides: Any) -> MIMAFaceConfig:
        """CPU-trainable widths (the default)."""
        config = cls()
        config.identity.head_hidden_dim = 128
        config.identity.head_dim = 32
        config.identity.bank_size = 512
        config.mia.modulation_heads = 4
        config.mia.adapter_heads = 4
        return _apply(config, overrides)

    @classmethod
    def sd15(cls, **overrides: Any) -> MIMAFaceConfig:
        """The paper's network: SD-1.5 UNet, CLIP ViT-L/14, AnimateDiff v3 motion modules."""
        config = cls(
            scale="sd15",
            unet=copy.deepcopy(SD15_UNET_CONFIG),
            appearance_encoder=copy.deepcopy(CLIP_VIT_L14_VISION_CONFIG),
            motion_adapter=copy.deepcopy(ANIMATEDIFF_V3_ADAPTER_CONFIG),
            vae=copy.deepcopy(SD15_VAE_CONFIG),
        )
        return _apply(config, overrides)

    # -- JSON --
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MIMAFaceConfig:
        data = dict(data)
        kwargs: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in data:
                continue
            value = data.pop(f.name)
            if f.name in _SUBCONFIGS:
                value = _sub_from_dict(_SUBCONFIGS[f.name], value)
            elif f.name in ("image_mean", "image_std"):
                value = tuple(value)
            kwargs[f.name] = value
        if data:
            raise ValueError(f"unknown MIMAFace config keys: {sorted(data)}")
        return cls(**kwargs)


def _sub_from_dict(cls: type, data: dict[str, Any]) -> Any:
    known = {f.name: f for f in fields(cls)}
    unknown = set(data) - set(known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys: {sorted(unknown)}")
    kwargs = {}
    for name, value in data.items():
        if name == "augment":
            value = _sub_from_dict(AugmentConfig, value)
        elif isinstance(value, list):
            value = tuple(value)  # JSON turns tuples into lists
        kwargs[name] = value
    return cls(**kwargs)


def _apply(config: MIMAFaceConfig, overrides: dict[str, Any]) -> MIMAFaceConfig:
    """``field=value`` overrides; dict fields are merged, sub-config fields take a dict of fields."""
    for name, value in overrides.items():
        if not hasattr(config, name):
            raise ValueError(f"unknown MIMAFace config field {name!r}")
        current = getattr(config, name)
        if isinstance(current, dict) and isinstance(value, dict):
            current.update(value)
        elif name in _SUBCONFIGS and isinstance(value, dict):
            for key, v in value.items():
                if not hasattr(current, key):
                    raise ValueError(f"unknown {type(current).__name__} field {key!r}")
                setattr(current, key, v)
        else:
            setattr(config, name, value)
    return config
