"""The statistics of sequential gates on known cases: what each test guarantees, checked by
exact expectations and by seeded simulation of many rollouts evaluated after every failure."""

from __future__ import annotations

import math

import numpy as np
import pytest

from engine.sequential import (
    StepCounts,
    error_evidence,
    latency_evidence,
    log_evidence_of_no_regression,
    log_evidence_of_regression,
    percentile_bounds,
    regression_grid,
    routing_share,
    share_is_plausible,
)
from engine.spec import MinEffect

TWICE = MinEffect(ratio=2.0)
ALPHA = 0.01


def sampling_slack(rate: float, runs: int) -> float:
    """Three standard errors of a rate estimated from `runs` runs."""
    return 3 * math.sqrt(rate * (1 - rate) / runs)


# --- the bets, exactly ---------------------------------------------------------------------------


def one_request_expectation(
    share: float, p_candidate: float, p_stable: float, log_e, requests: bool = False
) -> float:
    """E[e-value after one request]: it reaches the candidate with `share` and fails with the
    rate of the side that serves it; `log_e(xc, xs, nc, ns)` scores the four outcomes."""
    outcomes = [
        (share * p_candidate, (1, 0, 1, 0)),
        (share * (1 - p_candidate), (0, 0, 1, 0)),
        ((1 - share) * p_stable, (0, 1, 0, 1)),
        ((1 - share) * (1 - p_stable), (0, 0, 0, 1)),
    ]
    return sum(p * math.exp(float(log_e(*counts))) for p, counts in outcomes)


@pytest.mark.parametrize("share", [0.05, 0.1, 0.5, 0.9, 20 / 120])
@pytest.mark.parametrize(
    ("p_candidate", "p_stable"), [(0.005, 0.005), (0.001, 0.005), (0.3, 0.3), (0.0, 0.5)]
)
def test_a_request_never_raises_the_regression_evidence_in_expectation_when_the_candidate_is_no_worse(  # noqa: E501
    share: float, p_candidate: float, p_stable: float
):
    def log_e(xc, xs, nc, ns):
        return log_evidence_of_regression(np.array([xc]), np.array([xs]), [share], TWICE)

    assert one_request_expectation(share, p_candidate, p_stable, log_e) <= 1 + 1e-12


@pytest.mark.parametrize("share", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("p_stable", [0.001, 0.005, 0.05, 0.2])
def test_a_request_never_raises_the_no_regression_evidence_when_the_candidate_is_min_effect_worse(
    share: float, p_stable: float
):
    def log_e(xc, xs, nc, ns):
        counts = [np.array([v]) for v in (nc, xc, ns, xs)]
        return log_evidence_of_no_regression(*counts, [share], TWICE)

    worse = min(1.0, 2.0 * p_stable)
    assert one_request_expectation(share, worse, p_stable, log_e) <= 1 + 1e-12


@pytest.mark.parametrize("share", [0.1, 0.5])
@pytest.mark.parametrize("p_stable", [0.0, 0.005, 0.2])
def test_the_additive_no_regression_bet_is_fair_when_the_candidate_is_that_much_worse(
    share: float, p_stable: float
):
    increase = MinEffect(increase=0.01)

    def log_e(xc, xs, nc, ns):
        counts = [np.array([v]) for v in (nc, xc, ns, xs)]
        return log_evidence_of_no_regression(*counts, [share], increase)

    assert one_request_expectation(share, p_stable + 0.01, p_stable, log_e) <= 1 + 1e-12


def test_four_candidate_failures_in_a_row_at_ten_percent_fail_the_gate_and_three_do_not():
    def regressed(failures: int) -> bool:
        return error_evidence([StepCounts(0.1, 40, failures, 360, 0)], TWICE).regressed(ALPHA)

    assert not regressed(3)
    assert regressed(4)


def test_failures_in_proportion_to_traffic_show_no_regression_and_rule_out_a_doubling():
    evidence = error_evidence([StepCounts(0.5, 20_000, 100, 20_000, 100)], TWICE)

    assert evidence.log_regression < 0
    assert evidence.ratio == 1.0
    assert evidence.ruled_out(ALPHA)
    assert not evidence.regressed(ALPHA)


def test_a_step_at_full_traffic_adds_no_evidence():
    before = error_evidence([StepCounts(0.1, 450, 5, 4050, 20)], TWICE)
    after = error_evidence(
        [StepCounts(0.1, 450, 5, 4050, 20), StepCounts(1.0, 4500, 900, 0, 0)], TWICE
    )

    assert after.log_regression == pytest.approx(before.log_regression)
    assert after.candidate_requests == before.candidate_requests


def test_evidence_grows_with_candidate_failures_and_shrinks_with_stable_failures():
    shares = [0.1, 0.5]
    base = log_evidence_of_regression(np.array([3, 5]), np.array([20, 6]), shares, TWICE)
    more_candidate = log_evidence_of_regression(np.array([4, 5]), np.array([20, 6]), shares, TWICE)
    more_stable = log_evidence_of_regression(np.array([3, 5]), np.array([20, 7]), shares, TWICE)

    assert more_candidate > base > more_stable


def test_leading_axes_are_evaluated_at_once_like_one_by_one():
    candidate = np.array([[1, 0], [4, 2], [9, 12]])
    stable = np.array([[20, 1], [18, 3], [25, 10]])
    together = log_evidence_of_regression(candidate, stable, [0.1, 0.5], TWICE)
    apart = [
        float(log_evidence_of_regression(c, s, [0.1, 0.5], TWICE))
        for c, s in zip(candidate, stable, strict=True)
    ]

    assert together == pytest.approx(apart)


def test_the_ratio_grid_starts_at_min_effect_and_favours_small_regressions():
    ratios, log_weights = regression_grid(TWICE)

    assert ratios[0] == pytest.approx(2.0)
    assert np.all(np.diff(log_weights) < 0)
    assert math.fsum(np.exp(log_weights)) == pytest.approx(1.0)


def test_an_additive_min_effect_spans_the_ratios_it_means_for_plausible_stable_rates():
    ratios, _ = regression_grid(MinEffect(increase=0.01))

    # +0.01 doubles a 1 % error rate and multiplies a 0.1 % one by 11.
    assert ratios[0] < 2.0 < 11.0 <= ratios[-1] + 1e-9


def test_the_mirror_share_counts_the_mirrored_copies_as_candidate_executions():
    assert routing_share(20, mirrored=True) == pytest.approx(20 / 120)
    assert routing_share(10, mirrored=False) == pytest.approx(0.1)


def test_a_candidate_serving_far_more_than_its_share_is_flagged_and_less_is_not():
    assert not share_is_plausible(StepCounts(0.1, 300, 0, 700, 0))
    assert share_is_plausible(StepCounts(0.1, 110, 0, 890, 0))
    assert share_is_plausible(StepCounts(0.1, 20, 0, 980, 0))


# --- the false-rollback rate under continuous monitoring -----------------------------------------


def largest_evidence(
    rng: np.random.Generator,
    runs: int,
    p_candidate: float | np.ndarray,
    p_stable: float | np.ndarray,
    shares: tuple[float, ...] = (0.1, 0.5),
    requests_per_step: int = 4500,
    effect: MinEffect = TWICE,
) -> np.ndarray:
    """The largest log evidence of a regression each simulated rollout ever showed, evaluated
    after every failure. Requests reach the candidate at random with each step's share; the
    failures of a step arrive in random order. Rates may be given per step (drift)."""
    steps = len(shares)
    rate_c = np.broadcast_to(p_candidate, (steps,))
    rate_s = np.broadcast_to(p_stable, (steps,))
    totals_c = np.zeros((runs, steps))
    totals_s = np.zeros((runs, steps))
    best = np.zeros(runs)
    for k, share in enumerate(shares):
        on_candidate = rng.binomial(requests_per_step, share, size=runs)
        xc = rng.binomial(on_candidate, rate_c[k])
        xs = rng.binomial(requests_per_step - on_candidate, rate_s[k])
        width = int((xc + xs).max())
        if width == 0:
            continue
        slot = np.arange(width)[None, :]
        present = slot < (xc + xs)[:, None]
        keys = np.where(present, rng.random((runs, width)), np.inf)
        order = np.argsort(keys, axis=1)
        is_candidate = np.take_along_axis(slot < xc[:, None], order, axis=1) & present
        grow_c = np.cumsum(is_candidate, axis=1)
        grow_s = np.cumsum(present & ~is_candidate, axis=1)
        column = np.eye(steps)[k]
        cand = totals_c[:, None, :] + grow_c[:, :, None] * column
        stab = totals_s[:, None, :] + grow_s[:, :, None] * column
        evidence = log_evidence_of_regression(cand, stab, shares, effect)
        best = np.maximum(best, np.where(present, evidence, -np.inf).max(axis=1))
        totals_c[:, k] += xc
        totals_s[:, k] += xs
    return best


RUNS = 20_000


@pytest.mark.parametrize(
    ("p_stable", "shares", "requests"),
    [(0.005, (0.1, 0.5), 4500), (0.02, (0.1, 0.5), 2000), (0.05, (20 / 120, 0.1, 0.5), 1000)],
    ids=["0.5% stable", "2% stable", "5% stable with a mirror step"],
)
def test_good_versions_are_rolled_back_at_most_at_the_false_rollback_rate(
    p_stable, shares, requests
):
    rng = np.random.default_rng(6)
    best = largest_evidence(rng, RUNS, p_stable, p_stable, shares, requests)
    rate = float(np.mean(best >= math.log(1 / ALPHA)))

    assert rate <= ALPHA + sampling_slack(ALPHA, RUNS), rate


def test_the_false_rollback_rate_holds_while_both_sides_drift_together():
    rng = np.random.default_rng(7)
    drifting = np.array([0.002, 0.03])  # stable and candidate fail 15 times more in step 2
    best = largest_evidence(rng, RUNS, drifting, drifting, requests_per_step=2500)

    assert np.mean(best >= math.log(1 / ALPHA)) <= ALPHA + sampling_slack(ALPHA, RUNS)


def test_a_better_candidate_is_rolled_back_even_less_often():
    rng = np.random.default_rng(8)
    best = largest_evidence(rng, RUNS, 0.0025, 0.005)

    assert np.mean(best >= math.log(1 / ALPHA)) <= ALPHA / 2


def test_the_simulation_would_catch_a_test_that_inflates_its_rate_by_looking_often():
    # A fixed-sample one-sided two-proportion z-test at alpha, looked at every 100 requests of
    # the same growing sample: the kind of harness above shows the inflation that the
    # sequential test avoids.
    rng = np.random.default_rng(9)
    runs, requests, share, p = 4000, 3000, 0.1, 0.02
    on_candidate = rng.random((runs, requests)) < share
    failed = rng.random((runs, requests)) < p
    looks = np.arange(100, requests + 1, 100) - 1
    n_c = np.cumsum(on_candidate, axis=1)[:, looks]
    n_s = looks[None, :] + 1 - n_c
    x_c = np.cumsum(on_candidate & failed, axis=1)[:, looks]
    x_s = np.cumsum(~on_candidate & failed, axis=1)[:, looks]
    pooled = (x_c + x_s) / (n_c + n_s)
    spread = np.sqrt(pooled * (1 - pooled) * (1 / np.maximum(n_c, 1) + 1 / np.maximum(n_s, 1)))
    z = (x_c / np.maximum(n_c, 1) - x_s / np.maximum(n_s, 1)) / np.where(spread > 0, spread, 1)
    crossed = (z > 2.326).any(axis=1)  # 2.326: the one-sided 1 % point of a normal

    assert crossed.mean() > 3 * ALPHA


def test_a_tenfold_regression_is_caught_in_its_first_five_minutes_at_ten_percent():
    rng = np.random.default_rng(10)
    best = largest_evidence(rng, 2000, 0.05, 0.005, shares=(0.1,), requests_per_step=4500)

    assert np.mean(best >= math.log(1 / ALPHA)) > 0.99


# --- percentiles ---------------------------------------------------------------------------------


def test_percentile_bounds_hold_at_every_sample_size_at_once():
    rng = np.random.default_rng(11)
    paths, alpha, looks = 1000, 0.05, (50, 100, 200, 400, 800, 1600)
    true_p90 = float(np.exp(3 + 0.5 * 1.2815515655446004))  # lognormal(3, 0.5)
    wrong_low = wrong_high = 0
    for _ in range(paths):
        sample = rng.lognormal(3, 0.5, looks[-1])
        low_ever = high_ever = False
        for n in looks:
            lower, upper = percentile_bounds(sample[:n], 90, alpha)
            low_ever |= lower is not None and lower > true_p90
            high_ever |= upper is not None and upper < true_p90
        wrong_low += low_ever
        wrong_high += high_ever
    slack = sampling_slack(alpha, paths)
    assert wrong_low / paths <= alpha + slack
    assert wrong_high / paths <= alpha + slack


def test_percentile_bounds_close_in_on_the_truth_with_data():
    rng = np.random.default_rng(12)
    sample = rng.lognormal(3, 0.5, 50_000)
    true_p99 = float(np.exp(3 + 0.5 * 2.3263478740408408))
    lower, upper = percentile_bounds(sample, 99, 0.01)

    assert lower is not None and upper is not None
    assert 0.93 * true_p99 < lower < true_p99 < upper < 1.07 * true_p99


def test_a_handful_of_samples_bounds_a_high_percentile_from_below_only():
    # Two of three draws above the p99 happen with probability 3e-4: the p99 is above 12.
    assert percentile_bounds([12.0, 15.0, 11.0], 99, 0.01) == (12.0, None)
    assert percentile_bounds([], 50, 0.01) == (None, None)


def test_a_slower_candidate_is_shown_slower_and_an_equal_one_is_shown_within_the_ratio():
    rng = np.random.default_rng(13)
    stable = rng.lognormal(3, 0.4, 20_000)
    slower = latency_evidence(rng.lognormal(3 + math.log(1.6), 0.4, 5_000), stable, 99, 0.01)
    equal = latency_evidence(rng.lognormal(3, 0.4, 5_000), stable, 99, 0.01)

    assert slower.ratio_low is not None and slower.ratio_low > 1.25
    assert equal.ratio_high is not None and equal.ratio_high < 1.25
    assert equal.ratio_low is not None and equal.ratio_low < 1.0
