"""A generated fleet of manifests for the CLI and reconcile benchmarks.

`write_fleet(root, count)` lays out `root/rollouts/fleet-NNN.yaml` (local manifests, each for
its own endpoint, with a mirror step, three traffic steps and five gates) beside
`root/models/credit-risk`, a link to the repository's model folder, so every manifest resolves
its model and smoke request as a checked-in one does.
"""

from __future__ import annotations

from pathlib import Path

from benchmarks.common import ROOT
from engine.live import DeploymentRequest, InvokeResult, LiveEndpoint, ProvisioningState
from engine.providers.local.provider import LocalProvider
from engine.providers.local.store import DeploymentRecord, new_uid

MANIFEST = """\
apiVersion: saferollout/v1
kind: ModelRollout
metadata:
  name: fleet-{index:03d}
spec:
  target:
    provider: local
    endpoint: fleet-{index:03d}
  model:
    name: credit-risk
    version: "{version}"
  smoke_test:
    request: ../models/credit-risk/sample-request.json
    expect_status: 200
  steps:
    - mirror: 20
      bake: 10m
    - traffic: {first}
      bake: 10m
    - approval: manual
    - traffic: 50
      bake: 15m
    - traffic: 100
      bake: 15m
  gates:
    - name: candidate-errors
      metric: error_rate
      max: 0.01
      min_requests: 200
    - name: candidate-p50
      metric: latency_p50_ms
      max: 80
    - name: candidate-p90
      metric: latency_p90_ms
      max: 120
    - name: candidate-p99
      metric: latency_p99_ms
      max: 250
    - name: p99-vs-stable
      metric: latency_p99_ms
      max_ratio_to_stable: 1.25
  analysis:
    source: local
    warmup: 30s
  on_failure: rollback
  on_inconclusive: hold
  progress_deadline: 6h
  cleanup:
    delete_previous_after: 1h
"""


def write_fleet(root: Path, count: int, version: str = "1") -> Path:
    """Write `count` manifests under `root/rollouts`; returns that folder."""
    models = root / "models"
    models.mkdir(parents=True, exist_ok=True)
    link = models / "credit-risk"
    if not link.exists():
        link.symlink_to(ROOT / "models" / "credit-risk", target_is_directory=True)
    folder = root / "rollouts"
    folder.mkdir(exist_ok=True)
    for index in range(count):
        text = MANIFEST.format(index=index, version=version, first=5 + index % 4 * 5)
        (folder / f"fleet-{index:03d}.yaml").write_text(text)
    return folder


class Provisioned(LocalProvider):
    """The local control plane with provisioning and scoring stood in for: a deployment is
    Succeeded as soon as it is created and answers the smoke test, so a fleet of hundreds of
    endpoints is set up without a worker process. Reads and writes are the real ones."""

    def check_deployable(self, request: DeploymentRequest) -> str:
        return ""

    def create_deployment(self, endpoint: str, request: DeploymentRequest) -> None:
        existing = self.control.read_endpoint(endpoint)
        if existing is not None and request.name in existing.deployments:
            return
        record = DeploymentRecord(
            name=request.name,
            model_name=request.model_name,
            model_version=request.model_version,
            model_dir=request.model_dir,
            uid=new_uid(),
            state=ProvisioningState.SUCCEEDED.value,
            instance_type=request.instance_type,
            instance_count=request.instance_count,
        )
        self.control.add_deployment(endpoint, record)

    def wait_for_deployment(self, endpoint: str, name: str, timeout_s: float) -> LiveEndpoint:
        return self.read_endpoint(endpoint)

    def invoke(self, endpoint: str, deployment: str, body: bytes) -> InvokeResult:
        return InvokeResult(200, b'{"probabilities": [0.5]}', 1.0)

    def ensure_server(self) -> bool:
        return False


def seed_fleet(home: Path, folder: Path, clock=None) -> list[str]:
    """One reconcile pass per manifest in `folder` with provisioning stood in for; the
    outcome of each pass, by endpoint order."""
    from engine.loader import load_paths
    from engine.reconcile import Reconciler, SystemClock, desired_from

    provider = Provisioned(home)
    outcomes = []
    for loaded in load_paths([folder]):
        reconciler = Reconciler(desired_from(loaded), provider, clock or SystemClock(), "seed")
        result = reconciler.apply()
        outcomes.append(result.final.outcome.value if result.final else "none")
    return outcomes
