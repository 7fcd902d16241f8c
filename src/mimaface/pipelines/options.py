"""How frames are sampled: the options every caller (CLI, app, evaluation, demo) takes its defaults
from. Free of torch at import time, so the command line starts fast."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields

from mimaface.errors import InputError
from mimaface.values import is_finite_number, is_whole

#: The generation engines (:mod:`mimaface.pipelines.engines`): learning-free mesh warp, the diffusion model.
ENGINES = ("warp", "diffusion")
#: The samplers by name (diffusers classes in :data:`mimaface.pipelines.pipeline.SCHEDULERS`).
SCHEDULER_NAMES = ("ddim", "euler", "dpm++")
MAX_SEED = 2**64 - 1  # torch.Generator.manual_seed takes 0 .. 2**64 - 1


#: What each sampling value must be (None for clip_length and overlap: as the model was trained). What a
#: model allows beyond this (the clip length its motion modules know, the steps of its noise schedule) is
#: checked by :func:`mimaface.pipelines.settings.check_generation`.
SAMPLING_RULES: dict[str, tuple[Callable[[object], bool], str]] = {
    "num_inference_steps": (lambda v: is_whole(v) and v >= 1, "a whole number of at least 1"),
    "guidance_scale": (lambda v: is_finite_number(v) and v >= 0, "a finite number of at least 0 (1: no guidance)"),
    "seed": (lambda v: is_whole(v) and 0 <= v <= MAX_SEED, "a whole number from 0 to 2**64 - 1"),
    "scheduler": (lambda v: isinstance(v, str) and v in SCHEDULER_NAMES, f"one of {', '.join(SCHEDULER_NAMES)}"),
    "clip_length": (lambda v: v is None or (is_whole(v) and v >= 1), "a whole number of at least 1"),
    "overlap": (lambda v: v is None or (is_whole(v) and v >= 0), "a whole number of at least 0"),
    "use_ica": (lambda v: isinstance(v, bool), "True or False"),
    "batch_size": (lambda v: is_whole(v) and v >= 1, "a whole number of at least 1"),
    "decode_chunk_size": (lambda v: is_whole(v) and v >= 1, "a whole number of at least 1"),  # the pipeline's
}


def check_sampling(values: Mapping[str, object], names: Mapping[str, str] | None = None) -> None:
    """Refuse the first of ``values`` (SamplingOptions field, which is also the pipeline argument, -> value)
    that breaks :data:`SAMPLING_RULES`: one InputError line. ``names``: what the caller calls each field
    (the command line: its flags)."""
    for key, value in values.items():
        allowed, requirement = SAMPLING_RULES[key]
        if not allowed(value):
            raise InputError(f"{(names or {}).get(key, key)} must be {requirement}, got {value!r}")


@dataclass
class SamplingOptions:
    num_inference_steps: int = 25
    guidance_scale: float = 2.0
    seed: int = 0
    scheduler: str = "ddim"  # one of SCHEDULER_NAMES
    clip_length: int | None = None  # F; None: as trained
    overlap: int | None = None  # ICA k; None: as trained
    use_ica: bool = True
    batch_size: int = 1  # independent units per forward: frames (image mode) or clips (use_ica=False)

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """One InputError line for a value out of range (it is checked when made; again here after a change)."""
        check_sampling({item.name: getattr(self, item.name) for item in fields(self)})

    def pipeline_kwargs(self) -> dict:
        """Keyword arguments of ``MIMAFacePipeline.__call__`` / ``generate_clips`` (a freshly seeded generator)."""
        import torch

        return {"num_inference_steps": self.num_inference_steps, "guidance_scale": self.guidance_scale,
                "generator": torch.Generator().manual_seed(self.seed), "clip_length": self.clip_length,
                "overlap": self.overlap, "use_ica": self.use_ica, "batch_size": self.batch_size}
