"""MIMAFace against the ReferenceNet design it does without: cost per denoising step and per training step.

The paper's efficiency argument (Methods, "Motion-Identity Modulated Appearance Learning"):
MIMAFace conditions the SD-1.5 UNet on CLIP tokens modulated by MIA, where Animate Anyone,
AniPortrait, Hallo and EchoMimic run a second UNet, the ReferenceNet
(:mod:`mimaface.models.referencenet`, built from the same diffusers UNet). Both at SD-1.5 /
CLIP ViT-L/14 shapes with random weights, the stage-1 (image) models, the same render-latent motion
input, side by side in one run; each measurement in its own process, so each peak is its own:

* **denoising step** (inference, classifier-free guidance: a batch of 2): time per step, and the
  one-off work per source (MIMAFace: CLIP + MIA; ReferenceNet: CLIP + the reference UNet, whose
  features every step then reads, as the released pipelines do);
* **training step** (forward, backward, optimizer step; gradient checkpointing; MIMAFace's real
  objective with the identity loss, the ReferenceNet design's denoising loss): time, peak memory
  and parameters trained.

Peak memory: CUDA ``max_memory_allocated``; CPU the process's peak RSS (weights included).
``--flops``: instead, the forward passes' floating-point operations as torch's ``FlopCounterMode``
counts them on the meta device (no weights, any size in seconds): a proxy free of the machine.
CPU recipe (only the ratios count there): fp32 inference; training with bf16 weights and
gradients and Adafactor, since the ReferenceNet design's fp32 weights and gradients alone (15 GB)
do not fit beside other work in 24 GB. GPU recipe: bf16 inference; training with fp32 weights,
bf16 autocast and AdamW. Not a test.

Run: ``OMP_NUM_THREADS=1 python benchmarks/bench_referencenet.py --size 128`` (CPU, ~40 min) or
``python benchmarks/bench_referencenet.py --device cuda --size 512``.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

DESIGNS = ("mimaface", "referencenet")
PHASES = ("denoise", "train")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def _timed(fn, device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def measure(design: str, phase: str, scale: str, size: int, steps: int, device: torch.device) -> dict:
    """One design, one phase, in this process."""
    from diffusers import DDPMScheduler

    from mimaface.models import MIMAFaceConfig, MIMAFaceModel
    from mimaface.models.referencenet import ReferenceNetModel
    from mimaface.training.config import StageSection
    from mimaface.training.objectives import DenoisingObjective
    from mimaface.training.tasks import SD15_NOISE_SCHEDULE
    from mimaface.training.trainer import build_optimizer

    cuda = device.type == "cuda"
    train = phase == "train"
    weights = torch.float32 if (cuda and train) or (not cuda and not train) else torch.bfloat16
    autocast = torch.bfloat16 if cuda and train else None
    # stage 1: image models on both sides, no motion modules
    config = (MIMAFaceConfig.sd15 if scale == "sd15" else MIMAFaceConfig.tiny)(motion_adapter=None)
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(weights)  # built in its dtype: no fp32 copy in the peak
    try:
        with device:
            model = MIMAFaceModel(config) if design == "mimaface" else ReferenceNetModel.from_config(config)
    finally:
        torch.set_default_dtype(default)
    model = model.to(dtype=weights)
    h = size // config.vae_scale_factor
    g = torch.Generator(device).manual_seed(0)
    latents = torch.randn(1, 4, h, h, device=device, generator=g, dtype=weights)
    render = torch.randn(1, 4, h, h, device=device, generator=g, dtype=weights)
    source_latents = torch.randn(1, 4, h, h, device=device, generator=g, dtype=weights)
    source = torch.rand(1, 3, size, size, device=device, generator=g)
    coefficients = {"pose": torch.zeros(1, 6, device=device), "expression": torch.zeros(1, 36, device=device),
                    "gaze": torch.zeros(1, 4, device=device)}
    result = {"design": design, "phase": phase, "scale": scale, "size": size, "weights": str(weights).removeprefix("torch."),
              "autocast": None if autocast is None else "bfloat16",
              "parameters": sum(p.numel() for p in model.parameters())}
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)

    if not train:
        model.eval()
        t = torch.full((2,), 500, device=device)
        with torch.no_grad():
            if design == "mimaface":
                state = {}

                def once() -> None:  # CLIP + MIA, once per source (MIA once per frame)
                    condition = model.encode_appearance(source, **coefficients).condition
                    state["condition"] = torch.cat([model.null_condition(1).to(condition.dtype), condition])

                def step() -> None:
                    model(latents.repeat(2, 1, 1, 1), t, render.repeat(2, 1, 1, 1), condition=state["condition"])
            else:
                def once() -> None:  # CLIP + the reference UNet at t = 0, once per source
                    model.encode_reference(source_latents, source)

                def step() -> None:
                    model(latents.repeat(2, 1, 1, 1), t, render.repeat(2, 1, 1, 1))
            once_seconds = [_timed(once, device) for _ in range(2)][1:]
            times = [_timed(step, device) for _ in range(steps + 1)][1:]
        result |= {"seconds_per_step": statistics.median(times), "seconds_once_per_source": once_seconds[0]}
    else:
        model.train()
        scheduler = DDPMScheduler(**SD15_NOISE_SCHEDULE)
        if design == "mimaface":
            params = model.set_stage(1)
            objective = DenoisingObjective(model, scheduler, identity_weight=config.identity.weight)

            def loss_fn() -> torch.Tensor:
                return objective(latents=latents, render_latents=render, source=source * 2 - 1,
                                 identity=torch.zeros(1, dtype=torch.long, device=device), **coefficients)[0]
        else:
            params = model.set_trainable()

            def loss_fn() -> torch.Tensor:  # the denoising loss, as DenoisingObjective draws it
                noise = torch.randn_like(latents)
                timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (1,), device=device)
                noisy = scheduler.add_noise(latents, noise, timesteps)
                return F.mse_loss(model(noisy, timesteps, render, source_latents, source).float(), noise.float())
        model.enable_gradient_checkpointing()
        optimizer = build_optimizer(params, StageSection(learning_rate=1e-5, optimizer="adamw" if cuda else "adafactor"))

        def step() -> None:
            with torch.autocast(device.type, dtype=autocast or torch.bfloat16, enabled=autocast is not None):
                loss = loss_fn()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        times = []
        for i in range(steps + 1):
            times.append(_timed(step, device))
            print(f"  {design} train step {i}: {times[-1]:.1f} s", file=sys.stderr, flush=True)
        result |= {"seconds_per_step": statistics.median(times[1:]), "trained_parameters": sum(p.numel() for p in params),
                   "optimizer": "AdamW" if cuda else "Adafactor"}
    result["peak_memory_gib"] = _peak_gib(device)
    return result


def forward_gflops(size: int) -> dict[str, float]:
    """Counted GFLOPs of one forward pass of each part, batch 1, on the meta device."""
    from torch.utils.flop_counter import FlopCounterMode

    from mimaface.models import MIMAFaceConfig, MIMAFaceModel
    from mimaface.models.referencenet import ReferenceNetModel

    def count(fn) -> float:
        with FlopCounterMode(display=False) as mode:
            fn()
        return mode.get_total_flops() / 1e9

    config = MIMAFaceConfig.sd15(motion_adapter=None)
    with torch.device("meta"), torch.no_grad():
        mimaface, reference = MIMAFaceModel(config).eval(), ReferenceNetModel.from_config(config).eval()
        h = size // config.vae_scale_factor
        x, source = torch.zeros(1, 4, h, h), torch.zeros(1, 3, size, size)
        t = torch.full((1,), 500)
        condition = torch.zeros(1, config.condition_length, config.cross_attention_dim)
        out = {"CLIP ViT-L/14 (224 px)": count(lambda: mimaface.encode_source(source)),
               "MIMAFace denoiser (257-token condition)": count(lambda: mimaface(x, t, x, condition=condition,
                                                                                  drop_condition=False)),
               "reference UNet (t = 0)": count(lambda: reference.encode_reference(x, source))}
        out["reference UNet (t = 0)"] -= out["CLIP ViT-L/14 (224 px)"]  # encode_reference runs CLIP too
        out["denoiser with reference attention"] = count(lambda: reference(x, t, x))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--scale", choices=("sd15", "tiny"), default="sd15", help="tiny: a quick check of the script")
    parser.add_argument("--size", type=int, default=128, help="image size (latents at /8); 512 is the paper's")
    parser.add_argument("--steps", type=int, default=2, help="timed steps after one warm-up")
    parser.add_argument("--phases", default=",".join(PHASES), help="denoise,train or one of them")
    parser.add_argument("--flops", action="store_true", help="count forward GFLOPs (meta device) and stop")
    parser.add_argument("--child", nargs=2, metavar=("DESIGN", "PHASE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.flops:
        print(f"forward GFLOPs, batch 1, {args.size} px (torch FlopCounterMode, meta device)")
        for name, gflops in forward_gflops(args.size).items():
            print(f"| {name} | {gflops:.0f} |")
        return
    if args.child:
        print(json.dumps(measure(*args.child, args.scale, args.size, args.steps, device)))
        return
    phases = [p for p in args.phases.split(",") if p]
    results: dict[tuple[str, str], dict] = {}
    for phase in phases:
        for design in DESIGNS:
            command = [sys.executable, __file__, "--device", args.device, "--scale", args.scale, "--size",
                       str(args.size), "--steps", str(args.steps), "--child", design, phase]
            print(f"{design}, {phase} ...", file=sys.stderr, flush=True)
            out = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True).stdout
            results[design, phase] = json.loads(out.strip().splitlines()[-1])
            print(json.dumps(results[design, phase]), flush=True)
    print(f"\n{'SD-1.5' if args.scale == 'sd15' else 'tiny'} shapes, {args.size} px ({args.size // 8}x{args.size // 8} latents), device {args.device}, "
          f"median of {args.steps} steps after a warm-up")
    print("| | MIMAFace | ReferenceNet design | MIMAFace / ReferenceNet |")
    print("| --- | ---: | ---: | ---: |")

    def row(label: str, phase: str, key: str, fmt: str, scale: float = 1.0) -> None:
        if (("mimaface", phase) not in results) or key not in results["mimaface", phase]:
            return
        a, b = results["mimaface", phase][key] * scale, results["referencenet", phase][key] * scale
        print(f"| {label} | {a:{fmt}} | {b:{fmt}} | {a / b:.2f} |")

    row("parameters (M)", phases[0], "parameters", ".1f", 1e-6)
    row("denoising step, CFG batch 2 (s)", "denoise", "seconds_per_step", ".3f")
    row("once per source (s)", "denoise", "seconds_once_per_source", ".3f")
    row("inference peak memory (GiB)", "denoise", "peak_memory_gib", ".2f")
    row("training step (s)", "train", "seconds_per_step", ".2f")
    row("training peak memory (GiB)", "train", "peak_memory_gib", ".2f")
    row("trained parameters (M)", "train", "trained_parameters", ".1f", 1e-6)


if __name__ == "__main__":
    main()
