"""Gate sources azure-metrics and azure-logs, fed answers in the exact REST shapes."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from engine.errors import PermanentError, SourceError
from engine.gates import GateResult, Verdict, evaluate_gate
from engine.loader import load_manifest
from engine.providers.base import Measurement, Window
from engine.sources import azure_logs, azure_metrics
from engine.state import Phase
from tests.azure_fake import (
    WS_PATH,
    Behaviour,
    FakeAzure,
    Response,
    Sample,
    block_network,
    checked_fake,
    log_table,
    provider_for,
    series,
)
from tests.test_azure_rollout import Story, answers_like_the_model, desired

EP = "credit-risk"
T0 = datetime(2026, 12, 4, 10, 0, tzinfo=UTC)
ENDPOINT_ID = f"{WS_PATH}/onlineEndpoints/{EP}".lower()
LA_WORKSPACE = "11111111-1111-1111-1111-111111111111"
MANIFEST = Path(__file__).resolve().parent.parent / "rollouts" / "credit-risk.yaml"


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    block_network(monkeypatch)


@pytest.fixture
def fake_azure() -> Iterator[FakeAzure]:
    fake = FakeAzure()
    fake.add_endpoint(EP)
    fake.add_deployment(EP, "blue", ("credit-risk", "6"))
    fake.add_deployment(EP, "green", ("credit-risk", "7"))
    yield from checked_fake(fake)


def minutes(n: int, value: dict, start: datetime = T0) -> list:
    return [(start + timedelta(minutes=i), value) for i in range(n)]


def window(first_minute: int = 0, last_minute: int = 10) -> Window:
    return Window(T0 + timedelta(minutes=first_minute), T0 + timedelta(minutes=last_minute))


def error_gate(measured: Measurement) -> GateResult:
    """The checked-in Azure manifest's `candidate-errors` gate (error_rate, max 0.01, at least
    200 requests) judging `measured`."""
    spec = load_manifest(MANIFEST).rollout.spec
    (gate,) = [g for g in spec.gates if g.name == "candidate-errors"]
    return evaluate_gate(gate, 0, measured, None, spec.analysis)


# -- azure-metrics --------------------------------------------------------------------------------


def test_requests_are_split_by_status_class_even_with_lower_cased_dimension_names(
    fake_azure: FakeAzure,
) -> None:
    fake_azure.metrics[(ENDPOINT_ID, "requestsperminute")] = [
        series({"deployment": "green", "statuscodeclass": "2xx"}, minutes(10, {"total": 120.0})),
        series({"deployment": "green", "statuscodeclass": "4xx"}, minutes(2, {"total": 5.0})),
        series({"deployment": "green", "statuscodeclass": "5xx"}, minutes(3, {"total": 4.0})),
        series({"deployment": "blue", "statuscodeclass": "5xx"}, minutes(10, {"total": 999.0})),
    ]
    source = provider_for(fake_azure).gate_source("azure-metrics", None)
    measured = source.measure(EP, "green", window(), mirrored=False)

    assert (measured.requests, measured.server_errors, measured.non_2xx) == (1222, 12, 22)


def test_the_query_asks_azure_for_complete_minutes_of_one_deployment(
    fake_azure: FakeAzure,
) -> None:
    source = provider_for(fake_azure).gate_source("azure-metrics", None)
    ragged = Window(T0 + timedelta(seconds=20), T0 + timedelta(minutes=9, seconds=59))
    source.measure(EP, "green", ragged, mirrored=False)

    counts, latency, usage = fake_azure.requests_to("GET", r"/Microsoft\.Insights/metrics$")
    assert counts.query["timespan"] == "2026-12-04T10:01:00Z/2026-12-04T10:09:00Z"
    assert counts.query["interval"] == "PT1M"
    assert counts.query["metricnames"] == "RequestsPerMinute"
    assert counts.query["aggregation"] == "Total"
    assert counts.query["$filter"] == "deployment eq 'green' and statusCodeClass eq '*'"
    assert latency.query["metricnames"] == (
        "RequestLatency_P50,RequestLatency_P90,RequestLatency_P95,RequestLatency_P99"
    )
    assert latency.query["$filter"] == "deployment eq 'green'"
    assert (
        usage.path.lower()
        == f"{ENDPOINT_ID}/deployments/green/providers/microsoft.insights/metrics"
    )
    assert usage.query["metricnames"] == "CpuUtilizationPercentage,CpuMemoryUtilizationPercentage"


def test_a_window_without_a_complete_minute_is_no_data_and_no_query(
    fake_azure: FakeAzure,
) -> None:
    source = provider_for(fake_azure).gate_source("azure-metrics", None)
    short = Window(T0 + timedelta(seconds=10), T0 + timedelta(seconds=70))
    measured = source.measure(EP, "green", short, mirrored=False)
    assert (measured.requests, measured.latency_ms) == (0, {})
    assert fake_azure.requests_to("GET", r"/metrics$") == []


def test_empty_series_and_missing_minutes_count_as_no_requests(fake_azure: FakeAzure) -> None:
    sparse = [
        (T0, {"total": 7.0}),
        (T0 + timedelta(minutes=1), {}),
        (T0 + timedelta(minutes=5), {}),
    ]
    fake_azure.metrics[(ENDPOINT_ID, "requestsperminute")] = [
        series({"deployment": "green", "statuscodeclass": "2xx"}, sparse),
        series({"deployment": "green", "statuscodeclass": "5xx"}, []),
    ]
    fake_azure.metrics[(ENDPOINT_ID, "requestlatency_p90")] = []
    source = provider_for(fake_azure).gate_source("azure-metrics", None)
    measured = source.measure(EP, "green", window(), mirrored=False)

    assert (measured.requests, measured.server_errors) == (7, 0)
    assert measured.latency_ms == {}
    assert measured.aggregation == "no per-minute latency data"


def test_latency_is_the_worst_minute_and_the_measurement_says_so(fake_azure: FakeAzure) -> None:
    p90 = [(T0, {"maximum": 80.0}), (T0 + timedelta(minutes=4), {"maximum": 131.5})]
    p90 += [(T0 + timedelta(minutes=m), {"maximum": 90.0}) for m in (1, 2, 3, 5, 6, 7, 8)]
    fake_azure.metrics[(ENDPOINT_ID, "requestlatency_p90")] = [series({"deployment": "green"}, p90)]
    source = provider_for(fake_azure).gate_source("azure-metrics", None)
    measured = source.measure(EP, "green", window(), mirrored=False)

    assert measured.latency_ms == {90: 131.5}
    assert measured.aggregation == "maximum of 9 per-minute p90 values"


def test_cpu_and_memory_are_the_busiest_minutes_average(fake_azure: FakeAzure) -> None:
    deployment_id = f"{ENDPOINT_ID}/deployments/green"
    fake_azure.metrics[(deployment_id, "cpuutilizationpercentage")] = [
        series({}, [(T0, {"average": 35.0}), (T0 + timedelta(minutes=1), {"average": 62.5})])
    ]
    fake_azure.metrics[(deployment_id, "cpumemoryutilizationpercentage")] = [
        series({}, minutes(3, {"average": 41.0}))
    ]
    source = provider_for(fake_azure).gate_source("azure-metrics", None)
    measured = source.measure(EP, "green", window(), mirrored=False)
    assert (measured.cpu_percent, measured.memory_percent) == (62.5, 41.0)


def test_mirrored_copies_are_read_from_the_shadow_deployments_own_series(
    fake_azure: FakeAzure,
) -> None:
    fake_azure.metrics[(ENDPOINT_ID, "requestsperminute")] = [
        series({"deployment": "green", "statuscodeclass": "2xx"}, minutes(10, {"total": 20.0})),
    ]
    source = provider_for(fake_azure).gate_source("azure-metrics", None)
    mirrored = source.measure(EP, "green", window(), mirrored=True)
    assert mirrored.requests == 200


# -- azure-metrics: model errors behind 424 ---------------------------------------------------


def model_error_answers(query: dict[str, str]) -> list[dict]:
    """`RequestsPerMinute` of a window in which the scoring script failed: 1,000 answers 200 and
    77 answers 424, of which 60 to a model's 500, 2 to its 503 and 15 to its 400. The service
    answers both queries with lower-cased dimension names."""
    if "statusCode eq '424'" in query["$filter"]:
        return [
            series(
                {"deployment": "green", "statuscode": "424", "modelstatuscode": code},
                minutes(n, {"total": per_minute}),
            )
            for code, n, per_minute in (("500", 10, 6.0), ("503", 2, 1.0), ("400", 5, 3.0))
        ]
    return [
        series({"deployment": "green", "statuscodeclass": "2xx"}, minutes(10, {"total": 100.0})),
        series({"deployment": "green", "statuscodeclass": "4xx"}, minutes(7, {"total": 11.0})),
    ]


def test_a_model_failing_behind_424_counts_as_server_errors_and_fails_the_error_gate(
    fake_azure: FakeAzure,
) -> None:
    fake_azure.metrics[(ENDPOINT_ID, "requestsperminute")] = model_error_answers
    source = provider_for(fake_azure).gate_source("azure-metrics", None)
    measured = source.measure(EP, "green", window(), mirrored=False)

    assert (measured.requests, measured.server_errors, measured.non_2xx) == (1077, 62, 77)
    by_class, by_model_status = fake_azure.requests_to("GET", r"/onlineEndpoints/[^/]+/providers")[
        :2
    ]
    assert by_model_status.query["metricnames"] == "RequestsPerMinute"
    assert by_model_status.query["$filter"] == (
        "deployment eq 'green' and statusCode eq '424' and modelStatusCode eq '*'"
    )
    assert by_class.query["top"] == by_model_status.query["top"] == "100"
    result = error_gate(measured)
    assert result.verdict is Verdict.FAILED
    assert result.reason.startswith("candidate-errors: error_rate 0.0576 > max 0.01 over 1,077")


def test_a_window_of_2xx_and_5xx_answers_asks_nothing_about_model_errors(
    fake_azure: FakeAzure,
) -> None:
    fake_azure.metrics[(ENDPOINT_ID, "requestsperminute")] = [
        series({"deployment": "green", "statuscodeclass": "2xx"}, minutes(10, {"total": 50.0})),
        series({"deployment": "green", "statuscodeclass": "5xx"}, minutes(1, {"total": 2.0})),
    ]
    source = provider_for(fake_azure).gate_source("azure-metrics", None)
    measured = source.measure(EP, "green", window(), mirrored=False)

    assert (measured.requests, measured.server_errors, measured.non_2xx) == (502, 2, 2)
    filters = [r.query.get("$filter") for r in fake_azure.requests_to("GET", r"/metrics$")]
    assert len(filters) == 3 and not any("statusCode eq" in (f or "") for f in filters)


def test_model_errors_that_landed_after_the_first_query_never_outnumber_the_4xx_answers(
    fake_azure: FakeAzure,
) -> None:
    def answers(query: dict[str, str]) -> list[dict]:
        if "statusCode eq '424'" in query["$filter"]:  # five by now, three a moment before
            return [series({"statuscode": "424", "modelstatuscode": "500"}, [(T0, {"total": 5.0})])]
        return [
            series({"statuscodeclass": "2xx"}, [(T0, {"total": 100.0})]),
            series({"statuscodeclass": "4xx"}, [(T0, {"total": 3.0})]),
        ]

    fake_azure.metrics[(ENDPOINT_ID, "requestsperminute")] = answers
    source = provider_for(fake_azure).gate_source("azure-metrics", None)
    measured = source.measure(EP, "green", window(), mirrored=False)
    assert (measured.requests, measured.server_errors, measured.non_2xx) == (103, 3, 3)


def test_only_a_5xx_model_status_of_this_deployments_424s_is_a_server_error() -> None:
    counted = [
        ({"deployment": "green", "modelstatuscode": "502"}, 12),
        ({"Deployment": "GREEN", "ModelStatusCode": "500"}, 5),  # names and values in any case
        ({"statuscode": "424", "modelstatuscode": "503"}, 1),  # the filter named the deployment
    ]
    ignored = [
        {"deployment": "green", "modelstatuscode": "404"},  # the script refused the request
        {"deployment": "green", "modelstatuscode": ""},  # no model status recorded
        {"deployment": "green"},
        {"deployment": "green", "statuscode": "408", "modelstatuscode": "500"},  # not a 424
        {"deployment": "blue", "modelstatuscode": "500"},
    ]
    quiet = (T0 + timedelta(minutes=1), {})  # a minute without data carries only its timeStamp
    timeseries = [series(dims, [(T0, {"total": float(n)}), quiet]) for dims, n in counted]
    timeseries += [series(dims, minutes(9, {"total": 9.0})) for dims in ignored]
    answer = {
        "value": [
            {
                "name": {"value": "RequestsPerMinute", "localizedValue": "Requests Per Minute"},
                "errorCode": "Success",
                "timeseries": timeseries,
            }
        ]
    }
    assert azure_metrics.parse_model_errors(answer, "green") == 12 + 5 + 1


def test_every_model_status_is_counted_though_the_service_returns_ten_series_unless_asked(
    fake_azure: FakeAzure,
) -> None:
    def record(minute: int, count: int, **dimensions: str) -> None:
        dims = tuple(
            sorted((k.lower(), v) for k, v in {"deployment": "green", **dimensions}.items())
        )
        at = T0 + timedelta(minutes=minute)
        fake_azure.samples.append(Sample(ENDPOINT_ID, "requestsperminute", dims, at, count))

    for minute in range(10):
        record(minute, 100, statusCodeClass="2xx", statusCode="200", modelStatusCode="200")
    for code in range(500, 512):  # twelve statuses: more series than the default ten
        record(code - 500, 1, statusCodeClass="4xx", statusCode="424", modelStatusCode=str(code))
    source = provider_for(fake_azure).gate_source("azure-metrics", None)
    measured = source.measure(EP, "green", window(0, 12), mirrored=False)

    assert (measured.requests, measured.server_errors, measured.non_2xx) == (1012, 12, 12)


def test_an_answer_that_may_have_been_cut_short_is_a_source_error() -> None:
    full = [
        series({"deployment": "green", "modelstatuscode": str(500 + i % 100)}, [])
        for i in range(azure_metrics.SERIES_LIMIT)
    ]
    answer = {"value": [{"name": {"value": "RequestsPerMinute"}, "timeseries": full}]}
    with pytest.raises(SourceError, match="100 series or more"):
        azure_metrics.parse_model_errors(answer, "green")
    with pytest.raises(SourceError, match="counts would be too low"):
        azure_metrics.parse_requests(answer, "green")


@pytest.fixture
def story_azure() -> Iterator[FakeAzure]:
    """The rollout story's offline Azure: versions 1-3 registered, a scorer that answers 200."""
    fake = FakeAzure()
    for version in ("1", "2", "3"):
        fake.register_model("credit-risk", version)
    fake.scorer = answers_like_the_model
    yield from checked_fake(fake, invariants=True)


def test_a_candidate_whose_script_raises_is_answered_424_and_rolled_back_by_the_error_gate(
    story_azure: FakeAzure,
) -> None:
    story = Story(story_azure)
    v2, v3 = desired("2").name, desired("3").name
    story.engine("2").apply()
    # Its script raises on one request in twenty (the demo's defect): Azure answers those 424
    # and records the model's 500; none of the candidate's answers is a 5xx.
    story_azure.behaviour[v3] = Behaviour(model_error_rate=0.05)
    engine = story.engine("3")
    engine.apply()

    minute, result = story.until(engine, lambda s: s.phase is Phase.ROLLED_BACK)

    # Mirrored copies, 120 a minute: step start + 1 m warm-up + 3 m ingestion, and two complete
    # minutes for min_requests 200.
    assert minute == 6
    assert result.rolled_back and story.split() == ({v2: 100}, {})
    state = story.state()
    assert state.steps[0].index == 0, "caught in the mirror step, before any client saw it"
    assert "candidate-errors: error_rate 0.05 > max 0.01 over 240 requests" in state.decision
    asked = [r.query.get("$filter", "") for r in story_azure.requests_to("GET", r"/metrics$")]
    assert f"deployment eq '{v3}' and statusCode eq '424' and modelStatusCode eq '*'" in asked


@pytest.mark.parametrize("status", [403, 503])
def test_a_failed_metrics_query_is_a_source_error(fake_azure: FakeAzure, status: int) -> None:
    fake_azure.fail("GET", r"/metrics$", status, times=4)
    source = provider_for(fake_azure).gate_source("azure-metrics", None)
    with pytest.raises(SourceError, match="azure-metrics: RequestsPerMinute of credit-risk"):
        source.measure(EP, "green", window(), mirrored=False)


def test_a_metric_the_service_could_not_read_is_a_source_error() -> None:
    answer = {
        "value": [
            {
                "name": {"value": "RequestsPerMinute"},
                "errorCode": "InvalidDimension",
                "errorMessage": "statusCodeClass is not a dimension",
                "timeseries": [],
            }
        ]
    }
    with pytest.raises(SourceError, match="InvalidDimension"):
        azure_metrics.parse_requests(answer, "green")


def test_complete_minutes_round_inwards() -> None:
    exact = azure_metrics.complete_minutes(window(0, 3))
    assert exact == (T0, T0 + timedelta(minutes=3))
    ragged = Window(T0 + timedelta(seconds=1), T0 + timedelta(minutes=2, seconds=1))
    assert azure_metrics.complete_minutes(ragged) == (
        T0 + timedelta(minutes=1),
        T0 + timedelta(minutes=2),
    )


# -- azure-logs -----------------------------------------------------------------------------------

LOG_COLUMNS = [
    ("DeploymentName", "string"),
    ("Requests", "long"),
    ("ServerErrors", "long"),
    ("Non2xx", "long"),
    ("percentile_TotalDurationMs_50", "real"),
    ("percentile_TotalDurationMs_90", "real"),
    ("percentile_TotalDurationMs_95", "real"),
    ("percentile_TotalDurationMs_99", "real"),
]


def test_counts_and_percentiles_come_from_the_deployments_row(fake_azure: FakeAzure) -> None:
    rows = [
        ["blue", 9000, 0, 1, 10.0, 20.0, 25.0, 40.0],
        ["green", 1240, 31, 40, 12, 55.5, 70, 118],
    ]
    fake_azure.log_answer = lambda query, span: Response(200, log_table(LOG_COLUMNS, rows))
    source = provider_for(fake_azure).gate_source("azure-logs", LA_WORKSPACE)
    measured = source.measure(EP, "green", window(), mirrored=False)

    assert (measured.requests, measured.server_errors, measured.non_2xx) == (1240, 31, 40)
    assert measured.latency_ms == {50: 12.0, 90: 55.5, 95: 70.0, 99: 118.0}
    assert measured.aggregation == "KQL percentiles over 1,240 logged requests"


def test_the_query_filters_endpoint_and_window_and_compares_codes_as_integers(
    fake_azure: FakeAzure,
) -> None:
    fake_azure.log_answer = lambda query, span: Response(200, log_table(LOG_COLUMNS, []))
    source = provider_for(fake_azure).gate_source("azure-logs", LA_WORKSPACE)
    measured = source.measure(EP, "green", window(1, 9), mirrored=False)

    (call,) = fake_azure.requests_to("POST", rf"^/v1/workspaces/{LA_WORKSPACE}/query$")
    query = call.body["query"]
    assert query.startswith("AmlOnlineEndpointTrafficLog\n")
    assert "TimeGenerated >= datetime(2026-12-04T10:01:00.000000Z)" in query
    assert "TimeGenerated < datetime(2026-12-04T10:09:00.000000Z)" in query
    assert 'EndpointName =~ "credit-risk"' in query
    assert "toint(ResponseCode)" in query
    assert "by DeploymentName" in query
    assert call.body["timespan"] == "2026-12-04T10:01:00.000Z/2026-12-04T10:09:00.000Z"
    assert (measured.requests, measured.latency_ms) == (0, {})


def test_the_log_query_counts_424_answers_to_a_5xx_model_status_as_server_errors(
    fake_azure: FakeAzure,
) -> None:
    # As Log Analytics computes it for a window whose only failures are the script's: 62 rows
    # answered 424 with ModelStatusCode 500 or 503, 15 answered 424 with 400, no 5xx ResponseCode.
    rows = [["green", 1077, 62, 77, 20.0, 48.0, 60.0, 95.0]]
    fake_azure.log_answer = lambda query, span: Response(200, log_table(LOG_COLUMNS, rows))
    source = provider_for(fake_azure).gate_source("azure-logs", LA_WORKSPACE)
    measured = source.measure(EP, "green", window(), mirrored=False)

    (call,) = fake_azure.requests_to("POST", rf"^/v1/workspaces/{LA_WORKSPACE}/query$")
    query = call.body["query"]
    assert "| extend Code = toint(ResponseCode), ModelCode = toint(ModelStatusCode)\n" in query
    assert (
        "ServerErrors = countif((Code >= 500 and Code <= 599)"
        " or (Code == 424 and ModelCode >= 500 and ModelCode <= 599)),\n"
    ) in query
    assert (measured.requests, measured.server_errors, measured.non_2xx) == (1077, 62, 77)
    result = error_gate(measured)
    assert result.verdict is Verdict.FAILED
    assert result.reason.startswith("candidate-errors: error_rate 0.0576 > max 0.01 over 1,077")


def test_a_partial_log_result_is_a_source_error_not_a_smaller_sample(
    fake_azure: FakeAzure,
) -> None:
    body = log_table(LOG_COLUMNS, [["green", 3, 0, 0, 1.0, 1.0, 1.0, 1.0]])
    body["error"] = {
        "code": "PartialError",
        "message": "There were some errors when processing your query.",
        "details": [{"code": "EngineError", "message": "query exceeded the memory limit"}],
    }
    fake_azure.log_answer = lambda query, span: Response(200, body)
    source = provider_for(fake_azure).gate_source("azure-logs", LA_WORKSPACE)
    with pytest.raises(SourceError, match="partial result"):
        source.measure(EP, "green", window(), mirrored=False)


def test_a_refused_log_query_is_a_source_error(fake_azure: FakeAzure) -> None:
    fake_azure.log_answer = lambda query, span: Response(
        400, {"error": {"code": "BadArgumentError", "message": "table not found"}}
    )
    source = provider_for(fake_azure).gate_source("azure-logs", LA_WORKSPACE)
    with pytest.raises(SourceError, match="azure-logs: query for endpoint credit-risk failed"):
        source.measure(EP, "green", window(), mirrored=False)


def test_the_log_analytics_workspace_comes_from_the_environment_when_the_manifest_has_none(
    fake_azure: FakeAzure, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AZURE_LOG_ANALYTICS_WORKSPACE_ID", "22222222-2222-2222-2222-222222222222")
    fake_azure.log_answer = lambda query, span: Response(200, log_table(LOG_COLUMNS, []))
    source = provider_for(fake_azure).gate_source("azure-logs", None)
    source.measure(EP, "green", window(), mirrored=False)
    assert fake_azure.requests_to("POST", r"/workspaces/2{8}-2{4}-2{4}-2{4}-2{12}/query$")


def test_without_a_log_analytics_workspace_the_error_says_what_to_set(
    fake_azure: FakeAzure,
) -> None:
    with pytest.raises(PermanentError, match="AZURE_LOG_ANALYTICS_WORKSPACE_ID"):
        provider_for(fake_azure).gate_source("azure-logs", None)


def test_a_row_without_requests_has_no_percentiles() -> None:
    columns = [name for name, _ in LOG_COLUMNS]
    nan = float("nan")
    measured = azure_logs.parse_rows(columns, [["GREEN", 0, 0, 0, nan, nan, None, nan]], "green")
    assert (measured.requests, measured.latency_ms) == (0, {})
