"""The one place where Azure SDK errors become the engine's own (`engine.errors`).

Every call the `azureml` provider makes goes through `translated(...)`: throttling, 5xx,
timeouts and lost connections become `TransientError` with a delay (the service's Retry-After
when it sends one); refusals, missing resources and failed long-running operations become
`PermanentError` naming the endpoint, the operation and the service's error code.
Azure packages are imported lazily: importing this module costs nothing.
"""

from __future__ import annotations

import email.utils
import re
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from engine.errors import ConflictError, PermanentError, ProviderError, TransientError

# Delays when the service names none: throttling backs off longest, a lost connection least.
THROTTLED_DELAY_S = 30.0
SERVER_ERROR_DELAY_S = 10.0
CONNECTION_DELAY_S = 5.0
MAX_RETRY_AFTER_S = 600.0

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_TRANSIENT_STATUS = {408, 429, 500, 502, 503, 504}


def retry_after_seconds(
    headers: Mapping[str, str] | None, *, now: float | None = None
) -> float | None:
    """The delay a response asks for: `retry-after-ms`, `x-ms-retry-after-ms`, or `Retry-After`
    in seconds or as an HTTP date. None when the response names no (readable) delay."""
    if not headers:
        return None
    lowered = {k.lower(): v for k, v in headers.items()}
    for key in ("retry-after-ms", "x-ms-retry-after-ms"):
        try:
            return min(max(float(lowered[key]) / 1000.0, 0.0), MAX_RETRY_AFTER_S)
        except (KeyError, ValueError):
            pass
    value = lowered.get("retry-after")
    if value is None:
        return None
    try:
        return min(max(float(value), 0.0), MAX_RETRY_AFTER_S)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None
    current = time.time() if now is None else now
    return min(max(when - current, 0.0), MAX_RETRY_AFTER_S)


def clean_message(text: str) -> str:
    """One readable line: no terminal colour codes (azure-ai-ml adds them), no blank lines."""
    lines = [line.strip() for line in _ANSI.sub("", text).splitlines() if line.strip()]
    return " ".join(lines)[:500]


def _service_code_and_message(exc: BaseException) -> tuple[str, str]:
    error = getattr(exc, "error", None)  # the ODataV4 body of an HttpResponseError, when parsed
    code = getattr(error, "code", None) or ""
    message = getattr(error, "message", None) or getattr(exc, "message", None) or str(exc)
    return str(code), clean_message(str(message))


def _status_of(exc: BaseException) -> int | None:
    status = getattr(exc, "status_code", None)
    if status is None:
        status = getattr(getattr(exc, "response", None), "status_code", None)
    return status if isinstance(status, int) else None


def _headers_of(exc: BaseException) -> Mapping[str, str] | None:
    return getattr(getattr(exc, "response", None), "headers", None)


def translate(
    exc: BaseException, *, endpoint: str, operation: str, subject: str = ""
) -> ProviderError:
    """The engine error for `exc`, raised by an Azure SDK during `operation` on `endpoint`
    (or on `subject`, such as a workspace, when the call is about no endpoint)."""
    from azure.core import exceptions as core

    code, detail = _service_code_and_message(exc)
    where = f"{operation} on {subject or f'endpoint {endpoint}'}"
    fields = {"endpoint": endpoint, "operation": operation}

    def transient(reason: str, delay: float) -> TransientError:
        text = f"{where} failed ({reason}): {detail}; will retry after {delay:g}s"
        return TransientError(text, retry_after=delay, code=code or reason, **fields)

    def permanent(reason: str, hint: str = "") -> PermanentError:
        label = code or reason
        text = f"{where} failed: {label}: {detail}" + (f"; {hint}" if hint else "")
        return PermanentError(text, code=label, **fields)

    if isinstance(exc, core.ClientAuthenticationError):
        hint = "check the credential and the role assignments described in docs/azure.md"
        return permanent("AuthenticationFailed", hint)
    if isinstance(exc, core.ResourceModifiedError):
        text = f"{where} was refused: the resource changed since it was read ({code or 412})"
        return ConflictError(text, code=code or "PreconditionFailed", **fields)
    if isinstance(exc, core.TooManyRedirectsError):
        return permanent("TooManyRedirects")
    if isinstance(exc, core.DecodeError):
        # A truncated or garbled body is a transport accident, not the service's answer.
        return transient("unreadable response", CONNECTION_DELAY_S)
    if isinstance(exc, core.HttpResponseError):
        status = _status_of(exc)
        if status in _TRANSIENT_STATUS:
            asked = retry_after_seconds(_headers_of(exc))
            default = THROTTLED_DELAY_S if status == 429 else SERVER_ERROR_DELAY_S
            return transient(f"HTTP {status}", default if asked is None else asked)
        if status is None or 200 <= status < 300:
            # azure-core raises a failed long-running operation with the poll's 200 status.
            return permanent("OperationFailed")
        return permanent(f"HTTP {status}")
    if isinstance(exc, core.ServiceRequestError | core.ServiceResponseError):
        kind = "timed out" if "Timeout" in type(exc).__name__ else "connection failed"
        return transient(kind, CONNECTION_DELAY_S)
    if isinstance(exc, core.SerializationError | core.DeserializationError):
        return permanent("UnexpectedResponse")
    if isinstance(exc, TimeoutError):
        return transient("timed out", CONNECTION_DELAY_S)
    if isinstance(exc, core.AzureError):
        # azure-ai-ml's own MlException family (validation, assets) and the rest of azure-core.
        return permanent(type(exc).__name__)
    raise TypeError(f"not an Azure error: {type(exc).__name__}")


def is_translatable(exc: BaseException) -> bool:
    from azure.core.exceptions import AzureError, DeserializationError, SerializationError

    return isinstance(exc, AzureError | SerializationError | DeserializationError | TimeoutError)


@contextmanager
def translated(*, endpoint: str, operation: str, subject: str = "") -> Iterator[None]:
    """Re-raise any Azure error from the block as the engine's own, chaining the cause."""
    try:
        yield
    except ProviderError:
        raise
    except Exception as exc:
        if not is_translatable(exc):
            raise
        raise translate(exc, endpoint=endpoint, operation=operation, subject=subject) from exc
