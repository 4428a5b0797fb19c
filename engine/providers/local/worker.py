"""One deployment's scoring process, started by the local server: the Azure ML scoring contract.

It re-hashes the registered artifact and refuses a mismatch before anything is loaded, sets
`AZUREML_MODEL_DIR` to the version's registry folder, imports the model's `score.py`, calls
`init()`, then serves `POST /score` on 127.0.0.1 with `run(raw_data)` one request at a time
(Azure's default `max_concurrent_requests_per_instance` is 1: later requests wait their turn).

Protocol with the server: the first line on stdin is a token that every request must carry;
stdin closing means the server is gone, and the worker exits. One JSON line on the original
stdout says `{"event": "ready", "port": P}` or `{"event": "failed", "reason": ...}`; the model's
own prints go to stderr, which the server keeps in a log file.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hmac
import importlib.util
import json
import os
import socket
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType

from engine.registry import RegistryError, resolve, verified_artifact

TOKEN_HEADER = "x-saferollout-worker-token"
SCORE_PATH = "/score"
MAX_BODY = 2 * 1024 * 1024  # the server already refused anything larger than its own limit
EXIT_FAILED = 3


class StartupError(Exception):
    """The deployment cannot serve: the reason is reported to the server verbatim."""


def describe_error(exc: BaseException) -> str:
    """`Type: first line of the message`, short enough for a deployment's error field."""
    text = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def load_model(home: Path, model_name: str, version: str, model_dir: Path) -> ModuleType:
    """Verify the artifact, import score.py and run its init(); StartupError on any failure."""
    try:
        model = resolve(home, model_name, version)
        verified_artifact(model)
    except RegistryError as exc:
        raise StartupError(str(exc)) from None
    os.environ["AZUREML_MODEL_DIR"] = str(model.directory)

    script = model_dir / "score.py"
    if not script.is_file():
        raise StartupError(f"{script} does not exist: a model folder needs a score.py")
    # score.py may import modules that sit beside it, as it can on Azure.
    sys.path.insert(0, str(model_dir))
    spec = importlib.util.spec_from_file_location("score", script)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except BaseException as exc:  # a broken script must fail the deployment, not the server
        raise StartupError(f"importing {script.name} raised {describe_error(exc)}") from None
    for name in ("init", "run"):
        if not callable(getattr(module, name, None)):
            raise StartupError(f"{script.name} defines no {name}() function")
    try:
        module.init()
    except BaseException as exc:
        raise StartupError(f"init() raised {describe_error(exc)}") from None
    return module


def score_once(module: ModuleType, body: bytes) -> tuple[int, bytes]:
    """Run the model on one request body; (status, JSON body). Never raises."""
    try:
        raw = body.decode("utf-8")
    except UnicodeDecodeError:
        return 400, error_body("the request body is not UTF-8 text")
    try:
        result = module.run(raw)
    except Exception as exc:
        # Only the exception type: its message may quote the request, which is personal data.
        print(f"run() raised {type(exc).__name__}", file=sys.stderr, flush=True)
        return 502, error_body(f"run() raised {type(exc).__name__}")
    try:
        return 200, json.dumps(result).encode()
    except (TypeError, ValueError):
        return 502, error_body(f"run() returned a {type(result).__name__}, which is not JSON")


def error_body(message: str) -> bytes:
    return json.dumps({"error": message}).encode()


MAX_HEAD = 16 * 1024
REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
           405: "Method Not Allowed", 413: "Payload Too Large", 502: "Bad Gateway"}  # fmt: skip


class Scoring:
    """What the worker serves: `run()` on one thread, so requests queue for it in arrival
    order, like one Azure instance with max_concurrent_requests_per_instance=1."""

    def __init__(self, module: ModuleType, token: str):
        self.module = module
        self.token = token.encode()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="run")

    def answer_now(self, method: bytes, path: bytes, token: bytes) -> tuple[int, bytes] | None:
        """The answer to a request that `run()` never sees, or None to score it."""
        if path != SCORE_PATH.encode():
            return 404, error_body("not found")
        if method != b"POST":
            return 405, error_body("only POST")
        if not hmac.compare_digest(token, self.token):
            return 401, error_body("unauthorised")
        return None

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


class _Connection(asyncio.Protocol):
    """One connection from the server: plain HTTP/1.1 with Content-Length bodies, one request
    at a time. aiohttp would cost every worker about 16 MB and a share of each request; the
    only client is the server's own (`forward.py`). When the server gives up on a request and
    closes the connection, a `run()` still queued for it is cancelled and never starts."""

    def __init__(self, scoring: Scoring):
        self.scoring = scoring
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.job: asyncio.Future | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) > MAX_HEAD + MAX_BODY:  # more than one request's worth queued up
            self.transport.close()
        elif self.job is None:
            self._next()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.job is not None:
            self.job.cancel()

    def _next(self) -> None:
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buffer) > MAX_HEAD:
                self._reply(400, error_body("request head too large"), close=True)
            return
        try:
            method, path, token, length, keep = _parse_head(bytes(self.buffer[:end]))
        except ValueError as exc:
            self._reply(400, error_body(str(exc)), close=True)
            return
        if length > MAX_BODY:
            self._reply(413, error_body("request body too large"), close=True)
            return
        if len(self.buffer) < end + 4 + length:
            return  # the body is still arriving
        body = bytes(self.buffer[end + 4 : end + 4 + length])
        del self.buffer[: end + 4 + length]
        refusal = self.scoring.answer_now(method, path, token)
        if refusal is not None:
            self._reply(*refusal, close=not keep)
            return
        future = self.scoring.executor.submit(score_once, self.scoring.module, body)
        self.job = asyncio.wrap_future(future)
        self.job.add_done_callback(lambda job: self._scored(job, keep))

    def _scored(self, job: asyncio.Future, keep: bool) -> None:
        self.job = None
        if job.cancelled() or self.transport is None or self.transport.is_closing():
            return
        try:
            status, payload = job.result()
        except BaseException as exc:  # score_once catches Exception; run() may still exit
            status, payload = 502, error_body(f"run() raised {type(exc).__name__}")
        self._reply(status, payload, close=not keep)

    def _reply(self, status: int, payload: bytes, *, close: bool) -> None:
        head = (
            f"HTTP/1.1 {status} {REASONS.get(status, 'Status')}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
            + ("Connection: close\r\n" if close else "")
            + "\r\n"
        )
        self.transport.write(head.encode() + payload)
        if close:
            self.transport.close()
        elif self.buffer:
            self._next()


def _parse_head(head: bytes) -> tuple[bytes, bytes, bytes, int, bool]:
    """(method, path, token, body length, keep the connection) of a request head."""
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
        raise ValueError("not an HTTP/1.x request")
    method, path, version = parts
    token, length, keep = b"", 0, version == b"HTTP/1.1"
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name, value = name.strip().lower(), value.strip()
        if name == TOKEN_HEADER.encode():
            token = value
        elif name == b"content-length":
            if not value.isdigit():
                raise ValueError("bad Content-Length")
            length = int(value)
        elif name == b"transfer-encoding":
            raise ValueError("send the body with a Content-Length")
        elif name == b"connection":
            keep = value.lower() != b"close" and (keep or value.lower() == b"keep-alive")
    return method, path.split(b"?", 1)[0], token, length, keep


def _read_token() -> str:
    # Raw reads on fd 0: a buffered sys.stdin held by the watcher thread below would abort
    # the interpreter at exit.
    line = b""
    while not line.endswith(b"\n"):
        chunk = os.read(0, 1)
        if not chunk:
            break
        line += chunk
    return line.decode().strip()


def _exit_when_stdin_closes() -> None:
    while os.read(0, 4096):
        pass
    os._exit(0)


async def _serve(scoring: Scoring, announce) -> None:
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    server = await loop.create_server(lambda: _Connection(scoring), sock=sock)
    # What start-up built lives as long as the process: set it aside from the cyclic garbage
    # collector, whose full passes over it would otherwise pause a request now and then.
    gc.collect()
    gc.freeze()
    announce({"event": "ready", "port": sock.getsockname()[1]})
    try:
        await asyncio.Event().wait()
    finally:
        server.close()
        scoring.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.providers.local.worker")
    parser.add_argument("--home", required=True, type=Path)
    parser.add_argument("--model-name", required=True)
    parser.add_argument("--model-version", required=True)
    parser.add_argument("--model-dir", required=True, type=Path)
    args = parser.parse_args(argv)

    # Keep the original stdout for the protocol and send everything else, including the
    # model's own prints, to stderr: a chatty model must not clog or corrupt the channel.
    channel = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def announce(message: dict) -> None:
        channel.write(json.dumps(message) + "\n")
        channel.flush()

    token = _read_token()
    threading.Thread(target=_exit_when_stdin_closes, daemon=True).start()
    try:
        module = load_model(args.home, args.model_name, args.model_version, args.model_dir)
    except StartupError as exc:
        announce({"event": "failed", "reason": str(exc)})
        return EXIT_FAILED
    asyncio.run(_serve(Scoring(module, token), announce))
    return 0


if __name__ == "__main__":
    sys.exit(main())
