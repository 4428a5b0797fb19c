"""Pytest fixtures and helpers for tests that run against the local backend.

Enabled for the whole suite by `pytest_plugins = ["engine.providers.local.testing"]` in
tests/conftest.py. Fixtures: `local_home` (a fresh state directory, also set as
SAFEROLLOUT_HOME), `toy_model` (registers a tiny model whose behaviour its artifact sets) and
`local_server` (a LocalProvider whose server runs). A server started in `local_home` by any
means is stopped when the test ends. Nothing here touches an address other than loopback.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from engine.home import HOME_ENV
from engine.live import DeploymentRequest, EndpointWrite, LiveEndpoint
from engine.providers.local.provider import LocalProvider
from engine.registry import register, versions

# One scoring script for every toy version; the registered artifact decides how it behaves,
# the way a new model version changes behaviour behind the same scoring code.
TOY_SCORE = """\
import json
import os
import time
from pathlib import Path

Path(__file__).with_name("imported.log").open("a").write(os.environ["AZUREML_MODEL_DIR"] + "\\n")
config = None


def init():
    global config
    with open(os.path.join(os.environ["AZUREML_MODEL_DIR"], "toy.json")) as handle:
        config = json.load(handle)
    if config.get("fail_init"):
        raise RuntimeError("this toy version cannot start")


def run(raw_data):
    if config.get("sleep_s"):
        time.sleep(config["sleep_s"])
    if config.get("fail_run"):
        raise ValueError("this toy version fails every request")
    if config.get("exit_in_run"):
        os._exit(7)
    data = json.loads(raw_data)["data"]
    return {"version": config["version"], "result": [x * config["factor"] for x in data]}
"""


@dataclass(frozen=True)
class ToyModel:
    name: str
    version: str
    model_dir: Path
    artifact: Path  # the registered copy, which tests may tamper with

    def request(self, deployment: str) -> DeploymentRequest:
        return DeploymentRequest(deployment, self.name, self.version, str(self.model_dir))

    @property
    def imported_from(self) -> list[str]:
        """Registry folders the scoring script was imported for, one line per import."""
        log = self.model_dir / "imported.log"
        return log.read_text().split() if log.exists() else []


def make_toy_model(
    home: Path,
    models: Path,
    name: str = "toy",
    *,
    factor: float = 2,
    sleep_s: float = 0.0,
    fail_init: bool = False,
    fail_run: bool = False,
    exit_in_run: bool = False,
) -> ToyModel:
    """Register the next version of toy model `name`; its scoring folder is `models/name`."""
    model_dir = models / name
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "score.py").write_text(TOY_SCORE)
    staging = models / f".{name}-artifact"
    staging.mkdir(exist_ok=True)
    artifact = staging / "toy.json"
    config = {
        "factor": factor,
        "sleep_s": sleep_s,
        "fail_init": fail_init,
        "fail_run": fail_run,
        "exit_in_run": exit_in_run,
    }
    # The artifact names its own version so responses show which version answered; register()
    # assigns the next whole number, so that is the number to write in.
    version = str(max((int(v) for v in versions(home, name) if v.isdigit()), default=0) + 1)
    artifact.write_text(json.dumps({**config, "version": version}))
    model = register(home, name, artifact, description="toy model for tests")
    return ToyModel(name, model.version, model_dir, model.artifact_path)


def deploy(
    provider: LocalProvider,
    endpoint: str,
    deployments: dict[str, ToyModel],
    traffic: dict[str, int],
    mirror: dict[str, int] | None = None,
    timeout_s: float = 30.0,
) -> LiveEndpoint:
    """Create the endpoint and deployments, wait for them, then set traffic and mirror."""
    live = provider.create_endpoint(endpoint)
    for name, model in deployments.items():
        provider.create_deployment(endpoint, model.request(name))
    for name in deployments:
        live = provider.wait_for_deployment(endpoint, name, timeout_s)
    write = EndpointWrite(traffic=traffic, mirror=mirror or {}, tags={})
    return provider.update_endpoint(endpoint, write, expected_revision=live.revision)


class CountingProvider:
    """Wraps a provider and counts its calls by method name, for tests and benchmarks that
    check how many reads and writes a pass makes (`calls`, `reads`, `writes`)."""

    READS = ("read_endpoint",)
    WRITES = ("create_endpoint", "update_endpoint", "create_deployment", "delete_deployment")

    def __init__(self, inner: object):
        self.inner = inner
        self.calls: Counter[str] = Counter()

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def reads(self) -> int:
        return sum(self.calls[m] for m in self.READS)

    @property
    def writes(self) -> int:
        return sum(self.calls[m] for m in self.WRITES)

    def __getattr__(self, attribute: str) -> object:
        value = getattr(self.inner, attribute)
        if attribute.startswith("_") or not callable(value):
            return value

        def counted(*args: object, **kwargs: object) -> object:
            self.calls[attribute] += 1
            return value(*args, **kwargs)

        return counted


def wait_until(condition: Callable[[], object], timeout_s: float = 10.0, what: str = "") -> object:
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what or condition}")
        time.sleep(0.05)


def process_running(pid: int) -> bool:
    """True while `pid` runs; an exited process that its parent has not reaped yet does not."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


@pytest.fixture
def local_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    home = tmp_path / "saferollout-home"
    home.mkdir()
    monkeypatch.setenv(HOME_ENV, str(home))
    yield home
    # Whatever started a server in this home (the CLI, the demo, ensure_server), it ends here.
    LocalProvider(home).stop_server()


@pytest.fixture
def toy_model(local_home: Path, tmp_path: Path) -> Callable[..., ToyModel]:
    """`toy_model(name="toy", factor=2, sleep_s=0, fail_init=False, fail_run=False, ...)`."""

    def make(name: str = "toy", **behaviour: object) -> ToyModel:
        return make_toy_model(local_home, tmp_path / "models", name, **behaviour)

    return make


@pytest.fixture
def local_server(local_home: Path) -> Iterator[LocalProvider]:
    provider = LocalProvider(local_home)
    provider.ensure_server()
    try:
        yield provider
    finally:
        provider.stop_server()
