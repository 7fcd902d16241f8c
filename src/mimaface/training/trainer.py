"""The training loop: Accelerate (one CPU to many GPUs / nodes), checkpoints, resume, logging.

Run directory::

    RUN/config.yaml, RUN/command.txt     the resolved config and the command that started the run
    RUN/checkpoints/checkpoint-000500/   Accelerate state (model.safetensors, optimizer, LR scheduler, RNG
                                         of every process) + trainer_state.json (step, data position, loss
                                         history) + the task's extra state (identity memory bank, EMA)
    RUN/logs/                            TensorBoard scalars
    RUN/validation/step-000500.png       validation grids on held-out identities
    RUN/loss_curve.png, RUN/summary.json written at the end
    RUN/final/                           the trained model (stage vae: an AutoencoderKL folder; stages 1, 2:
                                         MIMAFaceModel.save_pretrained + vae/ + scheduler/)

A checkpoint is written under a hidden name and renamed when complete, so killing the run at
any moment leaves the last good checkpoint intact; ``resume=True`` continues from the newest one
with the same optimizer, LR scheduler, RNG streams and data position (bit-identical to a run that
was never interrupted, on the same hardware).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, gather_object, set_seed
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from mimaface.errors import InputError
from mimaface.training.config import STAGES, TrainConfig
from mimaface.figures import loss_curve
from mimaface.training.sampler import ResumableShardSampler
from mimaface.training.tasks import TASKS, Task

logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "checkpoint-"
STATE_FILE = "trainer_state.json"


@dataclass
class TrainerState:
    """Where training is: optimizer steps done, data position, logged losses."""

    step: int = 0
    epoch: int = 0
    batch: int = 0  # micro-batches of the current epoch already consumed
    history: dict[str, list[list[float]]] = field(default_factory=dict)
    seconds: float = 0.0  # training time before this process started (resumed runs)


class _ExtraState:
    """Task state outside the module's state dict (the identity memory bank) and EMA weights,
    in the form ``Accelerator.register_for_checkpointing`` takes."""

    def __init__(self, task: Task, ema: EMAModel | None) -> None:
        self.task, self.ema = task, ema

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {k: v.detach().cpu().clone() for k, v in self.task.checkpoint_state().items()}
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.task.load_checkpoint_state({k: v for k, v in state.items() if k != "ema"})
        if self.ema is not None and "ema" in state:
            self.ema.load_state_dict(state["ema"])


def checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    folder = run_dir / "checkpoints"
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX)
             and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]))


def parameter_digest(module: torch.nn.Module) -> str:
    """sha256 over every parameter's bytes (to compare processes or runs exactly)."""
    digest = hashlib.sha256()
    for name, p in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(p.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes() if p.numel() else b"")
    return digest.hexdigest()


def train(config: TrainConfig, stage: str, output_dir: str | os.PathLike, *, resume: bool = False,
          stop_after: int | None = None, command: str | None = None, progress: bool = True) -> Path:
    """Run one stage (``"vae"``, ``"1"`` or ``"2"``); returns ``RUN/final`` (or the run folder when stopped early).

    ``stop_after``: leave after this many optimizer steps of this invocation (a checkpoint is
    written first), e.g. for jobs with a time limit; ``resume=True`` continues later.
    """
    if stage not in STAGES:
        raise InputError(f"--stage must be one of {', '.join(STAGES)}, got {stage!r}")
    run_dir = Path(output_dir)
    section = config.stage(stage)
    if config.torch_threads:
        torch.set_num_threads(config.torch_threads)
    accelerator = Accelerator(
        # Without an accelerator, processes started by torchrun / `accelerate launch --multi_gpu` train on
        # the CPU with the gloo backend (Accelerate's own --cpu launcher needs MPI for several processes).
        cpu=not torch.accelerator.is_available(),
        mixed_precision=config.mixed_precision,
        gradient_accumulation_steps=section.gradient_accumulation,
        log_with=None if config.log_with == "none" else config.log_with,
        project_config=ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(run_dir / "logs")),
    )
    existing = checkpoints(run_dir)
    if accelerator.is_main_process:
        if existing and not resume:
            raise InputError(f"'{run_dir}' already holds checkpoints of a run: pass --resume to continue it, or "
                             f"choose another --output")
        if resume and not existing:
            raise InputError(f"--resume: '{run_dir}' has no complete checkpoint to resume from")
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "validation").mkdir(exist_ok=True)
        (run_dir / "config.yaml").write_text(yaml.safe_dump({"stage": stage, **config.to_dict()}, sort_keys=False))
        if command:
            with open(run_dir / "command.txt", "a") as f:
                f.write(command + "\n")
    accelerator.wait_for_everyone()
    set_seed(config.seed, device_specific=True)

    # The main process builds the latent cache first; the others then read it.
    with accelerator.main_process_first():
        task: Task = TASKS[stage](config, section, run_dir, accelerator.device, progress and accelerator.is_main_process)
        if hasattr(task, "setup_latents"):
            task.setup_latents()
    objective = task.objective
    params = task.trainable_parameters()
    optimizer = _optimizer(params, section)
    lr_scheduler = get_scheduler(section.lr_scheduler, optimizer,
                                 num_warmup_steps=section.warmup_steps * accelerator.num_processes,
                                 num_training_steps=section.steps * accelerator.num_processes)
    ema = EMAModel(params, decay=section.ema_decay) if section.use_ema else None
    objective, optimizer, lr_scheduler = accelerator.prepare(objective, optimizer, lr_scheduler)
    accelerator.register_for_checkpointing(_ExtraState(task, ema))

    state = TrainerState()
    if resume:
        latest = checkpoints(run_dir)[-1]
        accelerator.load_state(str(latest))
        state = TrainerState(**json.loads((latest / STATE_FILE).read_text()))
        accelerator.print(f"resuming from {latest} (step {state.step})")
    if config.log_with != "none":
        accelerator.init_trackers(f"stage-{stage}")

    sampler = ResumableShardSampler(len(task.dataset), section.batch_size, seed=config.seed,
                                    rank=accelerator.process_index, world_size=accelerator.num_processes)
    bar = tqdm(total=section.steps, initial=state.step, desc=f"stage {stage}", unit="step",
               disable=not (progress and accelerator.is_local_main_process), dynamic_ncols=True)
    started, steps_here = time.monotonic(), 0
    running: dict[str, list[float]] = {}
    objective.train()
    while state.step < section.steps and (stop_after is None or steps_here < stop_after):
        if state.batch >= sampler.batches_per_epoch:
            state.epoch, state.batch = state.epoch + 1, 0
        sampler.set_position(state.epoch, state.batch)
        task.dataset.set_epoch(state.epoch)
        # A private generator: creating the loader iterator must not draw from the global RNG,
        # or a resumed run would diverge from an uninterrupted one.
        loader = DataLoader(task.dataset, batch_sampler=sampler, num_workers=config.data.workers,
                            generator=torch.Generator(), persistent_workers=False)
        for batch in loader:
            with accelerator.accumulate(objective):
                loss, logs = objective(**task.inputs(batch))
                accelerator.backward(loss)
                if accelerator.sync_gradients and section.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(params, section.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            state.batch += 1
            for name, value in {"loss": loss.detach(), **logs}.items():
                running.setdefault(name, []).append(float(value))
            if not accelerator.sync_gradients:
                continue
            state.step += 1
            steps_here += 1
            if ema is not None:
                ema.step(params)
            bar.update(1)
            if state.step % config.log_steps == 0 or state.step == section.steps:
                _log(accelerator, state, running, lr_scheduler, bar)
                running = {}
            done = state.step >= section.steps or (stop_after is not None and steps_here >= stop_after)
            if state.step % config.checkpointing_steps == 0 or done:
                state.seconds += time.monotonic() - started
                started = time.monotonic()
                _save_checkpoint(accelerator, run_dir, state, config.keep_checkpoints)
            if accelerator.is_main_process and (state.step % config.validation_steps == 0 or state.step == section.steps):
                task.validate(accelerator.unwrap_model(objective), run_dir / "validation" / f"step-{state.step:06d}.png")
            if done:
                break
    bar.close()
    state.seconds += time.monotonic() - started
    digests = gather_object([parameter_digest(accelerator.unwrap_model(objective))])
    if state.step < section.steps:
        accelerator.end_training()
        accelerator.print(f"stopped after {steps_here} steps at step {state.step}; continue with --resume")
        return run_dir
    final = run_dir / "final"
    if accelerator.is_main_process:
        module = accelerator.unwrap_model(objective)
        if ema is not None:
            ema.copy_to(params)
        partial = run_dir / ".final.part"
        shutil.rmtree(partial, ignore_errors=True)
        task.export(module, partial)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(partial, final)
        loss_curve(state.history, run_dir / "loss_curve.png", f"stage {stage}: {run_dir.name}")
        summary = {"stage": stage, "steps": state.step, "processes": accelerator.num_processes,
                   "batch_size_per_process": section.batch_size,
                   "gradient_accumulation": section.gradient_accumulation,
                   "train_seconds": round(state.seconds, 1), "device": str(accelerator.device),
                   "mixed_precision": config.mixed_precision, "torch_threads": torch.get_num_threads(),
                   "final_losses": {k: v[-1][1] for k, v in state.history.items() if v},
                   "parameter_digest_per_process": digests}
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        accelerator.print(f"wrote {final} ({state.step} steps, {state.seconds / 60:.1f} min)")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return final


def _optimizer(params: list[torch.nn.Parameter], section) -> torch.optim.Optimizer:
    kwargs = {"lr": section.learning_rate, "betas": (section.adam_beta1, section.adam_beta2),
              "weight_decay": section.weight_decay}
    if section.use_8bit_adam:
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise InputError("use_8bit_adam needs bitsandbytes (pip install bitsandbytes; CUDA GPUs)") from None
        return bnb.optim.AdamW8bit(params, **kwargs)
    return torch.optim.AdamW(params, **kwargs)


def _log(accelerator: Accelerator, state: TrainerState, running: dict[str, list[float]], lr_scheduler,
         bar: tqdm) -> None:
    means = {name: sum(v) / len(v) for name, v in running.items() if v}
    # Every process logs its own losses; the average over processes is what is recorded.
    values = torch.tensor([means[k] for k in sorted(means)], device=accelerator.device)
    values = accelerator.reduce(values, reduction="mean")
    means = dict(zip(sorted(means), values.tolist()))
    for name, value in means.items():
        if math.isfinite(value):
            state.history.setdefault(name, []).append([state.step, value])
    scalars = {f"train/{k}": v for k, v in means.items()}
    scalars["train/lr"] = lr_scheduler.get_last_lr()[0]
    accelerator.log(scalars, step=state.step)
    bar.set_postfix({k: f"{v:.4g}" for k, v in means.items()}, refresh=False)
    if not all(math.isfinite(v) for v in means.values()):
        raise FloatingPointError(f"the loss became {means} at step {state.step}; lower the learning rate, or "
                                 f"resume from the last checkpoint with other settings")


def _save_checkpoint(accelerator: Accelerator, run_dir: Path, state: TrainerState, keep: int) -> None:
    folder = run_dir / "checkpoints"
    name = f"{CHECKPOINT_PREFIX}{state.step:06d}"
    partial = folder / f".{name}.part"
    if accelerator.is_main_process:
        folder.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(partial, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial), safe_serialization=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (partial / STATE_FILE).write_text(json.dumps(state.__dict__) + "\n")
        final = folder / name
        shutil.rmtree(final, ignore_errors=True)
        os.replace(partial, final)  # the checkpoint exists under its name only when complete
        for old in checkpoints(run_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
