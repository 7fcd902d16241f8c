"""Throughput of the training datasets, next to a tiny model's training step, and of preprocessing.

Prints items/s of :class:`FramePairDataset` and :class:`ClipDataset` through a ``DataLoader``
(batch 16, ``num_workers`` 0 and 2, output 64 and 128 px, from clips stored at 256 px, which need
resizing, and at the output size, which do not), best of ``--repeats``; then the time of one
training step of a tiny conv net on such a batch on this machine's cores, so the two can be
compared (data is never the bottleneck while a batch loads faster than a step runs). With
``--preprocess``, also the frames/s of :func:`preprocess_videos` on generated videos.
Not a test. Run: ``python benchmarks/bench_datasets.py [--batches N] [--preprocess]``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from mimaface.data.clipstore import write_clip, write_dataset_info
from mimaface.data.datasets import ClipDataset, FramePairDataset
from mimaface.face3d.coefficients import motion_from_json

BATCH = 16


def make_store(root: Path, size: int, clips: int = 8, frames: int = 100) -> None:
    """Random-textured clips (incompressible frames: the worst case for reading)."""
    rng = np.random.default_rng(0)
    write_dataset_info(root, {"source": "benchmark", "size": size, "fps": 25.0})
    for c in range(clips):
        motion = motion_from_json({"fps": 25, "num_frames": frames, "frames": [
            {"frame": 0, "yaw": -10, "jawOpen": 0.0}, {"frame": frames - 1, "yaw": 10, "jawOpen": 0.8}]})
        motion.image_size = (size, size)
        video = rng.integers(0, 256, (frames, size, size, 3), dtype=np.uint8)
        renders = rng.integers(0, 256, (frames, size, size), dtype=np.uint8)
        write_clip(root, "train", f"id{c % 4:02d}", f"clip{c:03d}", video, renders, motion)


def loader_rate(dataset, workers: int, batches: int, repeats: int) -> float:
    """Best items/s over ``repeats`` passes of ``batches`` batches (worker start-up excluded)."""
    loader = DataLoader(dataset, batch_size=BATCH, shuffle=True, num_workers=workers,
                        persistent_workers=workers > 0, generator=torch.Generator().manual_seed(0))
    best = 0.0
    for r in range(repeats + 1):
        dataset.set_epoch(r)
        it = iter(loader)
        next(it)  # start-up (worker spawn) and first batch not timed
        start = time.perf_counter()
        count = 0
        for _ in range(batches):
            try:
                batch = next(it)
            except StopIteration:
                it = iter(loader)
                batch = next(it)
            count += len(batch["identity"])
        if r > 0:
            best = max(best, count / (time.perf_counter() - start))
    return best


class TinyNet(torch.nn.Module):
    """A stand-in for a small generator: source + render in, image out."""

    def __init__(self, width: int = 32):
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(4, width, 3, padding=1), torch.nn.ReLU(),
            torch.nn.Conv2d(width, width, 3, stride=2, padding=1), torch.nn.ReLU(),
            torch.nn.Conv2d(width, width, 3, padding=1), torch.nn.ReLU(),
            torch.nn.Upsample(scale_factor=2), torch.nn.Conv2d(width, 3, 3, padding=1), torch.nn.Tanh())

    def forward(self, source, render):
        return self.net(torch.cat([source, render], 1))


def step_time(size: int, repeats: int) -> float:
    model = TinyNet()
    opt = torch.optim.Adam(model.parameters(), 1e-4)
    source = torch.rand(BATCH, 3, size, size) * 2 - 1
    render = torch.rand(BATCH, 1, size, size) * 2 - 1
    best = float("inf")
    for _ in range(repeats + 1):
        start = time.perf_counter()
        loss = (model(source, render) - source).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        best = min(best, time.perf_counter() - start)
    return best


def bench_datasets(batches: int, repeats: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        stores = {}
        for stored in (256, 128, 64):
            stores[stored] = Path(tmp) / f"s{stored}"
            make_store(stores[stored], stored)
        print(f"torch threads: {torch.get_num_threads()}, batch {BATCH}, best of {repeats} x {batches} batches")
        print(f"{'dataset':<34}{'stored':>7}{'out':>5}{'workers=0':>12}{'workers=2':>12}   items/s")
        for out in (64, 128):
            for stored in (256, out):
                for name, make in (("FramePairDataset", lambda r, s: FramePairDataset(r, size=s)),
                                   ("ClipDataset F=8 (frames/s)", lambda r, s: ClipDataset(r, num_frames=8, size=s))):
                    dataset = make(stores[stored], out)
                    per_item = 8 if name.startswith("Clip") else 1
                    rates = [loader_rate(dataset, w, batches, repeats) * per_item for w in (0, 2)]
                    print(f"{name:<34}{stored:>7}{out:>5}{rates[0]:>12.0f}{rates[1]:>12.0f}")
        for out in (64, 128):
            t = step_time(out, repeats)
            print(f"tiny conv net training step, batch {BATCH} at {out}px: {t * 1000:.1f} ms "
                  f"= {BATCH / t:.0f} items/s needed")


def bench_preprocess(frames: int, videos: int, repeats: int) -> None:
    """Best-of-``repeats`` frames/s over ``videos`` generated videos, after a discarded warm-up run
    (model loading, MediaPipe and torch start-up); with 2 workers the worker start-up is included."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from test_preprocess import (
        moving_portrait_video,  # the tests' generated camera-motion video
    )

    from mimaface.data.preprocess import PreprocessConfig, preprocess_videos
    from mimaface.media import write_video

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "videos"
        video, _ = moving_portrait_video(frames, width=640, height=360)
        for k in range(videos):
            (folder / f"id{k}").mkdir(parents=True)
            write_video(folder / f"id{k}" / "v.mp4", video, 25.0)
        run = 0

        def once(size: int, workers: int) -> float:
            nonlocal run
            run += 1
            out = Path(tmp) / f"out{run}"
            return preprocess_videos(folder, out, PreprocessConfig(size=size, workers=workers),
                                     progress=False)["frames_per_second"]

        once(128, 1)  # warm-up
        for size in (128, 256):
            for workers in (1, 2):
                best = max(once(size, workers) for _ in range(repeats))
                print(f"preprocess {videos} videos x {frames} frames 640x360 -> {size}px, workers={workers}: "
                      f"{best:.1f} frames/s (best of {repeats})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--preprocess", action="store_true", help="also time preprocessing")
    parser.add_argument("--frames", type=int, default=200, help="frames per generated video (--preprocess)")
    parser.add_argument("--videos", type=int, default=4, help="generated videos (--preprocess)")
    args = parser.parse_args()
    bench_datasets(args.batches, args.repeats)
    if args.preprocess:
        bench_preprocess(args.frames, args.videos, args.repeats)


if __name__ == "__main__":
    main()
