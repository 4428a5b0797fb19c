"""Gate source `azure-metrics`: Azure Monitor platform metrics of a managed online endpoint.

Called by the gate evaluator through `GateSource.measure`. Three `metrics.list` calls per
measurement, a fourth when the window holds answers that are neither 2xx nor 5xx
(azure-mgmt-monitor, the same ARM token as MLClient):

- endpoint `RequestsPerMinute`, total per minute, filtered to the deployment and split by
  `statusCodeClass`: requests, 5xx and everything but 2xx (`non_2xx`);
- the model errors hidden in the 4xx: a managed endpoint answers 424 when the model's own answer
  was not 200 and keeps that status in the `modelStatusCode` dimension, so a scoring script that
  raises reaches the client as 424 with model status 500. The fourth call reads
  `RequestsPerMinute` filtered to the deployment and `statusCode` 424, split by
  `modelStatusCode`, and `server_errors` is the 5xx answers plus the 424 answers to a model's
  5xx (a 424 for a model's 4xx, or for a response too large, stays a client error). A 424 is a
  4xx, so a window of 2xx and 5xx answers only has none and the call is skipped;
- endpoint `RequestLatency_P50/P90/P95/P99`, per minute, filtered to the deployment;
- deployment `CpuUtilizationPercentage` and `CpuMemoryUtilizationPercentage`.

The model errors are a query of their own rather than a split of the first one by status code
and model status: the first stays a handful of series whatever the model answers, and a healthy
window costs no extra call. A query with a `$filter` returns at most `top` series, ten unless
told otherwise: both request queries ask for `SERIES_LIMIT`, and an answer that fills it is an
error of the source, never a smaller count.

Per-minute percentiles cannot be combined into a true window percentile (that needs the
requests themselves). The window value is the *maximum* of the per-minute values: never below
the true window percentile's worst minute, so a `max` gate is never passed on an optimistic
number, at the price of being pessimistic when one quiet minute is slow. Each `Measurement`
says so in `aggregation`. Utilisation is the busiest minute's average, for the same reason.

Only complete minutes count: the window's start is rounded up and its end down to the minute,
and the caller keeps `ingestion_delay_s` between the window's end and now (platform metrics
usually land within about three minutes). Minutes without data are simply absent.

Mirrored requests: Azure attributes a mirrored copy to the shadow deployment in its metrics, with
no dimension that marks it as mirrored. A deployment has live or mirrored traffic, never both
(the service refuses it), so during a mirror step the candidate's series *is* its mirrored
traffic, and `mirrored=True` reads the same series; direct calls that name the deployment (the
smoke test) count too, and are kept out by starting the window after the smoke test.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from engine.errors import SourceError
from engine.providers.base import Measurement, Window

REQUESTS_METRIC = "RequestsPerMinute"
LATENCY_METRICS = {
    50: "RequestLatency_P50",
    90: "RequestLatency_P90",
    95: "RequestLatency_P95",
    99: "RequestLatency_P99",
}
CPU_METRIC = "CpuUtilizationPercentage"
MEMORY_METRIC = "CpuMemoryUtilizationPercentage"
MODEL_ERROR_STATUS = "424"  # the endpoint's answer when the model's own answer was not 200
SERIES_LIMIT = 100  # `top` of the request queries: series per answer, far above what they split
INGESTION_DELAY_S = 180.0
MINUTE = timedelta(minutes=1)


@dataclass(frozen=True)
class Dimensions:
    """Dimension names as the metric definitions spell them; matched case-insensitively,
    because the service returns them lower-cased (`statuscodeclass`)."""

    deployment: str = "deployment"
    status_class: str = "statusCodeClass"
    status_code: str = "statusCode"
    model_status: str = "modelStatusCode"


# -- pure parts ---------------------------------------------------------------------------------


def complete_minutes(window: Window) -> tuple[datetime, datetime] | None:
    """The whole minutes inside `window`: start rounded up, end rounded down; None if none."""
    start = window.start.astimezone(UTC)
    end = window.end.astimezone(UTC)
    floor_start = start.replace(second=0, microsecond=0)
    first = floor_start if floor_start == start else floor_start + MINUTE
    last = end.replace(second=0, microsecond=0)
    return (first, last) if last > first else None


def timespan(start: datetime, end: datetime) -> str:
    fmt = "%Y-%m-%dT%H:%M:%SZ"
    return f"{start.astimezone(UTC).strftime(fmt)}/{end.astimezone(UTC).strftime(fmt)}"


def quoted(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _dimension_values(element: Mapping[str, Any]) -> dict[str, str]:
    values = {}
    for item in element.get("metadatavalues") or []:
        name = item.get("name")
        name = name.get("value") if isinstance(name, Mapping) else name
        if name:
            values[str(name).lower()] = str(item.get("value") or "")
    return values


def _metric(response: Mapping[str, Any], name: str) -> Mapping[str, Any] | None:
    for metric in response.get("value") or []:
        metric_name = metric.get("name")
        metric_name = metric_name.get("value") if isinstance(metric_name, Mapping) else metric_name
        if str(metric_name).lower() == name.lower():
            code = metric.get("errorCode")
            if code and code != "Success":
                raise SourceError(f"azure-metrics: {name}: {code} {metric.get('errorMessage', '')}")
            return metric
    return None


def _series_for(
    metric: Mapping[str, Any] | None, deployment: str, dims: Dimensions
) -> Iterable[tuple[dict[str, str], list[Mapping[str, Any]]]]:
    """The metric's series for one deployment: a series that names another deployment is
    skipped; one without a deployment dimension was already filtered by the query."""
    for element in (metric or {}).get("timeseries") or []:
        values = _dimension_values(element)
        named = values.get(dims.deployment.lower())
        if named is not None and named.lower() != deployment.lower():
            continue
        yield values, list(element.get("data") or [])


def _points(data: Iterable[Mapping[str, Any]], aggregation: str) -> list[float]:
    """Values of one aggregation; a minute without data carries only its timeStamp."""
    return [float(p[aggregation]) for p in data if p.get(aggregation) is not None]


def _counted(response: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The `RequestsPerMinute` metric of an answer, refused when it may have been cut short."""
    metric = _metric(response, REQUESTS_METRIC)
    if metric is not None and len(metric.get("timeseries") or []) >= SERIES_LIMIT:
        raise SourceError(
            f"azure-metrics: {REQUESTS_METRIC}: {SERIES_LIMIT} series or more in one answer; "
            "the service may have left some out, so the counts would be too low"
        )
    return metric


def _is_server_status(value: str) -> bool:
    code = value.strip()
    return len(code) == 3 and code.isdigit() and code[0] == "5"


def parse_requests(
    response: Mapping[str, Any], deployment: str, dims: Dimensions = Dimensions()
) -> tuple[int, int, int]:
    """(requests, 5xx, non-2xx) of `deployment` from a `RequestsPerMinute` answer split by
    status code class; minutes are summed."""
    total = server = non_2xx = 0
    for values, data in _series_for(_counted(response), deployment, dims):
        count = int(round(sum(_points(data, "total"))))
        status_class = values.get(dims.status_class.lower(), "").lower()
        total += count
        if status_class == "5xx":
            server += count
        if status_class != "2xx":
            non_2xx += count
    return total, server, non_2xx


def parse_model_errors(
    response: Mapping[str, Any], deployment: str, dims: Dimensions = Dimensions()
) -> int:
    """Requests of `deployment` answered 424 whose model answered 5xx, from a
    `RequestsPerMinute` answer filtered to status code 424 and split by model status code;
    minutes are summed. A series without a model status is not counted: nothing says the model
    failed."""
    errors = 0
    for values, data in _series_for(_counted(response), deployment, dims):
        status = values.get(dims.status_code.lower())
        if status is not None and status.strip() != MODEL_ERROR_STATUS:
            continue  # the filter already asked for 424 only
        if _is_server_status(values.get(dims.model_status.lower(), "")):
            errors += int(round(sum(_points(data, "total"))))
    return errors


def parse_latency(
    response: Mapping[str, Any], deployment: str, dims: Dimensions = Dimensions()
) -> tuple[dict[int, float], dict[int, int]]:
    """({percentile: worst per-minute value}, {percentile: minutes with data})."""
    worst: dict[int, float] = {}
    minutes: dict[int, int] = {}
    for percentile, name in LATENCY_METRICS.items():
        values = [
            v
            for _, data in _series_for(_metric(response, name), deployment, dims)
            for v in _points(data, "maximum")
        ]
        if values:
            worst[percentile] = max(values)
            minutes[percentile] = len(values)
    return worst, minutes


def parse_utilisation(response: Mapping[str, Any], name: str) -> float | None:
    """The busiest minute's average of a deployment metric; None without data."""
    metric = _metric(response, name)
    values = [
        v
        for e in (metric or {}).get("timeseries") or []
        for v in _points(e.get("data") or [], "average")
    ]
    return max(values) if values else None


def describe_latency(minutes: Mapping[int, int]) -> str:
    if not minutes:
        return "no per-minute latency data"
    counts = set(minutes.values())
    if len(counts) == 1:
        labels = "/".join(f"p{p}" for p in sorted(minutes))
        return f"maximum of {counts.pop()} per-minute {labels} values"
    parts = ", ".join(f"p{p} over {n} minutes" for p, n in sorted(minutes.items()))
    return f"maximum of per-minute values ({parts})"


# -- the source ---------------------------------------------------------------------------------


class AzureMetricsSource:
    name = "azure-metrics"
    ingestion_delay_s = INGESTION_DELAY_S
    per_minute = True

    def __init__(
        self,
        subscription_id: str,
        workspace_resource_id: str,
        *,
        credential: Any,
        transport: Any = None,
        dimensions: Dimensions = Dimensions(),
    ):
        self._subscription_id = subscription_id
        self._workspace_id = workspace_resource_id.rstrip("/")
        self._credential = credential
        self._transport = transport
        self._dims = dimensions
        self._client: Any = None

    @property
    def client(self) -> Any:
        if self._client is None:
            from azure.mgmt.monitor import MonitorManagementClient

            options = {"transport": self._transport} if self._transport is not None else {}
            self._client = MonitorManagementClient(
                self._credential, self._subscription_id, **options
            )
        return self._client

    def _list(
        self,
        resource_id: str,
        span: str,
        names: list[str],
        aggregation: str,
        filter: str | None,
        top: int | None = None,
    ) -> Mapping[str, Any]:
        from azure.core.exceptions import AzureError

        try:
            # `cls` hands back the REST body itself, so the parsers read the documented shape.
            return self.client.metrics.list(
                resource_id,
                timespan=span,
                interval="PT1M",
                metricnames=",".join(names),
                aggregation=aggregation,
                filter=filter,
                top=top,
                cls=lambda pipeline_response, _deserialized, _headers: (
                    pipeline_response.http_response.json()
                ),
            )
        except AzureError as exc:
            reason = getattr(getattr(exc, "error", None), "code", None) or type(exc).__name__
            raise SourceError(
                f"azure-metrics: {', '.join(names)} of {resource_id.rsplit('/', 1)[-1]}: {reason}"
            ) from exc

    def measure(
        self, endpoint: str, deployment: str, window: Window, *, mirrored: bool
    ) -> Measurement:
        minutes = complete_minutes(window)
        if minutes is None:
            return Measurement(0, 0, 0, {}, aggregation="no complete minute in the window")
        span = timespan(*minutes)
        endpoint_id = f"{self._workspace_id}/onlineEndpoints/{endpoint}"
        dims = self._dims
        only_this = f"{dims.deployment} eq {quoted(deployment)}"

        counts = self._list(
            endpoint_id,
            span,
            [REQUESTS_METRIC],
            "Total",
            f"{only_this} and {dims.status_class} eq '*'",
            SERIES_LIMIT,
        )
        requests, server_errors, non_2xx = parse_requests(counts, deployment, dims)
        if non_2xx > server_errors:
            model_answers = self._list(
                endpoint_id,
                span,
                [REQUESTS_METRIC],
                "Total",
                f"{only_this} and {dims.status_code} eq {quoted(MODEL_ERROR_STATUS)}"
                f" and {dims.model_status} eq '*'",
                SERIES_LIMIT,
            )
            # Capped by the other non-2xx answers: a minute that landed between the two calls
            # must not make more errors than answers.
            model_errors = parse_model_errors(model_answers, deployment, dims)
            server_errors += min(model_errors, non_2xx - server_errors)
        latency_answer = self._list(
            endpoint_id, span, list(LATENCY_METRICS.values()), "Maximum", only_this
        )
        latency, latency_minutes = parse_latency(latency_answer, deployment, dims)
        usage = self._list(
            f"{endpoint_id}/deployments/{deployment}",
            span,
            [CPU_METRIC, MEMORY_METRIC],
            "Average",
            None,
        )
        return Measurement(
            requests=requests,
            server_errors=server_errors,
            non_2xx=non_2xx,
            latency_ms=latency,
            cpu_percent=parse_utilisation(usage, CPU_METRIC),
            memory_percent=parse_utilisation(usage, MEMORY_METRIC),
            aggregation=describe_latency(latency_minutes),
        )
