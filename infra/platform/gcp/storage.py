"""GCP model bucket: a private, versioned GCS bucket, encrypted with a Cloud KMS key when configured."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_gcp as gcp

from infra.platform.base import ModelBucket
from infra.platform.gcp.provider import GcpContext


@dataclass(frozen=True)
class GcpBucket:
    """The neutral model bucket and the GCS bucket the reader is granted on."""

    component: ModelBucket
    bucket: gcp.storage.Bucket


def build_bucket(context: GcpContext) -> GcpBucket:
    """The model bucket: uniform access, public access prevented, versioned, optional CMEK."""
    bucket_settings = context.settings.bucket
    component = ModelBucket(context.name("models"), context.options)
    child = context.child(component)
    depends: list[pulumi.Resource] = []
    if bucket_settings.kms_key:
        # GCS encrypts with the key through the project's storage service agent, which needs the key.
        agent = gcp.storage.get_project_service_account_output(
            project=context.project, opts=context.invoke_options(component)
        )
        depends.append(
            gcp.kms.CryptoKeyIAMMember(
                context.name("models-cmek"),
                crypto_key_id=bucket_settings.kms_key,
                role="roles/cloudkms.cryptoKeyEncrypterDecrypter",
                member=agent.email_address.apply(lambda email: f"serviceAccount:{email}"),
                opts=child,
            )
        )
    bucket = gcp.storage.Bucket(
        context.name("models"),
        location=context.settings.region.upper(),
        storage_class="STANDARD",
        uniform_bucket_level_access=True,
        public_access_prevention="enforced",
        versioning=gcp.storage.BucketVersioningArgs(enabled=True),
        # Google-managed keys unless a Cloud KMS key is configured.
        encryption=gcp.storage.BucketEncryptionArgs(default_kms_key_name=bucket_settings.kms_key)
        if bucket_settings.kms_key
        else None,
        lifecycle_rules=[
            gcp.storage.BucketLifecycleRuleArgs(
                action=gcp.storage.BucketLifecycleRuleActionArgs(type="Delete"),
                condition=gcp.storage.BucketLifecycleRuleConditionArgs(
                    days_since_noncurrent_time=bucket_settings.noncurrent_version_days, with_state="ARCHIVED"
                ),
            ),
            gcp.storage.BucketLifecycleRuleArgs(
                action=gcp.storage.BucketLifecycleRuleActionArgs(type="AbortIncompleteMultipartUpload"),
                condition=gcp.storage.BucketLifecycleRuleConditionArgs(age=2),
            ),
        ],
        force_destroy=bucket_settings.force_destroy,
        opts=pulumi.ResourceOptions(parent=component, depends_on=depends),
    )
    component.finish(
        bucket_name=bucket.name, uri=bucket.name.apply(lambda bucket_name: f"gs://{bucket_name}")
    )
    return GcpBucket(component, bucket)
