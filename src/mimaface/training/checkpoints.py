"""Checkpoints of a training run: written whole, read back without running code.

::

    RUN/checkpoints/checkpoint-000500/
        model.safetensors              the optimised module            } Accelerate's save_state
        optimizer.bin, scheduler.bin   their state dicts (torch zip)   } (+ scaler.pt with fp16)
        rng_state_R.safetensors        process R's random streams: python ``random``, numpy, torch's CPU
                                       generator and the accelerator's (CUDA, ...), Accelerate's step count
        training_state.safetensors     the task's own state (identity memory bank) and the EMA weights
        trainer_state.json             :class:`TrainerState`: step, data position, loss history

**Nothing from a run folder is unpickled.** What this module avoids: Accelerate on its own would
pickle two kinds of state, objects registered with ``register_for_checkpointing`` (its
``custom_checkpoint_N.pkl``, which Accelerate reads back unrestricted, so code in it would run)
and its RNG streams (``random_states_R.pkl``). No object is registered here and the RNG file is
deleted once our own is written, so a checkpoint holds no pickle, and one that does is refused. The optimizer and scheduler files are torch zip files that Accelerate reads with
``torch.load(weights_only=True)`` (accelerate 1.15: ``accelerate.utils.load``; tensors and plain
containers only). Before anything is loaded, every file of the checkpoint is checked: a ``.pkl``
is refused, and every file that is neither JSON nor safetensors must load with
``weights_only=True``, so a crafted file is refused with one line that names it.

Every load is checked against the run that resumes (names, shapes, dtypes, types, ranges): a
mismatch is an InputError naming the file and the field, never a silently inexact resume.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import random
import re
import reprlib
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import RNG_STATE_NAME, gather_object
from diffusers.training_utils import EMAModel
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from mimaface import files
from mimaface.errors import InputError, one_line
from mimaface.values import is_finite_number, is_whole

CHECKPOINT_PREFIX = "checkpoint-"
STATE_FILE = "trainer_state.json"
RNG_FILE = "rng_state_{}.safetensors"
TRAINING_STATE_FILE = "training_state.safetensors"
_NAME = re.compile(r"checkpoint-(\d{1,12})")
_EMA_PREFIX = "ema.shadow."
_EMA_SCALARS = frozenset({"decay", "min_decay", "optimization_step", "update_after_step", "use_ema_warmup",
                          "inv_gamma", "power"})


@dataclass
class TrainerState:
    """Where training is: optimizer steps done, data position, logged losses."""

    step: int = 0
    epoch: int = 0
    batch: int = 0  # micro-batches of the current epoch already consumed
    history: dict[str, list[list[float]]] = field(default_factory=dict)
    seconds: float = 0.0  # training time before this process started (resumed runs)

    @classmethod
    def read(cls, path: Path) -> TrainerState:
        """Read a ``trainer_state.json``; anything but this class's fields with their types is an InputError."""
        data = files.read_json_object(path, "a trainer state")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown, missing = sorted(set(data) - names), sorted(names - set(data))
        if unknown or missing:
            raise InputError(f"{path}: not a trainer state (unknown keys: {', '.join(unknown) or 'none'}; missing: "
                             f"{', '.join(missing) or 'none'})")
        for key in ("step", "epoch", "batch"):
            if not (is_whole(data[key]) and data[key] >= 0):
                raise InputError(f"{path}: {key} must be a whole number >= 0, got {reprlib.repr(data[key])}")
        if not (is_finite_number(data["seconds"]) and data["seconds"] >= 0):
            raise InputError(f"{path}: seconds must be a number >= 0, got {reprlib.repr(data['seconds'])}")
        history = data["history"]
        if not (isinstance(history, dict) and all(
                isinstance(points, list) and all(isinstance(p, list) and len(p) == 2 and all(map(is_finite_number, p))
                                                 for p in points) for points in history.values())):
            raise InputError(f"{path}: history must map each loss name to a list of [step, value] pairs")
        return cls(**data)

    def write(self, path: Path) -> None:
        """Write into a checkpoint folder being built (the folder is what appears whole)."""
        path.write_text(json.dumps(dataclasses.asdict(self)) + "\n")


def checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first. A folder in ``checkpoints/`` that starts like a
    checkpoint but is not ``checkpoint-<digits>`` is an InputError (it is not ours)."""
    folder = run_dir / "checkpoints"
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        if not path.name.startswith(CHECKPOINT_PREFIX):
            continue  # hidden .checkpoint-N.part folders of a killed run, or anything else
        match = _NAME.fullmatch(path.name)
        if match is None or not path.is_dir():
            raise InputError(f"{path}: not a checkpoint (checkpoint folders are named checkpoint-NNNNNN); move it "
                             f"out of {folder}")
        if (path / STATE_FILE).is_file():
            found.append((int(match[1]), path))
    return [path for _, path in sorted(found)]


@contextlib.contextmanager
def together(accelerator: Accelerator) -> Iterator[None]:
    """Raise an InputError from the block on every process when any process had one, so that no
    process waits forever at the next collective call for one that has left."""
    error = ""
    try:
        yield
    except InputError as exc:
        error = str(exc)
    errors = [e for e in gather_object([error]) if e]
    if errors:
        raise InputError(errors[0])


# ------------------------------------------------------------------------------------------ save


def save_checkpoint(accelerator: Accelerator, run_dir: Path, state: TrainerState, keep: int,
                    task_state: dict[str, torch.Tensor], ema: EMAModel | None) -> Path:
    """Write ``checkpoint-<step>`` under a hidden name and rename it into place when complete (the
    newest ``keep`` are kept). A full disk is an InputError; the last complete checkpoint stays."""
    folder = run_dir / "checkpoints"
    final = folder / f"{CHECKPOINT_PREFIX}{state.step:06d}"
    partial = folder / f".{final.name}.part"
    if accelerator.is_main_process:
        folder.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(partial, ignore_errors=True)  # a killed run's
    accelerator.wait_for_everyone()
    with together(accelerator):
        try:
            accelerator.save_state(str(partial), safe_serialization=True)
            # Accelerate pickles the RNG streams; ours replace them (see the module notes).
            (partial / f"{RNG_STATE_NAME}_{accelerator.process_index}.pkl").unlink(missing_ok=True)
            save_rng_state(partial / RNG_FILE.format(accelerator.process_index), accelerator)
            if accelerator.is_main_process:
                _save_training_state(partial / TRAINING_STATE_FILE, task_state, ema)
                state.write(partial / STATE_FILE)
        except (OSError, RuntimeError, SafetensorError) as exc:
            if isinstance(exc, RuntimeError) and not files.out_of_space(exc, folder):
                raise  # a program error, not a failed write
            error = files.write_error(final, exc)  # before the cleanup frees the space
            shutil.rmtree(partial, ignore_errors=True)
            last = checkpoints(run_dir)
            kept = f"the last complete checkpoint, {last[-1]}, is left as it was" if last else "no checkpoint was kept"
            raise InputError(f"{error}; {kept}") from exc
    if accelerator.is_main_process:
        files.replace_folder(partial, final)  # the checkpoint exists under its name only when complete
        for old in checkpoints(run_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def _device_module(device: torch.device):
    """torch's module for ``device``'s generators (torch.cuda, torch.xpu, ...); None for the CPU."""
    return None if device.type == "cpu" else getattr(torch, device.type)


def save_rng_state(path: Path, accelerator: Accelerator) -> None:
    """This process's random streams (and Accelerate's step count) as safetensors + JSON metadata."""
    version, internal, gauss_next = random.getstate()
    kind, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    tensors = {"torch": torch.get_rng_state(), "numpy.keys": torch.from_numpy(keys.astype(np.int64))}
    module = _device_module(accelerator.device)
    if module is not None:
        states = module.get_rng_state_all() if hasattr(module, "get_rng_state_all") else [module.get_rng_state()]
        tensors |= {f"{accelerator.device.type}.{i}": s for i, s in enumerate(states)}
    metadata = {"python": json.dumps({"version": version, "state": internal, "gauss_next": gauss_next}),
                "numpy": json.dumps({"kind": kind, "pos": int(pos), "has_gauss": int(has_gauss),
                                     "cached_gaussian": float(cached_gaussian)}),
                "accelerator_step": str(accelerator.step)}
    save_file(tensors, str(path), metadata=metadata)


def _save_training_state(path: Path, task_state: dict[str, torch.Tensor], ema: EMAModel | None) -> None:
    tensors = {name: t.detach().cpu().contiguous() for name, t in task_state.items()}
    metadata = {}
    if ema is not None:
        scalars = ema.state_dict()
        shadow = scalars.pop("shadow_params")
        tensors |= {f"{_EMA_PREFIX}{i:06d}": p.detach().cpu().contiguous() for i, p in enumerate(shadow)}
        metadata["ema"] = json.dumps(scalars)
    save_file(tensors, str(path), metadata=metadata)


# ------------------------------------------------------------------------------------------ load


def load_checkpoint(accelerator: Accelerator, folder: Path, task_state: dict[str, torch.Tensor],
                    ema: EMAModel | None) -> tuple[TrainerState, dict[str, torch.Tensor]]:
    """Restore a checkpoint written by :func:`save_checkpoint` into ``accelerator``'s objects, the RNG
    streams and ``ema``; returns the trainer state and the task's saved state (checked against
    ``task_state``, the task's current one: same names, shapes and dtypes)."""
    with together(accelerator):
        state = read_checkpoint(folder)
        try:
            accelerator.load_state(str(folder))
        except Exception as exc:  # noqa: BLE001 -- wrong shapes, parameter groups, ...: one clear line
            raise InputError(f"{folder}: cannot resume from it: it does not fit this run's model and optimizer "
                             f"({one_line(exc)})") from None
        saved_task_state = _load_training_state(folder / TRAINING_STATE_FILE, task_state, ema)
        accelerator.step = load_rng_state(folder / RNG_FILE.format(accelerator.process_index), accelerator.device)
    return state, saved_task_state


def read_checkpoint(folder: Path) -> TrainerState:
    """The trainer state of a checkpoint, after :func:`check_files` (InputError for anything wrong)."""
    state = TrainerState.read(folder / STATE_FILE)
    if state.step != int(folder.name[len(CHECKPOINT_PREFIX):]):
        raise InputError(f"{folder / STATE_FILE}: step {state.step} does not match the folder's name")
    check_files(folder)
    return state


def check_files(folder: Path) -> None:
    """Refuse (InputError naming the file) anything in a checkpoint that could run code when read,
    and safetensors or JSON files that do not parse (before any library reads them)."""
    for path in sorted(folder.rglob("*")):
        if path.is_dir():
            continue
        if path.suffix == ".json":
            try:
                json.loads(path.read_text())
            except (OSError, UnicodeDecodeError, ValueError) as exc:
                raise InputError(f"{path}: unreadable ({one_line(exc)})") from None
            continue
        if path.suffix == ".safetensors":
            try:
                with safe_open(str(path), framework="pt"):
                    pass
            except (OSError, SafetensorError) as exc:
                raise InputError(f"{path}: not a safetensors file ({one_line(exc)})") from None
            continue
        if path.suffix == ".pkl":
            raise InputError(f"{path}: a pickle file: mimaface never unpickles files from a run folder (checkpoints "
                             f"hold none; one written by an older mimaface cannot be resumed)")
        try:
            torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as exc:  # noqa: BLE001 -- whatever torch refuses is refused
            raise InputError(f"{path}: refused: it is not plain tensor data ({_refusal(exc)})") from None


def _refusal(exc: Exception) -> str:
    """The telling line of torch.load's refusal."""
    text = str(exc)
    if "mmap can only be used" in text:
        return "not a torch zip file"
    lines = [line.strip() for line in text.splitlines() if line.strip()
             and not line.startswith(("Weights only load failed", "Check the documentation"))]
    return lines[0] if lines else one_line(text) or type(exc).__name__


def _read_safetensors(path: Path, what: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    if not path.is_file():
        raise InputError(f"{path}: missing ({what}); the checkpoint is incomplete or was written by an older "
                         f"mimaface, so it cannot be resumed exactly")
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, f.metadata() or {}  # noqa: SIM118 -- not iterable
    except (OSError, SafetensorError) as exc:
        raise InputError(f"{path}: unreadable ({one_line(exc)})") from None


def _check_like(path: Path, what: str, saved: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    """``saved`` has ``expected``'s names, shapes and dtypes."""
    if set(saved) != set(expected):
        raise InputError(f"{path}: {what} does not match this run (saved: {reprlib.repr(sorted(saved))}; this run "
                         f"has: {reprlib.repr(sorted(expected))})")
    for name, tensor in expected.items():
        if saved[name].shape != tensor.shape or saved[name].dtype != tensor.dtype:
            raise InputError(f"{path}: {name} is {tuple(saved[name].shape)} {saved[name].dtype}, this run's is "
                             f"{tuple(tensor.shape)} {tensor.dtype}")


def _json_field(path: Path, metadata: dict[str, str], key: str) -> dict:
    try:
        value = json.loads(metadata[key])
    except (KeyError, ValueError):
        raise InputError(f"{path}: its '{key}' metadata is missing or not JSON") from None
    if not isinstance(value, dict):
        raise InputError(f"{path}: its '{key}' metadata is not a JSON object")
    return value


def _load_training_state(path: Path, task_state: dict[str, torch.Tensor],
                         ema: EMAModel | None) -> dict[str, torch.Tensor]:
    tensors, metadata = _read_safetensors(path, "the identity memory bank and EMA weights")
    saved = {k: v for k, v in tensors.items() if not k.startswith(_EMA_PREFIX)}
    _check_like(path, "the task's state", saved, {k: v.detach() for k, v in task_state.items()})
    if (ema is None) != ("ema" not in metadata):
        raise InputError(f"{path}: {'holds' if ema is None else 'has no'} EMA weights, but this run "
                         f"{'does not use' if ema is None else 'uses'} EMA (use_ema)")
    if ema is not None:
        shadow = {k: v for k, v in tensors.items() if k.startswith(_EMA_PREFIX)}
        _check_like(path, "the EMA weights", shadow,
                    {f"{_EMA_PREFIX}{i:06d}": p for i, p in enumerate(ema.shadow_params)})
        scalars = _json_field(path, metadata, "ema")
        if set(scalars) != _EMA_SCALARS:
            raise InputError(f"{path}: the EMA settings must be exactly {', '.join(sorted(_EMA_SCALARS))}")
        try:
            ema.load_state_dict(scalars)  # checks the types; the shadow weights are copied below
        except (TypeError, ValueError) as exc:
            raise InputError(f"{path}: EMA settings: {exc}") from None
        with torch.no_grad():
            for i, p in enumerate(ema.shadow_params):
                p.copy_(shadow[f"{_EMA_PREFIX}{i:06d}"])
    return saved


def load_rng_state(path: Path, device: torch.device) -> int:
    """Restore the random streams saved by :func:`save_rng_state`; returns Accelerate's step count."""
    tensors, metadata = _read_safetensors(path, "this process's random number generator states")
    module = _device_module(device)
    device_keys = [f"{device.type}.{i}" for i in range(sum(k.startswith(f"{device.type}.") for k in tensors))]
    try:
        if set(tensors) != {"torch", "numpy.keys", *device_keys} or (module is not None) != bool(device_keys):
            raise ValueError(f"holds {reprlib.repr(sorted(tensors))}, a run on {device.type} saves torch, numpy.keys"
                             + (f" and {device.type}.0, .1, ..." if module is not None else ""))
        python, numpy_state = _json_field(path, metadata, "python"), _json_field(path, metadata, "numpy")
        step = metadata.get("accelerator_step", "")
        if not step.isdigit() or len(step) > 18:
            raise ValueError(f"accelerator_step must be a whole number, got {reprlib.repr(step)}")
        internal = python.get("state")
        if not (isinstance(internal, list) and all(is_whole(v) for v in internal)):
            raise ValueError("the python state must be a list of integers")
        keys = tensors["numpy.keys"]
        if keys.dtype != torch.int64 or keys.ndim != 1 or bool((keys < 0).any() | (keys >= 2**32).any()):
            raise ValueError("numpy.keys must be 32-bit words")
        if tensors["torch"].dtype != torch.uint8 or any(tensors[k].dtype != torch.uint8 for k in device_keys):
            raise ValueError("torch generator states must be uint8")
        random.setstate((python.get("version"), tuple(internal), python.get("gauss_next")))
        np.random.set_state((numpy_state.get("kind"), keys.numpy().astype(np.uint32), numpy_state.get("pos"),
                             numpy_state.get("has_gauss"), numpy_state.get("cached_gaussian")))
        torch.set_rng_state(tensors["torch"])
        if module is not None:
            states = [tensors[k] for k in device_keys]
            if hasattr(module, "set_rng_state_all"):
                if len(states) != module.device_count():
                    raise ValueError(f"saved for {len(states)} {device.type} devices, {module.device_count()} here")
                module.set_rng_state_all(states)
            else:
                module.set_rng_state(states[0])
    except (TypeError, ValueError, OverflowError, RuntimeError) as exc:
        raise InputError(f"{path}: not a valid random number generator state ({one_line(exc)})") from None
    return int(step)
