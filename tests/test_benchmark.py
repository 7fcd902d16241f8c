"""The ablation benchmark's bookkeeping: run folders, train commands, and the table's arithmetic."""

from __future__ import annotations

import json
from pathlib import Path

from mimaface.evaluation.benchmark import (
    STEPS,
    VARIANTS,
    benchmark_table,
    load_results,
    run_dir,
    train_command,
)

VARIANT = {v.key: v for v in VARIANTS}


def test_runs_and_commands(tmp_path):
    assert run_dir(tmp_path, VARIANT["full"], 0) == tmp_path / "bench-full-s0"
    assert run_dir(tmp_path, VARIANT["nomod"], 1) == tmp_path / "bench-nomod-s1"
    command = train_command(tmp_path, tmp_path / "data", Path("configs/tiny.yaml"), VARIANT["nomod"], 1)
    assert "model.overrides.mia.modulation=none" in command and "seed=1" in command and "--resume" not in command
    assert f"stage1.steps={STEPS}" in command  # every variant the same budget
    assert command[command.index("--output") + 1] == str(tmp_path / "bench-nomod-s1")
    full = train_command(tmp_path, tmp_path / "data", Path("configs/tiny.yaml"), VARIANT["full"], 0)
    assert not any(arg.startswith("model.overrides") for arg in full)
    (tmp_path / "bench-nomod-s1" / "checkpoints").mkdir(parents=True)
    assert "--resume" in train_command(tmp_path, tmp_path / "data", Path("configs/tiny.yaml"), VARIANT["nomod"], 1)


def _table(psnr: float, pose: float) -> dict:
    generated = {"psnr": psnr, "ssim": 0.5, "pose_error": pose, "csim": 0.7, "fd": 20.0}
    rows = {"generated": generated, "source held still": {"psnr": 15.0, "pose_error": 12.0},
            "I_R only": {"psnr": 7.0}, "ground truth": {"pose_error": 5.0, "csim": 0.9}}
    return {"same": rows, "cross": rows}


def test_table_means_spreads_marks_and_references(tmp_path):
    for key, seed, psnr, pose in [("full", 0, 20.0, 8.0), ("full", 1, 20.4, 8.2), ("norender", 0, 17.0, 8.1),
                                  ("norender", 1, 17.2, 8.3), ("noid", 0, 20.1, 8.0)]:
        (tmp_path / f"{key}-s{seed}").mkdir()
        (tmp_path / f"{key}-s{seed}" / "metrics.json").write_text(json.dumps({"table": _table(psnr, pose)}))
    results = load_results(tmp_path, [v.key for v in VARIANTS])
    assert set(results) == {"full", "norender", "noid"} and set(results["full"]) == {0, 1}
    lines = benchmark_table(results, "cross", [(v.key, v.label) for v in VARIANTS]).splitlines()
    assert len(lines) == 2 + 3 + 3  # header, rule, three variants (the others have no results), references
    full, norender, noid, still, render, truth = lines[2:]
    assert full.startswith("| full") and "| 2 |" in full and "20.20 ± 0.200" in full and "*" not in full
    # PSNR 17.1 vs 20.2 is far beyond the spreads (0.1 + 0.2): marked; pose 8.2 vs 8.1 is not
    assert "17.10 ± 0.100 *" in norender and "8.200 ± 0.100 |" in norender
    assert "| 1 |" in noid and "20.10 |" in noid and "*" not in noid  # one seed: no spread, no verdict
    assert still.startswith("| *source held still*") and "15.00 ± 0.000" in still
    assert render.startswith("| *I_R only*") and "| – |" in render  # no pose error in that report row
    assert truth.startswith("| *ground truth") and "5.000 ± 0.000" in truth
