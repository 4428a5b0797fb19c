"""A small HTTP/1.1 load generator for loopback benchmarks: open loop at a fixed rate, or a
fixed number of back-to-back clients for throughput.

Open loop: request i is due at start + i / rate whatever happened to earlier ones, and its
latency is counted from when it was due, so a server that falls behind is charged for the wait
its clients would see (no coordinated omission). Connections are kept alive and reused; a new
one is opened only when all are busy, up to a bound. Every run is bounded in count and time and
only ever connects to 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field

from benchmarks.common import quantile

LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class Target:
    port: int
    path: str
    headers: dict[str, str]
    body: bytes

    def request_bytes(self) -> bytes:
        lines = [f"POST {self.path} HTTP/1.1", f"Host: {LOOPBACK}:{self.port}"]
        lines += [f"{k}: {v}" for k, v in self.headers.items()]
        lines += ["Content-Type: application/json", f"Content-Length: {len(self.body)}"]
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + self.body


@dataclass
class Outcome:
    """What one load run saw."""

    sent: int = 0
    latencies_ms: list[float] = field(default_factory=list)  # of 2xx answers only
    statuses: Counter = field(default_factory=Counter)
    failures: int = 0  # connection errors and time-outs, no status
    seconds: float = 0.0
    connections: int = 0
    late_starts: int = 0  # open loop: requests sent more than 1 ms after they were due

    @property
    def ok(self) -> int:
        return sum(n for status, n in self.statuses.items() if 200 <= status < 300)

    def summary(self) -> dict[str, object]:
        lat = self.latencies_ms
        return {
            "sent": self.sent,
            "ok": self.ok,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "failures": self.failures,
            "seconds": round(self.seconds, 3),
            "ok_per_s": round(self.ok / self.seconds, 1) if self.seconds else 0.0,
            "p50_ms": round(quantile(lat, 0.50), 3),
            "p90_ms": round(quantile(lat, 0.90), 3),
            "p99_ms": round(quantile(lat, 0.99), 3),
            "max_ms": round(max(lat), 3) if lat else None,
            "connections": self.connections,
            "late_starts": self.late_starts,
        }


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer

    async def exchange(self, request: bytes) -> tuple[int, bool]:
        """Send one request and read its answer; (status, connection still usable)."""
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length, keep = 0, True
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection" and value.strip().lower() == b"close":
                keep = False
        if length:
            await self.reader.readexactly(length)
        return status, keep

    def close(self) -> None:
        self.writer.close()


class _Pool:
    def __init__(self, port: int, limit: int):
        self.port, self.limit = port, limit
        self.idle: list[_Connection] = []
        self.opened = 0
        self.slots = asyncio.Semaphore(limit)

    async def send(self, request: bytes, timeout_s: float) -> int:
        async with self.slots:
            connection = self.idle.pop() if self.idle else None
            if connection is None:
                reader, writer = await asyncio.open_connection(LOOPBACK, self.port)
                connection = _Connection(reader, writer)
                self.opened += 1
            try:
                status, keep = await asyncio.wait_for(connection.exchange(request), timeout_s)
            except BaseException:
                connection.close()
                raise
            if keep:
                self.idle.append(connection)
            else:
                connection.close()
            return status

    def close(self) -> None:
        for connection in self.idle:
            connection.close()
        self.idle.clear()


async def open_loop(
    target: Target,
    rate: float,
    seconds: float,
    *,
    max_connections: int = 256,
    timeout_s: float = 10.0,
) -> Outcome:
    """Send `rate` requests a second for `seconds`, each on time whatever the server does."""
    request = target.request_bytes()
    pool = _Pool(target.port, max_connections)
    outcome = Outcome()
    total = int(rate * seconds)
    tasks: list[asyncio.Task] = []
    loop = asyncio.get_running_loop()

    async def one(due: float) -> None:
        try:
            status = await pool.send(request, timeout_s)
        except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError):
            outcome.failures += 1
            return
        outcome.statuses[status] += 1
        if 200 <= status < 300:
            outcome.latencies_ms.append((loop.time() - due) * 1000.0)

    start = loop.time() + 0.05
    for i in range(total):
        due = start + i / rate
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        elif delay < -0.001:
            outcome.late_starts += 1
        tasks.append(asyncio.create_task(one(due)))
        outcome.sent += 1
    await asyncio.gather(*tasks)
    outcome.seconds = loop.time() - start
    outcome.connections = pool.opened
    pool.close()
    return outcome


async def closed_loop(
    target: Target, clients: int, seconds: float, *, timeout_s: float = 10.0
) -> Outcome:
    """`clients` connections, each sending its next request as soon as the last is answered."""
    request = target.request_bytes()
    pool = _Pool(target.port, clients)
    outcome = Outcome()
    loop = asyncio.get_running_loop()
    start = loop.time()
    stop = start + seconds

    async def client() -> None:
        while loop.time() < stop:
            sent = loop.time()
            outcome.sent += 1
            try:
                status = await pool.send(request, timeout_s)
            except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError):
                outcome.failures += 1
                continue
            outcome.statuses[status] += 1
            if 200 <= status < 300:
                outcome.latencies_ms.append((loop.time() - sent) * 1000.0)

    await asyncio.gather(*(client() for _ in range(clients)))
    outcome.seconds = loop.time() - start
    outcome.connections = pool.opened
    pool.close()
    return outcome


def run(coroutine) -> Outcome:
    started = time.perf_counter()
    result = asyncio.run(coroutine)
    result.seconds = result.seconds or time.perf_counter() - started
    return result
