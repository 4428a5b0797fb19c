"""The `azureml` provider: Azure ML managed online endpoints through azure-ai-ml's `MLClient`.

Sits under the engine at the provider boundary (`engine.providers.base.Provider`). Reads are
normalised by `shapes`, every SDK call runs inside `sdk_quiet()` (no dots on stdout) and
`translated()` (engine errors only), and writes are read-modify-write with `lastModifiedAt` as
the change detector, verified by a re-read, because Azure offers no etag on endpoints.
azure-ai-ml takes about a second to import, so it is imported on first use only.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from engine.durations import format_duration
from engine.errors import ConflictError, PermanentError, TransientError
from engine.live import (
    DeploymentRequest,
    EndpointWrite,
    InvokeResult,
    LiveEndpoint,
)
from engine.names import is_valid_name
from engine.providers.azure import shapes
from engine.providers.azure.errors import translate, translated
from engine.providers.azure.quiet import sdk_quiet
from engine.providers.base import STATE_TAG_PREFIX, GateSource
from engine.spec import Target, Workspace

log = logging.getLogger("engine.providers.azure")

WORKSPACE_ENV = {
    "subscription_id": "AZURE_SUBSCRIPTION_ID",
    "resource_group": "AZURE_RESOURCE_GROUP",
    "name": "AZUREML_WORKSPACE",
}
LOG_ANALYTICS_ENV = "AZURE_LOG_ANALYTICS_WORKSPACE_ID"
# A CPU inference base image Azure ML publishes; the model's conda file is layered on top.
DEFAULT_BASE_IMAGE = "mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu22.04:latest"
DEFAULT_INSTANCE_TYPE = "Standard_DS3_v2"
SCORING_SCRIPT = "score.py"
ENVIRONMENT_FILES = ("environment.yml", "environment.yaml", "conda.yml", "conda.yaml")
DEPLOYMENT_HEADER = "azureml-model-deployment"


@dataclass(frozen=True)
class AzureWorkspace:
    subscription_id: str
    resource_group: str
    name: str

    @property
    def resource_id(self) -> str:
        return (
            f"/subscriptions/{self.subscription_id}/resourceGroups/{self.resource_group}"
            f"/providers/Microsoft.MachineLearningServices/workspaces/{self.name}"
        )

    def endpoint_id(self, endpoint: str) -> str:
        return f"{self.resource_id}/onlineEndpoints/{endpoint}"


def resolve_workspace(
    workspace: Workspace | None, env: Mapping[str, str] | None = None
) -> AzureWorkspace:
    """The manifest's workspace fields, each missing one read from its environment variable."""
    env = os.environ if env is None else env
    values, missing = {}, []
    for field, variable in WORKSPACE_ENV.items():
        value = getattr(workspace, field, None) if workspace else None
        value = value or env.get(variable, "")
        if not value:
            missing.append(f"spec.target.workspace.{field} (or {variable})")
        values[field] = value
    if missing:
        raise PermanentError(
            "the Azure ML workspace is not fully named: set " + ", ".join(missing),
            operation="resolve workspace",
            code="WorkspaceIncomplete",
        )
    return AzureWorkspace(**values)


def find_environment_file(model_dir: Path) -> Path | None:
    return next((model_dir / n for n in ENVIRONMENT_FILES if (model_dir / n).is_file()), None)


class AzureMLProvider:
    """Azure ML managed online endpoints. See `engine.providers.base.Provider` for the contract.

    `credential` and `transport` are for tests (a fake ARM behind azure-core's transport hook);
    `progress` receives one line per report during long operations (default: the log).
    """

    name = "azureml"

    def __init__(
        self,
        workspace: AzureWorkspace,
        *,
        credential: Any = None,
        transport: Any = None,
        progress: Callable[[str], None] | None = None,
        operation_timeout_s: float = 1800.0,
        report_every_s: float = 30.0,
        poll_interval_s: float = 15.0,
        invoke_timeout_s: float = 60.0,
        base_image: str = DEFAULT_BASE_IMAGE,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.workspace = workspace
        self._credential = credential
        self._transport = transport
        self._progress = progress or (lambda line: log.info("%s", line))
        self._operation_timeout_s = operation_timeout_s
        self._report_every_s = report_every_s
        self._poll_interval_s = poll_interval_s
        self._invoke_timeout_s = invoke_timeout_s
        self._base_image = base_image
        self._sleep = sleep
        self._clock = clock
        self._client: Any = None
        self._scoring: Any = None  # our own HTTP client for scoring calls
        self._pending: dict[tuple[str, str], Any] = {}  # deployment creations still polling

    @classmethod
    def from_target(
        cls, target: Target, *, transport: Any = None, credential: Any = None, **options: Any
    ) -> AzureMLProvider:
        return cls(
            resolve_workspace(target.workspace),
            transport=transport,
            credential=credential,
            **options,
        )

    # -- plumbing ---------------------------------------------------------------------------

    @property
    def credential(self) -> Any:
        if self._credential is None:
            from engine.azure_auth import default_credential

            self._credential = default_credential()
        return self._credential

    @property
    def client(self) -> Any:
        if self._client is None:
            from azure.ai.ml import MLClient

            options: dict[str, Any] = {"show_progress": False, "enable_telemetry": False}
            if self._transport is not None:
                options["transport"] = self._transport
            with sdk_quiet():
                self._client = MLClient(
                    self.credential,
                    self.workspace.subscription_id,
                    self.workspace.resource_group,
                    self.workspace.name,
                    **options,
                )
        return self._client

    @contextmanager
    def _call(self, endpoint: str, operation: str) -> Iterator[None]:
        with sdk_quiet(), translated(endpoint=endpoint, operation=operation):
            yield

    def _wait(self, poller: Any, *, endpoint: str, operation: str) -> Any:
        """Wait for a long-running operation, reporting progress; on timeout, a TransientError
        (the operation goes on in Azure, and the next pass sees its state)."""
        started = time.monotonic()
        with self._call(endpoint, operation):
            while True:
                poller.wait(timeout=self._report_every_s)
                if poller.done():
                    return poller.result()
                elapsed = time.monotonic() - started
                self._progress(f"{operation} on {endpoint}: running for {format_duration(elapsed)}")
                if elapsed >= self._operation_timeout_s:
                    raise TransientError(
                        f"{operation} on endpoint {endpoint} still running after "
                        f"{format_duration(elapsed)}; it goes on in Azure, check again later",
                        retry_after=self._poll_interval_s,
                        endpoint=endpoint,
                        operation=operation,
                        code="OperationTimeout",
                    )

    @staticmethod
    def _check_name(kind: str, name: str, endpoint: str, operation: str) -> None:
        # The SDK validates names only after a network call, with a colour-coded message.
        if not is_valid_name(name):
            raise PermanentError(
                f"{operation} on endpoint {endpoint} refused: {kind} name {name!r} must have 3-32 "
                "letters, digits or '-', start with a letter and not end with '-'",
                endpoint=endpoint,
                operation=operation,
                code="InvalidName",
            )

    def _get_endpoint(self, endpoint: str) -> Any | None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            return self.client.online_endpoints.get(endpoint)
        except ResourceNotFoundError:
            return None

    # -- reading ----------------------------------------------------------------------------

    def read_endpoint(self, endpoint: str) -> LiveEndpoint:
        self._check_name("endpoint", endpoint, endpoint, "read endpoint")
        with self._call(endpoint, "read endpoint"):
            found = self._get_endpoint(endpoint)
            if found is None:
                return LiveEndpoint(name=endpoint, exists=False)
            deployments = list(self.client.online_deployments.list(endpoint_name=endpoint))
        return shapes.live_endpoint(found, deployments)

    # -- writing ----------------------------------------------------------------------------

    def create_endpoint(self, endpoint: str) -> LiveEndpoint:
        self._check_name("endpoint", endpoint, endpoint, "create endpoint")
        live = self.read_endpoint(endpoint)
        if live.exists:
            return live
        from azure.ai.ml.entities import ManagedOnlineEndpoint

        body = ManagedOnlineEndpoint(
            name=endpoint, auth_mode="key", description="Managed by saferollout"
        )
        with self._call(endpoint, "create endpoint"):
            poller = self.client.online_endpoints.begin_create_or_update(body)
        self._wait(poller, endpoint=endpoint, operation="create endpoint")
        self._progress(f"endpoint {endpoint}: created")
        return self.read_endpoint(endpoint)

    def update_endpoint(
        self, endpoint: str, write: EndpointWrite, *, expected_revision: str
    ) -> LiveEndpoint:
        operation = "update endpoint"
        problems = shapes.tag_problems(write.tags)
        if problems:
            raise PermanentError(
                f"{operation} on endpoint {endpoint} refused: " + "; ".join(problems),
                endpoint=endpoint,
                operation=operation,
                code="InvalidTags",
            )
        with self._call(endpoint, operation):
            fresh = self._get_endpoint(endpoint)
            if fresh is None:
                raise PermanentError(
                    f"{operation} on endpoint {endpoint} failed: the endpoint does not exist",
                    endpoint=endpoint,
                    operation=operation,
                    code="EndpointNotFound",
                )
            revision = shapes.revision_of(fresh)
            if revision != expected_revision:
                raise ConflictError(
                    f"endpoint {endpoint} changed since it was read (last modified {revision}, "
                    f"expected {expected_revision or 'none'}); nothing was written: read it "
                    "again and re-plan",
                    endpoint=endpoint,
                    operation=operation,
                    code="RevisionChanged",
                )
            others = {
                str(k): str(v)
                for k, v in (fresh.tags or {}).items()
                if not str(k).startswith(STATE_TAG_PREFIX)
            }
            shapes.apply_write(fresh, write)
            if len(fresh.tags) > shapes.MAX_TAGS:
                raise PermanentError(
                    f"{operation} on endpoint {endpoint} refused: {len(fresh.tags)} tags, Azure "
                    f"keeps {shapes.MAX_TAGS} ({len(others)} of them not the engine's)",
                    endpoint=endpoint,
                    operation=operation,
                    code="TooManyTags",
                )
            poller = self.client.online_endpoints.begin_create_or_update(fresh)
        self._wait(poller, endpoint=endpoint, operation=operation)
        return self._verify(endpoint, write, others)

    def _verify(self, endpoint: str, write: EndpointWrite, others: dict[str, str]) -> LiveEndpoint:
        """Re-read and compare: the only defence against a concurrent writer without an etag."""
        live = self.read_endpoint(endpoint)
        problems = shapes.unapplied_changes(write, others, live)
        if problems:
            message = (
                f"update endpoint on endpoint {endpoint}: the write was accepted but a re-read "
                f"shows otherwise: {'; '.join(problems)}. Another writer may have changed the "
                "endpoint at the same time; nothing further was done"
            )
            log.error("%s", message)
            raise PermanentError(
                message, endpoint=endpoint, operation="verify update", code="WriteNotApplied"
            )
        log.info(
            "endpoint %s: updated traffic=%s mirror=%s",
            endpoint,
            live.live_traffic(),
            live.live_mirror(),
        )
        return live

    def create_deployment(self, endpoint: str, request: DeploymentRequest) -> None:
        operation = "create deployment"
        name = request.name.lower()
        self._check_name("deployment", name, endpoint, operation)
        model_dir = Path(request.model_dir)
        environment_file = find_environment_file(model_dir)
        if not (model_dir / SCORING_SCRIPT).is_file() or environment_file is None:
            raise PermanentError(
                f"{operation} {name} on endpoint {endpoint} refused: {model_dir} needs "
                f"{SCORING_SCRIPT} and one of {', '.join(ENVIRONMENT_FILES)}",
                endpoint=endpoint,
                operation=operation,
                code="ModelFolderIncomplete",
            )
        from azure.ai.ml.entities import CodeConfiguration, Environment, ManagedOnlineDeployment
        from azure.core.exceptions import ResourceNotFoundError

        with self._call(endpoint, operation):
            try:
                self.client.online_deployments.get(name=name, endpoint_name=endpoint)
                log.info("endpoint %s: deployment %s already exists, adopted", endpoint, name)
                return
            except ResourceNotFoundError:
                pass
            self._check_model(endpoint, request.model_name, request.model_version)
            deployment = ManagedOnlineDeployment(
                name=name,
                endpoint_name=endpoint,
                model=f"azureml:{request.model_name}:{request.model_version}",
                code_configuration=CodeConfiguration(
                    code=str(model_dir), scoring_script=SCORING_SCRIPT
                ),
                environment=Environment(conda_file=str(environment_file), image=self._base_image),
                instance_type=request.instance_type or DEFAULT_INSTANCE_TYPE,
                instance_count=request.instance_count or 1,
                tags={f"{STATE_TAG_PREFIX}model": f"{request.model_name}:{request.model_version}"},
            )
            poller = self.client.online_deployments.begin_create_or_update(deployment)
        # The poller's thread goes on polling; its dots are muted, its outcome read on waiting.
        self._pending[(endpoint, name)] = poller
        self._progress(f"endpoint {endpoint}: creating deployment {name}")

    def _check_model(self, endpoint: str, model_name: str, version: str) -> None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            self.client.models.get(name=model_name, version=version)
        except ResourceNotFoundError:
            raise PermanentError(
                f"create deployment on endpoint {endpoint} refused: model {model_name} version "
                f"{version} is not registered in workspace {self.workspace.name}; register it "
                "first (training --register azureml)",
                endpoint=endpoint,
                operation="check model",
                code="ModelNotFound",
            ) from None

    def wait_for_deployment(self, endpoint: str, name: str, timeout_s: float) -> LiveEndpoint:
        name = name.lower()
        started = self._clock()
        last_report = started
        while True:
            live = self.read_endpoint(endpoint)
            deployment = live.deployments.get(name)
            if deployment is None:
                raise PermanentError(
                    f"wait for deployment on endpoint {endpoint}: deployment {name} does not exist",
                    endpoint=endpoint,
                    operation="wait for deployment",
                    code="DeploymentNotFound",
                )
            if deployment.state.is_settled:
                return self._with_failure_reason(live, endpoint, name)
            now = self._clock()
            if now - started >= timeout_s:
                self._progress(
                    f"endpoint {endpoint}: deployment {name} still {deployment.state.value} "
                    f"after {format_duration(now - started)}; it goes on in Azure"
                )
                return live
            if now - last_report >= self._report_every_s:
                self._progress(
                    f"endpoint {endpoint}: deployment {name} {deployment.state.value} "
                    f"for {format_duration(now - started)}"
                )
                last_report = now
            self._sleep(self._poll_interval_s)

    def _with_failure_reason(self, live: LiveEndpoint, endpoint: str, name: str) -> LiveEndpoint:
        """Attach the failed operation's error code and message, when this run started it."""
        poller = self._pending.pop((endpoint, name), None)
        deployment = live.deployments[name]
        if poller is None or deployment.state.value == "Succeeded":
            return live
        try:
            with sdk_quiet():
                poller.result(timeout=0)
            return live
        except Exception as exc:
            reason = str(translate(exc, endpoint=endpoint, operation="create deployment"))
        deployments = {**live.deployments, name: replace(deployment, error=reason)}
        return replace(live, deployments=deployments)

    def delete_deployment(self, endpoint: str, name: str) -> None:
        operation = "delete deployment"
        name = name.lower()
        live = self.read_endpoint(endpoint)
        if not live.exists or name not in live.deployments:
            return
        if live.live_traffic().get(name) or live.live_mirror().get(name):
            raise PermanentError(
                f"{operation} {name} on endpoint {endpoint} refused: it still has traffic "
                f"(live {live.traffic.get(name, 0)}%, mirrored {live.mirror.get(name, 0)}%)",
                endpoint=endpoint,
                operation=operation,
                code="DeploymentHasTraffic",
            )
        from azure.core.exceptions import ResourceNotFoundError

        with self._call(endpoint, operation):
            try:
                poller = self.client.online_deployments.begin_delete(
                    name=name, endpoint_name=endpoint
                )
            except ResourceNotFoundError:
                return
        self._wait(poller, endpoint=endpoint, operation=operation)
        self._progress(f"endpoint {endpoint}: deleted deployment {name}")

    # -- calling a deployment ---------------------------------------------------------------

    def invoke(self, endpoint: str, deployment: str, body: bytes) -> InvokeResult:
        """POST `body` to one deployment with our own request: the SDK's `invoke` keeps the
        deployment header in a shared dict, so later calls would go to the same deployment."""
        operation = "invoke deployment"
        with self._call(endpoint, operation):
            found = self._get_endpoint(endpoint)
            if found is None or not found.scoring_uri:
                raise PermanentError(
                    f"{operation} {deployment} on endpoint {endpoint} failed: the endpoint "
                    "does not exist or has no scoring URI yet",
                    endpoint=endpoint,
                    operation=operation,
                    code="EndpointNotFound",
                )
            key = self.client.online_endpoints.get_keys(endpoint).primary_key
        return self._post(endpoint, found.scoring_uri, deployment.lower(), key, body)

    def _post(
        self, endpoint: str, uri: str, deployment: str, key: str, body: bytes
    ) -> InvokeResult:
        from azure.core.rest import HttpRequest

        request = HttpRequest(
            "POST",
            uri,
            headers={
                "Authorization": f"Bearer {key}",
                "Content-Type": "application/json",
                DEPLOYMENT_HEADER: deployment,
            },
            content=body,
        )
        started = time.perf_counter()
        with translated(endpoint=endpoint, operation="invoke deployment"):
            response = self._scoring_transport().send(
                request,
                connection_timeout=self._invoke_timeout_s,
                read_timeout=self._invoke_timeout_s,
            )
            content = response.read()
        latency_ms = (time.perf_counter() - started) * 1000.0
        return InvokeResult(status=response.status_code, body=content, latency_ms=latency_ms)

    def _scoring_transport(self) -> Any:
        if self._transport is not None:
            return self._transport
        if self._scoring is None:
            from azure.core.pipeline.transport import RequestsTransport

            self._scoring = RequestsTransport()
        return self._scoring

    # -- gate sources -----------------------------------------------------------------------

    def gate_source(self, source: str, workspace_id: str | None) -> GateSource:
        if source == "azure-metrics":
            from engine.sources.azure_metrics import AzureMetricsSource

            return AzureMetricsSource(
                self.workspace.subscription_id,
                self.workspace.resource_id,
                credential=self.credential,
                transport=self._transport,
            )
        if source == "azure-logs":
            from engine.sources.azure_logs import AzureLogsSource

            return AzureLogsSource(
                workspace_id or os.environ.get(LOG_ANALYTICS_ENV, ""),
                credential=self.credential,
                transport=self._transport,
            )
        raise PermanentError(
            f"gate source {source!r} is not available on Azure ML: use azure-metrics or azure-logs",
            operation="open gate source",
            code="UnknownSource",
        )
