"""The ablation benchmark: train what is missing, evaluate every run, rewrite the README section.

``python scripts/benchmark.py`` (``make benchmark``) trains, for every variant in
``mimaface.evaluation.benchmark.VARIANTS`` and both seeds, stage 1 of the tiny model for
``STEPS`` steps (resuming interrupted runs), evaluates each on the first ``--max-clips`` held-out
clips (resuming interrupted evaluations), evaluates the bundled video model with and without ICA
with two sampling seeds, and writes the tables to ``docs/benchmark.md`` and
between the README's benchmark markers. ``--jobs N`` runs N of them at once (one core each);
about 33 minutes per run and 10 per evaluation, two at a time; re-running skips what is done.
Each run's output goes to ``RUNS/benchmark/logs/KEY-sSEED.log``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from mimaface.evaluation.benchmark import (
    INFERENCE,
    SEEDS,
    VARIANTS,
    VIDEO_METRICS,
    InferenceSetting,
    Variant,
    benchmark_table,
    load_results,
    run_dir,
    train_command,
)

REPO = Path(__file__).resolve().parents[1]
START, END = "<!-- benchmark:start -->", "<!-- benchmark:end -->"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=REPO / "runs")
    parser.add_argument("--data", type=Path, default=None, help="default: RUNS/synthtalk64")
    parser.add_argument("--max-clips", type=int, default=20)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--jobs", type=int, default=1, help="runs trained and evaluated at once")
    parser.add_argument("--no-train", action="store_true",
                        help="only evaluate the runs that are trained (e.g. while they train elsewhere)")
    args = parser.parse_args()
    runs = args.runs.resolve()
    data = (args.data or runs / "synthtalk64").resolve()
    reports = runs / "benchmark"
    (reports / "logs").mkdir(parents=True, exist_ok=True)
    # The cores shared among the jobs (training sets its own threads: torch_threads in the config).
    env = {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // args.jobs)), **os.environ}

    def run(steps: list[tuple[str, list[str]]], name: str) -> str | None:
        """Run ``mimaface`` commands one after the other into ``logs/NAME.log``; an error or None."""
        log = reports / "logs" / f"{name}.log"
        for what, command in steps:
            print(f"{what} {name}", flush=True)
            with open(log, "a") as out:
                if subprocess.run([sys.executable, "-m", "mimaface.cli", *command], stdout=out,
                                  stderr=subprocess.STDOUT, env=env).returncode != 0:
                    return f"{what} {name} failed: see {log}"
        return None

    def evaluation(report: Path, *flags: str) -> list[tuple[str, list[str]]]:
        if (report / "metrics.json").is_file():
            return []
        return [("evaluating", ["evaluate", "--data", str(data), "-o", str(report), "--max-clips", str(args.max_clips),
                                "--steps", str(args.steps), *flags, "-q"])]

    def job(item: tuple[Variant | InferenceSetting, int]) -> str | None:
        setting, seed = item
        name = f"{setting.key}-s{seed}"
        if isinstance(setting, InferenceSetting):  # the bundled model
            return run(evaluation(reports / name, "--seed", str(seed), *setting.flags), name)
        folder = run_dir(runs, setting, seed)
        if args.no_train and not (folder / "final").is_dir():
            return None
        training = [] if (folder / "final").is_dir() else [
            ("training", train_command(runs, data, REPO / "configs" / "tiny.yaml", setting, seed))]
        # A stage-1 model's W_cond is zero: ICA would change nothing but add the overlap frames' cost.
        return run(training + evaluation(reports / name, "--checkpoint", str(folder / "final"), "--no-ica"), name)

    items = [(setting, seed) for setting in (*VARIANTS, *INFERENCE) for seed in SEEDS]
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        failures = [error for error in pool.map(job, items) if error]
    variants = load_results(reports, [v.key for v in VARIANTS])
    videos = load_results(reports, [s.key for s in INFERENCE])
    text = "\n\n".join(
        [f"**{mode}-identity, stage-1 variants**\n\n"
         f"{benchmark_table(variants, mode, [(v.key, v.label) for v in VARIANTS])}" for mode in ("same", "cross")]
        + [f"**{mode}-identity, video**\n\n"
           f"{benchmark_table(videos, mode, [(s.key, s.label) for s in INFERENCE], VIDEO_METRICS)}"
           for mode in ("same", "cross")])
    (REPO / "docs" / "benchmark.md").write_text(text + "\n")
    readme = (REPO / "README.md").read_text()
    if START in readme and END in readme:
        head, rest = readme.split(START, 1)
        readme = head + START + "\n" + text + "\n" + END + rest.split(END, 1)[1]
        (REPO / "README.md").write_text(readme)
    print(text)
    if failures:
        sys.exit("\n".join(failures))


if __name__ == "__main__":
    main()
