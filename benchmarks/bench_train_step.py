"""Time and peak memory of one stage-1 and one stage-2 training step, with random-initialised weights.

The same objective the trainer optimises (:class:`mimaface.training.objectives.DenoisingObjective`)
on random latents, at either scale:

* ``--scale sd15 --size 512 --device cuda``: the paper's network (SD-1.5 UNet, CLIP ViT-L/14,
  AnimateDiff v3 shapes) at 512x512 -> 64x64 latents, stage 1 batch ``--batch`` frames, stage 2
  ``--clips`` clips of ``--frames`` frames, AdamW, gradient checkpointing, ``--precision``.
* ``--scale tiny --size 64``: the CPU model (what ``configs/tiny.yaml`` trains).

``--batch`` and ``--clips`` take a list (``1,4,8,16``): each size in turn, up to the first that does
not fit in GPU memory. ``--optimizer``: the trainer's ``adamw``, ``adamw_8bit`` or ``adafactor``.
Prints seconds per step (median of ``--steps`` after one warm-up step) and peak memory (CUDA:
``max_memory_allocated``; CPU: the process's peak RSS). Not a test.
Run: ``python benchmarks/bench_train_step.py --scale sd15 --device cuda --batch 1,4,8``.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import torch
from diffusers import DDPMScheduler

from mimaface.models import MIMAFaceConfig, MIMAFaceModel
from mimaface.training.config import OPTIMIZERS, StageSection
from mimaface.training.objectives import DenoisingObjective
from mimaface.training.tasks import SD15_NOISE_SCHEDULE
from mimaface.training.trainer import build_optimizer


def peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def step_times(objective: DenoisingObjective, params: list, inputs: dict, steps: int, device: torch.device,
               dtype: torch.dtype | None, optimizer_name: str) -> list[float]:
    optimizer = build_optimizer(params, StageSection(learning_rate=1e-5, optimizer=optimizer_name))
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
    parser.add_argument("--batch", default=None, help="stage-1 frames per step, or a list (default 16 tiny, 4 sd15)")
    parser.add_argument("--clips", default="1", help="stage-2 clips per step, or a list")
    parser.add_argument("--optimizer", choices=OPTIMIZERS, default="adamw")
    parser.add_argument("--stages", default="1,2", help="which stages (1,2)")
    parser.add_argument("--frames", type=int, default=None, help="stage-2 clip length (default 8 tiny, 12 sd15)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--no-checkpointing", action="store_true", help="no gradient checkpointing at sd15")
    args = parser.parse_args()
    if args.scale == "tiny" and args.device == "cpu":
        torch.set_num_threads(1)  # fastest for these widths on few cores
    device = torch.device(args.device)
    sd15 = args.scale == "sd15"
    size = args.size or (512 if sd15 else 64)
    batches = [int(b) for b in (args.batch or ("4" if sd15 else "16")).split(",")]
    clip_counts = [int(b) for b in args.clips.split(",")]
    stages = args.stages.split(",")
    frames = args.frames or (12 if sd15 else 8)
    precision = args.precision or ("bf16" if device.type == "cuda" else "fp32")
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]

    config = MIMAFaceConfig.sd15() if sd15 else MIMAFaceConfig.tiny()
    torch.manual_seed(0)
    with device:  # initialised where it runs (a 1.6 B-parameter random init is slow on a CPU)
        model = MIMAFaceModel(config).train()
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

    def run(stage: int, lead: tuple[int, ...]) -> bool:
        """One stage at one size; False when it did not fit in GPU memory."""
        params = model.set_stage(stage)
        objective = DenoisingObjective(model, scheduler, identity_weight=config.identity.weight if stage == 1 else 0.0)
        b = lead[0]
        inputs = {"latents": torch.randn(*lead, c, h, h, device=device),
                  "render_latents": torch.randn(*lead, c, h, h, device=device),
                  "source": torch.rand(b, 3, clip_size, clip_size, device=device) * 2 - 1, **coefficients(*lead)}
        if stage == 1:  # everything but the motion modules and W_cond trains, plus the identity loss
            inputs["identity"] = torch.arange(b, device=device)
        what = f"batch {b}" if stage == 1 else f"{b} clip(s) x {lead[1]} frames"
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        try:
            times = step_times(objective, params, inputs, args.steps, device, dtype, args.optimizer)
        except torch.OutOfMemoryError:
            print(f"stage {stage}: {what}: does not fit in GPU memory", flush=True)
            return False
        finally:
            model.zero_grad(set_to_none=True)
        print(f"stage {stage}: {what}: {statistics.median(times):.3f} s/step, peak memory "
              f"{peak_memory_gib(device):.2f} GiB, {sum(p.numel() for p in params) / 1e6:.1f} M trained parameters, "
              f"{args.optimizer}", flush=True)
        return True

    for stage, sizes in ((1, batches), (2, clip_counts)):
        if str(stage) in stages:
            for size in sizes:
                if not run(stage, (size,) if stage == 1 else (size, frames)):
                    break


if __name__ == "__main__":
    main()
