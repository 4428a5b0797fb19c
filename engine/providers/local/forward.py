"""The router's connections to its workers: plain HTTP/1.1 on loopback, kept alive and reused.

The server forwards every scoring request to one worker (`worker.py`), always the same request
shape to the same kind of peer, so it speaks just that much HTTP itself: one request per
connection at a time, `Content-Length` or chunked answers. A general client costs the router
more per request than everything else it does (measured in benchmarks/README.md). A connection
idle longer than IDLE_S is not reused, which keeps clear of the worker's own keep-alive limit;
one that broke while idle (the worker exited) is dropped before use.
"""

from __future__ import annotations

import asyncio
import time

LOOPBACK = "127.0.0.1"
IDLE_S = 30.0  # aiohttp's server closes idle keep-alive connections after 75 s
MAX_IDLE_PER_WORKER = 64
MAX_HEAD_BYTES = 64 * 1024


class WorkerUnreachable(Exception):
    """No connection to the worker could be opened: it is not accepting requests."""


class WorkerLost(Exception):
    """The connection broke, or the answer was not HTTP, after the request was sent."""


class _Connection:
    __slots__ = ("reader", "writer", "idle_since")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer
        self.idle_since = 0.0

    @property
    def usable(self) -> bool:
        return not (self.reader.at_eof() or self.writer.is_closing())


class WorkerConnections:
    """Idle connections per worker port; `post` takes one (or opens one) per request."""

    def __init__(self) -> None:
        self._idle: dict[int, list[_Connection]] = {}

    async def post(
        self, port: int, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, bytes]:
        """POST `body` to the worker on `port`; (status, answer body).

        Raises WorkerUnreachable when no connection can be opened and WorkerLost when the
        exchange fails after sending; a cancelled exchange closes its connection.
        """
        connection = self._take(port)
        if connection is None:
            try:
                reader, writer = await asyncio.open_connection(LOOPBACK, port)
            except OSError as exc:
                raise WorkerUnreachable(str(exc)) from exc
            connection = _Connection(reader, writer)
        reusable = False
        try:
            connection.writer.write(_request_head(port, path, headers, len(body)) + body)
            status, payload, reusable = await _read_answer(connection.reader)
            return status, payload
        except (OSError, EOFError, ValueError, asyncio.IncompleteReadError) as exc:
            raise WorkerLost(type(exc).__name__) from exc
        except asyncio.LimitOverrunError as exc:
            raise WorkerLost("answer head too large") from exc
        finally:
            if reusable:
                self._give_back(port, connection)
            else:
                connection.writer.close()

    def prune(self) -> None:
        """Close the idle connections that broke or went stale, for every port: a restarted
        worker listens on a new port, and its old connections would otherwise stay open."""
        now = time.monotonic()
        for port, idle in list(self._idle.items()):
            kept = [c for c in idle if c.usable and now - c.idle_since < IDLE_S]
            for connection in idle:
                if connection not in kept:
                    connection.writer.close()
            if kept:
                self._idle[port] = kept
            else:
                del self._idle[port]

    @property
    def idle(self) -> int:
        return sum(len(idle) for idle in self._idle.values())

    def close(self) -> None:
        for connections in self._idle.values():
            for connection in connections:
                connection.writer.close()
        self._idle.clear()

    def _take(self, port: int) -> _Connection | None:
        idle = self._idle.get(port)
        now = time.monotonic()
        while idle:
            connection = idle.pop()
            if connection.usable and now - connection.idle_since < IDLE_S:
                return connection
            connection.writer.close()
        return None

    def _give_back(self, port: int, connection: _Connection) -> None:
        idle = self._idle.setdefault(port, [])
        if len(idle) >= MAX_IDLE_PER_WORKER or not connection.usable:
            connection.writer.close()
            return
        connection.idle_since = time.monotonic()
        idle.append(connection)


def _request_head(port: int, path: str, headers: dict[str, str], length: int) -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"Host: {LOOPBACK}:{port}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    lines += ["Content-Type: application/json", f"Content-Length: {length}", "", ""]
    return "\r\n".join(lines).encode("latin-1")


async def _read_answer(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    """(status, body, connection reusable) of one HTTP/1.1 answer."""
    head = await reader.readuntil(b"\r\n\r\n")
    if len(head) > MAX_HEAD_BYTES:
        raise ValueError("answer head too large")
    lines = head[:-4].split(b"\r\n")
    version, _, rest = lines[0].partition(b" ")
    if not version.startswith(b"HTTP/1."):
        raise ValueError("not an HTTP/1.x answer")
    status = int(rest[:3])
    length: int | None = None
    chunked = False
    reusable = version == b"HTTP/1.1"
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name, value = name.strip().lower(), value.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value
        elif name == b"connection":
            reusable = value != b"close" and (reusable or value == b"keep-alive")
    if chunked:
        return status, await _read_chunks(reader), reusable
    if length is None:
        if status in (204, 304) or 100 <= status < 200:
            return status, b"", reusable
        return status, await reader.read(), False  # the body ends with the connection
    return status, await reader.readexactly(length), reusable


async def _read_chunks(reader: asyncio.StreamReader) -> bytes:
    parts = []
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size = int(size_line.split(b";", 1)[0].strip(), 16)
        if size == 0:
            while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers, if any
                pass
            return b"".join(parts)
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)
