"""Durations as manifests write them (`30s`, `10m`, `2h`) and as people read them."""

from __future__ import annotations

import re
from datetime import timedelta

DURATION_PATTERN = r"^[0-9]+(s|m|h)$"
_UNITS = {"s": 1, "m": 60, "h": 3600}
_DURATION = re.compile(DURATION_PATTERN)


def parse_duration(text: str) -> timedelta:
    """`"10m"` -> 10 minutes. Raises ValueError for anything else (`10`, `1.5h`, `10 min`)."""
    match = _DURATION.match(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"not a duration: {text!r}; write a whole number with s, m or h, e.g. 10m")
    return timedelta(seconds=int(text[:-1]) * _UNITS[text[-1]])


def format_duration(value: timedelta | float) -> str:
    """Compact human form: `1h5m`, `4m30s`, `12s`, `0s`."""
    seconds = int(round(value.total_seconds() if isinstance(value, timedelta) else value))
    if seconds <= 0:
        return "0s"
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{n}{unit}" for n, unit in ((hours, "h"), (minutes, "m"), (secs, "s")) if n]
    return "".join(parts)


def to_manifest_form(value: timedelta) -> str:
    """The shortest exact manifest spelling of a duration: 600 s -> `10m`."""
    seconds = int(value.total_seconds())
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
