"""Wald's sequential probability ratio test on one deployment's requests, for reference.

The test knows stable's error rate `p0` and is designed to tell `p0` from `p1 = min_effect *
p0` with error rates alpha (rejecting a good version) and beta (accepting a bad one). Its
expected sample number at the true rate, from Wald's approximation (no overshoot), is the
fewest requests any test with those error rates needs on average at the design points.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Sprt:
    p0: float
    p1: float
    alpha: float = 0.01
    beta: float = 0.05

    @property
    def upper(self) -> float:
        """log A: reject p0 (roll back) at or above it."""
        return math.log((1 - self.beta) / self.alpha)

    @property
    def lower(self) -> float:
        """log B: accept p0 at or below it."""
        return math.log(self.beta / (1 - self.alpha))

    @property
    def on_failure(self) -> float:
        return math.log(self.p1 / self.p0)

    @property
    def on_success(self) -> float:
        return math.log((1 - self.p1) / (1 - self.p0))

    def drift(self, p: float) -> float:
        """Expected log-likelihood ratio added by one request at true error rate p."""
        return p * self.on_failure + (1 - p) * self.on_success

    def accept_probability(self, p: float) -> float:
        """Wald's operating characteristic: the chance of accepting p0 at true rate p."""
        h = _exponent(self, p)
        if h is None:
            return self.upper / (self.upper - self.lower)
        a, b = math.exp(h * self.upper), math.exp(h * self.lower)
        return (a - 1) / (a - b)

    def expected_sample_number(self, p: float) -> float:
        """Wald's approximation of the mean number of requests until the test stops."""
        drift = self.drift(p)
        accept = self.accept_probability(p)
        if abs(drift) < 1e-15:
            return -self.lower * self.upper / _second_moment(self, p)
        return (accept * self.lower + (1 - accept) * self.upper) / drift


def _second_moment(test: Sprt, p: float) -> float:
    return p * test.on_failure**2 + (1 - p) * test.on_success**2


def _exponent(test: Sprt, p: float) -> float | None:
    """The non-zero h with E[exp(h * z)] = 1, by bisection; None at zero drift."""
    drift = test.drift(p)
    if abs(drift) < 1e-15:
        return None

    def excess(h: float) -> float:
        return p * math.exp(h * test.on_failure) + (1 - p) * math.exp(h * test.on_success) - 1

    # The root lies on the side opposite the drift's sign.
    low, high = (-1e-9, -60.0) if drift > 0 else (1e-9, 60.0)
    while excess(high) < 0:
        high *= 2
    for _ in range(200):
        middle = (low + high) / 2
        if excess(middle) < 0:
            low = middle
        else:
            high = middle
    return (low + high) / 2
