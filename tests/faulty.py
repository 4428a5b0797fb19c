"""Provider wrappers that check, break and kill: the reliability tests' instruments.

They stack around any provider (the in-memory fake, the local backend, the Azure fake):

    engine -> Crashing (dies after call N) -> Faulty (transient faults) -> Checked -> provider

`Checked` reads the endpoint around every write the backend accepts and records what the
design's invariants forbid (`engine.invariants.transition_violations`); a write the backend
refuses is a violation too, because the engine must never attempt one. `Faulty` injects the
faults a cloud control plane produces, from a seeded generator. `Crashing` lets the first N
calls through and then stops the run where it stands: by raising `Crash` (a BaseException, so
no `except` in the engine catches it, and every later call raises it again, so no cleanup reaches
the provider either) or, in a subprocess, by SIGKILL.
"""

from __future__ import annotations

import os
import random
import signal
import threading
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from engine.errors import ConflictError, PermanentError, TransientError
from engine.invariants import endpoint_violations, transition_violations
from engine.live import DeploymentRequest, EndpointWrite, InvokeResult, LiveEndpoint

WRITES = ("create_endpoint", "update_endpoint", "create_deployment", "delete_deployment")


class Crash(BaseException):
    """The run died here. Not an Exception: nothing in the engine may catch it."""


@dataclass
class Ledger:
    """What the instruments saw, summed over every wrapper that shares it."""

    calls: int = 0
    writes: int = 0
    refused: int = 0
    faults: Counter = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)
    history: list[LiveEndpoint] = field(default_factory=list)  # the endpoint after each write

    def merge(self, other: Ledger) -> None:
        self.calls += other.calls
        self.writes += other.writes
        self.refused += other.refused
        self.faults.update(other.faults)
        self.violations.extend(other.violations)


class Checked:
    """Checks the invariants after every write; counts a refused write as a violation.

    Writes from one process are checked one at a time (a lock), so two threads sharing a
    `Checked` never interleave between the read before and the read after a write.
    """

    _lock = threading.RLock()

    def __init__(self, inner: Any, ledger: Ledger | None = None):
        self.inner = inner
        self.name = getattr(inner, "name", "checked")
        self.ledger = ledger if ledger is not None else Ledger()

    def _write(self, operation: str, endpoint: str, call):
        with self._lock:
            before = self.inner.read_endpoint(endpoint)
            try:
                result = call()
            except ConflictError:
                raise  # a stale write refused by compare-and-swap: the engine's own guard
            except PermanentError as error:
                self.ledger.refused += 1
                self.ledger.violations.append(f"refused {operation} on {endpoint}: {error}")
                raise
            after = self.inner.read_endpoint(endpoint)
            self.ledger.writes += 1
            self.ledger.history.append(after)
            found = transition_violations(before, after) + endpoint_violations(
                after, check_tags=False
            )
            self.ledger.violations.extend(
                f"{operation} on {endpoint}: {problem}" for problem in dict.fromkeys(found)
            )
            return result

    def read_endpoint(self, endpoint: str) -> LiveEndpoint:
        return self.inner.read_endpoint(endpoint)

    def create_endpoint(self, endpoint: str) -> LiveEndpoint:
        return self._write(
            "create_endpoint", endpoint, lambda: self.inner.create_endpoint(endpoint)
        )

    def update_endpoint(
        self, endpoint: str, write: EndpointWrite, *, expected_revision: str
    ) -> LiveEndpoint:
        return self._write(
            "update_endpoint",
            endpoint,
            lambda: self.inner.update_endpoint(
                endpoint, write, expected_revision=expected_revision
            ),
        )

    def create_deployment(self, endpoint: str, request: DeploymentRequest) -> None:
        return self._write(
            "create_deployment", endpoint, lambda: self.inner.create_deployment(endpoint, request)
        )

    def wait_for_deployment(self, endpoint: str, name: str, timeout_s: float) -> LiveEndpoint:
        return self.inner.wait_for_deployment(endpoint, name, timeout_s)

    def delete_deployment(self, endpoint: str, name: str) -> None:
        return self._write(
            "delete_deployment", endpoint, lambda: self.inner.delete_deployment(endpoint, name)
        )

    def invoke(self, endpoint: str, deployment: str, body: bytes) -> InvokeResult:
        return self.inner.invoke(endpoint, deployment, body)

    def gate_source(self, source: str, workspace_id: str | None):
        return self.inner.gate_source(source, workspace_id)

    def __getattr__(self, name: str) -> Any:  # endpoint_key, server_address, ... of the backend
        return getattr(self.inner, name)


# The transient faults of a cloud control plane, as the provider boundary reports them.
FAULT_KINDS = ("throttled", "unavailable", "timeout", "lost-response", "stale-read")


@dataclass(frozen=True)
class FaultEvent:
    operation: str
    kind: str
    at: datetime
    retry_after: float


class Faulty:
    """Injects a transient fault into `rate` of the calls, chosen by a seeded generator.

    throttled      429 with a Retry-After of 1 to 30 s; the call did nothing
    unavailable    503; the call did nothing
    timeout        no answer; the call did nothing
    lost-response  a write that landed, and whose answer was lost on the way back
    stale-read     a read answered from a replica that has not seen the last write yet

    Gate sources are not wrapped: their failures are counted against `max_source_errors`
    (field case F04), a separate rule. `events` lists every fault with the clock time, so a
    test can check that retries waited at least as long as the service asked.
    """

    def __init__(
        self,
        inner: Any,
        seed: int,
        *,
        clock: Any,
        rate: float = 0.2,
        kinds: tuple[str, ...] = FAULT_KINDS,
        ledger: Ledger | None = None,
    ):
        self.inner = inner
        self.name = getattr(inner, "name", "faulty")
        self.random = random.Random(seed)
        self.clock = clock
        self.rate = rate
        self.kinds = kinds
        self.ledger = ledger if ledger is not None else Ledger()
        self.events: list[FaultEvent] = []
        self.attempts: list[tuple[str, datetime]] = []  # every call as it reached this wrapper
        self._before_last_write: dict[str, LiveEndpoint] = {}

    def _fault(self, operation: str, *, write: bool = False, read: bool = False) -> str | None:
        self.attempts.append((operation, self.clock.now()))
        if self.random.random() >= self.rate:
            return None
        kinds = [
            k for k in self.kinds if (k != "lost-response" or write) and (k != "stale-read" or read)
        ]
        return self.random.choice(kinds) if kinds else None

    def _raise(self, operation: str, kind: str) -> None:
        retry_after = float(self.random.choice((1, 2, 5, 30))) if kind == "throttled" else 1.0
        self.events.append(FaultEvent(operation, kind, self.clock.now(), retry_after))
        self.ledger.faults[kind] += 1
        message = {
            "throttled": f"{operation}: 429 Too Many Requests (Retry-After: {retry_after:g})",
            "unavailable": f"{operation}: 503 Service Unavailable",
            "timeout": f"{operation}: the request timed out",
            "lost-response": f"{operation}: the connection was reset after the request was sent",
        }[kind]
        raise TransientError(message, retry_after=retry_after, operation=operation)

    def _call(self, operation: str, endpoint: str, call, *, write: bool = False):
        kind = self._fault(operation, write=write)
        if kind is None:
            if write:
                self._before_last_write[endpoint] = self.inner.read_endpoint(endpoint)
            return call()
        if kind == "lost-response":
            self._before_last_write[endpoint] = self.inner.read_endpoint(endpoint)
            call()
        self._raise(operation, kind)

    def read_endpoint(self, endpoint: str) -> LiveEndpoint:
        kind = self._fault("read_endpoint", read=True)
        if kind == "stale-read" and endpoint in self._before_last_write:
            self.events.append(FaultEvent("read_endpoint", kind, self.clock.now(), 0.0))
            self.ledger.faults[kind] += 1
            return self._before_last_write[endpoint]
        if kind is not None and kind != "stale-read":
            self._raise("read_endpoint", kind)
        return self.inner.read_endpoint(endpoint)

    def create_endpoint(self, endpoint: str) -> LiveEndpoint:
        return self._call(
            "create_endpoint", endpoint, lambda: self.inner.create_endpoint(endpoint), write=True
        )

    def update_endpoint(
        self, endpoint: str, write: EndpointWrite, *, expected_revision: str
    ) -> LiveEndpoint:
        return self._call(
            "update_endpoint",
            endpoint,
            lambda: self.inner.update_endpoint(
                endpoint, write, expected_revision=expected_revision
            ),
            write=True,
        )

    def create_deployment(self, endpoint: str, request: DeploymentRequest) -> None:
        return self._call(
            "create_deployment",
            endpoint,
            lambda: self.inner.create_deployment(endpoint, request),
            write=True,
        )

    def wait_for_deployment(self, endpoint: str, name: str, timeout_s: float) -> LiveEndpoint:
        return self._call(
            "wait_for_deployment",
            endpoint,
            lambda: self.inner.wait_for_deployment(endpoint, name, timeout_s),
        )

    def delete_deployment(self, endpoint: str, name: str) -> None:
        return self._call(
            "delete_deployment",
            endpoint,
            lambda: self.inner.delete_deployment(endpoint, name),
            write=True,
        )

    def invoke(self, endpoint: str, deployment: str, body: bytes) -> InvokeResult:
        return self._call("invoke", endpoint, lambda: self.inner.invoke(endpoint, deployment, body))

    def gate_source(self, source: str, workspace_id: str | None):
        return self.inner.gate_source(source, workspace_id)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class PermanentFault:
    """Lets calls through until call number `at`, which fails for good (a refused request)."""

    def __init__(self, inner: Any, at: int, ledger: Ledger | None = None):
        self.inner = inner
        self.name = getattr(inner, "name", "permanent")
        self.at = at
        self.count = 0
        self.ledger = ledger if ledger is not None else Ledger()
        self.failed: str | None = None

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.inner, name)
        if name not in CALLS or name == "gate_source":  # source failures are F04's
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            self.count += 1
            if self.count == self.at:
                self.failed = name
                self.ledger.faults["permanent"] += 1
                raise PermanentError(
                    f"{name} on endpoint {args[0] if args else '?'}: 403 AuthorizationFailed "
                    "(the identity lost its role assignment)",
                    endpoint=str(args[0]) if args else "",
                    operation=name,
                    code="AuthorizationFailed",
                )
            return attribute(*args, **kwargs)

        return call


# Every call of the provider interface, in the order `Crashing` counts them.
CALLS = (
    "read_endpoint",
    "create_endpoint",
    "update_endpoint",
    "create_deployment",
    "wait_for_deployment",
    "delete_deployment",
    "invoke",
    "gate_source",
)


class Crashing:
    """Lets the first `after` calls through, then the run dies: every later call raises `Crash`
    (or, with `sigkill`, the process kills itself with SIGKILL before the call is made)."""

    def __init__(self, inner: Any, after: int | None, *, sigkill: bool = False):
        self.inner = inner
        self.name = getattr(inner, "name", "crashing")
        self.after = after
        self.sigkill = sigkill
        self.count = 0
        self.crashed_on: str | None = None

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.inner, name)
        if name not in CALLS:
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            if self.after is not None and self.count >= self.after:
                if self.sigkill:
                    os.kill(os.getpid(), signal.SIGKILL)
                self.crashed_on = self.crashed_on or name
                raise Crash(f"the run died before call {self.count + 1} ({name})")
            self.count += 1
            return attribute(*args, **kwargs)

        return call


class Scripted:
    """Faults at chosen calls, for tests that need one exact sequence:
    `{("update_endpoint", 2): "lost-response", ("read_endpoint", 3): "stale-read"}`, each call
    numbered from 1 per operation. A stale read answers with the endpoint as it was before the
    last write made through this wrapper (or `stale`, when given)."""

    def __init__(self, inner: Any, script: dict[tuple[str, int], str], stale: Any = None):
        self.inner = inner
        self.name = getattr(inner, "name", "scripted")
        self.script = dict(script)
        self.counts: Counter = Counter()
        self.stale = stale
        self.done: list[tuple[str, int, str]] = []

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.inner, name)
        if name not in CALLS:
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            self.counts[name] += 1
            fault = self.script.get((name, self.counts[name]))
            if fault:
                self.done.append((name, self.counts[name], fault))
            if fault == "stale-read":
                return self.stale
            if name in WRITES:
                self.stale = self.inner.read_endpoint(args[0])
            if fault == "lost-response":
                attribute(*args, **kwargs)
            if fault:
                raise TransientError(f"{name}: {fault}", retry_after=1.0, operation=name)
            return attribute(*args, **kwargs)

        return call
