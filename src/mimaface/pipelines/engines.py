"""The two generation engines behind one interface, for the command line, the app and evaluation.

* ``diffusion``: :class:`~mimaface.pipelines.pipeline.MIMAFacePipeline`, the paper's model (the
  bundled one knows only synthetic 64 px faces). It sees a face-tight crop at its trained size;
  the result is pasted back through the face silhouettes.
* ``warp``: :class:`~mimaface.warp.MeshWarpPipeline`, learning-free: the photo itself warped by
  the face mesh. It works on a wider crop at the photo's own resolution (hair, ears, neck and
  background inside it move with the head, its border is held still), so the whole crop is
  pasted back and only its border is feathered.

Both stream :class:`~mimaface.pipelines.pipeline.GeneratedClip` objects.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from mimaface.errors import InputError
from mimaface.face3d.coefficients import MotionCoefficients
from mimaface.pipelines.options import ENGINES, SamplingOptions
from mimaface.pipelines.source import SourceFace, prepare_source

#: The warp's crop, in face extents (the diffusion model's is 1.8, as it was trained).
WARP_CROP_SCALE = 3.0


def choose_engine(engine: str | None, checkpoint: str | os.PathLike | None) -> str:
    """``engine`` as asked; None: diffusion for a given checkpoint, else the warp."""
    if engine is None:
        return "diffusion" if checkpoint is not None else "warp"
    if engine not in ENGINES:
        raise InputError(f"unknown engine {engine!r} (use one of {', '.join(ENGINES)})")
    if engine == "warp" and checkpoint is not None:
        raise InputError("--checkpoint is a diffusion model; the warp engine uses none (drop one of them)")
    return engine


@dataclass
class Engine:
    """A loaded engine: how it wants its source, and its frames as a stream."""

    name: str
    pipeline: object  # MIMAFacePipeline or MeshWarpPipeline

    @classmethod
    def load(cls, name: str, checkpoint: str | os.PathLike | None = None) -> Engine:
        if name == "warp":
            from mimaface.warp import MeshWarpPipeline

            return cls(name, MeshWarpPipeline())
        from mimaface.pipelines.pipeline import MIMAFacePipeline

        return cls(name, MIMAFacePipeline.from_pretrained(checkpoint))

    def clips(self, source: SourceFace, motion: MotionCoefficients, sampling: SamplingOptions,
              step_callback: Callable | None = None, *, renders: bool = True) -> Iterator:
        """The frames of ``source`` performing ``motion`` (retargeted into its crop), clip by clip.
        ``step_callback``: the diffusion pipeline's ``callback_on_step_end`` (the warp has no steps).
        ``renders`` False: the warp leaves out the I_R it would shade for show (the diffusion model's
        are its input, so it always has them)."""
        kwargs = sampling.pipeline_kwargs() | {"callback_on_step_end": step_callback}
        if self.name == "warp":
            kwargs = {k: v for k, v in kwargs.items() if v is not None}  # clip_length None: the warp's own chunks
            return self.pipeline.generate_clips(source.crop, motion, source_coefficients=source.coefficients,
                                                output_renders=renders, **kwargs)
        from mimaface.pipelines.pipeline import SCHEDULERS

        self.pipeline.scheduler = SCHEDULERS[sampling.scheduler].from_config(self.pipeline.scheduler.config)
        return self.pipeline.generate_clips(source.crop, motion, **kwargs)

    def source_silhouette(self, source: SourceFace) -> np.ndarray:
        """Where the source's face is in its crop, for pasting back: the I_R silhouette for the diffusion
        model, the whole crop for the warp (it moves everything inside it and holds the border)."""
        if self.name == "warp":
            return np.ones(source.crop.shape[:2], bool)
        return self.pipeline.render(source.coefficients)[0] > 0

    def frame_silhouette(self, render: np.ndarray | None, crop: np.ndarray) -> np.ndarray:
        """Where a generated ``crop``'s face is, for pasting back (see :meth:`source_silhouette`)."""
        return np.ones(crop.shape[:2], bool) if self.name == "warp" else render > 0


def prepare_engine_source(engine: str, image: np.ndarray, size: int | None, *, face_index: int | None = None,
                          name: str = "the source") -> SourceFace:
    """The source crop an engine takes: the diffusion model's trained size and extent, or the warp's
    wider crop at the photo's own resolution (``size`` None)."""
    if engine == "warp":
        return prepare_source(image, None, crop_scale=WARP_CROP_SCALE, face_index=face_index, name=name)
    return prepare_source(image, size, face_index=face_index, name=name)
