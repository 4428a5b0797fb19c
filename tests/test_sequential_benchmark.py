"""The detection benchmark's harness: Wald's numbers on known cases, the reference policies
doing what their rules say, and a small run writing its table and plot."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.detection import policies
from benchmarks.detection.report import MARKDOWN, PLOT, write_results
from benchmarks.detection.run import POLICIES, expected_requests, minutes_to_serve, run_benchmark
from benchmarks.detection.traffic import CASES, Setting, draw_traffic
from benchmarks.detection.wald import Sprt

SETTING = Setting()


@pytest.mark.parametrize(("rate", "requests"), [(0.005, 1881), (0.02, 510), (0.05, 152), (0.5, 13)])
def test_wald_expected_sample_numbers_for_a_doubling_of_half_a_percent(rate, requests):
    test = Sprt(0.005, 0.01, alpha=0.01, beta=0.05)

    assert test.expected_sample_number(rate) == pytest.approx(requests, abs=1)


def test_wald_accepts_at_its_design_points_with_its_error_rates():
    test = Sprt(0.005, 0.01, alpha=0.01, beta=0.05)

    assert test.accept_probability(0.005) == pytest.approx(0.99)
    assert test.accept_probability(0.01) == pytest.approx(0.05)


def test_the_schedule_gives_the_candidate_90_then_450_then_900_requests_a_minute():
    assert expected_requests(SETTING, 5) == pytest.approx(450)
    assert expected_requests(SETTING, 7) == pytest.approx(450 + 900)
    assert minutes_to_serve(SETTING, 510) == pytest.approx(5 + 60 / 450)


def test_fixed_windows_roll_back_a_good_version_that_fails_once_at_50_percent():
    traffic = draw_traffic(np.random.default_rng(1), 200, SETTING)
    outcome = policies.fixed_windows(traffic, CASES["good"], SETTING)

    # At 50 % a good version fails 2.25 times a minute: five clean minutes almost never happen.
    assert outcome.rolled_back.mean() > 0.99
    assert set(np.unique(outcome.minutes[outcome.rolled_back])) <= {5.0, 10.0}


def test_argo_like_rolls_back_at_the_first_failed_minute_and_flagger_like_at_the_fifth():
    traffic = draw_traffic(np.random.default_rng(2), 200, SETTING)
    argo = policies.argo_like(traffic, CASES["crash"], SETTING)
    flagger = policies.flagger_like(traffic, CASES["crash"], SETTING)

    assert np.all(argo.minutes == 1.0)
    assert np.all(flagger.minutes == 5.0)


def test_a_small_run_writes_the_table_and_plot_with_the_command_to_reproduce(tmp_path):
    results = run_benchmark(SETTING, runs=40, seed=5)
    written = write_results(results, SETTING, tmp_path, runs=40, seed=5)

    assert written == [tmp_path / MARKDOWN, tmp_path / PLOT]
    table = (tmp_path / MARKDOWN).read_text()
    assert "`python -m benchmarks.detection --runs 40 --seed 5`" in table
    for case in CASES:
        for policy in POLICIES:
            assert f"| {case} | {policy} |" in table
    assert (tmp_path / PLOT).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
