"""`provider: azureml` — the name the CLI opens; the provider lives in `engine.providers.azure`.

Importing this module imports no Azure package (see `engine.providers.azure`).
"""

from engine.providers.azure import AzureMLProvider, AzureWorkspace, resolve_workspace

__all__ = ["AzureMLProvider", "AzureWorkspace", "resolve_workspace"]
