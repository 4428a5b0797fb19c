"""What every performance benchmark shares: the machine it ran on, medians, result files.

The machine is small and shared, so a figure is the median of repeated runs, and a figure with
a baseline is a ratio of two medians measured in the same run, interleaved round by round.
Results go to `benchmarks/results/performance/NAME.json`, with the machine they came from.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "performance"
VENV_BIN = Path(sys.executable).parent


def machine() -> dict[str, Any]:
    """The facts a reader needs to weigh a figure: processor, cores, memory, load, Python."""
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        total_kib = next(
            int(line.split()[1])
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemTotal:")
        )
    except (OSError, StopIteration, ValueError):
        total_kib = 0
    return {
        "cpu": cpu or platform.processor(),
        "cores": os.cpu_count(),
        "memory_gib": round(total_kib / 1024 / 1024, 1),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


def bench_env(**extra: str) -> dict[str, str]:
    """The environment for timed child processes: as a user's shell has it.

    PYTHONDONTWRITEBYTECODE is dropped, so the project's own modules load from cached bytecode
    as installed packages do (with it, every run compiles them anew: about 90 ms here).
    """
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env.update(extra)
    return env


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def quantile(values: Sequence[float], q: float) -> float:
    """Nearest-rank quantile (q in 0..1) of `values`."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 1))))
    return ordered[rank - 1]


def write_result(name: str, result: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    document = {"benchmark": name, "machine": machine(), **result}
    path.write_text(json.dumps(document, indent=2) + "\n")
    return path


def git_revision() -> str:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        )
    except OSError:
        return ""
    return done.stdout.strip()


def below(value: float, limit: float, *, inclusive: bool = False) -> dict[str, Any]:
    """A figure against an upper target, the bound written once: `< limit` (or `<=`)."""
    holds = value <= limit if inclusive else value < limit
    return {"value": value, "target": f"{'<=' if inclusive else '<'} {limit:g}", "holds": holds}


def at_least(value: float, limit: float) -> dict[str, Any]:
    """A figure against a lower target: `>= limit`."""
    return {"value": value, "target": f">= {limit:g}", "holds": value >= limit}


def verdict(holds: bool) -> str:
    return "holds" if holds else "MISSED"
