"""Gate source `azure-logs`: the endpoint's traffic log in Log Analytics.

Called by the gate evaluator through `GateSource.measure`. One KQL query over
`AmlOnlineEndpointTrafficLog` (present once a diagnostic setting sends it to the workspace, see
docs/azure.md) counts every logged request of the deployment in the window: requests, server
errors and non-2xx exactly, latency percentiles of `TotalDurationMs` by KQL's `percentiles()` (a
t-digest estimate, close to exact at these volumes). A partial result is an error of the source,
never a smaller sample.

Server errors are the rows whose `ResponseCode` is 5xx, plus the rows answered 424 whose
`ModelStatusCode` is 5xx: a managed endpoint answers 424 when the model's own answer was not 200
and logs the model's status in that column, so a scoring script that raises shows up as 424 with
model status 500. A 424 for a model's 4xx stays a client error, and so does a row without a
model status. Both columns are `int` in the table reference, while its sample queries compare
`ResponseCode` with text: `toint()` reads either.

Mirrored requests carry no mark in the log: Azure logs a mirrored copy under the shadow
deployment's name. Since a deployment never has live and mirrored traffic at once, the
deployment's rows during a mirror step are its mirrored traffic; `mirrored=True` runs the same
query (see `engine.sources.azure_metrics` for the same reasoning).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from engine.errors import PermanentError, SourceError
from engine.providers.base import Measurement, Window

TABLE = "AmlOnlineEndpointTrafficLog"
MODEL_ERROR_STATUS = 424  # the endpoint's answer when the model's own answer was not 200
PERCENTILES = (50, 90, 95, 99)
INGESTION_DELAY_S = 300.0  # Log Analytics typically makes rows queryable within a few minutes
WORKSPACE_ENV = "AZURE_LOG_ANALYTICS_WORKSPACE_ID"


def _kql_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _kql_time(moment: datetime) -> str:
    return "datetime(" + moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ") + ")"


def build_query(endpoint: str, window: Window) -> str:
    """Counts and latency percentiles per deployment of one endpoint over `window`."""
    percentiles = ", ".join(str(p) for p in PERCENTILES)
    return "\n".join(
        [
            TABLE,
            f"| where TimeGenerated >= {_kql_time(window.start)}"
            f" and TimeGenerated < {_kql_time(window.end)}",
            f"| where EndpointName =~ {_kql_string(endpoint)}",
            "| extend Code = toint(ResponseCode), ModelCode = toint(ModelStatusCode)",
            "| summarize Requests = count(),",
            "    ServerErrors = countif((Code >= 500 and Code <= 599)"
            f" or (Code == {MODEL_ERROR_STATUS} and ModelCode >= 500 and ModelCode <= 599)),",
            "    Non2xx = countif(isnull(Code) or Code < 200 or Code > 299),",
            f"    percentiles(TotalDurationMs, {percentiles})",
            "    by DeploymentName",
        ]
    )


def _number(value: Any) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def parse_rows(
    columns: Sequence[str], rows: Sequence[Sequence[Any]], deployment: str
) -> Measurement:
    """The deployment's row of the query's table as a Measurement; no row means no requests."""
    index = {name.lower(): i for i, name in enumerate(columns)}
    for row in rows:
        if str(row[index["deploymentname"]]).lower() != deployment.lower():
            continue
        requests = int(_number(row[index["requests"]]) or 0)
        latency = {}
        for p in PERCENTILES:
            position = index.get(f"percentile_totaldurationms_{p}")
            value = _number(row[position]) if position is not None else None
            if value is not None and requests:
                latency[p] = value
        return Measurement(
            requests=requests,
            server_errors=int(_number(row[index["servererrors"]]) or 0),
            non_2xx=int(_number(row[index["non2xx"]]) or 0),
            latency_ms=latency,
            aggregation=f"KQL percentiles over {requests:,} logged requests",
        )
    return Measurement(0, 0, 0, {}, aggregation="no logged requests")


def table_columns(table: Any) -> list[str]:
    columns = getattr(table, "columns", None) or []
    return [c if isinstance(c, str) else getattr(c, "name", str(c)) for c in columns]


class AzureLogsSource:
    name = "azure-logs"
    ingestion_delay_s = INGESTION_DELAY_S
    per_minute = False

    def __init__(self, workspace_id: str, *, credential: Any, transport: Any = None):
        if not workspace_id:
            raise PermanentError(
                "gate source azure-logs needs a Log Analytics workspace id: set "
                f"spec.analysis.workspace_id or {WORKSPACE_ENV}",
                operation="open gate source",
                code="WorkspaceIdMissing",
            )
        self.workspace_id = workspace_id
        self._credential = credential
        self._transport = transport
        self._client: Any = None

    @property
    def client(self) -> Any:
        if self._client is None:
            from azure.monitor.query import LogsQueryClient

            options = {"transport": self._transport} if self._transport is not None else {}
            self._client = LogsQueryClient(self._credential, **options)
        return self._client

    def measure(
        self, endpoint: str, deployment: str, window: Window, *, mirrored: bool
    ) -> Measurement:
        from azure.core.exceptions import AzureError
        from azure.monitor.query import LogsQueryPartialResult

        if window.end <= window.start:
            return Measurement(0, 0, 0, {}, aggregation="empty window")
        try:
            result = self.client.query_workspace(
                self.workspace_id,
                build_query(endpoint, window),
                timespan=(window.start, window.end),
            )
        except AzureError as exc:
            reason = getattr(getattr(exc, "error", None), "code", None) or type(exc).__name__
            raise SourceError(
                f"azure-logs: query for endpoint {endpoint} failed: {reason}"
            ) from exc
        if isinstance(result, LogsQueryPartialResult):
            error = result.partial_error
            code = getattr(error, "code", None) or "PartialError"
            raise SourceError(
                f"azure-logs: query for endpoint {endpoint} returned a partial result ({code}): "
                "a partial count could pass a gate it should fail"
            )
        if not result.tables:
            return Measurement(0, 0, 0, {}, aggregation="no logged requests")
        table = result.tables[0]
        return parse_rows(table_columns(table), table.rows, deployment)
