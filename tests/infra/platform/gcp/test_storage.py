"""GCP model bucket (gcp/storage.py): uniform access, private, versioned, CMEK in prod."""

from __future__ import annotations

from infra.offline import Plan


def test_bucket_is_uniform_private_versioned_and_expires_old_versions(dev: Plan) -> None:
    bucket = dev.one("gcp:storage/bucket:Bucket").inputs
    assert bucket["uniformBucketLevelAccess"] is True and bucket["publicAccessPrevention"] == "enforced"
    assert bucket["versioning"] == {"enabled": True}
    assert "encryption" not in bucket  # Google-managed keys in dev
    expiry = [r for r in bucket["lifecycleRules"] if r["action"]["type"] == "Delete"]
    assert expiry[0]["condition"]["daysSinceNoncurrentTime"] == 30


def test_prod_bucket_uses_the_configured_cmek_and_grants_the_storage_agent(prod: Plan) -> None:
    key = "projects/your-project-id/locations/europe-west4/keyRings/tritonform/cryptoKeys/models"
    assert prod.one("gcp:storage/bucket:Bucket").inputs["encryption"] == {"defaultKmsKeyName": key}
    grant = prod.one("gcp:kms/cryptoKeyIAMMember:CryptoKeyIAMMember").inputs
    assert grant["cryptoKeyId"] == key and grant["member"].endswith(
        "@gs-project-accounts.iam.gserviceaccount.com"
    )
