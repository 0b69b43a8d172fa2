"""GCP model bucket: a private, versioned GCS bucket, encrypted with a Cloud KMS key when configured."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pulumi
import pulumi_gcp as gcp

from infra.platform.base import ModelBucket

if TYPE_CHECKING:
    from infra.platform.gcp import GcpPlatform


def gcs_model_bucket(
    cloud: GcpPlatform, opts: pulumi.ResourceOptions
) -> tuple[ModelBucket, gcp.storage.Bucket]:
    """The model bucket: uniform access, public access prevented, versioned, optional CMEK."""
    b = cloud.settings.bucket
    component = ModelBucket(cloud.name("models"), opts)
    child = cloud.child(component)
    depends: list[pulumi.Resource] = []
    if b.kms_key:
        # GCS encrypts with the key through the project's storage service agent, which needs the key.
        agent = gcp.storage.get_project_service_account_output(
            project=cloud.gcp.project, opts=pulumi.InvokeOptions(parent=component)
        )
        depends.append(
            gcp.kms.CryptoKeyIAMMember(
                cloud.name("models-cmek"),
                crypto_key_id=b.kms_key,
                role="roles/cloudkms.cryptoKeyEncrypterDecrypter",
                member=agent.email_address.apply(lambda email: f"serviceAccount:{email}"),
                opts=child,
            )
        )
    bucket = gcp.storage.Bucket(
        cloud.name("models"),
        location=cloud.settings.region.upper(),
        storage_class="STANDARD",
        uniform_bucket_level_access=True,
        public_access_prevention="enforced",
        versioning=gcp.storage.BucketVersioningArgs(enabled=True),
        # Google-managed keys unless a Cloud KMS key is configured.
        encryption=gcp.storage.BucketEncryptionArgs(default_kms_key_name=b.kms_key) if b.kms_key else None,
        lifecycle_rules=[
            gcp.storage.BucketLifecycleRuleArgs(
                action=gcp.storage.BucketLifecycleRuleActionArgs(type="Delete"),
                condition=gcp.storage.BucketLifecycleRuleConditionArgs(
                    days_since_noncurrent_time=b.noncurrent_version_days, with_state="ARCHIVED"
                ),
            ),
            gcp.storage.BucketLifecycleRuleArgs(
                action=gcp.storage.BucketLifecycleRuleActionArgs(type="AbortIncompleteMultipartUpload"),
                condition=gcp.storage.BucketLifecycleRuleConditionArgs(age=2),
            ),
        ],
        force_destroy=b.force_destroy,
        opts=pulumi.ResourceOptions(parent=component, depends_on=depends),
    )
    component.finish(bucket_name=bucket.name, uri=bucket.name.apply(lambda name: f"gs://{name}"))
    return component, bucket
