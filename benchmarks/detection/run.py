"""Run every policy on every case over the same simulated requests, and judge the targets."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import numpy as np

from benchmarks.detection import policies
from benchmarks.detection.policies import Outcome
from benchmarks.detection.traffic import CASES, Setting, Traffic, draw_traffic
from benchmarks.detection.wald import Sprt

DEFAULT_RUNS = 2000
DEFAULT_SEED = 20260506
CHUNK = 250  # runs drawn and simulated at once; bounds memory to a few hundred MB

Policy = Callable[[Traffic, float, Setting], Outcome]

SEQUENTIAL_PER_REQUEST = "sequential gate, per request"
SEQUENTIAL_PER_MINUTE = "sequential gate, per minute"
FIXED_WINDOWS = "fixed windows"
POLICIES: dict[str, Policy] = {
    SEQUENTIAL_PER_REQUEST: partial(policies.sequential, per_request=True),
    SEQUENTIAL_PER_MINUTE: partial(policies.sequential, per_request=False),
    FIXED_WINDOWS: policies.fixed_windows,
    "Flagger-like": policies.flagger_like,
    "Argo-like": policies.argo_like,
    "Wald SPRT, per request": partial(policies.wald, per_request=True),
    "Wald SPRT, per minute": partial(policies.wald, per_request=False),
}
BAD_CASES = ("4x regression", "10x regression")


@dataclass(frozen=True)
class Summary:
    runs: int
    rolled_back: float  # share of runs
    promoted: float
    exposure_mean: float | None  # candidate requests before rollback, over rolled-back runs
    exposure_p95: float | None
    promotion_mean: float | None  # minutes to full promotion, over promoted runs
    promotion_p95: float | None
    promotion_max: float | None

    @classmethod
    def of(cls, outcome: Outcome) -> Summary:
        back = outcome.exposure[outcome.rolled_back]
        promoted = outcome.minutes[outcome.promoted]
        return cls(
            runs=len(outcome.rolled_back),
            rolled_back=float(outcome.rolled_back.mean()),
            promoted=float(outcome.promoted.mean()),
            exposure_mean=float(back.mean()) if len(back) else None,
            exposure_p95=float(np.percentile(back, 95)) if len(back) else None,
            promotion_mean=float(promoted.mean()) if len(promoted) else None,
            promotion_p95=float(np.percentile(promoted, 95)) if len(promoted) else None,
            promotion_max=float(promoted.max()) if len(promoted) else None,
        )


@dataclass(frozen=True)
class Target:
    claim: str
    figure: str
    holds: bool


@dataclass
class Results:
    setting: Setting
    summaries: dict[tuple[str, str], Summary] = field(default_factory=dict)  # (case, policy)

    def wald_test(self) -> Sprt:
        ratio = self.setting.effect.ratio or 2.0
        p0 = self.setting.stable_error_rate
        return Sprt(p0, p0 * ratio, self.setting.alpha, self.setting.beta)

    def wald_number(self, case: str) -> float:
        """Wald's expected sample number at the case's error rate (requests)."""
        return self.wald_test().expected_sample_number(CASES[case])

    def wald_minute_budget(self, case: str) -> float:
        """Wald's number plus two minutes of candidate traffic: the candidate's expected
        requests two minutes after the schedule reaches Wald's number."""
        return expected_requests(
            self.setting, minutes_to_serve(self.setting, self.wald_number(case)) + 2
        )

    def targets(self) -> list[Target]:
        s = self.summaries
        found = []
        for policy in (SEQUENTIAL_PER_REQUEST, SEQUENTIAL_PER_MINUTE):
            good = s[("good", policy)]
            found.append(
                Target(
                    f"good versions rolled back in at most {self.setting.alpha:.0%} of runs "
                    f"({policy})",
                    f"{good.rolled_back:.2%}",
                    good.rolled_back <= self.setting.alpha,
                )
            )
        for case in BAD_CASES:
            wald = self.wald_number(case)
            mean = s[(case, SEQUENTIAL_PER_REQUEST)].exposure_mean
            found.append(
                Target(
                    f"{case}: mean exposure within 1.5x Wald's number, per request",
                    f"{_num(mean)} <= 1.5 x {wald:,.0f} = {1.5 * wald:,.0f}",
                    mean is not None and mean <= 1.5 * wald,
                )
            )
            budget = self.wald_minute_budget(case)
            mean = s[(case, SEQUENTIAL_PER_MINUTE)].exposure_mean
            found.append(
                Target(
                    f"{case}: mean exposure at most Wald's number plus two minutes of "
                    "candidate traffic, per minute",
                    f"{_num(mean)} <= {budget:,.0f}",
                    mean is not None and mean <= budget,
                )
            )
        # Fixed windows promote only once every window has ended: never before the schedule's
        # full length, and in this setting almost never at all (see the table).
        fixed = len(self.setting.shares) * self.setting.bake_minutes
        for policy in (SEQUENTIAL_PER_REQUEST, SEQUENTIAL_PER_MINUTE):
            ours = s[("good", policy)]
            latest = ours.promotion_max
            found.append(
                Target(
                    f"good versions promoted no later than with fixed windows ({policy})",
                    f"latest {_num(latest, 1)} min, mean {_num(ours.promotion_mean, 1)} min; "
                    f"fixed windows {fixed} min at the earliest",
                    latest is not None and latest <= fixed,
                )
            )
        return found

    def targets_hold(self) -> bool:
        return all(t.holds for t in self.targets())


def _num(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def expected_requests(setting: Setting, minutes: float) -> float:
    """The candidate's expected requests after `minutes` of the schedule (5-minute steps)."""
    total, left = 0.0, minutes
    for step, _ in enumerate(setting.shares):
        spent = min(left, setting.bake_minutes if step < len(setting.shares) - 1 else math.inf)
        total += spent * setting.candidate_per_minute(step)
        left -= spent
        if left <= 0:
            break
    return total


def minutes_to_serve(setting: Setting, requests: float) -> float:
    """When the schedule has given the candidate `requests` expected requests."""
    minutes = 0.0
    for step, _ in enumerate(setting.shares):
        rate = setting.candidate_per_minute(step)
        last = step == len(setting.shares) - 1
        room = math.inf if last else setting.bake_minutes * rate
        if requests <= room:
            return minutes + requests / rate
        requests -= room
        minutes += setting.bake_minutes
    return minutes


def run_benchmark(
    setting: Setting,
    *,
    runs: int = DEFAULT_RUNS,
    seed: int = DEFAULT_SEED,
    progress: Callable[[str], None] = lambda _: None,
) -> Results:
    """Every case and policy over `runs` runs; chunk k draws its requests from (seed, k)."""
    outcomes: dict[tuple[str, str], list[Outcome]] = {}
    chunks = [min(CHUNK, runs - start) for start in range(0, runs, CHUNK)]
    for number, size in enumerate(chunks):
        traffic = draw_traffic(np.random.default_rng([seed, number]), size, setting)
        for case, rate in CASES.items():
            for name, policy in POLICIES.items():
                outcomes.setdefault((case, name), []).append(policy(traffic, rate, setting))
        progress(f"  {sum(chunks[: number + 1]):,} of {runs:,} runs per case")
    results = Results(setting)
    for key, parts in outcomes.items():
        results.summaries[key] = Summary.of(Outcome.concat(parts))
    return results
