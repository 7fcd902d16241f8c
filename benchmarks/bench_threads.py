"""How a loaded CPU slows ``mimaface demo``: wall time alone and beside one competing CPU-bound
process, for several thread settings. Prints a table (not a test).

The competitor is another torch job (matrix products in a loop, torch's default threads), the
common case of two jobs sharing a machine. ``--steps`` keeps each run short; the ratio "loaded /
alone" is what matters: 2 on 2 cores is a fair share, 20 is thread oversubscription.

    python benchmarks/bench_threads.py [--steps 5] [--settings default libgomp-default passive threads1]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COMPETITOR = ("import torch\n"
              "a = torch.randn(256, 256)\n"
              "while True:\n"
              "    a = torch.tanh(a @ a / 16)\n")

# name -> (extra environment, extra demo arguments). "default" is what a user gets with no flags
# (the CLI sets GOMP_SPINCOUNT=1000 unless it is set); "libgomp-default" is libgomp's own 300000.
SETTINGS = {
    "default": ({}, []),
    "libgomp-default": ({"GOMP_SPINCOUNT": "300000"}, []),
    "spin20k": ({"GOMP_SPINCOUNT": "20000"}, []),
    "passive": ({"OMP_WAIT_POLICY": "PASSIVE"}, []),
    "threads1": ({}, ["--threads", "1"]),
}


def run_demo(steps: int, env: dict[str, str], args: list[str]) -> float:
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "mimaface.cli", "demo", "-o", out, "--steps", str(steps), "-q", *args],
                       check=True, env={**os.environ, **env}, stdout=subprocess.DEVNULL)
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    args = parser.parse_args()
    print(f"mimaface demo --steps {args.steps} on {os.cpu_count()} cores; competitor: a torch matmul loop")
    print("| setting | alone (s) | with one competitor (s) | slowdown |")
    print("| --- | ---: | ---: | ---: |")
    for name in args.settings:
        env, extra = SETTINGS[name]
        alone = run_demo(args.steps, env, extra)
        competitor = subprocess.Popen([sys.executable, "-c", COMPETITOR])
        try:
            time.sleep(2)  # let it start
            loaded = run_demo(args.steps, env, extra)
        finally:
            competitor.kill()
            competitor.wait()
        print(f"| {name} | {alone:.1f} | {loaded:.1f} | {loaded / alone:.1f}x |", flush=True)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    main()
