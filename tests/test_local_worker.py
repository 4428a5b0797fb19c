"""A deployment's worker as the server's connections see it (engine/providers/local/worker.py):
the scoring protocol over loopback, with a stand-in scoring module."""

from __future__ import annotations

import asyncio
import json
import time
import types

import pytest

from engine.providers.local.forward import WorkerConnections
from engine.providers.local.worker import MAX_BODY, SCORE_PATH, TOKEN_HEADER, Scoring, _Connection

TOKEN = "secret-token"


def _module(calls: list[str], sleep_s: float = 0.0) -> types.ModuleType:
    module = types.ModuleType("score")

    def run(raw: str) -> dict:
        calls.append(raw)
        time.sleep(sleep_s)
        if raw == '"exit"':
            raise SystemExit(3)
        return {"echo": json.loads(raw)}

    module.run = run
    return module


async def _serving(scoring: Scoring):
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Connection(scoring), "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def _raw(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    answer = await asyncio.wait_for(reader.read(), 5)  # every refusal closes the connection
    writer.close()
    return answer


def test_requests_are_scored_in_turn_on_kept_connections():
    calls: list[str] = []

    async def scenario():
        scoring = Scoring(_module(calls), TOKEN)
        server, port = await _serving(scoring)
        connections = WorkerConnections()
        async with server:
            answers = [
                await connections.post(port, SCORE_PATH, {TOKEN_HEADER: TOKEN}, f"[{i}]".encode())
                for i in range(3)
            ]
            answers.append(
                await connections.post(port, SCORE_PATH, {TOKEN_HEADER: TOKEN}, b'"exit"')
            )
        connections.close()
        scoring.close()
        return answers

    answers = asyncio.run(scenario())
    assert answers[:3] == [(200, json.dumps({"echo": [i]}).encode()) for i in range(3)]
    assert answers[3][0] == 502 and b"SystemExit" in answers[3][1]
    assert calls == ["[0]", "[1]", "[2]", '"exit"']


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (f"POST {SCORE_PATH} HTTP/1.1\r\n{TOKEN_HEADER}: nope\r\nContent-Length: 2\r\n\r\n[]", 401),
        (f"POST /other HTTP/1.1\r\n{TOKEN_HEADER}: {TOKEN}\r\nContent-Length: 2\r\n\r\n[]", 404),
        (f"GET {SCORE_PATH} HTTP/1.1\r\n{TOKEN_HEADER}: {TOKEN}\r\n\r\n", 405),
        (f"POST {SCORE_PATH} HTTP/1.1\r\nContent-Length: {MAX_BODY + 1}\r\n\r\n", 413),
        ("SSH-2.0-client\r\n\r\n", 400),
        (f"POST {SCORE_PATH} HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    ],
    ids=["wrong-token", "unknown-path", "not-post", "too-large", "not-http", "chunked"],
)
def test_requests_run_never_sees_are_refused(request_bytes, status):
    calls: list[str] = []

    async def scenario():
        scoring = Scoring(_module(calls), TOKEN)
        server, port = await _serving(scoring)
        async with server:
            answer = await _raw(
                port, request_bytes.replace("\r\n\r\n", "\r\nConnection: close\r\n\r\n", 1).encode()
            )
        scoring.close()
        return answer

    answer = asyncio.run(scenario())
    assert answer.startswith(f"HTTP/1.1 {status} ".encode()), answer
    assert calls == []


def test_a_request_abandoned_while_queued_never_runs():
    calls: list[str] = []

    async def scenario():
        scoring = Scoring(_module(calls, sleep_s=0.3), TOKEN)
        server, port = await _serving(scoring)
        connections = WorkerConnections()
        async with server:
            first = asyncio.create_task(
                connections.post(port, SCORE_PATH, {TOKEN_HEADER: TOKEN}, b'"first"')
            )
            await asyncio.sleep(0.05)  # running now
            with pytest.raises(TimeoutError):  # queued behind it, then given up on
                async with asyncio.timeout(0.1):
                    await connections.post(port, SCORE_PATH, {TOKEN_HEADER: TOKEN}, b'"second"')
            await first
            await asyncio.sleep(0.4)  # when the second would have run
        connections.close()
        scoring.close()

    asyncio.run(scenario())
    assert calls == ['"first"']


def test_a_peer_that_sends_more_than_a_request_holds_is_cut_off():
    async def scenario():
        scoring = Scoring(_module([], sleep_s=1.0), TOKEN)
        server, port = await _serving(scoring)
        async with server:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            head = f"POST {SCORE_PATH} HTTP/1.1\r\n{TOKEN_HEADER}: {TOKEN}\r\n"
            head += "Content-Length: 2\r\n\r\n"
            writer.write(head.encode() + b"[]")  # runs for 1 s; meanwhile a flood
            try:
                for _ in range(64):
                    writer.write(b"x" * 65536)
                    await writer.drain()
            except ConnectionError:
                pass
            try:
                answer = await asyncio.wait_for(reader.read(), 5)
            except ConnectionError:  # reset: the worker closed with the flood unread
                answer = b""
            writer.close()
        scoring.close()
        return answer

    assert asyncio.run(scenario()) == b""  # closed before the first answer was written
