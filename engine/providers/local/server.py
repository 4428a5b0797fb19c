"""The local backend's data plane: one aiohttp server per state directory, on loopback.

It follows the control plane (`store.py`) by polling the state file, provisions one worker
process per deployment (`worker.py`) and records each outcome as the deployment's state, routes
`POST /endpoints/{endpoint}/score` by the endpoint's traffic with mirroring and the
`azureml-model-deployment` header, and logs every request for the `local` gate source
(`requestlog.py`). Status codes follow Azure ML's troubleshooting guide for online endpoints:

  401 missing or wrong key          404 unknown endpoint or deployment, or no live traffic
  400 malformed JSON or header      408 no answer within the request timeout (5 s default)
  413 body over the size limit      429 too many requests queued for one deployment
  502 run() raised or the worker died while scoring
  503 the deployment has no ready worker (provisioning, failed or restarting)

408 and 404-without-traffic are what managed endpoints answer. When run() raises, a managed
endpoint answers 424 and puts the model's 500 in `ms-azureml-model-error-statuscode`, while
Kubernetes endpoints answer 502; 502 is used here so that a failing model counts as a server
error (5xx) for the `error_rate` gate without a second status column. Azure publishes no
request-size limit (only a bandwidth quota); 1.5 MiB keeps a request in memory cheap and is
far above a tabular scoring payload. A worker
that exits after it was ready is restarted, as Azure restarts a crashed container; more than
MAX_RESTARTS exits within RESTART_WINDOW_S mark the deployment Failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import hmac
import json
import logging
import os
import random
import secrets
import signal
import socket
import sys
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web
from filelock import FileLock, Timeout

from engine.errors import PermanentError
from engine.live import ProvisioningState
from engine.names import is_valid_name
from engine.providers.local.address import (
    DEPLOYMENT_HEADER,
    SERVER_FILE,
    SERVER_LOCK,
    read_server_file,
)
from engine.providers.local.forward import WorkerConnections, WorkerLost, WorkerUnreachable
from engine.providers.local.requestlog import UNROUTED, RequestLog
from engine.providers.local.store import (
    KEYS_FILE,
    STATE_FILE,
    ControlPlane,
    EndpointRecord,
    endpoint_from_json,
)
from engine.providers.local.worker import SCORE_PATH, TOKEN_HEADER, describe_error, error_body

log = logging.getLogger("engine.providers.local.server")

MAX_RESTARTS = 5
RESTART_WINDOW_S = 60.0
RESTART_DELAY_S = 0.5


@dataclass(frozen=True)
class ServerSettings:
    request_timeout_s: float = 5.0  # Azure's request_timeout_ms default
    client_timeout_s: float = 10.0  # a client that has not sent its body by then is dropped
    max_body_bytes: int = 1536 * 1024
    max_pending: int = 256  # queued + running per deployment; beyond it, 429
    max_mirror_in_flight: int = 32  # mirror copies beyond it are shed and counted
    poll_interval_s: float = 0.1
    flush_interval_s: float = 0.2
    sample_interval_s: float = 1.0
    startup_timeout_s: float = 120.0


# ---- routing (pure) --------------------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    """One endpoint as the data plane applies it, rebuilt whenever the control plane changes."""

    name: str
    revision: str
    key: bytes
    deployments: dict[str, str]  # name -> provisioning state (with its error when failed)
    traffic: tuple[tuple[str, int], ...]  # (deployment, cumulative upper bound), bounds end at 100
    mirror: tuple[str, int] | None


def build_route(record: EndpointRecord, key: str) -> Route:
    cumulative, total = [], 0
    for name, share in sorted(record.traffic.items()):
        total += share
        cumulative.append((name, total))
    mirror = next(iter(sorted(record.mirror.items())), None)
    states = {
        name: f"{dep.state}: {dep.error}" if dep.error else dep.state
        for name, dep in record.deployments.items()
    }
    return Route(record.name, record.revision, key.encode(), states, tuple(cumulative), mirror)


def pick_deployment(traffic: tuple[tuple[str, int], ...], roll: int) -> str | None:
    """The deployment whose share holds `roll` (0..99); None without live traffic."""
    for name, bound in traffic:
        if roll < bound:
            return name
    return None


def bearer_key(header: str | None) -> bytes:
    scheme, _, value = (header or "").partition(" ")
    if scheme.lower() != "bearer":
        return b""
    # A key is ASCII; anything else cannot match and is simply not a key.
    return value.strip().encode("ascii", errors="replace")


# ---- worker processes ------------------------------------------------------------------------


@dataclass
class WorkerSlot:
    endpoint: str
    deployment: str
    uid: str
    model_name: str
    model_version: str
    model_dir: str
    token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    status: str = "starting"  # starting | ready | restarting | failed
    reason: str = ""
    process: asyncio.subprocess.Process | None = None
    port: int | None = None
    pending: int = 0
    exits: deque = field(default_factory=deque)
    task: asyncio.Task | None = None
    last_cpu: tuple[float, int] | None = None  # (monotonic time, cpu ticks)

    @property
    def key(self) -> tuple[str, str]:
        return (self.endpoint, self.deployment)


MAX_LOG_BYTES = 8 * 1024 * 1024


def rotate_log(path: Path) -> None:
    """Keep one older copy of a log that has grown past MAX_LOG_BYTES: a chatty model or a
    long-lived server must not fill the disk."""
    try:
        if path.stat().st_size > MAX_LOG_BYTES:
            os.replace(path, path.with_name(path.name + ".1"))
    except FileNotFoundError:
        pass


def _tail(path: Path, limit: int = 200) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1][:limit] if lines else ""


class WorkerPool:
    """Keeps one worker per live deployment and writes provisioning outcomes back."""

    def __init__(self, home: Path, control: ControlPlane, settings: ServerSettings):
        self.home = home
        self.control = control
        self.settings = settings
        self.slots: dict[tuple[str, str], WorkerSlot] = {}

    def ready(self, endpoint: str, deployment: str) -> WorkerSlot | None:
        slot = self.slots.get((endpoint, deployment))
        return slot if slot is not None and slot.status == "ready" else None

    def describe(self, endpoint: str, deployment: str) -> str:
        slot = self.slots.get((endpoint, deployment))
        if slot is None:
            return "it has no worker"
        return f"its worker is {slot.status}" + (f" ({slot.reason})" if slot.reason else "")

    async def reconcile(self, endpoints: dict[str, EndpointRecord]) -> None:
        wanted = {
            (ep.name, dep.name): dep
            for ep in endpoints.values()
            for dep in ep.deployments.values()
            if dep.state != ProvisioningState.FAILED.value
        }
        for key, slot in list(self.slots.items()):
            if key not in wanted or wanted[key].uid != slot.uid:
                await self.stop(slot)
        for key, dep in wanted.items():
            if key not in self.slots:
                slot = WorkerSlot(
                    key[0], dep.name, dep.uid, dep.model_name, dep.model_version, dep.model_dir
                )
                self.slots[key] = slot
                slot.task = asyncio.create_task(self._supervise(slot))

    async def stop(self, slot: WorkerSlot) -> None:
        self.slots.pop(slot.key, None)
        if slot.task is not None:
            slot.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await slot.task
        await _terminate(slot.process)
        log.info("worker stopped endpoint=%s deployment=%s", slot.endpoint, slot.deployment)

    async def stop_all(self) -> None:
        await asyncio.gather(*(self.stop(slot) for slot in list(self.slots.values())))

    async def _supervise(self, slot: WorkerSlot) -> None:
        try:
            await self._supervise_loop(slot)
        except Exception as exc:  # a deployment left in Creating for ever is worse than Failed
            log.exception("supervising deployment %s failed", slot.deployment)
            await self._fail(
                slot, f"the local server lost track of the worker: {describe_error(exc)}"
            )
        finally:
            await _terminate(slot.process)

    async def _supervise_loop(self, slot: WorkerSlot) -> None:
        while True:
            failure = await self._start(slot)
            if failure:
                await self._fail(slot, failure)
                return
            slot.status, slot.reason = "ready", ""
            log.info(
                "worker ready endpoint=%s deployment=%s pid=%s",
                slot.endpoint,
                slot.deployment,
                slot.process.pid,
            )
            await self._record(slot, ProvisioningState.SUCCEEDED, "")

            code = await slot.process.wait()
            slot.status, slot.port, slot.last_cpu = "restarting", None, None
            now = time.monotonic()
            slot.exits.append(now)
            while slot.exits and now - slot.exits[0] > RESTART_WINDOW_S:
                slot.exits.popleft()
            log.warning(
                "worker exited endpoint=%s deployment=%s code=%s",
                slot.endpoint,
                slot.deployment,
                code,
            )
            if len(slot.exits) > MAX_RESTARTS:
                await self._fail(
                    slot,
                    f"the worker exited {len(slot.exits)} times within {RESTART_WINDOW_S:.0f} s "
                    f"(last exit code {code})",
                )
                return
            slot.reason = f"restarting after exit code {code}"
            await asyncio.sleep(RESTART_DELAY_S)

    async def _fail(self, slot: WorkerSlot, reason: str) -> None:
        slot.status, slot.reason, slot.port = "failed", reason, None
        log.warning(
            "deployment failed endpoint=%s deployment=%s reason=%s",
            slot.endpoint,
            slot.deployment,
            reason,
        )
        await self._record(slot, ProvisioningState.FAILED, reason)

    async def _record(self, slot: WorkerSlot, state: ProvisioningState, error: str) -> None:
        try:
            await asyncio.to_thread(
                self.control.set_deployment_state,
                slot.endpoint,
                slot.deployment,
                slot.uid,
                state,
                error,
            )
        except Exception:  # the state file is retried on the next outcome; serving goes on
            log.exception("could not record state of deployment %s", slot.deployment)

    async def _start(self, slot: WorkerSlot) -> str:
        """Start the worker and wait until it is ready; the failure reason, or ''."""
        log_path = self.home / "workers" / slot.endpoint / f"{slot.deployment}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        rotate_log(log_path)
        command = [
            sys.executable,
            "-m",
            "engine.providers.local.worker",
            "--home",
            str(self.home),
            "--model-name",
            slot.model_name,
            "--model-version",
            slot.model_version,
            "--model-dir",
            slot.model_dir,
        ]
        try:
            with log_path.open("ab") as stderr:
                process = await asyncio.create_subprocess_exec(
                    *command,
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=stderr,
                    cwd=slot.model_dir,
                )
        except OSError as exc:
            return f"could not start the worker in {slot.model_dir}: {exc.strerror or exc}"
        slot.process = process
        # A worker that died at once has closed its stdin; its exit code tells the story below.
        with contextlib.suppress(ConnectionError):
            process.stdin.write(slot.token.encode() + b"\n")
            await process.stdin.drain()
        try:
            line = await asyncio.wait_for(
                process.stdout.readline(), self.settings.startup_timeout_s
            )
        except TimeoutError:
            await _terminate(process)
            return f"init() did not finish within {self.settings.startup_timeout_s:.0f} s"
        message = _parse_announcement(line)
        if message.get("event") == "ready":
            slot.port = int(message["port"])
            return ""
        code = await process.wait()
        if message.get("event") == "failed":
            return str(message.get("reason", "unknown reason"))[:500]
        last = _tail(log_path)
        return f"the worker exited with code {code} before it was ready" + (
            f": {last}" if last else ""
        )


def _parse_announcement(line: bytes) -> dict[str, Any]:
    try:
        message = json.loads(line)
    except ValueError:
        return {}
    return message if isinstance(message, dict) else {}


async def _terminate(process: asyncio.subprocess.Process | None) -> None:
    if process is None or process.returncode is not None:
        return
    if process.stdin is not None:
        process.stdin.close()
    with contextlib.suppress(ProcessLookupError):
        process.terminate()
    try:
        await asyncio.wait_for(process.wait(), 3.0)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()


# ---- resource samples ------------------------------------------------------------------------


def read_cpu_ticks(pid: int) -> int:
    """utime + stime of a process, in clock ticks, from /proc/<pid>/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # the command name may hold spaces
    return int(fields[11]) + int(fields[12])


def read_memory_percent(pid: int) -> float:
    resident_pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    total_kib = next(
        int(line.split()[1])
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal:")
    )
    return 100.0 * resident_pages * os.sysconf("SC_PAGE_SIZE") / (total_kib * 1024)


def cpu_percent(ticks: int, seconds: float, cpus: int, hz: int) -> float:
    """CPU used over `seconds`, as a percent of the whole machine (as Azure reports it)."""
    if seconds <= 0:
        return 0.0
    return min(100.0, 100.0 * ticks / hz / seconds / max(1, cpus))


# ---- the server ------------------------------------------------------------------------------


def _reply(status: int, message: str) -> web.Response:
    return web.Response(status=status, body=error_body(message), content_type="application/json")


def _too_large(limit: int) -> web.Response:
    return _reply(413, f"the request body is over the {limit // 1024} KiB limit")


class LocalServer:
    def __init__(self, home: Path, settings: ServerSettings | None = None):
        self.home = Path(home)
        self.settings = settings or ServerSettings()
        self.control = ControlPlane(self.home)
        self.requests = RequestLog(self.home)
        self.pool = WorkerPool(self.home, self.control, self.settings)
        self.routes: dict[str, Route] = {}
        self.generation = -1
        self.mirror_in_flight = 0
        self.mirror_shed = 0
        self._mirror_tasks: set[asyncio.Task] = set()
        self._file_ids: tuple = ()
        # No pool-wide connection limit: a slow deployment holding connections must not make
        # requests to the others wait. `max_pending` bounds each deployment instead.
        self._workers = WorkerConnections()
        self._background: list[asyncio.Task] = []

    # -- application

    def app(self) -> web.Application:
        app = web.Application(
            client_max_size=self.settings.max_body_bytes, middlewares=[self._never_500]
        )
        app.router.add_post("/endpoints/{endpoint}/score", self.score)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/_state", self.state)
        app.on_startup.append(self._on_startup)
        app.on_cleanup.append(self._on_cleanup)
        return app

    async def _on_startup(self, _app: web.Application) -> None:
        await self.refresh()
        for loop_body, interval in (
            (self.refresh, self.settings.poll_interval_s),
            (self._flush, self.settings.flush_interval_s),
            (self._sample, self.settings.sample_interval_s),
        ):
            self._background.append(asyncio.create_task(_every(interval, loop_body)))

    async def _on_cleanup(self, _app: web.Application) -> None:
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        for task in list(self._mirror_tasks):
            task.cancel()
        await asyncio.gather(*self._mirror_tasks, return_exceptions=True)
        await self.pool.stop_all()
        self._workers.close()
        await asyncio.to_thread(self.requests.flush)

    @web.middleware
    async def _never_500(self, request: web.Request, handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException:
            raise
        except Exception as error:
            # The exception's text may quote the request (a key, a payload): log its type and
            # where it was raised, never its message.
            where = _raised_at(error)
            log.error(
                "unexpected %s while answering %s %s at %s",
                type(error).__name__,
                request.method,
                request.path,
                where,
            )
            return _reply(502, "the local server could not handle this request; see server.log")

    # -- following the control plane

    def _current_file_ids(self) -> tuple:
        ids = []
        for name in (STATE_FILE, KEYS_FILE):
            try:
                st = os.stat(self.home / name)
                ids.append((st.st_ino, st.st_mtime_ns, st.st_size))
            except FileNotFoundError:
                ids.append(None)
        return tuple(ids)

    async def refresh(self) -> None:
        ids = self._current_file_ids()
        if ids == self._file_ids:
            return
        state, keys = await asyncio.to_thread(self._load)
        endpoints = {n: endpoint_from_json(e) for n, e in state["endpoints"].items()}
        self.routes = {
            name: build_route(record, keys[name])
            for name, record in endpoints.items()
            if name in keys
        }
        self._file_ids = ids
        self.generation = state.get("generation", 0)
        await self.pool.reconcile(endpoints)
        keep = {(e, d) for e, record in endpoints.items() for d in (*record.deployments, UNROUTED)}
        await asyncio.to_thread(self.requests.remove_logs_except, keep)

    def _load(self) -> tuple[dict[str, Any], dict[str, str]]:
        state = self.control.load()
        try:
            keys = json.loads((self.home / KEYS_FILE).read_text())
        except FileNotFoundError:
            keys = {}
        return state, keys

    async def _flush(self) -> None:
        await asyncio.to_thread(self.requests.flush)

    async def _sample(self) -> None:
        self._workers.prune()
        hz, cpus = os.sysconf("SC_CLK_TCK"), os.cpu_count() or 1
        for slot in list(self.pool.slots.values()):
            if slot.status != "ready" or slot.process is None:
                continue
            try:
                ticks = read_cpu_ticks(slot.process.pid)
                memory = read_memory_percent(slot.process.pid)
            except (OSError, ValueError, IndexError, StopIteration):
                continue  # the worker just exited; the supervisor deals with it
            now = time.monotonic()
            if slot.last_cpu is not None:
                seconds = now - slot.last_cpu[0]
                cpu = cpu_percent(ticks - slot.last_cpu[1], seconds, cpus, hz)
                self.requests.record_usage(slot.endpoint, slot.deployment, cpu, memory)
            slot.last_cpu = (now, ticks)

    # -- handlers

    async def healthz(self, _request: web.Request) -> web.Response:
        starting = sum(s.status in ("starting", "restarting") for s in self.pool.slots.values())
        return web.json_response(
            {"status": "ok", "pid": os.getpid(), "home": str(self.home), "starting": starting}
        )

    async def state(self, request: web.Request) -> web.Response:
        if request.remote not in ("127.0.0.1", "::1"):
            raise web.HTTPNotFound()
        workers = {
            f"{s.endpoint}/{s.deployment}": {
                "status": s.status,
                "reason": s.reason,
                "pid": s.process.pid if s.process else None,
                "pending": s.pending,
                "uid": s.uid,
            }
            for s in self.pool.slots.values()
        }
        return web.json_response(
            {
                "generation": self.generation,
                "endpoints": {n: {"revision": r.revision} for n, r in self.routes.items()},
                "workers": workers,
                "mirror_in_flight": self.mirror_in_flight,
                "mirror_shed": self.mirror_shed,
                "log_dropped": self.requests.dropped,
            }
        )

    async def score(self, request: web.Request) -> web.Response:
        started = time.monotonic()
        endpoint = request.match_info["endpoint"]
        route = self.routes.get(endpoint)
        if route is None:  # not logged: each made-up name would get a log file of its own
            return _reply(404, f"endpoint {endpoint} does not exist on this local server")
        response, deployment = await self._score(request, route, started)
        latency_ms = (time.monotonic() - started) * 1000.0
        self.requests.record(endpoint, deployment, response.status, latency_ms)
        return response

    async def _score(
        self, request: web.Request, route: Route, started: float
    ) -> tuple[web.Response, str | None]:
        """The response, and the deployment it is charged to (None before one is chosen)."""
        if not hmac.compare_digest(bearer_key(request.headers.get("Authorization")), route.key):
            return _reply(
                401, "missing or wrong key: send Authorization: Bearer <endpoint key>"
            ), None

        named = request.headers.get(DEPLOYMENT_HEADER)
        if named is not None:
            if not is_valid_name(named):
                return _reply(
                    400, f"header {DEPLOYMENT_HEADER} does not hold a deployment name"
                ), None
            if named not in route.deployments:
                return _reply(404, f"endpoint {route.name} has no deployment {named}"), None

        body, refusal = await self._read_body(request)
        if refusal is not None:
            return refusal, None

        deployment = named or pick_deployment(route.traffic, random.randrange(100))
        if deployment is None:
            return _reply(
                404,
                f"endpoint {route.name} has no deployment with live traffic; set its traffic or "
                f"name a deployment in the {DEPLOYMENT_HEADER} header",
            ), None
        if named is None and route.mirror and random.randrange(100) < route.mirror[1]:
            self._mirror(route, route.mirror[0], body)
        status, payload = await self._forward(route, deployment, body, started)
        response = web.Response(
            status=status,
            body=payload,
            content_type="application/json",
            headers={DEPLOYMENT_HEADER: deployment},
        )
        return response, deployment

    async def _read_body(self, request: web.Request) -> tuple[bytes, web.Response | None]:
        limit = self.settings.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            return b"", _too_large(limit)
        try:
            async with asyncio.timeout(self.settings.client_timeout_s):
                body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return b"", _too_large(limit)
        except TimeoutError:
            return b"", _reply(
                408, f"the request body did not arrive within {self.settings.client_timeout_s:g} s"
            )
        try:
            json.loads(body)
        except (ValueError, RecursionError):  # nesting deeper than the parser goes is bad JSON
            return b"", _reply(400, "the request body is not valid JSON")
        return body, None

    async def _forward(
        self, route: Route, deployment: str, body: bytes, started: float
    ) -> tuple[int, bytes]:
        slot = self.pool.ready(route.name, deployment)
        if slot is None:
            state = route.deployments.get(deployment, "deleted")
            message = (
                f"deployment {deployment} of endpoint {route.name} is not ready: state {state}, "
                f"{self.pool.describe(route.name, deployment)}"
            )
            return 503, error_body(message)
        if slot.pending >= self.settings.max_pending:
            message = f"deployment {deployment} has {slot.pending} requests queued; try again later"
            return 429, error_body(message)
        remaining = self.settings.request_timeout_s - (time.monotonic() - started)
        slot.pending += 1
        try:
            async with asyncio.timeout(max(remaining, 0.001)):
                return await self._workers.post(
                    slot.port, SCORE_PATH, {TOKEN_HEADER: slot.token}, body
                )
        except TimeoutError:
            message = (
                f"deployment {deployment} did not answer within "
                f"{self.settings.request_timeout_s:g} s (request_timeout_ms)"
            )
            return 408, error_body(message)
        except WorkerUnreachable:
            message = f"deployment {deployment} is not ready: its worker is not accepting requests"
            return 503, error_body(message)
        except WorkerLost:
            message = f"the worker of deployment {deployment} exited while scoring"
            return 502, error_body(message)
        finally:
            slot.pending -= 1

    def _mirror(self, route: Route, deployment: str, body: bytes) -> None:
        """Send a copy in the background; its answer is logged and dropped. Shed under load."""
        if self.mirror_in_flight >= self.settings.max_mirror_in_flight:
            self.mirror_shed += 1
            return
        self.mirror_in_flight += 1

        async def copy() -> None:
            started = time.monotonic()
            try:
                status, _ = await self._forward(route, deployment, body, started)
                latency_ms = (time.monotonic() - started) * 1000.0
                self.requests.record(route.name, deployment, status, latency_ms, mirrored=True)
            finally:
                self.mirror_in_flight -= 1

        task = asyncio.create_task(copy())
        self._mirror_tasks.add(task)
        task.add_done_callback(self._mirror_tasks.discard)


async def _every(interval: float, body) -> None:
    while True:
        try:
            await body()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("background task %s failed; retrying", getattr(body, "__name__", body))
        await asyncio.sleep(interval)


# ---- running it ------------------------------------------------------------------------------


def _raised_at(error: BaseException) -> str:
    frames = traceback.extract_tb(error.__traceback__)
    return f"{Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else "?"


class RedactProtocolErrors(logging.Filter):
    """aiohttp logs a malformed request with the offending bytes, which can hold the endpoint
    key (an oversized Authorization header) or a payload (an oversized query string). Keep the
    fact and the error type; drop the bytes."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            name = type(record.exc_info[1]).__name__
            record.msg = f"rejected a malformed request ({name})"
            record.args = ()
            record.exc_info = None
            record.exc_text = None
        return True


def quiet_aiohttp_loggers() -> None:
    for name in ("aiohttp.server", "aiohttp.web", "aiohttp.access", "aiohttp.internal"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactProtocolErrors) for f in logger.filters):
            logger.addFilter(RedactProtocolErrors())


def server_url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


async def _run(home: Path, host: str, port: int, settings: ServerSettings, on_ready) -> None:
    quiet_aiohttp_loggers()
    server = LocalServer(home, settings)
    runner = web.AppRunner(server.app(), access_log=None)
    await runner.setup()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        await runner.cleanup()
        raise PermanentError(
            f"cannot serve {home} on {host}:{port}: {exc.strerror}; choose another --port",
            operation="serve",
        ) from None
    await web.SockSite(runner, sock).start()
    # What start-up built lives as long as the process: set it aside from the cyclic garbage
    # collector, whose full passes over it would otherwise pause a request now and then.
    gc.collect()
    gc.freeze()
    bound_port = sock.getsockname()[1]
    url = server_url(host, bound_port)
    record = {
        "pid": os.getpid(),
        "host": host,
        "port": bound_port,
        "url": url,
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    (home / SERVER_FILE).write_text(json.dumps(record, indent=1) + "\n")
    log.info("serving home=%s url=%s pid=%s", home, url, os.getpid())
    on_ready(url)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        log.info("stopping home=%s", home)
        await runner.cleanup()
        with contextlib.suppress(FileNotFoundError):
            if read_server_file(home) == record:
                (home / SERVER_FILE).unlink()


def serve(
    home: Path,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    settings: ServerSettings | None = None,
    on_ready=None,
) -> None:
    """Serve `home` until SIGTERM or SIGINT. One server per home: a second one is refused."""
    home = Path(home).resolve()
    home.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(home / SERVER_LOCK), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        running = read_server_file(home) or {}
        raise PermanentError(
            f"a local server for {home} already runs (pid {running.get('pid', '?')}, "
            f"{running.get('url', 'address unknown')}); use it, or stop it first",
            operation="serve",
        ) from None
    try:
        asyncio.run(
            _run(home, host, port, settings or ServerSettings(), on_ready or (lambda _u: None))
        )
    finally:
        lock.release()


def _detach_and_serve(home: Path, host: str, port: int, settings: ServerSettings) -> int:
    """Fork a server into the background; return once it serves (0) or failed to start (1)."""
    read_end, write_end = os.pipe()
    if os.fork() > 0:
        os.close(write_end)
        with os.fdopen(read_end) as pipe:
            message = pipe.read().strip()
        if message.startswith("ready "):
            print(message.removeprefix("ready "))
            return 0
        print(message or "the local server exited before it was ready", file=sys.stderr)
        return 1

    os.close(read_end)
    os.setsid()
    home.mkdir(parents=True, exist_ok=True)
    rotate_log(home / "server.log")
    log_fd = os.open(home / "server.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    null_fd = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null_fd, 0)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    report = os.fdopen(write_end, "w")

    def on_ready(url: str) -> None:
        report.write(f"ready {url}\n")
        report.close()

    try:
        serve(home, host, port, settings=settings, on_ready=on_ready)
    except BaseException as exc:
        if not isinstance(exc, PermanentError):
            log.exception("the local server stopped on an unexpected error")
        if not report.closed:
            report.write(str(exc) or type(exc).__name__)
            report.close()
        os._exit(1)
    os._exit(0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.providers.local.server")
    parser.add_argument("--home", required=True, type=Path)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--request-timeout", type=float, default=ServerSettings.request_timeout_s)
    parser.add_argument("--detach", action="store_true", help="serve in the background")
    args = parser.parse_args(argv)
    settings = ServerSettings(request_timeout_s=args.request_timeout)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    home = args.home.resolve()
    if args.detach:
        return _detach_and_serve(home, args.host, args.port, settings)
    try:
        serve(
            home,
            args.host,
            args.port,
            settings=settings,
            on_ready=lambda url: print(url, flush=True),
        )
    except PermanentError as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
