"""A saved pipeline's settings and the generation checks that depend on them, free of torch and diffusers so
that ``mimaface animate`` checks its inputs before the diffusion pipeline module is imported (about 6 s)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from mimaface.errors import InputError, ModelLoadError
from mimaface.files import read_json_object
from mimaface.limits import check_count, limits
from mimaface.values import is_whole

BUNDLED_MODEL = Path(__file__).resolve().parents[1] / "assets" / "tiny_model"
SAVED_HOW = "a folder written by MIMAFacePipeline.save_pretrained or `mimaface train` (RUN_DIR/final)"


def read_settings(pretrained_model_name_or_path: str | os.PathLike | None = None) -> dict:
    """The pipeline config of a saved folder (None: the bundled model): ``image_size``, ``clip_length``,
    ``overlap``, checked, and what else generation with it allows (``max_clip_length``: the frames its motion
    modules know, None without them; ``num_train_timesteps``: the steps of its noise schedule), read from its
    config files alone, so inputs can be checked (:func:`check_generation`) before the model loads."""
    folder = pipeline_folder(pretrained_model_name_or_path)
    settings = _read_json(folder / "model_index.json") or {}
    check_settings(settings.get("image_size"), settings.get("clip_length"), settings.get("overlap"),
                   str(folder / "model_index.json"))
    adapter = _read_json(folder / "model" / "motion_adapter" / "config.json")
    schedule = _read_json(folder / "scheduler" / "scheduler_config.json") or {}
    settings["max_clip_length"] = None if adapter is None else adapter.get("motion_max_seq_length")
    settings["num_train_timesteps"] = schedule.get("num_train_timesteps")
    return settings


def check_generation(settings: Mapping, *, video: bool, num_inference_steps: int, clip_length: int | None,
                     overlap: int | None, use_ica: bool, batch_size: int,
                     num_frames: int | None = None) -> tuple[int, int]:
    """The clip length F and ICA overlap k a generation uses (``clip_length`` / ``overlap`` None: as the model
    was trained; k is 0 without ICA), once what depends on the model is checked: no more denoising steps than
    its noise schedule has, clips no longer than its motion modules know and longer than the overlap, and at
    most ``limits().batch_frames`` frames in one pass of the denoiser (the VAE codes no more at once).

    ``settings``: :func:`read_settings` (so this runs before the model loads) or a loaded
    pipeline's :meth:`~mimaface.pipelines.pipeline.MIMAFacePipeline.settings`; ``video``: clips (False: the image mode, independent
    frames); ``num_frames``: the motion's, when known (a batch holds at most that many frames or clips).
    The arguments themselves are :func:`~mimaface.pipelines.options.check_sampling`'s."""
    schedule = settings["num_train_timesteps"]
    if schedule is not None and num_inference_steps > schedule:
        raise InputError(f"{num_inference_steps} denoising steps are more than the {schedule} steps of the model's "
                         "noise schedule")
    f = settings["clip_length"] if clip_length is None else clip_length
    k = (settings["overlap"] if overlap is None else overlap) if use_ica else 0
    batch = batch_size if num_frames is None else min(batch_size, num_frames)
    per_pass, how = batch, "batch_size"
    if video:
        most = settings["max_clip_length"]
        if most is not None and f > most:
            raise InputError(f"a clip length of {f} frames is more than the {most} the model's motion modules know")
        if k >= f:
            trained = " (as the model was trained)"
            raise InputError(f"the ICA overlap of {k} frame(s){'' if overlap is not None else trained} must be below "
                             f"the clip length of {f}{'' if clip_length is not None else trained}: give a longer "
                             "clip, a smaller overlap, or no ICA")
        clips = batch if num_frames is None else min(batch, -(-num_frames // f))  # without ICA, F new frames each
        per_pass, how = (f, "clip_length") if use_ica else (f * clips, "batch_size x clip_length")
    check_count(per_pass, limits().batch_frames, f"frames in one denoising pass ({how})", where="generation",
                name="batch_frames")
    return f, k


def check_settings(image_size: object, clip_length: object, overlap: object, where: str, scale: int = 1) -> None:
    """A pipeline's own settings: a crop size of 1 to ``limits().output_side`` pixels (a multiple of the VAE's
    ``scale``), a clip length of at least 1 and an overlap below it."""
    side = limits().output_side
    if not is_whole(image_size) or not 1 <= image_size <= side or image_size % scale:
        raise InputError(f"{where}: image_size must be a multiple of {scale} from {scale} to {side} (the limit of "
                         f"an output's side), got {image_size!r}")
    if not is_whole(clip_length) or clip_length < 1:
        raise InputError(f"{where}: clip_length must be a whole number of at least 1, got {clip_length!r}")
    if not is_whole(overlap) or not 0 <= overlap < clip_length:
        raise InputError(f"{where}: overlap must be a whole number from 0 to clip_length - 1 = {clip_length - 1}, "
                         f"got {overlap!r}")


def _read_json(path: Path) -> dict | None:
    """A component's config file, None if there is none; one ModelLoadError line if it is not JSON."""
    if not path.is_file():
        return None
    return read_json_object(path, "a config", error=ModelLoadError, hint=f"; expected {SAVED_HOW}")


def pipeline_folder(path: str | os.PathLike | None) -> Path:
    """A local pipeline folder (None: the bundled model), or one ModelLoadError line saying what is wrong."""
    folder = Path(path) if path is not None else BUNDLED_MODEL
    if not folder.is_dir():
        state = "is a file, not a folder" if folder.exists() else "does not exist"
        raise ModelLoadError(f"model folder '{folder}' {state}; expected {SAVED_HOW}")
    if not (folder / "model_index.json").is_file():
        raise ModelLoadError(f"'{folder}' has no model_index.json, so it is not a MIMAFace pipeline; expected {SAVED_HOW}")
    return folder
