"""The SynthTalk data-set writer: identities x clips, rendered in parallel, resumable.

Layout and file formats are those of :mod:`mimaface.data.clipstore`. Identity ``i`` is
``id{i:05d}``, its clip ``k`` is ``clip{k:03d}``; which identities are held out for ``test`` is
a fixed fraction drawn from the seed. Every random choice of a clip comes from generators seeded
by ``(seed, identity index[, clip index])`` only, so a clip's bytes do not depend on the number of
workers, on the order clips are written in, or on how often the run was resumed.

The coefficients are rounded to float32 (what ``motion.npz`` stores) *before* anything is
rendered, so the stored motion re-renders exactly to the stored frames' geometry and to the
stored I_R (which is :func:`mimaface.face3d.pipeline.render_motion` of it).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from mimaface import files
from mimaface.data.clipstore import (
    clip_exists,
    read_dataset_info,
    write_clip,
    write_dataset_info,
)
from mimaface.errors import InputError
from mimaface.face3d.camera import normalized_to_pixels
from mimaface.face3d.coefficients import MotionCoefficients
from mimaface.face3d.model import FaceModel
from mimaface.face3d.pipeline import render_motion
from mimaface.synthtalk.appearance import Identity, sample_identity
from mimaface.synthtalk.motion import MotionConfig, MotionSampler
from mimaface.synthtalk.scene import SceneRenderer

SOURCE = "synthtalk"


@dataclass
class SynthConfig:
    """What to generate. ``workers``: processes (None = all cores); it does not change the output."""

    identities: int = 100
    clips_per_identity: int = 4
    frames: int = 48
    size: int = 128
    seed: int = 0
    fps: float = 25.0
    test_fraction: float = 0.1
    portrait_fraction: float = 0.15
    workers: int | None = None

    def validate(self) -> None:
        if self.identities < 1 or self.clips_per_identity < 1 or self.frames < 1:
            raise InputError("identities, clips_per_identity and frames must be at least 1")
        if self.size < 16:
            raise InputError(f"size must be at least 16 pixels, got {self.size}")
        if self.fps <= 0:
            raise InputError(f"fps must be positive, got {self.fps}")
        if not 0.0 <= self.test_fraction < 1.0 or not 0.0 <= self.portrait_fraction <= 1.0:
            raise InputError("test_fraction must be in [0, 1) and portrait_fraction in [0, 1]")
        if self.workers is not None and self.workers < 1:
            raise InputError(f"workers must be at least 1, got {self.workers}")

    def recipe(self) -> dict:
        """The settings that determine the data (everything but ``workers``)."""
        out = asdict(self)
        out.pop("workers")
        return out


def identity_name(index: int) -> str:
    return f"id{index:05d}"


def clip_name(index: int) -> str:
    return f"clip{index:03d}"


def held_out_identities(config: SynthConfig) -> set[int]:
    """Indices of the identities held out for ``test``: round(fraction * n) of them, chosen by the seed
    (at least one when the fraction is positive and there are two identities or more)."""
    n = config.identities
    count = round(config.test_fraction * n)
    if config.test_fraction > 0 and n >= 2:
        count = min(max(count, 1), n - 1)
    order = np.random.default_rng([int(config.seed), 0x5E17]).permutation(n)
    return {int(i) for i in order[:count]}


def split_of(config: SynthConfig, identity: int, held_out: set[int] | None = None) -> str:
    held_out = held_out_identities(config) if held_out is None else held_out
    return "test" if identity in held_out else "train"


def clip_rng(seed: int, identity: int, clip: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(identity), int(clip), 0xC11])


def clip_motion(config: SynthConfig, identity: Identity, clip: int, model: FaceModel) -> MotionCoefficients:
    """The clip's coefficients (float32-exact), with ``landmarks`` in pixels and the clip mode in ``extra``."""
    rng = clip_rng(config.seed, identity.index, clip)
    mode = "portrait" if rng.random() < config.portrait_fraction else "talking"
    sampled = MotionSampler(model.expression_names, MotionConfig()).sample(rng, config.frames, config.fps, mode)

    def f32(a: np.ndarray) -> np.ndarray:
        return np.asarray(a, np.float32).astype(np.float64)

    pose, expression, gaze, shape = f32(sampled.pose), f32(sampled.expression), f32(sampled.gaze), f32(identity.shape)
    size = config.size
    landmarks = normalized_to_pixels(model.landmarks(pose, shape, expression, gaze), size, size)
    return MotionCoefficients(pose, expression, gaze, shape, model.expression_names, model.identity_names,
                              fps=float(config.fps), image_size=(size, size), landmarks=landmarks,
                              extra={"mode": mode})


def make_identity(config: SynthConfig, index: int, model: FaceModel) -> Identity:
    ident = sample_identity(config.seed, index, model.num_identities)
    ident.shape = np.asarray(ident.shape, np.float32).astype(np.float64)  # what motion.npz stores
    return ident


def render_clip(config: SynthConfig, identity: int | Identity, clip: int, *, model: FaceModel | None = None,
                renderer: SceneRenderer | None = None) -> tuple[np.ndarray, np.ndarray, MotionCoefficients]:
    """Frames (T,S,S,3), I_R renders (T,S,S) and coefficients of one clip, in memory.

    Renders on one torch thread, as the data-set writer's workers do.
    """
    model = model or FaceModel.load()
    ident = identity if isinstance(identity, Identity) else make_identity(config, identity, model)
    with _single_thread():
        if renderer is None or renderer.identity is not ident or renderer.size != config.size:
            renderer = SceneRenderer(ident, config.size, model)
        motion = clip_motion(config, ident, clip, model)
        frames = renderer.render(motion.pose, motion.expression, motion.gaze)
        renders = np.stack([image[..., 0] for image, _ in render_motion(motion, config.size, model=model, progress=False)])
    return frames, renders, motion


def render_identity(config: SynthConfig, identity: int, motion: MotionCoefficients) -> np.ndarray:
    """Frames (T,S,S,3) of SynthTalk identity ``identity`` (its face shape, look and scene) performing
    ``motion``'s pose, expression and gaze: the exact ground truth of reenacting it with that motion."""
    return render_coefficients(config, identity, motion.pose, motion.expression, motion.gaze)


def render_coefficients(config: SynthConfig, identity: int, pose: np.ndarray, expression: np.ndarray,
                        gaze: np.ndarray, model: FaceModel | None = None) -> np.ndarray:
    """Frames (T,S,S,3) of SynthTalk identity ``identity`` with per-frame coefficients (T, ...)."""
    model = model or FaceModel.load()
    with _single_thread():
        renderer = SceneRenderer(make_identity(config, identity, model), config.size, model)
        return renderer.render(pose, expression, gaze)


@contextlib.contextmanager
def _single_thread():
    """Torch on one thread (each worker is one core's worth; also keeps results thread-count free)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _write_identity(task: tuple[str, dict, int, str, list[int]]) -> list[tuple[int, int]]:
    """Worker: write the listed clips of one identity; returns (clip index, frames) per clip."""
    root, config_dict, index, split, clips = task
    config = SynthConfig(**config_dict)
    model = FaceModel.load()
    done = []
    with _single_thread():
        ident = make_identity(config, index, model)
        renderer = SceneRenderer(ident, config.size, model)
        for clip in clips:
            frames, renders, motion = render_clip(config, ident, clip, model=model, renderer=renderer)
            info = {"split": split, "mode": motion.extra["mode"], "source": SOURCE, "seed": config.seed,
                    "identity_index": index, "clip_index": clip, "appearance": ident.summary()}
            write_clip(Path(root), split, identity_name(index), clip_name(clip), frames, renders, motion, info)
            done.append((clip, len(frames)))
    return done


def _check_existing(root: Path, config: SynthConfig) -> None:
    if not (root / "dataset.json").is_file():
        return
    info = read_dataset_info(root)
    if info.get("source") != SOURCE:
        raise InputError(f"{root}: holds a {info.get('source')!r} data set, not a SynthTalk one")
    previous = info.get("config", {})
    previous = {k: v for k, v in previous.items() if k != "workers"}
    if previous and previous != config.recipe():
        changed = sorted(k for k in set(previous) | set(config.recipe()) if previous.get(k) != config.recipe().get(k))
        raise InputError(f"{root}: was generated with different settings ({', '.join(changed)}); "
                         "use another output folder or the same settings to resume")


def generate_dataset(output: str | Path, config: SynthConfig, *, progress: bool = True) -> dict:
    """Write (or finish writing) a SynthTalk data set under ``output``; returns counts.

    Clips that exist are skipped, so an interrupted run resumes where it stopped; each clip
    appears atomically (see :func:`mimaface.data.clipstore.write_clip`). One process at a time
    writes a folder: another gets "OUTPUT is in use by process N" (InputError).
    """
    config.validate()
    root = Path(output)
    with files.folder_lock(root):  # one writer: two runs would write the same clips
        _check_existing(root, config)
        write_dataset_info(root, {"source": SOURCE, "size": config.size, "fps": config.fps, "seed": config.seed,
                                  "config": config.recipe()})
        held_out = held_out_identities(config)
        tasks, skipped = [], 0
        for index in range(config.identities):
            split = split_of(config, index, held_out)
            missing = [k for k in range(config.clips_per_identity)
                       if not clip_exists(root, split, identity_name(index), clip_name(k))]
            skipped += config.clips_per_identity - len(missing)
            if missing:
                tasks.append((str(root), config.recipe(), index, split, missing))
        total = sum(len(t[-1]) for t in tasks)
        workers = min(config.workers or os.cpu_count() or 1, max(1, len(tasks)))
        start = time.perf_counter()
        written = frames = 0
        bar = tqdm(total=total, desc="synthtalk", unit="clip", disable=not progress or total == 0)
        try:
            if workers <= 1:
                results = map(_write_identity, tasks)
                pool = None
            else:
                # fork: workers start at once and share the loaded face model; each uses one thread.
                method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
                pool = multiprocessing.get_context(method).Pool(workers)
                results = pool.imap_unordered(_write_identity, tasks)
            try:
                for done in results:
                    written += len(done)
                    frames += sum(n for _, n in done)
                    bar.update(len(done))
            finally:
                if pool is not None:
                    pool.terminate()
                    pool.join()
        finally:
            bar.close()
    seconds = time.perf_counter() - start
    return {"written": written, "skipped": skipped, "clips": config.identities * config.clips_per_identity,
            "frames_written": frames, "identities": config.identities,
            "test_identities": len(held_out), "train_identities": config.identities - len(held_out),
            "workers": workers, "seconds": seconds}
