"""Loading pretrained components from local folders, with errors a user can act on.

Every loader checks the folder itself before diffusers/transformers see it (both would take a
missing path for a Hugging Face Hub name and try the network), loads with
``local_files_only=True``, and refuses a checkpoint that leaves weights uninitialised -- a
pretrained part asked for is never silently replaced by random weights.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from mimaface.errors import ModelLoadError

SD15_HOW = ("a diffusers-format Stable Diffusion 1.5 folder (model_index.json, unet/, vae/), e.g. a copy of "
            "'stable-diffusion-v1-5/stable-diffusion-v1-5' made on a machine with network access "
            "(`hf download stable-diffusion-v1-5/stable-diffusion-v1-5 --local-dir DIR`) or written by "
            "`StableDiffusionPipeline.save_pretrained(DIR)`")
CLIP_HOW = ("a transformers CLIP folder (config.json + model.safetensors) such as a local copy of "
            "'openai/clip-vit-large-patch14' (a full CLIPModel folder works; only its vision tower is used)")
ADAPTER_HOW = ("a diffusers MotionAdapter folder (config.json + diffusion_pytorch_model.safetensors) such as a "
               "local copy of 'guoyww/animatediff-motion-adapter-v1-5-3', or AnimateDiff's original "
               "'v3_sd15_mm.ckpt' file")


def _summary(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def _kind(config: dict[str, Any]) -> str:
    """What a config.json describes, for messages."""
    architectures = config.get("architectures") or [None]
    return config.get("_class_name") or architectures[0] or config.get("model_type") or "an unknown model"


def _few(keys: Any, n: int = 5) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:n]) + (f" and {len(keys) - n} more" if len(keys) > n else "")


def read_config(folder: Path, what: str, how: str) -> dict[str, Any]:
    """The folder's ``config.json``, or a ModelLoadError saying what was expected."""
    if not folder.exists():
        raise ModelLoadError(f"{what} folder '{folder}' does not exist; expected {how}")
    if not folder.is_dir():
        raise ModelLoadError(f"{what} '{folder}' is a file, not a folder; expected {how}")
    path = folder / "config.json"
    if not path.is_file():
        raise ModelLoadError(f"{what} folder '{folder}' has no config.json; expected {how}")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{what} config '{path}' is unreadable ({_summary(exc)}); expected {how}") from None


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers while loading/saving: it logs a table of every unused key (a whole CLIPModel's
    text tower; we check keys ourselves) and shows a progress bar per model."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()  # a "Loading weights" bar per tiny model is noise
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def _check_info(info: dict[str, Any], folder: Path, what: str, how: str, allow_missing: tuple[str, ...] = ()) -> None:
    missing = [k for k in info.get("missing_keys", ()) if not (allow_missing and k.endswith(allow_missing))]
    mismatched = list(info.get("mismatched_keys", ()))
    if missing or mismatched:
        detail = []
        if missing:
            detail.append(f"missing weights: {_few(missing)}")
        if mismatched:
            detail.append(f"wrong-shaped weights: {_few(str(m[0]) if isinstance(m, tuple) else str(m) for m in mismatched)}")
        raise ModelLoadError(f"{what} in '{folder}' does not match its config ({'; '.join(detail)}); expected {how}")


def load_unet(folder: Path, in_channels: tuple[int, ...], what: str, how: str,
              dtype: torch.dtype | None = None, variant: str | None = None) -> Any:
    """A diffusers ``UNet2DConditionModel`` with one of the given input channel counts."""
    from diffusers import UNet2DConditionModel

    config = read_config(folder, what, how)
    kind = _kind(config)
    if kind != "UNet2DConditionModel":
        raise ModelLoadError(f"{what} folder '{folder}' holds {kind}, not a UNet2DConditionModel; expected {how}")
    if config.get("in_channels") not in in_channels:
        raise ModelLoadError(f"{what} in '{folder}' takes {config.get('in_channels')} input channels where "
                             f"{' or '.join(map(str, in_channels))} are needed (an inpainting or otherwise modified "
                             f"UNet?); expected {how}")
    return _from_pretrained(UNet2DConditionModel, folder, what, how, torch_dtype=dtype, variant=variant)


VAE_HOW = ("a diffusers AutoencoderKL folder (config.json + diffusion_pytorch_model.safetensors): SD-1.5's "
           "'vae/' sub-folder, or for the tiny scale the folder `mimaface train --stage vae` writes (RUN_DIR/final)")


def load_vae(folder: Path, what: str = "VAE", how: str = VAE_HOW, dtype: torch.dtype | None = None) -> Any:
    """A diffusers ``AutoencoderKL`` (the latent codec)."""
    from diffusers import AutoencoderKL

    config = read_config(folder, what, how)
    kind = _kind(config)
    if kind != "AutoencoderKL":
        raise ModelLoadError(f"{what} folder '{folder}' holds {kind}, not an AutoencoderKL; expected {how}")
    return _from_pretrained(AutoencoderKL, folder, what, how, torch_dtype=dtype)


def load_clip_vision(folder: Path, what: str = "CLIP vision encoder", how: str = CLIP_HOW,
                     dtype: torch.dtype | None = None) -> Any:
    """A transformers ``CLIPVisionModel`` from a CLIP or CLIP-vision folder."""
    from transformers import CLIPVisionModel

    config = read_config(folder, what, how)
    model_type = config.get("model_type")
    if model_type not in ("clip", "clip_vision_model"):
        raise ModelLoadError(f"{what} folder '{folder}' holds {_kind(config)}, not a CLIP model; expected {how}")
    with quiet_transformers():
        return _from_pretrained(CLIPVisionModel, folder, what, how, **({} if dtype is None else {"dtype": dtype}))


def load_motion_adapter(path: Path, what: str = "AnimateDiff motion adapter", how: str = ADAPTER_HOW,
                        dtype: torch.dtype | None = None) -> Any:
    """A diffusers ``MotionAdapter`` from its folder, or from AnimateDiff's original checkpoint file."""
    from diffusers import MotionAdapter

    if path.is_file():
        return _motion_adapter_from_file(path, what, how, dtype)
    config = read_config(path, what, how)
    kind = _kind(config)
    if kind != "MotionAdapter":
        raise ModelLoadError(f"{what} folder '{path}' holds {kind}, not a MotionAdapter; expected {how}")
    # The sinusoidal position tables are recomputed, so their absence is expected.
    return _from_pretrained(MotionAdapter, path, what, how, allow_missing=(".pe",), torch_dtype=dtype)


def _from_pretrained(cls: Any, folder: Path, what: str, how: str, allow_missing: tuple[str, ...] = (),
                     **kwargs: Any) -> Any:
    """``cls.from_pretrained`` from a local folder; any library error, missing or unexpected weight
    becomes one ModelLoadError line."""
    try:
        model, info = cls.from_pretrained(folder, local_files_only=True, output_loading_info=True, **kwargs)
    except Exception as exc:  # noqa: BLE001 -- whatever the library raises becomes one clear line
        raise ModelLoadError(f"{what} in '{folder}' could not be loaded ({_summary(exc)}); expected {how}") from None
    _check_info(info, folder, what, how, allow_missing=allow_missing)
    return model


def _motion_adapter_from_file(path: Path, what: str, how: str, dtype: torch.dtype | None) -> Any:
    """AnimateDiff's ``mm_sd_v15*.ckpt`` / ``v3_sd15_mm.ckpt`` (or .safetensors), converted as diffusers does."""
    from diffusers import MotionAdapter
    from diffusers.loaders.single_file_utils import (
        convert_animatediff_checkpoint_to_diffusers,
    )

    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
            state = state.get("state_dict", state)
    except Exception as exc:  # noqa: BLE001 -- any library error becomes one clear line
        raise ModelLoadError(f"{what} file '{path}' could not be read ({_summary(exc)}); expected {how}") from None
    state = {k.removeprefix("module."): v for k, v in state.items()}
    norm = "down_blocks.{}.motion_modules.0.temporal_transformer.norm.weight"
    if norm.format(0) not in state:
        raise ModelLoadError(f"'{path}' is not an AnimateDiff motion module checkpoint; expected {how}")
    channels = []
    while norm.format(len(channels)) in state:
        channels.append(int(state[norm.format(len(channels))].shape[0]))
    layers = len({k.split(".")[3] for k in state if k.startswith("down_blocks.0.motion_modules.")})
    pe = next((v for k, v in state.items() if k.endswith("pos_encoder.pe")), None)
    config = {
        "block_out_channels": channels,
        "motion_layers_per_block": layers,
        "use_motion_mid_block": any(k.startswith("mid_block.") for k in state),
        "motion_max_seq_length": int(pe.shape[1]) if pe is not None else 32,
        "motion_num_attention_heads": 8,  # every SD-1.5 AnimateDiff release; not stored in the file
    }
    adapter = MotionAdapter(**config)
    converted = convert_animatediff_checkpoint_to_diffusers(state)
    try:
        result = adapter.load_state_dict(converted, strict=False)
    except RuntimeError as exc:  # wrong shapes: not an SD-1.5 adapter
        raise ModelLoadError(f"{what} file '{path}' does not fit an SD-1.5 MotionAdapter ({_summary(exc)}); "
                             f"expected {how}") from None
    missing = [k for k in result.missing_keys if not k.endswith(".pe")]
    if missing or result.unexpected_keys:
        raise ModelLoadError(f"{what} file '{path}' does not convert to a MotionAdapter (missing: "
                             f"{_few(missing) or 'none'}; unexpected: {_few(result.unexpected_keys) or 'none'}); "
                             f"expected {how}")
    return adapter.to(dtype) if dtype is not None else adapter


def save_module(module: nn.Module, folder: Path, config: dict[str, Any]) -> None:
    """A plain module as ``config.json`` + ``model.safetensors`` (persistent state only)."""
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def load_module(module: nn.Module, folder: Path, what: str, how: str) -> None:
    """Load ``save_module``'s weights into ``module``, strictly."""
    path = folder / "model.safetensors"
    if not path.is_file():
        raise ModelLoadError(f"{what} weights '{path}' are missing; expected {how}")
    try:
        state = load_file(str(path))
    except Exception as exc:  # noqa: BLE001 -- any library error becomes one clear line
        raise ModelLoadError(f"{what} weights '{path}' are unreadable ({_summary(exc)}); expected {how}") from None
    try:
        result = module.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # wrong shapes
        raise ModelLoadError(f"{what} weights '{path}' do not fit the config ({_summary(exc)}); expected {how}") from None
    if result.missing_keys or result.unexpected_keys:
        raise ModelLoadError(f"{what} weights '{path}' do not fit the config (missing: {_few(result.missing_keys) or 'none'}; "
                             f"unexpected: {_few(result.unexpected_keys) or 'none'}); expected {how}")
