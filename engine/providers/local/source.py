"""The `local` gate source: exact counts and percentiles from the local request log.

Every request is a record, so nothing is sampled or aggregated per minute: percentiles are the
nearest-rank values over all requests in the window (p99 of 100 requests is the 99th smallest
latency). CPU and memory are the means of the worker's one-second samples in the window.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from engine.errors import SourceError
from engine.names import is_valid_name
from engine.providers.base import Measurement, Window
from engine.providers.local.requestlog import LogFormatError, read_requests, read_usage

PERCENTILES = (50, 90, 95, 99)


def _epoch(moment: datetime) -> float:
    # A naive time is taken as UTC, the engine's clock; local time would shift the window.
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def summarise(records: np.ndarray, usage: np.ndarray) -> Measurement:
    """Counts, exact percentiles and mean utilisation of already selected records (pure)."""
    count = len(records)
    status = records["status"]
    latency_ms: dict[int, float] = {}
    if count:
        values = np.percentile(
            records["latency_ms"].astype(np.float64), PERCENTILES, method="inverted_cdf"
        )
        latency_ms = {p: float(v) for p, v in zip(PERCENTILES, values, strict=True)}
    return Measurement(
        requests=count,
        server_errors=int(np.count_nonzero(status >= 500)),
        non_2xx=int(np.count_nonzero((status < 200) | (status >= 300))),
        latency_ms=latency_ms,
        cpu_percent=float(usage["cpu"].mean()) if len(usage) else None,
        memory_percent=float(usage["memory"].mean()) if len(usage) else None,
        aggregation=f"exact over {count:,} requests",
        latencies_ms=records["latency_ms"].astype(np.float64),
    )


class LocalSource:
    name = "local"
    ingestion_delay_s = 0.5  # the server flushes its log every 0.2 s
    per_minute = False

    def __init__(self, home: Path):
        self.home = Path(home)

    def measure(
        self, endpoint: str, deployment: str, window: Window, *, mirrored: bool
    ) -> Measurement:
        if not (is_valid_name(endpoint) and is_valid_name(deployment)):
            # Names become file paths below; anything else could point outside the log.
            raise SourceError(f"{endpoint}/{deployment} is not an endpoint/deployment name")
        start, end = _epoch(window.start), _epoch(window.end)
        try:
            records = read_requests(self.home, endpoint, deployment, start, end)
            usage = read_usage(self.home, endpoint, deployment, start, end)
        except (OSError, ValueError, LogFormatError) as exc:
            raise SourceError(
                f"local request log of {endpoint}/{deployment} could not be read ({exc}); "
                f"check {self.home / 'requests'}"
            ) from exc
        selected = records[records["mirrored"] == (1 if mirrored else 0)]
        return summarise(selected, usage)
