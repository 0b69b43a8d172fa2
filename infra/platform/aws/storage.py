"""AWS model bucket: a private, versioned S3 bucket, encrypted (with a KMS key when configured), TLS only."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pulumi_aws as aws

from infra.platform.base import CloudContext, ModelBucket


@dataclass(frozen=True)
class AwsBucket:
    """The neutral model bucket and the S3 bucket the reader's policy names."""

    component: ModelBucket
    bucket: aws.s3.Bucket


def build_bucket(context: CloudContext) -> AwsBucket:
    """The bucket: public access blocked, owner-enforced, encrypted, versioned, old versions expired."""
    bucket_settings, name = context.settings.bucket, context.name
    component = ModelBucket(name("models"), context.options)
    child = context.child(component)
    bucket = aws.s3.Bucket(
        name("models"), bucket_prefix=name("models-"), force_destroy=bucket_settings.force_destroy, opts=child
    )
    aws.s3.BucketPublicAccessBlock(
        name("models"),
        bucket=bucket.id,
        block_public_acls=True,
        block_public_policy=True,
        ignore_public_acls=True,
        restrict_public_buckets=True,
        opts=child,
    )
    aws.s3.BucketOwnershipControls(
        name("models"),
        bucket=bucket.id,
        rule=aws.s3.BucketOwnershipControlsRuleArgs(object_ownership="BucketOwnerEnforced"),
        opts=child,
    )
    encryption = aws.s3.BucketServerSideEncryptionConfigurationRuleApplyServerSideEncryptionByDefaultArgs(
        sse_algorithm="aws:kms" if bucket_settings.kms_key else "AES256",
        kms_master_key_id=bucket_settings.kms_key,
    )
    aws.s3.BucketServerSideEncryptionConfiguration(
        name("models"),
        bucket=bucket.id,
        rules=[
            aws.s3.BucketServerSideEncryptionConfigurationRuleArgs(
                apply_server_side_encryption_by_default=encryption,
                bucket_key_enabled=bool(bucket_settings.kms_key),
            )
        ],
        opts=child,
    )
    aws.s3.BucketVersioning(
        name("models"),
        bucket=bucket.id,
        versioning_configuration=aws.s3.BucketVersioningVersioningConfigurationArgs(status="Enabled"),
        opts=child,
    )
    aws.s3.BucketLifecycleConfiguration(
        name("models"),
        bucket=bucket.id,
        rules=[
            aws.s3.BucketLifecycleConfigurationRuleArgs(
                id="expire-old-model-versions",
                status="Enabled",
                filter=aws.s3.BucketLifecycleConfigurationRuleFilterArgs(prefix=""),
                noncurrent_version_expiration=aws.s3.BucketLifecycleConfigurationRuleNoncurrentVersionExpirationArgs(
                    noncurrent_days=bucket_settings.noncurrent_version_days
                ),
                abort_incomplete_multipart_upload=aws.s3.BucketLifecycleConfigurationRuleAbortIncompleteMultipartUploadArgs(
                    days_after_initiation=2
                ),
            )
        ],
        opts=child,
    )
    aws.s3.BucketPolicy(
        name("models-tls-only"),
        bucket=bucket.id,
        policy=bucket.arn.apply(_deny_insecure_transport),
        opts=child,
    )
    component.finish(
        bucket_name=bucket.bucket, uri=bucket.bucket.apply(lambda bucket_name: f"s3://{bucket_name}")
    )
    return AwsBucket(component, bucket)


def _deny_insecure_transport(bucket_arn: str) -> str:
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Sid": "DenyInsecureTransport",
                    "Effect": "Deny",
                    "Principal": "*",
                    "Action": "s3:*",
                    "Resource": [bucket_arn, f"{bucket_arn}/*"],
                    "Condition": {"Bool": {"aws:SecureTransport": "false"}},
                }
            ],
        }
    )
