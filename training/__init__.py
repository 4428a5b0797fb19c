"""Training: turns the German credit data into registered credit-risk model versions."""
