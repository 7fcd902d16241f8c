"""Seconds per generated frame of the long-video pipeline.

* default: the bundled tiny model on this machine's CPU (64 px, clips of 8 joined through ICA);
* ``--scale sd15 --device cuda``: the paper's network shape with random weights (SD-1.5 UNet,
  CLIP ViT-L/14, AnimateDiff v3 motion modules, SD-1.5-shaped VAE) at 512 px, clips of 12.

Prints s/frame for ``--frames`` frames at ``--steps`` denoising steps (with classifier-free
guidance, so two UNet passes per step), with and without ICA, and the share of the time spent
outside the denoiser (rendering I_R, VAE). Not a test.
Run: ``python benchmarks/bench_animate.py [--scale sd15 --device cuda]``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from diffusers import AutoencoderKL, DDIMScheduler

from mimaface.face3d.coefficients import motion_from_json
from mimaface.demo import asset_path
from mimaface.models import MIMAFaceConfig, MIMAFaceModel
from mimaface.pipelines.pipeline import MIMAFacePipeline
from mimaface.training.tasks import SD15_NOISE_SCHEDULE


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", choices=("tiny", "sd15"), default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--frames", type=int, default=48)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--fp16", action="store_true", help="half precision (CUDA)")
    args = parser.parse_args()
    if args.device == "cpu":
        torch.set_num_threads(1)  # fastest for the tiny model on few cores
    if args.scale == "tiny":
        pipeline = MIMAFacePipeline.from_pretrained(device=args.device)
    else:
        config = MIMAFaceConfig.sd15()
        model = MIMAFaceModel(config)
        vae = AutoencoderKL(**config.vae)
        pipeline = MIMAFacePipeline(model, vae, DDIMScheduler(**SD15_NOISE_SCHEDULE), device=args.device)
        pipeline.settings.update({"image_size": 512, "clip_length": 12})
        if args.fp16:
            pipeline.model.half()
            pipeline.vae.half()
    size = pipeline.image_size
    talk = motion_from_json(asset_path("talk.json"))
    motion = talk.select(np.arange(args.frames) % talk.num_frames)
    motion.image_size = (size, size)
    source = np.full((size, size, 3), 127, np.uint8)
    print(f"{args.scale} on {args.device}: {size} px, clips of {pipeline.default_clip_length}, {args.steps} steps, "
          f"CFG, {args.frames} frames")
    start = time.perf_counter()
    pipeline.render(motion)
    render_seconds = time.perf_counter() - start
    for use_ica in (True, False):
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = pipeline(source, motion, num_inference_steps=args.steps, use_ica=use_ica, progress=False)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        print(f"  {'ICA' if use_ica else 'no ICA'}: {seconds / args.frames:.3f} s/frame ({len(out.clip_starts)} clips, "
              f"{seconds:.1f} s; I_R rendering {render_seconds / seconds:.0%} of it)")


if __name__ == "__main__":
    main()
