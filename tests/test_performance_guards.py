"""Cheap checks that keep the measured performance (benchmarks/README.md) from regressing.

They assert what makes the figures, never a time: which packages a command loads, how many
provider calls a pass makes, that answering a request never waits for the disk, that the
request log stays bounded, and that the fast percentile path picks the same values as numpy's
nearest-rank percentile.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from benchmarks.fleet import seed_fleet, write_fleet
from engine.loader import load_paths
from engine.providers.local.provider import LocalProvider
from engine.providers.local.requestlog import UNROUTED, RequestLog, read_requests, request_path
from engine.providers.local.source import PERCENTILES, nearest_rank
from engine.providers.local.testing import CountingProvider, deploy, wait_until
from engine.reconcile import Reconciler, SystemClock, desired_from

ROOT = Path(__file__).resolve().parents[1]
LOCAL = "rollouts/credit-risk-local.yaml"

# Third-party packages that `rollout plan` and `rollout validate` of local manifests may load.
# Anything else (azure, sklearn, pandas, numpy, aiohttp, matplotlib, jsonschema...) costs a plan
# hundreds of milliseconds: load it inside the command or function that needs it.
ALLOWED = {
    "annotated_doc",
    "annotated_types",
    "filelock",
    "pydantic",
    "pydantic_core",
    "ruamel",
    "shellingham",
    "typer",
    "typing_extensions",
    "typing_inspection",
}
PROBE = """\
import sys
from engine.cli import app
sys.argv = ["rollout", *sys.argv[1:]]
try:
    app()
except SystemExit:
    pass
loaded = {m.split(".")[0] for m in sys.modules if not m.startswith("_")}
print("LOADED", sorted(loaded - set(sys.stdlib_module_names) - {"engine"}), file=sys.stderr)
"""


def _loaded_packages(args: list[str], cwd: Path, home: Path) -> list[str]:
    env = {**os.environ, "SAFEROLLOUT_HOME": str(home)}
    result = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    line = next((x for x in result.stderr.splitlines() if x.startswith("LOADED ")), None)
    assert line is not None, result.stderr
    return json.loads(line.removeprefix("LOADED ").replace("'", '"'))


@pytest.fixture(scope="module")
def fleet(tmp_path_factory) -> Path:
    """Three local manifests in `rollouts/` beside a `models/` folder."""
    root = tmp_path_factory.mktemp("fleet")
    write_fleet(root, 3)
    return root


@pytest.mark.parametrize(
    "args",
    [["plan", LOCAL], ["validate", "rollouts/"]],
    ids=["plan-one-local-manifest", "validate-rollouts"],
)
def test_plan_and_validate_load_no_azure_sklearn_pandas_or_aiohttp(args, tmp_path):
    loaded = _loaded_packages(args, ROOT, tmp_path)
    assert set(loaded) <= ALLOWED, f"unexpected packages: {sorted(set(loaded) - ALLOWED)}"


def test_a_folder_plan_of_local_manifests_loads_no_azure_sklearn_pandas_or_aiohttp(fleet, tmp_path):
    loaded = _loaded_packages(["plan", "rollouts"], fleet, tmp_path)
    assert set(loaded) <= ALLOWED, f"unexpected packages: {sorted(set(loaded) - ALLOWED)}"


# ---- provider calls per pass -----------------------------------------------------------------


def _pass(home: Path, folder: Path, clock=None) -> list[CountingProvider]:
    counted = []
    for loaded in load_paths([folder]):
        provider = CountingProvider(LocalProvider(home))
        Reconciler(desired_from(loaded), provider, clock or SystemClock(), "guard").apply()
        counted.append(provider)
    return counted


def test_a_pass_over_converged_endpoints_reads_each_once_and_writes_nothing(tmp_path):
    folder = write_fleet(tmp_path, 3, version="1")
    assert seed_fleet(tmp_path / "home", folder) == ["converged"] * 3
    for provider in _pass(tmp_path / "home", folder):
        assert dict(provider.calls) == {"read_endpoint": 1}


def test_a_pass_while_a_step_bakes_reads_once_and_writes_nothing(tmp_path):
    folder = write_fleet(tmp_path, 2, version="1")
    seed_fleet(tmp_path / "home", folder)
    folder = write_fleet(tmp_path, 2, version="2")
    assert seed_fleet(tmp_path / "home", folder) == ["waiting"] * 2
    for provider in _pass(tmp_path / "home", folder):
        assert provider.reads == 1 and provider.writes == 0, provider.calls


# ---- request logging -------------------------------------------------------------------------


def test_recording_a_request_touches_no_file(tmp_path):
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the log folder would be: any write below it fails")
    log = RequestLog(blocked)
    for i in range(1000):
        log.record("ep", "ep-a", 200, 1.5, t=float(i))
    assert log.dropped == 0
    with pytest.raises(OSError):
        log.flush()  # only the background flush goes to disk


def test_a_slow_disk_never_holds_a_request_up(tmp_path, monkeypatch):
    """With every log write taking a second, requests are still answered at once."""
    from aiohttp import web

    from engine.providers.local.server import LocalServer, ServerSettings
    from engine.providers.local.store import DeploymentRecord, new_uid
    from engine.providers.local.testing import make_toy_model

    write = RequestLog._write

    def slow_write(self, file, rows):
        time.sleep(1.0)
        write(self, file, rows)

    monkeypatch.setattr(RequestLog, "_write", slow_write)
    model = make_toy_model(tmp_path, tmp_path / "models", "slow")
    provider = LocalProvider(tmp_path)  # control plane only: the server runs in-process
    provider.create_endpoint("slow")
    provider.control.add_deployment(
        "slow", DeploymentRecord("slow-a", "slow", model.version, str(model.model_dir), new_uid())
    )
    provider.control.update_endpoint(
        "slow",
        traffic={"slow-a": 100},
        mirror={},
        tags={},
        tag_prefix="saferollout.",
        expected_revision=provider.read_endpoint("slow").revision,
    )
    key = provider.endpoint_key("slow")
    request = (
        "POST /endpoints/slow/score HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {key}\r\nContent-Length: 13\r\n\r\n"
        '{"data": [1]}'
    ).encode()

    async def scenario() -> list[float]:
        runner = web.AppRunner(LocalServer(tmp_path, ServerSettings(flush_interval_s=0.05)).app())
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        try:
            while provider.read_endpoint("slow").deployments["slow-a"].state != "Succeeded":
                await asyncio.sleep(0.05)
            reader, writer = await asyncio.open_connection("127.0.0.1", runner.addresses[0][1])
            took = []
            for _ in range(20):
                started = time.perf_counter()
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 200"), head
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                )
                await reader.readexactly(length)
                took.append(time.perf_counter() - started)
                await asyncio.sleep(0.02)  # the flush loop runs between requests
            writer.close()
            await writer.wait_closed()
            return took
        finally:
            await runner.cleanup()

    took = asyncio.run(scenario())
    assert max(took) < 0.5, took  # a request that waited for a write would take a second


# ---- percentiles -----------------------------------------------------------------------------


@pytest.mark.parametrize("size", [1, 2, 3, 7, 99, 100, 101, 1000, 12_345])
def test_fast_percentiles_are_numpys_nearest_rank_values(size):
    rng = np.random.default_rng(size)
    values = rng.lognormal(3.0, 0.7, size).astype(np.float32)
    values[: size // 3] = np.round(values[: size // 3])  # ties
    expected = np.percentile(values.astype(np.float64), PERCENTILES, method="inverted_cdf")
    assert nearest_rank(values, PERCENTILES) == dict(zip(PERCENTILES, expected, strict=True))


# ---- retention -------------------------------------------------------------------------------


def test_logs_of_deployments_that_no_longer_exist_are_deleted(tmp_path):
    log = RequestLog(tmp_path)
    for endpoint, deployment in [("ep", "ep-a"), ("ep", "ep-b"), ("ep", None), ("gone", "gone-a")]:
        log.record(endpoint, deployment, 200, 1.0, t=1.0)
    log.record_usage("ep", "ep-b", 10.0, 1.0, t=1.0)
    log.flush()
    assert log.remove_logs_except({("ep", "ep-a"), ("ep", UNROUTED)}) == 3
    left = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.*"))
    assert left == ["requests/ep/_unrouted.req", "requests/ep/ep-a.req"]


def test_a_log_deleted_while_in_use_starts_again_with_its_header(tmp_path):
    log = RequestLog(tmp_path)
    log.record("ep", "ep-a", 200, 1.0, t=1.0)
    log.flush()
    log.remove_logs_except(set())
    log.record("ep", "ep-a", 502, 2.0, t=2.0)
    log.flush()
    records = read_requests(tmp_path, "ep", "ep-a", 0.0, 10.0)
    assert records["status"].tolist() == [502]


@pytest.mark.slow
def test_the_server_deletes_the_log_of_a_deleted_deployment(local_server, toy_model):
    model = toy_model()
    deploy(local_server, "keep", {"keep-a": model, "keep-b": model}, {"keep-a": 100})
    for name in ("keep-a", "keep-b"):
        assert local_server.score("keep", b'{"data": [1]}', deployment=name).status == 200
    home = local_server.home
    wait_until(lambda: request_path(home, "keep", "keep-b").exists(), what="keep-b's log")
    local_server.delete_deployment("keep", "keep-b")
    wait_until(lambda: not request_path(home, "keep", "keep-b").exists(), what="its deletion")
    assert request_path(home, "keep", "keep-a").exists()
