"""Copy a trained tiny model into the package (the bundled model) with the record of how it was made.

``python scripts/export_tiny_model.py --runs runs`` takes ``runs/tiny-vae``, ``runs/tiny-1`` and
``runs/tiny-2`` (what ``make tiny-model`` trains), copies ``runs/tiny-2/final`` to
``src/mimaface/assets/tiny_model`` with ``training.json`` (commands, data recipe, summaries of
the three runs, machine), and the loss curves, last validation grids and a reenactment matrix
(held-out sources x held-out driving frames) to ``docs/training/``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
STAGES = {"vae": "tiny-vae", "stage1": "tiny-1", "stage2": "tiny-2"}


def reenactment_matrix(runs: Path, data: Path, path: Path) -> None:
    """Held-out sources x held-out driving frames with the final stage-1 model (EMA weights)."""
    from mimaface.pipelines.pipeline import MIMAFacePipeline
    from mimaface.training.config import load_config
    from mimaface.training.tasks import ImageTask

    torch.set_num_threads(1)
    config = load_config(REPO / "configs" / "tiny.yaml", [f"data.root={data}", f"model.vae={runs / 'tiny-vae' / 'final'}",
                                                          "data.cache_latents=false"])
    task = ImageTask(config, config.stage1, runs / "tiny-1", torch.device("cpu"), False)
    pipeline = MIMAFacePipeline.from_pretrained(runs / "tiny-1" / "final")
    pipeline.set_progress_bar_config(disable=True)
    task.reenactment_matrix(pipeline, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=REPO / "runs")
    parser.add_argument("--data", type=Path, default=None, help="the data set (default: RUNS/synthtalk64)")
    parser.add_argument("--out", type=Path, default=REPO / "src" / "mimaface" / "assets" / "tiny_model")
    parser.add_argument("--docs", type=Path, default=REPO / "docs" / "training")
    args = parser.parse_args()
    data = args.data or args.runs / "synthtalk64"
    record = {"data": json.loads((data / "dataset.json").read_text()),
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__},
              "stages": {}}
    args.docs.mkdir(parents=True, exist_ok=True)
    for stage, name in STAGES.items():
        run = args.runs / name
        record["stages"][stage] = {
            "commands": (run / "command.txt").read_text().splitlines(),
            "summary": json.loads((run / "summary.json").read_text()),
        }
        shutil.copyfile(run / "loss_curve.png", args.docs / f"{stage}_loss.png")
        grids = sorted((run / "validation").glob("step-*.png"))
        shutil.copyfile(grids[-1], args.docs / f"{stage}_validation.png")
        if len(grids) > 1 and stage == "stage1":
            shutil.copyfile(grids[0], args.docs / f"{stage}_validation_first.png")
    reenactment_matrix(args.runs, data, args.docs / "stage1_matrix.png")
    shutil.rmtree(args.out, ignore_errors=True)
    shutil.copytree(args.runs / STAGES["stage2"] / "final", args.out)
    (args.out / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    size = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"wrote {args.out} ({size / 2**20:.1f} MiB) and {args.docs}")


if __name__ == "__main__":
    main()
