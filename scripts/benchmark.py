"""The ablation benchmark: train what is missing, evaluate every run, rewrite the README section.

``python scripts/benchmark.py`` (``make benchmark``) trains, for every variant in
``mimaface.evaluation.benchmark.VARIANTS`` and both seeds, stage 1 of the tiny model with the full
model's budget (resuming interrupted runs), evaluates each on the first ``--max-clips`` held-out
clips, and writes the tables to ``docs/benchmark.md`` and between the README's benchmark markers.
About 45 minutes of one core per run; re-running skips what is done.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mimaface.cli import main as cli_main
from mimaface.evaluation.benchmark import (
    SEEDS,
    VARIANTS,
    benchmark_table,
    load_results,
    run_dir,
    train_command,
)
from mimaface.evaluation.evaluate import EvaluateOptions, evaluate

REPO = Path(__file__).resolve().parents[1]
START, END = "<!-- benchmark:start -->", "<!-- benchmark:end -->"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=REPO / "runs")
    parser.add_argument("--data", type=Path, default=None, help="default: RUNS/synthtalk64")
    parser.add_argument("--max-clips", type=int, default=20)
    parser.add_argument("--steps", type=int, default=25)
    args = parser.parse_args()
    runs = args.runs.resolve()
    data = (args.data or runs / "synthtalk64").resolve()
    reports = runs / "benchmark"
    for variant in VARIANTS:
        for seed in SEEDS:
            folder = run_dir(runs, variant, seed)
            if not (folder / "final").is_dir():
                print(f"training {variant.label}, seed {seed} -> {folder}", flush=True)
                if cli_main(train_command(runs, data, REPO / "configs" / "tiny.yaml", variant, seed)) != 0:
                    sys.exit(f"training {folder} failed")
            report = reports / f"{variant.key}-s{seed}"
            if not (report / "metrics.json").is_file():
                print(f"evaluating {folder}", flush=True)
                evaluate(folder / "final", data, report,
                         EvaluateOptions(max_clips=args.max_clips, num_inference_steps=args.steps))
    results = load_results(reports)
    text = "\n\n".join(f"**{mode}-identity**\n\n{benchmark_table(results, mode)}" for mode in ("same", "cross"))
    (REPO / "docs" / "benchmark.md").write_text(text + "\n")
    readme = (REPO / "README.md").read_text()
    if START in readme and END in readme:
        head, rest = readme.split(START, 1)
        readme = head + START + "\n" + text + "\n" + END + rest.split(END, 1)[1]
        (REPO / "README.md").write_text(readme)
    print(text)


if __name__ == "__main__":
    main()
