"""The two user-facing operations of ``face3d``: extract motion from media, render motion as I_R."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from mimaface.errors import InputError
from mimaface.face3d.coefficients import MotionCoefficients
from mimaface.face3d.fitting import FaceFitter, FitConfig
from mimaface.face3d.landmarks import detect_face, fill_missing, track_faces
from mimaface.face3d.model import FaceModel
from mimaface.face3d.render import render_grey
from mimaface.media import is_video_path, iter_video_frames, load_image, probe_video


@dataclass
class ExtractConfig:
    """Settings of :func:`extract_motion`."""

    face_index: int | None = None  # None: the largest face (on the first frame of a video)
    max_gap: int = 12  # longest run of frames without a face that is interpolated over
    smooth: bool = True  # One-Euro smoothing of video coefficient tracks
    fit: FitConfig = field(default_factory=FitConfig)


def extract_motion(source: str | os.PathLike, config: ExtractConfig | None = None, *,
                   model: FaceModel | None = None, progress: bool = True) -> MotionCoefficients:
    """Detect, track and fit the face in an image or a video file."""
    cfg = config or ExtractConfig()
    fitter = FaceFitter(model, cfg.fit)
    source = Path(source)
    if not source.exists():
        raise InputError(f"{source}: no such file")
    if is_video_path(source):
        info = probe_video(source)
        tracked = track_faces(iter_video_frames(source), face_index=cfg.face_index,
                              num_frames=info.num_frames, progress=progress, source=str(source))
        landmarks = fill_missing(tracked, cfg.max_gap, str(source))
        width, height, fps = info.width, info.height, info.fps
    else:
        image = load_image(source)
        landmarks = detect_face(image, cfg.face_index, source=str(source)).landmarks[None].astype(np.float64)
        height, width = image.shape[:2]
        fps = 25.0
    fit = fitter.fit(landmarks, width, height, smooth=cfg.smooth, fps=fps)
    m = fitter.model
    return MotionCoefficients(fit.pose, fit.expression, fit.gaze, fit.identity, m.expression_names,
                              m.identity_names, fps=fps, image_size=(width, height), landmarks=landmarks)


def output_size(motion: MotionCoefficients, size: int | tuple[int, int] | None) -> tuple[int, int]:
    """(width, height) of renders. ``size``: the height (aspect ratio of the source kept), an
    explicit ``(width, height)``, or None for the source's own size."""
    if isinstance(size, tuple):
        width, height = size
    elif size is None:
        width, height = motion.image_size
    else:
        width, height = max(1, round(size * motion.image_size[0] / motion.image_size[1])), size
    if width < 1 or height < 1:
        raise InputError(f"render size must be positive, got {width}x{height}")
    return width, height


def render_motion(motion: MotionCoefficients, size: int | tuple[int, int] | None = None, *, model: FaceModel | None = None,
                  batch_size: int = 16, device: str | torch.device = "cpu",
                  progress: bool = True) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(I_R, mask)`` per frame: the posed face as a shaded grey face on black, uint8 RGB."""
    model = model or FaceModel.load()
    motion.for_model(model)
    width, height = output_size(motion, size)
    faces = torch.as_tensor(model.triangles, device=device)
    bar = tqdm(total=motion.num_frames, desc="render", unit="frame", disable=not progress or motion.num_frames < 2)
    for start in range(0, motion.num_frames, batch_size):
        window = slice(start, start + batch_size)
        verts = model.posed_vertices(motion.pose[window], motion.identity, motion.expression[window])
        images, masks = render_grey(torch.as_tensor(verts, dtype=torch.float32, device=device), faces, height, width)
        images = (images.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
        for image, mask in zip(images, masks.cpu().numpy()):
            yield image, mask
        bar.update(len(images))
    bar.close()
