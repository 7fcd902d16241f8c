"""Training configuration: one YAML file (``configs/tiny.yaml``, ``configs/sd15.yaml``) -> :class:`TrainConfig`.

The file has the sections ``model``, ``data``, ``vae``, ``stage1``, ``stage2`` plus run-wide
keys (seed, precision, checkpoints, logging); every key is a field below. Command-line
overrides use dotted names: ``stage1.steps=200 data.root=synth model.vae=runs/tiny/vae``.
Relative paths in the file are resolved against the file's folder; paths given on the command
line against the working directory.
"""

from __future__ import annotations

import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import yaml

from mimaface.errors import InputError
from mimaface.pipelines.options import SamplingOptions

STAGES = ("vae", "1", "2")
OPTIMIZERS = ("adamw", "adamw_8bit", "adafactor")


@dataclass
class ModelSection:
    """Which network, and where its starting weights come from."""

    scale: Literal["tiny", "sd15"] = "tiny"
    overrides: dict[str, Any] = field(default_factory=dict)  # MIMAFaceConfig fields (e.g. {mia: {modulation: concat}})
    # Stage 1 at sd15: the pretrained parts (diffusers SD-1.5 folder, transformers CLIP folder, AnimateDiff).
    sd15_dir: str | None = None
    clip_dir: str | None = None
    motion_adapter_dir: str | None = None
    # Stage 2: the stage-1 result (a folder written by the trainer: RUN/final).
    pretrained: str | None = None
    # The latent codec: a diffusers AutoencoderKL folder (tiny: the output of --stage vae; sd15: SD_DIR/vae).
    vae: str | None = None


@dataclass
class DataSection:
    root: str | None = None  # a clip store (mimaface synth / mimaface preprocess)
    size: int | None = None  # training resolution; None = as stored
    num_frames: int = 8  # stage 2 clip length F
    stride: int = 1
    same_frame_probability: float = 0.0  # stage 1: P(source = target)
    workers: int = 0  # DataLoader worker processes
    # Cache the VAE's latents of every frame and render once (a big win on CPU; needs a fixed VAE).
    cache_latents: bool = False
    latent_cache: str | None = None  # where; None = RUN_DIR/latent_cache
    validation_samples: int = 4  # held-out (test split) examples in each validation grid


@dataclass
class StageSection:
    """Optimisation settings of one stage."""

    steps: int = 1000  # optimizer steps
    batch_size: int = 8  # per process (frames for stages vae/1, clips for stage 2)
    gradient_accumulation: int = 1
    learning_rate: float = 1e-4
    lr_scheduler: str = "constant"  # any diffusers.optimization scheduler name
    warmup_steps: int = 0
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    max_grad_norm: float = 1.0
    # adamw: torch's AdamW (8 bytes of state per trained parameter); adamw_8bit: bitsandbytes' AdamW8bit (2 bytes;
    # runs on CPUs too with bitsandbytes 0.50); adafactor: transformers' Adafactor with this fixed learning rate,
    # factored second moments and no first moment (a few MB in all), as SD fine-tuning scripts set it up.
    optimizer: Literal["adamw", "adamw_8bit", "adafactor"] = "adamw"
    use_ema: bool = False
    ema_decay: float = 0.999
    gradient_checkpointing: bool = False
    # denoising loss (stages 1, 2)
    prediction_type: Literal["epsilon", "v_prediction"] = "epsilon"
    snr_gamma: float | None = None  # min-SNR-gamma weighting (5.0 in the paper of Hang et al.); None = plain MSE
    # VAE stage
    kl_weight: float = 1e-6
    crop_size: int | None = None  # train the (convolutional) VAE on random crops of this size


@dataclass
class TrainConfig:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    vae: StageSection = field(default_factory=StageSection)
    stage1: StageSection = field(default_factory=StageSection)
    stage2: StageSection = field(default_factory=StageSection)
    seed: int = 0
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    torch_threads: int | None = None  # CPU: threads per process (1 is fastest for tiny models on few cores)
    checkpointing_steps: int = 500
    keep_checkpoints: int = 2
    validation_steps: int = 500
    validation_inference_steps: int = 20
    validation_guidance_scale: float = SamplingOptions.guidance_scale
    log_steps: int = 10
    log_with: Literal["tensorboard", "none"] = "tensorboard"

    def stage(self, stage: str) -> StageSection:
        return {"vae": self.vae, "1": self.stage1, "2": self.stage2}[stage]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_SECTIONS = {"model": ModelSection, "data": DataSection, "vae": StageSection, "stage1": StageSection,
             "stage2": StageSection}
_PATH_KEYS = {("model", "sd15_dir"), ("model", "clip_dir"), ("model", "motion_adapter_dir"), ("model", "pretrained"),
              ("model", "vae"), ("data", "root"), ("data", "latent_cache")}


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML config (or the defaults when ``path`` is None) and apply ``key=value`` overrides."""
    config = TrainConfig()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise InputError(f"training config '{path}' does not exist (see configs/tiny.yaml and configs/sd15.yaml)")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise InputError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
        if not isinstance(data, dict):
            raise InputError(f"{path}: expected a mapping of sections at the top level")
        _merge(config, data, str(path), base=path.parent)
    for item in overrides or []:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise InputError(f"override {item!r} is not of the form section.key=value")
        value = yaml.safe_load(text) if text else None
        nested: Any = value
        for part in reversed(key.split(".")):
            nested = {part: nested}
        _merge(config, nested, f"override {item!r}", base=Path.cwd())
    _validate(config)
    return config


def _merge(config: TrainConfig, data: dict[str, Any], where: str, base: Path) -> None:
    for name, value in data.items():
        if name in _SECTIONS:
            if not isinstance(value, dict):
                raise InputError(f"{where}: section {name!r} must be a mapping")
            section = getattr(config, name)
            known = {f.name for f in fields(section)}
            for key, v in value.items():
                if key not in known:
                    raise InputError(f"{where}: unknown key {name}.{key} (known: {', '.join(sorted(known))})")
                if (name, key) in _PATH_KEYS and v is not None:
                    v = str((base / str(v)).resolve()) if not Path(str(v)).is_absolute() else str(v)
                v = _coerce(type(section), key, v, where)
                if key == "overrides" and isinstance(v, dict):
                    v = {**section.overrides, **v}
                setattr(section, key, v)
        else:
            known = {f.name for f in fields(config)} - set(_SECTIONS)
            if name not in known:
                raise InputError(f"{where}: unknown key {name!r} (known: {', '.join(sorted(known | set(_SECTIONS)))})")
            setattr(config, name, _coerce(TrainConfig, name, value, where))


def _coerce(cls: type, key: str, value: Any, where: str) -> Any:
    """YAML reads ``1e-5`` as a string and ``3.0`` as a float: give numeric fields their type."""
    hint = typing.get_type_hints(cls)[key]
    if value is False and typing.get_origin(hint) is Literal and "no" in typing.get_args(hint):
        return "no"  # YAML reads an unquoted no (mixed_precision=no) as false
    types = set(typing.get_args(hint)) or {hint}
    if isinstance(value, str) and float in types:
        try:
            return float(value)
        except ValueError:
            raise InputError(f"{where}: {key} must be a number, got {value!r}") from None
    if int in types and float not in types and isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, bool) or value is None:
        return value
    if (int in types or float in types) and not isinstance(value, (int, float)):
        raise InputError(f"{where}: {key} must be a number, got {value!r}")
    return value


def _validate(config: TrainConfig) -> None:
    if config.model.scale not in ("tiny", "sd15"):
        raise InputError(f"model.scale must be 'tiny' or 'sd15', got {config.model.scale!r}")
    if config.mixed_precision not in ("no", "fp16", "bf16"):
        raise InputError(f"mixed_precision must be no, fp16 or bf16, got {config.mixed_precision!r}")
    for name in ("vae", "stage1", "stage2"):
        s: StageSection = getattr(config, name)
        if s.steps < 1 or s.batch_size < 1 or s.gradient_accumulation < 1:
            raise InputError(f"{name}: steps, batch_size and gradient_accumulation must be at least 1")
        if s.prediction_type not in ("epsilon", "v_prediction"):
            raise InputError(f"{name}.prediction_type must be epsilon or v_prediction, got {s.prediction_type!r}")
        if s.optimizer not in OPTIMIZERS:
            raise InputError(f"{name}.optimizer must be one of {', '.join(OPTIMIZERS)}, got {s.optimizer!r}")
    if config.checkpointing_steps < 1 or config.validation_steps < 1 or config.log_steps < 1:
        raise InputError("checkpointing_steps, validation_steps and log_steps must be at least 1")
    if config.keep_checkpoints < 1:
        raise InputError("keep_checkpoints must be at least 1")
    if config.data.num_frames < 2:
        raise InputError("data.num_frames (the stage-2 clip length) must be at least 2")


