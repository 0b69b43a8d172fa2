"""Azure reader identities (azure/identity.py): federated with Triton, reading the model container only, and
the gateway's own identity, reading only the tokenizer files of each version."""

from __future__ import annotations

from infra.offline import Plan
from infra.platform.azure.identity import STORAGE_BLOB_DATA_READER, blob_path_condition
from infra.platform.base import ReadScope
from tests.infra.platform.provisioned import provisioned

CREDENTIAL = "azure-native:managedidentity:FederatedIdentityCredential"
ASSIGNMENT = "azure-native:authorization:RoleAssignment"
BLOB_PATH = "@Resource[Microsoft.Storage/storageAccounts/blobServices/containers/blobs:path]"


def test_reader_federation_and_container_scoped_role(dev: Plan) -> None:
    credential = dev.one(CREDENTIAL, "tf-dev-model-reader").inputs
    assert credential["subject"] == "system:serviceaccount:tritonform:triton"
    assert credential["audiences"] == ["api://AzureADTokenExchange"]
    assert credential["issuer"].startswith("https://westeurope.oic.prod-aks.azure.com/")
    reader = dev.one(ASSIGNMENT, "tf-dev-model-reader").inputs
    assert reader["roleDefinitionId"].endswith(f"/roleDefinitions/{STORAGE_BLOB_DATA_READER}")
    assert reader["scope"].endswith("/blobServices/default/containers/models")
    assert reader["principalType"] == "ServicePrincipal"
    assert "condition" not in reader  # Triton reads whole model repositories


def test_reader_annotation_pod_label_and_triton_env() -> None:
    p = provisioned("azure-dev")
    client_id = p.plan.outputs["model_reader_identity"]
    reader = p.platform.reader
    assert p.value(reader.service_account_annotations) == {"azure.workload.identity/client-id": client_id}
    assert reader.pod_labels == {"azure.workload.identity/use": "true"}
    account = p.plan.outputs["bucket_uri"].removeprefix("as://").split("/")[0]
    assert p.value(reader.env) == {"AZURE_STORAGE_ACCOUNT": account, "AZURE_STORAGE_AUTH_TYPE": "default"}


def test_gateway_reader_is_its_own_identity_federated_with_the_gateway_service_account(dev: Plan) -> None:
    credential = dev.one(CREDENTIAL, "tf-dev-gateway-reader").inputs
    assert credential["subject"] == "system:serviceaccount:tritonform:gateway"
    assert credential["audiences"] == ["api://AzureADTokenExchange"]
    assert credential["resourceName"].startswith("tf-dev-gateway-reader")
    p = provisioned("azure-dev")
    gateway_reader = p.platform.gateway_reader
    assert gateway_reader is not None
    client_id = p.value(gateway_reader.identity_id)
    assert client_id != p.plan.outputs["model_reader_identity"]
    assert p.value(gateway_reader.service_account_annotations) == {
        "azure.workload.identity/client-id": client_id
    }
    assert gateway_reader.pod_labels == {"azure.workload.identity/use": "true"}


def test_gateway_reader_may_read_only_the_tokenizer_files_of_a_version(dev: Plan) -> None:
    grant = dev.one(ASSIGNMENT, "tf-dev-gateway-reader").inputs
    assert grant["roleDefinitionId"].endswith(f"/roleDefinitions/{STORAGE_BLOB_DATA_READER}")
    assert grant["scope"].endswith("/blobServices/default/containers/models")
    assert grant["conditionVersion"] == "2.0"
    condition = grant["condition"]
    assert condition == blob_path_condition(ReadScope.tokenizer_files("models"))
    assert (
        "!(ActionMatches{'Microsoft.Storage/storageAccounts/blobServices/containers/blobs/read'})"
        in condition
    )
    for name in ("REPOSITORY.json", "tokenizer.json", "generation.json"):
        assert f"{BLOB_PATH} StringLike 'models/versions/*/{name}'" in condition


def test_blob_path_condition_follows_the_scope() -> None:
    assert f"{BLOB_PATH} StringLike 'm/*'" in blob_path_condition(ReadScope(prefix="m/"))
    both = blob_path_condition(ReadScope(prefix="m/v/", suffixes=("/a.json", "/b.json")))
    assert f"{BLOB_PATH} StringLike 'm/v/*/a.json'\n    OR\n    {BLOB_PATH} StringLike 'm/v/*/b.json'" in both
    assert both.count("(") == both.count(")")
