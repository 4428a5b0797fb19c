"""`rollout ARGS...` with the reliability instruments installed in this process.

Run as `python tests/reliability/cli_under_test.py apply FILE`. The local provider is wrapped
(through the CLI's provider factory hook) in `tests.faulty.Checked`, and, as the environment
asks, in a barrier or in SIGKILL after a number of provider calls:

  RELIABILITY_LEDGER      where to write what the checker saw, as JSON, when the run ends
  RELIABILITY_BARRIER     a folder: after its first read the run waits until two runs have read
  RELIABILITY_KILL_AFTER  N: the process SIGKILLs itself before provider call N + 1

A killed process writes no ledger: its writes are checked by the next run's read-back.
"""

from __future__ import annotations

import atexit
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from engine import cli  # noqa: E402
from engine.home import state_home  # noqa: E402
from engine.providers.local.provider import LocalProvider  # noqa: E402
from tests.faulty import Checked, Crashing, Ledger  # noqa: E402

BARRIER_TIMEOUT_S = 30.0


class Barrier:
    """Holds the first read's answer until `parties` runs have each made their first read."""

    def __init__(self, inner, folder: Path, parties: int = 2):
        self.inner = inner
        self.name = inner.name
        self.folder = folder
        self.parties = parties
        self.passed = False

    def read_endpoint(self, endpoint: str):
        live = self.inner.read_endpoint(endpoint)
        if not self.passed:
            self.passed = True
            self.folder.mkdir(parents=True, exist_ok=True)
            (self.folder / f"read-{os.getpid()}").touch()
            deadline = time.monotonic() + BARRIER_TIMEOUT_S
            while len(list(self.folder.glob("read-*"))) < self.parties:
                if time.monotonic() > deadline:
                    raise SystemExit("the other run never read the endpoint")
                time.sleep(0.01)
        return live

    def __getattr__(self, name: str):
        return getattr(self.inner, name)


def main() -> None:
    ledger = Ledger()
    checked = Checked(LocalProvider(state_home()), ledger)
    provider = checked
    if os.environ.get("RELIABILITY_BARRIER"):
        provider = Barrier(provider, Path(os.environ["RELIABILITY_BARRIER"]))
    if os.environ.get("RELIABILITY_KILL_AFTER"):
        provider = Crashing(provider, int(os.environ["RELIABILITY_KILL_AFTER"]), sigkill=True)
    counting = Crashing(provider, None)
    cli.PROVIDER_FACTORIES["local"] = lambda loaded: counting

    def report() -> None:
        out = Path(os.environ["RELIABILITY_LEDGER"])
        out.write_text(
            json.dumps(
                {
                    "calls": counting.count,
                    "writes": ledger.writes,
                    "refused": ledger.refused,
                    "violations": ledger.violations,
                }
            )
        )

    atexit.register(report)
    sys.argv = ["rollout", *sys.argv[1:]]
    cli.main()


if __name__ == "__main__":
    main()
