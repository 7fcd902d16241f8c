"""The on-disk format of talking-head data sets, shared by SynthTalk and real-video preprocessing.

::

    ROOT/
      dataset.json                       {"format": "mimaface-clips", "version": 1, "source": ...,
                                          "size": S, "fps": ..., plus what made it}
      train/ IDENTITY/ CLIP/             one folder per clip; identities never span two splits
      test/  IDENTITY/ CLIP/
        frames.npy    (T,S,S,3) uint8    the video frames (square crops, RGB)
        renders.npy   (T,S,S)   uint8    I_R: the posed face model as a grey face on black
        motion.npz                       the face3d coefficient file (pose, expression, gaze,
                                         identity, landmarks, fps, image_size = (S, S))
        clip.json                        {"identity": IDENTITY, "clip": CLIP, "num_frames": T, ...}

Arrays are plain ``.npy`` so readers can memory-map them: a training step reads only the
frames it samples. A clip folder is written under a hidden temporary name and renamed into
place when complete (:class:`ClipWriter`), so a folder with the clip's name is always a whole
clip, and re-running a writer skips the clips that exist.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mimaface import files
from mimaface.errors import InputError
from mimaface.face3d.coefficients import MotionCoefficients

FORMAT = "mimaface-clips"
VERSION = 1
SPLITS = ("train", "test")


@dataclass(frozen=True)
class ClipRef:
    """Where one clip lives."""

    root: Path
    split: str
    identity: str
    clip: str

    @property
    def path(self) -> Path:
        return self.root / self.split / self.identity / self.clip

    def frames(self, mmap: bool = True) -> np.ndarray:
        return np.load(self.path / "frames.npy", mmap_mode="r" if mmap else None)

    def renders(self, mmap: bool = True) -> np.ndarray:
        return np.load(self.path / "renders.npy", mmap_mode="r" if mmap else None)

    def motion(self) -> MotionCoefficients:
        return MotionCoefficients.load(self.path / "motion.npz")

    def info(self) -> dict:
        return json.loads((self.path / "clip.json").read_text())


def clip_exists(root: Path, split: str, identity: str, clip: str) -> bool:
    return (Path(root) / split / identity / clip / "clip.json").is_file()


def write_clip(root: Path, split: str, identity: str, clip: str, frames: np.ndarray, renders: np.ndarray,
               motion: MotionCoefficients, info: dict | None = None) -> ClipRef:
    """Write one clip atomically (a temporary folder renamed into place)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    frames = np.asarray(frames, dtype=np.uint8)
    renders = np.asarray(renders, dtype=np.uint8)
    t, size = len(frames), frames.shape[1]
    if frames.shape != (t, size, size, 3) or renders.shape != (t, size, size) or motion.num_frames != t:
        raise ValueError(f"clip arrays disagree: frames {frames.shape}, renders {renders.shape}, "
                         f"motion {motion.num_frames} frames")
    parent = Path(root) / split / identity
    final = parent / clip
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise files.write_error(final, exc) from exc
    with files.atomic_folder(final, replace=False, failure=_write_failure) as tmp:  # a clip is never overwritten
        np.save(tmp / "frames.npy", frames)
        np.save(tmp / "renders.npy", renders)
        motion.save(tmp / "motion.npz")
        meta = {"identity": identity, "clip": clip, "num_frames": t, "size": size, "fps": motion.fps} | (info or {})
        (tmp / "clip.json").write_text(json.dumps(meta))
    return ClipRef(Path(root), split, identity, clip)


def _write_failure(final: Path, exc: Exception) -> InputError | None:
    """The one line (:func:`mimaface.files.write_error`) for a clip whose files could not be written, or
    None when ``exc`` is not a failed write. ``motion.save`` reports a full disk itself, naming its file
    in the hidden folder; the line names the clip instead."""
    cause = exc.__cause__ if isinstance(exc, InputError) else exc
    if isinstance(cause, OSError) or (cause is not None and files.out_of_space(cause, final.parent)):
        return files.write_error(final, cause)
    return None


def write_dataset_info(root: Path, info: dict) -> None:
    """Write ``dataset.json`` (merging with what is there)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    path = root / "dataset.json"
    current = json.loads(path.read_text()) if path.is_file() else {}
    current |= {"format": FORMAT, "version": VERSION} | info
    files.write_json(path, current, indent=1)


def read_dataset_info(root: Path) -> dict:
    path = Path(root) / "dataset.json"
    if not path.is_file():
        raise InputError(f"{root}: not a mimaface data set (no dataset.json); make one with "
                         "`mimaface synth` or `mimaface preprocess`")
    info = json.loads(path.read_text())
    if info.get("format") != FORMAT:
        raise InputError(f"{path}: unknown data set format {info.get('format')!r}")
    return info


def list_clips(root: Path, split: str) -> list[ClipRef]:
    """Every complete clip of a split, sorted by identity then clip name."""
    read_dataset_info(root)
    base = Path(root) / split
    if not base.is_dir():
        return []
    refs = []
    for identity in sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for clip in sorted(p for p in identity.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if (clip / "clip.json").is_file():
                refs.append(ClipRef(Path(root), split, identity.name, clip.name))
    return refs
