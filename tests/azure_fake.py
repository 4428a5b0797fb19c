"""An offline Azure for the `azureml` provider and the Azure gate sources.

A `requests` adapter mounted on a `requests.Session`, behind azure-core's public
`RequestsTransport(session=..., session_owner=False)`, answers every request from a route table
keyed by method and path. It keeps endpoint and deployment state between calls and enforces the
service's documented rules (names, traffic summing to 0 or 100, one mirror target at most 50 %,
no deployment with both live and mirrored traffic, no delete of a deployment with traffic, 20
deployments per endpoint). Writes answer like ARM long-running operations (201/202 with an
`Azure-AsyncOperation` header, polled to a final status). Bodies follow the public REST reference
(`onlineEndpoints`, `onlineEndpoints/deployments`, `Microsoft.Insights/metrics`, the Log
Analytics `query` API); error codes are the documented shape with illustrative codes.

Nothing here opens a socket: unknown routes answer 501 and are listed in `unrouted`, and
`block_network` refuses any connection that is not to loopback. A test module wires it up with:

    @pytest.fixture(autouse=True)
    def offline(monkeypatch):
        block_network(monkeypatch)

    @pytest.fixture
    def fake_azure():
        yield from checked_fake()
"""

from __future__ import annotations

import contextlib
import copy
import io
import itertools
import json
import re
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests
import urllib3
from requests.adapters import HTTPAdapter

from engine.invariants import transition_violations
from engine.live import LiveDeployment, LiveEndpoint, ProvisioningState

SUBSCRIPTION = "00000000-0000-0000-0000-000000000000"
RESOURCE_GROUP = "ml-test"
WORKSPACE = "ml-test-ws"
LOCATION = "westeurope"
ARM_HOST = "management.azure.com"
LOGS_HOST = "api.loganalytics.io"
ACCOUNT = "mltestws0storage"  # the workspace's default datastore: account and container
CONTAINER = "azureml-blobstore-0000"
NAME_RULE = re.compile(r"^[a-zA-Z]([-a-zA-Z0-9]*[a-zA-Z0-9])?$")
MAX_DEPLOYMENTS = 20
WS_PATH = (
    f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{RESOURCE_GROUP}"
    f"/providers/Microsoft.MachineLearningServices/workspaces/{WORKSPACE}"
)


class ServiceError(Exception):
    """What the fake service answers instead of a success: status, ARM error code, message."""

    def __init__(self, status: int, code: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


@dataclass
class Recorded:
    method: str
    host: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # Authorization redacted
    body: Any  # parsed JSON, raw bytes, or None


@dataclass
class Fault:
    method: str
    path: re.Pattern
    status: int
    code: str
    headers: dict[str, str]
    times: int
    host: str = ARM_HOST


@dataclass
class Operation:
    polls_left: int
    on_done: Callable[[], None]
    error: dict | None = None
    status: str = "InProgress"


@dataclass(frozen=True)
class Sample:
    """One per-minute value of a platform metric, as Azure Monitor stores it before answering."""

    resource: str  # lower-cased resource id
    metric: str  # lower-cased metric name
    dimensions: tuple[tuple[str, str], ...]  # (lower-cased name, value)
    minute: datetime
    value: float


# The `RequestsPerMinute` dimensions of each kind of answer that `FakeAzure.serve` records.
ANSWERED = {"statusCodeClass": "2xx", "statusCode": "200", "modelStatusCode": "200"}
PLATFORM_ERROR = {"statusCodeClass": "5xx", "statusCode": "500"}
MODEL_ERROR = {"statusCodeClass": "4xx", "statusCode": "424", "modelStatusCode": "500"}


@dataclass(frozen=True)
class Behaviour:
    """How a deployment answers the simulated client traffic of `FakeAzure.serve`."""

    error_rate: float = 0.0  # share of requests the platform answers 500
    # Share of requests whose scoring script raises: the inference server's 500, which a managed
    # endpoint answers as 424 with the model's status in `modelStatusCode`.
    model_error_rate: float = 0.0
    latency_ms: tuple[float, float, float, float] = (30.0, 60.0, 75.0, 95.0)  # p50/p90/p95/p99
    cpu_percent: float = 35.0
    memory_percent: float = 42.0


@dataclass
class Response:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _error(status: int, code: str, message: str, headers: dict | None = None) -> Response:
    return Response(status, {"error": {"code": code, "message": message}}, headers or {})


class FakeAzure:
    """The service's state and its route table. Thread-safe: SDK pollers run in threads."""

    def __init__(
        self,
        *,
        lro_polls: int = 1,
        start: datetime | None = None,
        subscription: str = SUBSCRIPTION,
        resource_group: str = RESOURCE_GROUP,
        workspace: str = WORKSPACE,
    ):
        self.lock = threading.RLock()
        self.lro_polls = lro_polls
        self.subscription, self.resource_group, self.workspace = (
            subscription,
            resource_group,
            workspace,
        )
        self.ws_path = (
            f"/subscriptions/{subscription}/resourceGroups/{resource_group}"
            f"/providers/Microsoft.MachineLearningServices/workspaces/{workspace}"
        )
        self.now = start or datetime(2026, 12, 4, 10, 0, tzinfo=UTC)
        self.models: set[tuple[str, str]] = set()
        self.endpoints: dict[str, dict] = {}
        self.deployments: dict[str, dict[str, dict]] = {}
        self.keys: dict[str, tuple[str, str]] = {}
        self.operations: dict[str, Operation] = {}
        self.requests: list[Recorded] = []
        self.unrouted: list[str] = []
        self.faults: list[Fault] = []
        self.failing_deployments: dict[str, tuple[str, str]] = {}
        self.scoring: dict[tuple[str, str], tuple[int, bytes]] = {}
        self.scoring_default: tuple[int, bytes] = (200, b"[0.12]")  # any deployment not in scoring
        # Answers a scoring call instead of `scoring`: (endpoint, deployment, body) -> answer.
        self.scorer: Callable[[str, str, bytes], tuple[int, bytes]] | None = None
        # Canned metric answers by (resource id, metric name), lower-cased: the `timeseries`, or
        # a function of the request's query parameters that returns them. A metric not here is
        # answered from `samples`, which `serve()` fills from simulated client traffic.
        self.metrics: dict[tuple[str, str], list[dict] | Callable[[dict[str, str]], list]] = {}
        self.samples: list[Sample] = []
        self.behaviour: dict[str, Behaviour] = {}
        # The invariants, checked after every request that changed an endpoint (see `_check`).
        self.violations: list[str] = []
        self.checked_changes = 0
        self._seen: dict[str, LiveEndpoint] = {}
        # Model registration: versions by (name, version), blobs by (account, container, path).
        self.model_versions: dict[tuple[str, str], dict] = {}
        self.blobs: dict[tuple[str, str, str], bytes] = {}
        self.blob_auth: list[str] = []  # how each upload was signed: SAS, SharedKey or Bearer
        self.datastore_secrets: dict = {"secretsType": "Sas", "sasToken": "sv=2024&sig=fake-sig"}
        self.log_answer: Callable[[str, str], Response] | None = None
        # Runs when an endpoint write completes: lets a test play a concurrent writer.
        self.after_endpoint_write: Callable[[str], None] | None = None
        self._ids = itertools.count(1)
        self.routes: list[tuple[str, str, re.Pattern, Callable[..., Response]]] = []
        self._add_routes()

    # -- set-up helpers ---------------------------------------------------------------------

    def register_model(self, name: str, version: str) -> None:
        self.models.add((name, str(version)))

    def add_endpoint(
        self, name: str, *, tags: dict | None = None, identity: dict | None = None, **extra: Any
    ) -> dict:
        """An existing endpoint, as if created before the test (and outside the engine)."""
        with self.lock:
            self._put_endpoint_resource(name, {"tags": tags or {}, "identity": identity, **extra})
            self.endpoints[name]["properties"]["provisioningState"] = "Succeeded"
            self.rebase(name)
            return self.endpoints[name]

    def add_deployment(
        self, endpoint: str, name: str, model: tuple[str, str], **props: Any
    ) -> dict:
        with self.lock:
            self.register_model(*model)
            resource = self._deployment_resource(endpoint, name, model, props)
            resource["properties"]["provisioningState"] = "Succeeded"
            self.deployments[endpoint][name.lower()] = resource
            self.rebase(endpoint)
            return resource

    def set_traffic(self, endpoint: str, traffic: dict[str, int], mirror: dict | None = None):
        """An out-of-band change (the portal, another tool): bumps lastModifiedAt."""
        with self.lock:
            props = self.endpoints[endpoint]["properties"]
            props["traffic"] = dict(traffic)
            props["mirrorTraffic"] = dict(mirror or {})
            self._touch(self.endpoints[endpoint])
            self.rebase(endpoint)

    def set_tags(self, endpoint: str, **tags: str) -> None:
        """Someone adds or changes tags in the portal: bumps lastModifiedAt."""
        with self.lock:
            self.endpoints[endpoint]["tags"].update(tags)
            self._touch(self.endpoints[endpoint])
            self.rebase(endpoint)

    def serve(self, endpoint: str, minute: datetime, requests: int) -> None:
        """One minute of client traffic: `requests` live requests split by the endpoint's
        traffic as it stands now, plus the copies its mirror setting sends to the shadow
        deployment. Each deployment answers as its `behaviour` says, and Azure Monitor records
        it: `RequestsPerMinute` by deployment, status code class, status code and model status
        code (200 and 200; a platform 500 with no model status; a failing script's 424 with the
        model's 500), latency percentiles by deployment, and each deployment's CPU and memory
        utilisation."""
        with self.lock:
            props = self.endpoints[endpoint]["properties"]
            shares = [(d, pct) for d, pct in props["traffic"].items() if pct]
            shares += [(d, pct) for d, pct in props["mirrorTraffic"].items() if pct]
            endpoint_id = f"{self.ws_path}/onlineEndpoints/{endpoint}".lower()
            at = minute.astimezone(UTC).replace(second=0, microsecond=0)
            for deployment, pct in shares:
                how = self.behaviour.get(deployment, Behaviour())
                count = requests * pct // 100
                errors = round(count * how.error_rate)
                model_errors = round(count * how.model_error_rate)
                answers = (
                    (count - errors - model_errors, ANSWERED),
                    (errors, PLATFORM_ERROR),
                    (model_errors, MODEL_ERROR),
                )
                for n, statuses in answers:
                    if n:
                        self._sample(
                            endpoint_id, "RequestsPerMinute", at, n,
                            deployment=deployment, **statuses,
                        )  # fmt: skip
                for percentile, value in zip((50, 90, 95, 99), how.latency_ms, strict=True):
                    self._sample(
                        endpoint_id, f"RequestLatency_P{percentile}", at, value,
                        deployment=deployment,
                    )  # fmt: skip
                deployment_id = f"{endpoint_id}/deployments/{deployment}"
                self._sample(deployment_id, "CpuUtilizationPercentage", at, how.cpu_percent)
                self._sample(
                    deployment_id, "CpuMemoryUtilizationPercentage", at, how.memory_percent
                )

    def _sample(
        self, resource: str, metric: str, minute: datetime, value: float, **dimensions: str
    ) -> None:
        dims = tuple(sorted((k.lower(), v) for k, v in dimensions.items()))
        self.samples.append(Sample(resource.lower(), metric.lower(), dims, minute, float(value)))

    # -- the service as the engine sees it ---------------------------------------------------

    def live(self, endpoint: str) -> LiveEndpoint:
        """The endpoint as stored, in the engine's terms, for checking invariants."""
        with self.lock:
            resource = self.endpoints.get(endpoint)
            if resource is None:
                return LiveEndpoint(name=endpoint, exists=False)
            deployments = {}
            for name, dep in self.deployments.get(endpoint, {}).items():
                props = dep["properties"]
                match = re.search(r"/models/([^/]+)/versions/([^/]+)$", props.get("model", ""))
                deployments[name] = LiveDeployment(
                    name=name,
                    model_name=match[1] if match else "",
                    model_version=match[2] if match else "",
                    state=ProvisioningState(props["provisioningState"]),
                    instance_type=props.get("instanceType"),
                    instance_count=(dep.get("sku") or {}).get("capacity"),
                )
            props = resource["properties"]
            return LiveEndpoint(
                name=endpoint,
                exists=True,
                deployments=deployments,
                traffic={**{n: 0 for n in deployments}, **props["traffic"]},
                mirror=dict(props["mirrorTraffic"]),
                tags=dict(resource["tags"]),
                revision=resource["systemData"]["lastModifiedAt"],
            )

    def rebase(self, endpoint: str) -> None:
        """Take the endpoint as it is now as the baseline: a change made by the test itself
        (an operator in the portal) is not the engine's and is not checked."""
        with self.lock:
            self._seen[endpoint] = self.live(endpoint)

    def _check(self, cause: str) -> None:
        """After every request: a change to an endpoint must keep the invariants
        (`engine.invariants.transition_violations`); each breach is kept in `violations`."""
        for endpoint in list(self.endpoints):
            before = self._seen.get(endpoint, LiveEndpoint(name=endpoint, exists=False))
            after = self.live(endpoint)
            if _shape(after) == _shape(before):
                continue
            self.checked_changes += 1
            self.violations.extend(f"{cause}: {v}" for v in transition_violations(before, after))
            self._seen[endpoint] = after

    def fail(
        self,
        method: str,
        path: str,
        status: int,
        code: str = "",
        *,
        times: int = 1,
        headers: dict | None = None,
        host: str = ARM_HOST,
    ) -> None:
        """Answer the next `times` requests whose path matches `path` (a regex) with an error."""
        code = code or {429: "TooManyRequests", 503: "ServiceUnavailable"}.get(status, "Error")
        self.faults.append(
            Fault(method, re.compile(path, re.I), status, code, headers or {}, times, host)
        )

    def requests_to(self, method: str, path_pattern: str) -> list[Recorded]:
        rule = re.compile(path_pattern, re.I)
        return [r for r in self.requests if r.method == method and rule.search(r.path)]

    # -- state helpers ----------------------------------------------------------------------

    def _tick(self) -> datetime:
        self.now += timedelta(seconds=1, microseconds=250_000)
        return self.now

    def _touch(self, resource: dict) -> None:
        resource["systemData"]["lastModifiedAt"] = iso(self._tick())
        resource["systemData"]["lastModifiedBy"] = "fake@example.com"

    def _system_data(self) -> dict:
        stamp = iso(self._tick())
        return {
            "createdAt": stamp,
            "createdBy": "fake@example.com",
            "createdByType": "User",
            "lastModifiedAt": stamp,
            "lastModifiedBy": "fake@example.com",
            "lastModifiedByType": "User",
        }

    def _operation(self, on_done: Callable[[], None], error: dict | None = None) -> dict:
        op_id = f"op-{next(self._ids)}"
        self.operations[op_id] = Operation(self.lro_polls, on_done, error)
        url = (
            f"https://{ARM_HOST}/subscriptions/{self.subscription}/providers/"
            f"Microsoft.MachineLearningServices/locations/{LOCATION}/mfeOperationsStatus/"
            f"{op_id}?api-version=2023-04-01-preview"
        )
        return {"Azure-AsyncOperation": url, "Retry-After": "0"}

    def _put_endpoint_resource(self, name: str, body: dict) -> dict:
        props = body.get("properties") or {}
        identity = body.get("identity") or {"type": "SystemAssigned"}
        identity = {**identity, "principalId": "11111111-2222-3333-4444-555555555555"}
        resource = {
            "id": f"{self.ws_path}/onlineEndpoints/{name}",
            "name": name,
            "type": "Microsoft.MachineLearningServices/workspaces/onlineEndpoints",
            "location": LOCATION,
            "kind": "Managed",
            "tags": dict(body.get("tags") or {}),
            "identity": identity,
            "properties": {
                "authMode": props.get("authMode", "Key"),
                "description": props.get("description"),
                "properties": dict(props.get("properties") or {}),
                "traffic": dict(props.get("traffic") or {}),
                "mirrorTraffic": dict(props.get("mirrorTraffic") or {}),
                "publicNetworkAccess": "Enabled",
                "scoringUri": f"https://{name}.{LOCATION}.inference.ml.azure.com/score",
                "swaggerUri": f"https://{name}.{LOCATION}.inference.ml.azure.com/swagger.json",
                "provisioningState": "Creating",
            },
            "systemData": self._system_data(),
        }
        self.endpoints[name] = resource
        self.deployments.setdefault(name, {})
        self.keys.setdefault(name, (f"primary-{name}-secret", f"secondary-{name}-secret"))
        return resource

    def _deployment_resource(
        self, endpoint: str, name: str, model: tuple[str, str], props: dict
    ) -> dict:
        model_id = f"{self.ws_path}/models/{model[0]}/versions/{model[1]}"
        return {
            "id": f"{self.ws_path}/onlineEndpoints/{endpoint}/deployments/{name}",
            "name": name,
            "type": "Microsoft.MachineLearningServices/workspaces/onlineEndpoints/deployments",
            "location": LOCATION,
            "kind": "Managed",
            "tags": props.pop("tags", {}),
            "sku": {"name": "Default", "tier": "Standard", "capacity": props.pop("capacity", 1)},
            "properties": {
                "endpointComputeType": "Managed",
                "model": model_id,
                "instanceType": props.pop("instanceType", "Standard_DS3_v2"),
                "scaleSettings": {"scaleType": "Default"},
                "appInsightsEnabled": False,
                "provisioningState": "Creating",
                **props,
            },
            "systemData": self._system_data(),
        }

    # -- the service's rules ----------------------------------------------------------------

    @staticmethod
    def _check_name(kind: str, name: str) -> None:
        if not (3 <= len(name) <= 32 and NAME_RULE.match(name)):
            raise ServiceError(400, "BadArgument", f"{kind} name '{name}' is invalid")

    def _check_traffic(self, endpoint: str, traffic: dict, mirror: dict) -> None:
        deployments = self.deployments.get(endpoint, {})
        for kind, mapping in (("traffic", traffic), ("mirror traffic", mirror)):
            for name, value in mapping.items():
                if not isinstance(value, int) or not 0 <= value <= 100:
                    raise ServiceError(400, "BadArgument", f"{kind} for {name} must be 0..100")
                if name.lower() not in deployments:
                    raise ServiceError(400, "BadArgument", f"{kind}: deployment {name} not found")
        live = {k.lower(): v for k, v in traffic.items() if v}
        shadow = {k.lower(): v for k, v in mirror.items() if v}
        if sum(live.values()) not in (0, 100):
            raise ServiceError(400, "BadArgument", "traffic must sum to 0 or 100")
        if len(shadow) > 1 or sum(shadow.values()) > 50:
            raise ServiceError(400, "BadArgument", "mirror traffic: one deployment, at most 50%")
        both = set(live) & set(shadow)
        if both:
            raise ServiceError(
                400, "BadArgument", f"deployment {sorted(both)[0]} has live and mirror traffic"
            )
        for name in live:
            state = deployments[name]["properties"]["provisioningState"]
            if state != "Succeeded":
                raise ServiceError(400, "BadArgument", f"deployment {name} is {state}")

    # -- handlers ---------------------------------------------------------------------------

    def _add_routes(self) -> None:
        ws = re.escape(self.ws_path)
        ep = rf"{ws}/onlineEndpoints/(?P<ep>[^/]+)"
        dep = rf"{ep}/deployments/(?P<dep>[^/]+)"
        table = [
            ("GET", ARM_HOST, rf"^{ws}$", self._get_workspace),
            ("GET", ARM_HOST, rf"^{ep}$", self._get_endpoint),
            ("PUT", ARM_HOST, rf"^{ep}$", self._put_endpoint),
            ("POST", ARM_HOST, rf"^{ep}/listKeys$", self._list_keys),
            ("GET", ARM_HOST, rf"^{ep}/deployments$", self._list_deployments),
            ("GET", ARM_HOST, rf"^{dep}$", self._get_deployment),
            ("PUT", ARM_HOST, rf"^{dep}$", self._put_deployment),
            ("DELETE", ARM_HOST, rf"^{dep}$", self._delete_deployment),
            ("GET", ARM_HOST, rf"^{ws}/models/(?P<m>[^/]+)/versions/(?P<v>[^/]+)$", self._model),
            (
                "PUT",
                ARM_HOST,
                rf"^{ws}/models/(?P<m>[^/]+)/versions/(?P<v>[^/]+)$",
                self._put_model,
            ),
            ("GET", ARM_HOST, rf"^{ws}/models/(?P<m>[^/]+)/versions$", self._list_models),
            ("GET", ARM_HOST, rf"^{ws}/datastores$", self._list_datastores),
            ("POST", ARM_HOST, rf"^{ws}/datastores/(?P<d>[^/]+)/listSecrets$", self._secrets),
            ("GET", ARM_HOST, rf"^{ws}/codes/(?P<c>[^/]+)/versions$", self._find_code),
            ("GET", ARM_HOST, rf"^{ws}/codes/(?P<c>[^/]+)/versions/(?P<v>[^/]+)$", self._code),
            (
                "POST",
                ARM_HOST,
                rf"^{ws}/codes/[^/]+/versions/[^/]+/startPendingUpload$",
                self._upload,
            ),
            ("PUT", ARM_HOST, rf"^{ws}/environments/[^/]+/versions/[^/]+$", self._put_environment),
            ("GET", ARM_HOST, r"/mfeOperationsStatus/(?P<op>[^/]+)$", self._poll_operation),
            (
                "GET",
                ARM_HOST,
                r"^(?P<res>.+)/providers/Microsoft\.Insights/metrics$",
                self._metrics,
            ),
            ("POST", LOGS_HOST, r"^/v1/workspaces/(?P<ws>[^/]+)/query$", self._logs),
        ]
        self.routes = [(m, h, re.compile(p, re.I), fn) for m, h, p, fn in table]

    def _get_workspace(self, request: Recorded) -> Response:
        return Response(
            200,
            {"id": self.ws_path, "name": self.workspace, "location": LOCATION, "properties": {}},
        )

    def _endpoint_or_404(self, name: str) -> dict:
        if name not in self.endpoints:
            raise ServiceError(404, "ResourceNotFound", f"online endpoint {name} not found")
        return self.endpoints[name]

    def _get_endpoint(self, request: Recorded, ep: str) -> Response:
        return Response(200, self._endpoint_or_404(ep))

    def _put_endpoint(self, request: Recorded, ep: str) -> Response:
        self._check_name("endpoint", ep)
        body = request.body or {}
        props = body.get("properties") or {}
        traffic, mirror = props.get("traffic") or {}, props.get("mirrorTraffic") or {}
        existing = self.endpoints.get(ep)
        if existing is None:
            if traffic or mirror:
                self._check_traffic(ep, traffic, mirror)  # no deployments yet: any entry fails
            resource = self._put_endpoint_resource(ep, body)
            status = 201
        else:
            self._check_traffic(ep, traffic, mirror)
            resource = existing
            resource["tags"] = dict(body.get("tags") or {})
            if body.get("identity"):
                resource["identity"] = {**resource["identity"], **body["identity"]}
            resource["properties"].update(
                traffic={k.lower(): v for k, v in traffic.items() if v},
                mirrorTraffic={k.lower(): v for k, v in mirror.items() if v},
                description=props.get("description"),
                properties=dict(props.get("properties") or {}),
                provisioningState="Updating",
            )
            self._touch(resource)
            status = 200

        def done() -> None:
            resource["properties"]["provisioningState"] = "Succeeded"
            if self.after_endpoint_write is not None:
                self.after_endpoint_write(ep)

        return Response(status, resource, self._operation(done))

    def _list_keys(self, request: Recorded, ep: str) -> Response:
        self._endpoint_or_404(ep)
        primary, secondary = self.keys[ep]
        return Response(200, {"primaryKey": primary, "secondaryKey": secondary})

    def _list_deployments(self, request: Recorded, ep: str) -> Response:
        self._endpoint_or_404(ep)
        return Response(200, {"value": list(self.deployments[ep].values())})

    def _deployment_or_404(self, ep: str, dep: str) -> dict:
        self._endpoint_or_404(ep)
        found = self.deployments[ep].get(dep.lower())
        if found is None:
            raise ServiceError(404, "ResourceNotFound", f"deployment {dep} not found")
        return found

    def _get_deployment(self, request: Recorded, ep: str, dep: str) -> Response:
        return Response(200, self._deployment_or_404(ep, dep))

    def _put_deployment(self, request: Recorded, ep: str, dep: str) -> Response:
        self._endpoint_or_404(ep)
        self._check_name("deployment", dep)
        if dep.lower() not in self.deployments[ep] and len(self.deployments[ep]) >= MAX_DEPLOYMENTS:
            raise ServiceError(
                400, "BadArgument", f"endpoint {ep} has {MAX_DEPLOYMENTS} deployments"
            )
        body = request.body or {}
        props = dict(body.get("properties") or {})
        match = re.search(r"/models/([^/]+)/versions/([^/]+)$", props.get("model", ""))
        if not match or (match[1], match[2]) not in self.models:
            raise ServiceError(404, "ResourceNotFound", f"model {props.get('model')} not found")
        props.pop("provisioningState", None)
        extra = {
            k: v
            for k, v in props.items()
            if k not in ("model", "instanceType", "endpointComputeType")
        }
        resource = self._deployment_resource(
            ep,
            dep.lower(),
            (match[1], match[2]),
            {
                "instanceType": props.get("instanceType", "Standard_DS3_v2"),
                "capacity": (body.get("sku") or {}).get("capacity", 1),
                "tags": dict(body.get("tags") or {}),
                **extra,
            },
        )
        self.deployments[ep][dep.lower()] = resource
        failure = self.failing_deployments.get(dep.lower())
        error = {"code": failure[0], "message": failure[1]} if failure else None

        def done() -> None:
            resource["properties"]["provisioningState"] = "Failed" if failure else "Succeeded"

        return Response(201, resource, self._operation(done, error))

    def _delete_deployment(self, request: Recorded, ep: str, dep: str) -> Response:
        self._endpoint_or_404(ep)
        name = dep.lower()
        if name not in self.deployments[ep]:
            return Response(204)
        props = self.endpoints[ep]["properties"]
        if props["traffic"].get(name) or props["mirrorTraffic"].get(name):
            raise ServiceError(400, "BadArgument", f"deployment {name} has traffic; cannot delete")
        self.deployments[ep][name]["properties"]["provisioningState"] = "Deleting"

        def done() -> None:
            self.deployments[ep].pop(name, None)

        headers = self._operation(done)
        headers["Location"] = headers["Azure-AsyncOperation"]
        return Response(202, None, headers)

    def _model(self, request: Recorded, m: str, v: str) -> Response:
        if (m, v) in self.model_versions:
            return Response(200, self.model_versions[(m, v)])
        if (m, v) not in self.models:
            raise ServiceError(404, "ResourceNotFound", f"model {m}:{v} not found")
        return Response(
            200,
            {
                "id": f"{self.ws_path}/models/{m}/versions/{v}",
                "name": v,
                "properties": {
                    "modelType": "custom_model",
                    "modelUri": f"azureml://locations/{LOCATION}/models/{m}/versions/{v}",
                    "flavors": {},
                    "properties": {},
                    "tags": {},
                    "isArchived": False,
                },
                "systemData": self._system_data(),
            },
        )

    # -- model registration: model versions, the default datastore, blob storage ------------

    def _model_version(self, name: str, version: str, props: dict) -> dict:
        return {
            "id": f"{self.ws_path}/models/{name}/versions/{version}",
            "name": version,
            "type": "Microsoft.MachineLearningServices/workspaces/models/versions",
            "properties": {
                "modelType": props.get("modelType", "custom_model"),
                "modelUri": props.get("modelUri"),
                "description": props.get("description"),
                "properties": dict(props.get("properties") or {}),
                "tags": dict(props.get("tags") or {}),
                "flavors": props.get("flavors") or {},
                "isArchived": False,
                "isAnonymous": False,
                "provisioningState": "Succeeded",
            },
            "systemData": self._system_data(),
        }

    def _put_model(self, request: Recorded, m: str, v: str) -> Response:
        self._check_name("model", m)
        props = (request.body or {}).get("properties") or {}
        uri = props.get("modelUri") or ""
        found = re.match(r"^azureml://subscriptions/[^/]+/resourcegroups/[^/]+/workspaces/[^/]+"
                         r"/datastores/(?P<d>[^/]+)/paths/(?P<p>.+)$", uri, re.I)  # fmt: skip
        if found is None:
            raise ServiceError(400, "UserError", f"modelUri {uri!r} is not a datastore URI")
        if (ACCOUNT, CONTAINER, found["p"]) not in self.blobs:
            raise ServiceError(400, "UserError", f"no blob at {found['p']} in the datastore")
        existing = self.model_versions.get((m, v))
        if existing is not None:
            if existing["properties"]["modelUri"] != uri:
                raise ServiceError(409, "UserError", f"model {m}:{v} exists with another path")
            return Response(200, existing)
        self.model_versions[(m, v)] = resource = self._model_version(m, v, props)
        self.register_model(m, v)
        return Response(201, resource)

    def _list_models(self, request: Recorded, m: str) -> Response:
        found = [r for (name, _), r in sorted(self.model_versions.items()) if name == m]
        return Response(200, {"value": found})

    def _list_datastores(self, request: Recorded) -> Response:
        store = {
            "id": f"{self.ws_path}/datastores/workspaceblobstore",
            "name": "workspaceblobstore",
            "type": "Microsoft.MachineLearningServices/workspaces/datastores",
            "properties": {
                "datastoreType": "AzureBlob",
                "accountName": ACCOUNT,
                "containerName": CONTAINER,
                "endpoint": "core.windows.net",
                "protocol": "https",
                "isDefault": True,
                "credentials": {"credentialsType": self.datastore_secrets["secretsType"]},
            },
        }
        return Response(200, {"value": [store]})

    def _secrets(self, request: Recorded, d: str) -> Response:
        return Response(200, dict(self.datastore_secrets))

    def _blob(self, request: Recorded, raw_headers: dict[str, str]) -> Response:
        account = request.host.split(".", 1)[0]
        container, _, path = request.path.lstrip("/").partition("/")
        if request.method != "PUT" or (account, container) != (ACCOUNT, CONTAINER):
            self.unrouted.append(f"{request.method} {request.host}{request.path}")
            return _error(501, "NoSuchRoute", "the fake stores blobs in one container only")
        scheme = raw_headers.get("authorization", "").partition(" ")[0]
        signed = "SAS" if "sig" in request.query else scheme
        if signed not in ("SAS", "SharedKey", "Bearer"):
            return _error(403, "AuthenticationFailed", "no SAS signature or authorization")
        self.blob_auth.append(signed)
        self.blobs[(account, container, urllib.parse.unquote(path))] = _as_bytes(request.body)
        return Response(
            201, None, {"ETag": '"0x1"', "Last-Modified": "Fri, 04 Dec 2026 10:00:00 GMT"}
        )

    def _code_version(self, name: str, version: str) -> dict:
        return {
            "id": f"{self.ws_path}/codes/{name}/versions/{version}",
            "name": version,
            "properties": {
                "codeUri": f"https://fakestore.blob.core.windows.net/code/{name}",
                "isAnonymous": True,
            },
        }

    def _find_code(self, request: Recorded, c: str) -> Response:
        # As if this code snapshot was uploaded before: the SDK then reuses it by its hash.
        # The upload itself goes to blob storage through a client MLClient does not give its
        # transport to, so it cannot be driven offline (see startPendingUpload below).
        return Response(200, {"value": [self._code_version("snapshot", "1")]})

    def _code(self, request: Recorded, c: str, v: str) -> Response:
        return Response(200, self._code_version(c, v))

    def _upload(self, request: Recorded) -> Response:
        raise ServiceError(400, "FakeUploadUnsupported", "uploads to blob storage are not faked")

    def _put_environment(self, request: Recorded) -> Response:
        body = copy.deepcopy(request.body or {})
        body.update(
            id=self.ws_path + request.path.split(self.ws_path, 1)[1],
            name=request.path.rsplit("/")[-1],
        )
        return Response(200, body)

    def _poll_operation(self, request: Recorded, op: str) -> Response:
        operation = self.operations.get(op)
        if operation is None:
            raise ServiceError(404, "ResourceNotFound", f"operation {op} not found")
        if operation.status == "InProgress":
            operation.polls_left -= 1
            if operation.polls_left <= 0:
                operation.on_done()
                operation.status = "Failed" if operation.error else "Succeeded"
        body: dict[str, Any] = {"id": op, "name": op, "status": operation.status}
        if operation.error:
            body["error"] = operation.error
        return Response(200, body)

    def _metrics(self, request: Recorded, res: str) -> Response:
        names = request.query.get("metricnames", "").split(",")
        value = []
        for name in names:
            series = self.metrics.get((res.lower(), name.lower()))
            if callable(series):
                series = series(request.query)
            if series is None:
                series = self._aggregated(res.lower(), name, request.query)
            value.append(metric_body(res, name, series, request.query.get("interval", "PT1M")))
        return Response(
            200,
            {
                "cost": 0,
                "timespan": request.query.get("timespan", ""),
                "interval": request.query.get("interval", "PT1M"),
                "namespace": "Microsoft.MachineLearningServices/workspaces/onlineEndpoints",
                "resourceregion": LOCATION,
                "value": value,
            },
        )

    def _aggregated(self, resource: str, name: str, query: dict[str, str]) -> list[dict]:
        """`timeseries` for one metric from `samples`, as Azure Monitor answers: points of the
        timespan's minutes (start included, end not), one series per value of each dimension
        the filter names (`dim eq 'value'` or `dim eq '*'`), other dimensions summed over,
        dimension names lower-cased, a minute without data carrying only its timeStamp, and with
        a filter no more than `top` series (ten unless the query says)."""
        try:
            first, last = (datetime.fromisoformat(t) for t in query["timespan"].split("/"))
        except (KeyError, ValueError):
            raise ServiceError(400, "BadRequest", "timespan must be start/end") from None
        clauses = []
        for clause in re.split(r"\s+and\s+", query.get("$filter", "").strip(), flags=re.I):
            if not clause:
                continue
            match = re.fullmatch(r"(\w+)\s+eq\s+'((?:[^']|'')*)'", clause.strip())
            if match is None:
                raise ServiceError(400, "BadRequest", f"the fake cannot read filter {clause!r}")
            clauses.append((match[1].lower(), match[2].replace("''", "'")))
        aggregations = [a.strip().lower() for a in query.get("aggregation", "Average").split(",")]

        groups: dict[tuple, dict[datetime, list[float]]] = {}
        for sample in self.samples:
            if (sample.resource, sample.metric) != (resource, name.lower()):
                continue
            dims = dict(sample.dimensions)
            if not first <= sample.minute < last or any(
                v != "*" and dims.get(k, "").lower() != v.lower() for k, v in clauses
            ):
                continue
            key = tuple((k, dims.get(k, "")) for k, _ in clauses)
            groups.setdefault(key, {}).setdefault(sample.minute, []).append(sample.value)
        if not groups and not clauses:
            groups[()] = {}

        def point(moment: datetime, values: list[float] | None) -> dict:
            found: dict[str, Any] = {"timeStamp": iso(moment)}
            if values:
                combined = {
                    "total": sum(values),
                    "count": float(len(values)),
                    "average": sum(values) / len(values),
                    "maximum": max(values),
                    "minimum": min(values),
                }
                found.update({a: combined[a] for a in aggregations if a in combined})
            return found

        count = int((last - first) / timedelta(minutes=1))
        minutes = [first + timedelta(minutes=i) for i in range(count)]
        found = sorted(groups.items())
        if clauses:
            found = found[: int(query.get("top", 10))]
        return [
            series_of(dict(key), [point(m, by_minute.get(m)) for m in minutes])
            for key, by_minute in found
        ]

    def _logs(self, request: Recorded, ws: str) -> Response:
        if self.log_answer is None:
            raise ServiceError(400, "BadArgumentError", "no log data in this test")
        body = request.body or {}
        return self.log_answer(body.get("query", ""), body.get("timespan", ""))

    def _score(self, request: Recorded, raw_headers: dict[str, str]) -> Response:
        endpoint = request.host.split(".", 1)[0]
        if endpoint not in self.endpoints:
            return Response(404, {"message": "endpoint not found"})
        authorization = raw_headers.get("authorization", "")
        if authorization not in {f"Bearer {k}" for k in self.keys[endpoint]}:
            return Response(401, {"message": "unauthorized"})
        deployment = raw_headers.get("azureml-model-deployment", "").lower()
        if deployment not in self.deployments[endpoint]:
            return Response(404, {"message": f"deployment {deployment} not found"})
        if self.scorer is not None:
            body = request.body if isinstance(request.body, bytes) else json.dumps(request.body)
            status, content = self.scorer(endpoint, deployment, _as_bytes(body))
        else:
            status, content = self.scoring.get((endpoint, deployment), self.scoring_default)
        return Response(status, content, {"Content-Type": "application/json"})

    # -- dispatch ---------------------------------------------------------------------------

    def handle(self, prepared: requests.PreparedRequest) -> Response:
        url = urllib.parse.urlsplit(prepared.url)
        raw_headers = {k.lower(): v for k, v in prepared.headers.items()}
        body: Any = prepared.body
        if isinstance(body, str):
            body = body.encode()
        if body and "json" in raw_headers.get("content-type", ""):
            with contextlib.suppress(ValueError):
                body = json.loads(body)
        shown = {k: ("<redacted>" if k == "authorization" else v) for k, v in raw_headers.items()}
        record = Recorded(
            method=prepared.method,
            host=url.hostname or "",
            path=url.path,
            query=dict(urllib.parse.parse_qsl(url.query)),
            headers=shown,
            body=body,
        )
        with self.lock:
            self.requests.append(record)
            for fault in self.faults:
                if (
                    fault.times > 0
                    and fault.method == record.method
                    and fault.host == record.host
                    and fault.path.search(record.path)
                ):
                    fault.times -= 1
                    return _error(fault.status, fault.code, "injected fault", fault.headers)
            if record.host.endswith(".inference.ml.azure.com") and record.path == "/score":
                return self._score(record, raw_headers)
            if record.host.endswith(".blob.core.windows.net"):
                return self._blob(record, raw_headers)
            for method, host, pattern, handler in self.routes:
                match = pattern.search(record.path)
                if method == record.method and host == record.host and match:
                    try:
                        return handler(record, **match.groupdict())
                    except ServiceError as exc:
                        return _error(exc.status, exc.code, exc.message, exc.headers)
                    finally:
                        self._check(f"{record.method} {record.path}")
            self.unrouted.append(f"{record.method} {record.host}{record.path}")
            return _error(501, "NoSuchRoute", f"the fake has no route for {record.path}")

    # -- wiring -----------------------------------------------------------------------------

    def transport(self) -> Any:
        """An azure-core transport that answers from this fake, with no-op sleeps."""
        from azure.core.pipeline.transport import RequestsTransport

        class NoSleepTransport(RequestsTransport):
            def sleep(self, duration: float) -> None:  # LRO polls and retries wait on this
                pass

        session = requests.Session()
        adapter = _FakeAdapter(self)
        session.mount("https://", adapter)
        session.mount("http://", adapter)
        return NoSleepTransport(session=session, session_owner=False)


def _shape(live: LiveEndpoint) -> tuple:
    """What an endpoint change is judged on: existence, deployments, traffic, mirror, tags."""
    return (live.exists, live.deployments, live.live_traffic(), live.live_mirror(), live.tags)


def _as_bytes(body: Any) -> bytes:
    if body is None:
        return b""
    return body.encode() if isinstance(body, str) else bytes(body)


class _FakeAdapter(HTTPAdapter):
    def __init__(self, fake: FakeAzure):
        super().__init__()
        self.fake = fake

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        answer = self.fake.handle(request)
        if isinstance(answer.body, bytes):
            data = answer.body
        elif answer.body is None:
            data = b""
        else:
            data = json.dumps(answer.body).encode()
        headers = {"Content-Type": "application/json", "Content-Length": str(len(data))}
        headers.update(answer.headers)
        raw = urllib3.HTTPResponse(
            body=io.BytesIO(data),
            headers=headers,
            status=answer.status,
            preload_content=False,
            decode_content=False,
        )
        return self.build_response(request, raw)


class FakeCredential:
    """Stands in for an azure-identity credential: never contacts Entra ID."""

    def __init__(self) -> None:
        self.calls = 0

    def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        from azure.core.credentials import AccessToken

        self.calls += 1
        return AccessToken("fake-arm-token", int(time.time()) + 3600)


# -- REST shapes for gate data ----------------------------------------------------------------


def series(dimensions: dict[str, str], points: list[tuple[datetime, dict[str, float]]]) -> dict:
    """One `timeseries` element: `metadatavalues` and `data` (missing minutes simply absent)."""
    return {
        "metadatavalues": [
            {"name": {"value": k, "localizedValue": k}, "value": v} for k, v in dimensions.items()
        ],
        "data": [{"timeStamp": iso(moment), **values} for moment, values in points],
    }


def series_of(dimensions: dict[str, str], data: list[dict]) -> dict:
    return {
        "metadatavalues": [
            {"name": {"value": k, "localizedValue": k}, "value": v} for k, v in dimensions.items()
        ],
        "data": data,
    }


def metric_body(resource: str, name: str, timeseries: list[dict], interval: str) -> dict:
    return {
        "id": f"{resource}/providers/Microsoft.Insights/metrics/{name}",
        "type": "Microsoft.Insights/metrics",
        "name": {"value": name, "localizedValue": name},
        "displayDescription": "",
        "unit": "Count" if name == "RequestsPerMinute" else "Milliseconds",
        "errorCode": "Success",
        "timeseries": timeseries,
    }


def log_table(columns: list[tuple[str, str]], rows: list[list[Any]]) -> dict:
    return {
        "tables": [
            {
                "name": "PrimaryResult",
                "columns": [{"name": n, "type": t} for n, t in columns],
                "rows": rows,
            }
        ]
    }


# -- fixtures ---------------------------------------------------------------------------------

_LOOPBACK = ("127.", "::1", "localhost")


def _is_loopback(host: Any) -> bool:
    return isinstance(host, str) and (host.startswith(_LOOPBACK) or host == "")


def block_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Refuse any connection or name lookup that is not loopback, and clear the Azure variables
    of the developer's shell: a test that would reach Azure fails instead. Use from an autouse
    fixture in each Azure test module."""
    real_connect = socket.socket.connect
    real_getaddrinfo = socket.getaddrinfo

    def connect(self: socket.socket, address: Any) -> Any:
        host = address[0] if isinstance(address, tuple) else address
        if self.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(host):
            raise OSError(f"test tried to reach {host}: only loopback is allowed")
        return real_connect(self, address)

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if not _is_loopback(host):
            raise OSError(f"test tried to resolve {host}: only loopback is allowed")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    for name in (
        "AZURE_SUBSCRIPTION_ID",
        "AZURE_RESOURCE_GROUP",
        "AZUREML_WORKSPACE",
        "AZURE_LOG_ANALYTICS_WORKSPACE_ID",
        "ACTIONS_ID_TOKEN_REQUEST_URL",
        "ACTIONS_ID_TOKEN_REQUEST_TOKEN",
    ):
        monkeypatch.delenv(name, raising=False)


def checked_fake(fake: FakeAzure | None = None, *, invariants: bool = False) -> Iterator[FakeAzure]:
    """For a fixture: yields a fake and fails the test if it met a request it has no route for,
    and, with `invariants`, if any change the service accepted broke one of the engine's
    invariants (for tests where only the engine writes; a test that writes arbitrary tags
    through the provider leaves it off)."""
    fake = fake or FakeAzure()
    yield fake
    assert not fake.unrouted, f"requests the fake has no route for: {fake.unrouted}"
    if invariants:
        assert not fake.violations, f"changes that broke an invariant: {fake.violations}"


class FakeClock:
    """Monotonic seconds that move only when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def provider_for(fake: FakeAzure, **options: Any) -> Any:
    """An `AzureMLProvider` wired to `fake`: fake credential, fake transport, no real sleeps."""
    from engine.providers.azure import AzureMLProvider, AzureWorkspace

    clock = FakeClock()
    options.setdefault("sleep", clock.sleep)
    options.setdefault("clock", clock)
    options.setdefault("report_every_s", 0.5)
    return AzureMLProvider(
        AzureWorkspace(SUBSCRIPTION, RESOURCE_GROUP, WORKSPACE),
        credential=FakeCredential(),
        transport=fake.transport(),
        **options,
    )
