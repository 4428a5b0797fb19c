"""CLI start and plan: `rollout plan` of a local manifest against merely importing azure.ai.ml,
and validate and plan of a 200-manifest folder, each as a user runs it (a new process).

    python -m benchmarks.cli_start [--rounds 10] [--manifests 200]

Each round runs every command once, in a shuffled order, so load from other processes on the
machine falls on all of them alike; figures are medians over rounds, and the ratio is taken
within each round. Every command runs once before timing, so the project's bytecode is cached
as it is after an install (see `bench_env`). The fleet's endpoints exist and are converged
(set up as benchmarks/reconcile_fleet.py does). Results: results/performance/cli.json.
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import (
    ROOT,
    VENV_BIN,
    at_least,
    below,
    bench_env,
    git_revision,
    median,
    verdict,
    write_result,
)
from benchmarks.fleet import seed_fleet, write_fleet

LOCAL = "rollouts/credit-risk-local.yaml"
RATIO_TARGET = 4.0
FOLDER_TARGET_S = 2.0


def _time(command: list[str], cwd: Path, env: dict[str, str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    seconds = time.perf_counter() - started
    if done.returncode not in (0, 2):
        raise RuntimeError(f"{' '.join(command)} failed: {done.stderr[-500:]}")
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cli_start")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--manifests", type=int, default=200)
    args = parser.parse_args(argv)
    rollout = str(VENV_BIN / "rollout")
    python = sys.executable

    with tempfile.TemporaryDirectory(prefix="bench-cli-") as scratch:
        root = Path(scratch)
        empty_home = root / "empty-home"
        empty_home.mkdir()
        fleet_home = root / "fleet" / "home"
        folder = write_fleet(root / "fleet", args.manifests)
        seed_fleet(fleet_home, folder)
        commands: dict[str, tuple[list[str], Path, dict[str, str]]] = {
            "python_start": ([python, "-c", "pass"], ROOT, bench_env()),
            "import_azure_ai_ml": (
                [python, "-c", "from azure.ai.ml import MLClient"],
                ROOT,
                bench_env(),
            ),
            "plan_one_local": (
                [rollout, "plan", LOCAL],
                ROOT,
                bench_env(SAFEROLLOUT_HOME=str(empty_home)),
            ),
            "validate_folder": (
                [rollout, "validate", "rollouts"],
                folder.parent,
                bench_env(SAFEROLLOUT_HOME=str(fleet_home)),
            ),
            "plan_folder": (
                [rollout, "plan", "rollouts"],
                folder.parent,
                bench_env(SAFEROLLOUT_HOME=str(fleet_home)),
            ),
        }
        for command, cwd, env in commands.values():  # warm-up: bytecode, page cache
            _time(command, cwd, env)
        rows: dict[str, list[float]] = {name: [] for name in commands}
        rng = random.Random(7)
        for _ in range(args.rounds):
            order = list(commands)
            rng.shuffle(order)
            for name in order:
                rows[name].append(_time(*commands[name]))

    ratios = [
        a / p for a, p in zip(rows["import_azure_ai_ml"], rows["plan_one_local"], strict=True)
    ]
    medians = {name: round(median(times), 3) for name, times in rows.items()}
    ratio = median(ratios)
    checks: dict[str, Any] = {
        "azure_import_over_local_plan": at_least(ratio, RATIO_TARGET),
        "validate_folder_seconds": below(medians["validate_folder"], FOLDER_TARGET_S),
        "plan_folder_seconds": below(medians["plan_folder"], FOLDER_TARGET_S),
    }
    path = write_result(
        "cli",
        {
            "revision": git_revision(),
            "rounds": args.rounds,
            "manifests": args.manifests,
            "median_seconds": medians,
            "ratio_per_round": [round(r, 2) for r in ratios],
            "runs_seconds": {k: [round(t, 3) for t in v] for k, v in rows.items()},
            "checks": checks,
        },
    )
    for name, seconds in medians.items():
        print(f"{name}: median {seconds:.3f} s")
    for name, check in checks.items():
        print(f"{name}: {check['value']} (target {check['target']}): {verdict(check['holds'])}")
    print(f"wrote {path.relative_to(ROOT)}", file=sys.stderr)
    return 0 if all(c["holds"] for c in checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
