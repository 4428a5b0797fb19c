"""Anytime-valid statistics for the gates that compare the candidate with stable.

Pure functions over counts and samples; `engine.gates` turns their answers into verdicts and the
detection benchmark runs the same functions on simulated traffic. Each test here may be
evaluated after every request, or at every reconcile pass, without raising its error rate: its
statistic is an e-process (a nonnegative process whose expectation stays at most 1 under the
hypothesis it tests), so by Ville's inequality it ever reaches 1/alpha with probability at most
alpha, however often it is looked at.

Errors, candidate against stable
--------------------------------
A request goes to the candidate with the step's share `q` (the routing probability), otherwise
to stable. For one request, bet on "it fails on the candidate" against "it fails on stable":
with alternative ratio `rho` of the candidate's error rate to stable's, the wealth factor is
`theta/q` when the request fails on the candidate, `(1-theta)/(1-q)` when it fails on stable and
1 when it succeeds, where `theta = q*rho / (q*rho + 1 - q)` is the share of failures the candidate
would take. Its expectation is `1 + (theta - q) * (p_candidate - p_stable)`: at most 1 whenever
the candidate fails no more often than stable at that moment, whatever stable's error rate is and
however it drifts. The product over requests therefore depends only on each step's error counts,
and a mixture over `rho` (tuned by `min_effect`) is recomputed from those counts at every pass:
nothing has to be remembered between passes, and the false-rollback rate alpha is spent once
over the whole rollout. A step that gives stable no traffic (100 %) carries no comparison.

The same bets against `rho = min_effect` (alternatives below it) show that the candidate is not
`min_effect` worse, which lets a step end early. For an additive `min_effect` (`+0.01`) that
conclusion uses a bet on every request of a traffic step: the wealth factor `1 - lam*(Y - delta)`
with `Y = 1/q` for a candidate failure, `-1/(1-q)` for a stable failure and 0 otherwise, whose
expectation is at most 1 whenever the candidate's error rate exceeds stable's by `delta` or more.

Latency percentiles
-------------------
For a percentile `tau`, whether a request's latency is at most the true percentile is a coin
with probability `tau`; the same kind of mixture bet on that coin gives confidence sequences for
the percentile: bounds that hold at every sample size at once (order statistics chosen by the
bet). Comparing the candidate's lower bound with stable's upper bound bounds the ratio of their
percentiles. It assumes the latencies within a step window are independent draws.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from engine.spec import MinEffect

# Mixture grids. Their shape trades the evidence needed at the smallest effect against the reach
# to large ones; `benchmarks/detection` measures the result. Weights fall as 1/ratio: large
# regressions pile up evidence fast whatever their weight, small ones need it.
_REGRESSION_SPAN = 16.0  # alternatives from min_effect to 16x min_effect
_REGRESSION_POINTS = 9  # ... spaced by a factor of 2**0.5
_NO_REGRESSION_POINTS = 6  # alternatives from min_effect/sqrt(2) down to min_effect/8
# An additive min_effect is spread over the ratios it means for stable error rates from 0.1 %
# to 50 %, since stable's rate is not known before the rollout.
_ADDITIVE_BASE_RATES = (0.001, 0.5)
_ADDITIVE_BETS = 8  # fractions 1/2, 1/4, ... 1/256 of the largest safe bet
_QUANTILE_POINTS = 20  # deviations from the percentile's coin: 2^-0.5 .. 2^-10 of its room


@dataclass(frozen=True)
class StepCounts:
    """One step's requests and failures for each side, and the candidate's routing share.

    `share` is the probability that a request execution is the candidate's: the traffic weight,
    or for a mirror step mirror / (100 + mirror). `mirrored` marks a mirror step, where each
    request runs on stable and a copy may run on the candidate.
    """

    share: float
    candidate_requests: int
    candidate_errors: int
    stable_requests: int
    stable_errors: int
    mirrored: bool = False

    @property
    def compares(self) -> bool:
        """Whether the step says anything about candidate against stable."""
        return 0.0 < self.share < 1.0


def routing_share(percent: int, mirrored: bool) -> float:
    """The candidate's share of request executions at a step's traffic or mirror percent."""
    if mirrored:
        return percent / (100 + percent)
    return percent / 100


def _logsumexp(values: np.ndarray, log_weights: np.ndarray) -> np.ndarray:
    """log(sum_j w_j exp(v_j)) over the last axis, without overflow."""
    shifted = values + log_weights
    top = np.max(shifted, axis=-1, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    with np.errstate(divide="ignore"):
        return np.log(np.sum(np.exp(shifted - top), axis=-1)) + top[..., 0]


def _failure_share(rho: np.ndarray, share: np.ndarray) -> np.ndarray:
    """theta: the share of failures the candidate takes at ratio rho and routing share q."""
    return share * rho / (share * rho + 1.0 - share)


def _bet_terms(
    alternatives: np.ndarray, null: np.ndarray | float, shares: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per-failure log wealth factors (candidate failure, stable failure), shape (steps, grid)."""
    q = shares[:, None]
    comparable = (q > 0) & (q < 1)
    q = np.where(comparable, q, 0.5)  # placeholders; these rows are zeroed below
    theta = _failure_share(alternatives[None, :], q)
    base = _failure_share(np.asarray(null, dtype=float)[None, ...], q)
    on_candidate = np.where(comparable, np.log(theta) - np.log(base), 0.0)
    on_stable = np.where(comparable, np.log1p(-theta) - np.log1p(-base), 0.0)
    return on_candidate, on_stable


def regression_grid(effect: MinEffect) -> tuple[np.ndarray, np.ndarray]:
    """The ratios the regression test bets on, and their log weights."""
    if effect.ratio is not None:
        steps = np.arange(_REGRESSION_POINTS) / (_REGRESSION_POINTS - 1)
        rhos = effect.ratio * _REGRESSION_SPAN**steps
    else:
        low, high = (1 + (effect.increase or 0) / rate for rate in reversed(_ADDITIVE_BASE_RATES))
        count = max(2, math.ceil(2 * math.log2((high - 1) / (low - 1))) + 1)
        rhos = 1 + (low - 1) * ((high - 1) / (low - 1)) ** (np.arange(count) / (count - 1))
    weights = 1 / rhos
    return rhos, np.log(weights / weights.sum())


def log_evidence_of_regression(
    candidate_errors: np.ndarray,
    stable_errors: np.ndarray,
    shares: Sequence[float] | np.ndarray,
    effect: MinEffect,
) -> np.ndarray:
    """log of the e-value against "the candidate fails no more often than stable".

    `candidate_errors` and `stable_errors` hold each step's failure counts on their last axis
    (any leading axes are evaluated at once); `shares` holds each step's routing share. Under
    that hypothesis, and with requests routed at random with those shares, the value is an
    e-process: P(it ever reaches log(1/alpha)) <= alpha over the whole rollout.
    """
    rhos, log_weights = regression_grid(effect)
    on_candidate, on_stable = _bet_terms(rhos, 1.0, np.asarray(shares, dtype=float))
    log_wealth = np.asarray(candidate_errors, float) @ on_candidate
    log_wealth = log_wealth + np.asarray(stable_errors, float) @ on_stable
    return _logsumexp(log_wealth, log_weights)


def log_evidence_of_no_regression(
    candidate_requests: np.ndarray,
    candidate_errors: np.ndarray,
    stable_requests: np.ndarray,
    stable_errors: np.ndarray,
    shares: Sequence[float] | np.ndarray,
    effect: MinEffect,
    mirrored: Sequence[bool] | np.ndarray | None = None,
) -> np.ndarray:
    """log of the e-value against "the candidate is at least `min_effect` worse than stable".

    Counts hold each step on their last axis, as for `log_evidence_of_regression`. Reaching
    log(1/alpha) concludes, with error probability at most alpha over the rollout, that the
    candidate is not min_effect worse. For a ratio the bets use the failures of every step
    with a comparison; for an increase, every request of the traffic steps (a mirror step's
    failures cannot be paired with their requests from counts, so it is left out).
    """
    q = np.asarray(shares, dtype=float)
    candidate_errors = np.asarray(candidate_errors, dtype=float)
    stable_errors = np.asarray(stable_errors, dtype=float)
    if effect.ratio is not None:
        exponents = np.arange(1, _NO_REGRESSION_POINTS + 1) / 2
        alternatives = effect.ratio * 2.0**-exponents
        on_candidate, on_stable = _bet_terms(alternatives, effect.ratio, q)
        log_wealth = candidate_errors @ on_candidate + stable_errors @ on_stable
        weights = np.full(len(alternatives), -math.log(len(alternatives)))
        return _logsumexp(log_wealth, weights)

    delta = effect.increase or 0.0
    fractions = 2.0 ** -np.arange(1, _ADDITIVE_BETS + 1)
    paired = (q > 0) & (q < 1)
    if mirrored is not None:
        paired &= ~np.asarray(mirrored, dtype=bool)
    q_safe = np.where(paired, q, 0.5)[:, None]
    bets = fractions[None, :] * q_safe / (1 - q_safe * delta)  # keeps every factor above 0
    on_candidate = np.where(paired[:, None], np.log1p(-bets * (1 / q_safe - delta)), 0.0)
    on_stable = np.where(paired[:, None], np.log1p(bets * (1 / (1 - q_safe) + delta)), 0.0)
    on_success = np.where(paired[:, None], np.log1p(bets * delta), 0.0)
    successes = np.asarray(candidate_requests, float) + np.asarray(stable_requests, float)
    successes = np.maximum(successes - candidate_errors - stable_errors, 0.0)
    log_wealth = candidate_errors @ on_candidate + stable_errors @ on_stable
    log_wealth = log_wealth + successes @ on_success
    weights = np.full(len(fractions), -math.log(len(fractions)))
    return _logsumexp(log_wealth, weights)


@dataclass(frozen=True)
class ErrorEvidence:
    """What the error test says after the steps so far."""

    log_regression: float  # log e-value against "no worse than stable"
    log_no_regression: float  # log e-value against "at least min_effect worse"
    candidate_requests: int
    candidate_errors: int
    stable_requests: int
    stable_errors: int

    @property
    def ratio(self) -> float | None:
        """The candidate's error rate over stable's, on the steps that compare; None if unknown."""
        if not self.candidate_requests or not self.stable_requests:
            return None
        candidate = self.candidate_errors / self.candidate_requests
        stable = self.stable_errors / self.stable_requests
        if stable == 0:
            return 1.0 if candidate == 0 else math.inf
        return candidate / stable

    def regressed(self, alpha: float) -> bool:
        return self.log_regression >= math.log(1 / alpha)

    def ruled_out(self, alpha: float) -> bool:
        return self.log_no_regression >= math.log(1 / alpha)


def error_evidence(steps: Sequence[StepCounts], effect: MinEffect) -> ErrorEvidence:
    """Both error tests over the rollout's steps so far (the current step last)."""
    comparing = [s for s in steps if s.compares]
    if comparing:
        log_regression = float(
            log_evidence_of_regression(
                np.array([s.candidate_errors for s in comparing]),
                np.array([s.stable_errors for s in comparing]),
                [s.share for s in comparing],
                effect,
            )
        )
        log_no_regression = float(
            log_evidence_of_no_regression(
                np.array([s.candidate_requests for s in comparing]),
                np.array([s.candidate_errors for s in comparing]),
                np.array([s.stable_requests for s in comparing]),
                np.array([s.stable_errors for s in comparing]),
                [s.share for s in comparing],
                effect,
                [s.mirrored for s in comparing],
            )
        )
    else:
        log_regression = log_no_regression = 0.0
    return ErrorEvidence(
        log_regression=log_regression,
        log_no_regression=log_no_regression,
        candidate_requests=sum(s.candidate_requests for s in comparing),
        candidate_errors=sum(s.candidate_errors for s in comparing),
        stable_requests=sum(s.stable_requests for s in comparing),
        stable_errors=sum(s.stable_errors for s in comparing),
    )


def share_is_plausible(step: StepCounts, slack: float = 0.05) -> bool:
    """False when the candidate served clearly more of the step than its routing share.

    The error test assumes requests reach the candidate with the step's share; a candidate
    that takes more (misrouted traffic, a miscounted stable) would look worse than it is.
    Fewer is harmless: it only makes the test slower.
    """
    total = step.candidate_requests + step.stable_requests
    if not step.compares or total == 0:
        return True
    spread = 4 * math.sqrt(step.share * (1 - step.share) / total)
    return step.candidate_requests / total <= step.share + slack + spread


# ---------------------------------------------------------------------------------------------
# Percentiles


def _quantile_log_evidence(below: np.ndarray, n: int, tau: float, upward: bool) -> np.ndarray:
    """log e-values, for each count `below` of samples at or under a value, against the coin
    probability being >= tau (upward=False) or <= tau (upward=True)."""
    exponents = np.arange(1, _QUANTILE_POINTS + 1) / 2
    room = (1 - tau) if upward else tau
    alternatives = tau + (room if upward else -room) * 2.0**-exponents
    k = below.astype(float)[:, None]
    with np.errstate(divide="ignore"):
        log_wealth = k * (np.log(alternatives) - math.log(tau))
        log_wealth += (n - k) * (np.log1p(-alternatives) - math.log1p(-tau))
    weights = np.full(len(alternatives), -math.log(len(alternatives)))
    return _logsumexp(log_wealth, weights)


def percentile_bounds(
    values: Sequence[float] | np.ndarray, percentile: float, alpha: float
) -> tuple[float | None, float | None]:
    """Confidence-sequence bounds (lower, upper) for the population's `percentile`.

    Each bound is wrong with probability at most `alpha`, at every sample size at once, for
    independent draws: the samples may be re-examined as they grow. A side the data cannot
    bound yet is None.
    """
    ordered = np.sort(np.asarray(values, dtype=float))
    n = len(ordered)
    if n == 0:
        return None, None
    tau = percentile / 100
    counts = np.arange(n + 1)
    threshold = math.log(1 / alpha)
    # Lower: the largest count s still too small for the percentile; it sits above X_(s+1).
    low_evidence = _quantile_log_evidence(counts, n, tau, upward=False)
    rejected = np.nonzero(low_evidence >= threshold)[0]
    lower = float(ordered[rejected[-1]]) if len(rejected) and rejected[-1] < n else None
    # Upper: the smallest count s already too large; the percentile is at most X_(s).
    high_evidence = _quantile_log_evidence(counts, n, tau, upward=True)
    accepted = np.nonzero(high_evidence >= threshold)[0]
    upper = float(ordered[accepted[0] - 1]) if len(accepted) and accepted[0] >= 1 else None
    return lower, upper


def nearest_rank(values: Sequence[float] | np.ndarray, percentile: float) -> float | None:
    """The sample percentile as the local source computes it (nearest rank)."""
    data = np.asarray(values, dtype=float)
    if len(data) == 0:
        return None
    return float(np.percentile(data, percentile, method="inverted_cdf"))


@dataclass(frozen=True)
class LatencyEvidence:
    """Candidate against stable on one latency percentile over one window."""

    candidate: float | None  # sample percentiles
    stable: float | None
    ratio_low: float | None  # the ratio of true percentiles lies above this (None: unbounded)
    ratio_high: float | None  # ... and below this (None: unbounded)

    @property
    def ratio(self) -> float | None:
        if self.candidate is None or not self.stable:
            return None
        return self.candidate / self.stable


def latency_evidence(
    candidate_ms: Sequence[float] | np.ndarray,
    stable_ms: Sequence[float] | np.ndarray,
    percentile: float,
    alpha: float,
) -> LatencyEvidence:
    """Bounds on candidate percentile / stable percentile, each side wrong w.p. <= alpha.

    `ratio_low` combines the candidate's lower and stable's upper bound (each at alpha/2), so
    `ratio_low > max_ratio` wrongly fails a candidate within `max_ratio` with probability at
    most alpha; `ratio_high` mirrors it for concluding the candidate is within the ratio.
    """
    c_low, c_high = percentile_bounds(candidate_ms, percentile, alpha / 2)
    s_low, s_high = percentile_bounds(stable_ms, percentile, alpha / 2)
    ratio_low = c_low / s_high if c_low is not None and s_high else None
    ratio_high = c_high / s_low if c_high is not None and s_low else None
    return LatencyEvidence(
        candidate=nearest_rank(candidate_ms, percentile),
        stable=nearest_rank(stable_ms, percentile),
        ratio_low=ratio_low,
        ratio_high=ratio_high,
    )
