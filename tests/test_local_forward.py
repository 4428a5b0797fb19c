"""The router's own HTTP/1.1 connections to its workers (engine/providers/local/forward.py),
against small scripted peers on loopback."""

from __future__ import annotations

import asyncio
import socket

import pytest

from engine.providers.local.forward import WorkerConnections, WorkerLost, WorkerUnreachable


async def _peer(answers: list[bytes], seen: list[bytes]):
    """A server that reads one request per answer on each connection and writes the answer;
    an answer ending in b"<close>" closes the connection after it."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while answers:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(
                    next(
                        line.split(b":")[1]
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length")
                    )
                )
                seen.append(head + await reader.readexactly(length))
                answer = answers.pop(0)
                close = answer.endswith(b"<close>")
                writer.write(answer.removesuffix(b"<close>"))
                await writer.drain()
                if close:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: application/json\r\n\r\n{}"


def test_connections_are_reused_and_the_request_carries_body_and_headers():
    async def scenario():
        seen: list[bytes] = []
        server, port = await _peer([OK, OK, OK], seen)
        connections = WorkerConnections()
        async with server:
            for _ in range(3):
                assert await connections.post(port, "/score", {"x-token": "t"}, b"[1]") == (
                    200,
                    b"{}",
                )
        connections.close()
        return seen

    seen = asyncio.run(scenario())
    assert len(seen) == 3
    assert seen[0].startswith(b"POST /score HTTP/1.1\r\n")
    assert b"\r\nx-token: t\r\n" in seen[0] and seen[0].endswith(b"\r\n\r\n[1]")


def test_a_chunked_answer_is_read_whole():
    chunked = (
        b"HTTP/1.1 502 Bad Gateway\r\nTransfer-Encoding: chunked\r\n\r\n"
        b'3\r\n{"a\r\n4\r\n": 1\r\n1\r\n}\r\n0\r\n\r\n'
    )

    async def scenario():
        server, port = await _peer([chunked, OK], [])
        connections = WorkerConnections()
        async with server:
            first = await connections.post(port, "/score", {}, b"{}")
            second = await connections.post(port, "/score", {}, b"{}")
        connections.close()
        return first, second

    assert asyncio.run(scenario()) == ((502, b'{"a": 1}'), (200, b"{}"))


def test_a_connection_the_worker_closed_is_not_reused():
    closing = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}<close>"

    async def scenario():
        server, port = await _peer([closing, OK], [])
        connections = WorkerConnections()
        async with server:
            first = await connections.post(port, "/score", {}, b"{}")
            await asyncio.sleep(0.05)  # the peer has closed its end by now
            second = await connections.post(port, "/score", {}, b"{}")
        connections.close()
        return first, second

    assert asyncio.run(scenario()) == ((200, b"{}"), (200, b"{}"))


def test_nobody_listening_is_unreachable():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # bound but not listening: connections are refused

        async def scenario():
            await WorkerConnections().post(port, "/score", {}, b"{}")

        with pytest.raises(WorkerUnreachable):
            asyncio.run(scenario())


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\n{}<close>",  # cut short
        b"<close>",  # nothing at all
        b"SSH-2.0-x\r\n\r\n<close>",  # not HTTP
    ],
)
def test_an_answer_broken_after_the_request_was_sent_is_lost(answer):
    async def scenario():
        server, port = await _peer([answer], [])
        async with server:
            await WorkerConnections().post(port, "/score", {}, b"{}")

    with pytest.raises(WorkerLost):
        asyncio.run(scenario())


def test_pruning_closes_connections_of_a_worker_that_went_away():
    async def scenario():
        server, port = await _peer([OK], [])
        connections = WorkerConnections()
        async with server:
            await connections.post(port, "/score", {}, b"{}")
            kept = connections.idle
        await asyncio.sleep(0.05)  # the peer closed its end once its answers ran out
        connections.prune()
        return kept, connections.idle

    assert asyncio.run(scenario()) == (1, 0)
