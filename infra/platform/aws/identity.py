"""AWS reader identity (IRSA): an IAM role only Triton's Kubernetes service account may assume, reading only
the model bucket."""

from __future__ import annotations

import json
from typing import Any

import pulumi
import pulumi_aws as aws

from infra.platform.aws.cluster import AwsCluster
from infra.platform.aws.storage import AwsBucket
from infra.platform.base import CloudContext, ReaderIdentity, ServiceAccountRef


def irsa_trust(cluster: AwsCluster, account: ServiceAccountRef) -> pulumi.Output[str]:
    """A trust policy that lets only `account`'s projected tokens from this cluster assume the role."""
    issuer_host = cluster.component.oidc_issuer_url.apply(lambda url: url.removeprefix("https://"))
    return pulumi.Output.all(cluster.oidc_provider.arn, issuer_host).apply(
        lambda args: _irsa_trust(args[0], args[1], account.subject)
    )


def build_reader(
    context: CloudContext, cluster: AwsCluster, bucket: AwsBucket, service_account: ServiceAccountRef
) -> ReaderIdentity:
    """The read-only role, bound to `service_account` through the cluster's OIDC provider."""
    kms_key = context.settings.bucket.kms_key
    component = ReaderIdentity(context.name("model-reader"), context.options)
    role = aws.iam.Role(
        context.name("model-reader"),
        description=f"Read-only access to the model bucket for {service_account.subject}",
        assume_role_policy=irsa_trust(cluster, service_account),
        max_session_duration=3600,
        opts=context.child(component),
    )
    aws.iam.RolePolicy(
        context.name("model-reader"),
        role=role.id,
        policy=bucket.bucket.arn.apply(lambda arn: _bucket_read_policy(arn, kms_key)),
        opts=context.child(component),
    )
    region = context.settings.region
    component.finish(
        identity_id=role.arn,
        service_account_annotations={"eks.amazonaws.com/role-arn": role.arn},
        env={"AWS_DEFAULT_REGION": region, "AWS_REGION": region},
    )
    return component


def _irsa_trust(oidc_arn: str, issuer_host: str, subject: str) -> str:
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": {"Federated": oidc_arn},
                    "Action": "sts:AssumeRoleWithWebIdentity",
                    "Condition": {
                        "StringEquals": {
                            f"{issuer_host}:sub": subject,
                            f"{issuer_host}:aud": "sts.amazonaws.com",
                        }
                    },
                }
            ],
        }
    )


def _bucket_read_policy(bucket_arn: str, kms_key: str | None) -> str:
    statements: list[dict[str, Any]] = [
        {
            "Sid": "ListModelBucket",
            "Effect": "Allow",
            "Action": ["s3:ListBucket", "s3:GetBucketLocation"],
            "Resource": bucket_arn,
        },
        {
            "Sid": "ReadModelObjects",
            "Effect": "Allow",
            "Action": ["s3:GetObject", "s3:GetObjectVersion"],
            "Resource": f"{bucket_arn}/*",
        },
    ]
    if kms_key:
        statements.append(
            {"Sid": "DecryptModelObjects", "Effect": "Allow", "Action": "kms:Decrypt", "Resource": kms_key}
        )
    return json.dumps({"Version": "2012-10-17", "Statement": statements})
