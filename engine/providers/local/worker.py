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

from aiohttp import web

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


def make_app(module: ModuleType, token: str) -> web.Application:
    # One thread: requests queue for it in arrival order, like one Azure instance with
    # max_concurrent_requests_per_instance=1.
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="run")
    expected = token.encode()

    async def score(request: web.Request) -> web.Response:
        given = request.headers.get(TOKEN_HEADER, "").encode()
        if not hmac.compare_digest(given, expected):
            return web.Response(
                status=401, body=error_body("unauthorised"), content_type="application/json"
            )
        body = await request.read()
        loop = asyncio.get_running_loop()
        status, payload = await loop.run_in_executor(executor, score_once, module, body)
        return web.Response(status=status, body=payload, content_type="application/json")

    async def close_executor(_app: web.Application) -> None:
        executor.shutdown(wait=False, cancel_futures=True)

    app = web.Application(client_max_size=MAX_BODY)
    app.router.add_post(SCORE_PATH, score)
    app.on_cleanup.append(close_executor)
    return app


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


async def _serve(app: web.Application, announce) -> None:
    # A request the server gave up on (timeout) is cancelled here too, so a queued run()
    # that nobody waits for any more never starts.
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    await runner.setup()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    await web.SockSite(runner, sock).start()
    # What start-up built lives as long as the process: set it aside from the cyclic garbage
    # collector, whose full passes over it would otherwise pause a request now and then.
    gc.collect()
    gc.freeze()
    announce({"event": "ready", "port": sock.getsockname()[1]})
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


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
    asyncio.run(_serve(make_app(module, token), announce))
    return 0


if __name__ == "__main__":
    sys.exit(main())
