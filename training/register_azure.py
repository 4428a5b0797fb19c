"""Register a trained model version in an Azure ML workspace, for `provider: azureml` manifests.

    python -m training.train --register azureml

Called by `training.train` after the local registration. The artifact goes to the workspace's
default datastore under a path named by its sha256, then a model version is created with
azure-ai-ml's `MLClient` (`models.create_or_update`): the next whole number after the highest
version already registered under the name, the training metrics and the sha256 as properties.
The same artifact registered twice gives back the version it already has. What to put in the
manifest is printed as `azureml:<name>:<version>`.

azure-ai-ml's own upload goes through a blob client it does not hand its transport to, so the
upload is done here with azure-storage-blob and the same transport: everything runs offline in
tests. The datastore's secret (a SAS token or an account key) is only ever held in memory.
Azure packages are imported inside the functions: importing this module costs nothing.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.providers.azure import AzureWorkspace, resolve_workspace
from engine.providers.azure.errors import translated
from engine.providers.azure.quiet import sdk_quiet

MODEL_TYPE = "custom_model"
UPLOAD_PREFIX = "saferollout-models"
SHA256_PROPERTY = "sha256"


@dataclass(frozen=True)
class AzureModelVersion:
    name: str
    version: str
    path: str  # the datastore URI the version points at
    created: bool  # False when the artifact was registered before under this version

    @property
    def reference(self) -> str:
        """What a manifest's `model.version` and the deployment's `model` refer to."""
        return f"azureml:{self.name}:{self.version}"


def azure_connection() -> tuple[Any, Any]:
    """(credential, transport) for the real workspace; tests replace this with a fake's."""
    from engine.azure_auth import default_credential

    return default_credential(), None


def next_version(versions: list[str]) -> str:
    """The next whole number after the highest whole-number version ("1" for none); versions
    that are not whole numbers are left alone."""
    numbers = [int(v) for v in versions if v.isdigit()]
    return str(max(numbers, default=0) + 1)


def _client(workspace: AzureWorkspace, credential: Any, transport: Any) -> Any:
    from azure.ai.ml import MLClient

    options: dict[str, Any] = {"show_progress": False, "enable_telemetry": False}
    if transport is not None:
        options["transport"] = transport
    return MLClient(
        credential, workspace.subscription_id, workspace.resource_group, workspace.name, **options
    )


def _existing(client: Any, name: str) -> list[Any]:
    from azure.core.exceptions import ResourceNotFoundError

    try:
        return list(client.models.list(name=name))
    except ResourceNotFoundError:
        return []


def _upload(datastore: Any, blob_path: str, artifact: Path, credential: Any, transport: Any):
    """Put the artifact into the datastore's container, with the datastore's own secret when it
    has one (Azure ML hands it out to the workspace's data scientists) or the caller's token."""
    from azure.core.credentials import AzureNamedKeyCredential, AzureSasCredential
    from azure.storage.blob import BlobClient

    secret = getattr(datastore, "credentials", None)
    if getattr(secret, "sas_token", None):
        blob_credential: Any = AzureSasCredential(secret.sas_token)
    elif getattr(secret, "account_key", None):
        blob_credential = AzureNamedKeyCredential(datastore.account_name, secret.account_key)
    else:
        blob_credential = credential  # an identity-based datastore: Storage Blob Data roles
    account_url = f"{datastore.protocol}://{datastore.account_name}.blob.{datastore.endpoint}"
    options = {"transport": transport} if transport is not None else {}
    blob = BlobClient(
        account_url, datastore.container_name, blob_path, credential=blob_credential, **options
    )
    with artifact.open("rb") as data:
        blob.upload_blob(data, overwrite=True)  # content-addressed: rewriting changes nothing


def register_model(
    artifact: Path,
    *,
    name: str,
    sha256: str,
    workspace: AzureWorkspace,
    description: str = "",
    properties: Mapping[str, Any] | None = None,
    credential: Any = None,
    transport: Any = None,
) -> AzureModelVersion:
    """Upload `artifact` and register it as the next version of model `name` in `workspace`;
    the version already holding this sha256 when there is one."""
    from azure.ai.ml.entities import Model

    where = f"workspace {workspace.name}"
    with sdk_quiet(), translated(endpoint="", operation=f"register model {name}", subject=where):
        client = _client(workspace, credential, transport)
        existing = _existing(client, name)
        for model in existing:
            if (model.properties or {}).get(SHA256_PROPERTY) == sha256:
                return AzureModelVersion(name, str(model.version), str(model.path), created=False)

        datastore = client.datastores.get_default(include_secrets=True)
        blob_path = f"{UPLOAD_PREFIX}/{name}/{sha256}/{artifact.name}"
        _upload(datastore, blob_path, artifact, credential, transport)

        version = next_version([str(m.version) for m in existing])
        shown = {k: str(v) for k, v in (properties or {}).items()}
        model = Model(
            name=name,
            version=version,
            type=MODEL_TYPE,
            path=f"azureml://datastores/{datastore.name}/paths/{blob_path}",
            description=description[:500] or None,
            properties={**shown, SHA256_PROPERTY: sha256},
            tags={"registered-by": "saferollout"},
        )
        created = client.models.create_or_update(model)
    return AzureModelVersion(name, str(created.version), str(created.path), created=True)


def workspace_from_env(env: Mapping[str, str] | None = None) -> AzureWorkspace:
    """The workspace named by AZURE_SUBSCRIPTION_ID, AZURE_RESOURCE_GROUP and AZUREML_WORKSPACE;
    an error naming each one missing."""
    return resolve_workspace(None, os.environ if env is None else env)


def register_trained(result: Any, env: Mapping[str, str] | None = None) -> AzureModelVersion:
    """Register a `training.train.TrainResult` in the workspace named by the environment."""
    workspace = workspace_from_env(env)
    credential, transport = azure_connection()
    metrics = {k: v for k, v in result.metrics.items() if isinstance(v, str | int | float)}
    return register_model(
        Path(result.artifact),
        name=result.model,
        sha256=result.sha256,
        workspace=workspace,
        description=result.description,
        properties={**metrics, "local-version": result.version},
        credential=credential,
        transport=transport,
    )
