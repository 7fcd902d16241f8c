"""The paper's scale, rehearsed: real-size random weights in the real on-disk formats through the real commands.

Builds random-initialised folders with the real configs -- a diffusers Stable Diffusion 1.5 folder
(``unet/`` fp32, ``vae/``, ``scheduler/`` with SD-1.5's PNDM config), a full transformers
``CLIPModel`` ViT-L/14 folder (text and vision towers, as ``openai/clip-vit-large-patch14`` is
laid out) and a diffusers AnimateDiff v3 ``MotionAdapter`` folder (stored in fp16) -- and a small
128 px SynthTalk set, then runs, each as its own process under a memory watchdog::

    mimaface train --stage 1 ...            killed (SIGKILL) once checkpoint 2 of 3 is complete
    mimaface train --stage 1 ... --resume   step 3, validation, export to RUN1/final
    mimaface train --stage 2 --pretrained RUN1/final ...   2 steps, validation, export to RUN2/final
    mimaface animate --checkpoint RUN2/final --steps 2 ...
    mimaface evaluate --checkpoint RUN2/final --max-clips 2 --steps 2 ...

and prints, per step, wall time, the peak resident memory of its largest process (the kernel's
high-water mark) and of all its processes together (sampled), and for the training runs the
seconds per optimizer step, per checkpoint write, for validation and for the export (from when
each folder appears). A step whose processes together hold more than ``--rss-limit`` GiB of
anonymous memory is killed and reported as failed (resident memory also counts the clean pages of
the memory-mapped weight files that were read, which the kernel can drop; both are reported).
Everything is written under ``--root`` and deleted at the end (``--keep`` keeps it). Not a test
(about 25 minutes on 2 busy CPU cores; up to 37 GB of disk, the folders' sizes added up).

The CPU defaults fit 24 GB: 128 px, batch 1, clips of 4 frames, gradient checkpointing, fp32
(bf16 matrix products ran 2.7x slower than fp32 on this CPU, which has no AVX512-BF16/AMX),
Adafactor for stage 1 and AdamW for stage 2: stage 1 trains 1.19 B parameters, whose fp32
weights and gradients alone take 10.4 GiB, so AdamW's 8.9 GiB of moments (or AdamW8bit's 2.2 GiB,
with the allocator's slack) do not fit beside them; stage 2 trains 0.42 B and fits with AdamW. ``--device cuda`` is the GPU plan's variant (512 px, bf16, AdamW, no memory limit but the
GPU's; peak GPU memory sampled from nvidia-smi).

Run: ``OMP_NUM_THREADS=1 python scripts/rehearse_sd15.py [--root /work/runs/sd15_rehearsal] [--keep]``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
GIB = 2**30

#: ``stable-diffusion-v1-5`` ``scheduler/scheduler_config.json`` as it is on disk (PNDM; the trainer reads
#: it as DDPM, and diffusers' PNDMScheduler itself does not take ``clip_sample``).
SD15_SCHEDULER_CONFIG = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
                         "num_train_timesteps": 1000, "set_alpha_to_one": False, "skip_prk_steps": True,
                         "steps_offset": 1, "trained_betas": None, "clip_sample": False}
#: ``openai/clip-vit-large-patch14``'s text tower (the vision tower is mimaface's CLIP_VIT_L14_VISION_CONFIG).
CLIP_VIT_L14_TEXT_CONFIG = {"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12,
                            "num_hidden_layers": 12, "max_position_embeddings": 77, "vocab_size": 49408,
                            "projection_dim": 768, "hidden_act": "quick_gelu"}
WEIGHT_FOLDERS = {"sd15": "stable-diffusion-v1-5", "clip": "clip-vit-large-patch14",
                  "adapter": "animatediff-motion-adapter-v1-5-3"}


# ---------------------------------------------------------------------------------------- weights
def build_weights(folder: Path) -> None:
    """Random-initialised SD-1.5, CLIP ViT-L/14 and AnimateDiff v3 folders with their real configs."""
    import torch
    from diffusers import AutoencoderKL, MotionAdapter, UNet2DConditionModel
    from transformers import CLIPConfig, CLIPModel

    from mimaface.models.config import (
        ANIMATEDIFF_V3_ADAPTER_CONFIG,
        CLIP_VIT_L14_VISION_CONFIG,
        SD15_UNET_CONFIG,
        SD15_VAE_CONFIG,
    )

    torch.manual_seed(0)
    sd15 = folder / WEIGHT_FOLDERS["sd15"]
    parts: list[tuple[str, Callable[[], object], Path]] = [
        ("SD-1.5 UNet", lambda: UNet2DConditionModel(**SD15_UNET_CONFIG), sd15 / "unet"),
        ("SD-1.5 VAE", lambda: AutoencoderKL(**SD15_VAE_CONFIG), sd15 / "vae"),
        ("CLIP ViT-L/14", lambda: CLIPModel(CLIPConfig(text_config=CLIP_VIT_L14_TEXT_CONFIG,
                                                       vision_config=CLIP_VIT_L14_VISION_CONFIG, projection_dim=768)),
         folder / WEIGHT_FOLDERS["clip"]),
        ("AnimateDiff v3 adapter", lambda: MotionAdapter(**ANIMATEDIFF_V3_ADAPTER_CONFIG).to(torch.float16),
         folder / WEIGHT_FOLDERS["adapter"]),
    ]
    for name, build, path in parts:
        start = time.perf_counter()
        model = build()
        model.save_pretrained(path)
        count = sum(p.numel() for p in model.parameters())
        print(f"{name}: {count:,} parameters -> {path} ({time.perf_counter() - start:.0f} s)", flush=True)
        del model
        gc.collect()
    (sd15 / "scheduler").mkdir()
    (sd15 / "scheduler" / "scheduler_config.json").write_text(json.dumps(
        {"_class_name": "PNDMScheduler", "_diffusers_version": "0.6.0", **SD15_SCHEDULER_CONFIG}, indent=2) + "\n")
    (sd15 / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.42.1",
        "scheduler": ["diffusers", "PNDMScheduler"], "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"]}, indent=2) + "\n")


# --------------------------------------------------------------------------------------- watchdog
@dataclass
class StepResult:
    name: str
    command: list[str]
    status: str  # "ok", "killed as planned", "failed (exit N)", "over the memory limit"
    seconds: float
    peak_rss_gib: float  # the kernel's high-water mark of the step's largest process
    peak_rss_sum_gib: float  # all its processes together, sampled every 0.2 s
    peak_anonymous_gib: float  # of that, anonymous memory (not file pages): what the limit applies to
    peak_gpu_gib: float | None = None  # nvidia-smi, sampled (CUDA only)
    events: dict[str, float] = field(default_factory=dict)  # seconds from the start when each watched path appeared
    log: str = ""


def _tree_memory(process: psutil.Process) -> tuple[int, int]:
    """(resident, anonymous) bytes of a process and its children. Resident memory also counts the pages of
    memory-mapped weight files (safetensors) that were read: clean file pages the kernel can drop."""
    rss = anonymous = 0
    for p in [process, *process.children(recursive=True)]:
        try:
            info = p.memory_info()
        except psutil.Error:
            continue
        rss += info.rss
        anonymous += info.rss - info.shared
    return rss, anonymous


def _gpu_bytes(pids: set[int]) -> int | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    used = [int(mib) * 2**20 for pid, mib in (line.split(",") for line in out.splitlines() if "," in line)
            if int(pid) in pids]
    return sum(used)


def run_step(name: str, command: list[str], log: Path, rss_limit: float, *, watch: dict[str, str] | None = None,
             kill_when: str | None = None, cuda: bool = False) -> StepResult:
    """Run ``command`` under the watchdog. ``watch``: label -> glob (relative to ``/``) whose first
    appearance is timed; ``kill_when``: a label of ``watch`` whose appearance ends the process (SIGKILL)."""
    watch = watch or {}
    print(f"\n== {name}\n$ {' '.join(command)}", flush=True)
    start = time.monotonic()
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        handle = psutil.Process(process.pid)
        events: dict[str, float] = {}
        peak_sum, peak_anonymous, peak_gpu, status, last_gpu_poll = 0, 0, None, None, 0.0
        while True:
            pid, wait_status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            now = time.monotonic() - start
            rss, anonymous = _tree_memory(handle)
            peak_sum, peak_anonymous = max(peak_sum, rss), max(peak_anonymous, anonymous)
            if cuda and now - last_gpu_poll > 1.0:
                last_gpu_poll = now
                pids = {process.pid} | {c.pid for c in handle.children(recursive=True)}
                used = _gpu_bytes(pids)
                if used is not None:
                    peak_gpu = max(peak_gpu or 0, used)
            for label, pattern in watch.items():
                if label not in events and any(Path("/").glob(pattern.lstrip("/"))):
                    events[label] = round(now, 1)
                    print(f"  {now:7.1f} s  {label}", flush=True)
            if status is None and peak_anonymous > rss_limit * GIB:
                status = f"over the memory limit ({peak_anonymous / GIB:.1f} > {rss_limit:g} GiB): killed"
                os.killpg(process.pid, signal.SIGKILL)
            elif status is None and kill_when is not None and kill_when in events:
                status = "killed as planned"
                os.killpg(process.pid, signal.SIGKILL)
            time.sleep(0.2)
    seconds = time.monotonic() - start
    if status is None:
        code = os.waitstatus_to_exitcode(wait_status)
        status = "ok" if code == 0 else f"failed (exit {code})"
    result = StepResult(name, command, status, round(seconds, 1), round(usage.ru_maxrss / 2**20, 2),
                        round(peak_sum / GIB, 2), round(peak_anonymous / GIB, 2),
                        None if peak_gpu is None else round(peak_gpu / GIB, 2), events, str(log))
    print(f"  -> {status}: {seconds:.0f} s, peak RSS {result.peak_rss_gib:.2f} GiB (all processes "
          f"{result.peak_rss_sum_gib:.2f}, anonymous {result.peak_anonymous_gib:.2f})"
          + (f", GPU {result.peak_gpu_gib:.2f} GiB" if cuda else ""), flush=True)
    if not status.startswith(("ok", "killed as planned")):
        print("  last lines of its log:\n    " + "\n    ".join(log.read_text(errors="replace")[-3000:].splitlines()[-15:]))
    return result


def training_watch(run: Path, steps: int) -> dict[str, str]:
    """What a training run's folder shows, in order: each checkpoint being written and complete, the export."""
    watch = {}
    for step in range(1, steps + 1):
        watch[f"step {step}: checkpoint write starts"] = f"{run}/checkpoints/.checkpoint-{step:06d}.part"
        watch[f"step {step}: checkpoint complete"] = f"{run}/checkpoints/checkpoint-{step:06d}/trainer_state.json"
    watch["export starts"] = f"{run}/.final.*.part"
    watch["export complete"] = f"{run}/final/model_index.json"
    return watch


def training_breakdown(events: dict[str, float], steps: range) -> dict[str, float]:
    """Seconds per optimizer step (computing: from the last checkpoint to the next write), per checkpoint
    write, for validation (after the last checkpoint) and for the export, from the watched events."""
    out = {}
    for step in steps:
        previous = events.get(f"step {step - 1}: checkpoint complete")
        begin, done = events.get(f"step {step}: checkpoint write starts"), events.get(f"step {step}: checkpoint complete")
        if previous is not None and begin is not None:
            out[f"step {step} compute s"] = round(begin - previous, 1)
        if begin is not None and done is not None:
            out[f"step {step} checkpoint write s"] = round(done - begin, 1)
    last = events.get(f"step {steps[-1]}: checkpoint complete")
    if last is not None and "export starts" in events:
        out["validation s"] = round(events["export starts"] - last, 1)
    if "export starts" in events and "export complete" in events:
        out["export s"] = round(events["export complete"] - events["export starts"], 1)
    return out


def folder_gib(path: Path) -> float:
    return round(sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / GIB, 2)


# ------------------------------------------------------------------------------------------- plan
@dataclass
class Settings:
    size: int
    frames: int  # stage-2 clip length F
    precision: str  # mixed_precision
    optimizer1: str
    optimizer2: str
    rss_limit: float
    threads: int | None


def settings(device: str, rss_limit: float | None) -> Settings:
    if device == "cuda":
        return Settings(size=512, frames=12, precision="bf16", optimizer1="adamw", optimizer2="adamw",
                        rss_limit=rss_limit or 100.0, threads=None)
    return Settings(size=128, frames=4, precision="no", optimizer1="adafactor", optimizer2="adamw",
                    rss_limit=rss_limit or 14.0, threads=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("/work/runs/sd15_rehearsal"))
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--rss-limit", type=float, default=None,
                        help="GiB of anonymous memory a step's processes may hold together (default 14 on CPU)")
    parser.add_argument("--keep", action="store_true", help="keep the folders (weights, runs) at the end")
    parser.add_argument("--report", type=Path, default=None, help="also write the results as JSON here")
    parser.add_argument("--build-weights", type=Path, default=None, help=argparse.SUPPRESS)  # the build step's child
    args = parser.parse_args()
    if args.build_weights is not None:
        build_weights(args.build_weights)
        return

    s = settings(args.device, args.rss_limit)
    free = psutil.virtual_memory().available / GIB
    print(f"{args.device}: {s.size} px, clips of {s.frames}, mixed_precision={s.precision}, optimizers "
          f"{s.optimizer1} / {s.optimizer2}, memory limit {s.rss_limit:g} GiB per step; {free:.1f} GiB available now")
    if free < s.rss_limit + 2:
        raise SystemExit(f"only {free:.1f} GiB of memory is available; the steps may take {s.rss_limit:g} GiB")
    root = args.root
    logs = root / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    weights, data = root / "weights", root / "data"
    run1, run2 = root / "run-stage1", root / "run-stage2"
    for stale in (run1, run2, root / "eval"):  # a rehearsal starts its runs afresh (the weights are reused)
        shutil.rmtree(stale, ignore_errors=True)
    env_python = [sys.executable]
    mimaface = [*env_python, "-m", "mimaface.cli"]
    results: list[StepResult] = []
    breakdowns: dict[str, dict[str, float]] = {}

    def step(*a, **k) -> StepResult:
        result = run_step(*a, cuda=args.device == "cuda", **k)
        results.append(result)
        return result

    def ok(result: StepResult) -> bool:
        return result.status in ("ok", "killed as planned")

    try:
        if not (weights / "complete").is_file():
            shutil.rmtree(weights, ignore_errors=True)
            if not ok(step("build the weight folders", [*env_python, __file__, "--build-weights", str(weights)],
                           logs / "build.log", s.rss_limit)):
                return
            (weights / "complete").write_text("")
        if not (data / "complete").is_file():
            shutil.rmtree(data, ignore_errors=True)
            # 6 identities, 2 of them held out (validation, cross-identity evaluation), one 12-frame clip each.
            if not ok(step("SynthTalk data (128 px)" if s.size == 128 else "SynthTalk data",
                           [*mimaface, "synth", "-o", str(data), "--identities", "6", "--clips-per-identity", "1",
                            "--frames", "12", "--size", str(min(s.size, 512)), "--test-fraction", "0.34",
                            "--workers", "1", "--no-sheets", "-q"], logs / "synth.log", s.rss_limit)):
                return
            (data / "complete").write_text("")

        common = [f"data.size={s.size}", "data.workers=0", f"data.num_frames={s.frames}",
                  f"mixed_precision={s.precision}", "checkpointing_steps=1", "keep_checkpoints=1",
                  "validation_steps=1000", "validation_inference_steps=2", "data.validation_samples=2"]
        if s.threads:
            common.append(f"torch_threads={s.threads}")
        stage1 = [*mimaface, "train", "--config", str(REPO / "configs" / "sd15.yaml"), "--stage", "1",
                  "--data", str(data), "--output", str(run1), "-q",
                  f"model.sd15_dir={weights / WEIGHT_FOLDERS['sd15']}", f"model.clip_dir={weights / WEIGHT_FOLDERS['clip']}",
                  f"model.motion_adapter_dir={weights / WEIGHT_FOLDERS['adapter']}",
                  "stage1.steps=3", "stage1.batch_size=1", f"stage1.optimizer={s.optimizer1}", *common]
        killed = step("stage 1, killed after checkpoint 2", stage1, logs / "stage1.log", s.rss_limit,
                      watch=training_watch(run1, 3), kill_when="step 2: checkpoint complete")
        breakdowns[killed.name] = training_breakdown(killed.events, range(1, 3))
        if killed.status != "killed as planned":
            return
        resumed = step("stage 1 --resume (step 3, validation, export)", [*stage1, "--resume"],
                       logs / "stage1-resume.log", s.rss_limit, watch=training_watch(run1, 3))
        breakdowns[resumed.name] = training_breakdown(resumed.events, range(3, 4))
        if not ok(resumed):
            return
        sizes = {"checkpoint (stage 1)": folder_gib(next((run1 / "checkpoints").iterdir()))}
        shutil.rmtree(run1 / "checkpoints")  # resumed and exported: its disk is needed for stage 2
        stage2 = [*mimaface, "train", "--config", str(REPO / "configs" / "sd15.yaml"), "--stage", "2",
                  "--data", str(data), "--pretrained", str(run1 / "final"), "--output", str(run2), "-q",
                  "stage2.steps=2", "stage2.batch_size=1", f"stage2.optimizer={s.optimizer2}", *common]
        second = step("stage 2 (2 steps, validation, export)", stage2, logs / "stage2.log", s.rss_limit,
                      watch=training_watch(run2, 2))
        breakdowns[second.name] = training_breakdown(second.events, range(1, 3))
        if not ok(second):
            return
        breakdowns["sizes GiB"] = {**sizes, "checkpoint (stage 2)": folder_gib(next((run2 / "checkpoints").iterdir())),
                                   "final/ (exported pipeline)": folder_gib(run2 / "final")}

        import numpy as np

        from mimaface.face3d.coefficients import motion_from_json

        talk = motion_from_json(REPO / "src" / "mimaface" / "assets" / "talk.json")
        driving = root / "driving.npz"
        talk.select(np.arange(2 * s.frames)).save(driving)  # 2 clip lengths: the second clip through ICA
        step("animate --checkpoint (2 steps)",
             [*mimaface, "animate", "--source", str(REPO / "src" / "mimaface" / "assets" / "portrait.jpg"),
              "--driving", str(driving), "--checkpoint", str(run2 / "final"), "--steps", "2", "-o",
              str(root / "animate.mp4"), "-q", *([f"--threads={s.threads}"] if s.threads else [])],
             logs / "animate.log", s.rss_limit)
        step("evaluate (2 clips, both modes, 2 steps)",
             [*mimaface, "evaluate", "--data", str(data), "--checkpoint", str(run2 / "final"), "--max-clips", "2",
              "--steps", "2", "-o", str(root / "eval"), "-q"], logs / "evaluate.log", s.rss_limit)
    finally:
        report = {"device": args.device, "settings": asdict(s), "steps": [asdict(r) for r in results],
                  "training": breakdowns}
        print("\n| step | status | wall (s) | peak RSS, largest process (GiB) | all processes (GiB) | anonymous (GiB) |"
              + (" GPU (GiB) |" if args.device == "cuda" else ""))
        print("| --- | --- | ---: | ---: | ---: | ---: |" + (" ---: |" if args.device == "cuda" else ""))
        for r in results:
            print(f"| {r.name} | {r.status} | {r.seconds:.0f} | {r.peak_rss_gib:.2f} | {r.peak_rss_sum_gib:.2f} | "
                  f"{r.peak_anonymous_gib:.2f} |" + (f" {r.peak_gpu_gib} |" if args.device == "cuda" else ""))
        print(json.dumps(breakdowns, indent=1))
        if args.report:
            args.report.parent.mkdir(parents=True, exist_ok=True)
            args.report.write_text(json.dumps(report, indent=1) + "\n")
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
            print(f"deleted {root}")


if __name__ == "__main__":
    main()
