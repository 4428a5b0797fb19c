"""The local backend's request log: what the `local` gate source measures.

One file per endpoint and deployment under `<home>/requests/<endpoint>/`, of fixed-size binary
records in time order: `<deployment>.req` holds (time, latency ms, status, mirrored) per request
and `<deployment>.use` the worker's CPU and memory samples. Never a payload, never a header.
The server only appends to memory while answering; a background flush writes the buffers, so a
slow disk never holds a request up. Readers map a file and binary-search the time column, so a
window over millions of requests costs milliseconds. Each file is bounded: past `max_records`
the older half is dropped, and the server deletes the files of deployments that no longer
exist.
"""

from __future__ import annotations

import os
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REQUEST_RECORD = np.dtype(
    [("t", "<f8"), ("latency_ms", "<f4"), ("status", "<u2"), ("mirrored", "u1"), ("pad", "u1")]
)
USAGE_RECORD = np.dtype([("t", "<f8"), ("cpu", "<f4"), ("memory", "<f4")])
HEADER_SIZE = 16
REQUEST_MAGIC = b"SRREQLOG\x01\x00\x00\x00\x00\x00\x00\x00"
USAGE_MAGIC = b"SRUSELOG\x01\x00\x00\x00\x00\x00\x00\x00"
REQUEST_SUFFIX = ".req"
USAGE_SUFFIX = ".use"
UNROUTED = "_unrouted"  # requests refused before a deployment was chosen; never a valid name
DEFAULT_MAX_RECORDS = 4_000_000  # 64 MB of requests per deployment
MAX_BUFFERED = 1_000_000  # records held in memory if the disk falls behind; beyond, dropped


class LogFormatError(Exception):
    """A log file is not one this module wrote."""


def log_dir(home: Path) -> Path:
    return Path(home) / "requests"


def request_path(home: Path, endpoint: str, deployment: str) -> Path:
    return log_dir(home) / endpoint / f"{deployment}{REQUEST_SUFFIX}"


def usage_path(home: Path, endpoint: str, deployment: str) -> Path:
    return log_dir(home) / endpoint / f"{deployment}{USAGE_SUFFIX}"


# ---- reading ---------------------------------------------------------------------------------


def _map(path: Path, dtype: np.dtype, magic: bytes) -> np.ndarray:
    """The file's records, memory-mapped; empty when the file does not exist."""
    try:
        with path.open("rb") as handle:
            header = handle.read(HEADER_SIZE)
            size = os.fstat(handle.fileno()).st_size
    except FileNotFoundError:
        return np.empty(0, dtype)
    if header != magic:
        raise LogFormatError(f"{path} is not a request log of this version")
    # A flush may be half-way through appending: a trailing partial record is not data yet.
    count = (size - HEADER_SIZE) // dtype.itemsize
    if count == 0:
        return np.empty(0, dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=HEADER_SIZE, shape=(count,))


def _window(records: np.ndarray, start: float, end: float) -> np.ndarray:
    """The rows of [start, end): a view of `records`, copied by nothing."""
    times = records["t"]
    lo, hi = np.searchsorted(times, [start, end], side="left")
    return records[lo:hi]


def read_requests(
    home: Path, endpoint: str, deployment: str, start: float, end: float
) -> np.ndarray:
    """Requests that completed in [start, end) (epoch seconds), as REQUEST_RECORD rows."""
    return np.array(request_window(home, endpoint, deployment, start, end))


def request_window(
    home: Path, endpoint: str, deployment: str, start: float, end: float
) -> np.ndarray:
    """As `read_requests`, but a read-only view of the mapped file: a query that reads only
    a few columns of a million rows does not copy the rest first."""
    path = request_path(home, endpoint, deployment)
    return _window(_map(path, REQUEST_RECORD, REQUEST_MAGIC), start, end)


def read_usage(home: Path, endpoint: str, deployment: str, start: float, end: float) -> np.ndarray:
    path = usage_path(home, endpoint, deployment)
    return np.array(_window(_map(path, USAGE_RECORD, USAGE_MAGIC), start, end))


# ---- writing ---------------------------------------------------------------------------------


@dataclass
class _File:
    path: Path
    dtype: np.dtype
    magic: bytes
    records: int = -1  # on disk; -1 until the file was first opened


class RequestLog:
    """Buffers records in memory (`record*`, cheap, any thread) and appends them on `flush`.

    `flush` is meant for one background thread at a time; time stamps are kept non-decreasing
    per file so readers can binary-search them.
    """

    def __init__(self, home: Path, *, max_records: int = DEFAULT_MAX_RECORDS):
        self.home = Path(home)
        self.max_records = max_records
        self.dropped = 0
        self._lock = threading.Lock()
        self._pending: dict[tuple[str, str, str], list[tuple]] = defaultdict(list)
        self._buffered = 0
        self._last_t: dict[tuple[str, str, str], float] = {}
        self._files: dict[tuple[str, str, str], _File] = {}

    def record(
        self,
        endpoint: str,
        deployment: str | None,
        status: int,
        latency_ms: float,
        *,
        mirrored: bool = False,
        t: float | None = None,
    ) -> None:
        key = (endpoint, deployment or UNROUTED, REQUEST_SUFFIX)
        self._append(key, t, (float(latency_ms), int(status), int(mirrored), 0))

    def record_usage(
        self, endpoint: str, deployment: str, cpu_percent: float, memory_percent: float, *, t=None
    ) -> None:
        self._append((endpoint, deployment, USAGE_SUFFIX), t, (cpu_percent, memory_percent))

    def _append(self, key: tuple[str, str, str], t: float | None, values: tuple) -> None:
        now = time.time() if t is None else t
        with self._lock:
            if self._buffered >= MAX_BUFFERED:
                self.dropped += 1
                return
            # The wall clock may step back; a log that stays sorted is worth a skewed stamp.
            now = max(now, self._last_t.get(key, now))
            self._last_t[key] = now
            self._pending[key].append((now, *values))
            self._buffered += 1

    def flush(self) -> int:
        """Append everything buffered so far; returns the number of records written."""
        with self._lock:
            pending, self._pending = self._pending, defaultdict(list)
            self._buffered = 0
        written = 0
        for key, rows in pending.items():
            file = self._file(key)
            self._write(file, np.array(rows, dtype=file.dtype))
            written += len(rows)
        return written

    def remove_logs_except(self, keep: set[tuple[str, str]]) -> int:
        """Delete the log files of every (endpoint, deployment) not in `keep`; the number
        deleted. A deleted deployment's requests are judged by no gate, and without this its
        files would outlive it: one bounded log for every deployment ever created."""
        root = log_dir(self.home)
        removed = 0
        for path in sorted(root.glob("*/*")) if root.is_dir() else ():
            key = (path.parent.name, path.stem)
            if path.suffix not in (REQUEST_SUFFIX, USAGE_SUFFIX) or key in keep:
                continue
            with self._lock:
                self._files.pop((*key, path.suffix), None)
            path.unlink(missing_ok=True)
            removed += 1
        return removed

    def _file(self, key: tuple[str, str, str]) -> _File:
        if key not in self._files:
            endpoint, deployment, suffix = key
            if suffix == REQUEST_SUFFIX:
                path, dtype, magic = (
                    request_path(self.home, endpoint, deployment),
                    REQUEST_RECORD,
                    REQUEST_MAGIC,
                )
            else:
                path, dtype, magic = (
                    usage_path(self.home, endpoint, deployment),
                    USAGE_RECORD,
                    USAGE_MAGIC,
                )
            self._files[key] = _File(path, dtype, magic)
        return self._files[key]

    def _write(self, file: _File, rows: np.ndarray) -> None:
        if file.records < 0:
            file.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                size = file.path.stat().st_size
            except FileNotFoundError:
                file.path.write_bytes(file.magic)
                size = HEADER_SIZE
            file.records = (size - HEADER_SIZE) // file.dtype.itemsize
        with file.path.open("ab") as handle:
            if handle.tell() == 0:  # removed since it was last written (`remove_logs_except`)
                handle.write(file.magic)
                file.records = 0
            handle.write(rows.tobytes())
        file.records += len(rows)
        if file.records > self.max_records:
            self._trim(file)

    def _trim(self, file: _File) -> None:
        """Keep the newest half of `max_records`: a rewrite now and then, not on every append."""
        keep = self.max_records // 2
        records = _map(file.path, file.dtype, file.magic)
        tail = np.array(records[-keep:])
        del records
        tmp = file.path.with_name(file.path.name + ".trim")
        with tmp.open("wb") as handle:
            handle.write(file.magic)
            handle.write(tail.tobytes())
        os.replace(tmp, file.path)
        file.records = len(tail)
