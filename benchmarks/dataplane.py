"""Data plane of the local backend: what routing and request logging add, and how much it serves.

    python -m benchmarks.dataplane [--rounds 3] [--seconds 8] [--models toy,credit-risk]

For each model (a trivial one, `toy`, and the trained credit-risk pipeline) it starts, on
127.0.0.1 only:

- the local server (`rollout serve`'s data plane) with two deployments of the model at 90/10
  (the same version twice, so that only what stands in front of `run()` differs), which
  routes, checks the key and the JSON, forwards to the deployment's worker and logs;
- a bare server: the same worker process started alone, which calls the model's `run()` directly
  with nothing in front of it.

and, round by round, alternating which goes first, measures both under the same load:

- open loop at 200 requests/s (100/s for credit-risk, about half of what one worker of it
  serves here): p50 and p99 latency; added = local - bare within a round;
- closed loop with 16 clients back to back: 2xx answers per second (sustained throughput);
- the same two on the local server with the mirror step instead (stable 100 %, 20 % mirrored
  to the candidate), reported apart: copies made, copies shed (over 32 in flight), and their
  effect on live latency and throughput.

Figures are medians over rounds; results go to benchmarks/results/performance/dataplane.json.
Every server started here is stopped before the program ends.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import loadgen
from benchmarks.common import ROOT, at_least, below, git_revision, median, verdict, write_result
from engine.live import EndpointWrite
from engine.providers.local.provider import LocalProvider
from engine.providers.local.testing import make_toy_model
from engine.providers.local.worker import SCORE_PATH, TOKEN_HEADER

RATE = 200.0  # requests/s of the latency runs; the target is set at this rate
CREDIT_RISK_RATE = 100.0  # about half of what one credit-risk worker serves on 2 cores
CLIENTS = 16
TOY_BODY = json.dumps({"data": [1, 2, 3, 4]}).encode()


class BareWorker:
    """One worker process of `model`, started as the local server starts it, but alone."""

    def __init__(self, home: Path, model_name: str, version: str, model_dir: Path):
        self.token = "bench-token"
        command = [sys.executable, "-m", "engine.providers.local.worker", "--home", str(home)]
        command += ["--model-name", model_name, "--model-version", version]
        command += ["--model-dir", str(model_dir)]
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            cwd=model_dir,
        )
        self.process.stdin.write(self.token.encode() + b"\n")
        self.process.stdin.flush()
        line = json.loads(self.process.stdout.readline() or b"{}")
        if line.get("event") != "ready":
            self.stop()
            raise RuntimeError(f"the bare worker did not start: {line}")
        self.port = int(line["port"])

    def target(self, body: bytes) -> loadgen.Target:
        return loadgen.Target(self.port, SCORE_PATH, {TOKEN_HEADER: self.token}, body)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()  # the worker exits when its stdin closes
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _local_target(provider: LocalProvider, endpoint: str, body: bytes) -> loadgen.Target:
    _host, port = provider.server_address()
    key = provider.endpoint_key(endpoint)
    return loadgen.Target(
        port, f"/endpoints/{endpoint}/score", {"Authorization": f"Bearer {key}"}, body
    )


def _set_routing(provider: LocalProvider, endpoint: str, traffic: dict, mirror: dict) -> None:
    live = provider.read_endpoint(endpoint)
    write = EndpointWrite(traffic=traffic, mirror=mirror, tags={})
    provider.update_endpoint(endpoint, write, expected_revision=live.revision)


def _prepare_models(home: Path, scratch: Path, names: list[str]) -> dict[str, dict[str, Any]]:
    """Register two versions of each model; its name, versions, folder and request body."""
    models: dict[str, dict[str, Any]] = {}
    if "toy" in names:
        first = make_toy_model(home, scratch / "models", "toy", factor=2)
        second = make_toy_model(home, scratch / "models", "toy", factor=2)
        models["toy"] = {
            "name": "toy",
            "versions": [first.version, second.version],
            "dir": first.model_dir,
            "body": TOY_BODY,
            "rate": RATE,
        }
    if "credit-risk" in names:
        from training.train import train_version

        baseline = train_version(home, variant="baseline", seed=0)
        sample = json.loads((ROOT / "models/credit-risk/sample-request.json").read_text())
        one = json.dumps({"data": sample["data"][:1]}).encode()  # one applicant per request
        models["credit-risk"] = {
            "name": "credit-risk",
            # Both deployments serve the same version, so the two setups differ only in what
            # stands between the client and run(): routing, checks and logging.
            "versions": [baseline.version, baseline.version],
            "dir": ROOT / "models/credit-risk",
            "body": one,
            "rate": CREDIT_RISK_RATE,
        }
    return models


def _deploy(provider: LocalProvider, endpoint: str, model: dict[str, Any]) -> tuple[str, str]:
    from engine.live import DeploymentRequest

    stable, candidate = f"{endpoint}-a", f"{endpoint}-b"
    requests = {
        stable: DeploymentRequest(stable, model["name"], model["versions"][0], str(model["dir"])),
        candidate: DeploymentRequest(
            candidate, model["name"], model["versions"][1], str(model["dir"])
        ),
    }
    live = provider.create_endpoint(endpoint)
    for request in requests.values():
        provider.create_deployment(endpoint, request)
    for name in requests:
        live = provider.wait_for_deployment(endpoint, name, 180)
        state = live.deployments[name].state.value
        if state != "Succeeded":
            raise RuntimeError(f"{name} did not start: {live.deployments[name].error}")
    write = EndpointWrite(traffic={stable: 90, candidate: 10}, mirror={}, tags={})
    provider.update_endpoint(endpoint, write, expected_revision=live.revision)
    return stable, candidate


def _mirror_counters(provider: LocalProvider) -> tuple[int, int]:
    state = provider.server_state()
    return state["mirror_shed"], state["log_dropped"]


def _mirrored_logged(home: Path, endpoint: str, deployment: str, start: float) -> int:
    from engine.providers.local.requestlog import read_requests

    time.sleep(0.6)  # one flush interval and more
    records = read_requests(home, endpoint, deployment, start, time.time() + 1)
    return int((records["mirrored"] == 1).sum())


def bench_model(
    provider: LocalProvider,
    home: Path,
    key: str,
    model: dict[str, Any],
    rounds: int,
    seconds: float,
) -> dict[str, Any]:
    endpoint = f"bench-{key}"[:24]
    stable, candidate = _deploy(provider, endpoint, model)
    bare = BareWorker(home, model["name"], model["versions"][0], Path(model["dir"]))
    body, rate = model["body"], model["rate"]
    routed = _local_target(provider, endpoint, body)
    direct = bare.target(body)
    rows: dict[str, list[dict[str, Any]]] = {
        "latency_bare": [],
        "latency_local": [],
        "throughput_bare": [],
        "throughput_local": [],
        "latency_mirror": [],
        "throughput_mirror": [],
    }
    mirror_made = mirror_shed = 0
    try:
        for target in (routed, direct):  # warm both paths: connections, caches, JIT-free paths
            loadgen.run(loadgen.open_loop(target, rate, 1.0))
        for index in range(rounds):
            order = [("local", routed), ("bare", direct)]
            if index % 2:
                order.reverse()
            for label, target in order:
                rows[f"latency_{label}"].append(
                    loadgen.run(loadgen.open_loop(target, rate, seconds)).summary()
                )
            for label, target in order:
                rows[f"throughput_{label}"].append(
                    loadgen.run(loadgen.closed_loop(target, CLIENTS, seconds)).summary()
                )

        # The mirror step: all live traffic on stable, 20 % copied to the candidate.
        _set_routing(provider, endpoint, {stable: 100, candidate: 0}, {candidate: 20})
        shed_before, _ = _mirror_counters(provider)
        started = time.time()
        for _ in range(rounds):
            rows["latency_mirror"].append(
                loadgen.run(loadgen.open_loop(routed, rate, seconds)).summary()
            )
            rows["throughput_mirror"].append(
                loadgen.run(loadgen.closed_loop(routed, CLIENTS, seconds)).summary()
            )
        shed_after, dropped = _mirror_counters(provider)
        mirror_shed = shed_after - shed_before
        mirror_made = _mirrored_logged(home, endpoint, candidate, started)
        _set_routing(provider, endpoint, {stable: 90, candidate: 10}, {})
    finally:
        bare.stop()

    def med(kind: str, figure: str) -> float:
        return median([r[figure] for r in rows[kind]])

    added_p50 = median(
        [
            a["p50_ms"] - b["p50_ms"]
            for a, b in zip(rows["latency_local"], rows["latency_bare"], strict=True)
        ]
    )
    added_p99 = median(
        [
            a["p99_ms"] - b["p99_ms"]
            for a, b in zip(rows["latency_local"], rows["latency_bare"], strict=True)
        ]
    )
    ratio = median(
        [
            a["ok_per_s"] / b["ok_per_s"]
            for a, b in zip(rows["throughput_local"], rows["throughput_bare"], strict=True)
            if b["ok_per_s"]
        ]
    )
    live_ok = sum(r["ok"] for r in rows["latency_mirror"] + rows["throughput_mirror"])
    return {
        "endpoint": endpoint,
        "request_bytes": len(body),
        "latency": {
            "rate_per_s": rate,
            "bare_p50_ms": med("latency_bare", "p50_ms"),
            "bare_p99_ms": med("latency_bare", "p99_ms"),
            "local_p50_ms": med("latency_local", "p50_ms"),
            "local_p99_ms": med("latency_local", "p99_ms"),
            "added_p50_ms": round(added_p50, 3),
            "added_p99_ms": round(added_p99, 3),
        },
        "throughput": {
            "bare_ok_per_s": med("throughput_bare", "ok_per_s"),
            "local_ok_per_s": med("throughput_local", "ok_per_s"),
            "local_over_bare": round(ratio, 3),
        },
        "mirror_20": {
            "p50_ms": med("latency_mirror", "p50_ms"),
            "p99_ms": med("latency_mirror", "p99_ms"),
            "ok_per_s": med("throughput_mirror", "ok_per_s"),
            "live_answers": live_ok,
            "copies_made": mirror_made,
            "copies_shed": mirror_shed,
            "log_records_dropped": dropped,
        },
        "rounds": rows,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.dataplane")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--models", default="toy,credit-risk")
    args = parser.parse_args(argv)
    names = [n for n in args.models.split(",") if n]

    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-dataplane-") as scratch:
        home = Path(scratch) / "home"
        home.mkdir()
        models = _prepare_models(home, Path(scratch), names)
        provider = LocalProvider(home)
        provider.ensure_server()
        try:
            for key, model in models.items():
                print(f"{key}: {args.rounds} rounds of {args.seconds:g} s", file=sys.stderr)
                results[key] = bench_model(provider, home, key, model, args.rounds, args.seconds)
                _print(key, results[key])
        finally:
            provider.stop_server()

    toy, credit = results.get("toy"), results.get("credit-risk")
    checks = {}
    if toy:
        checks["added_p50_ms_at_200_per_s"] = below(
            toy["latency"]["added_p50_ms"], 1.0, inclusive=True
        )
        checks["added_p99_ms_at_200_per_s"] = below(
            toy["latency"]["added_p99_ms"], 5.0, inclusive=True
        )
        checks["toy_throughput_per_s"] = at_least(toy["throughput"]["local_ok_per_s"], 1000)
    if credit:
        checks["credit_risk_throughput_local_over_bare"] = at_least(
            credit["throughput"]["local_over_bare"], 0.90
        )
    for name, check in checks.items():
        print(f"{name}: {check['value']} (target {check['target']}): {verdict(check['holds'])}")
    path = write_result(
        "dataplane",
        {
            "revision": git_revision(),
            "settings": {
                "rounds": args.rounds,
                "seconds": args.seconds,
                "rates": {"toy": RATE, "credit-risk": CREDIT_RISK_RATE},
                "clients": CLIENTS,
                "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE"),
            },
            "checks": checks,
            "models": results,
        },
    )
    print(f"wrote {path.relative_to(ROOT)}", file=sys.stderr)
    return 0 if all(c["holds"] for c in checks.values()) else 1


def _print(key: str, result: dict[str, Any]) -> None:
    lat, thr, mir = result["latency"], result["throughput"], result["mirror_20"]
    print(
        f"{key}: at {lat['rate_per_s']:g}/s bare p50 {lat['bare_p50_ms']:.2f} "
        f"p99 {lat['bare_p99_ms']:.2f} ms, "
        f"local p50 {lat['local_p50_ms']:.2f} p99 {lat['local_p99_ms']:.2f} ms "
        f"(added {lat['added_p50_ms']:+.2f} / {lat['added_p99_ms']:+.2f}); "
        f"throughput bare {thr['bare_ok_per_s']:.0f}/s local {thr['local_ok_per_s']:.0f}/s "
        f"({thr['local_over_bare']:.2f}); mirror 20 %: {mir['ok_per_s']:.0f}/s, p99 "
        f"{mir['p99_ms']:.2f} ms, copies {mir['copies_made']} made, {mir['copies_shed']} shed",
        file=sys.stderr,
    )


if __name__ == "__main__":
    sys.exit(main())
