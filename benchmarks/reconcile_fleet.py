"""Reconcile at fleet size: 200 manifests against the local backend, timed and with calls counted.

    python -m benchmarks.reconcile_fleet [--manifests 200] [--repeats 3]

A generated fleet (benchmarks/fleet.py) is set up by real reconcile passes on the local control
plane, with provisioning and scoring stood in for (no worker processes for 200 endpoints).
Then one process loads every manifest and runs one pass per manifest, as the scheduled
reconcile does, each through a provider wrapper that counts calls. Three fleet states:

- converged: every endpoint's stable serves the manifest (nothing to do);
- baking: a new version is in its mirror step, bake not over: gates are measured and nothing
  is written;
- advancing: the bake is over and the gates pass on logged requests: each pass moves its
  endpoint to the next step (lease, one traffic write, release).

Figures: wall time of the whole pass over the fleet (median of --repeats for the first two;
the advancing pass can run only once per fleet) and provider calls per manifest.
Results: benchmarks/results/performance/reconcile.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT, below, git_revision, median, verdict, write_result
from benchmarks.fleet import seed_fleet, write_fleet
from engine.loader import load_paths
from engine.providers.local.provider import LocalProvider
from engine.providers.local.requestlog import RequestLog
from engine.providers.local.testing import CountingProvider
from engine.reconcile import Reconciler, SystemClock, desired_from
from engine.state import decode

TARGET_S = 10.0


class ShiftedClock(SystemClock):
    """The system clock moved forward: a bake of ten minutes is over without waiting."""

    def __init__(self, offset: timedelta):
        self.offset = offset

    def now(self) -> datetime:
        return super().now() + self.offset


def fleet_pass(home: Path, folder: Path, clock=None) -> dict[str, Any]:
    """Load the folder and run one pass per manifest; time, outcomes and calls per manifest."""
    started = time.perf_counter()
    loaded = load_paths([folder])
    loaded_s = time.perf_counter() - started
    outcomes: Counter[str] = Counter()
    calls: Counter[str] = Counter()
    per_manifest: Counter[tuple[int, int]] = Counter()
    inner = LocalProvider(home)
    for manifest in loaded:
        provider = CountingProvider(inner)
        reconciler = Reconciler(desired_from(manifest), provider, clock or SystemClock(), "bench")
        result = reconciler.apply()
        outcomes[result.final.outcome.value if result.final else "none"] += 1
        calls.update(provider.calls)
        per_manifest[(provider.reads, provider.writes)] += 1
    seconds = time.perf_counter() - started
    count = len(loaded)
    return {
        "manifests": count,
        "seconds": round(seconds, 3),
        "load_seconds": round(loaded_s, 3),
        "outcomes": dict(outcomes),
        "calls_per_manifest": {k: round(v / count, 3) for k, v in sorted(calls.items())},
        "reads_writes_per_manifest": {
            f"{r} reads, {w} writes": n for (r, w), n in per_manifest.items()
        },
    }


def _log_good_requests(home: Path, folder: Path, count: int) -> None:
    """`count` quick, successful requests per endpoint in the current step's window: mirrored
    copies for the candidate, live ones for stable."""
    provider = LocalProvider(home)
    log = RequestLog(home)
    for manifest in load_paths([folder]):
        endpoint = manifest.rollout.spec.target.endpoint
        state = decode(provider.read_endpoint(endpoint).tags)
        start = state.step_started.timestamp() + 60  # past the 30 s warm-up
        for i in range(count):
            t = start + i * 0.5
            log.record(endpoint, state.candidate, 200, 20.0 + i % 7, mirrored=True, t=t)
            log.record(endpoint, state.stable, 200, 20.0 + i % 7, t=t)
    log.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.reconcile_fleet")
    parser.add_argument("--manifests", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as scratch:
        root = Path(scratch)
        home = root / "home"
        folder = write_fleet(root, args.manifests, version="1")
        seeded = Counter(seed_fleet(home, folder))
        runs = [fleet_pass(home, folder) for _ in range(args.repeats)]
        results["converged"] = {**runs[-1], "seconds_runs": [r["seconds"] for r in runs]}
        results["converged"]["seconds"] = median([r["seconds"] for r in runs])
        results["converged"]["seeded"] = dict(seeded)

        folder = write_fleet(root, args.manifests, version="2")
        seeded = Counter(seed_fleet(home, folder))
        runs = [fleet_pass(home, folder) for _ in range(args.repeats)]
        results["baking"] = {**runs[-1], "seconds_runs": [r["seconds"] for r in runs]}
        results["baking"]["seconds"] = median([r["seconds"] for r in runs])
        results["baking"]["seeded"] = dict(seeded)

        _log_good_requests(home, folder, 300)
        results["advancing"] = fleet_pass(home, folder, ShiftedClock(timedelta(minutes=11)))
        control_plane_bytes = (home / "control-plane.json").stat().st_size

    steady = max(results["converged"]["seconds"], results["baking"]["seconds"])
    quiet = all(
        results[kind]["calls_per_manifest"].get("read_endpoint") == 1
        and set(results[kind]["reads_writes_per_manifest"]) == {"1 reads, 0 writes"}
        for kind in ("converged", "baking")
    )
    results["control_plane_bytes"] = control_plane_bytes
    results["checks"] = {
        "fleet_pass_seconds": below(steady, TARGET_S),
        "advancing_pass_seconds": below(results["advancing"]["seconds"], TARGET_S),
        "one_read_no_write_when_nothing_changes": {
            "value": quiet,
            "target": "1 read, 0 writes per endpoint",
            "holds": quiet,
        },
    }
    path = write_result("reconcile", {"revision": git_revision(), **results})
    for kind in ("converged", "baking", "advancing"):
        r = results[kind]
        print(
            f"{kind}: {r['manifests']} manifests in {r['seconds']:.2f} s (loading "
            f"{r['load_seconds']:.2f} s); outcomes {r['outcomes']}; per manifest "
            f"{r['calls_per_manifest']}"
        )
    for name, check in results["checks"].items():
        print(f"{name}: {check['value']} (target {check['target']}): {verdict(check['holds'])}")
    print(f"wrote {path.relative_to(ROOT)}", file=sys.stderr)
    return 0 if all(c["holds"] for c in results["checks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
