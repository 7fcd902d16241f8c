"""Real-video preprocessing: a folder of talking-head videos becomes a clip store (:mod:`.clipstore`).

Input: ``VIDEO_DIR/IDENTITY/.../VIDEO.mp4`` (VoxCeleb-style, one person per video; the identity is
the first folder under ``VIDEO_DIR``), or any layout with a CSV mapping video files to identities
(:attr:`PreprocessConfig.identities_csv`). Output: the same format SynthTalk writes, with
``dataset.json`` (source ``"preprocess"``) and ``preprocess_log.jsonl`` (one JSON record per video
and run: what was written, or why the video was skipped).

Per video (in a worker process):

1. **Tracking.** The frames (resampled to ``fps`` when set) go through
   :func:`~mimaface.face3d.landmarks.track_faces`; gaps of at most ``max_gap`` frames are
   interpolated (:func:`~mimaface.face3d.landmarks.fill_missing`). A longer gap splits the video
   into segments, and segments shorter than ``min_clip_frames`` are dropped.
2. **Where the head is.** The face model is fitted to the landmarks in the full frame, with one
   identity fitted jointly over the whole video. Each frame's box is derived from the fitted
   *pose*, not from the landmarks' extent (:mod:`mimaface.face3d.crop`): its centre is where the
   centre of the subject's neutral face projects, its side ``crop_scale`` times the extent of the
   subject's neutral frontal landmarks at the fitted scale. An open mouth or a turned head
   therefore neither moves nor zooms the crop (the landmarks' own box grows by about 10 % when
   the jaw drops).
3. **Stable crop.** The per-frame centre and side are smoothed over time (a 5-frame median
   against outliers, then a quadratic Savitzky-Golay filter ``smooth_seconds`` long: it passes
   head and camera motion slower than about 1/``smooth_seconds`` Hz without lag, including at the
   ends of a clip, and removes jitter). A clip whose smoothed box moves and scales by less than
   ``fixed_box_tolerance`` of its side gets one fixed box (its median). Boxes are square; the part
   outside the frame is padded (black by default), or with ``border="shift"`` boxes are moved
   into the frame where they fit. The crop is resized to ``size`` x ``size`` (bicubic, antialiased).
4. **Coefficients for the crops.** The landmarks are mapped into crop pixels (the same
   per-frame similarity that makes the crops) and the fitter is run again there, with the
   video's identity fixed and One-Euro smoothing: pose ``tx, ty, scale`` are then relative to the
   crop, and are nearly constant when the crop follows the head. I_R is rendered from these
   coefficients at the crop size (:func:`~mimaface.face3d.pipeline.render_motion`), after
   rounding them to the float32 they are stored in, so a render of the stored motion reproduces
   ``renders.npy`` exactly.
5. **Clips.** Each segment is cut into clips of at most ``max_clip_frames`` frames, of nearly
   equal lengths (no short leftover), named ``<video path>-<k>`` (k = 000, 001, ...).

Videos run in a :class:`~concurrent.futures.ProcessPoolExecutor` (spawned workers with one
torch and one BLAS thread each; a script calling :func:`preprocess_videos` with ``workers`` > 1
needs the ``if __name__ == "__main__":`` guard; ``workers=1`` runs in the calling process). A video that fails (unreadable, no face, too short, or any error) is logged and
skipped. A re-run resumes: videos the log records as done (same file size and modification
time, all clips present) are skipped without decoding, as are videos that failed for a reason
in the input itself (unless ``retry_failed``); within a video, clips that exist are not rewritten.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import csv
import dataclasses
import hashlib
import itertools
import json
import logging
import math
import multiprocessing
import os
import re
import time
import traceback
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from mimaface import files
from mimaface.data.clipstore import SPLITS, clip_exists, write_clip, write_dataset_info
from mimaface.errors import FaceNotFoundError, InputError, MimafaceError
from mimaface.face3d.crop import boxes_from_pose, crop_square, landmarks_to_crop, neutral_face_box

logger = logging.getLogger("mimaface.preprocess")

LOG_NAME = "preprocess_log.jsonl"
_BORDERS = ("pad", "shift")
_PAD_MODES = ("constant", "edge")
_MEDIAN_FRAMES = 5


@dataclass
class PreprocessConfig:
    """Settings of :func:`preprocess_videos`."""

    size: int = 256  # side of the stored square frames and renders, pixels
    crop_scale: float = 1.8  # crop side / extent of the neutral frontal face landmarks
    crop_offset_y: float = 0.0  # moves the crop centre down by this many face extents (negative: up)
    max_clip_frames: int = 250  # longer videos are cut into clips of at most this many frames
    min_clip_frames: int = 16  # shorter videos (and face segments) are skipped
    fps: float | None = None  # resample videos to this frame rate (None: keep each video's own)
    workers: int | None = None  # processes (None: all cores; 1: in this process)
    identities_csv: str | os.PathLike | None = None  # CSV: video file, identity (see _read_identity_csv)
    test_identities: tuple[str, ...] = ()  # identities that go to the test split
    test_fraction: float = 0.0  # or this fraction of identities (chosen by a hash of the name)
    split_seed: int = 0  # salts that hash
    smooth: bool = True  # smooth the crop box over time (False: per-frame boxes)
    smooth_seconds: float = 1.0  # Savitzky-Golay window of the box smoothing
    fixed_box_tolerance: float = 0.03  # one box per clip when its box moves less than this x its side
    border: str = "pad"  # "pad": boxes stay centred, the outside is padded; "shift": moved into the frame
    pad_mode: str = "constant"  # padding outside the frame: "constant" (black) or "edge"
    max_gap: int = 12  # longest run of frames without a face that is interpolated
    face_index: int | None = None  # which face to follow (None: the largest)
    smooth_coefficients: bool = True  # One-Euro smoothing of the crop coefficients
    retry_failed: bool = False  # re-run videos that failed before for a reason in the input
    frame_cache_mb: float = 256.0  # keep decoded frames of a video in memory up to this, else decode twice

    def validate(self) -> None:
        if int(self.size) < 16:
            raise InputError(f"size must be at least 16 pixels, got {self.size}")
        if not self.crop_scale > 0:
            raise InputError(f"crop_scale must be positive, got {self.crop_scale}")
        if self.min_clip_frames < 1 or self.max_clip_frames < self.min_clip_frames:
            raise InputError(f"need 1 <= min_clip_frames <= max_clip_frames, got {self.min_clip_frames} and "
                             f"{self.max_clip_frames}")
        if self.fps is not None and not self.fps > 0:
            raise InputError(f"fps must be positive, got {self.fps}")
        if self.workers is not None and self.workers < 1:
            raise InputError(f"workers must be at least 1, got {self.workers}")
        if not 0.0 <= self.test_fraction < 1.0:
            raise InputError(f"test_fraction must be in [0, 1), got {self.test_fraction}")
        if self.border not in _BORDERS:
            raise InputError(f"border must be one of {_BORDERS}, got {self.border!r}")
        if self.pad_mode not in _PAD_MODES:
            raise InputError(f"pad_mode must be one of {_PAD_MODES}, got {self.pad_mode!r}")
        if self.max_gap < 0:
            raise InputError(f"max_gap must be 0 or more, got {self.max_gap}")

    def to_json(self) -> dict:
        out = dataclasses.asdict(self)
        out["identities_csv"] = None if self.identities_csv is None else str(self.identities_csv)
        out["test_identities"] = list(self.test_identities)
        return out


# ------------------------------------------------------------------------------------ the run


@dataclass
class _Task:
    path: Path
    rel: str  # path relative to the video folder (posix)
    identity: str
    split: str
    clip_base: str
    output: Path
    config: PreprocessConfig
    signature: tuple[int, int]  # file size, modification time (ns)


def preprocess_videos(video_dir: str | os.PathLike, output: str | os.PathLike, config: PreprocessConfig | None = None,
                      *, progress: bool = True) -> dict:
    """Turn a folder of talking-head videos into a clip store under ``output``.

    Returns a summary: ``videos`` (found), ``processed`` / ``resumed`` (done before) /
    ``failed`` / ``skipped_failed`` (failed in an earlier run, not retried) counts, ``clips`` and
    ``frames`` written by this run, ``clips_total`` (the video clips now in the store), ``seconds``,
    ``frames_per_second`` (written frames / seconds), ``failures`` (``[{"video", "error"}]`` of this
    run), ``splits`` (identity -> split), ``log`` (path of the JSON-lines log)."""
    cfg = config or PreprocessConfig()
    cfg.validate()
    start = time.perf_counter()
    video_dir, output = Path(video_dir), Path(output)
    if not video_dir.is_dir():
        raise InputError(f"{video_dir}: no such folder")
    videos = find_videos(video_dir, exclude=output)
    if not videos:
        raise InputError(f"{video_dir}: no video files found (looked for {', '.join(sorted(_video_extensions()))})")
    csv_map = _read_identity_csv(Path(cfg.identities_csv)) if cfg.identities_csv is not None else None

    with files.folder_lock(output):  # one writer: two runs would write the same clips and log
        _check_existing_dataset(output, cfg)
        log = _RunLog(output / LOG_NAME)
        log.write({"event": "start", "video_dir": str(video_dir.resolve()), "videos": len(videos),
                   "config": cfg.to_json()})

        failures: list[dict] = []
        named: list[tuple[Path, str, str]] = []
        for path in videos:
            rel = path.relative_to(video_dir)
            identity = _identity_for(rel, csv_map)
            if identity is None:
                reason = (f"{rel.as_posix()}: no identity: it is not listed in {cfg.identities_csv}"
                          if csv_map is not None else
                          f"{rel.as_posix()}: no identity: put videos in VIDEO_DIR/IDENTITY/ folders or give a CSV")
                failures.append(_failed_record(rel.as_posix(), None, None, reason, retry=True))
                continue
            named.append((path, rel.as_posix(), identity))
        splits = _assign_splits({identity for _, _, identity in named}, output, cfg)
        write_dataset_info(output, {"source": "preprocess", "size": int(cfg.size), "fps": cfg.fps,
                                    "video_dir": str(video_dir.resolve()), "preprocess": cfg.to_json()})

        previous = log.last_records()
        tasks: list[_Task] = []
        counts = {"resumed": 0, "skipped_failed": 0}
        for path, rel, identity in named:
            stat = path.stat()
            task = _Task(path, rel, identity, splits[identity], _clip_base(rel, identity, csv_map is None), output, cfg,
                         (stat.st_size, stat.st_mtime_ns))
            state = _resume_state(previous.get(rel), task)
            if state:
                counts[state] += 1
            else:
                tasks.append(task)

        for record in failures:
            log.write(record)
            logger.warning("skipped %s", record["error"])
        results = _run_tasks(tasks, cfg, log, progress)
        for record in results:
            if record["status"] == "failed":
                failures.append(record)

        ok = [r for r in results if r["status"] == "ok"]
        summary = {
            "videos": len(videos),
            "processed": len(ok),
            "resumed": counts["resumed"],
            "failed": len(failures),
            "skipped_failed": counts["skipped_failed"],
            "clips": sum(len(r["written"]) for r in ok),
            "frames": sum(r["frames_written"] for r in ok),
            "seconds": time.perf_counter() - start,
            "failures": [{"video": r["video"], "error": r["error"]} for r in failures],
            "splits": splits,
            "log": str(log.path),
        }
        summary["frames_per_second"] = summary["frames"] / max(summary["seconds"], 1e-9)
        stored = _stored_clips(output)
        summary["clips_total"] = len(stored)
        log.write({"event": "end"} | {k: v for k, v in summary.items() if k not in ("failures", "splits", "log")})
        identities = {s: sorted({identity for split, identity, _ in stored if split == s}) for s in SPLITS}
        write_dataset_info(output, {"identities": identities, "num_clips": summary["clips_total"]})
        return summary


def _stored_clips(output: Path) -> list[tuple[str, str, str]]:
    """(split, identity, clip) of every complete clip in the output (temporary folders left out)."""
    found = []
    for split in SPLITS:
        for path in (output / split).glob("*/*/clip.json"):
            if not (path.parent.name.startswith(".") or path.parent.parent.name.startswith(".")):
                found.append((split, path.parent.parent.name, path.parent.name))
    return found


def find_videos(video_dir: Path, exclude: Path | None = None) -> list[Path]:
    """Video files under ``video_dir`` (recursively, hidden files and folders left out), sorted."""
    from mimaface.media import is_video_path

    video_dir = Path(video_dir)
    skip = Path(exclude).resolve() if exclude is not None else None
    out = []
    for path in video_dir.rglob("*"):
        rel = path.relative_to(video_dir)
        if any(part.startswith(".") for part in rel.parts) or not is_video_path(path) or not path.is_file():
            continue
        if skip is not None and skip in path.resolve().parents:
            continue
        out.append(path)
    return sorted(out, key=lambda p: p.relative_to(video_dir).as_posix())


def _video_extensions() -> frozenset[str]:
    from mimaface.media import VIDEO_EXTENSIONS

    return VIDEO_EXTENSIONS


def _run_tasks(tasks: list[_Task], cfg: PreprocessConfig, log: _RunLog, progress: bool) -> list[dict]:
    from tqdm.auto import tqdm

    results: list[dict] = []
    workers = min(cfg.workers or _cpu_count(), len(tasks))
    bar = tqdm(total=len(tasks), desc="preprocess", unit="video", disable=not progress or not tasks)

    def done(record: dict) -> None:
        log.write(record)
        results.append(record)
        if record.get("stop"):  # the output cannot be written (a full disk): every other video would fail too
            raise InputError(record["error"])
        if record["status"] == "failed":
            logger.warning("skipped %s", record["error"])
        bar.update(1)

    try:
        if workers <= 1:
            for task in tasks:
                done(process_video(task))
        else:
            _run_pool(tasks, workers, done)
    finally:
        bar.close()
    return results


_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS",
                     "NUMEXPR_NUM_THREADS")


@contextlib.contextmanager
def _single_threaded_children():
    """Spawned workers start with one BLAS / OpenMP thread each (variables the user set are kept):
    the fitter's many small solves slow down many times over when each of ``workers`` processes
    also runs a BLAS thread per core."""
    added = [name for name in _THREAD_VARIABLES if name not in os.environ]
    for name in added:
        os.environ[name] = "1"
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


def _run_pool(tasks: list[_Task], workers: int, done) -> None:
    """At most ``workers`` videos in flight; a crashed worker fails only the videos it had in flight."""
    with _single_threaded_children():
        _run_pool_inner(tasks, workers, done)


def _run_pool_inner(tasks: list[_Task], workers: int, done) -> None:
    context = multiprocessing.get_context("spawn")  # fork after torch's threads started can deadlock
    queue = list(reversed(tasks))
    while queue:
        pool = cf.ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_init_worker)
        try:
            pool.submit(_ping).result()
        except cf.process.BrokenProcessPool as exc:
            pool.shutdown(wait=False, cancel_futures=True)
            raise RuntimeError(
                "could not start the preprocessing worker processes; a script that calls preprocess_videos must "
                "do so under `if __name__ == '__main__':` (workers are spawned and import the main module), or "
                "use workers=1") from exc
        running: dict[cf.Future, _Task] = {}
        broken = False
        try:
            while queue or running:
                while queue and len(running) < workers and not broken:
                    task = queue.pop()
                    running[pool.submit(process_video, task)] = task
                if not running:
                    break
                finished, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
                for future in finished:
                    task = running.pop(future)
                    try:
                        record = future.result()
                    except cf.process.BrokenProcessPool:
                        broken = True
                        record = _failed_record(task.rel, task.identity, task.split,
                                                f"{task.rel}: the worker process died (crash or out of memory)",
                                                retry=True, signature=task.signature)
                    except Exception as exc:  # noqa: BLE001 - e.g. a result that could not be sent back
                        record = _failed_record(task.rel, task.identity, task.split,
                                                f"{task.rel}: {type(exc).__name__}: {exc}", retry=True,
                                                signature=task.signature)
                    done(record)  # outside the try: the error that stops the run (see _run_tasks) goes through
                if broken and not running:
                    break
        finally:
            pool.shutdown(wait=not broken, cancel_futures=True)


def _ping() -> bool:
    return True


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)


def _cpu_count() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


# ------------------------------------------------------------------------- one video (a worker)


_FITTER = None


def _fitter():
    global _FITTER
    if _FITTER is None:
        from mimaface.face3d.fitting import FaceFitter

        _FITTER = FaceFitter()
    return _FITTER


def process_video(task: _Task) -> dict:
    """Preprocess one video; never raises: returns the log record (status ``ok`` or ``failed``)."""
    start = time.perf_counter()
    base = {"video": task.rel, "identity": task.identity, "split": task.split,
            "size_bytes": task.signature[0], "mtime_ns": task.signature[1]}
    try:
        outcome = _process(task)
    except _OutputFailed as exc:  # not the video's fault: it stops the run and is retried by the next one
        return base | {"status": "failed", "error": str(exc), "retry": True, "stop": True,
                       "seconds": time.perf_counter() - start}
    except MimafaceError as exc:  # the input's fault: not retried on a re-run
        return base | {"status": "failed", "error": str(exc), "retry": False, "seconds": time.perf_counter() - start}
    except Exception as exc:  # noqa: BLE001 - anything else (a library or program error): logged, retried
        return base | {"status": "failed", "error": f"{task.rel}: {type(exc).__name__}: {exc}", "retry": True,
                       "traceback": traceback.format_exc(), "seconds": time.perf_counter() - start}
    return base | {"status": "ok", "seconds": time.perf_counter() - start} | outcome


def _process(task: _Task) -> dict:
    from mimaface.face3d.camera import pixels_to_normalized
    from mimaface.face3d.landmarks import TrackResult, fill_missing, track_faces
    from mimaface.media import iter_video_frames, probe_video

    cfg, name = task.config, str(task.path)
    info = probe_video(task.path)
    width, height = info.width, info.height
    fps = float(cfg.fps or info.fps)
    cache = _FrameCache(cfg.frame_cache_mb * 2**20)

    def frames() -> Iterator[np.ndarray]:
        return resample_frames(iter_video_frames(task.path), info.fps, fps)

    tracked = track_faces(cache.record(frames()), face_index=cfg.face_index, progress=False, source=name)
    total = tracked.num_frames
    if total < cfg.min_clip_frames:
        raise InputError(f"{name}: too short: {total} frames at {fps:g} fps (at least {cfg.min_clip_frames} needed)")
    segments = face_segments(tracked.found, cfg.max_gap)
    if not segments:
        raise FaceNotFoundError(f"{name}: no face found in any of the {total} frames")
    segments = [(a, b) for a, b in segments if b - a >= cfg.min_clip_frames]
    if not segments:
        raise FaceNotFoundError(f"{name}: no run of {cfg.min_clip_frames} frames with a face (gaps of more than "
                                f"{cfg.max_gap} frames split the video)")

    landmarks = np.full((total,) + tracked.landmarks.shape[1:], np.nan)
    for a, b in segments:
        landmarks[a:b] = fill_missing(TrackResult(tracked.landmarks[a:b], tracked.found[a:b]), cfg.max_gap, name)
    used = np.concatenate([np.arange(a, b) for a, b in segments])

    fitter = _fitter()
    identity = fitter.fit_identity(pixels_to_normalized(landmarks[used], width, height))
    full = fitter.fit(landmarks[used], width, height, identity=identity, smooth=False)
    pose = np.full((total, 6), np.nan)
    pose[used] = full.pose
    reference, extent = neutral_face_box(fitter.model, identity)

    boxes = np.full((total, 3), np.nan)  # centre x, centre y, side (pixels of the full frame)
    for a, b in segments:
        raw = boxes_from_pose(pose[a:b], reference, extent, width, height, cfg.crop_scale, cfg.crop_offset_y)
        boxes[a:b] = smooth_boxes(raw, fps, cfg.smooth_seconds) if cfg.smooth else raw

    clips = []
    for a, b in segments:
        for c0, c1 in split_range(a, b, cfg.max_clip_frames):
            box = boxes[c0:c1].copy()
            fixed = cfg.smooth and cfg.fixed_box_tolerance > 0 and box_moves_less_than(box, cfg.fixed_box_tolerance)
            if fixed:
                box[:] = np.median(box, axis=0)
            if cfg.border == "shift":
                box = shift_inside(box, width, height)
            clips.append({"name": f"{task.clip_base}-{len(clips):03d}", "start": c0, "end": c1, "box": box,
                          "fixed": bool(fixed)})
    pending = [c for c in clips if not clip_exists(task.output, task.split, task.identity, c["name"])]

    written, frames_written = [], 0
    if pending:
        source = cache.frames if cache.frames is not None else frames()
        for clip, crops in _crop_clips(source, pending, cfg.size, cfg.pad_mode, name):
            _write(task, clip, crops, landmarks, identity, fps, info, fitter)
            written.append(clip["name"])
            frames_written += clip["end"] - clip["start"]
    return {"clips": [c["name"] for c in clips], "written": written, "frames": total,
            "frames_written": frames_written, "fps": fps, "source_fps": info.fps,
            "fixed_boxes": sum(c["fixed"] for c in clips)}


def _write(task: _Task, clip: dict, crops: np.ndarray, landmarks: np.ndarray, identity: np.ndarray, fps: float,
           info, fitter) -> None:
    from mimaface.face3d.coefficients import MotionCoefficients
    from mimaface.face3d.pipeline import render_motion

    cfg, size = task.config, int(task.config.size)
    a, b = clip["start"], clip["end"]
    crop_landmarks = landmarks_to_crop(landmarks[a:b], clip["box"], size)
    fit = fitter.fit(crop_landmarks, size, size, identity=identity, smooth=cfg.smooth_coefficients, fps=fps)
    m = fitter.model
    motion = MotionCoefficients(*(_f32(v) for v in (fit.pose, fit.expression, fit.gaze, fit.identity)),
                                m.expression_names, m.identity_names, fps=fps, image_size=(size, size),
                                landmarks=crop_landmarks)
    renders = np.stack([image[..., 0] for image, _ in render_motion(motion, (size, size), model=m, progress=False)])
    box = clip["box"]
    info_json = {
        "source": "preprocess",
        "video": task.rel,
        "start_frame": a,
        "end_frame": b,
        "source_fps": info.fps,
        "source_size": [info.width, info.height],
        "crop_fixed": clip["fixed"],
        # per frame: left, top, side of the square crop in the (resampled) video's pixels
        "crop_boxes": np.round(np.stack([box[:, 0] - box[:, 2] / 2, box[:, 1] - box[:, 2] / 2, box[:, 2]], 1),
                               3).tolist(),
        "fit_rms": float(np.mean(fit.rms_error)),
    }
    try:
        write_clip(task.output, task.split, task.identity, clip["name"], crops, renders, motion, info_json)
    except InputError as exc:  # write_clip's only InputError: the clip could not be written (full disk, permissions)
        raise _OutputFailed(str(exc)) from exc


class _OutputFailed(Exception):
    """A clip could not be written (a full disk): the output's fault, not the video's."""


def _f32(array: np.ndarray) -> np.ndarray:
    """The values the coefficient file will hold (it stores float32), as float64."""
    return np.asarray(array, np.float32).astype(np.float64)


class _FrameCache:
    """Keeps the frames of the first decoding while they fit in ``limit`` bytes."""

    def __init__(self, limit: float):
        self.limit = limit
        self.frames: list[np.ndarray] | None = [] if limit > 0 else None

    def record(self, frames: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        used = 0
        for frame in frames:
            if self.frames is not None:
                used += frame.nbytes
                if used > self.limit:
                    self.frames = None
                else:
                    self.frames.append(frame)
            yield frame


def _crop_clips(frames: Iterable[np.ndarray], clips: list[dict], size: int, pad_mode: str,
                name: str) -> Iterator[tuple[dict, np.ndarray]]:
    """Yield ``(clip, crops)`` for clips given in frame order, cropping each frame once."""
    order = iter(clips)
    clip = next(order, None)
    buffer = None
    t = -1
    for t, frame in enumerate(frames):
        if clip is None:
            break
        if t < clip["start"]:
            continue
        if buffer is None:
            buffer = np.empty((clip["end"] - clip["start"], size, size, 3), np.uint8)
        cx, cy, side = clip["box"][t - clip["start"]]
        buffer[t - clip["start"]] = crop_square(frame, cx - side / 2, cy - side / 2, side, size, pad_mode)
        if t == clip["end"] - 1:
            yield clip, buffer
            clip, buffer = next(order, None), None
    if hasattr(frames, "close"):
        frames.close()  # stops the decoder when the last clip ends before the video does
    if clip is not None:
        raise InputError(f"{name}: the second decoding ended at frame {t + 1}, before frame {clip['end']}")


# -------------------------------------------------------------------------- pieces (pure, tested)


def resample_frames(frames: Iterable[np.ndarray], source_fps: float, fps: float) -> Iterator[np.ndarray]:
    """Frames at ``fps`` from frames at ``source_fps``: output frame ``j`` is the source frame
    nearest to time ``j / fps`` (frames are dropped, or repeated when ``fps`` is higher)."""
    if abs(source_fps - fps) < 1e-6 * fps:
        yield from frames
        return
    ratio = source_fps / fps
    j = 0
    for i, frame in enumerate(frames):
        while math.floor(j * ratio + 0.5) == i:
            yield frame
            j += 1


def face_segments(found: np.ndarray, max_gap: int) -> list[tuple[int, int]]:
    """``[start, end)`` runs of frames that have a face, bridging gaps of at most ``max_gap`` frames
    (a segment starts and ends on a frame with a face)."""
    idx = np.flatnonzero(np.asarray(found, bool))
    if len(idx) == 0:
        return []
    breaks = np.flatnonzero(np.diff(idx) > max_gap + 1)
    starts = np.concatenate([[idx[0]], idx[breaks + 1]])
    ends = np.concatenate([idx[breaks], [idx[-1]]]) + 1
    return [(int(a), int(b)) for a, b in zip(starts, ends)]


def split_range(start: int, end: int, max_len: int) -> list[tuple[int, int]]:
    """``[start, end)`` cut into the fewest pieces of at most ``max_len``, of nearly equal lengths."""
    count = max(1, math.ceil((end - start) / max_len))
    cuts = np.linspace(start, end, count + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in itertools.pairwise(cuts)]


def smooth_boxes(boxes: np.ndarray, fps: float, seconds: float) -> np.ndarray:
    """Median (5 frames) then quadratic Savitzky-Golay (``seconds`` long) along time, per column."""
    from scipy.ndimage import median_filter
    from scipy.signal import savgol_filter

    out = np.asarray(boxes, np.float64)
    n = len(out)
    if n >= _MEDIAN_FRAMES:
        out = median_filter(out, size=(_MEDIAN_FRAMES, 1), mode="nearest")
    window = min(round(seconds * fps) | 1, n if n % 2 else n - 1)
    if window > 3:
        out = savgol_filter(out, window, 2, axis=0, mode="interp")
    return out


def box_moves_less_than(boxes: np.ndarray, tolerance: float) -> bool:
    """Whether every box's centre and side stay within ``tolerance`` x the median side of the median box."""
    median = np.median(boxes, axis=0)
    deviation = np.abs(boxes - median).max(0)
    return bool(deviation.max() <= tolerance * median[2])


def shift_inside(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """Move boxes into the frame where they fit (a box larger than the frame is centred on it)."""
    out = np.array(boxes, np.float64)
    for axis, length in ((0, width), (1, height)):
        half = out[:, 2] / 2
        lo, hi = half, length - half
        out[:, axis] = np.where(lo <= hi, np.clip(out[:, axis], lo, np.maximum(lo, hi)), length / 2)
    return out


# ---------------------------------------------------------------- identities, splits, resuming


_UNSAFE = re.compile(r"[^A-Za-z0-9._+=-]+")


def safe_name(text: str) -> str:
    """A folder name from an identity or a video path: unusual characters become ``_``."""
    name = _UNSAFE.sub("_", text).strip("._") or "_"
    return name


def _clip_base(rel: str, identity: str, from_folder: bool) -> str:
    parts = list(Path(rel).with_suffix("").parts)
    if from_folder and len(parts) > 1:
        parts = parts[1:]
    return safe_name("_".join(parts))


def _identity_for(rel: Path, csv_map: dict[str, str] | None) -> str | None:
    if csv_map is not None:
        for key in (rel.as_posix(), rel.name, rel.stem):
            if key in csv_map:
                return csv_map[key]
        return None
    return safe_name(rel.parts[0]) if len(rel.parts) > 1 else None


def _read_identity_csv(path: Path) -> dict[str, str]:
    """``file,identity`` rows (a header row naming an ``identity`` column is optional; other columns
    are ignored). ``file`` is a path relative to the video folder, a file name, or a file name
    without its extension."""
    if not path.is_file():
        raise InputError(f"{path}: no such identities CSV file")
    with open(path, newline="", encoding="utf-8-sig") as fh:
        rows = [(n, r) for n, r in enumerate(csv.reader(fh), start=1) if any(cell.strip() for cell in r)]
    if not rows:
        raise InputError(f"{path}: the identities CSV is empty")
    file_col, id_col = 0, 1
    header = [c.strip().lower() for c in rows[0][1]]
    id_names = ("identity", "id", "speaker", "person", "subject")
    if any(h in id_names for h in header):
        id_col = next(i for i, h in enumerate(header) if h in id_names)
        file_names = ("file", "video", "path", "filename", "name")
        file_col = next((i for i, h in enumerate(header) if h in file_names), 1 if id_col == 0 else 0)
        rows = rows[1:]
    mapping = {}
    for number, row in rows:
        if len(row) <= max(file_col, id_col) or not row[file_col].strip() or not row[id_col].strip():
            raise InputError(f"{path}: line {number} needs a file and an identity, got {row}")
        mapping[Path(row[file_col].strip()).as_posix()] = safe_name(row[id_col].strip())
    return mapping


def _assign_splits(identities: set[str], output: Path, cfg: PreprocessConfig) -> dict[str, str]:
    """identity -> split. Identities already in the output keep their split; then the configured
    test identities; then, with ``test_fraction``, identities ranked by a salted hash of the name
    fill the test split up to that fraction (stable when videos are added)."""
    existing: dict[str, str] = {}
    for split in SPLITS:
        folder = output / split
        if folder.is_dir():
            for p in folder.iterdir():
                if p.is_dir() and not p.name.startswith("."):
                    existing[p.name] = split
    wanted_test = {safe_name(i) for i in cfg.test_identities}
    clash = sorted(i for i in wanted_test if existing.get(i) == "train")
    if clash:
        raise InputError(f"{output}: identities {clash} are configured as test identities but already have "
                         f"clips in train/; move or delete them first (no identity may be in both splits)")
    unknown = sorted(wanted_test - identities - set(existing))
    if unknown:
        logger.warning("test identities not found among the videos: %s", ", ".join(unknown))
    everyone = sorted(identities | set(existing))
    split = {i: existing.get(i, "test" if i in wanted_test else None) for i in everyone}
    if cfg.test_fraction > 0 and len(everyone) > 1:
        target = min(len(everyone) - 1, max(1, round(cfg.test_fraction * len(everyone))))
        have = sum(1 for s in split.values() if s == "test")
        ranked = sorted(everyone, key=lambda i: hashlib.sha1(f"{cfg.split_seed}:{i}".encode()).hexdigest())
        for identity in ranked:
            if have >= target:
                break
            if split[identity] is None:
                split[identity] = "test"
                have += 1
    return {i: split[i] or "train" for i in everyone if i in identities}


def _check_existing_dataset(output: Path, cfg: PreprocessConfig) -> None:
    path = output / "dataset.json"
    if not path.is_file():
        return
    try:
        info = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: unreadable ({exc})") from None
    if info.get("source") not in (None, "preprocess"):
        raise InputError(f"{output}: holds a {info.get('source')!r} data set; preprocess into another folder")
    if info.get("size") not in (None, int(cfg.size)):
        raise InputError(f"{output}: holds clips of size {info['size']}, not {cfg.size}; use another folder")
    before = info.get("preprocess") or {}
    changed = sorted(k for k, v in cfg.to_json().items()
                     if k in before and before[k] != v and k not in ("workers", "retry_failed", "frame_cache_mb"))
    if changed:
        logger.warning("%s was made with other settings (%s); existing clips are kept as they are",
                       output, ", ".join(changed))


def _failed_record(rel: str, identity: str | None, split: str | None, error: str, *, retry: bool,
                   signature: tuple[int, int] | None = None) -> dict:
    record = {"video": rel, "identity": identity, "split": split, "status": "failed", "error": error, "retry": retry}
    if signature is not None:
        record |= {"size_bytes": signature[0], "mtime_ns": signature[1]}
    return record


def _resume_state(record: dict | None, task: _Task) -> str | None:
    """``"resumed"`` / ``"skipped_failed"`` when the last run's record makes this video's work
    unnecessary, None when it must be processed."""
    if record is None or (record.get("size_bytes"), record.get("mtime_ns")) != task.signature:
        return None
    if record.get("status") == "ok":
        if record.get("identity") == task.identity and all(
                clip_exists(task.output, record.get("split"), task.identity, c) for c in record.get("clips", [])):
            return "resumed"
        return None
    if record.get("status") == "failed" and not record.get("retry", True) and not task.config.retry_failed:
        return "skipped_failed"
    return None


class _RunLog:
    """``preprocess_log.jsonl``: appended by the main process only, one record a line."""

    def __init__(self, path: Path):
        self.path = path

    def write(self, record: dict) -> None:
        record = {"time": datetime.now(UTC).isoformat(timespec="seconds")} | record
        line = json.dumps(record, default=_json_default) + "\n"
        try:
            with open(self.path, "a+b") as fh:
                end = fh.seek(0, os.SEEK_END)
                if end and os.pread(fh.fileno(), 1, end - 1) != b"\n":  # a line cut off (a killed run) stays alone
                    line = "\n" + line
                fh.write(line.encode("utf-8"))
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:  # a part written stays a cut-off line, which last_records skips
            raise files.write_error(self.path, exc) from exc

    def last_records(self) -> dict[str, dict]:
        out: dict[str, dict] = {}
        if not self.path.is_file():
            return out
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line cut off by a killed run
                continue
            if isinstance(record, dict) and "video" in record and "status" in record:
                out[record["video"]] = record
        return out


def _json_default(value):
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, (Path,)):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
