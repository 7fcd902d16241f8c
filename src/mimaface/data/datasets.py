"""PyTorch datasets over the clip store (:mod:`.clipstore`): frame pairs (stage 1) and clips (stage 2).

Both read the stored arrays memory-mapped (an item touches only the frames it returns) and the
motion files lazily (only ``pose``, ``expression`` and ``gaze``, kept in a small per-process
cache), so building a dataset costs one small JSON read per clip and nothing is loaded up front.
They work in :class:`torch.utils.data.DataLoader` workers, forked or spawned (the caches are not
pickled).

Tensors of an item:

* images (frames, sources): ``float32`` ``(3, H, W)``, RGB, values in ``[-1, 1]``;
* I_R renders: ``float32`` ``(C, H, W)`` in ``[-1, 1]`` (black background = -1), with
  ``C = render_channels``: 1 by default (the render is grey), 3 for a copy in each channel;
* ``pose`` ``(6,)`` (yaw, pitch, roll in degrees; tx, ty, scale in the crop's normalised frame),
  ``expression`` ``(K,)`` in ``[0, 1]``, ``gaze`` ``(4,)``: ``float32``; a leading ``(F,)`` axis in
  :class:`ClipDataset`;
* ``identity``: ``int64`` scalar, the index of the clip's identity in :attr:`identities` (all
  identities of the data set, both splits, sorted by name: stable for a given data set and the
  same in train and test);
* bookkeeping: ``clip_index`` (into :attr:`clips`), frame indices within the clip.

Randomness (which source frame, window offsets) is a function of ``(seed, epoch, index)`` only:
the same item is returned whatever the worker, order or process. Call :meth:`set_epoch` before
each epoch (with ``persistent_workers=True`` the workers keep the epoch they started with).

``size`` resizes (antialiased bilinear) when it differs from the stored size; storing the data
at the training size is faster (see ``benchmarks/bench_datasets.py``).
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from mimaface.data.clipstore import SPLITS, ClipRef, list_clips, read_dataset_info
from mimaface.errors import InputError

_MOTION_KEYS = ("pose", "expression", "gaze")
_SOURCE_MODES = ("outside", "first", "window_start", "random")


def identity_names(root: str | os.PathLike) -> list[str]:
    """Every identity with a clip in any split of the data set, sorted: index = identity id."""
    names = {ref.identity for split in SPLITS for ref in list_clips(Path(root), split)}
    return sorted(names)


class _ClipStoreDataset(Dataset):
    """What both datasets share: the clip list, identity ids, cached array access and conversion."""

    def __init__(self, root: str | os.PathLike, split: str, size: int | None, render_channels: int, seed: int,
                 identities: Sequence[str] | None, motion_cache: int, array_cache: int):
        if split not in SPLITS:
            raise InputError(f"split must be one of {SPLITS}, got {split!r}")
        if render_channels not in (1, 3):
            raise ValueError(f"render_channels must be 1 or 3, got {render_channels}")
        if size is not None and int(size) < 1:
            raise ValueError(f"size must be positive, got {size}")
        self.root = Path(root)
        self.split = split
        self.info = read_dataset_info(self.root)
        self.clips: list[ClipRef] = list_clips(self.root, split)
        if not self.clips:
            raise InputError(f"{self.root}: no clips in the {split!r} split")
        metas = [json.loads((ref.path / "clip.json").read_text()) for ref in self.clips]
        self.lengths = np.array([int(m["num_frames"]) for m in metas], dtype=np.int64)
        self.stored_sizes = np.array([int(m.get("size") or self.info["size"]) for m in metas], dtype=np.int64)
        self.size = int(size) if size is not None else int(self.stored_sizes[0])
        self.render_channels = render_channels
        self.seed = int(seed)
        self.epoch = 0
        self.identities = list(identities) if identities is not None else identity_names(self.root)
        self.identity_to_index = {name: i for i, name in enumerate(self.identities)}
        missing = sorted({ref.identity for ref in self.clips} - set(self.identity_to_index))
        if missing:
            raise InputError(f"identities {missing} of the {split!r} split are not in the identity list given")
        self.clip_identity = np.array([self.identity_to_index[ref.identity] for ref in self.clips], dtype=np.int64)
        self._motion_cache_size = motion_cache
        self._array_cache_size = array_cache
        self._reset_caches()

    # -- public helpers ---------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Draw other random pairs / windows for this epoch (same epoch, same items)."""
        self.epoch = int(epoch)

    @property
    def num_identities(self) -> int:
        return len(self.identities)

    def motion(self, clip_index: int) -> dict[str, np.ndarray]:
        """``pose`` ``(T,6)``, ``expression`` ``(T,K)``, ``gaze`` ``(T,4)`` float32 of a clip (cached)."""
        cache = self._motions
        if clip_index in cache:
            cache.move_to_end(clip_index)
            return cache[clip_index]
        with np.load(self.clips[clip_index].path / "motion.npz") as data:
            motion = {key: np.ascontiguousarray(data[key], dtype=np.float32) for key in _MOTION_KEYS}
        cache[clip_index] = motion
        if len(cache) > self._motion_cache_size:
            cache.popitem(last=False)
        return motion

    # -- internals --------------------------------------------------------------------------
    def _reset_caches(self) -> None:
        self._motions: OrderedDict[int, dict[str, np.ndarray]] = OrderedDict()
        self._arrays: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_motions"] = OrderedDict()  # memory maps would be pickled as whole arrays
        state["_arrays"] = OrderedDict()
        return state

    def _clip_arrays(self, clip_index: int) -> tuple[np.ndarray, np.ndarray]:
        """Memory-mapped ``frames`` ``(T,S,S,3)`` and ``renders`` ``(T,S,S)`` of a clip."""
        cache = self._arrays
        if clip_index in cache:
            cache.move_to_end(clip_index)
            return cache[clip_index]
        ref = self.clips[clip_index]
        arrays = (ref.frames(mmap=True), ref.renders(mmap=True))
        cache[clip_index] = arrays
        if len(cache) > self._array_cache_size:
            cache.popitem(last=False)
        return arrays

    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng((self.seed, self.epoch, int(index)))

    def _images(self, frames: np.ndarray, stored: int) -> torch.Tensor:
        """uint8 ``(..., S, S, 3)`` -> float ``(..., 3, size, size)`` in [-1, 1]."""
        x = torch.from_numpy(np.array(frames))  # a copy: memory maps are read-only
        x = x.movedim(-1, -3)
        return self._to_unit(x, stored)

    def _renders(self, renders: np.ndarray, stored: int) -> torch.Tensor:
        """uint8 ``(..., S, S)`` -> float ``(..., C, size, size)`` in [-1, 1]."""
        x = torch.from_numpy(np.array(renders)).unsqueeze(-3)
        x = self._to_unit(x, stored)
        if self.render_channels == 3:
            x = x.expand(*x.shape[:-3], 3, *x.shape[-2:]).contiguous()
        return x

    def _to_unit(self, x: torch.Tensor, stored: int) -> torch.Tensor:
        x = x.to(torch.float32, memory_format=torch.contiguous_format)
        if stored != self.size:
            batch = x.shape[:-3]
            x = x.reshape(-1, *x.shape[-3:])
            x = torch.nn.functional.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True,
                                                align_corners=False).clamp_(0.0, 255.0)
            x = x.reshape(*batch, *x.shape[-3:])
        return x.mul_(2.0 / 255.0).sub_(1.0)


class FramePairDataset(_ClipStoreDataset):
    """Stage 1: a source frame and a target frame of the same clip.

    One item per stored frame (that frame is the target); the source is another frame of the
    same clip drawn uniformly from ``(seed, epoch, index)``, or the target itself with probability
    ``same_frame_probability`` (always for a one-frame clip). Item keys: ``source``, ``target``
    ``(3,H,W)``; ``target_render`` ``(C,H,W)``; ``pose`` ``(6,)``, ``expression`` ``(K,)``, ``gaze``
    ``(4,)`` of the target; ``identity``; ``clip_index``, ``source_index``, ``target_index``.
    ``source_render=True`` adds the source's I_R as ``source_render``.
    """

    def __init__(self, root: str | os.PathLike, split: str = "train", size: int | None = None, *,
                 same_frame_probability: float = 0.0, seed: int = 0, render_channels: int = 1,
                 source_render: bool = False, identities: Sequence[str] | None = None,
                 motion_cache: int = 1024, array_cache: int = 128):
        if not 0.0 <= same_frame_probability <= 1.0:
            raise ValueError(f"same_frame_probability must be in [0, 1], got {same_frame_probability}")
        super().__init__(root, split, size, render_channels, seed, identities, motion_cache, array_cache)
        self.same_frame_probability = float(same_frame_probability)
        self.source_render = source_render
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def locate(self, index: int) -> tuple[int, int]:
        """(clip index, frame index) of the target of item ``index``."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        clip = int(np.searchsorted(self.offsets, index, side="right")) - 1
        return clip, int(index - self.offsets[clip])

    def pair(self, index: int) -> tuple[int, int, int]:
        """(clip index, source frame, target frame) of item ``index`` in the current epoch."""
        clip, target = self.locate(index)
        count = int(self.lengths[clip])
        rng = self._rng(index)
        same = rng.random() < self.same_frame_probability
        if same or count == 1:
            return clip, target, target
        source = int(rng.integers(count - 1))
        return clip, source + (source >= target), target

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        clip, source, target = self.pair(int(index))
        frames, renders = self._clip_arrays(clip)
        stored = int(self.stored_sizes[clip])
        motion = self.motion(clip)
        pair = self._images(np.stack([frames[source], frames[target]]), stored)
        item = {
            "source": pair[0],
            "target": pair[1],
            "target_render": self._renders(renders[target], stored),
            "pose": torch.from_numpy(motion["pose"][target].copy()),
            "expression": torch.from_numpy(motion["expression"][target].copy()),
            "gaze": torch.from_numpy(motion["gaze"][target].copy()),
            "identity": torch.tensor(self.clip_identity[clip], dtype=torch.int64),
            "clip_index": torch.tensor(clip, dtype=torch.int64),
            "source_index": torch.tensor(source, dtype=torch.int64),
            "target_index": torch.tensor(target, dtype=torch.int64),
        }
        if self.source_render:
            item["source_render"] = self._renders(renders[source], stored)
        return item


class ClipDataset(_ClipStoreDataset):
    """Stage 2: ``num_frames`` frames of a clip, ``stride`` apart, with their I_R and coefficients.

    Windows span ``(num_frames - 1) * stride + 1`` stored frames; each clip gives windows starting
    every ``window_step`` frames (default: the span, so windows do not overlap); clips shorter than
    the span give none. With ``jitter``, each window is moved forward by a random offset below
    ``window_step`` (kept inside the clip), drawn from ``(seed, epoch, index)``; turn it off for
    evaluation. The source frame (``source``):

    * ``"outside"``: a random frame of the clip outside the window's span (the clip's first frame
      when the window covers the whole clip);
    * ``"first"``: the clip's first frame; ``"window_start"``: the window's first frame;
    * ``"random"``: any frame of the clip.

    Item keys: ``frames`` ``(F,3,H,W)``, ``renders`` ``(F,C,H,W)``, ``pose`` ``(F,6)``,
    ``expression`` ``(F,K)``, ``gaze`` ``(F,4)``, ``source`` ``(3,H,W)``, ``identity``,
    ``clip_index``, ``frame_indices`` ``(F,)``, ``source_index``.
    """

    def __init__(self, root: str | os.PathLike, split: str = "train", num_frames: int = 16, stride: int = 1, *,
                 size: int | None = None, source: str = "outside", window_step: int | None = None,
                 jitter: bool = True, seed: int = 0, render_channels: int = 1,
                 identities: Sequence[str] | None = None, motion_cache: int = 1024, array_cache: int = 128):
        if num_frames < 1 or stride < 1:
            raise ValueError(f"num_frames and stride must be at least 1, got {num_frames} and {stride}")
        if source not in _SOURCE_MODES:
            raise ValueError(f"source must be one of {_SOURCE_MODES}, got {source!r}")
        if window_step is not None and window_step < 1:
            raise ValueError(f"window_step must be at least 1, got {window_step}")
        super().__init__(root, split, size, render_channels, seed, identities, motion_cache, array_cache)
        self.num_frames, self.stride = int(num_frames), int(stride)
        self.span = (self.num_frames - 1) * self.stride + 1
        self.window_step = int(window_step or self.span)
        self.source_mode = source
        self.jitter = jitter
        windows = [(c, start) for c, length in enumerate(self.lengths)
                   for start in range(0, int(length) - self.span + 1, self.window_step)]
        if not windows:
            raise InputError(f"{self.root}: no clip of the {split!r} split has the {self.span} frames a window of "
                             f"{num_frames} frames at stride {stride} needs (longest: {self.lengths.max()})")
        self.windows = np.array(windows, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.windows)

    def window(self, index: int) -> tuple[int, int, int]:
        """(clip index, first frame of the window, source frame) of item ``index`` in this epoch."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        clip, start = (int(v) for v in self.windows[index])
        count = int(self.lengths[clip])
        rng = self._rng(index)
        if self.jitter and self.window_step > 1:
            start = min(start + int(rng.integers(self.window_step)), count - self.span)
        if self.source_mode == "first":
            source = 0
        elif self.source_mode == "window_start":
            source = start
        elif self.source_mode == "random":
            source = int(rng.integers(count))
        else:
            outside = count - self.span
            if outside <= 0:
                source = 0
            else:
                source = int(rng.integers(outside))
                source = source if source < start else source + self.span
        return clip, start, source

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        clip, start, source = self.window(int(index))
        frames, renders = self._clip_arrays(clip)
        stored = int(self.stored_sizes[clip])
        window = slice(start, start + self.span, self.stride)
        motion = self.motion(clip)
        return {
            "frames": self._images(frames[window], stored),
            "renders": self._renders(renders[window], stored),
            "pose": torch.from_numpy(motion["pose"][window].copy()),
            "expression": torch.from_numpy(motion["expression"][window].copy()),
            "gaze": torch.from_numpy(motion["gaze"][window].copy()),
            "source": self._images(frames[source], stored),
            "identity": torch.tensor(self.clip_identity[clip], dtype=torch.int64),
            "clip_index": torch.tensor(clip, dtype=torch.int64),
            "frame_indices": torch.arange(start, start + self.span, self.stride, dtype=torch.int64),
            "source_index": torch.tensor(source, dtype=torch.int64),
        }
