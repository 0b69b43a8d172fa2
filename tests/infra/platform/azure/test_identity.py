"""Azure reader identity (azure/identity.py): federated with Triton, reading the model container only."""

from __future__ import annotations

from infra.offline import Plan
from infra.platform.azure.identity import STORAGE_BLOB_DATA_READER
from tests.infra.platform.provisioned import provisioned


def test_reader_federation_and_container_scoped_role(dev: Plan) -> None:
    credential = dev.one("azure-native:managedidentity:FederatedIdentityCredential").inputs
    assert credential["subject"] == "system:serviceaccount:tritonform:triton"
    assert credential["audiences"] == ["api://AzureADTokenExchange"]
    assert credential["issuer"].startswith("https://westeurope.oic.prod-aks.azure.com/")
    reader = dev.one("azure-native:authorization:RoleAssignment", "tf-dev-model-reader").inputs
    assert reader["roleDefinitionId"].endswith(f"/roleDefinitions/{STORAGE_BLOB_DATA_READER}")
    assert reader["scope"].endswith("/blobServices/default/containers/models")
    assert reader["principalType"] == "ServicePrincipal"


def test_reader_annotation_pod_label_and_triton_env() -> None:
    p = provisioned("azure-dev")
    client_id = p.plan.outputs["model_reader_identity"]
    reader = p.platform.reader
    assert p.value(reader.service_account_annotations) == {"azure.workload.identity/client-id": client_id}
    assert reader.pod_labels == {"azure.workload.identity/use": "true"}
    account = p.plan.outputs["bucket_uri"].removeprefix("as://").split("/")[0]
    assert p.value(reader.env) == {"AZURE_STORAGE_ACCOUNT": account, "AZURE_STORAGE_AUTH_TYPE": "default"}
