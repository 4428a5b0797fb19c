"""The policies compared, each run minute by minute over the same requests.

- `sequential`: saferollout's sequential error gate (`engine.sequential`, the statistics the
  engine runs), as `decide_step` applies it: roll back as soon as the evidence of a regression
  reaches 1/alpha; end a step at its bake when each side has `min_requests` in the step; with
  `promote_early`, end it at the first minute the gate has concluded passed. Evaluated after
  every request (per-request sources) or at each minute's end (per-minute metrics).
- `fixed_windows`: per-minute non-2xx count at most 1 at 10 %, 0 at 50 % and 100 %, judged at
  the end of each 5-minute window: any minute above its bound rolls the version back.
- `flagger_like`: a check each minute, candidate error rate at most 1 %; a failed check does
  not count towards the step and adds to a rollout-wide count that rolls back at 5.
- `argo_like`: 5 one-minute measurements per step, error rate at most 1 %, failure limit 0:
  the first failed measurement rolls back.
- `wald`: Wald's SPRT on the candidate's requests with stable's rate known, designed at
  min_effect with alpha and beta; steps advance on the bakes alone; it rolls back when it
  rejects and stops watching when it accepts.

An `Outcome` records, per run, whether the version was rolled back or promoted, how many
requests the candidate served until then, and when.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from benchmarks.detection.traffic import Setting, Traffic
from benchmarks.detection.wald import Sprt
from engine.sequential import log_evidence_of_no_regression, log_evidence_of_regression

REFERENCE_MAX_ERROR_RATE = 0.01  # the Flagger-like and Argo-like checks
FLAGGER_THRESHOLD = 5  # failed checks before rollback
FIXED_WINDOW_BOUNDS = (1, 0, 0)  # per-minute non-2xx count allowed at 10 %, 50 %, 100 %


@dataclass
class Outcome:
    rolled_back: np.ndarray  # bool per run
    promoted: np.ndarray  # bool per run
    exposure: np.ndarray  # candidate requests served until rollback or promotion
    minutes: np.ndarray  # minutes until rollback or promotion; nan while neither

    @classmethod
    def concat(cls, parts: list[Outcome]) -> Outcome:
        return cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in cls.__annotations__))


class _Runs:
    """Book-keeping shared by the policies: where each run is and what it has served."""

    def __init__(self, traffic: Traffic, setting: Setting):
        runs = traffic.runs
        self.setting = setting
        self.step = np.zeros(runs, dtype=int)
        self.in_step = np.zeros(runs, dtype=int)  # minutes (or passed checks) in the step
        self.done = np.zeros(runs, dtype=bool)
        self.rolled_back = np.zeros(runs, dtype=bool)
        self.promoted = np.zeros(runs, dtype=bool)
        self.exposure = np.zeros(runs, dtype=np.int64)
        self.minutes = np.full(runs, np.nan)

    @property
    def share(self) -> np.ndarray:
        shares = np.asarray(self.setting.shares)
        return np.where(self.done, 0.0, shares[np.minimum(self.step, len(shares) - 1)])

    def roll_back(self, which: np.ndarray, served: np.ndarray, at_minute: np.ndarray) -> None:
        which = which & ~self.done
        self.exposure[which] += served[which]
        self.minutes[which] = at_minute[which]
        self.rolled_back |= which
        self.done |= which

    def serve(self, which: np.ndarray, served: np.ndarray) -> None:
        self.exposure[which & ~self.done] += served[which & ~self.done]

    def advance(self, which: np.ndarray, minute: int) -> None:
        which = which & ~self.done
        self.step[which] += 1
        self.in_step[which] = 0
        last = which & (self.step >= len(self.setting.shares))
        self.promoted |= last
        self.minutes[last] = minute + 1
        self.done |= last

    def outcome(self) -> Outcome:
        return Outcome(self.rolled_back, self.promoted, self.exposure, self.minutes)


def sequential(
    traffic: Traffic,
    candidate_rate: float,
    setting: Setting,
    *,
    per_request: bool,
    promote_early: bool = True,
) -> Outcome:
    runs = _Runs(traffic, setting)
    steps = len(setting.shares)
    shares = np.asarray(setting.shares)
    threshold = np.log(1 / setting.alpha)
    effect = setting.effect
    totals = {k: np.zeros((traffic.runs, steps)) for k in ("cr", "ce", "sr", "se")}
    everyone = np.arange(traffic.runs)

    for minute in range(traffic.minutes):
        to_candidate, failed, present = traffic.minute(
            minute, runs.share, candidate_rate, setting.stable_error_rate
        )
        to_stable = present & ~to_candidate
        step = np.minimum(runs.step, steps - 1)
        column = np.eye(steps)[step]  # (runs, steps): this minute's counts go to the step
        served = to_candidate.sum(axis=1)

        if per_request:
            # The evidence after every request of the minute, from the rollout's counts so far.
            candidate_errors = np.cumsum(to_candidate & failed, axis=1)
            stable_errors = np.cumsum(to_stable & failed, axis=1)
            xc = totals["ce"][:, None, :] + candidate_errors[:, :, None] * column[:, None, :]
            xs = totals["se"][:, None, :] + stable_errors[:, :, None] * column[:, None, :]
            evidence = log_evidence_of_regression(xc, xs, shares, effect)
            crossed = (evidence >= threshold) & present
            hit = crossed.any(axis=1) & ~runs.done
            first = np.argmax(crossed, axis=1)
            served_until = np.cumsum(to_candidate, axis=1)[everyone, first]
            runs.roll_back(hit, served_until, minute + (first + 1) / present.sum(axis=1))

        totals["cr"] += column * served[:, None]
        totals["ce"] += column * (to_candidate & failed).sum(axis=1)[:, None]
        totals["sr"] += column * to_stable.sum(axis=1)[:, None]
        totals["se"] += column * (to_stable & failed).sum(axis=1)[:, None]
        active = ~runs.done
        runs.serve(active, served)

        if not per_request:
            evidence = log_evidence_of_regression(totals["ce"], totals["se"], shares, effect)
            runs.roll_back(
                (evidence >= threshold) & active, 0 * served, np.full(len(served), minute + 1.0)
            )
            active = ~runs.done

        runs.in_step[active] += 1
        row = np.arange(traffic.runs)
        enough = totals["cr"][row, step] >= setting.min_requests
        enough &= (totals["sr"][row, step] >= setting.min_requests) | (shares[step] >= 1)
        finish = active & enough & (runs.in_step >= setting.bake_minutes)
        if promote_early:
            concluded = log_evidence_of_no_regression(
                totals["cr"], totals["ce"], totals["sr"], totals["se"], shares, effect
            )
            finish |= active & enough & (concluded >= threshold)
        runs.advance(finish, minute)
    return runs.outcome()


def fixed_windows(traffic: Traffic, candidate_rate: float, setting: Setting) -> Outcome:
    runs = _Runs(traffic, setting)
    bounds = np.asarray(FIXED_WINDOW_BOUNDS)
    violated = np.zeros(traffic.runs, dtype=bool)
    for minute in range(traffic.minutes):
        step = np.minimum(runs.step, len(bounds) - 1)
        to_candidate, failed, _ = traffic.minute(
            minute, runs.share, candidate_rate, setting.stable_error_rate
        )
        active = ~runs.done
        runs.serve(active, to_candidate.sum(axis=1))
        violated |= active & ((to_candidate & failed).sum(axis=1) > bounds[step])
        runs.in_step[active] += 1
        judged = active & (runs.in_step >= setting.bake_minutes)
        zero = np.zeros(traffic.runs, dtype=np.int64)
        runs.roll_back(judged & violated, zero, np.full(traffic.runs, minute + 1.0))
        runs.advance(judged & ~violated, minute)
        violated &= ~judged
    return runs.outcome()


def _minute_checks(
    traffic: Traffic, candidate_rate: float, setting: Setting, *, failure_limit: int
) -> Outcome:
    """A check of the candidate's error rate each minute; a step needs `bake_minutes` passed
    checks; the run rolls back once its failed checks exceed `failure_limit`."""
    runs = _Runs(traffic, setting)
    failures = np.zeros(traffic.runs, dtype=int)
    zero = np.zeros(traffic.runs, dtype=np.int64)
    for minute in range(traffic.minutes):
        to_candidate, failed, _ = traffic.minute(
            minute, runs.share, candidate_rate, setting.stable_error_rate
        )
        active = ~runs.done
        requests = to_candidate.sum(axis=1)
        runs.serve(active, requests)
        rate = (to_candidate & failed).sum(axis=1) / np.maximum(requests, 1)
        bad = active & ((rate > REFERENCE_MAX_ERROR_RATE) | (requests == 0))
        failures += bad
        runs.roll_back(bad & (failures > failure_limit), zero, np.full(traffic.runs, minute + 1.0))
        passed = active & ~bad
        runs.in_step[passed] += 1
        runs.advance(passed & (runs.in_step >= setting.bake_minutes), minute)
    return runs.outcome()


def flagger_like(traffic: Traffic, candidate_rate: float, setting: Setting) -> Outcome:
    return _minute_checks(traffic, candidate_rate, setting, failure_limit=FLAGGER_THRESHOLD - 1)


def argo_like(traffic: Traffic, candidate_rate: float, setting: Setting) -> Outcome:
    return _minute_checks(traffic, candidate_rate, setting, failure_limit=0)


def wald(
    traffic: Traffic, candidate_rate: float, setting: Setting, *, per_request: bool
) -> Outcome:
    test = Sprt(
        setting.stable_error_rate,
        setting.stable_error_rate * (setting.effect.ratio or 2.0),
        setting.alpha,
        setting.beta,
    )
    runs = _Runs(traffic, setting)
    llr = np.zeros(traffic.runs)
    watching = np.ones(traffic.runs, dtype=bool)
    everyone = np.arange(traffic.runs)
    for minute in range(traffic.minutes):
        to_candidate, failed, present = traffic.minute(
            minute, runs.share, candidate_rate, setting.stable_error_rate
        )
        active = ~runs.done
        step_llr = np.where(to_candidate, np.where(failed, test.on_failure, test.on_success), 0.0)
        if per_request:
            path = llr[:, None] + np.cumsum(step_llr, axis=1)
            rejected = (path >= test.upper) & present
            accepted = (path <= test.lower) & present
            first_reject = np.where(rejected.any(1), np.argmax(rejected, axis=1), np.inf)
            first_accept = np.where(accepted.any(1), np.argmax(accepted, axis=1), np.inf)
            hit = active & watching & (first_reject < first_accept)
            index = np.where(hit, first_reject, 0).astype(int)
            served = np.cumsum(to_candidate, axis=1)[everyone, index]
            runs.roll_back(hit, served, minute + (index + 1) / present.sum(axis=1))
            watching &= ~(first_accept < first_reject)
            llr += step_llr.sum(axis=1)
            active = ~runs.done
            runs.serve(active, to_candidate.sum(axis=1))
        else:
            runs.serve(active, to_candidate.sum(axis=1))
            llr += step_llr.sum(axis=1)
            zero = np.zeros(traffic.runs, dtype=np.int64)
            runs.roll_back(
                active & watching & (llr >= test.upper), zero, np.full(traffic.runs, minute + 1.0)
            )
            watching &= ~(llr <= test.lower)
            active = ~runs.done
        runs.in_step[active] += 1
        runs.advance(active & (runs.in_step >= setting.bake_minutes), minute)
    return runs.outcome()
