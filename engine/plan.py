"""Plans as data: what a reconcile pass will do, each action with before, after and why.

`engine.decide` produces these; `engine.reconcile` performs them; `engine.render` prints them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from engine.gates import GateResult
from engine.live import DeploymentRequest
from engine.state import Phase, RolloutState


class ActionKind(StrEnum):
    CREATE_ENDPOINT = "create_endpoint"
    CREATE_DEPLOYMENT = "create_deployment"
    SMOKE_TEST = "smoke_test"
    UPDATE_ENDPOINT = "update_endpoint"
    DELETE_DEPLOYMENT = "delete_deployment"


@dataclass(frozen=True)
class Action:
    kind: ActionKind
    subject: str  # the endpoint or deployment acted on
    reason: str
    deployment: DeploymentRequest | None = None  # create_deployment
    traffic: tuple[dict[str, int], dict[str, int]] | None = None  # (before, after)
    mirror: tuple[dict[str, int], dict[str, int]] | None = None
    state: tuple[RolloutState, RolloutState] | None = None  # update_endpoint: the tags' meaning

    @property
    def changes_traffic(self) -> bool:
        return bool(self.traffic and self.traffic[0] != self.traffic[1]) or bool(
            self.mirror and self.mirror[0] != self.mirror[1]
        )


class Outcome(StrEnum):
    """What a pass amounts to, for exit codes and summaries."""

    CHANGES = "changes"  # actions to take
    WAITING = "waiting"  # nothing to do until time passes (bake, provisioning)
    PAUSED = "paused"  # nothing to do until an operator acts
    CONVERGED = "converged"
    ROLLED_BACK = "rolled_back"  # this plan rolls the candidate back
    FOUND_ROLLED_BACK = "found_rolled_back"  # an earlier pass rolled it back
    FAILED = "failed"


@dataclass(frozen=True)
class Plan:
    endpoint: str
    outcome: Outcome
    summary: str
    actions: tuple[Action, ...] = ()
    phase: Phase | None = None
    gates: tuple[GateResult, ...] = ()
    notes: tuple[str, ...] = ()  # drift found, warnings, what would unblock a wait
    step: int | None = None
    wait_seconds: float | None = None  # when waiting on a timer: how long is left

    @property
    def has_changes(self) -> bool:
        return bool(self.actions)


@dataclass(frozen=True)
class PassResult:
    """What one `apply` pass did: the plans it carried out, in order, and how it ended."""

    endpoint: str
    plans: tuple[Plan, ...] = ()
    final: Plan | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def rolled_back(self) -> bool:
        return any(p.outcome in (Outcome.ROLLED_BACK, Outcome.FAILED) for p in self.plans) or (
            self.final is not None and self.final.outcome is Outcome.FAILED
        )
