"""One reconcile pass: the only place where the engine acts on a provider.

    read endpoint -> measure the step's gates -> decide (pure) -> take the lease
                  -> perform the actions (each write re-read and verified) -> repeat until
                     nothing is left to do now -> release the lease

Transient provider faults are retried with a bounded backoff; everything else stops the pass
with the endpoint in a state the next pass continues from. The clock is injected so tests step
time instead of sleeping.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeVar

from engine.decide import (
    CandidateFigures,
    Command,
    Desired,
    Observations,
    SmokeOutcome,
    candidate_exposure,
    decide,
    plan_pass,
)
from engine.errors import (
    ConflictError,
    LeaseHeldError,
    PermanentError,
    ProviderError,
    SafeRolloutError,
    SourceError,
    TransientError,
)
from engine.gates import GateResult, RolloutData, StepData, evaluate_gate
from engine.live import DeploymentRequest, EndpointWrite, LiveEndpoint
from engine.names import derive_deployment_name
from engine.plan import Action, ActionKind, Outcome, PassResult, Plan
from engine.providers.base import STATE_TAG_PREFIX, Measurement, Provider, Window
from engine.spec import Metric, SequentialGate
from engine.state import Lease, Phase, RolloutState, decode, encode, format_time

if TYPE_CHECKING:
    from engine.loader import LoadedManifest

log = logging.getLogger("saferollout")

LEASE_TTL = timedelta(minutes=10)
MAX_TRANSITIONS = 16
RETRY_ATTEMPTS = 5
RETRY_CAP_S = 60.0
T = TypeVar("T")


class Clock(Protocol):
    def now(self) -> datetime: ...

    def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC).replace(microsecond=0)

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


def default_holder() -> str:
    """Who holds the lease: the CI run when there is one, else user@host:pid."""
    run = os.environ.get("GITHUB_RUN_ID")
    if run:
        return f"github-run-{run}-{os.environ.get('GITHUB_RUN_ATTEMPT', '1')}"
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}:{os.getpid()}"[:80].replace(",", "_")


def desired_from(loaded: LoadedManifest) -> Desired:
    spec = loaded.rollout.spec
    settings = spec.deployment.model_dump(mode="json")
    name = derive_deployment_name(spec.model.name, spec.model.version, settings)
    request = DeploymentRequest(
        name=name,
        model_name=spec.model.name,
        model_version=spec.model.version,
        model_dir=str(loaded.model_dir),
        instance_type=spec.deployment.instance_type,
        instance_count=spec.deployment.instance_count,
    )
    return Desired(
        rollout=loaded.rollout, deployment=request, smoke_request=str(loaded.smoke_request)
    )


# ---------------------------------------------------------------------------------------------
# Measuring


def measure_gates(
    desired: Desired, provider: Provider, live: LiveEndpoint, now: datetime
) -> Observations:
    """Evaluate every gate over the current step's window; None-gates when not in a step."""
    spec = desired.rollout.spec
    state = decode(live.tags)
    if state.candidate != desired.name or state.step is None or state.step_started is None:
        return Observations()
    if state.phase in (Phase.ROLLED_BACK, Phase.FAILED, Phase.SUCCEEDED):
        return Observations()  # nothing is being judged any more
    if desired.name not in live.deployments:
        return Observations()
    index = min(state.step, len(spec.steps) - 1)
    share, mirrored = candidate_exposure(spec.steps, index)

    try:
        source = provider.gate_source(spec.analysis_source, spec.analysis.workspace_id)
    except ProviderError as error:
        failure: SourceError | None = SourceError(str(error))
        source = None
    else:
        failure = None

    start = state.step_started + spec.analysis.warmup
    end = now - timedelta(seconds=source.ingestion_delay_s if source else 0)
    if source and source.per_minute:
        end = end.replace(second=0, microsecond=0)
    window = Window(start=start, end=max(end, start))

    def measure(deployment: str, window: Window, mirrored: bool) -> Measurement | SourceError:
        if failure or source is None:
            return failure or SourceError("no gate source")
        if window.end <= window.start:
            return Measurement(requests=0, server_errors=0, non_2xx=0, latency_ms={})
        try:
            return source.measure(desired.endpoint, deployment, window, mirrored=mirrored)
        except SourceError as error:
            return error
        except ProviderError as error:
            return SourceError(str(error))

    candidate = measure(desired.name, window, mirrored)
    stable_data: Measurement | SourceError | None = None
    if state.stable and any(g.max_ratio_to_stable is not None for g in spec.gates):
        # At 100 % the stable serves nothing in the window: compare with its last window of
        # the same length before the step began.
        stable_window = window
        if share == 100 and not mirrored:
            length = window.end - window.start
            stable_window = Window(state.step_started - length, state.step_started)
        stable_data = measure(state.stable, stable_window, False)

    exposing = sum(1 for i in range(len(spec.steps)) if candidate_exposure(spec.steps, i)[0])
    rollout: RolloutData | SourceError = RolloutData(exposure_steps=max(exposing, 1))
    if state.stable and any(
        isinstance(g, SequentialGate) and g.compares_errors for g in spec.gates
    ):
        # Sequential error gates judge the rollout since its first step: every earlier step's
        # window is measured again each pass, so nothing is kept between passes.
        past: list[tuple[int, Window | None]] = [
            *_past_step_windows(desired, state, index, end),
            (index, None),
        ]
        from engine.sequential import routing_share  # numpy: only when a rollout is judged

        steps: list[StepData] = []
        for step_index, past_window in past:
            step_share, step_mirrored = candidate_exposure(spec.steps, step_index)
            if past_window is None:  # the current step
                candidate_side: Measurement | SourceError = candidate
                if share == 100 and not mirrored:
                    stable_side: Measurement | SourceError = Measurement(0, 0, 0, {})
                elif stable_data is not None:
                    stable_side = stable_data
                else:
                    stable_side = measure(state.stable, window, False)
            else:
                candidate_side = measure(desired.name, past_window, step_mirrored)
                stable_side = measure(state.stable, past_window, False)
            if isinstance(candidate_side, SourceError) or isinstance(stable_side, SourceError):
                rollout = candidate_side if isinstance(candidate_side, SourceError) else stable_side
                break
            steps.append(
                StepData(
                    routing_share(step_share, step_mirrored),
                    step_mirrored,
                    candidate_side,
                    stable_side,
                )
            )
        else:
            rollout = RolloutData(tuple(steps), exposure_steps=max(exposing, 1))

    results: list[GateResult] = []
    errors: dict[str, tuple[int, int]] = {}
    for index_, gate in enumerate(spec.gates):
        before = state.source_errors.get(gate.name, (0, 0))
        result = evaluate_gate(gate, index_, candidate, stable_data, spec.analysis, before, rollout)
        results.append(result)
        if result.source_errors != (0, 0):
            errors[gate.name] = result.source_errors

    figures = None
    if isinstance(candidate, Measurement):
        rate = candidate.server_errors / candidate.requests if candidate.requests else None
        figures = CandidateFigures(
            requests=candidate.requests,
            error_rate=rate,
            p90_ms=candidate.latency_ms.get(Metric.LATENCY_P90_MS.percentile or 90),
            p99_ms=candidate.latency_ms.get(Metric.LATENCY_P99_MS.percentile or 99),
        )
    return Observations(gates=tuple(results), figures=figures, source_errors=errors)


def _past_step_windows(
    desired: Desired, state: RolloutState, current: int, end: datetime
) -> list[tuple[int, Window]]:
    """The window of each earlier step of the rollout that exposed the candidate: from its
    last start plus the warm-up to when it closed (or the next step began, for a step log
    written before closes were recorded), never past `end`."""
    spec = desired.rollout.spec
    records = {r.index: r for r in state.steps}
    windows = []
    for index in range(current):
        record = records.get(index)
        if record is None or candidate_exposure(spec.steps, index)[0] == 0:
            continue
        closed = record.ended or (records[index + 1].started if index + 1 in records else None)
        if closed is None:
            continue
        window = Window(record.started + spec.analysis.warmup, min(closed, end))
        if window.end > window.start:
            windows.append((index, window))
    return windows


# ---------------------------------------------------------------------------------------------
# Retrying


def with_retries(operation: Callable[[], T], clock: Clock, what: str) -> T:
    """Run `operation`, retrying transient faults with capped exponential backoff."""
    delay = 1.0
    for attempt in range(1, RETRY_ATTEMPTS + 1):
        try:
            return operation()
        except TransientError as error:
            if attempt == RETRY_ATTEMPTS:
                raise
            wait = min(RETRY_CAP_S, max(delay, error.retry_after))
            log.warning("%s failed (%s); retry %d in %.0fs", what, error, attempt, wait)
            clock.sleep(wait)
            delay *= 2
    raise AssertionError("unreachable")  # the loop returns or raises


# ---------------------------------------------------------------------------------------------
# Acting


@dataclass
class Reconciler:
    """Carries out passes for one manifest against one provider."""

    desired: Desired
    provider: Provider
    clock: Clock
    holder: str
    deployment_timeout_s: float = 600.0
    on_event: Callable[[str], None] = lambda message: None
    before_acting: Callable[[], None] = lambda: None  # once a pass, before its first action

    _lease: Lease | None = None

    @property
    def endpoint(self) -> str:
        return self.desired.endpoint

    def read(self) -> LiveEndpoint:
        return with_retries(
            lambda: self.provider.read_endpoint(self.endpoint), self.clock, "read endpoint"
        )

    def observe(self, live: LiveEndpoint) -> Observations:
        return measure_gates(self.desired, self.provider, live, self.clock.now())

    def plan(self, command: Command | None = None) -> list[Plan]:
        """What a pass would do now, without writing anything."""
        live = self.read()
        return plan_pass(self.desired, live, self.clock.now(), self.observe(live), command)

    def apply(self, command: Command | None = None) -> PassResult:
        """One reconcile pass: act until nothing is left to do now."""
        done: list[Plan] = []
        smoke: SmokeOutcome | None = None
        live = self.read()
        problem = "" if command else deployable_problem(self.provider, self.desired, live)
        if problem:
            raise PermanentError(
                f"endpoint {self.endpoint}: nothing was written: {problem}",
                endpoint=self.endpoint,
                operation="create deployment",
            )
        measured: tuple[tuple[object, ...], Observations] | None = None
        waited = False
        try:
            for _ in range(MAX_TRANSITIONS):
                # Gates are queried once per step window and pass: a second query in the same
                # pass would count one source outage twice.
                key = _window_key(live)
                if measured is None or measured[0] != key:
                    measured = (key, self.observe(live))
                observed = replace(measured[1], smoke=smoke)
                plan = decide(self.desired, live, self.clock.now(), observed, command)
                if not plan.actions:
                    pending = live.deployments.get(self.desired.name)
                    if pending and not pending.state.is_settled and not waited:
                        # Created by an earlier run that stopped before it was ready: wait for
                        # it here, as a create in this pass would have, then carry on.
                        waited = True
                        live = self.provider.wait_for_deployment(
                            self.endpoint, pending.name, self.deployment_timeout_s
                        )
                        continue
                    return PassResult(self.endpoint, tuple(done), plan)
                if not done:
                    self.before_acting()
                try:
                    live = self._take_lease(live, plan)
                except _EndpointMoved as moved:
                    # What was read is already out of date (a replica behind the last write, or
                    # a write that just ended): decide again on the endpoint as it is now.
                    live = moved.live
                    continue
                given, command = command, None  # an operator command is one transition
                smoke = None
                try:
                    for action in plan.actions:
                        live, outcome = self._perform(action, live)
                        smoke = outcome or smoke
                except ConflictError:
                    # Under this run's own lease the endpoint still moved: a read lagged behind a
                    # write, or someone edited it by hand. Decide again on it as it is, unless
                    # this was an operator's command, which the operator should see first.
                    fresh = self.read()
                    lease = decode(fresh.tags).lease
                    if given is not None or not lease or lease.holder != self.holder:
                        raise
                    live = fresh
                    continue
                done.append(plan)
                if plan.outcome in (Outcome.ROLLED_BACK, Outcome.FAILED):
                    live = self.read()
                    final = decide(self.desired, live, self.clock.now(), Observations())
                    return PassResult(self.endpoint, tuple(done), final)
            raise PermanentError(
                f"endpoint {self.endpoint}: the pass did not settle after {MAX_TRANSITIONS} "
                "transitions; stopping so a human can look",
                endpoint=self.endpoint,
                operation="reconcile",
            )
        finally:
            self._release_lease()

    # -- the lease ------------------------------------------------------------------------

    def _take_lease(self, live: LiveEndpoint, plan: Plan) -> LiveEndpoint:
        if not live.exists:
            return live  # nothing to lock until the endpoint exists
        now = self.clock.now()
        current = decode(live.tags).lease
        if self._lease and current and current.holder == self.holder:
            return live
        if current and current.holder != self.holder and current.until > now:
            # A read may lag behind a release that already happened: confirm before refusing.
            fresh = self.read()
            current = decode(fresh.tags).lease
            held = current and current.holder != self.holder and current.until > now
            if held and not self._abandoned(current.holder):
                raise LeaseHeldError(self.endpoint, current.holder, format_time(current.until))
            if not held:
                raise _EndpointMoved(fresh)
            log.warning(
                "endpoint=%s taking over the lease of %s: that process is gone",
                self.endpoint,
                current.holder,
            )
        lease = Lease(self.holder, now + LEASE_TTL)
        tags = {**encode(decode(live.tags)), **_lease_tag(lease)}
        write = EndpointWrite(live.live_traffic(), live.live_mirror(), tags)
        try:
            after = self._write(write, live, "take the lease")
        except ConflictError:
            fresh = self.read()
            holder = decode(fresh.tags).lease
            if holder and holder.holder != self.holder and holder.until > now:
                raise LeaseHeldError(
                    self.endpoint, holder.holder, format_time(holder.until)
                ) from None
            raise _EndpointMoved(fresh) from None
        confirmed = decode(after.tags).lease
        if not confirmed or confirmed.holder != self.holder:
            # Providers without compare-and-swap (Azure) are checked by re-reading.
            raise LeaseHeldError(
                self.endpoint,
                confirmed.holder if confirmed else "another writer",
                format_time(confirmed.until) if confirmed else "now",
            )
        self._lease = lease
        return after

    def _abandoned(self, holder: str) -> bool:
        """A local-backend lease whose holder process on this machine no longer exists (killed
        with -9, say) need not be waited out; the revision check still guards the write."""
        return getattr(self.provider, "name", "") == "local" and holder_process_gone(holder)

    def _release_lease(self) -> None:
        if not self._lease:
            return
        self._lease = None
        try:
            live = self.read()
            state = decode(live.tags)
            if not state.lease or state.lease.holder != self.holder:
                return
            write = EndpointWrite(
                live.live_traffic(), live.live_mirror(), encode(replace(state, lease=None))
            )
            self._write(write, live, "release the lease")
        except ProviderError as error:
            log.warning("endpoint=%s could not release the lease: %s", self.endpoint, error)

    # -- actions --------------------------------------------------------------------------

    def _perform(
        self, action: Action, live: LiveEndpoint
    ) -> tuple[LiveEndpoint, SmokeOutcome | None]:
        self.on_event(action.reason)
        log.info(
            "endpoint=%s action=%s subject=%s reason=%s",
            self.endpoint,
            action.kind.value,
            action.subject,
            action.reason,
        )
        if action.kind in _WRITES:
            self._check_lease()
        if action.kind is ActionKind.CREATE_ENDPOINT:
            return self._retry(lambda: self.provider.create_endpoint(self.endpoint), "create"), None
        if action.kind is ActionKind.CREATE_DEPLOYMENT and action.deployment:
            request = action.deployment
            self._retry(
                lambda: self.provider.create_deployment(self.endpoint, request), "create deployment"
            )
            waited = self._retry(
                lambda: self.provider.wait_for_deployment(
                    self.endpoint, request.name, self.deployment_timeout_s
                ),
                "wait for deployment",
            )
            return waited, None
        if action.kind is ActionKind.SMOKE_TEST:
            return live, self._smoke_test(action.subject)
        if action.kind is ActionKind.DELETE_DEPLOYMENT:
            fresh = self.read()
            if fresh.traffic.get(action.subject) or fresh.mirror.get(action.subject):
                raise PermanentError(
                    f"endpoint {self.endpoint}: {action.subject} still carries traffic on a fresh "
                    "read; it is not deleted",
                    endpoint=self.endpoint,
                    operation="delete deployment",
                )
            self._retry(
                lambda: self.provider.delete_deployment(self.endpoint, action.subject),
                "delete deployment",
            )
            return self.read(), None
        if action.kind is ActionKind.UPDATE_ENDPOINT and action.state and action.traffic:
            after_state = replace(action.state[1], lease=self._renewed_lease())
            write = EndpointWrite(
                traffic=dict(action.traffic[1]),
                mirror=dict(action.mirror[1]) if action.mirror else {},
                tags=encode(after_state),
            )
            return self._write(write, live, action.reason), None
        raise PermanentError(f"cannot perform {action.kind.value}", endpoint=self.endpoint)

    def _check_lease(self) -> None:
        """A run that stalled past its lease's expiry (a paused runner, a long wait) reads the
        endpoint again before its next write, and stops if another run took the lease since:
        without compare-and-swap (Azure) nothing else would keep it from writing."""
        if self._lease is None or self.clock.now() < self._lease.until:
            return
        expired = self._lease.until
        current = decode(self.read().tags).lease
        if current is not None and current.holder == self.holder:
            return  # nobody took it; the next endpoint write renews it
        self._lease = None  # not ours to release any more
        raise LeaseLostError(
            f"endpoint {self.endpoint}: this run's lease expired at {format_time(expired)} while "
            "it was stalled, and "
            + (f"{current.holder} holds it now" if current else "another run has taken it since")
            + "; nothing more was written. Run again to continue from the endpoint as it is"
        )

    def _renewed_lease(self) -> Lease | None:
        if self._lease:
            self._lease = Lease(self.holder, self.clock.now() + LEASE_TTL)
        return self._lease

    def _retry(self, operation: Callable[[], T], what: str) -> T:
        return with_retries(operation, self.clock, f"endpoint {self.endpoint}: {what}")

    def _write(self, write: EndpointWrite, live: LiveEndpoint, why: str) -> LiveEndpoint:
        """One verified write: traffic, mirror and tags together, based on `live`."""
        attempt = 0
        while True:
            attempt += 1
            try:
                after = self.provider.update_endpoint(
                    self.endpoint, write, expected_revision=live.revision
                )
                break
            except ConflictError:
                # Retrying a write whose answer was lost, after a read that missed it: the
                # first attempt may be what moved the revision.
                fresh = self.read() if attempt > 1 else None
                if fresh is not None and _matches(fresh, write):
                    after = fresh
                    break
                raise
            except TransientError as error:
                # The write may have landed with its response lost: look before writing again.
                if attempt >= RETRY_ATTEMPTS:
                    raise
                self.clock.sleep(
                    min(RETRY_CAP_S, max(float(2 ** (attempt - 1)), error.retry_after))
                )
                fresh = self.read()
                if fresh.revision != live.revision:
                    if _matches(fresh, write):
                        after = fresh
                        break
                    raise ConflictError(
                        f"endpoint {self.endpoint} changed while writing ({why}); nothing more "
                        "was written",
                        endpoint=self.endpoint,
                        operation="update endpoint",
                    ) from error
        if not _matches(after, write):
            raise PermanentError(
                f"endpoint {self.endpoint}: the provider did not keep the write ({why}): sent "
                f"traffic {write.traffic}, mirror {write.mirror}; found {after.live_traffic()}, "
                f"{after.live_mirror()}",
                endpoint=self.endpoint,
                operation="update endpoint",
            )
        return after

    def _smoke_test(self, deployment: str) -> SmokeOutcome:
        spec = self.desired.rollout.spec
        path = Path(self.desired.smoke_request)
        try:
            body = path.read_bytes()
        except OSError as error:
            return SmokeOutcome(
                deployment, False, f"cannot read the sample request {path}: {error}"
            )
        result = self._retry(
            lambda: self.provider.invoke(self.endpoint, deployment, body), "smoke test"
        )
        expected = spec.smoke_test.expect_status
        if result.status != expected:
            return SmokeOutcome(deployment, False, f"status {result.status}, expected {expected}")
        problem = check_response_shape(result.body, Path(self.desired.deployment.model_dir))
        if problem:
            return SmokeOutcome(deployment, False, problem)
        return SmokeOutcome(
            deployment, True, f"status {result.status} in {result.latency_ms:.0f} ms"
        )


def holder_process_gone(holder: str, host: str | None = None) -> bool:
    """True when `holder` (`user@host:pid`) names a process of this host that has ended."""
    where, _, pid = holder.rpartition(":")
    holder_host = where.partition("@")[2]
    if not pid.isdigit() or holder_host != (host or socket.gethostname()):
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False  # it exists but belongs to someone else
    return False


def deployable_problem(provider: Provider, desired: Desired, live: LiveEndpoint) -> str:
    """What stops the manifest's deployment from being created, when it would have to be.
    Providers that can tell before writing (the local registry) offer `check_deployable`."""
    check = getattr(provider, "check_deployable", None)
    if check is None or desired.name in live.deployments:
        return ""
    return check(desired.deployment)


def check_response_shape(body: bytes, model_dir: Path) -> str:
    """'' when `body` is JSON of the model's response shape (`response-schema.json`)."""
    try:
        document = json.loads(body)
    except ValueError:
        return "the response is not JSON"
    schema_file = model_dir / "response-schema.json"
    if not schema_file.is_file():
        return ""
    import jsonschema  # imported here: only smoke tests need it

    try:
        jsonschema.validate(document, json.loads(schema_file.read_text()))
    except jsonschema.ValidationError as error:
        where = "/".join(str(p) for p in error.absolute_path) or "the top level"
        return f"the response does not have the model's shape at {where}: {error.message}"
    return ""


class LeaseLostError(SafeRolloutError):
    """This run's lease expired while it stalled and another run took the endpoint over."""


_WRITES = (ActionKind.UPDATE_ENDPOINT, ActionKind.CREATE_DEPLOYMENT, ActionKind.DELETE_DEPLOYMENT)


class _EndpointMoved(Exception):
    """The endpoint changed between the read a plan was made from and the lease write, and no
    other run holds it: the pass decides again on `live`."""

    def __init__(self, live: LiveEndpoint):
        super().__init__("the endpoint changed since it was read")
        self.live = live


def _window_key(live: LiveEndpoint) -> tuple[object, ...]:
    state = decode(live.tags)
    return (state.candidate, state.step, state.step_started)


def _lease_tag(lease: Lease) -> dict[str, str]:
    return {f"{STATE_TAG_PREFIX}lease": f"{lease.holder}@{format_time(lease.until)}"}


def _matches(live: LiveEndpoint, write: EndpointWrite) -> bool:
    own = {k: v for k, v in live.tags.items() if k.startswith(STATE_TAG_PREFIX)}
    return (
        live.live_traffic() == {k: v for k, v in write.traffic.items() if v}
        and live.live_mirror() == {k: v for k, v in write.mirror.items() if v}
        and own == write.tags
    )


def state_of(live: LiveEndpoint) -> RolloutState:
    return decode(live.tags)
