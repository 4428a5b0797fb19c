"""The simulated endpoint: its setting, the candidates, and the requests every policy sees.

Requests are drawn once per chunk of runs as common random numbers: each has a routing draw
(it goes to the candidate when the draw is below the candidate's share at that moment) and a
failure draw (it fails when the draw is below the error rate of the side that serves it). A
policy that holds a step longer, or rolls back sooner, sees the same requests routed by its own
shares, so differences between policies are never differences of luck.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.spec import MinEffect


@dataclass(frozen=True)
class Setting:
    """The benchmark's endpoint and rollout, as the issue states them."""

    requests_per_s: float = 15.0
    stable_error_rate: float = 0.005
    shares: tuple[float, ...] = (0.10, 0.50, 1.00)
    bake_minutes: int = 5
    minutes: int = 20  # simulated traffic: the slowest policy needs 19 minutes to promote
    min_effect: str = "2x"  # the sequential gate's, and Wald's design point
    alpha: float = 0.01  # false_rollback_rate; Wald's alpha
    beta: float = 0.05  # Wald's beta
    min_requests: int = 100  # the sequential gate's min_requests

    @property
    def effect(self) -> MinEffect:
        return MinEffect.parse(self.min_effect)

    @property
    def per_minute(self) -> float:
        return self.requests_per_s * 60

    def candidate_per_minute(self, step: int) -> float:
        return self.per_minute * self.shares[step]


# Candidate error rates: the same as stable, 4x, 10x, and a crash that fails half the requests.
CASES: dict[str, float] = {
    "good": 0.005,
    "4x regression": 0.02,
    "10x regression": 0.05,
    "crash": 0.5,
}


@dataclass(frozen=True)
class Traffic:
    """Requests of one chunk of runs, minute by minute, in arrival order within a minute."""

    present: np.ndarray  # (runs, minutes, width) bool: the slot holds a request
    route: np.ndarray  # (runs, minutes, width) uniform draws for routing
    fail: np.ndarray  # (runs, minutes, width) uniform draws for failing

    @property
    def runs(self) -> int:
        return self.present.shape[0]

    @property
    def minutes(self) -> int:
        return self.present.shape[1]

    def minute(
        self, minute: int, share: np.ndarray, candidate_rate: float, stable_rate: float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(to the candidate, failed, present) for every request of one minute, each run
        routing at its own share."""
        present = self.present[:, minute]
        to_candidate = present & (self.route[:, minute] < share[:, None])
        rate = np.where(to_candidate, candidate_rate, stable_rate)
        failed = present & (self.fail[:, minute] < rate)
        return to_candidate, failed, present


def draw_traffic(rng: np.random.Generator, runs: int, setting: Setting) -> Traffic:
    """Poisson arrivals at the setting's rate for `setting.minutes` minutes per run."""
    counts = rng.poisson(setting.per_minute, size=(runs, setting.minutes))
    width = int(counts.max())
    present = np.arange(width)[None, None, :] < counts[:, :, None]
    shape = (runs, setting.minutes, width)
    return Traffic(
        present=present,
        route=rng.random(shape, dtype=np.float32),
        fail=rng.random(shape, dtype=np.float32),
    )
