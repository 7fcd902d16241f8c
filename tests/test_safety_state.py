"""The state the project writes: no pickle from a run folder ever runs, one writer per folder,
every file appears whole, a full disk is one clear line (README "Safety and limits")."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import pickle
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from mimaface import files
from mimaface.cli import main as cli_main
from mimaface.demo import asset_path
from mimaface.errors import InputError
from mimaface.models.config import TINY_VAE_CONFIG
from mimaface.training import checkpoints
from mimaface.training.tasks import ImageTask

REPO = Path(__file__).resolve().parents[1]
TINY_YAML = REPO / "configs" / "tiny.yaml"
FAST = ["stage1.batch_size=4", "validation_steps=1000", "validation_inference_steps=2", "checkpointing_steps=2",
        "log_steps=1", "data.validation_samples=2"]
CHECKPOINT_FILES = {"model.safetensors", "optimizer.bin", "scheduler.bin", "rng_state_0.safetensors",
                    "training_state.safetensors", "trainer_state.json"}


class Payload:
    """Unpickling this runs code: it writes ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return exec, (f"open({str(self.path)!r}, 'w').write('the payload ran')",)


@pytest.fixture(scope="module")
def data(training_synthtalk) -> Path:
    return training_synthtalk


@pytest.fixture(scope="module")
def stage1(data, tmp_path_factory) -> list[str]:
    """The arguments of a tiny stage-1 run (random VAE, latent cache outside the run folder)."""
    torch.manual_seed(0)
    vae = tmp_path_factory.mktemp("vae") / "vae"
    AutoencoderKL(**TINY_VAE_CONFIG).save_pretrained(vae)
    cache = tmp_path_factory.mktemp("cache") / "latents"
    return ["--stage", "1", "--vae", str(vae), "--data", str(data), *FAST, f"data.latent_cache={cache}"]


def train(*args: str) -> int:
    return cli_main(["train", "--config", str(TINY_YAML), "-q", *map(str, args)])


@pytest.fixture(scope="module")
def finished(stage1, tmp_path_factory) -> Path:
    """A stage-1 run of 2 steps: RUN/checkpoints/checkpoint-000002 and RUN/final."""
    run = tmp_path_factory.mktemp("run") / "run"
    assert train(*stage1, "stage1.steps=2", "--output", run) == 0
    return run


def copy_of(run: Path, tmp_path: Path, name: str = "run") -> Path:
    shutil.copytree(run, tmp_path / name)
    return tmp_path / name


def resume(stage1: list[str], run: Path, capsys, steps: int = 4) -> tuple[int, str]:
    code = train(*stage1, f"stage1.steps={steps}", "--output", run, "--resume")
    return code, capsys.readouterr().err


def one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ------------------------------------------------------------------------------- no pickle, ever
def test_checkpoint_holds_no_pickle(finished):
    folder = finished / "checkpoints" / "checkpoint-000002"
    assert set(listing(folder)) == CHECKPOINT_FILES
    assert not list(finished.rglob("*.pkl"))
    state = load_file(folder / "training_state.safetensors")
    assert int(state["bank.pointer"]) == 2 * 4  # two steps of 4 identity tokens went into the memory bank
    assert (state["bank.labels"] >= 0).sum() == 8
    assert sum(k.startswith("ema.shadow.") for k in state) > 0
    with safe_open(str(folder / "training_state.safetensors"), framework="pt") as f:
        assert json.loads(f.metadata()["ema"])["optimization_step"] == 2


def test_pickle_payload_in_any_checkpoint_file_never_runs(finished, stage1, tmp_path, capsys):
    marker = tmp_path / "payload-ran"
    evil = tmp_path / "evil.bin"
    torch.save({"state": Payload(marker)}, evil)
    torch.load(evil, weights_only=False)  # the payload is real: unpickled without restriction, it runs
    assert marker.read_text() == "the payload ran"
    marker.unlink()
    cases = [(name, evil.read_bytes()) for name in sorted(CHECKPOINT_FILES)]
    cases += [("optimizer.bin", pickle.dumps(Payload(marker))),  # a raw pickle, not a torch zip file
              ("custom_checkpoint_0.pkl", evil.read_bytes()), ("random_states_0.pkl", evil.read_bytes())]
    for i, (name, payload) in enumerate(cases):
        run = copy_of(finished, tmp_path, f"run{i}")
        (run / "checkpoints" / "checkpoint-000002" / name).write_bytes(payload)
        code, err = resume(stage1, run, capsys)
        assert code == 2, (name, err)
        assert name in one_line(err)
        assert not marker.exists(), name
        assert listing(run / "checkpoints") == ["checkpoint-000002"]
        shutil.rmtree(run)


def test_plain_tensors_of_the_wrong_kind_are_one_line(finished, stage1, tmp_path, capsys):
    """A file that loads with weights_only=True but is not this run's optimizer state."""
    run = copy_of(finished, tmp_path)
    wrong = {"state": {}, "param_groups": [{"params": [0]}]}
    torch.save(wrong, run / "checkpoints" / "checkpoint-000002" / "optimizer.bin")
    code, err = resume(stage1, run, capsys)
    assert code == 2 and "cannot resume from it" in one_line(err)


CRAFTED = {
    "a foreign folder": ("checkpoint-abc", "not a checkpoint (checkpoint folders are named checkpoint-NNNNNN)"),
    "an unknown key": ({"extra": 1}, "unknown keys: extra"),
    "a string step": ({"step": "2"}, "step must be a whole number >= 0, got '2'"),
    "a negative epoch": ({"epoch": -1}, "epoch must be a whole number >= 0"),
    "another step": ({"step": 3}, "step 3 does not match the folder's name"),
    "a broken history": ({"history": {"loss": [[1, "x"]]}}, "history must map each loss name"),
    "a 5000-digit step": ('{"step": ' + "9" * 5000 + "}", "trainer_state.json: unreadable"),
    "a batch beyond the epoch": ({"batch": 10**6}, "batch 1000000 is beyond an epoch"),
    "no RNG state": ("rng_state_0.safetensors", "rng_state_0.safetensors: missing"),
    "a bad RNG state": ({"rng": "short"}, "not a valid random number generator state"),
    "a memory bank of another size": ({"bank": "short"}, "bank.tokens is (1, "),
}


@pytest.mark.parametrize("case", list(CRAFTED))
def test_crafted_run_folder_is_one_clear_line(case, finished, stage1, tmp_path, capsys):
    change, expected = CRAFTED[case]
    run = copy_of(finished, tmp_path)
    folder = run / "checkpoints" / "checkpoint-000002"
    state_file = folder / "trainer_state.json"
    if change == "checkpoint-abc":
        (run / "checkpoints" / change).mkdir()
    elif change == "rng_state_0.safetensors":
        (folder / change).unlink()
    elif isinstance(change, str):
        state_file.write_text(change)
    elif "rng" in change:
        tensors = load_file(folder / "rng_state_0.safetensors")
        with safe_open(str(folder / "rng_state_0.safetensors"), framework="pt") as f:
            metadata = f.metadata()
        save_file({**tensors, "torch": tensors["torch"][:10].clone()}, folder / "rng_state_0.safetensors", metadata)
    elif "bank" in change:
        path = folder / "training_state.safetensors"
        tensors = load_file(path)
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata()
        save_file({**tensors, "bank.tokens": tensors["bank.tokens"][:1].clone()}, path, metadata)
    else:
        state_file.write_text(json.dumps(json.loads(state_file.read_text()) | change))
    code, err = resume(stage1, run, capsys)
    assert code == 2
    assert expected in one_line(err)


def test_rng_streams_round_trip(tmp_path):
    process = SimpleNamespace(device=torch.device("cpu"), step=7, process_index=0)
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    random.gauss(0, 1), np.random.standard_normal(), torch.randn(3)  # mid-stream, with cached Gaussians
    path = tmp_path / "rng.safetensors"
    checkpoints.save_rng_state(path, process)

    def draws():
        return random.random(), random.gauss(0, 1), np.random.standard_normal(3).tolist(), torch.randn(4).tolist()

    expected = draws()
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    assert draws() != expected
    assert checkpoints.load_rng_state(path, process.device) == 7
    assert draws() == expected


# ---------------------------------------------------------------------------- one writer per folder
@contextlib.contextmanager
def locked_by_another_process(folder: Path):
    """``folder`` locked by a separate Python process for the block; yields its PID."""
    code = ("import sys\nfrom mimaface.files import folder_lock\nwith folder_lock(sys.argv[1]):\n"
            "    print('locked', flush=True)\n    sys.stdin.read()\n")
    process = subprocess.Popen([sys.executable, "-c", code, str(folder)], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "locked"
        yield process.pid
    finally:
        process.stdin.close()
        assert process.wait(timeout=60) == 0


@pytest.mark.parametrize("command", ["synth", "preprocess", "evaluate", "latent cache"])
def test_second_writer_is_one_clear_line(command, data, stage1, tmp_path, capsys):
    folder = tmp_path / "out"
    if command == "synth":
        args = ["synth", "-o", folder, "--identities", "2", "--clips-per-identity", "1", "--frames", "4",
                "--size", "64", "--workers", "1", "--no-sheets", "-q"]
    elif command == "preprocess":
        (tmp_path / "videos" / "someone").mkdir(parents=True)
        (tmp_path / "videos" / "someone" / "talk.mp4").write_bytes(b"not read: the folder is locked first")
        args = ["preprocess", tmp_path / "videos", "-o", folder, "--workers", "1", "-q"]
    elif command == "evaluate":
        args = ["evaluate", "--data", data, "--engine", "warp", "-o", folder, "-q"]
    else:
        args = ["train", "--config", TINY_YAML, "-q", *stage1, f"data.latent_cache={folder}", "stage1.steps=2",
                "--output", tmp_path / "run"]
    with locked_by_another_process(folder) as pid:
        code = cli_main([str(a) for a in args])
    assert code == 2
    assert f"{folder} is in use by process {pid}; wait for it to finish" in one_line(capsys.readouterr().err)
    assert listing(folder) == []  # nothing written; the lock file went with its owner


def test_two_training_processes_on_one_run_folder(data, tmp_path):
    """Two real `mimaface train` processes: the second is refused while the first trains on."""
    run = tmp_path / "run"
    command = [sys.executable, "-m", "mimaface.cli", "train", "--config", str(TINY_YAML), "--stage", "vae",
               "--data", str(data), "--output", str(run), "-q", "vae.steps=100000", "vae.batch_size=2",
               "checkpointing_steps=100000", "validation_steps=100000", "log_with=none"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(tmp_path / "first.err", "w") as first_err:
        first = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=first_err)
    try:
        deadline = time.monotonic() + 300
        while not ((run / ".lock").is_file() and (run / ".lock").read_text().strip()):
            assert first.poll() is None, (tmp_path / "first.err").read_text()
            assert time.monotonic() < deadline
            time.sleep(0.2)
        second = subprocess.run(command, check=False, env=env, capture_output=True, text=True, timeout=300)
        assert second.returncode == 2
        assert one_line(second.stderr) == (f"mimaface train: error: {run} is in use by process {first.pid}; "
                                           "wait for it to finish or use another folder")
        assert first.poll() is None  # the first run goes on
    finally:
        first.kill()
        first.wait()
    assert (run / ".lock").is_file()  # killed, it left its lock file but not its lock
    with files.folder_lock(run):
        assert (run / ".lock").read_text() == f"{os.getpid()}\n"
    assert not (run / ".lock").exists()


def test_a_locked_run_folder_stops_every_training_process(stage1, tmp_path):
    """With two processes only the main one takes the lock; the other must leave too, not wait forever."""
    run = tmp_path / "run"
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or "accelerate"
    command = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29537",
               "-m", "mimaface.train", "--config", str(TINY_YAML), "-q", *stage1, "stage1.steps=2", "--output", str(run)]
    with locked_by_another_process(run) as pid:
        result = subprocess.run(command, check=False, env={**os.environ, "OMP_NUM_THREADS": "1"},
                                capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert result.stderr.count(f"{run} is in use by process {pid}") == 2  # both processes said so and left


# --------------------------------------------------------------------------------- whole or not at all
def test_atomic_write_flushes_renames_and_flushes_the_folder(tmp_path, monkeypatch):
    calls = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        calls.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(a, b):
        calls.append(("replace", str(a), str(b)))
        real_replace(a, b)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    target = tmp_path / "metrics.json"
    files.write_json(target, {"psnr": 20.5})
    temp = calls[0][1]
    assert calls == [("fsync", temp), ("replace", temp, str(target)), ("fsync", str(tmp_path))]
    assert Path(temp).name.startswith(".metrics.") and json.loads(target.read_text()) == {"psnr": 20.5}
    assert listing(tmp_path) == ["metrics.json"]


def test_failed_write_leaves_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "metrics.json"
    target.write_text("old")
    with pytest.raises(KeyboardInterrupt), files.atomic_output(target) as tmp:
        tmp.write_text("half")
        raise KeyboardInterrupt  # killed mid-write
    assert target.read_text() == "old" and listing(tmp_path) == ["metrics.json"]

    def full(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", full)
    with pytest.raises(InputError, match=r"metrics.json: could not write it: no space left on the device"):
        files.write_json(target, {"psnr": 1.0})
    assert target.read_text() == "old" and listing(tmp_path) == ["metrics.json"]


def test_a_folder_is_replaced_never_deleted_first(tmp_path):
    final = tmp_path / "final"
    final.mkdir()
    (final / "model.txt").write_text("old")
    with files.atomic_folder(final) as new:
        (new / "model.txt").write_text("new")
        assert (final / "model.txt").read_text() == "old"  # still whole while the new one is built
    assert (final / "model.txt").read_text() == "new" and listing(tmp_path) == ["final"]
    with pytest.raises(RuntimeError), files.atomic_folder(final) as new:
        (new / "model.txt").write_text("half")
        raise RuntimeError("export failed")
    assert (final / "model.txt").read_text() == "new" and listing(tmp_path) == ["final"]


def test_training_final_is_replaced_never_deleted_first(finished, stage1, tmp_path, capsys, monkeypatch):
    run = copy_of(finished, tmp_path)
    before = {p.relative_to(run): p.read_bytes() for p in (run / "final").rglob("*") if p.is_file()}
    real_export = ImageTask.export

    def export_then_fill_the_disk(self, module, directory):
        real_export(self, module, directory)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ImageTask, "export", export_then_fill_the_disk)
    code, err = resume(stage1, run, capsys)
    assert code == 2 and f"{run / 'final'}: could not write it: no space left on the device" in one_line(err)
    assert {p.relative_to(run): p.read_bytes() for p in (run / "final").rglob("*") if p.is_file()} == before
    assert not [p for p in run.iterdir() if p.name.startswith(".final")]
    monkeypatch.setattr(ImageTask, "export", real_export)
    code, _ = resume(stage1, run, capsys)  # step 4 is checkpointed: only the export is left to do
    assert code == 0
    after = {p.relative_to(run): p.read_bytes() for p in (run / "final").rglob("*") if p.is_file()}
    assert after.keys() == before.keys() and after != before  # the step-4 model replaced the step-2 one
    assert not [p for p in run.iterdir() if p.name.startswith(".")]


def test_estimator_replaces_its_folder_and_refuses_any_other(tmp_path):
    from mimaface.evaluation.estimator import EstimatorConfig, FaceEstimator

    model = FaceEstimator(EstimatorConfig())
    out = tmp_path / "estimator"
    model.save_pretrained(out, {"run": 1})
    model.save_pretrained(out, {"run": 2})
    assert listing(out) == ["config.json", "estimator.json", "model.safetensors"]
    assert json.loads((out / "estimator.json").read_text()) == {"run": 2} and listing(tmp_path) == ["estimator"]
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(InputError, match="holds other files \\(notes.txt\\)"):
        model.save_pretrained(tmp_path / "mine")
    assert listing(tmp_path / "mine") == ["notes.txt"]


# ------------------------------------------------------------------------------------- a full disk
def test_full_disk_while_checkpointing_injected(finished, stage1, tmp_path, capsys, monkeypatch):
    run = copy_of(finished, tmp_path)
    real_save_file = checkpoints.save_file

    def full(tensors, path, metadata=None):
        if "000004" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save_file(tensors, path, metadata=metadata)

    monkeypatch.setattr(checkpoints, "save_file", full)
    code, err = resume(stage1, run, capsys)
    assert code == 2
    assert one_line(err).startswith(f"mimaface train: error: {run / 'checkpoints' / 'checkpoint-000004'}: could not "
                                    f"write it: no space left on the device")
    assert f"the last complete checkpoint, {run / 'checkpoints' / 'checkpoint-000002'}, is left as it was" in err
    assert listing(run / "checkpoints") == ["checkpoint-000002"]
    monkeypatch.setattr(checkpoints, "save_file", real_save_file)
    code, _ = resume(stage1, run, capsys)
    assert code == 0 and listing(run / "checkpoints") == ["checkpoint-000002", "checkpoint-000004"]


def test_full_disk_in_extract_injected(tmp_path, capsys, monkeypatch):
    def full(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", full)
    code = cli_main(["extract", str(asset_path("portrait.jpg")), "-o", str(tmp_path / "out.npz"), "-q"])
    assert code == 2
    assert f"{tmp_path / 'out.npz'}: could not write it: no space left on the device" in one_line(capsys.readouterr().err)
    assert listing(tmp_path) == []


@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs of its own, a disk that really fills up (root only; the injected tests above stand
    in for these where mounting is not allowed)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], check=False,
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()}); the injected tests cover this")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=True)


def resize(disk: Path, size: int) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(disk)], check=True)


def test_full_disk_while_checkpointing(small_disk, finished, stage1):
    checkpoint = sum(p.stat().st_size for p in (finished / "checkpoints" / "checkpoint-000002").iterdir())
    resize(small_disk, checkpoint * 3 // 2 + 2**20)  # room for one checkpoint, not two
    run = small_disk / "run"
    command = [sys.executable, "-m", "mimaface.cli", "train", "--config", str(TINY_YAML), "-q", *stage1,
               "stage1.steps=4", "--output", str(run)]  # a process of its own: all it writes to stderr is seen
    failed = subprocess.run(command, check=False, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                            text=True, timeout=600)
    assert failed.returncode == 2
    line = one_line(failed.stderr)
    assert f"{run / 'checkpoints' / 'checkpoint-000004'}: could not write it: no space left on the device" in line
    assert f"the last complete checkpoint, {run / 'checkpoints' / 'checkpoint-000002'}, is left as it was" in line
    assert listing(run / "checkpoints") == ["checkpoint-000002"]  # the partial one is gone
    resize(small_disk, checkpoint * 5)
    assert train(*stage1, "stage1.steps=4", "--output", run, "--resume") == 0
    assert (run / "final" / "model_index.json").is_file()


def test_full_disk_in_extract(small_disk, capsys):
    filler = os.open(small_disk / "filler", os.O_WRONLY | os.O_CREAT)
    with contextlib.suppress(OSError):
        while True:
            os.write(filler, b"\0" * 4096)
    os.close(filler)
    code = cli_main(["extract", str(asset_path("portrait.jpg")), "-o", str(small_disk / "out.npz"), "-q"])
    assert code == 2
    assert "no space left on the device" in one_line(capsys.readouterr().err).lower()
    assert listing(small_disk) == ["filler"]


def test_preprocess_log_keeps_the_records_after_a_cut_line(tmp_path):
    from mimaface.data.preprocess import _RunLog

    log = _RunLog(tmp_path / "preprocess_log.jsonl")
    log.write({"video": "a.mp4", "status": "ok"})
    with open(log.path, "a") as fh:
        fh.write('{"video": "b.mp4", "sta')  # a run killed in the middle of a line
    log.write({"video": "c.mp4", "status": "ok"})
    assert sorted(log.last_records()) == ["a.mp4", "c.mp4"]
