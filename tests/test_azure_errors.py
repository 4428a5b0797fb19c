"""The one boundary where Azure SDK errors become the engine's: every class is mapped."""

from __future__ import annotations

import inspect
import json

import pytest
from azure.core import exceptions as core

from engine.errors import ConflictError, PermanentError, TransientError
from engine.providers.azure.errors import retry_after_seconds, translate, translated

EP = "credit-risk"


class StubResponse:
    """The few attributes azure-core's HttpResponseError reads from a response."""

    def __init__(self, status: int, code: str = "", headers: dict | None = None):
        self.status_code = status
        self.reason = "reason"
        self.headers = headers or {}
        self.request = None
        self.content_type = "application/json"
        self._body = json.dumps({"error": {"code": code, "message": f"{code} happened"}})

    def text(self, encoding: str | None = None) -> str:
        return self._body


def build(cls: type) -> BaseException:
    if cls is core.TooManyRedirectsError:
        return cls([])
    if cls in (core.StreamConsumedError, core.StreamClosedError, core.ResponseNotReadError):
        return cls(StubResponse(200))
    if issubclass(cls, core.HttpResponseError):
        status = {
            core.ResourceNotFoundError: 404,
            core.ResourceExistsError: 409,
            core.ResourceModifiedError: 412,
            core.ResourceNotModifiedError: 304,
            core.ClientAuthenticationError: 401,
        }.get(cls, 400)
        return cls(message="refused", response=StubResponse(status, "SomeCode"))
    return cls("went wrong")


# Every exception class azure.core.exceptions defines, and what the engine makes of it.
EXPECTED = {
    "AzureError": PermanentError,
    "ClientAuthenticationError": PermanentError,
    "DecodeError": TransientError,
    "DeserializationError": PermanentError,
    "HttpResponseError": PermanentError,
    "IncompleteReadError": TransientError,
    "ODataV4Error": PermanentError,
    "ResourceExistsError": PermanentError,
    "ResourceModifiedError": ConflictError,
    "ResourceNotFoundError": PermanentError,
    "ResourceNotModifiedError": PermanentError,
    "ResponseNotReadError": PermanentError,
    "SerializationError": PermanentError,
    "ServiceRequestError": TransientError,
    "ServiceRequestTimeoutError": TransientError,
    "ServiceResponseError": TransientError,
    "ServiceResponseTimeoutError": TransientError,
    "StreamClosedError": PermanentError,
    "StreamConsumedError": PermanentError,
    "TooManyRedirectsError": PermanentError,
}


def azure_core_error_classes() -> dict[str, type]:
    roots = (core.AzureError, core.SerializationError, core.DeserializationError)
    return {
        name: cls
        for name, cls in inspect.getmembers(core, inspect.isclass)
        if issubclass(cls, roots) and cls.__module__ == core.__name__
    }


def test_the_table_covers_every_azure_core_exception_class() -> None:
    # A new class in a future azure-core shows up here instead of escaping the boundary.
    assert set(azure_core_error_classes()) == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_azure_core_exception_maps_to_the_engines_kind(name: str) -> None:
    exc = build(azure_core_error_classes()[name])
    translated_error = translate(exc, endpoint=EP, operation="update endpoint")
    assert type(translated_error) is EXPECTED[name]
    assert translated_error.endpoint == EP
    assert translated_error.operation == "update endpoint"
    assert f"update endpoint on endpoint {EP}" in str(translated_error)
    assert translated_error.code


@pytest.mark.parametrize(
    ("status", "kind", "delay"),
    [
        (400, PermanentError, None),
        (403, PermanentError, None),
        (404, PermanentError, None),
        (409, PermanentError, None),
        (408, TransientError, 10.0),
        (429, TransientError, 30.0),
        (500, TransientError, 10.0),
        (502, TransientError, 10.0),
        (503, TransientError, 10.0),
        (504, TransientError, 10.0),
    ],
)
def test_http_statuses_map_by_retry_semantics(status: int, kind: type, delay: float) -> None:
    exc = core.HttpResponseError(message="x", response=StubResponse(status, "ServiceCode"))
    result = translate(exc, endpoint=EP, operation="read endpoint")
    assert type(result) is kind
    assert result.code == "ServiceCode"
    assert "ServiceCode" in str(result)
    if delay is not None:
        assert result.retry_after == delay


def test_throttling_honours_the_services_retry_after() -> None:
    response = StubResponse(429, "TooManyRequests", {"Retry-After": "12"})
    result = translate(core.HttpResponseError(response=response), endpoint=EP, operation="read")
    assert isinstance(result, TransientError)
    assert result.retry_after == 12.0
    assert "will retry after 12s" in str(result)


def test_a_failed_long_running_operation_names_the_services_code() -> None:
    # azure-core raises a failed operation with the status of the last poll: 200.
    response = StubResponse(200, "DeploymentFailed")
    exc = core.HttpResponseError(message="failed", response=response)
    result = translate(exc, endpoint=EP, operation="create deployment")
    assert type(result) is PermanentError
    assert str(result).startswith(f"create deployment on endpoint {EP} failed: DeploymentFailed")


def test_sdk_errors_of_azure_ai_ml_and_azure_identity_are_permanent() -> None:
    from azure.ai.ml.exceptions import MlException, ValidationException
    from azure.identity import CredentialUnavailableError

    colourful = "\x1b[31mError:\x1b[0m name invalid\n\n  details"
    for exc in (
        MlException(message=colourful, no_personal_data_message="x"),
        ValidationException(message="bad", no_personal_data_message="x"),
        CredentialUnavailableError("no credential in this environment"),
    ):
        result = translate(exc, endpoint=EP, operation="create deployment")
        assert type(result) is PermanentError
        assert "\x1b" not in str(result)
    auth = translate(CredentialUnavailableError("none"), endpoint=EP, operation="read")
    assert "role assignments" in str(auth)


def test_our_own_wait_timeout_is_transient() -> None:
    assert isinstance(translate(TimeoutError(), endpoint=EP, operation="x"), TransientError)


def test_the_boundary_chains_the_cause_and_leaves_other_errors_alone() -> None:
    with pytest.raises(TransientError) as caught, translated(endpoint=EP, operation="read"):
        raise core.ServiceRequestError("connection reset")
    assert isinstance(caught.value.__cause__, core.ServiceRequestError)
    with pytest.raises(KeyError), translated(endpoint=EP, operation="read"):
        raise KeyError("a bug of ours stays a bug")


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"Retry-After": "7"}, 7.0),
        ({"retry-after-ms": "1500"}, 1.5),
        ({"x-ms-retry-after-ms": "250"}, 0.25),
        ({"Retry-After": "Fri, 04 Dec 2026 10:00:30 GMT"}, 30.0),
        ({"Retry-After": "soon"}, None),
        ({"Retry-After": "99999"}, 600.0),
        ({}, None),
    ],
)
def test_retry_after_is_read_in_every_documented_form(headers: dict, seconds: float) -> None:
    now = 1796378400.0  # 2026-12-04T10:00:00Z
    assert retry_after_seconds(headers, now=now) == seconds
