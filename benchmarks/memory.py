"""Peak memory of `rollout serve` with three credit-risk deployments, and of a reconcile pass.

    python -m benchmarks.memory [--requests 3000] [--log-requests 1000000]

Serve: three credit-risk versions are trained and registered, `rollout serve` runs in the
foreground on 127.0.0.1 with one endpoint holding three deployments (80/10/10: stable,
candidate and a previous one still warm, as during a rollout), and requests are scored through
all three. Every process of the server is sampled every 50 ms. Figures: the peak of the sum of
their resident sets (RSS, sampled), the sum of each process's own peak (VmHWM, which bounds
the total from above), and the proportional set size at the end (PSS: shared library pages
split between the processes that share them, the closest figure to what they cost together).

Reconcile pass: `rollout apply` of a manifest whose endpoint is in its mirror step with the
bake over, while the request log holds `--log-requests` requests for the candidate and as many
for stable in the step's window, so the pass measures every gate over them and then acts. Its
figure is the process's own peak RSS (VmHWM at exit).
Results: benchmarks/results/performance/memory.json. Every process started here is stopped.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from benchmarks import loadgen
from benchmarks.common import ROOT, VENV_BIN, below, bench_env, git_revision, verdict, write_result
from benchmarks.fleet import seed_fleet, write_fleet
from benchmarks.reconcile_fleet import ShiftedClock
from engine.live import DeploymentRequest, EndpointWrite
from engine.providers.local.provider import LocalProvider

SERVE_TARGET_MB = 600
PASS_TARGET_MB = 150
# The process's own peak from /proc (VmHWM): getrusage's ru_maxrss survives exec on Linux, so
# a child of a large parent would report the parent's size.
MAXRSS_PROBE = """\
import atexit, sys
def peak():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            print("MAXRSS_KB", line.split()[1], file=sys.stderr)
atexit.register(peak)
from engine.cli import main
sys.argv = ["rollout", *sys.argv[1:]]
main()
"""


def _status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _pss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return 0


def _tree(provider: LocalProvider, server_pid: int) -> list[int]:
    workers = provider.server_state()["workers"].values()
    return [server_pid, *(w["pid"] for w in workers if w["pid"])]


def measure_serve(scratch: Path, requests: int) -> dict[str, Any]:
    from training.train import train_version

    home = scratch / "serve-home"
    home.mkdir()
    versions = [
        train_version(home, variant=variant, seed=0).version
        for variant in ("baseline", "challenger", "baseline")
    ]
    log = (scratch / "serve.log").open("wb")
    server = subprocess.Popen(
        [str(VENV_BIN / "rollout"), "serve", "--port", "0"],
        env=bench_env(SAFEROLLOUT_HOME=str(home)),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    provider = LocalProvider(home)
    peak_sum_rss = 0
    try:
        deadline = time.monotonic() + 30
        while provider._healthy_server() is None:
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError("rollout serve did not start; see serve.log")
            time.sleep(0.1)
        endpoint = "memory"
        names = [f"memory-{i}" for i in range(3)]
        live = provider.create_endpoint(endpoint)
        model_dir = str(ROOT / "models" / "credit-risk")
        for name, version in zip(names, versions, strict=True):
            provider.create_deployment(
                endpoint, DeploymentRequest(name, "credit-risk", version, model_dir)
            )
        samples = []

        def sample() -> None:
            nonlocal peak_sum_rss
            total = 0
            for pid in _tree(provider, server.pid):
                with contextlib.suppress(OSError):  # a worker restarting
                    total += _status_kb(pid, "VmRSS")
            peak_sum_rss = max(peak_sum_rss, total)
            samples.append(total)

        for name in names:
            while provider.read_endpoint(endpoint).deployments[name].state.value != "Succeeded":
                sample()
                time.sleep(0.05)
        live = provider.read_endpoint(endpoint)
        write = EndpointWrite({names[0]: 80, names[1]: 10, names[2]: 10}, {}, {})
        provider.update_endpoint(endpoint, write, expected_revision=live.revision)
        host, port = provider.server_address()
        body = json.dumps(
            json.loads((ROOT / "models/credit-risk/sample-request.json").read_text())
        ).encode()
        target = loadgen.Target(
            port,
            f"/endpoints/{endpoint}/score",
            {"Authorization": f"Bearer {provider.endpoint_key(endpoint)}"},
            body,
        )
        rate = 50.0
        for _ in range(max(1, int(requests / rate / 2))):  # 2-second bursts, sampled between
            outcome = loadgen.run(loadgen.open_loop(target, rate, 2.0))
            sample()
        sample()
        pids = _tree(provider, server.pid)
        hwm = {pid: _status_kb(pid, "VmHWM") for pid in pids}
        pss = {pid: _pss_kb(pid) for pid in pids}
        per_process = [
            {
                "role": "router" if pid == server.pid else "worker",
                "peak_rss_mb": round(hwm[pid] / 1024, 1),
                "pss_mb": round(pss[pid] / 1024, 1),
            }
            for pid in pids
        ]
        return {
            "deployments": 3,
            "last_burst": outcome.summary(),
            "peak_sum_rss_mb": round(peak_sum_rss / 1024, 1),
            "sum_of_process_peaks_mb": round(sum(hwm.values()) / 1024, 1),
            "pss_total_mb": round(sum(pss.values()) / 1024, 1),
            "processes": per_process,
        }
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


def measure_pass(scratch: Path, log_requests: int) -> dict[str, Any]:
    from benchmarks.gate_queries import _fill
    from engine.loader import load_manifest
    from engine.reconcile import desired_from
    from engine.state import decode
    from training.train import train_version

    root = scratch / "pass"
    home = root / "home"
    home.mkdir(parents=True)
    train_version(home, variant="baseline", seed=0)
    train_version(home, variant="challenger", seed=0)
    # The rollout began an hour ago, so the mirror step's bake is over now.
    earlier = ShiftedClock(timedelta(hours=-1))
    seed_fleet(home, write_fleet(root, 1, version="1"), clock=earlier)
    folder = write_fleet(root, 1, version="2")
    seed_fleet(home, folder, clock=earlier)
    manifest = folder / "fleet-000.yaml"
    desired = desired_from(load_manifest(manifest))
    state = decode(LocalProvider(home).read_endpoint(desired.endpoint).tags)
    start = state.step_started.timestamp()
    _fill(home, state.candidate, log_requests, start, 1, mirrored=True, endpoint=desired.endpoint)
    _fill(home, state.stable, log_requests, start, 2, endpoint=desired.endpoint)

    try:
        done = subprocess.run(
            [sys.executable, "-c", MAXRSS_PROBE, "apply", str(manifest)],
            cwd=root,
            env=bench_env(SAFEROLLOUT_HOME=str(home)),
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        LocalProvider(home).stop_server()
    line = next((x for x in done.stderr.splitlines() if x.startswith("MAXRSS_KB")), None)
    if line is None:
        raise RuntimeError(f"rollout apply failed: {done.stderr[-800:]}")
    return {
        "log_requests_per_deployment": log_requests,
        "exit_code": done.returncode,
        "said": [x for x in done.stderr.splitlines() if not x.startswith("MAXRSS_KB")][-6:],
        "peak_rss_mb": round(int(line.split()[1]) / 1024, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.memory")
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--log-requests", type=int, default=1_000_000)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as scratch:
        serve = measure_serve(Path(scratch), args.requests)
        reconcile = measure_pass(Path(scratch), args.log_requests)
    checks = {
        "serve_three_credit_risk_mb": below(serve["peak_sum_rss_mb"], SERVE_TARGET_MB),
        "reconcile_pass_mb": below(reconcile["peak_rss_mb"], PASS_TARGET_MB),
    }
    path = write_result(
        "memory",
        {
            "revision": git_revision(),
            "serve": serve,
            "reconcile_pass": reconcile,
            "checks": checks,
            "malloc_arena_max": os.environ.get("MALLOC_ARENA_MAX"),
        },
    )
    print(
        f"serve, three credit-risk deployments: peak sum of RSS {serve['peak_sum_rss_mb']} MB, "
        f"sum of per-process peaks {serve['sum_of_process_peaks_mb']} MB, PSS "
        f"{serve['pss_total_mb']} MB"
    )
    for process in serve["processes"]:
        print(f"  {process['role']}: peak {process['peak_rss_mb']} MB, PSS {process['pss_mb']} MB")
    print(f"reconcile pass over 2 x {args.log_requests:,} logged requests: {reconcile}")
    for name, check in checks.items():
        print(f"{name}: {check['value']} (target {check['target']}): {verdict(check['holds'])}")
    print(f"wrote {path.relative_to(ROOT)}", file=sys.stderr)
    return 0 if all(c["holds"] for c in checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
