"""Training: config, sampler, all three stages end to end, exact resume, several processes, errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL
from safetensors.torch import load_file

from mimaface.cli import main as cli_main
from mimaface.data.datasets import FramePairDataset
from mimaface.errors import InputError
from mimaface.models.config import TINY_VAE_CONFIG
from mimaface.training.config import load_config
from mimaface.training.sampler import ResumableShardSampler

REPO = Path(__file__).resolve().parents[1]
TINY_YAML = REPO / "configs" / "tiny.yaml"
# Few, small steps: these tests check the machinery, not the model.
FAST = ["stage1.batch_size=4", "stage2.batch_size=1", "vae.batch_size=4", "validation_steps=1000",
        "validation_inference_steps=2", "checkpointing_steps=2", "log_steps=1", "data.validation_samples=2"]


@pytest.fixture(scope="module")
def data(training_synthtalk) -> Path:
    return training_synthtalk


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("vae") / "vae"
    AutoencoderKL(**TINY_VAE_CONFIG).save_pretrained(folder)
    return folder


def run(*args: str) -> int:
    return cli_main(["train", "--config", str(TINY_YAML), "-q", *args])


def digest(run_dir: Path) -> list[str]:
    return json.loads((run_dir / "summary.json").read_text())["parameter_digest_per_process"]


# ------------------------------------------------------------------------------------------ config
def test_config_file_and_overrides(tmp_path):
    config = load_config(TINY_YAML, ["stage1.steps=7", "data.root=somewhere", "model.overrides={mia: {modulation: concat}}",
                                       "stage2.learning_rate=1e-3"])
    assert config.stage1.steps == 7 and config.stage1.use_ema and config.data.size == 64
    assert config.stage2.learning_rate == 1e-3  # YAML reads 1e-3 as a string
    assert config.data.root == str(Path("somewhere").resolve())
    assert config.model.overrides == {"mia": {"modulation": "concat"}}
    sd15 = load_config(REPO / "configs" / "sd15.yaml")
    assert (sd15.stage1.learning_rate, sd15.stage1.batch_size, sd15.stage1.steps) == (1e-5, 32, 30000)
    assert (sd15.stage2.batch_size, sd15.data.num_frames, sd15.data.size) == (8, 12, 512)
    with pytest.raises(InputError, match="unknown key stage1.stpes"):
        load_config(TINY_YAML, ["stage1.stpes=3"])
    with pytest.raises(InputError, match="not of the form"):
        load_config(TINY_YAML, ["stage1.steps"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("stage1: [1, 2]\n")
    with pytest.raises(InputError, match="must be a mapping"):
        load_config(bad)


def test_sampler_shards_and_resumes():
    full = ResumableShardSampler(23, 3, seed=1, rank=0, world_size=2)
    other = ResumableShardSampler(23, 3, seed=1, rank=1, world_size=2)
    assert full.batches_per_epoch == 3
    a, b = list(full), list(other)
    seen = [i for batch in a + b for i in batch]
    assert len(seen) == len(set(seen)) == 18  # disjoint, the tail (5 samples) dropped
    full.set_position(0, 2)
    assert list(full) == a[2:]
    full.set_position(1, 0)
    assert list(full) != a  # another epoch, another order


# ------------------------------------------------------------------------------- three stages
def test_vae_stage_trains_and_sets_scaling_factor(data, tmp_path):
    out = tmp_path / "vae"
    assert run("--stage", "vae", "--data", str(data), "--output", str(out), "vae.steps=6", "vae.learning_rate=1e-3",
               "vae.gradient_accumulation=2", *FAST) == 0
    vae = AutoencoderKL.from_pretrained(out / "final")
    assert vae.config.scaling_factor != 1.0  # measured from the data: 1 / std of the latents
    state = json.loads((out / "checkpoints" / "checkpoint-000006" / "trainer_state.json").read_text())
    assert (state["step"], state["epoch"] * 18 + state["batch"]) == (6, 12)  # 2 micro-batches a step, 18 an epoch
    history = state["history"]
    assert len(history["l1"]) == 6 and history["l1"][-1][1] < history["l1"][0][1]
    assert (out / "validation" / "step-000006.png").is_file() and (out / "loss_curve.png").is_file()
    assert any((out / "logs").rglob("events.out.tfevents.*"))  # TensorBoard


def test_stages_resume_bit_identical(data, vae_dir, tmp_path):
    """Stage 1 then stage 2, each run straight through and run interrupted + resumed: same parameters."""
    common = ["--data", str(data), *FAST, f"data.latent_cache={tmp_path / 'cache'}"]
    straight, interrupted = tmp_path / "s1", tmp_path / "s1i"
    stage1 = ["--stage", "1", "--vae", str(vae_dir), "stage1.steps=4", *common]
    assert run(*stage1, "--output", str(straight)) == 0
    assert run(*stage1, "--output", str(interrupted), "--stop-after", "2") == 0
    assert not (interrupted / "final").exists()
    assert run(*stage1, "--output", str(interrupted)) == 2  # refuses to overwrite a run
    assert run(*stage1, "--output", str(interrupted), "--resume") == 0
    assert digest(straight) == digest(interrupted)
    first, second = load_file(straight / "final" / "model" / "mia" / "model.safetensors"), \
        load_file(interrupted / "final" / "model" / "mia" / "model.safetensors")
    assert all(torch.equal(first[k], second[k]) for k in first)
    untrained = load_file(straight / "checkpoints" / "checkpoint-000002" / "model.safetensors")
    trained = load_file(straight / "checkpoints" / "checkpoint-000004" / "model.safetensors")
    mia = [k for k in trained if k.startswith("model.mia.")]
    assert mia and any(not torch.equal(untrained[k], trained[k]) for k in mia)  # steps 3-4 changed MIA
    assert (straight / "validation" / "step-000004.png").is_file()

    stage2 = ["--stage", "2", "--pretrained", str(straight / "final"), "stage2.steps=4", *common]
    s2, s2i = tmp_path / "s2", tmp_path / "s2i"
    assert run(*stage2, "--output", str(s2)) == 0
    assert run(*stage2, "--output", str(s2i), "--stop-after", "3") == 0
    assert run(*stage2, "--output", str(s2i), "--resume") == 0
    assert digest(s2) == digest(s2i)
    # stage 2 trained W_cond and the motion modules, and left the UNet and the appearance branch alone
    before = load_file(straight / "final" / "model" / "unet" / "diffusion_pytorch_model.safetensors")
    after = load_file(s2 / "final" / "model" / "unet" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(before[k], after[k]) for k in before)
    for part in ("mia/model.safetensors", "appearance_encoder/model.safetensors"):
        b, a = load_file(straight / "final" / "model" / part), load_file(s2 / "final" / "model" / part)
        assert all(torch.equal(b[k], a[k]) for k in b)
    w_before = load_file(straight / "final" / "model" / "w_cond" / "model.safetensors")
    w_after = load_file(s2 / "final" / "model" / "w_cond" / "model.safetensors")
    assert not torch.equal(w_before["weight"], w_after["weight"])
    assert (s2 / "validation" / "step-000004.png").is_file()


def test_checkpoint_written_atomically(data, vae_dir, tmp_path, monkeypatch):
    """A crash while a checkpoint is written leaves the previous one whole, and --resume uses it."""
    from accelerate import Accelerator

    out = tmp_path / "run"
    args = ["--stage", "1", "--vae", str(vae_dir), "--data", str(data), "stage1.steps=4", *FAST,
            f"data.latent_cache={tmp_path / 'cache'}"]
    real_save = Accelerator.save_state

    def crash_on_second(self, output_dir, **kwargs):
        real_save(self, output_dir, **kwargs)
        if "000004" in str(output_dir):
            raise KeyboardInterrupt  # killed after the files, before the rename
    monkeypatch.setattr(Accelerator, "save_state", crash_on_second)
    assert run(*args, "--output", str(out)) == 130
    names = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert "checkpoint-000002" in names and "checkpoint-000004" not in names
    monkeypatch.setattr(Accelerator, "save_state", real_save)
    assert run(*args, "--output", str(out), "--resume") == 0
    assert sorted(p.name for p in (out / "checkpoints").iterdir() if not p.name.startswith(".")) == \
        ["checkpoint-000002", "checkpoint-000004"]


def test_missing_inputs_are_clear_errors(data, tmp_path, capsys):
    assert run("--stage", "1", "--data", str(data), "--output", str(tmp_path / "a")) == 2
    assert "train it first" in capsys.readouterr().err
    assert run("--stage", "1", "--data", str(data), "--vae", str(tmp_path / "nothing"), "--output",
               str(tmp_path / "b")) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "AutoencoderKL" in err and err.count("\n") == 1
    assert run("--stage", "2", "--data", str(data), "--output", str(tmp_path / "c")) == 2
    assert "stage-1 model" in capsys.readouterr().err
    assert run("--stage", "1", "--output", str(tmp_path / "d")) == 2
    assert "no training data" in capsys.readouterr().err


# --------------------------------------------------------------------------- several processes
def test_two_processes(data, vae_dir, tmp_path):
    """accelerate launch, 2 CPU processes (gloo): same parameters on both ranks, and the identity
    memory bank holds both ranks' tokens in step order."""
    out = tmp_path / "ddp"
    steps, batch = 3, 2
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or "accelerate"
    cmd = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29533",
           "-m", "mimaface.train", "--config", str(TINY_YAML), "--stage", "1", "--data", str(data),
           "--vae", str(vae_dir), "--output", str(out), "-q", f"stage1.steps={steps}",
           f"stage1.batch_size={batch}", "stage1.use_ema=false", "checkpointing_steps=3", "validation_steps=1000",
           "validation_inference_steps=1", "log_steps=1", f"data.latent_cache={tmp_path / 'cache'}"]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["processes"] == 2
    assert len(summary["parameter_digest_per_process"]) == 2
    assert len(set(summary["parameter_digest_per_process"])) == 1

    bank = load_file(out / "checkpoints" / "checkpoint-000003" / "training_state.safetensors")
    dataset = FramePairDataset(data, "train")
    sampler = ResumableShardSampler(len(dataset), batch, seed=0, rank=0, world_size=2)
    batches = sampler.epoch_batches(0)
    expected = [dataset.clip_identity[dataset.locate(int(i))[0]] for step in range(steps)
                for rank in range(2) for i in batches[step, rank]]
    assert bank["bank.labels"][: len(expected)].tolist() == expected
    assert (bank["bank.labels"][len(expected):] == -1).all()
    assert int(bank["bank.pointer"]) == len(expected)
    assert np.isfinite(summary["final_losses"]["loss"])
