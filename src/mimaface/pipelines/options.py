"""How frames are sampled: the options every caller (CLI, app, evaluation, demo) takes its defaults
from. Free of torch at import time, so the command line starts fast."""

from __future__ import annotations

from dataclasses import dataclass

#: The generation engines (:mod:`mimaface.pipelines.engines`): learning-free mesh warp, the diffusion model.
ENGINES = ("warp", "diffusion")
#: The samplers by name (diffusers classes in :data:`mimaface.pipelines.pipeline.SCHEDULERS`).
SCHEDULER_NAMES = ("ddim", "euler", "dpm++")


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

    def pipeline_kwargs(self) -> dict:
        """Keyword arguments of ``MIMAFacePipeline.__call__`` / ``generate_clips`` (a freshly seeded generator)."""
        import torch

        return {"num_inference_steps": self.num_inference_steps, "guidance_scale": self.guidance_scale,
                "generator": torch.Generator().manual_seed(self.seed), "clip_length": self.clip_length,
                "overlap": self.overlap, "use_ica": self.use_ica, "batch_size": self.batch_size}
