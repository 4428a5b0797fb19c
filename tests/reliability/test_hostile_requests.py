"""Hostile requests to the local server, beyond tests/test_local_server.py: raw bytes on a
loopback socket where a well-behaved client library would refuse to send them.

Header injection and malformed headers, bodies that are not what they claim, slow clients
holding connections half-open, and floods within a bounded count. The server answers each with
a 4xx, stays up and keeps serving the well-behaved client, never echoes an injected header,
and neither its log nor the request log holds the key or a byte of any payload.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from engine.providers.local.provider import LocalProvider
from engine.providers.local.testing import deploy, make_toy_model, wait_until

pytestmark = pytest.mark.slow
EP = "hostile"
MARKER = "PAYLOAD-MARKER-7f3a"  # in every body sent here; must never reach a log
BODY = json.dumps({"data": [1, 2], "note": MARKER}).encode()
FLOOD = 300
SLOW_CLIENTS = 60
FIGURES = {"requests": 0}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    home = tmp_path_factory.mktemp("hostile-home")
    provider = LocalProvider(home, request_timeout_s=2.0)
    provider.ensure_server()
    try:
        model = make_toy_model(home, tmp_path_factory.mktemp("models"), "hostile")
        deploy(provider, EP, {"hostile-a": model}, {"hostile-a": 100})
        yield provider
    finally:
        provider.stop_server()


def raw(server: LocalProvider, data: bytes, *, timeout: float = 10.0) -> bytes:
    """Send bytes as they are and return everything the server answers until it closes."""
    FIGURES["requests"] += 1
    host, port = server.server_address()
    with socket.create_connection((host, port), timeout=timeout) as conn:
        with contextlib.suppress(ConnectionResetError):  # refused before it was all read
            conn.sendall(data)
        chunks = []
        try:
            while chunk := conn.recv(65536):
                chunks.append(chunk)
        except (ConnectionResetError, TimeoutError):
            pass
    return b"".join(chunks)


def request(server: LocalProvider, headers: list[bytes], body: bytes = BODY) -> bytes:
    head = [
        f"POST /endpoints/{EP}/score HTTP/1.1".encode(),
        b"Host: 127.0.0.1",
        f"Authorization: Bearer {server.endpoint_key(EP)}".encode(),
        f"Content-Length: {len(body)}".encode(),
        b"Connection: close",
        *headers,
    ]
    return raw(server, b"\r\n".join(head) + b"\r\n\r\n" + body)


def status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def still_serving(server: LocalProvider) -> None:
    FIGURES["requests"] += 1
    assert server.score(EP, BODY).status == 200


@pytest.mark.parametrize(
    "value",
    [
        b"hostile-a\rX-Injected: yes",
        b"hostile-a\nX-Injected: yes",
        b"hostile-a\x00",
        b"hostile-\xc3\xa9",
        b"hostile-a, hostile-b",
        b"../../etc/passwd",
        b"x" * 9000,
    ],
    ids=["cr", "lf", "nul", "non-ascii", "list", "traversal", "oversized"],
)
def test_an_injected_or_malformed_deployment_header_is_refused_and_never_echoed(server, value):
    answer = request(server, [b"azureml-model-deployment: " + value])
    assert 400 <= status(answer) < 500, answer[:200]
    head = answer.split(b"\r\n\r\n", 1)[0].lower()
    assert b"x-injected" not in head
    assert b"azureml-model-deployment: hostile-a" not in head
    still_serving(server)


def test_a_folded_header_continuation_is_refused(server):
    answer = request(server, [b"azureml-model-deployment: hostile-a", b" X-Injected: yes"])
    assert 400 <= status(answer) < 500
    assert b"x-injected" not in answer.split(b"\r\n\r\n", 1)[0].lower()
    still_serving(server)


def test_too_many_headers_are_refused(server):
    answer = request(server, [f"X-Pad-{i}: {'p' * 64}".encode() for i in range(400)])
    assert 400 <= status(answer) < 500
    still_serving(server)


@pytest.mark.parametrize(
    "body",
    [
        b"\xff\xfe\xfd not utf-8",
        b"[" * 100_000 + b"]" * 100_000,
        b'{"data": ' * 50_000,
        b"",
        b"null\x00",
    ],
    ids=["not-utf8", "nested-100k-deep", "unterminated", "empty", "nul"],
)
def test_a_body_that_is_not_json_is_a_400(server, body):
    answer = request(server, [b"Content-Type: application/json"], body=body)
    assert status(answer) == 400, answer[:300]
    assert b"not valid JSON" in answer
    still_serving(server)


def test_a_body_longer_than_its_content_length_does_not_smuggle_a_second_request(server):
    smuggled = (
        f"POST /endpoints/{EP}/score HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{{}}"
    ).encode()
    answer = request(server, [], body=BODY)  # the honest request...
    assert status(answer) == 200
    head = [
        f"POST /endpoints/{EP}/score HTTP/1.1".encode(),
        b"Host: 127.0.0.1",
        b"Authorization: Bearer wrong",
        b"Content-Length: 2",
        b"Transfer-Encoding: chunked",
    ]
    answer = raw(server, b"\r\n".join(head) + b"\r\n\r\n{}" + smuggled)
    assert 400 <= status(answer) < 500
    assert answer.count(b"HTTP/1.1 200") == 0, "the smuggled request was never served"
    still_serving(server)


def test_a_chunked_body_past_the_size_limit_is_a_413(server):
    chunk = b"x" * 65536
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(30))
    head = [
        f"POST /endpoints/{EP}/score HTTP/1.1".encode(),
        b"Host: 127.0.0.1",
        f"Authorization: Bearer {server.endpoint_key(EP)}".encode(),
        b"Transfer-Encoding: chunked",
        b"Connection: close",
    ]
    answer = raw(server, b"\r\n".join(head) + b"\r\n\r\n" + chunks + b"0\r\n\r\n")
    assert status(answer) == 413
    still_serving(server)


@pytest.mark.parametrize(
    "line",
    [
        b"GET /endpoints/hostile/score HTTP/1.1",
        b"DELETE /endpoints/hostile/score HTTP/1.1",
        b"POST /endpoints/..%2f..%2fkeys.json/score HTTP/1.1",
        b"POST /endpoints/hostile/score/../../_state HTTP/1.1",
        b"POST http://169.254.169.254/latest/meta-data HTTP/1.1",
        b"BREW /coffee HTCPCP/1.0",
        b"POST /endpoints/" + b"a" * 10_000 + b"/score HTTP/1.1",
    ],
    ids=["get", "delete", "encoded-traversal", "dot-segments", "absolute-uri", "garbage", "long"],
)
def test_requests_outside_the_scoring_route_are_4xx(server, line):
    head = [line, b"Host: 127.0.0.1", b"Content-Length: 2", b"Connection: close"]
    answer = raw(server, b"\r\n".join(head) + b"\r\n\r\n{}")
    assert 400 <= status(answer) < 500, answer[:200]
    assert server.endpoint_key(EP).encode() not in answer
    still_serving(server)


def test_slow_clients_holding_connections_half_open_do_not_stop_the_others(server):
    host, port = server.server_address()
    idle = []
    try:
        for _ in range(SLOW_CLIENTS):
            conn = socket.create_connection((host, port), timeout=5)
            conn.sendall(f"POST /endpoints/{EP}/score HTTP/1.1\r\nHost: 1".encode())
            idle.append(conn)
        FIGURES["requests"] += SLOW_CLIENTS
        started = time.monotonic()
        for _ in range(5):
            still_serving(server)
        assert time.monotonic() - started < 5, "well-behaved clients are served meanwhile"
    finally:
        for conn in idle:
            conn.close()
    still_serving(server)


def test_a_flood_of_bad_keys_and_unknown_endpoints_is_refused_and_leaves_no_trace(server):
    def bad_key(i: int) -> int:
        answer = raw(
            server,
            (
                f"POST /endpoints/{EP}/score HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                f"guess-{i}\r\nContent-Length: {len(BODY)}\r\nConnection: close\r\n\r\n"
            ).encode()
            + BODY,
        )
        return status(answer)

    def unknown_endpoint(i: int) -> int:
        answer = raw(
            server,
            (
                f"POST /endpoints/made-up-{i}/score HTTP/1.1\r\nHost: x\r\nContent-Length: 2"
                "\r\nConnection: close\r\n\r\n{}"
            ).encode(),
        )
        return status(answer)

    logs_before = sorted(p.name for p in server.home.rglob("*") if p.is_file())
    with ThreadPoolExecutor(16) as pool:
        statuses = Counter(pool.map(bad_key, range(FLOOD)))
        statuses.update(pool.map(unknown_endpoint, range(FLOOD)))

    assert statuses == {401: FLOOD, 404: FLOOD}
    still_serving(server)
    after = sorted(p.name for p in server.home.rglob("*") if p.is_file())
    assert not [name for name in after if "made-up" in name], "no log per made-up endpoint"
    assert len(after) <= len(logs_before) + 2


def test_no_log_holds_the_key_or_any_payload(server):
    # Everything above, plus a request that the model answers, is in the logs by now.
    still_serving(server)
    time.sleep(0.5)  # the request log flushes every 0.2 s
    key = server.endpoint_key(EP).encode()
    files = [p for p in server.home.rglob("*") if p.is_file() and p.name != "keys.json"]
    assert any("server.log" in p.name for p in files)
    leaked = [p.name for p in files if key in p.read_bytes() or MARKER.encode() in p.read_bytes()]
    assert leaked == []


def test_the_server_binds_loopback_unless_told_otherwise(tmp_path):
    for args, host in (([], "127.0.0.1"), (["--host", "127.0.0.2"], "127.0.0.2")):
        home = tmp_path / (host or "default")
        process = subprocess.Popen(
            [sys.executable, "-m", "engine.providers.local.server", "--home", str(home)]
            + ["--port", "0", *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            info = wait_until(
                lambda home=home: (
                    (home / "server.json").exists()
                    and json.loads((home / "server.json").read_text())
                ),
                15,
                "the server to start",
            )
            assert info["host"] == host
            listening = [
                line.split()[1]
                for line in Path("/proc/net/tcp").read_text().splitlines()[1:]
                if line.split()[3] == "0A"
                and int(line.split()[1].split(":")[1], 16) == info["port"]
            ]
            assert listening == [
                socket.inet_aton(host)[::-1].hex().upper() + f":{info['port']:04X}"
            ]
        finally:
            process.terminate()
            process.wait(10)
