"""Speed and memory of generation. Not a test.

* default: seconds per generated frame of the bundled tiny model on this machine's CPU (64 px,
  clips of 8 joined through ICA), with and without ICA;
* ``--scale sd15 --device cuda``: the same with the paper's network shape and random weights
  (SD-1.5 UNet, CLIP ViT-L/14, AnimateDiff v3 motion modules, SD-1.5-shaped VAE) at ``--size``
  (512) px, clips of 12 (``--dtype bfloat16|float16``; ``--offload``: diffusers'
  ``enable_model_cpu_offload``, the model and the VAE moved to the GPU only while they run);
* ``--memory``: peak resident memory of the whole ``mimaface animate`` job (generation streamed
  clip by clip, paste-back into the portrait, H.264 encoding) for 100 and for 1000 driving frames,
  each in a fresh process. Streaming means the second is close to the first.

Run: ``python benchmarks/bench_animate.py [--scale sd15 --device cuda] [--memory]``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL, DDIMScheduler

from mimaface.demo import asset_path
from mimaface.face3d.coefficients import motion_from_json
from mimaface.models import MIMAFaceConfig, MIMAFaceModel
from mimaface.pipelines.options import SamplingOptions
from mimaface.pipelines.pipeline import MIMAFacePipeline
from mimaface.training.tasks import SD15_NOISE_SCHEDULE


def seconds_per_frame(args: argparse.Namespace) -> None:
    if args.device == "cpu":
        torch.set_num_threads(1)  # fastest for the tiny model on few cores
    dtype = getattr(torch, args.dtype)
    if args.scale == "tiny":
        pipeline = MIMAFacePipeline.from_pretrained(dtype=dtype)
    else:
        config = MIMAFaceConfig.sd15()
        with torch.device(args.device):  # initialised on the GPU: fast (offload moves it back to the CPU)
            model, vae = MIMAFaceModel(config), AutoencoderKL(**config.vae)
        pipeline = MIMAFacePipeline(model, vae, DDIMScheduler(**SD15_NOISE_SCHEDULE), image_size=args.size,
                                    clip_length=12)
        pipeline.to(dtype=dtype)
    if args.offload:
        pipeline.enable_model_cpu_offload(device=args.device)
    else:
        pipeline.to(args.device)
    pipeline.set_progress_bar_config(disable=True)
    size = pipeline.image_size
    talk = motion_from_json(asset_path("talk.json"))
    motion = talk.select(np.arange(args.frames) % talk.num_frames)
    motion.image_size = (size, size)
    source = np.full((size, size, 3), 127, np.uint8)
    print(f"{args.scale} on {args.device} ({args.dtype}{', model CPU offload' if args.offload else ''}): {size} px, "
          f"clips of {pipeline.config.clip_length}, {args.steps} steps, guidance {args.guidance:g}, {args.frames} frames")
    for use_ica in (True, False):
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = pipeline(source, motion, num_inference_steps=args.steps, guidance_scale=args.guidance, use_ica=use_ica,
                       generator=torch.Generator().manual_seed(0))
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        peak = f", peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB" if args.device.startswith("cuda") else ""
        print(f"  {'ICA' if use_ica else 'no ICA'}: {seconds / args.frames:.3f} s/frame, {args.frames / seconds:.2f} "
              f"frames/s ({len(out.clip_starts)} clips, {seconds:.1f} s{peak})", flush=True)


def peak_memory(frames: list[int], steps: int) -> None:
    """Peak RSS of `mimaface animate` (bundled model, paste-back into the 256 px portrait) per length."""
    talk = motion_from_json(asset_path("talk.json"))
    print(f"mimaface animate, bundled model, {steps} steps, pasted into {asset_path('portrait.jpg').name}, one thread")
    print("| driving frames | peak RSS (MiB) | seconds |")
    print("| ---: | ---: | ---: |")
    peaks = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in frames:
            driving = Path(tmp) / f"motion{n}.npz"
            talk.select(np.arange(n) % talk.num_frames).save(driving)
            start = time.perf_counter()
            process = subprocess.Popen([sys.executable, "-m", "mimaface.cli", "animate", "--source",
                                        str(asset_path("portrait.jpg")), "--driving", str(driving), "-o",
                                        str(Path(tmp) / "out.mp4"), "--steps", str(steps), "--threads", "1", "-q"],
                                       stdout=subprocess.DEVNULL)
            _, status, usage = os.wait4(process.pid, 0)
            if status != 0:
                raise SystemExit(f"mimaface animate failed for {n} frames (status {status})")
            peaks.append(usage.ru_maxrss / 1024)  # Linux reports KiB
            print(f"| {n} | {peaks[-1]:.0f} | {time.perf_counter() - start:.0f} |", flush=True)
    print(f"ratio {frames[-1]} / {frames[0]} frames: {peaks[-1] / peaks[0]:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", choices=("tiny", "sd15"), default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    parser.add_argument("--frames", type=int, default=48)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--guidance", type=float, default=SamplingOptions.guidance_scale, help="1 = no CFG")
    parser.add_argument("--size", type=int, default=512, help="sd15: image size")
    parser.add_argument("--offload", action="store_true", help="enable_model_cpu_offload (GPU)")
    parser.add_argument("--memory", action="store_true", help="peak RSS of animate for 100 and 1000 frames")
    args = parser.parse_args()
    if args.memory:
        peak_memory([100, 1000], steps=2)
    else:
        seconds_per_frame(args)


if __name__ == "__main__":
    main()
