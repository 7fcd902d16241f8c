"""The ablation benchmark (``make benchmark``): the paper's Fig. 7 ablations on held-out SynthTalk.

Every variant is stage 1 of the tiny model (``configs/tiny.yaml``) trained for ``STEPS`` steps, with
two seeds; each is evaluated with ``mimaface evaluate`` on the same
held-out clips. A stage-1 model's motion modules and W_cond are still zero, so its frames are
generated independently: the table compares what the variants change (the render, the
coefficient modulation, the identity loss, the MIA design) without stage 2 in between. A
difference is marked when it is larger than the spread of the two seeds of both rows.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Variant:
    key: str  # run folder stem: runs/bench-KEY-sSEED
    label: str
    overrides: tuple[str, ...]  # `mimaface train` KEY=VALUE overrides


VARIANTS = (
    Variant("full", "full (MIA, I_R, identity loss)", ()),
    Variant("norender", "without I_R", ("model.overrides.render_channels=0",)),
    Variant("nomod", "without coefficient modulation", ("model.overrides.mia.modulation=none",)),
    Variant("noid", "without identity loss", ("model.overrides.identity.enabled=false",)),
    Variant("concat", "concatenation-MIA (authors' release)", ("model.overrides.mia.modulation=concat",)),
)
SEEDS = (0, 1)
# Every variant's stage-1 budget. The learning rate is constant after warm-up, so a run stopped here is
# the first STEPS steps of a longer one (the bundled model trained 9000: 2 x 10 runs of that do not fit
# one 3-hour session on 2 cores).
STEPS = 5000
# (metric key in metrics.json, column label, True when higher is better)
METRICS = (("psnr", "PSNR", True), ("ssim", "SSIM", True), ("pose_error", "pose err (°)", False),
           ("csim", "CSIM-est", True), ("fd", "FD-est", False))


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


def load_results(reports: Path) -> dict[str, dict[int, dict]]:
    """``metrics.json`` tables of ``reports/KEY-sSEED`` for every variant and seed that has one."""
    results: dict[str, dict[int, dict]] = {}
    for variant in VARIANTS:
        for seed in SEEDS:
            path = reports / f"{variant.key}-s{seed}" / "metrics.json"
            if path.is_file():
                results.setdefault(variant.key, {})[seed] = json.loads(path.read_text())["table"]
    return results


def benchmark_table(results: dict[str, dict[int, dict]], mode: str) -> str:
    """Markdown: one row per variant, each metric as the mean over seeds ± half their spread;
    ``*`` where a variant differs from the full model by more than both rows' spreads together."""
    full = results.get("full", {})
    lines = ["| variant | seeds | " + " | ".join(label + (" ↑" if up else " ↓") for _, label, up in METRICS) + " |",
             "| --- | ---: |" + " ---: |" * len(METRICS)]
    for variant in VARIANTS:
        seeds = results.get(variant.key, {})
        if not seeds:
            continue
        cells = []
        for key, _, _ in METRICS:
            values = [table[mode]["generated"][key] for table in seeds.values() if key in table[mode]["generated"]]
            if not values:
                cells.append("–")
                continue
            mean, half = float(np.mean(values)), (max(values) - min(values)) / 2
            text = f"{mean:.3f}" if abs(mean) < 10 else f"{mean:.2f}"
            if len(values) > 1:
                text += f" ± {half:.3f}" if half < 10 else f" ± {half:.2f}"
            reference = [table[mode]["generated"][key] for table in full.values() if key in table[mode]["generated"]]
            if variant.key != "full" and len(values) > 1 and len(reference) > 1:
                spread = half + (max(reference) - min(reference)) / 2
                if abs(mean - float(np.mean(reference))) > spread:
                    text += " *"
            cells.append(text)
        lines.append(f"| {variant.label} | {len(seeds)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
