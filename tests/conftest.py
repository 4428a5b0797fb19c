"""Shared test set-up: fixtures any test may use.

The local backend's fixtures (`local_home`, `toy_model`, `local_server`) live in
`engine.providers.local.testing`.
"""

pytest_plugins = ["engine.providers.local.testing"]
