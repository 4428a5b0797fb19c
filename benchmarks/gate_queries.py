"""Gate queries at scale: every gate of a step over a million logged requests, and the log's size.

    python -m benchmarks.gate_queries [--requests 1000000] [--repeats 15]

It writes, through the server's own `RequestLog`, `--requests` requests for the candidate and
as many for the stable deployment into one step's window (2 % server errors, log-normal
latencies), then times what a reconcile pass does to judge the step: `measure_gates`, which
queries the `local` source for the candidate and the stable deployment and evaluates the
manifest's gates (request count, error rate, p50, p90, p99 and p99 against stable). Figures
are the median and worst of `--repeats` runs after one warm-up. Counts and percentiles are
checked against a full sort of the same data; the log's bytes per million requests and its
retention bound are read off the files. Results: benchmarks/results/performance/gates.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import ROOT, git_revision, median, verdict, write_result
from benchmarks.fleet import write_fleet
from engine.live import LiveDeployment, LiveEndpoint, ProvisioningState
from engine.loader import load_manifest
from engine.providers.local.provider import LocalProvider
from engine.providers.local.requestlog import (
    DEFAULT_MAX_RECORDS,
    REQUEST_RECORD,
    RequestLog,
    request_path,
)
from engine.reconcile import desired_from, measure_gates
from engine.state import Phase, RolloutState, encode

ENDPOINT = "fleet-000"
STABLE = "credit-risk-1-bench"
TARGET_MS = 100.0
WARMUP_S = 60.0  # past the manifest's 30 s warm-up: every logged request is in the window


def _fill(
    home: Path,
    deployment: str,
    count: int,
    start: float,
    seed: int,
    *,
    mirrored: bool = False,
    endpoint: str = ENDPOINT,
) -> np.ndarray:
    """Log `count` requests of `deployment` spread over the hour after `start`, past the
    step's warm-up."""
    rng = np.random.default_rng(seed)
    times = start + np.sort(rng.uniform(WARMUP_S, 3600.0, count))
    latency = rng.lognormal(mean=3.0, sigma=0.5, size=count).astype(np.float32)
    status = np.where(rng.random(count) < 0.02, 502, 200).astype(np.uint16)
    log = RequestLog(home)
    for t, ms, code in zip(times.tolist(), latency.tolist(), status.tolist(), strict=True):
        log.record(endpoint, deployment, code, ms, mirrored=mirrored, t=t)
    log.flush()
    return latency


def _live(desired_name: str, started: datetime) -> LiveEndpoint:
    deployments = {
        name: LiveDeployment(name, "credit-risk", version, ProvisioningState.SUCCEEDED)
        for name, version in ((STABLE, "0"), (desired_name, "1"))
    }
    state = RolloutState(
        stable=STABLE,
        candidate=desired_name,
        phase=Phase.PROGRESSING,
        step=3,  # traffic 50: the candidate serves live traffic beside stable
        step_started=started,
        rollout_started=started,
        traffic={STABLE: 50, desired_name: 50},
    )
    return LiveEndpoint(
        name=ENDPOINT,
        exists=True,
        deployments=deployments,
        traffic={STABLE: 50, desired_name: 50},
        tags=encode(state),
        revision="1-bench",
    )


def _exact(latency: np.ndarray, percentile: int) -> float:
    ordered = np.sort(latency.astype(np.float64))
    rank = int(np.ceil(percentile / 100 * len(ordered)))
    return float(ordered[max(rank, 1) - 1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gate_queries")
    parser.add_argument("--requests", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench-gates-") as scratch:
        root = Path(scratch)
        folder = write_fleet(root, 1)
        loaded = load_manifest(folder / f"{ENDPOINT}.yaml")
        desired = desired_from(loaded)
        home = root / "home"
        home.mkdir()
        started = datetime(2026, 1, 1, tzinfo=UTC)
        begun = time.perf_counter()
        candidate_latency = _fill(home, desired.name, args.requests, started.timestamp(), 1)
        _fill(home, STABLE, args.requests, started.timestamp(), 2)
        fill_s = time.perf_counter() - begun

        provider = LocalProvider(home)
        live = _live(desired.name, started)
        now = started + timedelta(hours=2)
        measure_gates(desired, provider, live, now)  # warm-up: page cache, imports
        timings = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            observed = measure_gates(desired, provider, live, now)
            timings.append((time.perf_counter() - t0) * 1000.0)

        figures = observed.figures
        per_million = request_path(home, ENDPOINT, desired.name).stat().st_size
        per_million = per_million / args.requests * 1_000_000
        exact = {p: _exact(candidate_latency, p) for p in (90, 99)}
        gates = [
            {"gate": g.gate, "verdict": str(g.verdict.value), "reason": g.reason}
            for g in observed.gates
        ]
        seen = figures.requests if figures is not None else None

    count_exact = figures is not None and figures.requests == args.requests
    percentiles_exact = figures is not None and all(
        getattr(figures, f"p{p}_ms") == exact[p] for p in (90, 99)
    )
    result: dict[str, Any] = {
        "revision": git_revision(),
        "requests_per_deployment": args.requests,
        "log_fill_seconds": round(fill_s, 2),
        "measure_gates_ms": {
            "median": round(median(timings), 2),
            "max": round(max(timings), 2),
            "runs": [round(t, 2) for t in timings],
        },
        "gates": gates,
        "counts_exact": count_exact,
        "percentiles_exact": percentiles_exact,
        "candidate_requests_seen": seen,
        "log_bytes_per_million_requests": int(per_million),
        "record_bytes": REQUEST_RECORD.itemsize,
        "retention_records_per_deployment": DEFAULT_MAX_RECORDS,
        "retention_bytes_per_deployment": DEFAULT_MAX_RECORDS * REQUEST_RECORD.itemsize,
    }
    holds = median(timings) < TARGET_MS and count_exact and percentiles_exact
    result["checks"] = {
        "every_gate_of_a_step_ms": {
            "value": result["measure_gates_ms"]["median"],
            "target": f"< {TARGET_MS:g}",
            "holds": median(timings) < TARGET_MS,
        },
        "counts_and_percentiles_exact": {
            "value": count_exact and percentiles_exact,
            "target": "exact",
            "holds": count_exact and percentiles_exact,
        },
    }
    path = write_result("gates", result)
    print(
        f"every gate of a step over {args.requests:,} + {args.requests:,} requests: median "
        f"{median(timings):.1f} ms, worst {max(timings):.1f} ms (target < {TARGET_MS:g} ms): "
        f"{verdict(median(timings) < TARGET_MS)}; counts exact {count_exact}, percentiles "
        f"exact {percentiles_exact}; {per_million / 1e6:.1f} MB per million requests"
    )
    for gate in gates:
        print(f"  {gate['gate']}: {gate['verdict']}: {gate['reason']}")
    print(f"wrote {path.relative_to(ROOT)}", file=sys.stderr)
    return 0 if holds else 1


if __name__ == "__main__":
    sys.exit(main())
