"""The decision table: desired rollout + live endpoint + measurements -> the next plan.

`decide` is pure: it reads the manifest, the live endpoint (whose tags hold the rollout state),
the gate results and smoke-test outcome measured in this pass, the clock and an optional
operator command, and returns a `Plan` — the next transition's actions with before/after values
and reasons. `plan_pass` chains transitions over a simulated endpoint to show everything one
pass would do. Nothing here talks to a provider.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Literal

from engine.durations import format_duration
from engine.errors import SafeRolloutError
from engine.gates import GateResult, Verdict, combine, concluded_passed, first_failure
from engine.live import DeploymentRequest, LiveDeployment, LiveEndpoint, ProvisioningState
from engine.plan import Action, ActionKind, Outcome, Plan
from engine.spec import ApprovalStep, MirrorStep, ModelRollout, SequentialGate, Step, TrafficStep
from engine.state import Lease as Lease  # re-exported for the reconciler
from engine.state import (
    Phase,
    RolloutState,
    StepRecord,
    damaged_tags,
    decode,
    encode,
    format_time,
    has_state,
)

MAX_CHAIN = 12


class PlanError(SafeRolloutError):
    """The live endpoint is in a state the engine will not guess its way out of."""


class OperatorError(SafeRolloutError):
    """An operator command that does not apply to the rollout as it stands."""


@dataclass(frozen=True)
class Desired:
    """What the manifest asks for, with the derived deployment already worked out."""

    rollout: ModelRollout
    deployment: DeploymentRequest
    smoke_request: str = ""  # path of the smoke-test body

    @property
    def endpoint(self) -> str:
        return self.rollout.spec.target.endpoint

    @property
    def name(self) -> str:
        return self.deployment.name


@dataclass(frozen=True)
class SmokeOutcome:
    deployment: str
    passed: bool
    reason: str


@dataclass(frozen=True)
class CandidateFigures:
    """The candidate's headline figures over the step window, kept in the step log."""

    requests: int
    error_rate: float | None
    p90_ms: float | None
    p99_ms: float | None


@dataclass(frozen=True)
class Observations:
    """What this pass measured. `gates` is None when the current step was not measured."""

    gates: tuple[GateResult, ...] | None = None
    figures: CandidateFigures | None = None
    smoke: SmokeOutcome | None = None
    source_errors: dict[str, tuple[int, int]] | None = None


@dataclass(frozen=True)
class Command:
    kind: Literal["promote", "abort", "retry", "undo"]
    who: str
    full: bool = False


# ---------------------------------------------------------------------------------------------
# Step arithmetic


def step_label(step: Step) -> str:
    if isinstance(step, MirrorStep):
        return f"mirror {step.mirror}%"
    if isinstance(step, TrafficStep):
        return f"traffic {step.traffic}%"
    return "manual approval"


def step_targets(
    steps: list[Step], index: int, stable: str, candidate: str
) -> tuple[dict[str, int], dict[str, int]]:
    """Live traffic and mirror maps for step `index`: integers summing to exactly 100, the
    candidate at exactly the step's share. An approval step holds the step before it."""
    for step in reversed(steps[: index + 1]):
        if isinstance(step, TrafficStep):
            share = step.traffic
            traffic = {candidate: share, stable: 100 - share}
            return {k: v for k, v in traffic.items() if v}, {}
        if isinstance(step, MirrorStep):
            return {stable: 100}, {candidate: step.mirror}
    return {stable: 100}, {}


def candidate_exposure(steps: list[Step], index: int) -> tuple[int, bool]:
    """(share of live traffic or mirror, whether it is mirrored) at step `index`."""
    for step in reversed(steps[: index + 1]):
        if isinstance(step, TrafficStep):
            return step.traffic, False
        if isinstance(step, MirrorStep):
            return step.mirror, True
    return 0, False


def manifest_warnings(rollout: ModelRollout) -> list[str]:
    """Things a valid manifest says that will surprise its author; `plan` prints them."""
    spec = rollout.spec
    warnings = []
    for index, step in enumerate(spec.steps):
        if candidate_exposure(spec.steps, index)[0] == 0 and spec.gates:
            warnings.append(
                f"steps[{index}] ({step_label(step)}) gives the candidate no traffic: its gates "
                "can see no data there"
            )
    if spec.promote_early and not any(isinstance(g, SequentialGate) for g in spec.gates):
        warnings.append(
            "promote_early has no effect: only sequential gates (test: sequential) conclude "
            "before a bake ends"
        )
    if not spec.gates:
        warnings.append("there are no gates: steps advance on bake time alone")
    elif all(g.dry_run for g in spec.gates):
        warnings.append("every gate is a dry run: nothing can stop this rollout")
    resource = {"cpu_utilization", "memory_utilization"}
    if spec.analysis_source == "azure-logs":
        for index, gate in enumerate(spec.gates):
            if gate.metric.value in resource:
                warnings.append(
                    f"gates[{index}] ({gate.name}) measures {gate.metric.value}, which the "
                    "azure-logs source does not record: it will stay inconclusive"
                )
    return warnings


def gate_window_start(state: RolloutState, warmup: timedelta) -> datetime | None:
    if state.step_started is None:
        return None
    return state.step_started + warmup


# ---------------------------------------------------------------------------------------------
# Building actions


def _update(
    desired: Desired,
    live: LiveEndpoint,
    before: RolloutState,
    after: RolloutState,
    reason: str,
    traffic: dict[str, int] | None = None,
    mirror: dict[str, int] | None = None,
) -> Action:
    """One endpoint write; the state it records always describes the traffic it sets."""
    traffic = live.live_traffic() if traffic is None else {k: v for k, v in traffic.items() if v}
    mirror = live.live_mirror() if mirror is None else {k: v for k, v in mirror.items() if v}
    after = replace(after, traffic=traffic, mirror=mirror, digest=desired.rollout.digest())
    after = replace(after, decision=f"{after.phase.value if after.phase else ''}: {reason}")
    return Action(
        kind=ActionKind.UPDATE_ENDPOINT,
        subject=desired.endpoint,
        reason=reason,
        traffic=(live.live_traffic(), traffic),
        mirror=(live.live_mirror(), mirror),
        state=(before, after),
    )


def _plan(
    desired: Desired,
    outcome: Outcome,
    summary: str,
    *actions: Action,
    phase: Phase | None = None,
    state: RolloutState | None = None,
    observed: Observations | None = None,
    notes: tuple[str, ...] = (),
    wait: float | None = None,
) -> Plan:
    return Plan(
        endpoint=desired.endpoint,
        outcome=outcome if not actions or outcome is not Outcome.WAITING else Outcome.CHANGES,
        summary=summary,
        actions=tuple(actions),
        phase=phase,
        gates=tuple(observed.gates or ()) if observed else (),
        notes=notes,
        step=state.step if state else None,
        wait_seconds=wait,
    )


def _record(
    state: RolloutState, verdict: str, figures: CandidateFigures | None, now: datetime
) -> RolloutState:
    """Close the current step's log entry with its verdict and figures."""
    if state.step is None:
        return state
    started = state.step_started or now
    record = StepRecord(index=state.step, started=started, verdict=verdict, ended=now)
    if figures:
        record = replace(
            record,
            requests=figures.requests,
            error_rate=figures.error_rate,
            p90_ms=figures.p90_ms,
            p99_ms=figures.p99_ms,
        )
    return state.with_step_record(record)


# ---------------------------------------------------------------------------------------------
# The table


def decide(
    desired: Desired,
    live: LiveEndpoint,
    now: datetime,
    observed: Observations = Observations(),
    command: Command | None = None,
) -> Plan:
    """The next transition for this endpoint (see design.md, "Decision table")."""
    if not live.exists:
        if command:
            raise OperatorError(f"endpoint {desired.endpoint} does not exist yet")
        action = Action(
            ActionKind.CREATE_ENDPOINT, desired.endpoint, "the manifest's endpoint does not exist"
        )
        return _plan(desired, Outcome.CHANGES, "create the endpoint", action)

    damaged = damaged_tags(live.tags)
    if damaged:
        raise PlanError(
            f"endpoint {desired.endpoint} carries rollout tags the engine cannot read: "
            f"{', '.join(damaged)}; nothing was written. Repair them to match the live endpoint, "
            "or remove every saferollout.* tag so that the endpoint is adopted afresh"
        )
    state = replace(decode(live.tags), lease=None)
    plan = _decide_existing(desired, live, state, now, observed, command)
    if not plan.actions and not state.is_empty:
        plan = _restore_traffic_record(desired, live, state, plan)
    if observed.gates and not plan.gates:
        plan = replace(plan, gates=observed.gates)  # every plan shows the gates it was given
    return plan


def _restore_traffic_record(
    desired: Desired, live: LiveEndpoint, state: RolloutState, plan: Plan
) -> Plan:
    """Tags edited out of band so that they no longer describe the live traffic, while the
    traffic itself is as the rollout wants it: write the record again, changing nothing else."""
    traffic, mirror = live.live_traffic(), live.live_mirror()
    if (state.traffic, state.mirror) == (traffic, mirror):
        return plan
    drift = (
        f"the rollout tags record traffic {_shares(state.traffic)} and mirror "
        f"{_shares(state.mirror)}, the endpoint has traffic {_shares(traffic)} and mirror "
        f"{_shares(mirror)}"
    )
    reason = f"rewrite the rollout tags to describe the live endpoint: {drift}"
    action = _update(desired, live, state, state, reason)
    if action.state:  # the last decision stays what it was: only the record was repaired
        action = replace(action, state=(state, replace(action.state[1], decision=state.decision)))
    return _plan(desired, Outcome.CHANGES, reason, action, phase=state.phase, notes=(drift,))


def _decide_existing(
    desired: Desired,
    live: LiveEndpoint,
    state: RolloutState,
    now: datetime,
    observed: Observations,
    command: Command | None,
) -> Plan:
    if command:
        return decide_command(desired, live, state, now, observed, command)
    if state.stable is None:
        return decide_first_deployment(desired, live, state, now, observed)
    if state.stable not in live.deployments:
        return _plan(
            desired,
            Outcome.FAILED,
            f"stable deployment {state.stable} is gone from the endpoint; a human is needed",
            phase=Phase.FAILED,
            state=state,
        )
    if state.stable == desired.name:
        return decide_converged(desired, live, state, now, observed)
    return decide_rollout(desired, live, state, now, observed)


def decide_first_deployment(
    desired: Desired,
    live: LiveEndpoint,
    state: RolloutState,
    now: datetime,
    observed: Observations,
) -> Plan:
    """Rule 2: adopt a lone serving deployment, refuse a split, or deploy into an empty one."""
    serving = live.live_traffic()
    if serving and not has_state(live.tags):
        if len(serving) > 1:
            shares = ", ".join(f"{name} ({pct} %)" for name, pct in sorted(serving.items()))
            raise PlanError(
                f"endpoint {desired.endpoint} splits live traffic over {shares} and carries no "
                "rollout state, so there is no single stable deployment to roll out from; move "
                "all live traffic to one deployment, then run again"
            )
        (name,) = serving
        after = replace(state, stable=name, phase=Phase.SUCCEEDED)
        reason = f"adopt {name}, which serves 100 % of live traffic, as the stable deployment"
        action = _update(desired, live, state, after, reason)
        return _plan(desired, Outcome.CHANGES, reason, action, phase=Phase.SUCCEEDED)
    if serving:
        raise PlanError(
            f"endpoint {desired.endpoint} has rollout state but no stable deployment while "
            f"{', '.join(sorted(serving))} serve traffic; inspect the endpoint's saferollout.* "
            "tags and repair them, or move all traffic to one deployment and remove the tags"
        )

    name = desired.name
    if name in state.rolled_back:
        return _found_rolled_back(desired, state)
    deployment = live.deployments.get(name)
    if deployment is None:
        after = replace(
            state, candidate=name, phase=Phase.PROGRESSING, rollout_started=now, steps=()
        )
        return _plan(
            desired,
            Outcome.CHANGES,
            f"deploy {name} into the empty endpoint",
            _create(desired, "the endpoint serves nothing yet"),
            _update(desired, live, state, after, f"first deployment {name} is being created"),
            phase=Phase.PROGRESSING,
        )
    waiting = _provisioning(desired, deployment, state)
    if waiting:
        return waiting
    if deployment.state is not ProvisioningState.SUCCEEDED:
        reason = f"{name} failed to provision: {deployment.error or deployment.state.value}"
        after = replace(
            state,
            candidate=name,
            phase=Phase.ROLLED_BACK,
            rolled_back=(*state.rolled_back, name),
        )
        action = _update(desired, live, state, after, reason)
        return _plan(desired, Outcome.ROLLED_BACK, reason, action, phase=Phase.ROLLED_BACK)
    smoke = observed.smoke if observed.smoke and observed.smoke.deployment == name else None
    if smoke is None:
        return _plan(desired, Outcome.CHANGES, f"smoke-test {name}", _smoke(desired))
    if not smoke.passed:
        reason = f"smoke test of {name} failed: {smoke.reason}"
        after = replace(
            state, candidate=name, phase=Phase.ROLLED_BACK, rolled_back=(*state.rolled_back, name)
        )
        action = _update(desired, live, state, after, reason, traffic={}, mirror={})
        return _plan(desired, Outcome.ROLLED_BACK, reason, action, phase=Phase.ROLLED_BACK)
    after = replace(
        state,
        stable=name,
        candidate=None,
        phase=Phase.SUCCEEDED,
        promoted_at=now,
        step=None,
        step_started=None,
        # A run that died between creating the deployment and recording it left no start.
        rollout_started=state.rollout_started or now,
    )
    reason = f"{name} passed its smoke test and becomes stable with 100 % of live traffic"
    action = _update(desired, live, state, after, reason, traffic={name: 100}, mirror={})
    return _plan(desired, Outcome.CHANGES, reason, action, phase=Phase.SUCCEEDED)


def decide_converged(
    desired: Desired,
    live: LiveEndpoint,
    state: RolloutState,
    now: datetime,
    observed: Observations,
) -> Plan:
    """Rule 3 and 8: stable serves the manifest; restore drift, then clean up."""
    stable = state.stable or ""
    wanted_traffic, wanted_mirror = {stable: 100}, {}
    drift = _drift(live, wanted_traffic, wanted_mirror)
    if drift:
        after = replace(state, phase=Phase.SUCCEEDED, candidate=None, step=None)
        reason = f"restore the converged traffic: {drift}"
        action = _update(desired, live, state, after, reason, wanted_traffic, wanted_mirror)
        return _plan(
            desired, Outcome.CHANGES, reason, action, phase=Phase.SUCCEEDED, notes=(drift,)
        )
    if state.phase is not Phase.SUCCEEDED or state.candidate or state.step is not None:
        after = replace(state, phase=Phase.SUCCEEDED, candidate=None, step=None, step_started=None)
        if state.candidate and state.candidate != stable:
            after = replace(after, retired=_add(state.retired, state.candidate))
        reason = f"stable {stable} serves the manifest's version; the rollout is settled"
        action = _update(desired, live, state, after, reason)
        return _plan(desired, Outcome.CHANGES, reason, action, phase=Phase.SUCCEEDED)

    cleanup = _cleanup_previous(desired, live, state, now)
    if cleanup:
        return cleanup
    housekeeping = _delete_retired(desired, live, state)
    if housekeeping:
        return housekeeping
    notes = ()
    if state.previous and state.promoted_at:
        due = state.promoted_at + desired.rollout.spec.cleanup.delete_previous_after
        notes = (f"previous {state.previous} is kept warm until {format_time(due)}",)
    return _plan(
        desired,
        Outcome.CONVERGED,
        f"{stable} serves {desired.rollout.spec.model.name} version "
        f"{desired.rollout.spec.model.version}; nothing to do",
        phase=Phase.SUCCEEDED,
        state=state,
        notes=notes,
    )


def decide_rollout(
    desired: Desired,
    live: LiveEndpoint,
    state: RolloutState,
    now: datetime,
    observed: Observations,
) -> Plan:
    """Rule 4-7: a different version is wanted."""
    spec = desired.rollout.spec
    name = desired.name
    stable = state.stable or ""

    if state.candidate and state.candidate != name:
        exposed = live.traffic.get(state.candidate, 0) or live.mirror.get(state.candidate, 0)
        if exposed or state.phase in (Phase.PROGRESSING, Phase.PAUSED):
            reason = (
                f"the manifest now asks for {name}: {state.candidate} is withdrawn and all live "
                f"traffic returns to stable {stable}"
            )
            after = replace(
                state,
                candidate=None,
                step=None,
                step_started=None,
                phase=Phase.PROGRESSING,
                retired=_add(state.retired, state.candidate),
                source_errors={},
            )
            action = _update(desired, live, state, after, reason, {stable: 100}, {})
            return _plan(desired, Outcome.CHANGES, reason, action, phase=Phase.PROGRESSING)

    if name in state.rolled_back:
        drift = _drift(live, {stable: 100}, {})
        if drift:
            reason = f"restore the rolled-back traffic: {drift}"
            action = _update(desired, live, state, state, reason, {stable: 100}, {})
            return _plan(
                desired, Outcome.CHANGES, reason, action, phase=state.phase, notes=(drift,)
            )
        # Stable serves alone again: the previous deployment's clock still runs.
        housekeeping = _cleanup_previous(desired, live, state, now) or _delete_retired(
            desired, live, state
        )
        return housekeeping or _found_rolled_back(desired, state)

    if state.candidate != name:
        retired = state.retired
        if state.candidate:
            retired = _add(retired, state.candidate)
        after = replace(
            state,
            candidate=name,
            phase=Phase.PROGRESSING,
            step=None,
            step_started=None,
            rollout_started=now,
            steps=(),
            source_errors={},
            override="",
            retired=retired,
        )
        reason = f"start rolling out {name} (stable is {stable})"
        actions = [_update(desired, live, state, after, reason, {stable: 100}, {})]
        if name not in live.deployments:
            actions.insert(0, _create(desired, f"{name} does not exist yet"))
        return _plan(desired, Outcome.CHANGES, reason, *actions, phase=Phase.PROGRESSING)

    if state.phase is Phase.FAILED:
        why = state.decision.partition(": ")[2] or "an earlier pass could not roll back"
        return _plan(desired, Outcome.FAILED, why, phase=Phase.FAILED, state=state)

    deployment = live.deployments.get(name)
    if deployment is None:
        return _plan(
            desired,
            Outcome.CHANGES,
            f"re-create candidate {name}, which is missing from the endpoint",
            _create(desired, f"candidate {name} is recorded but missing"),
            phase=state.phase,
        )
    waiting = _provisioning(desired, deployment, state)
    if waiting:
        return waiting
    if deployment.state is not ProvisioningState.SUCCEEDED:
        return _fail(
            desired,
            live,
            state,
            now,
            observed,
            f"{name} failed to provision: {deployment.error or deployment.state.value}",
        )

    deadline = spec.progress_deadline
    if deadline and state.rollout_started and now > state.rollout_started + deadline:
        return _fail(
            desired,
            live,
            state,
            now,
            observed,
            f"the progress deadline of {format_duration(deadline)} passed "
            f"(the rollout started {format_time(state.rollout_started)})",
        )

    if state.step is None:
        smoke = observed.smoke if observed.smoke and observed.smoke.deployment == name else None
        if smoke is None:
            return _plan(
                desired,
                Outcome.CHANGES,
                f"smoke-test {name} at 0 % traffic",
                _smoke(desired),
                phase=Phase.PROGRESSING,
            )
        if not smoke.passed:
            return _fail(desired, live, state, now, observed, f"smoke test failed: {smoke.reason}")
        return _enter_step(desired, live, state, 0, now, f"{name} passed its smoke test")

    return decide_step(desired, live, state, now, observed)


def decide_step(
    desired: Desired,
    live: LiveEndpoint,
    state: RolloutState,
    now: datetime,
    observed: Observations,
) -> Plan:
    """Inside step `state.step`: drift, gates, bake, approval, holds."""
    spec = desired.rollout.spec
    index = min(state.step or 0, len(spec.steps) - 1)
    step = spec.steps[index]
    stable, name = state.stable or "", desired.name
    label = f"step {index + 1}/{len(spec.steps)} ({step_label(step)})"
    wanted_traffic, wanted_mirror = step_targets(spec.steps, index, stable, name)

    drift = _drift(live, wanted_traffic, wanted_mirror)
    if drift:
        reason = (
            f"restore {label}: {drift}; the step's bake and gate window restart now, "
            "minutes at the wrong weights do not count"
        )
        after = _record(state, "restarted", None, now)
        after = replace(after, step_started=now, source_errors={})
        action = _update(desired, live, state, after, reason, wanted_traffic, wanted_mirror)
        return _plan(desired, Outcome.CHANGES, reason, action, phase=state.phase, notes=(drift,))

    gates = observed.gates
    bake_over = isinstance(step, ApprovalStep) or now >= (state.step_started or now) + step.bake
    failure = first_failure(list(gates), bake_over=bake_over) if gates is not None else None
    if failure:
        return _fail(desired, live, state, now, observed, f"gate {failure.reason}")

    errors = observed.source_errors
    errors_changed = errors is not None and errors != state.source_errors
    with_errors = replace(state, source_errors=errors) if errors is not None else state

    if state.phase is Phase.PAUSED:
        reason = state.decision.partition(": ")[2] or "waiting for an operator"
        return _quiet_wait(
            desired, live, state, with_errors, errors_changed, Outcome.PAUSED, reason, observed
        )

    if isinstance(step, ApprovalStep):
        after = replace(with_errors, phase=Phase.PAUSED)
        reason = f"{label}: waiting for approval (`rollout promote {desired.endpoint}`)"
        action = _update(desired, live, state, after, reason)
        return _plan(desired, Outcome.PAUSED, reason, action, phase=Phase.PAUSED, observed=observed)

    bake = step.bake
    started = state.step_started or now
    left = (started + bake - now).total_seconds()
    # promote_early: a step whose every acting gate has concluded passed needs no more bake.
    early = spec.promote_early and gates is not None and concluded_passed(list(gates))
    if left > 0 and not early:
        reason = f"{label}: baking, {format_duration(left)} left"
        return _quiet_wait(
            desired, live, state, with_errors, errors_changed, Outcome.WAITING, reason, observed,
            wait=left,
        )  # fmt: skip
    if gates is None:
        reason = f"{label}: bake is over; waiting for the gates to be measured"
        return _quiet_wait(
            desired, live, state, with_errors, errors_changed, Outcome.WAITING, reason, observed
        )

    verdict = combine(list(gates))
    if verdict is Verdict.PASSED:
        closed = _record(with_errors, "passed", observed.figures, now)
        why = f"{label} passed its gates"
        if left > 0:
            why = f"{label} concluded passed {format_duration(left)} before its bake ended"
        if index + 1 < len(spec.steps):
            return _enter_step(desired, live, closed, index + 1, now, why)
        return _promote(desired, live, closed, now, f"{why}, the last step")

    # Inconclusive after the bake: a timer running out never promotes.
    # Short on purpose: the reason is kept in a 256-character tag; the gate lines say the rest.
    unclear = [
        g.reason.split(" (gates[")[0] for g in gates if g.acts and g.verdict is Verdict.INCONCLUSIVE
    ]
    detail = "; ".join(unclear)
    if spec.on_inconclusive == "rollback":
        return _fail(desired, live, state, now, observed, f"inconclusive after the bake: {detail}")
    after = replace(_record(with_errors, "inconclusive", observed.figures, now), phase=Phase.PAUSED)
    reason = (
        f"{label}: bake is over but the gates are inconclusive ({detail}); waiting for an "
        "operator: promote or abort"
    )
    action = _update(desired, live, state, after, reason)
    return _plan(desired, Outcome.PAUSED, reason, action, phase=Phase.PAUSED, observed=observed)


def _quiet_wait(
    desired: Desired,
    live: LiveEndpoint,
    state: RolloutState,
    after: RolloutState,
    changed: bool,
    outcome: Outcome,
    reason: str,
    observed: Observations,
    wait: float | None = None,
) -> Plan:
    """Waiting writes nothing, except source-error counts that must survive to the next pass."""
    if not changed:
        housekeeping = _delete_retired(desired, live, state)
        if housekeeping:
            return housekeeping
        return _plan(
            desired, outcome, reason, phase=state.phase, state=state, observed=observed, wait=wait
        )
    action = _update(desired, live, state, after, f"record gate source errors; {reason}")
    return _plan(
        desired, Outcome.CHANGES, reason, action, phase=state.phase, observed=observed, wait=wait
    )


# ---------------------------------------------------------------------------------------------
# Transitions


def _enter_step(
    desired: Desired,
    live: LiveEndpoint,
    state: RolloutState,
    index: int,
    now: datetime,
    why: str,
) -> Plan:
    spec = desired.rollout.spec
    step = spec.steps[index]
    traffic, mirror = step_targets(spec.steps, index, state.stable or "", desired.name)
    phase = Phase.PAUSED if isinstance(step, ApprovalStep) else Phase.PROGRESSING
    after = replace(state, step=index, step_started=now, phase=phase, source_errors={})
    after = after.with_step_record(StepRecord(index=index, started=now))
    label = f"step {index + 1}/{len(spec.steps)} ({step_label(step)})"
    if isinstance(step, ApprovalStep):
        reason = f"{why}; {label}: waiting for approval (`rollout promote {desired.endpoint}`)"
    else:
        reason = f"{why}; enter {label}"
    action = _update(desired, live, state, after, reason, traffic, mirror)
    return _plan(desired, Outcome.CHANGES, reason, action, phase=phase)


def _promote(
    desired: Desired, live: LiveEndpoint, state: RolloutState, now: datetime, why: str
) -> Plan:
    name = desired.name
    after = replace(
        state,
        stable=name,
        previous=state.stable,
        candidate=None,
        phase=Phase.SUCCEEDED,
        step=None,
        step_started=None,
        promoted_at=now,
        source_errors={},
    )
    reason = f"{why}; promote {name} to stable, {state.stable} becomes previous"
    action = _update(desired, live, state, after, reason, {name: 100}, {})
    return _plan(desired, Outcome.CHANGES, reason, action, phase=Phase.SUCCEEDED)


def _fail(
    desired: Desired,
    live: LiveEndpoint,
    state: RolloutState,
    now: datetime,
    observed: Observations,
    why: str,
) -> Plan:
    """Rule 5: roll back (all traffic to stable, mirror off, one write) or hold."""
    spec = desired.rollout.spec
    stable = state.stable or ""
    candidate = state.candidate or desired.name
    closed = _record(state, "failed", observed.figures, now)
    if observed.source_errors is not None:
        closed = replace(closed, source_errors=observed.source_errors)
    if spec.on_failure == "hold":
        if state.phase is Phase.PAUSED:
            return _plan(
                desired,
                Outcome.PAUSED,
                f"{why}; on_failure is hold: waiting for an operator (promote or abort)",
                phase=Phase.PAUSED,
                state=state,
                observed=observed,
            )
        after = replace(closed, phase=Phase.PAUSED)
        reason = f"{why}; on_failure is hold: nothing moves until an operator promotes or aborts"
        action = _update(desired, live, state, after, reason)
        return _plan(desired, Outcome.PAUSED, reason, action, phase=Phase.PAUSED, observed=observed)
    stable_deployment = live.deployments.get(stable)
    if stable_deployment is None or stable_deployment.state is not ProvisioningState.SUCCEEDED:
        reason = (
            f"{why}; cannot roll back: stable {stable} is not ready to take traffic back, a "
            f"human is needed (repair {stable}, then `rollout abort`)"
        )
        if state.phase is Phase.FAILED:
            return _plan(
                desired, Outcome.FAILED, reason, phase=Phase.FAILED, state=state, observed=observed
            )
        # Nothing moves; record why, so every later pass and `status` say so too.
        action = _update(desired, live, state, replace(closed, phase=Phase.FAILED), reason)
        return _plan(desired, Outcome.FAILED, reason, action, phase=Phase.FAILED, observed=observed)
    after = replace(
        closed,
        phase=Phase.ROLLED_BACK,
        rolled_back=_add(state.rolled_back, candidate),
        rollback_reason=f"{candidate}: {why}",
    )
    reason = f"roll back {candidate}: {why}; all live traffic returns to stable {stable}"
    action = _update(desired, live, state, after, reason, {stable: 100}, {})
    return _plan(
        desired, Outcome.ROLLED_BACK, reason, action, phase=Phase.ROLLED_BACK, observed=observed
    )


def _found_rolled_back(desired: Desired, state: RolloutState) -> Plan:
    recorded, _, why = state.rollback_reason.partition(": ")
    if recorded != desired.name or not why:
        why = "an earlier pass rolled it back"
    return _plan(
        desired,
        Outcome.FOUND_ROLLED_BACK,
        f"{desired.name} was rolled back and is not retried by itself ({why}); to try it again "
        f"run `rollout retry` on this manifest, or change the version",
        phase=Phase.ROLLED_BACK,
        state=state,
    )


def _cleanup_previous(
    desired: Desired, live: LiveEndpoint, state: RolloutState, now: datetime
) -> Plan | None:
    previous = state.previous
    if not previous or state.promoted_at is None:
        return None
    if now < state.promoted_at + desired.rollout.spec.cleanup.delete_previous_after:
        return None
    after = replace(state, previous=None)
    if previous not in live.deployments:
        reason = f"previous {previous} is already gone; forget it"
        return _plan(desired, Outcome.CHANGES, reason, _update(desired, live, state, after, reason))
    if live.traffic.get(previous) or live.mirror.get(previous):
        return None  # drift handling restores traffic first; never delete a serving deployment
    reason = (
        f"delete previous {previous}: "
        f"{format_duration(desired.rollout.spec.cleanup.delete_previous_after)} "
        "after promotion, it has 0 % live and 0 % mirrored traffic"
    )
    return _plan(
        desired,
        Outcome.CHANGES,
        reason,
        Action(ActionKind.DELETE_DEPLOYMENT, previous, reason),
        _update(desired, live, state, after, f"forget deleted previous {previous}"),
        phase=state.phase,
    )


def _delete_retired(desired: Desired, live: LiveEndpoint, state: RolloutState) -> Plan | None:
    keep = {state.stable, state.candidate, state.previous}
    for name in state.retired:
        if name in keep:
            continue
        if live.traffic.get(name) or live.mirror.get(name):
            continue  # still exposed: the transition that retired it moves its traffic first
        after = replace(state, retired=tuple(r for r in state.retired if r != name))
        actions = []
        if name in live.deployments:
            actions.append(
                Action(ActionKind.DELETE_DEPLOYMENT, name, f"{name} was withdrawn or replaced")
            )
        actions.append(_update(desired, live, state, after, f"forget withdrawn {name}"))
        return _plan(
            desired, Outcome.CHANGES, f"delete withdrawn {name}", *actions, phase=state.phase
        )
    return None


# ---------------------------------------------------------------------------------------------
# Operator commands


def decide_command(
    desired: Desired,
    live: LiveEndpoint,
    state: RolloutState,
    now: datetime,
    observed: Observations,
    command: Command,
) -> Plan:
    stamp = f"{command.kind}{' --full' if command.full else ''} by {command.who} at " + (
        format_time(now)
    )
    if command.kind == "retry":
        if desired.name not in state.rolled_back:
            raise OperatorError(
                f"{desired.name} was not rolled back on {desired.endpoint}; nothing to retry"
            )
        after = replace(
            state,
            rolled_back=tuple(r for r in state.rolled_back if r != desired.name),
            candidate=desired.name if state.candidate == desired.name else state.candidate,
            phase=Phase.PROGRESSING,
            step=None,
            step_started=None,
            rollout_started=now,
            steps=(),
            source_errors={},
            override=stamp,
        )
        reason = f"retry {desired.name} from the first step, with an empty gate history"
        action = _update(desired, live, state, after, reason)
        return _plan(desired, Outcome.CHANGES, reason, action, phase=Phase.PROGRESSING)

    if command.kind == "undo":
        previous = state.previous
        exposed = state.candidate and (
            live.traffic.get(state.candidate) or live.mirror.get(state.candidate)
        )
        if not previous or exposed or state.phase not in (Phase.SUCCEEDED, Phase.ROLLED_BACK):
            raise OperatorError(
                f"nothing to undo on {desired.endpoint}: undo puts traffic back on the previous "
                "deployment after a promotion, and there is none"
            )
        deployment = live.deployments.get(previous)
        if deployment is None or deployment.state is not ProvisioningState.SUCCEEDED:
            raise OperatorError(
                f"previous {previous} is no longer deployed; it cannot take traffic"
            )
        undone = state.stable or ""
        retired = state.retired
        if state.candidate and state.candidate != undone:
            retired = _add(retired, state.candidate)  # a rolled-back candidate kept till now
        after = replace(
            state,
            stable=previous,
            previous=None,
            candidate=undone,
            phase=Phase.ROLLED_BACK,
            rolled_back=_add(state.rolled_back, undone),
            retired=retired,
            override=stamp,
            step=None,
        )
        reason = f"undo the promotion of {undone}: all live traffic back on {previous}"
        action = _update(desired, live, state, after, reason, {previous: 100}, {})
        return _plan(desired, Outcome.CHANGES, reason, action, phase=Phase.ROLLED_BACK)

    in_progress = (
        state.candidate == desired.name
        and state.step is not None
        and state.phase in (Phase.PROGRESSING, Phase.PAUSED)
    ) or (command.kind == "abort" and state.phase is Phase.FAILED)
    if not in_progress:
        raise OperatorError(
            f"no rollout of {desired.name} is in progress on {desired.endpoint} "
            f"(phase {state.phase.value if state.phase else 'none'}); "
            + ("use `rollout retry`" if desired.name in state.rolled_back else "nothing to do")
        )
    state = replace(state, override=stamp)
    if command.kind == "abort":
        return _fail(desired, live, state, now, observed, f"aborted by {command.who}")

    spec = desired.rollout.spec
    index = state.step or 0
    skipped = _record(state, "skipped", observed.figures, now)
    if command.full or index + 1 >= len(spec.steps):
        return _promote(desired, live, skipped, now, f"{stamp}: step {index + 1} skipped")
    return _enter_step(desired, live, skipped, index + 1, now, f"{stamp}: step {index + 1} skipped")


# ---------------------------------------------------------------------------------------------
# Helpers


def _create(desired: Desired, why: str) -> Action:
    return Action(
        ActionKind.CREATE_DEPLOYMENT,
        desired.name,
        f"{why}: {desired.rollout.spec.model.name} version {desired.rollout.spec.model.version}",
        deployment=desired.deployment,
    )


def _smoke(desired: Desired) -> Action:
    expect = desired.rollout.spec.smoke_test.expect_status
    return Action(
        ActionKind.SMOKE_TEST,
        desired.name,
        f"call {desired.name} directly at 0 % traffic with the sample request; expect {expect} "
        "and a response of the model's shape",
    )


def _provisioning(desired: Desired, deployment: LiveDeployment, state: RolloutState) -> Plan | None:
    if deployment.state.is_settled:
        return None
    return _plan(
        desired,
        Outcome.WAITING,
        f"{deployment.name} is {deployment.state.value.lower()}; waiting for it to be ready",
        phase=state.phase or Phase.PROGRESSING,
        state=state,
    )


def _drift(live: LiveEndpoint, traffic: dict[str, int], mirror: dict[str, int]) -> str:
    """'' when live matches; otherwise what differs, in before -> after words."""
    parts = []
    if live.live_traffic() != traffic:
        parts.append(f"live traffic {_shares(live.live_traffic())}, desired {_shares(traffic)}")
    if live.live_mirror() != mirror:
        parts.append(f"mirror {_shares(live.live_mirror())}, desired {_shares(mirror)}")
    return "; ".join(parts)


def _shares(values: dict[str, int]) -> str:
    return "{" + ", ".join(f"{k}: {v}" for k, v in sorted(values.items())) + "}" if values else "{}"


def _add(names: tuple[str, ...], name: str) -> tuple[str, ...]:
    return names if name in names else (*names, name)


# ---------------------------------------------------------------------------------------------
# A whole pass, simulated


def simulate(live: LiveEndpoint, action: Action, lease: Lease | None = None) -> LiveEndpoint:
    """The endpoint as it would be after `action` succeeds (for `plan`, which writes nothing)."""
    if action.kind is ActionKind.CREATE_ENDPOINT:
        return replace(live, exists=True)
    if action.kind is ActionKind.CREATE_DEPLOYMENT and action.deployment:
        request = action.deployment
        deployments = dict(live.deployments)
        deployments[request.name] = LiveDeployment(
            request.name, request.model_name, request.model_version, ProvisioningState.SUCCEEDED
        )
        return replace(live, deployments=deployments)
    if action.kind is ActionKind.DELETE_DEPLOYMENT:
        deployments = {k: v for k, v in live.deployments.items() if k != action.subject}
        return replace(live, deployments=deployments)
    if action.kind is ActionKind.UPDATE_ENDPOINT and action.state:
        after = replace(action.state[1], lease=lease)
        other = {k: v for k, v in live.tags.items() if not k.startswith("saferollout.")}
        return replace(
            live,
            traffic=dict(action.traffic[1]) if action.traffic else live.traffic,
            mirror=dict(action.mirror[1]) if action.mirror else live.mirror,
            tags={**other, **encode(after)},
        )
    return live


def plan_pass(
    desired: Desired,
    live: LiveEndpoint,
    now: datetime,
    observed: Observations = Observations(),
    command: Command | None = None,
) -> list[Plan]:
    """Every transition one pass would make, assuming each action succeeds and smoke tests
    pass; gates of a step entered during the pass are not yet measured."""
    plans: list[Plan] = []
    for _ in range(MAX_CHAIN):
        plan = decide(desired, live, now, observed, command)
        plans.append(plan)
        if not plan.actions or plan.outcome in (Outcome.ROLLED_BACK, Outcome.FAILED):
            break
        smoke = None
        for action in plan.actions:
            live = simulate(live, action)
            if action.kind is ActionKind.SMOKE_TEST:
                smoke = SmokeOutcome(action.subject, True, "assumed to pass")
        command = None
        observed = Observations(smoke=smoke)
    return plans
