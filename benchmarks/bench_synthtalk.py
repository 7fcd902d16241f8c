"""Frames/s of SynthTalk: end-to-end data-set generation (all cores, writing included) and
single-process rendering alone.

    python benchmarks/bench_synthtalk.py                      # sizes 64 128 256
    python benchmarks/bench_synthtalk.py --sizes 64 256 512 --repeats 3

End to end: a fresh data set of ``--identities`` x ``--clips`` clips of ``--frames`` frames is
generated into a temporary folder (identity set-up, motion, frames, I_R, landmarks, writing),
best of ``--repeats`` runs, with all cores (``--workers``). Render only: one process, one torch
thread, the frames of a clip of an already built identity (``SceneRenderer.render``), best of
``--repeats``; and, for reference, the I_R render (``render_motion``) of the same clip.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time

import torch

from mimaface.face3d.model import FaceModel
from mimaface.face3d.pipeline import render_motion
from mimaface.synthtalk.generator import (
    SynthConfig,
    clip_motion,
    generate_dataset,
    make_identity,
)
from mimaface.synthtalk.scene import SceneRenderer


def end_to_end(size: int, args: argparse.Namespace) -> float:
    best = float("inf")
    for _ in range(args.repeats):
        root = tempfile.mkdtemp(prefix="bench_synthtalk_")
        try:
            config = SynthConfig(identities=args.identities, clips_per_identity=args.clips, frames=args.frames,
                                 size=size, seed=1, workers=args.workers)
            start = time.perf_counter()
            stats = generate_dataset(root, config, progress=False)
            best = min(best, time.perf_counter() - start)
            assert stats["written"] == args.identities * args.clips
        finally:
            shutil.rmtree(root, ignore_errors=True)
    return args.identities * args.clips * args.frames / best


def render_only(size: int, args: argparse.Namespace) -> tuple[float, float, float]:
    torch.set_num_threads(1)
    model = FaceModel.load()
    config = SynthConfig(frames=args.frames, size=size, seed=1)
    ident = make_identity(config, 0, model)
    start = time.perf_counter()
    renderer = SceneRenderer(ident, size, model)
    setup = time.perf_counter() - start
    motion = clip_motion(config, ident, 0, model)
    best = best_ir = float("inf")
    for _ in range(args.repeats):
        start = time.perf_counter()
        renderer.render(motion.pose, motion.expression, motion.gaze)
        best = min(best, time.perf_counter() - start)
        start = time.perf_counter()
        for _ in render_motion(motion, size, model=model, progress=False):
            pass
        best_ir = min(best_ir, time.perf_counter() - start)
    return args.frames / best, args.frames / best_ir, setup


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--identities", type=int, default=8)
    parser.add_argument("--clips", type=int, default=4)
    parser.add_argument("--frames", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    args = parser.parse_args()
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}; "
          f"{args.identities} identities x {args.clips} clips x {args.frames} frames, best of {args.repeats}")
    print(f"{'size':>5} {'end-to-end fps':>15} {'render-only fps':>16} {'I_R fps':>9} {'identity setup s':>17}")
    for size in args.sizes:
        e2e = end_to_end(size, args)
        render, ir, setup = render_only(size, args)
        print(f"{size:>5} {e2e:>15.1f} {render:>16.1f} {ir:>9.1f} {setup:>17.3f}", flush=True)


if __name__ == "__main__":
    main()
