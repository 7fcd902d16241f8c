"""The ablation benchmark (``make benchmark``): the paper's Fig. 7 ablations on held-out SynthTalk.

Every variant is stage 1 of the tiny model (``configs/tiny.yaml``) trained for ``STEPS`` steps, with
two seeds; each is evaluated with ``mimaface evaluate`` on the same held-out clips. The video rows
evaluate the bundled stage-2 model with and without ICA, with two sampling seeds. A stage-1 model's motion modules and W_cond are still zero, so its frames are
generated independently: the table compares what the variants change (the render, the
coefficient modulation, the identity loss, the MIA design) without stage 2 in between. A
difference is marked when it is larger than the spread of the two seeds of both rows.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Variant:
    key: str  # run folder stem: runs/bench-KEY-sSEED
    label: str
    overrides: tuple[str, ...]  # `mimaface train` KEY=VALUE overrides


@dataclass(frozen=True)
class InferenceSetting:
    key: str  # report folder stem: benchmark/video-KEY-sSEED
    label: str
    flags: tuple[str, ...]  # `mimaface evaluate` flags


VARIANTS = (
    Variant("full", "full (MIA, I_R, identity loss)", ()),
    Variant("norender", "without I_R", ("model.overrides.render_channels=0",)),
    Variant("nomod", "without coefficient modulation", ("model.overrides.mia.modulation=none",)),
    Variant("noid", "without identity loss", ("model.overrides.identity.enabled=false",)),
    Variant("concat", "concatenation-MIA (authors' release)", ("model.overrides.mia.modulation=concat",)),
)
# The video rows: the bundled (stage-2) model with and without ICA; their seed is the sampling and
# cross-pairing seed of `mimaface evaluate`.
INFERENCE = (
    InferenceSetting("video-ica", "bundled video model, ICA", ()),
    InferenceSetting("video-noica", "bundled video model, --no-ica", ("--no-ica",)),
)
SEEDS = (0, 1)
# Every variant's stage-1 budget. The learning rate is constant after warm-up, so a run stopped here is
# the first STEPS steps of a longer one (the bundled model trained 9000: 2 x 10 runs of that do not fit
# one 3-hour session on 2 cores).
STEPS = 5000
# (metric key in metrics.json, column label, True when higher is better, None when neither)
METRICS = (("psnr", "PSNR", True), ("ssim", "SSIM", True), ("pose_error", "pose err (°)", False),
           ("csim", "CSIM-est", True), ("fd", "FD-est", False))
VIDEO_METRICS = (("psnr", "PSNR", True), ("pose_error", "pose err (°)", False), ("csim", "CSIM-est", True),
                 ("boundary_ratio", "seam ratio", None), ("colour_drift", "colour drift", False))
# Rows of every report that do not depend on the model, shown under the models for scale.
REFERENCES = (("source held still", "source held still"), ("I_R only", "I_R only"),
              ("ground truth", "ground truth (the reader's floor)"))


def run_dir(runs: Path, variant: Variant, seed: int) -> Path:
    """Where a variant's stage-1 run lives."""
    return runs / f"bench-{variant.key}-s{seed}"


def train_command(runs: Path, data: Path, config: Path, variant: Variant, seed: int) -> list[str]:
    """The `mimaface train` arguments of one run (resuming when it has checkpoints)."""
    output = run_dir(runs, variant, seed)
    command = ["train", "--config", str(config), "--stage", "1", "--data", str(data),
               "--vae", str(runs / "tiny-vae" / "final"), "--output", str(output),
               f"data.latent_cache={runs / 'latents'}", f"seed={seed}", f"stage1.steps={STEPS}", *variant.overrides, "-q"]
    if (output / "checkpoints").is_dir():
        command.append("--resume")
    return command


def load_results(reports: Path, keys: Sequence[str]) -> dict[str, dict[int, dict]]:
    """``metrics.json`` tables of ``reports/KEY-sSEED`` for every key and seed that has one."""
    results: dict[str, dict[int, dict]] = {}
    for key in keys:
        for seed in SEEDS:
            path = reports / f"{key}-s{seed}" / "metrics.json"
            if path.is_file():
                results.setdefault(key, {})[seed] = json.loads(path.read_text())["table"]
    return results


def benchmark_table(results: dict[str, dict[int, dict]], mode: str, rows: Sequence[tuple[str, str]],
                    metrics: Sequence[tuple[str, str, bool | None]] = METRICS) -> str:
    """Markdown: one line per ``(key, label)`` of ``rows`` (the first is the baseline), each metric as
    the mean over seeds ± half their spread, ``*`` where it differs from the baseline by more than
    both lines' spreads together; then the :data:`REFERENCES` rows of the baseline's reports."""
    arrow = {True: " ↑", False: " ↓", None: ""}
    lines = ["| | seeds | " + " | ".join(label + arrow[up] for _, label, up in metrics) + " |",
             "| --- | ---: |" + " ---: |" * len(metrics)]

    def values(key: str, row: str, metric: str) -> list[float]:
        return [t[mode][row][metric] for t in results.get(key, {}).values() if metric in t[mode].get(row, {})]

    baseline = rows[0][0]
    for key, label in rows:
        if key in results:
            cells = [_cell(values(key, "generated", m), None if key == baseline else values(baseline, "generated", m))
                     for m, _, _ in metrics]
            lines.append(f"| {label} | {len(results[key])} | " + " | ".join(cells) + " |")
    for row, label in REFERENCES if baseline in results else ():
        cells = [_cell(values(baseline, row, m), None) for m, _, _ in metrics]
        lines.append(f"| *{label}* | {len(results[baseline])} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(values: list[float], baseline: list[float] | None) -> str:
    if not values:
        return "–"
    mean, half = float(np.mean(values)), (max(values) - min(values)) / 2
    text = f"{mean:.3f}" if abs(mean) < 10 else f"{mean:.2f}"
    if len(values) > 1:
        text += f" ± {half:.3f}" if half < 10 else f" ± {half:.2f}"
    if baseline is not None and len(values) > 1 and len(baseline) > 1:
        if abs(mean - float(np.mean(baseline))) > half + (max(baseline) - min(baseline)) / 2:
            text += " *"
    return text
