"""AWS model bucket: a private, versioned S3 bucket, encrypted (with a KMS key when configured), TLS only,
whose every request is written to a second private bucket (S3 server access logs).

Why server access logs rather than CloudTrail data events: they need no trail (an account-wide resource, at
most five per region, often already owned by an organisation) and cost nothing but storage; each record
still names the requester's role, the operation, the key and the result. They arrive within hours, best
effort: enough to audit who read or replaced a model, not an alarm.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from infra.platform.aws.provider import AwsContext
from infra.platform.base import ModelBucket

LOGS_PREFIX = "models/"  # where the model bucket's records land in the log bucket


@dataclass(frozen=True)
class AwsBucket:
    """The neutral model bucket and the S3 bucket the reader's policy names."""

    component: ModelBucket
    bucket: aws.s3.Bucket


def _private(name: str, bucket: aws.s3.Bucket, opts: pulumi.ResourceOptions) -> None:
    """No public access, no ACLs: the bucket's owner owns every object."""
    aws.s3.BucketPublicAccessBlock(
        name,
        bucket=bucket.id,
        block_public_acls=True,
        block_public_policy=True,
        ignore_public_acls=True,
        restrict_public_buckets=True,
        opts=opts,
    )
    aws.s3.BucketOwnershipControls(
        name,
        bucket=bucket.id,
        rule=aws.s3.BucketOwnershipControlsRuleArgs(object_ownership="BucketOwnerEnforced"),
        opts=opts,
    )


def build_bucket(context: AwsContext) -> AwsBucket:
    """The bucket: public access blocked, owner-enforced, encrypted, versioned, old versions expired, every
    request logged."""
    bucket_settings, name = context.settings.bucket, context.name
    component = ModelBucket(name("models"), context.options)
    child = context.child(component)
    bucket = aws.s3.Bucket(
        name("models"), bucket_prefix=name("models-"), force_destroy=bucket_settings.force_destroy, opts=child
    )
    _private(name("models"), bucket, child)
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
        policy=bucket.arn.apply(lambda arn: json.dumps(_policy(_deny_insecure_transport(arn)))),
        opts=child,
    )
    _log_access(context, bucket, child)
    component.finish(
        bucket_name=bucket.bucket, uri=bucket.bucket.apply(lambda bucket_name: f"s3://{bucket_name}")
    )
    return AwsBucket(component, bucket)


def _log_access(context: AwsContext, source: aws.s3.Bucket, opts: pulumi.ResourceOptions) -> None:
    """A private, S3-encrypted log bucket (server access logs refuse KMS-encrypted targets) that only S3's
    log delivery for `source`, in this account, may write to; records expire after the retention."""
    name, days = context.name("model-access-logs"), context.aws.log_retention_days
    logs = aws.s3.Bucket(
        name,
        bucket_prefix=context.name("access-logs-"),
        force_destroy=context.settings.bucket.force_destroy,
        opts=opts,
    )
    _private(name, logs, opts)
    aws.s3.BucketServerSideEncryptionConfiguration(
        name,
        bucket=logs.id,
        rules=[
            aws.s3.BucketServerSideEncryptionConfigurationRuleArgs(
                apply_server_side_encryption_by_default=aws.s3.BucketServerSideEncryptionConfigurationRuleApplyServerSideEncryptionByDefaultArgs(
                    sse_algorithm="AES256"
                )
            )
        ],
        opts=opts,
    )
    aws.s3.BucketLifecycleConfiguration(
        name,
        bucket=logs.id,
        rules=[
            aws.s3.BucketLifecycleConfigurationRuleArgs(
                id="expire-access-logs",
                status="Enabled",
                filter=aws.s3.BucketLifecycleConfigurationRuleFilterArgs(prefix=""),
                expiration=aws.s3.BucketLifecycleConfigurationRuleExpirationArgs(days=days),
            )
        ],
        opts=opts,
    )
    account = aws.get_caller_identity_output(opts=pulumi.InvokeOutputOptions(parent=source))
    policy = aws.s3.BucketPolicy(
        name,
        bucket=logs.id,
        policy=pulumi.Output.all(logs.arn, source.arn, account.account_id).apply(
            lambda args: json.dumps(
                _policy(_deny_insecure_transport(args[0]), _log_delivery(args[0], args[1], args[2]))
            )
        ),
        opts=opts,
    )
    aws.s3.BucketLogging(
        context.name("models"),
        bucket=source.id,
        target_bucket=logs.id,
        target_prefix=LOGS_PREFIX,
        # Records partitioned by the day of the request (what Athena and lifecycle rules read best).
        target_object_key_format={"partitioned_prefix": {"partition_date_source": "EventTime"}},
        opts=pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(depends_on=[policy])),
    )


def _policy(*statements: dict[str, object]) -> dict[str, object]:
    return {"Version": "2012-10-17", "Statement": list(statements)}


def _deny_insecure_transport(bucket_arn: str) -> dict[str, object]:
    return {
        "Sid": "DenyInsecureTransport",
        "Effect": "Deny",
        "Principal": "*",
        "Action": "s3:*",
        "Resource": [bucket_arn, f"{bucket_arn}/*"],
        "Condition": {"Bool": {"aws:SecureTransport": "false"}},
    }


def _log_delivery(logs_arn: str, source_arn: str, account_id: str) -> dict[str, object]:
    """S3's log delivery may write records of `source` into the log bucket, and nothing else may."""
    return {
        "Sid": "S3ServerAccessLogs",
        "Effect": "Allow",
        "Principal": {"Service": "logging.s3.amazonaws.com"},
        "Action": "s3:PutObject",
        "Resource": f"{logs_arn}/{LOGS_PREFIX}*",
        "Condition": {
            "ArnLike": {"aws:SourceArn": source_arn},
            "StringEquals": {"aws:SourceAccount": account_id},
        },
    }
