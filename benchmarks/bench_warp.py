"""Frames/s of the learning-free warp engine (``MeshWarpPipeline``), end to end. Not a test.

The astronaut photo (scikit-image) is found, cropped and fitted once by ``prepare_source``, then
driven by the bundled ``talk.json`` (jaw, lips, brows, blinks, gaze and head turns), retargeted
onto it and repeated to ``--frames`` frames. Two figures per crop size:

* **warp**: from per-frame coefficients to frames ((N,S,S,3) float in [0, 1], as
  ``generate_clips`` yields them): target mesh, rasterisation, map, ``grid_sample``, irises and
  mouths; without I_R, as ``animate`` asks for them (it shades them only for ``--side-by-side``;
  ``--renders`` counts them in);
* **+ H.264**: the same frames turned to uint8 and encoded by ``mimaface.media.VideoWriter``
  (libx264, ``--preset``, as ``mimaface animate`` writes them), the file finished;
* **+ mark + H.264**: the same with the invisible watermark in every frame, as ``animate`` does by
  default (``mimaface.provenance``; the C2PA signature, once per file, is not counted).

The per-source work (warp mesh, landmark detection, eye and mouth textures) is done before the
clock starts; each figure is the best of ``--rounds`` rounds.

    python benchmarks/bench_warp.py                      # CPU, 2 threads, 256 and 512 px
    python benchmarks/bench_warp.py --device cuda        # the same code on a GPU
    python benchmarks/bench_warp.py --threads 1 --sizes 256 --frames 50
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import PIL.Image
import torch

from mimaface.demo import asset_path
from mimaface.face3d.coefficients import motion_from_json
from mimaface.media import VIDEO_PRESET, VideoWriter
from mimaface.pipelines.pipeline import to_uint8
from mimaface.pipelines.retarget import retarget
from mimaface.pipelines.source import prepare_source
from mimaface.provenance import ProvenanceOptions
from mimaface.provenance.watermark import Payload, Watermarker
from mimaface.warp import MeshWarpPipeline, WarpConfig


def cpu_ticks() -> np.ndarray | None:
    """The machine's CPU time counters (/proc/stat: user, nice, system, idle, iowait, irq, softirq,
    steal), or None off Linux."""
    try:
        return np.array(Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9], np.int64)
    except (OSError, ValueError):
        return None


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=WarpConfig.batch_size)
    parser.add_argument("--clip-length", type=int, default=25)
    parser.add_argument("--renders", action="store_true", help="shade I_R too (as for --side-by-side or the app)")
    parser.add_argument("--preset", default=VIDEO_PRESET, help=f"libx264 preset of the encoded figure (default {VIDEO_PRESET}, as animate)")
    args = parser.parse_args()
    if args.frames < 1 or args.rounds < 1 or args.threads < 1 or any(s < 32 for s in args.sizes):
        parser.error("frames, rounds and threads must be positive and sizes at least 32")
    torch.set_num_threads(args.threads)

    from skimage import data

    source = prepare_source(data.astronaut(), max(args.sizes))
    talk = motion_from_json(asset_path("talk.json"))
    motion = retarget(source.coefficients, talk).select(np.arange(args.frames) % talk.num_frames)
    pipe = MeshWarpPipeline(WarpConfig(batch_size=args.batch_size), device=args.device)
    device_name = (torch.cuda.get_device_name() if args.device.startswith("cuda")
                   else f"{platform.machine()}, {os.cpu_count()} cores visible")
    print(f"{args.frames} frames of talk.json on the astronaut, {args.device} ({device_name}), "
          f"{args.threads} torch thread(s), batch {args.batch_size}, libx264 preset {args.preset}, "
          f"I_R {'shaded' if args.renders else 'not shaded'}")
    print(f"{'size':>6} {'warp (frames/s)':>16} {'+ H.264 (frames/s)':>19} {'+ mark + H.264 (frames/s)':>26}")
    watermarker = Watermarker(Payload.for_model("0" * 64), ProvenanceOptions().psnr_db)
    before = cpu_ticks()
    for size in args.sizes:
        crop = np.asarray(PIL.Image.fromarray(source.crop).resize((size, size), PIL.Image.BICUBIC))

        def frames(crop: np.ndarray = crop):
            yield from pipe.generate_clips(crop, motion, source_coefficients=source.coefficients,
                                           clip_length=args.clip_length, output_renders=args.renders)

        for _ in pipe.generate_clips(crop, motion.select([0]), source_coefficients=source.coefficients):
            pass  # the per-source work, and warm-up
        def encode(mark) -> float:
            with tempfile.TemporaryDirectory() as folder:
                start = time.perf_counter()
                with VideoWriter(Path(folder) / "warp.mp4", motion.fps, preset=args.preset) as writer:
                    for clip in frames():
                        for frame in to_uint8(clip.frames):
                            writer.write(mark(frame))
                return args.frames / (time.perf_counter() - start)

        warp = encoded = marked = 0.0
        for _ in range(args.rounds):
            synchronize(args.device)
            start = time.perf_counter()
            for clip in frames():
                synchronize(args.device)
            warp = max(warp, args.frames / (time.perf_counter() - start))
            encoded = max(encoded, encode(lambda frame: frame))
            marked = max(marked, encode(watermarker.mark))
        print(f"{size:>6} {warp:>16.1f} {encoded:>19.1f} {marked:>26.1f}")
    after = cpu_ticks()
    if before is not None and after is not None:
        # On a shared virtual machine the host may take some of "our" cores: figures fall with it.
        ticks = after - before
        print(f"during the runs the host took {ticks[7] / ticks.sum():.0%} of the CPU (steal); "
              f"{ticks[3] / ticks.sum():.0%} was idle")


if __name__ == "__main__":
    main()
