"""The training loop: Accelerate (one CPU to many GPUs / nodes), checkpoints, resume, logging.

Run directory::

    RUN/config.yaml, RUN/command.txt     the resolved config and the command that started the run
    RUN/checkpoints/checkpoint-000500/   model, optimizer and LR scheduler (Accelerate), every process's RNG
                                         streams, the identity memory bank and EMA, trainer_state.json (step,
                                         data position, loss history): see training/checkpoints.py
    RUN/logs/                            TensorBoard scalars
    RUN/validation/step-000500.png       validation grids on held-out identities
    RUN/loss_curve.png, RUN/summary.json written at the end
    RUN/final/                           the trained model (stage vae: an AutoencoderKL folder; stages 1, 2:
                                         MIMAFaceModel.save_pretrained + vae/ + scheduler/)

A checkpoint is written under a hidden name and renamed when complete, so killing the run at
any moment leaves the last good checkpoint intact; ``resume=True`` continues from the newest one
with the same optimizer, LR scheduler, RNG streams and data position (bit-identical to a run that
was never interrupted, on the same hardware). Nothing in a run folder is unpickled. One process
at a time writes a run folder (another gets "RUN is in use by process N"); every file in it
appears whole (``final/`` is replaced, never deleted first).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import shutil
import time
from pathlib import Path

import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, gather_object, set_seed
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from safetensors import SafetensorError
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from mimaface import files
from mimaface.errors import InputError
from mimaface.figures import loss_curve
from mimaface.training.checkpoints import (
    STATE_FILE,
    TrainerState,
    checkpoints,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
    together,
)
from mimaface.training.config import STAGES, StageSection, TrainConfig
from mimaface.training.sampler import ResumableShardSampler
from mimaface.training.tasks import TASKS, Task

logger = logging.getLogger(__name__)


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
    if resume and not run_dir.is_dir():
        raise InputError(f"--resume: '{run_dir}' does not exist")
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
    with contextlib.ExitStack() as held:
        with together(accelerator):
            if accelerator.is_main_process:
                held.enter_context(files.folder_lock(run_dir))  # the whole run: one writer per run folder
                _start_run_folder(run_dir, stage, config, resume, command)
        return _train(accelerator, config, stage, section, run_dir, resume=resume, stop_after=stop_after,
                      progress=progress)


def _start_run_folder(run_dir: Path, stage: str, config: TrainConfig, resume: bool, command: str | None) -> None:
    """Check the run folder against ``resume``; write the resolved config and append the command."""
    existing = checkpoints(run_dir)
    if existing and not resume:
        raise InputError(f"'{run_dir}' already holds checkpoints of a run: pass --resume to continue it, or "
                         f"choose another --output")
    if resume and not existing:
        raise InputError(f"--resume: '{run_dir}' has no complete checkpoint to resume from")
    if resume:
        read_checkpoint(existing[-1])  # a crafted checkpoint is refused before the model is built
    (run_dir / "validation").mkdir(exist_ok=True)
    files.write_text(run_dir / "config.yaml", yaml.safe_dump({"stage": stage, **config.to_dict()}, sort_keys=False))
    if command:
        log = run_dir / "command.txt"
        files.write_text(log, (log.read_text() if log.is_file() else "") + command + "\n")


def _train(accelerator: Accelerator, config: TrainConfig, stage: str, section: StageSection, run_dir: Path, *,
           resume: bool, stop_after: int | None, progress: bool) -> Path:
    set_seed(config.seed, device_specific=True)

    # The main process builds the latent cache first; the others then read it.
    with accelerator.main_process_first():
        task: Task = TASKS[stage](config, section, run_dir, accelerator.device, progress and accelerator.is_main_process)
        if hasattr(task, "setup_latents"):
            task.setup_latents()
    objective = task.objective
    params = task.trainable_parameters()
    optimizer = build_optimizer(params, section)
    lr_scheduler = get_scheduler(section.lr_scheduler, optimizer,
                                 num_warmup_steps=section.warmup_steps * accelerator.num_processes,
                                 num_training_steps=section.steps * accelerator.num_processes)
    ema = EMAModel(params, decay=section.ema_decay) if section.use_ema else None
    objective, optimizer, lr_scheduler = accelerator.prepare(objective, optimizer, lr_scheduler)
    sampler = ResumableShardSampler(len(task.dataset), section.batch_size, seed=config.seed,
                                    rank=accelerator.process_index, world_size=accelerator.num_processes)

    state = TrainerState()
    if resume:
        latest = checkpoints(run_dir)[-1]
        state, task_state = load_checkpoint(accelerator, latest, task.checkpoint_state(), ema)
        if state.batch > sampler.batches_per_epoch:
            raise InputError(f"{latest / STATE_FILE}: batch {state.batch} is beyond an epoch of "
                             f"{sampler.batches_per_epoch} batches (were the data or the batch size changed?)")
        task.load_checkpoint_state(task_state)
        accelerator.print(f"resuming from {latest} (step {state.step})")
    if config.log_with != "none":
        accelerator.init_trackers(f"stage-{stage}")

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
                save_checkpoint(accelerator, run_dir, state, config.keep_checkpoints, task.checkpoint_state(),
                                ema)
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
        for stale in run_dir.glob(f".{final.name}.*.part"):  # a killed run's (the run folder is ours: locked)
            shutil.rmtree(stale, ignore_errors=True)
        try:
            with files.atomic_folder(final) as partial:  # the old final/ stays until the new one is complete
                task.export(module, partial)
        except (OSError, SafetensorError) as exc:
            raise files.write_error(final, exc) from exc
        loss_curve(state.history, run_dir / "loss_curve.png", f"stage {stage}: {run_dir.name}")
        summary = {"stage": stage, "steps": state.step, "processes": accelerator.num_processes,
                   "batch_size_per_process": section.batch_size,
                   "gradient_accumulation": section.gradient_accumulation,
                   "train_seconds": round(state.seconds, 1), "device": str(accelerator.device),
                   "mixed_precision": config.mixed_precision, "torch_threads": torch.get_num_threads(),
                   "final_losses": {k: v[-1][1] for k, v in state.history.items() if v},
                   "parameter_digest_per_process": digests}
        files.write_json(run_dir / "summary.json", summary)
        accelerator.print(f"wrote {final} ({state.step} steps, {state.seconds / 60:.1f} min)")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return final


def build_optimizer(params: list[torch.nn.Parameter], section: StageSection) -> torch.optim.Optimizer:
    """The stage's ``optimizer`` (see :class:`StageSection`) over ``params``."""
    if section.optimizer == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(params, lr=section.learning_rate, weight_decay=section.weight_decay, scale_parameter=False,
                         relative_step=False, warmup_init=False)
    kwargs = {"lr": section.learning_rate, "betas": (section.adam_beta1, section.adam_beta2),
              "weight_decay": section.weight_decay}
    if section.optimizer == "adamw_8bit":
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise InputError("optimizer adamw_8bit needs bitsandbytes (pip install bitsandbytes)") from None
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
