"""Azure model bucket (azure/storage.py): a locked-down storage account and its private container."""

from __future__ import annotations

from infra.offline import Plan
from infra.platform.azure.storage import storage_account_name


def test_storage_account_is_locked_down(dev: Plan) -> None:
    account = dev.one("azure-native:storage:StorageAccount").inputs
    assert account["allowBlobPublicAccess"] is False and account["allowSharedKeyAccess"] is False
    assert account["minimumTlsVersion"] == "TLS1_2" and account["enableHttpsTrafficOnly"] is True
    assert account["encryption"]["requireInfrastructureEncryption"] is True
    assert account["encryption"]["keySource"] == "Microsoft.Storage"
    assert account["accountName"] == storage_account_name("tf-dev", "tf-dev-rg", "westeurope")
    assert 3 <= len(account["accountName"]) <= 24 and account["accountName"].isalnum()


def test_versioning_lifecycle_and_private_container(dev: Plan) -> None:
    assert dev.one("azure-native:storage:BlobServiceProperties").inputs["isVersioningEnabled"] is True
    rule = dev.one("azure-native:storage:ManagementPolicy").inputs["policy"]["rules"][0]
    assert rule["definition"]["actions"]["version"]["delete"] == {"daysAfterCreationGreaterThan": 30}
    container = dev.one("azure-native:storage:BlobContainer").inputs
    assert container["publicAccess"] == "None" and container["containerName"] == "models"


def test_prod_uses_a_customer_managed_key_through_its_own_identity(prod: Plan) -> None:
    encryption = prod.one("azure-native:storage:StorageAccount").inputs["encryption"]
    assert encryption["keySource"] == "Microsoft.Keyvault"
    assert encryption["keyVaultProperties"] == {
        "keyName": "models",
        "keyVaultUri": "https://tf-prod-kv.vault.azure.net",
    }
    grant = [r for r in prod.of_type("azure-native:authorization:RoleAssignment") if r.name.endswith("cmk")]
    assert grant[0].inputs["scope"] == prod.settings.bucket.kms_key
