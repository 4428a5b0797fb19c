"""`LocalProvider`: the engine's provider interface over the embedded local backend.

Control-plane calls go to the store in `<home>` (`store.py`); provisioning and scoring are the
server's (`server.py`), which this provider starts in the background when none runs for the
home. Calls to the server use `http.client` on loopback directly, so no proxy setting can send
them, or the endpoint key they carry, anywhere else. The key is never logged.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from filelock import FileLock, Timeout

from engine.errors import PermanentError, TransientError
from engine.live import (
    DeploymentRequest,
    EndpointWrite,
    InvokeResult,
    LiveDeployment,
    LiveEndpoint,
    ProvisioningState,
)
from engine.names import is_valid_name
from engine.providers.base import STATE_TAG_PREFIX
from engine.providers.local.address import (
    DEPLOYMENT_HEADER,
    SERVER_FILE,
    SERVER_LOCK,
    read_server_file,
)
from engine.providers.local.store import (
    CODE_BAD_TAGS,
    CODE_INVALID_NAME,
    CODE_NOT_FOUND,
    ControlPlane,
    DeploymentRecord,
    EndpointRecord,
    check_name,
    new_uid,
)
from engine.registry import RegistryError, resolve

if TYPE_CHECKING:
    from engine.providers.local.source import LocalSource

log = logging.getLogger("engine.providers.local")

START_TIMEOUT_S = 30.0
ROUTING_TIMEOUT_S = 3.0
CLIENT_TIMEOUT_S = 30.0  # above the server's own request timeout, which answers 408 first
POLL_S = 0.05


class LocalProvider:
    name = "local"

    def __init__(self, home: Path, *, request_timeout_s: float | None = None):
        """`request_timeout_s` applies to a server this provider starts (5 s when left out)."""
        self.home = Path(home).resolve()
        self.control = ControlPlane(self.home)
        self.request_timeout_s = request_timeout_s

    # ---- reads

    def read_endpoint(self, endpoint: str) -> LiveEndpoint:
        record = self.control.read_endpoint(endpoint) if is_valid_name(endpoint) else None
        if record is None:
            return LiveEndpoint(name=endpoint, exists=False)
        server = self._server_address()
        uri = _scoring_url(server, endpoint) if server else ""
        return _live(record, uri)

    def endpoint_key(self, endpoint: str) -> str:
        return self.control.endpoint_key(endpoint)

    def scoring_url(self, endpoint: str) -> str:
        server = self._server_address()
        if server is None:
            raise PermanentError(
                f"no local server runs for {self.home}, so endpoint {endpoint} has no scoring "
                "URL yet; start one with `rollout serve`",
                endpoint=endpoint,
                operation="get scoring URL",
            )
        return _scoring_url(server, endpoint)

    # ---- endpoint writes

    def create_endpoint(self, endpoint: str) -> LiveEndpoint:
        self.control.create_endpoint(endpoint)
        return self.read_endpoint(endpoint)

    def update_endpoint(
        self, endpoint: str, write: EndpointWrite, *, expected_revision: str
    ) -> LiveEndpoint:
        foreign = sorted(k for k in write.tags if not k.startswith(STATE_TAG_PREFIX))
        if foreign:
            raise PermanentError(
                f"cannot update endpoint {endpoint}: the engine writes only tags under "
                f"{STATE_TAG_PREFIX!r} (got {', '.join(foreign)}); nothing was written",
                endpoint=endpoint,
                operation="update endpoint",
                code=CODE_BAD_TAGS,
            )
        record = self.control.update_endpoint(
            endpoint,
            traffic=write.traffic,
            mirror=write.mirror,
            tags=write.tags,
            tag_prefix=STATE_TAG_PREFIX,
            expected_revision=expected_revision,
        )
        # Azure's update returns once the new routing serves; so does this one.
        self._await_server(lambda state: _served_revision(state, endpoint) == record.revision)
        return self.read_endpoint(endpoint)

    # ---- deployments

    def check_deployable(self, request: DeploymentRequest) -> str:
        """'' when `request` could be deployed here; otherwise what is missing and what to do.
        Lets `plan` warn and `apply` refuse before anything is written."""
        try:
            resolve(self.home, request.model_name, request.model_version)
        except RegistryError as exc:
            return (
                f"{exc} (e.g. `python -m training.train --home {self.home}`, which registers "
                "the next version)"
            )
        if not (Path(request.model_dir) / "score.py").is_file():
            return f"{request.model_dir} has no score.py (the scoring script with init() and run())"
        return ""

    def create_deployment(self, endpoint: str, request: DeploymentRequest) -> None:
        operation = "create deployment"
        check_name("deployment", request.name, endpoint=endpoint, operation=operation)
        existing = self.control.read_endpoint(endpoint)
        if existing is not None and request.name in existing.deployments:
            return
        try:
            resolve(self.home, request.model_name, request.model_version)
        except RegistryError as exc:
            raise PermanentError(
                f"cannot create deployment {request.name} on endpoint {endpoint}: {exc}",
                endpoint=endpoint,
                operation=operation,
                code="ModelNotFound",
            ) from exc
        model_dir = Path(request.model_dir).resolve()
        if not (model_dir / "score.py").is_file():
            raise PermanentError(
                f"cannot create deployment {request.name} on endpoint {endpoint}: {model_dir} "
                "has no score.py (the Azure ML scoring script with init() and run())",
                endpoint=endpoint,
                operation=operation,
                code="ScoringScriptNotFound",
            )
        record = DeploymentRecord(
            name=request.name,
            model_name=request.model_name,
            model_version=request.model_version,
            model_dir=str(model_dir),
            uid=new_uid(),
            instance_type=request.instance_type,
            instance_count=request.instance_count,
        )
        if self.control.add_deployment(endpoint, record):
            log.info("deployment created endpoint=%s deployment=%s", endpoint, request.name)
        self.ensure_server()

    def wait_for_deployment(self, endpoint: str, name: str, timeout_s: float) -> LiveEndpoint:
        deadline = time.monotonic() + timeout_s
        self.ensure_server()
        while True:
            live = self.read_endpoint(endpoint)
            deployment = live.deployments.get(name)
            if deployment is None:
                raise PermanentError(
                    f"endpoint {endpoint} has no deployment {name} to wait for",
                    endpoint=endpoint,
                    operation="wait for deployment",
                    code=CODE_NOT_FOUND,
                )
            if deployment.state.is_settled or time.monotonic() >= deadline:
                return live
            time.sleep(POLL_S * 2)

    def delete_deployment(self, endpoint: str, name: str) -> None:
        if not self.control.delete_deployment(endpoint, name):
            return
        log.info("deployment deleted endpoint=%s deployment=%s", endpoint, name)
        # Deleting on Azure ends when the instances are gone; here, when the worker is.
        self._await_server(lambda state: f"{endpoint}/{name}" not in state.get("workers", {}))

    # ---- data plane

    def invoke(self, endpoint: str, deployment: str, body: bytes) -> InvokeResult:
        if not is_valid_name(deployment):
            raise PermanentError(
                f"cannot invoke endpoint {endpoint}: deployment name {deployment!r} is invalid",
                endpoint=endpoint,
                operation="invoke",
                code=CODE_INVALID_NAME,
            )
        self.ensure_server()
        return self.score(endpoint, body, deployment=deployment)

    def score(self, endpoint: str, body: bytes, *, deployment: str | None = None) -> InvokeResult:
        """One request to the endpoint's scoring URL, as its clients send them: split by
        traffic and mirrored, or, naming a deployment, sent there alone."""
        host, port = self.server_address()
        return post_score(
            host, port, endpoint, self.endpoint_key(endpoint), body, deployment=deployment
        )

    def gate_source(self, source: str, workspace_id: str | None) -> LocalSource:
        # Imported here: numpy is only needed once a step's gates are measured.
        from engine.providers.local.source import LocalSource

        if source != LocalSource.name:
            raise PermanentError(
                f"the local provider has no gate source {source!r}: its requests are logged "
                "locally, so use `analysis.source: local`",
                operation="gate source",
                code="UnsupportedSource",
            )
        return LocalSource(self.home)

    # ---- the server process

    def ensure_server(self) -> bool:
        """Start a background server for this home unless one runs; True when one was started."""
        if self._healthy_server() is not None:
            return False
        command = [sys.executable, "-m", "engine.providers.local.server"]
        command += ["--home", str(self.home), "--detach"]
        if self.request_timeout_s is not None:
            command += ["--request-timeout", str(self.request_timeout_s)]
        try:
            done = subprocess.run(
                command, capture_output=True, text=True, timeout=START_TIMEOUT_S, check=False
            )
        except subprocess.TimeoutExpired:
            raise TransientError(
                f"the local server for {self.home} did not start within {START_TIMEOUT_S:.0f} s; "
                f"see {self.home / 'server.log'}",
                retry_after=5.0,
                operation="start server",
            ) from None
        if done.returncode == 0:
            log.info("local server started home=%s url=%s", self.home, done.stdout.strip())
            # Deployments that were serving before come back with their workers; until those
            # are up their state still reads Succeeded, so wait rather than answer 503s.
            self._await_workers(START_TIMEOUT_S)
            return True
        # Another process may have started one at the same moment: that one is as good.
        if self._await_healthy(START_TIMEOUT_S / 3):
            return False
        raise PermanentError(
            f"could not start the local server for {self.home}: {done.stderr.strip()}",
            operation="start server",
        )

    def stop_server(self, timeout_s: float = 10.0) -> bool:
        """Stop this home's server (SIGTERM, then SIGKILL); True when one was running."""
        info = read_server_file(self.home)
        if not self._server_lock_held():
            (self.home / SERVER_FILE).unlink(missing_ok=True)
            return False
        if info is None:
            raise PermanentError(
                f"a local server holds {self.home / SERVER_LOCK} but left no {SERVER_FILE}; "
                "stop it by its process id",
                operation="stop server",
            )
        os.kill(info["pid"], signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while self._server_lock_held():
            if time.monotonic() >= deadline:
                os.kill(info["pid"], signal.SIGKILL)
                deadline = time.monotonic() + timeout_s
            time.sleep(POLL_S)
        return True

    def server_state(self) -> dict[str, Any]:
        """The running server's view: applied revisions, workers and counters."""
        host, port = self.server_address()
        status, body = _request(host, port, "GET", "/_state", timeout=5.0)
        if status != 200:
            raise TransientError(
                f"the local server answered {status} to a state read", operation="read state"
            )
        return json.loads(body)

    def _server_lock_held(self) -> bool:
        lock = FileLock(str(self.home / SERVER_LOCK), timeout=0)
        try:
            lock.acquire()
        except Timeout:
            return True
        lock.release()
        return False

    def _server_address(self) -> tuple[str, int] | None:
        info = read_server_file(self.home)
        if info is None or not _alive(info.get("pid")):
            return None
        return info["host"], info["port"]

    def server_address(self) -> tuple[str, int]:
        """(host, port) of the server running for this home; TransientError when none runs."""
        server = self._server_address()
        if server is None:
            raise TransientError(
                f"the local server for {self.home} is not running; start it with `rollout serve`",
                retry_after=1.0,
                operation="find server",
            )
        return server

    def _healthy_server(self) -> tuple[str, int] | None:
        server = self._server_address()
        if server is None:
            return None
        try:
            status, body = _request(*server, "GET", "/healthz", timeout=2.0)
            health = json.loads(body) if status == 200 else {}
        except (OSError, ValueError):
            return None
        return server if health.get("home") == str(self.home) else None

    def _await_healthy(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._healthy_server() is not None:
                return True
            time.sleep(POLL_S * 4)
        return False

    def _await_workers(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            server = self._server_address()
            if server is None:
                return
            try:
                status, body = _request(*server, "GET", "/healthz", timeout=2.0)
                if status != 200 or not json.loads(body).get("starting"):
                    return
            except (OSError, ValueError):
                return
            time.sleep(POLL_S)

    def _await_server(self, condition) -> None:
        """Wait briefly until the running server's state satisfies `condition`; without a
        server there is nothing to wait for, and a slow one catches up by itself."""
        deadline = time.monotonic() + ROUTING_TIMEOUT_S
        while time.monotonic() < deadline:
            server = self._server_address()
            if server is None:
                return
            try:
                status, body = _request(*server, "GET", "/_state", timeout=1.0)
                if status == 200 and condition(json.loads(body)):
                    return
            except (OSError, ValueError):
                return
            time.sleep(POLL_S)
        log.debug("local server did not confirm a change within %.1f s", ROUTING_TIMEOUT_S)


# ---- helpers ---------------------------------------------------------------------------------


def _live(record: EndpointRecord, scoring_uri: str) -> LiveEndpoint:
    deployments = {
        name: LiveDeployment(
            name=name,
            model_name=dep.model_name,
            model_version=dep.model_version,
            state=ProvisioningState(dep.state),
            error=dep.error,
            instance_type=dep.instance_type,
            instance_count=dep.instance_count,
        )
        for name, dep in record.deployments.items()
    }
    # Like Azure's get(): every deployment appears in traffic, with 0 when it has none.
    traffic = {name: record.traffic.get(name, 0) for name in deployments}
    return LiveEndpoint(
        name=record.name,
        exists=True,
        deployments=deployments,
        traffic=traffic,
        mirror=dict(record.mirror),
        tags=dict(record.tags),
        revision=record.revision,
        scoring_uri=scoring_uri,
    )


def _served_revision(state: dict[str, Any], endpoint: str) -> str | None:
    return state.get("endpoints", {}).get(endpoint, {}).get("revision")


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _scoring_url(server: tuple[str, int], endpoint: str) -> str:
    host, port = server
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{port}/endpoints/{endpoint}/score"


def _request(
    host: str,
    port: int,
    method: str,
    path: str,
    *,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float,
) -> tuple[int, bytes]:
    import http.client  # here: a plan or a read makes no call, and it loads ssl and email

    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def post_score(
    host: str,
    port: int,
    endpoint: str,
    key: str,
    body: bytes,
    *,
    deployment: str | None = None,
    timeout: float = CLIENT_TIMEOUT_S,
) -> InvokeResult:
    """POST one scoring request to a local server, as a client of the endpoint would."""
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    if deployment:
        headers[DEPLOYMENT_HEADER] = deployment
    import http.client

    started = time.perf_counter()
    try:
        status, payload = _request(
            host,
            port,
            "POST",
            f"/endpoints/{endpoint}/score",
            body=body,
            headers=headers,
            timeout=timeout,
        )
    except (OSError, http.client.HTTPException) as exc:
        raise TransientError(
            f"calling endpoint {endpoint} on the local server failed ({type(exc).__name__}); "
            "is the server running?",
            retry_after=1.0,
            endpoint=endpoint,
            operation="invoke",
        ) from exc
    return InvokeResult(status, payload, (time.perf_counter() - started) * 1000.0)
