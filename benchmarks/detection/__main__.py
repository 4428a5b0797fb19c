"""`python -m benchmarks.detection [--runs N] [--seed S] [--out DIR]`: run and write results."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from benchmarks.detection.report import write_results
from benchmarks.detection.run import DEFAULT_RUNS, DEFAULT_SEED, run_benchmark
from benchmarks.detection.traffic import Setting

RESULTS = Path(__file__).resolve().parents[1] / "results"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.detection", description=__doc__)
    parser.add_argument("--runs", type=int, default=DEFAULT_RUNS, help="runs per case")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="random seed")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    args = parser.parse_args(argv)

    started = time.monotonic()
    setting = Setting()
    results = run_benchmark(setting, runs=args.runs, seed=args.seed, progress=print)
    written = write_results(results, setting, args.out, runs=args.runs, seed=args.seed)
    for path in written:
        print(f"wrote {path}")
    print(f"{args.runs:,} runs per case in {time.monotonic() - started:.0f} s")
    return 0 if results.targets_hold() else 1


if __name__ == "__main__":
    sys.exit(main())
