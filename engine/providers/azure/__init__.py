"""The `azureml` provider: Azure ML managed online endpoints (see `provider`).

Importing this package imports no Azure package: azure-ai-ml is loaded on the first call that
needs it, so commands on local manifests never pay for it.
"""

from engine.providers.azure.provider import AzureMLProvider, AzureWorkspace, resolve_workspace

__all__ = ["AzureMLProvider", "AzureWorkspace", "resolve_workspace"]
