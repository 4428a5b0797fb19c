"""`rollout demo`: the whole story on one machine, with real models and real requests.

Trains three versions of the credit-risk model on the German credit data (a baseline, a better
challenger, and one whose training silently dropped a loan purpose that real requests contain),
starts the local backend in a fresh state directory, drives steady traffic built from real
applicants, and rolls the versions out through the checked-in manifest: v1 becomes stable, v2
walks every step and is promoted, v3 is caught by the sequential error gate (candidate against
stable, judged at every pass) and rolled back on its own.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from engine.decide import step_label
from engine.home import HOME_ENV
from engine.plan import Outcome
from engine.reconcile import Reconciler, SystemClock, default_holder, desired_from
from engine.state import decode

MANIFEST = Path("rollouts") / "credit-risk-local.yaml"
KEEP_RUNS = 3


@dataclass(frozen=True)
class Pace:
    """How fast the story moves: real bakes for people, short ones for CI."""

    bake_s: int
    warmup_s: int
    min_requests: int
    requests_per_s: float
    pass_interval_s: float


# At 10 % of live traffic a step must collect `min_requests` within its bake after warm-up:
# 40 requests/s * 10 % * 18 s = 72 >= 50, and 60 * 10 % * 7 s = 42 >= 20.
NORMAL = Pace(bake_s=20, warmup_s=2, min_requests=50, requests_per_s=40, pass_interval_s=1.0)
FAST = Pace(bake_s=8, warmup_s=1, min_requests=20, requests_per_s=60, pass_interval_s=0.5)
DRIVER_THREADS = 4


@dataclass
class DemoReport:
    """What the demo saw, for the summary and for the end-to-end test."""

    home: Path
    rows: list[dict[str, Any]] = field(default_factory=list)
    outcomes: dict[str, str] = field(default_factory=dict)  # version -> outcome
    rollback_reason: str = ""
    rollback_gate: str = ""
    final_traffic: dict[str, int] = field(default_factory=dict)
    stable: str = ""
    requests_sent: int = 0
    client_errors: int = 0
    exit_code: int = 0


@dataclass
class TrafficDriver:
    """Posts real applicants to the endpoint at a steady rate, in a background thread."""

    host: str
    port: int
    endpoint: str
    key: str
    bodies: list[bytes]
    rate: float
    sent: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        # A few clients share the rate so one slow answer does not stall the schedule.
        for n in range(DRIVER_THREADS):
            thread = threading.Thread(target=self._run, args=(n,), name=f"demo-traffic-{n}")
            thread.daemon = True
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)

    def _run(self, offset: int) -> None:
        from engine.errors import TransientError
        from engine.providers.local.provider import post_score

        interval = DRIVER_THREADS / self.rate
        due = time.monotonic() + offset * interval / DRIVER_THREADS
        count = offset
        while not self._stop.wait(max(0.0, due - time.monotonic())):
            body = self.bodies[count % len(self.bodies)]
            count += DRIVER_THREADS
            try:
                result = post_score(self.host, self.port, self.endpoint, self.key, body, timeout=10)
                status = result.status
            except TransientError:
                status = 0  # no answer at all
            with self._lock:
                self.sent += 1
                self.statuses[status] = self.statuses.get(status, 0) + 1
            due += interval


def _repository_root() -> Path:
    for candidate in (Path.cwd(), Path(__file__).resolve().parents[1]):
        if (candidate / MANIFEST).is_file():
            return candidate
    raise FileNotFoundError(
        f"{MANIFEST} was not found here or beside the engine package; run the demo from the "
        "saferollout repository"
    )


def _fresh_home(root: Path) -> Path:
    runs = root / ".saferollout-demo"
    runs.mkdir(exist_ok=True)
    for old in sorted(runs.iterdir())[:-KEEP_RUNS]:
        shutil.rmtree(old, ignore_errors=True)
    home = runs / datetime.now(UTC).strftime("run-%Y%m%dT%H%M%S-%f")
    home.mkdir()
    return home


def _manifest_for(loaded, version: str, pace: Pace):
    """The checked-in manifest with `model.version` bumped, as a pull request would."""
    from engine.spec import MirrorStep, TrafficStep

    spec = loaded.rollout.spec
    steps = [
        s.model_copy(update={"bake": _seconds(pace.bake_s)})
        if isinstance(s, (MirrorStep, TrafficStep))
        else s
        for s in spec.steps
    ]
    gates = [g.model_copy(update={"min_requests": pace.min_requests}) for g in spec.gates]
    analysis = spec.analysis.model_copy(update={"warmup": _seconds(pace.warmup_s)})
    cleanup = spec.cleanup.model_copy(update={"delete_previous_after": _seconds(pace.bake_s)})
    new_spec = spec.model_copy(
        update={
            "model": spec.model.model_copy(update={"version": version}),
            "steps": steps,
            "gates": gates,
            "analysis": analysis,
            "cleanup": cleanup,
        }
    )
    return replace(loaded, rollout=loaded.rollout.model_copy(update={"spec": new_spec}))


def _seconds(value: int):
    from datetime import timedelta

    return timedelta(seconds=value)


def _step_rows(version: str, live, spec, outcome: str) -> list[dict[str, Any]]:
    state = decode(live.tags)
    rows = []
    for record in state.steps:
        step = spec.steps[record.index]
        rows.append(
            {
                "version": version,
                "step": step_label(step),
                "requests": record.requests,
                "error_rate": record.error_rate,
                "p90_ms": record.p90_ms,
                "p99_ms": record.p99_ms,
                "verdict": record.verdict,
            }
        )
    if not rows:
        rows.append({"version": version, "step": "first deployment", "verdict": outcome})
    return rows


def render_summary(rows: list[dict[str, Any]]) -> str:
    header = ("version", "step", "requests", "error rate", "p90 ms", "p99 ms", "verdict")
    table = [header]
    for row in rows:
        table.append(
            (
                row["version"],
                row["step"],
                "-" if row.get("requests") is None else f"{row['requests']:,}",
                "-" if row.get("error_rate") is None else f"{row['error_rate']:.4f}",
                "-" if row.get("p90_ms") is None else f"{row['p90_ms']:.1f}",
                "-" if row.get("p99_ms") is None else f"{row['p99_ms']:.1f}",
                row["verdict"],
            )
        )
    widths = [max(len(str(r[i])) for r in table) for i in range(len(header))]
    lines = [
        "  ".join(str(cell).ljust(w) for cell, w in zip(r, widths, strict=True)) for r in table
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


def _figure(result) -> str:
    """A gate's value as people read it: `ratio 1.2 to stable` or `p99 48.8`."""
    kind = result.bound[0] if result.bound else ""
    if kind == "max_ratio_to_stable":
        return f"{result.value:.3g}x stable"
    return f"{result.value:.4g}"


def _roll_out(
    reconciler: Reconciler,
    pace: Pace,
    say: Callable[[str], None],
    until: set[Outcome],
    timeout_s: float,
):
    """Reconcile passes, as the scheduled job would run them, until the rollout settles."""
    deadline = time.monotonic() + timeout_s
    last_status = 0.0
    while True:
        result = reconciler.apply()
        final = result.final
        if result.rolled_back:
            rollback = next(p for p in result.plans if p.outcome is Outcome.ROLLED_BACK)
            return Outcome.ROLLED_BACK, rollback
        if final and final.outcome in until:
            return final.outcome, final
        if time.monotonic() > deadline:
            raise TimeoutError(f"the rollout did not settle in {timeout_s:.0f} s")
        if final and time.monotonic() - last_status > 5:
            last_status = time.monotonic()
            figures = "; ".join(
                f"{g.gate} {g.verdict.value}"
                + (f" ({_figure(g)} over {g.requests} requests)" if g.value is not None else "")
                for g in final.gates
            )
            say(f"    … {final.summary}" + (f" | {figures}" if figures else ""))
        time.sleep(pace.pass_interval_s)


def run_demo(
    *, fast: bool = False, keep: bool = False, say: Callable[[str], None] = print
) -> DemoReport:
    from engine.loader import load_manifest
    from engine.providers.local.provider import LocalProvider
    from training.data import load_german_credit, request_records
    from training.train import train_version

    pace = FAST if fast else NORMAL
    started = time.monotonic()
    root = _repository_root()
    home = _fresh_home(root)
    os.environ[HOME_ENV] = str(home)
    say(f"saferollout demo — state in {home}")

    say("\n1. Training three versions of credit-risk on the German credit data")
    for variant in ("baseline", "challenger", "defect"):
        trained = train_version(home, variant=variant, seed=0)
        metrics = trained.metrics
        say(
            f"   v{trained.version} {variant:<10} holdout accuracy {metrics['accuracy']:.3f}, "
            f"ROC AUC {metrics['roc_auc']:.3f}, sha256 {trained.sha256[:12]}…"
        )

    base = load_manifest(root / MANIFEST)
    endpoint = base.rollout.spec.target.endpoint
    provider = LocalProvider(home)
    driver: TrafficDriver | None = None
    report = DemoReport(home=home)
    rows = report.rows
    try:
        say("\n2. Starting the local backend on 127.0.0.1")
        provider.ensure_server()

        def reconciler_for(version: str) -> Reconciler:
            loaded = _manifest_for(base, version, pace)
            rec = Reconciler(desired_from(loaded), provider, SystemClock(), default_holder())
            rec.on_event = lambda message: say(f"   - {message}")
            return rec

        say("\n3. v1 becomes stable (the endpoint is empty)")
        rec = reconciler_for("1")
        outcome, _ = _roll_out(rec, pace, say, {Outcome.CONVERGED}, 120)
        report.outcomes["v1"] = outcome.value
        rows += _step_rows(
            "v1", provider.read_endpoint(endpoint), rec.desired.rollout.spec, "stable"
        )

        url = urlsplit(provider.scoring_url(endpoint))
        host, port = url.hostname or "127.0.0.1", url.port or 80
        frame = load_german_credit()
        records = request_records(frame, 400, seed=7)
        bodies = [json.dumps({"data": [r]}).encode() for r in records]
        random.Random(7).shuffle(bodies)
        driver = TrafficDriver(
            host, port, endpoint, provider.endpoint_key(endpoint), bodies, pace.requests_per_s
        )
        driver.start()
        say(f"   driving {pace.requests_per_s:.0f} requests/s of real applicants at {endpoint}")

        say("\n4. v2 (a better model) rolls out through every step")
        rec = reconciler_for("2")
        outcome, final = _roll_out(rec, pace, say, {Outcome.CONVERGED, Outcome.PAUSED}, 240)
        rows += _step_rows("v2", provider.read_endpoint(endpoint), rec.desired.rollout.spec, "")
        report.outcomes["v2"] = outcome.value
        if outcome is not Outcome.CONVERGED:
            say(f"   v2 did not complete: {final.summary if final else outcome}")
            report.exit_code = 1

        say("\n5. v3 (trained on data that lost every business loan) rolls out")
        rec = reconciler_for("3")
        outcome, final = _roll_out(
            rec, pace, say, {Outcome.CONVERGED, Outcome.PAUSED, Outcome.FOUND_ROLLED_BACK}, 240
        )
        live = provider.read_endpoint(endpoint)
        rows += _step_rows("v3", live, rec.desired.rollout.spec, "")
        state = decode(live.tags)
        report.outcomes["v3"] = outcome.value
        report.final_traffic = live.live_traffic()
        report.stable = state.stable or ""
        failed_gate = next(
            (g for g in (final.gates if final else ()) if g.verdict.is_failure), None
        )
        # The plan's own reason: the tag copy is cut at Azure's 256 characters.
        report.rollback_reason = final.summary if final else state.decision.partition(": ")[2]
        report.rollback_gate = failed_gate.gate if failed_gate else ""
        if outcome is Outcome.ROLLED_BACK:
            say(f"   v3 was rolled back automatically: {report.rollback_reason}")
            say(f"   live traffic now: {live.live_traffic()}")
        else:
            say(f"   v3 was not rolled back: {final.summary if final else outcome}")
            report.exit_code = 1
    finally:
        if driver:
            driver.stop()
        if not keep:
            provider.stop_server()

    say("\n6. Summary")
    say(render_summary(rows))
    if driver:
        total = sum(driver.statuses.values())
        failures = sum(n for status, n in driver.statuses.items() if status >= 500 or status == 0)
        report.requests_sent, report.client_errors = total, failures
        say(
            f"\n{total:,} live requests sent by clients; {failures:,} answered with an error "
            f"({failures / max(total, 1):.2%}); errors of mirrored copies never reach clients."
        )
    say(f"demo finished in {time.monotonic() - started:.0f} s (state kept in {home})")
    return report
