"""Time and peak memory of one stage-1 and one stage-2 training step, with random-initialised weights.

The same objective the trainer optimises (:class:`mimaface.training.objectives.DenoisingObjective`)
on random latents, at either scale:

* ``--scale sd15 --size 512 --device cuda``: the paper's network (SD-1.5 UNet, CLIP ViT-L/14,
  AnimateDiff v3 shapes) at 512x512 -> 64x64 latents, stage 1 batch ``--batch`` frames, stage 2
  ``--clips`` clips of ``--frames`` frames, AdamW, gradient checkpointing, ``--precision``.
* ``--scale tiny --size 64``: the CPU model (what ``configs/tiny.yaml`` trains).

Prints seconds per step (median of ``--steps`` after one warm-up step) and peak memory (CUDA:
``max_memory_allocated``; CPU: the process's peak RSS). Not a test.
Run: ``python benchmarks/bench_train_step.py --scale sd15 --device cuda``.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import torch
from diffusers import DDPMScheduler

from mimaface.models import MIMAFaceConfig, MIMAFaceModel
from mimaface.training.objectives import DenoisingObjective
from mimaface.training.tasks import SD15_NOISE_SCHEDULE


def peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def step_times(objective: DenoisingObjective, params: list, inputs: dict, steps: int, device: torch.device,
               dtype: torch.dtype | None) -> list[float]:
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    times = []
    for _ in range(steps + 1):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss, _ = objective(**inputs)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return times[1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", choices=("tiny", "sd15"), default="tiny")
    parser.add_argument("--size", type=int, default=None, help="image size (default 64 tiny, 512 sd15)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default=None,
                        help="autocast dtype (default bf16 on CUDA, fp32 on CPU)")
    parser.add_argument("--batch", type=int, default=None, help="stage-1 frames per step (default 16 tiny, 4 sd15)")
    parser.add_argument("--clips", type=int, default=1, help="stage-2 clips per step")
    parser.add_argument("--frames", type=int, default=None, help="stage-2 clip length (default 8 tiny, 12 sd15)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--no-checkpointing", action="store_true", help="no gradient checkpointing at sd15")
    args = parser.parse_args()
    if args.scale == "tiny" and args.device == "cpu":
        torch.set_num_threads(1)  # fastest for these widths on few cores
    device = torch.device(args.device)
    sd15 = args.scale == "sd15"
    size = args.size or (512 if sd15 else 64)
    batch = args.batch or (4 if sd15 else 16)
    frames = args.frames or (12 if sd15 else 8)
    precision = args.precision or ("bf16" if device.type == "cuda" else "fp32")
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]

    config = MIMAFaceConfig.sd15() if sd15 else MIMAFaceConfig.tiny()
    torch.manual_seed(0)
    model = MIMAFaceModel(config).to(device).train()
    if sd15 and not args.no_checkpointing:
        model.enable_gradient_checkpointing()
    scheduler = DDPMScheduler(**SD15_NOISE_SCHEDULE)
    h = size // config.vae_scale_factor
    c = config.latent_channels
    clip_size = int(config.appearance_encoder["image_size"])
    print(f"{args.scale}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters, {size}x{size} "
          f"-> {c}x{h}x{h} latents, {precision}, device {device}"
          f"{', gradient checkpointing' if sd15 and not args.no_checkpointing else ''}")

    def coefficients(*lead: int) -> dict:
        return {"pose": torch.randn(*lead, 6, device=device), "expression": torch.rand(*lead, 36, device=device),
                "gaze": torch.randn(*lead, 4, device=device) * 0.1}

    # Stage 1: frames, everything but the motion modules and W_cond trains, plus the identity loss.
    params = model.set_stage(1)
    objective = DenoisingObjective(model, scheduler, identity_weight=config.identity.weight)
    inputs = {"latents": torch.randn(batch, c, h, h, device=device),
              "render_latents": torch.randn(batch, c, h, h, device=device),
              "source": torch.rand(batch, 3, clip_size, clip_size, device=device) * 2 - 1,
              "identity": torch.arange(batch, device=device), **coefficients(batch)}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = step_times(objective, params, inputs, args.steps, device, dtype)
    print(f"stage 1: batch {batch}: {statistics.median(times):.3f} s/step, peak memory {peak_memory_gib(device):.2f} GiB, "
          f"{sum(p.numel() for p in params) / 1e6:.1f} M trained parameters")

    # Stage 2: clips, only W_cond and the motion modules train.
    params = model.set_stage(2)
    objective = DenoisingObjective(model, scheduler)
    b = args.clips
    inputs = {"latents": torch.randn(b, frames, c, h, h, device=device),
              "render_latents": torch.randn(b, frames, c, h, h, device=device),
              "source": torch.rand(b, 3, clip_size, clip_size, device=device) * 2 - 1, **coefficients(b, frames)}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = step_times(objective, params, inputs, args.steps, device, dtype)
    print(f"stage 2: {b} clip(s) x {frames} frames: {statistics.median(times):.3f} s/step, peak memory "
          f"{peak_memory_gib(device):.2f} GiB, {sum(p.numel() for p in params) / 1e6:.1f} M trained parameters")


if __name__ == "__main__":
    main()
