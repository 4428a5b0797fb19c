"""The local data plane against a real server on 127.0.0.1: routing, mirroring, refusals,
failing models and the request log, as a client and the gates see them."""

from __future__ import annotations

import asyncio
import http.client
import json
import math
import os
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from engine.live import EndpointWrite, ProvisioningState
from engine.providers.base import Window
from engine.providers.local.provider import LocalProvider
from engine.providers.local.server import (
    LocalServer,
    ServerSettings,
    cpu_percent,
    pick_deployment,
)
from engine.providers.local.source import LocalSource
from engine.providers.local.store import ControlPlane, DeploymentRecord, new_uid
from engine.providers.local.testing import (
    deploy,
    make_toy_model,
    process_running,
    wait_until,
)

BODY = b'{"data": [1, 2, 3]}'


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> LocalProvider:
    home = tmp_path_factory.mktemp("server-home")
    provider = LocalProvider(home, request_timeout_s=1.0)
    assert provider.ensure_server() is True
    try:
        yield provider
    finally:
        provider.stop_server()


@pytest.fixture(scope="module")
def models(server, tmp_path_factory):
    root = tmp_path_factory.mktemp("models")

    def make(name: str, **behaviour):
        return make_toy_model(server.home, root, name, **behaviour)

    return make


def burst(provider, endpoint, count, *, deployment=None, body=BODY, threads=8):
    with ThreadPoolExecutor(threads) as pool:
        return list(
            pool.map(lambda _: provider.score(endpoint, body, deployment=deployment), range(count))
        )


def versions_of(results) -> Counter:
    return Counter(json.loads(r.body)["version"] for r in results if r.status == 200)


def measure(provider, endpoint, deployment, *, mirrored=False):
    now = datetime.now(UTC)
    window = Window(now - timedelta(minutes=10), now + timedelta(seconds=1))
    return provider.gate_source("local", None).measure(
        endpoint, deployment, window, mirrored=mirrored
    )


def logged(provider, endpoint, deployment, expected, *, mirrored=False):
    """Wait for the background flush until `expected` requests are in the log."""
    return wait_until(
        lambda: measure(provider, endpoint, deployment, mirrored=mirrored).requests >= expected,
        5,
        f"{expected} logged requests of {deployment}",
    ) and measure(provider, endpoint, deployment, mirrored=mirrored)


def raw_post(provider, endpoint, body, headers):
    host, port = provider.server_address()
    connection = http.client.HTTPConnection(host, port, timeout=10)
    try:
        connection.request("POST", f"/endpoints/{endpoint}/score", body=body, headers=headers)
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        connection.close()


def _within_4_sigma(observed: int, n: int, p: float) -> bool:
    return abs(observed - n * p) <= 4 * math.sqrt(n * p * (1 - p))


# ---- routing ---------------------------------------------------------------------------------


def test_each_percent_of_the_roll_goes_to_exactly_one_deployment_by_its_share():
    route_traffic = (("churn-7", 67), ("churn-8", 100))
    picks = Counter(pick_deployment(route_traffic, roll) for roll in range(100))
    assert picks == {"churn-7": 67, "churn-8": 33}
    assert pick_deployment((), 0) is None


def test_cpu_percent_is_a_share_of_the_whole_machine():
    # 50 ticks of 100 Hz over one second on two cores: half a core, a quarter of the machine.
    assert cpu_percent(50, 1.0, cpus=2, hz=100) == pytest.approx(25.0)
    assert cpu_percent(10, 0.0, cpus=2, hz=100) == 0.0


def test_live_traffic_is_split_by_weight_and_logged_exactly(server, models):
    stable, candidate = models("split"), models("split")
    deploy(
        server, "split", {"split-a": stable, "split-b": candidate}, {"split-a": 90, "split-b": 10}
    )

    results = burst(server, "split", 800)

    assert all(r.status == 200 for r in results)
    served = versions_of(results)
    assert _within_4_sigma(served[candidate.version], 800, 0.10), served
    # The gates see exactly what the clients saw.
    assert (
        logged(server, "split", "split-b", served[candidate.version]).requests
        == served[candidate.version]
    )
    assert (
        logged(server, "split", "split-a", served[stable.version]).requests
        == served[stable.version]
    )


def test_a_traffic_change_serves_from_the_next_request_on(server, models):
    old, new = models("switch"), models("switch")
    live = deploy(server, "switch", {"switch-a": old, "switch-b": new}, {"switch-a": 100})
    assert versions_of(burst(server, "switch", 10)) == {old.version: 10}

    write = EndpointWrite(traffic={"switch-b": 100}, mirror={}, tags={})
    server.update_endpoint("switch", write, expected_revision=live.revision)

    assert versions_of(burst(server, "switch", 30)) == {new.version: 30}


def test_mirrored_copies_reach_the_mirror_while_clients_get_the_live_answer(server, models):
    stable, candidate = models("shadow"), models("shadow", factor=3)
    deploy(
        server,
        "shadow",
        {"shadow-a": stable, "shadow-b": candidate},
        {"shadow-a": 100},
        mirror={"shadow-b": 50},
    )

    results = burst(server, "shadow", 300)

    assert versions_of(results) == {stable.version: 300}
    assert all(json.loads(r.body)["result"] == [2, 4, 6] for r in results)
    wait_until(lambda: server.server_state()["mirror_in_flight"] == 0, 10, "mirror copies")
    time.sleep(LocalSource.ingestion_delay_s)  # what the source promises is then complete
    copies = measure(server, "shadow", "shadow-b", mirrored=True).requests
    assert server.server_state()["mirror_shed"] == 0
    assert _within_4_sigma(copies, 300, 0.5), copies
    assert measure(server, "shadow", "shadow-b", mirrored=True).server_errors == 0
    assert measure(server, "shadow", "shadow-b", mirrored=False).requests == 0
    assert measure(server, "shadow", "shadow-a", mirrored=False).requests == 300


def test_requests_naming_a_deployment_go_there_and_are_never_mirrored(server, models):
    stable, candidate = models("direct"), models("direct")
    deploy(
        server,
        "direct",
        {"direct-a": stable, "direct-b": candidate},
        {"direct-a": 100},
        mirror={"direct-b": 50},
    )

    to_stable = burst(server, "direct", 60, deployment="direct-a")
    to_candidate = burst(server, "direct", 20, deployment="direct-b")

    assert versions_of(to_stable) == {stable.version: 60}
    assert versions_of(to_candidate) == {candidate.version: 20}
    assert logged(server, "direct", "direct-b", 20).requests == 20
    assert server.server_state()["mirror_in_flight"] == 0
    assert measure(server, "direct", "direct-b", mirrored=True).requests == 0


def test_mirror_copies_are_shed_and_counted_when_the_mirror_falls_behind(server, models):
    stable, slow = models("shed"), models("shed", sleep_s=0.3)
    deploy(
        server, "shed", {"shed-a": stable, "shed-b": slow}, {"shed-a": 100}, mirror={"shed-b": 50}
    )
    shed_before = server.server_state()["mirror_shed"]

    results = burst(server, "shed", 200, threads=16)

    assert all(r.status == 200 for r in results), "shedding copies never fails a live request"
    assert server.server_state()["mirror_shed"] > shed_before


def test_one_request_at_a_time_per_deployment_and_the_rest_queue(server, models):
    model = models("queue", sleep_s=0.05)
    deploy(server, "queue", {"queue-a": model}, {"queue-a": 100})

    started = time.monotonic()
    results = burst(server, "queue", 10, threads=10)
    elapsed = time.monotonic() - started

    assert [r.status for r in results] == [200] * 10
    assert elapsed >= 10 * 0.05 * 0.95, "ten 50 ms requests cannot finish sooner one at a time"


def test_a_deployment_with_a_long_queue_does_not_hold_up_the_others(server, models):
    deploy(
        server,
        "crowd",
        {"crowd-slow": models("crowd", sleep_s=0.3), "crowd-fast": models("crowd")},
        {"crowd-fast": 100},
    )
    host, port = server.server_address()
    url = f"http://{host}:{port}/endpoints/crowd/score"
    key = server.endpoint_key("crowd")

    async def scenario() -> list[tuple[int, float]]:
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def call(deployment: str | None, delay: float) -> tuple[int, float]:
                await asyncio.sleep(delay)
                headers = {"Authorization": f"Bearer {key}"}
                if deployment:
                    headers["azureml-model-deployment"] = deployment
                started = time.monotonic()
                async with session.post(url, data=BODY, headers=headers) as response:
                    await response.read()
                    return response.status, time.monotonic() - started

            crowd = [call("crowd-slow", 0) for _ in range(120)]
            fast = [call(None, 0.05) for _ in range(5)]
            return (await asyncio.gather(*crowd, *fast))[-5:]

    fast = asyncio.run(scenario())

    assert [status for status, _ in fast] == [200] * 5
    # Queued behind the crowd they would wait until its 1 s timeout, 0.95 s from being sent.
    assert max(seconds for _, seconds in fast) < 0.75, fast


# ---- what the server refuses -----------------------------------------------------------------


@pytest.fixture(scope="module")
def guarded(server, models) -> str:
    deploy(server, "guarded", {"guarded-a": models("guarded")}, {"guarded-a": 100})
    return "guarded"


def test_a_missing_or_wrong_key_is_unauthorised(server, guarded):
    key = server.endpoint_key(guarded)
    assert raw_post(server, guarded, BODY, {})[0] == 401
    assert raw_post(server, guarded, BODY, {"Authorization": "Bearer nope"})[0] == 401
    assert raw_post(server, guarded, BODY, {"Authorization": key})[0] == 401
    assert raw_post(server, guarded, BODY, {"Authorization": f"Bearer {key}"})[0] == 200


def test_malformed_json_is_a_bad_request(server, guarded):
    status, body = raw_post(
        server, guarded, b"{not json", {"Authorization": f"Bearer {server.endpoint_key(guarded)}"}
    )
    assert status == 400 and "JSON" in body["error"]


@pytest.mark.parametrize("value", ["bad name!", "x" * 40, "guarded-a;rm", "-lead"])
def test_a_garbage_deployment_header_is_a_bad_request(server, guarded, value):
    assert server.score(guarded, BODY, deployment=None).status == 200
    headers = {
        "Authorization": f"Bearer {server.endpoint_key(guarded)}",
        "azureml-model-deployment": value,
    }
    assert raw_post(server, guarded, BODY, headers)[0] == 400


def test_an_unknown_deployment_or_endpoint_is_not_found(server, guarded):
    assert server.score(guarded, BODY, deployment="guarded-zz").status == 404
    headers = {"Authorization": f"Bearer {server.endpoint_key(guarded)}"}
    status, body = raw_post(server, "no-such-endpoint", BODY, headers)
    assert status == 404 and "no-such-endpoint" in body["error"]


def test_an_oversized_body_is_refused(server, guarded):
    body = json.dumps({"data": "x" * (1536 * 1024)}).encode()
    result = server.score(guarded, body)
    assert result.status == 413
    assert "limit" in json.loads(result.body)["error"]


def test_an_endpoint_without_live_traffic_says_so(server, models):
    deploy(server, "idle", {"idle-a": models("idle")}, {})
    result = server.score("idle", BODY)
    assert result.status == 404
    assert "no deployment with live traffic" in json.loads(result.body)["error"]
    assert server.score("idle", BODY, deployment="idle-a").status == 200


# ---- models that misbehave -------------------------------------------------------------------


def test_run_raising_is_a_502_counted_as_a_server_error(server, models):
    deploy(server, "broken", {"broken-a": models("broken", fail_run=True)}, {"broken-a": 100})

    results = burst(server, "broken", 12)

    assert {r.status for r in results} == {502}
    assert json.loads(results[0].body) == {"error": "run() raised ValueError"}
    seen = logged(server, "broken", "broken-a", 12)
    assert (seen.requests, seen.server_errors, seen.non_2xx) == (12, 12, 12)


def test_a_request_over_the_timeout_is_answered_408(server, models):
    deploy(server, "slow", {"slow-a": models("slow", sleep_s=3.0)}, {"slow-a": 100})

    result = server.score("slow", BODY)

    assert result.status == 408
    assert 950 <= result.latency_ms < 2500, "answered at the timeout, not when run() ended"
    assert "did not answer within 1 s" in json.loads(result.body)["error"]


def test_a_model_whose_init_fails_is_failed_and_the_others_keep_serving(server, models):
    healthy, broken = models("mixed"), models("mixed", fail_init=True)
    server.create_endpoint("mixed")
    server.create_deployment("mixed", healthy.request("mixed-a"))
    server.create_deployment("mixed", broken.request("mixed-b"))

    failed = server.wait_for_deployment("mixed", "mixed-b", 30).deployments["mixed-b"]
    live = server.wait_for_deployment("mixed", "mixed-a", 30)

    assert failed.state is ProvisioningState.FAILED
    assert failed.error == "init() raised RuntimeError: this toy version cannot start"
    assert live.deployments["mixed-a"].state is ProvisioningState.SUCCEEDED
    write = EndpointWrite(traffic={"mixed-a": 100}, mirror={}, tags={})
    server.update_endpoint("mixed", write, expected_revision=live.revision)
    assert {r.status for r in burst(server, "mixed", 10)} == {200}
    assert server.score("mixed", BODY, deployment="mixed-b").status == 503


def test_a_tampered_artifact_is_refused_before_the_model_is_loaded(server, models):
    model = models("tamper")
    model.artifact.write_text(model.artifact.read_text().replace('"factor": 2', '"factor": 9'))
    server.create_endpoint("tamper")
    server.create_deployment("tamper", model.request("tamper-a"))

    deployment = server.wait_for_deployment("tamper", "tamper-a", 30).deployments["tamper-a"]

    assert deployment.state is ProvisioningState.FAILED
    assert "sha256" in deployment.error and "refusing to load it" in deployment.error
    assert str(model.artifact.parent) not in model.imported_from


def test_a_worker_that_dies_while_scoring_gives_502_and_is_restarted(server, models):
    deploy(server, "crash", {"crash-a": models("crash", exit_in_run=True)}, {"crash-a": 100})
    first_pid = server.server_state()["workers"]["crash/crash-a"]["pid"]

    assert server.score("crash", BODY).status == 502

    def restarted():
        worker = server.server_state()["workers"]["crash/crash-a"]
        return worker["status"] == "ready" and worker["pid"] != first_pid

    wait_until(restarted, 10, "the worker to be restarted")
    assert server.read_endpoint("crash").deployments["crash-a"].state is ProvisioningState.SUCCEEDED


def test_deleting_a_deployment_stops_its_worker(server, models):
    live = deploy(
        server, "gone", {"gone-a": models("gone"), "gone-b": models("gone")}, {"gone-a": 100}
    )
    pid = server.server_state()["workers"]["gone/gone-b"]["pid"]
    assert process_running(pid)

    server.delete_deployment("gone", "gone-b")

    assert "gone/gone-b" not in server.server_state()["workers"]
    wait_until(lambda: not process_running(pid), 5, "the worker process to exit")
    assert "gone-b" not in server.read_endpoint("gone").deployments
    assert live.deployments["gone-a"].state is ProvisioningState.SUCCEEDED


# ---- what is recorded ------------------------------------------------------------------------


def test_worker_cpu_and_memory_are_sampled_for_the_gates(server, models):
    deploy(server, "usage", {"usage-a": models("usage")}, {"usage-a": 100})
    burst(server, "usage", 20)

    seen = wait_until(
        lambda: (m := measure(server, "usage", "usage-a")).memory_percent is not None and m,
        10,
        "utilisation samples",
    )

    assert 0 < seen.memory_percent < 100
    assert 0 <= seen.cpu_percent <= 100


def test_the_endpoint_key_never_reaches_a_log_or_the_state(server, guarded):
    server.score(guarded, BODY)
    raw_post(server, guarded, BODY, {"Authorization": "Bearer wrong"})
    time.sleep(0.5)  # one flush interval and more
    key = server.endpoint_key(guarded).encode()
    files = [p for p in server.home.rglob("*") if p.is_file() and p.name != "keys.json"]
    assert any(p.name == "server.log" for p in files)
    assert [p for p in files if key in p.read_bytes()] == []


# ---- the server process ----------------------------------------------------------------------


def test_a_second_server_for_the_same_home_is_refused_and_points_at_the_first(server):
    done = subprocess.run(
        [sys.executable, "-m", "engine.providers.local.server", "--home", str(server.home)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 1
    running = json.loads((server.home / "server.json").read_text())
    assert f"pid {running['pid']}" in done.stderr and running["url"] in done.stderr
    assert server.ensure_server() is False


def test_a_restarted_server_keeps_endpoints_keys_and_the_request_log(local_server, toy_model):
    provider = local_server
    deploy(provider, "keep", {"keep-a": toy_model("keep")}, {"keep-a": 100})
    write = EndpointWrite({"keep-a": 100}, {}, {"saferollout.phase": "Succeeded"})
    revision = provider.read_endpoint("keep").revision
    before = provider.update_endpoint("keep", write, expected_revision=revision)
    key = provider.endpoint_key("keep")
    assert {r.status for r in burst(provider, "keep", 5)} == {200}
    old_pid = json.loads((provider.home / "server.json").read_text())["pid"]

    assert provider.stop_server() is True
    assert not (provider.home / "server.json").exists()
    assert not process_running(old_pid)
    assert provider.ensure_server() is True
    after = provider.read_endpoint("keep")

    assert json.loads((provider.home / "server.json").read_text())["pid"] != old_pid
    assert (after.traffic, after.tags, after.revision) == (
        before.traffic,
        before.tags,
        before.revision,
    )
    assert provider.endpoint_key("keep") == key
    # ensure_server returns once the deployments that were serving serve again.
    assert provider.server_state()["workers"]["keep/keep-a"]["status"] == "ready"
    assert {r.status for r in burst(provider, "keep", 5)} == {200}
    assert logged(provider, "keep", "keep-a", 10).requests == 10


def test_the_server_binds_loopback_by_default(local_server):
    info = json.loads((local_server.home / "server.json").read_text())
    assert info["host"] == "127.0.0.1"
    assert os.path.basename(local_server.scoring_url("any-endpoint")) == "score"
    assert local_server.scoring_url("any-endpoint").startswith("http://127.0.0.1:")


# ---- the server in this process: its own safety nets ------------------------------------------


async def _serving(home: Path, settings: ServerSettings, scenario):
    runner = web.AppRunner(LocalServer(home, settings).app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        return await scenario(runner.addresses[0][1])
    finally:
        await runner.cleanup()


def test_a_client_that_never_sends_its_body_is_dropped_with_408(tmp_path):
    control = ControlPlane(tmp_path)
    control.create_endpoint("patient")
    key = control.endpoint_key("patient")

    async def stall(port: int) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        head = (
            "POST /endpoints/patient/score HTTP/1.1\r\nHost: localhost\r\n"
            f"Authorization: Bearer {key}\r\nContent-Length: 100\r\n\r\n{{"
        )
        writer.write(head.encode())
        await writer.drain()
        try:
            return await asyncio.wait_for(reader.readline(), 5)
        finally:
            writer.close()
            await writer.wait_closed()

    status_line = asyncio.run(_serving(tmp_path, ServerSettings(client_timeout_s=0.3), stall))
    assert status_line.split()[1] == b"408"


def test_an_unexpected_error_in_the_server_is_a_502_never_a_500(tmp_path, monkeypatch):
    control = ControlPlane(tmp_path)
    control.create_endpoint("faulty")
    key = control.endpoint_key("faulty")

    async def broken(*_args):
        raise RuntimeError("a bug in routing")

    monkeypatch.setattr(LocalServer, "_score", broken)

    async def call(port: int) -> tuple[int, dict]:
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"http://127.0.0.1:{port}/endpoints/faulty/score",
                data=BODY,
                headers={"Authorization": f"Bearer {key}"},
            ) as response,
        ):
            return response.status, await response.json()

    status, body = asyncio.run(_serving(tmp_path, ServerSettings(), call))
    assert status == 502
    assert "server.log" in body["error"]


def test_requests_beyond_the_queue_limit_are_told_to_come_back_with_429(tmp_path):
    model = make_toy_model(tmp_path, tmp_path / "models", "busy", sleep_s=0.3)
    provider = LocalProvider(tmp_path)  # control plane only: the server below runs in-process
    provider.create_endpoint("busy")
    provider.control.add_deployment(
        "busy",
        DeploymentRecord("busy-a", "busy", model.version, str(model.model_dir), new_uid()),
    )
    revision = provider.read_endpoint("busy").revision
    provider.control.update_endpoint(
        "busy",
        traffic={"busy-a": 100},
        mirror={},
        tags={},
        tag_prefix="saferollout.",
        expected_revision=revision,
    )
    key = provider.endpoint_key("busy")

    async def flood(port: int) -> Counter:
        while provider.read_endpoint("busy").deployments["busy-a"].state != "Succeeded":
            await asyncio.sleep(0.05)
        async with aiohttp.ClientSession() as session:

            async def one() -> int:
                async with session.post(
                    f"http://127.0.0.1:{port}/endpoints/busy/score",
                    data=BODY,
                    headers={"Authorization": f"Bearer {key}"},
                ) as response:
                    return response.status

            return Counter(await asyncio.gather(*(one() for _ in range(6))))

    settings = ServerSettings(max_pending=2)
    statuses = asyncio.run(_serving(tmp_path, settings, flood))
    assert statuses == {200: 2, 429: 4}
