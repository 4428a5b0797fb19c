"""The engine's own errors, each carrying what the caller needs to decide what to do next.

Provider SDK errors are translated into these at the provider boundary: `TransientError` means
"try again after `retry_after` seconds", `PermanentError` means "stop and tell a human".
"""

from __future__ import annotations

from dataclasses import dataclass


class SafeRolloutError(Exception):
    """Root of the errors the engine raises on purpose; the CLI prints them without a traceback."""

    exit_code = 1


@dataclass(frozen=True)
class Problem:
    """One located problem in a manifest: `FILE:LINE:COL: path: message (got VALUE)`."""

    file: str
    line: int
    column: int
    path: str
    message: str
    value: str | None = None
    hint: str | None = None

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}"
        text = f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"
        if self.value is not None:
            text += f" (got {self.value})"
        if self.hint:
            text += f"; {self.hint}"
        return text


class ManifestError(SafeRolloutError):
    """A manifest (or a folder of them) is invalid; every problem found is listed at once."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class ProviderError(SafeRolloutError):
    """A provider call failed; says which operation on which endpoint."""

    def __init__(self, message: str, *, endpoint: str = "", operation: str = "", code: str = ""):
        self.endpoint = endpoint
        self.operation = operation
        self.code = code
        super().__init__(message)


class TransientError(ProviderError):
    """Worth retrying after `retry_after` seconds (throttling, 5xx, timeouts, lost connections)."""

    def __init__(self, message: str, *, retry_after: float = 1.0, **kwargs: str):
        self.retry_after = retry_after
        super().__init__(message, **kwargs)


class PermanentError(ProviderError):
    """Retrying will not help: a refused request, a missing resource, a failed operation."""


class ConflictError(PermanentError):
    """The endpoint changed between our read and our write; nothing was written."""


class LeaseHeldError(SafeRolloutError):
    """Another run holds the endpoint's lease; this run wrote nothing."""

    def __init__(self, endpoint: str, holder: str, until: str):
        self.endpoint = endpoint
        self.holder = holder
        self.until = until
        super().__init__(
            f"endpoint {endpoint} is locked by {holder} until {until}; nothing was written "
            f"(if that run is gone, `rollout unlock {endpoint}` breaks the lock)"
        )


class SourceError(SafeRolloutError):
    """A gate source could not answer; counted against `analysis.max_source_errors`."""


class StalePlanError(SafeRolloutError):
    """A saved plan no longer matches the live endpoint."""
