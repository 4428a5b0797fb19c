"""saferollout: gated, declarative rollouts of ML model versions."""
