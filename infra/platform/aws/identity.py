"""AWS reader identities (IRSA): IAM roles only one Kubernetes service account may assume, each reading only
what its `ReadScope` names in the model bucket (Triton: all of it; the gateway: its tokenizer files), and
the trainer's role (read `datasets/`, write `checkpoints/`)."""

from __future__ import annotations

import json
from typing import Any

import pulumi
import pulumi_aws as aws

from infra.platform.aws.cluster import AwsCluster, service_account_trust
from infra.platform.aws.storage import AwsBucket
from infra.platform.base import (
    TRAINER_READ_PREFIX,
    TRAINER_WRITE_PREFIX,
    CloudContext,
    ReaderIdentity,
    ReadScope,
    ServiceAccountRef,
    TrainerIdentity,
)


def irsa_trust(cluster: AwsCluster, account: ServiceAccountRef) -> pulumi.Output[str]:
    """A trust policy that lets only `account`'s projected tokens from this cluster assume the role."""
    return service_account_trust(cluster.oidc_provider, cluster.component.oidc_issuer_url, account)


def build_reader(
    context: CloudContext,
    cluster: AwsCluster,
    bucket: AwsBucket,
    service_account: ServiceAccountRef,
    scope: ReadScope,
    name: str = "model-reader",
) -> ReaderIdentity:
    """A read-only role for `scope`, bound to `service_account` through the cluster's OIDC provider.

    `name` names the component, the role and its policy (`<stack>-model-reader` for Triton's)."""
    kms_key = context.settings.bucket.kms_key
    component = ReaderIdentity(context.name(name), context.options)
    role = aws.iam.Role(
        context.name(name),
        description=f"Read-only access to the model bucket for {service_account.subject}",
        assume_role_policy=irsa_trust(cluster, service_account),
        max_session_duration=3600,
        opts=context.child(component),
    )
    aws.iam.RolePolicy(
        context.name(name),
        role=role.id,
        policy=bucket.bucket.arn.apply(lambda arn: bucket_read_policy(arn, scope, kms_key)),
        opts=context.child(component),
    )
    _finish(component, role, context.settings.region)
    return component


def bucket_read_policy(bucket_arn: str, scope: ReadScope, kms_key: str | None) -> str:
    """The narrowest read policy for `scope`.

    The whole bucket: list it and read every object (Triton copies the repository). Named files
    (`scope.suffixes`): read exactly the objects `<prefix>*<suffix>`, no listing; the reader asks for known
    keys, and without s3:ListBucket a missing one answers 403 instead of 404. A prefix alone: list and read
    under it."""
    statements: list[dict[str, Any]]
    if scope.suffixes:
        statements = [
            {
                "Sid": "ReadNamedModelFiles",
                "Effect": "Allow",
                "Action": "s3:GetObject",
                "Resource": [f"{bucket_arn}/{scope.prefix}*{suffix}" for suffix in scope.suffixes],
            }
        ]
    else:
        listing: dict[str, Any] = {
            "Sid": "ListModelBucket",
            "Effect": "Allow",
            "Action": ["s3:ListBucket", "s3:GetBucketLocation"],
            "Resource": bucket_arn,
        }
        if scope.prefix:  # GetBucketLocation carries no s3:prefix, so a listing limited to one drops it
            listing["Action"] = "s3:ListBucket"
            listing["Condition"] = {"StringLike": {"s3:prefix": [f"{scope.prefix}*"]}}
        statements = [
            listing,
            {
                "Sid": "ReadModelObjects",
                "Effect": "Allow",
                "Action": ["s3:GetObject", "s3:GetObjectVersion"],
                "Resource": f"{bucket_arn}/{scope.prefix}*",
            },
        ]
    if kms_key:
        statements.append(
            {"Sid": "DecryptModelObjects", "Effect": "Allow", "Action": "kms:Decrypt", "Resource": kms_key}
        )
    return json.dumps({"Version": "2012-10-17", "Statement": statements})


def build_trainer(
    context: CloudContext, cluster: AwsCluster, bucket: AwsBucket, service_account: ServiceAccountRef
) -> TrainerIdentity:
    """The training Jobs' role: read `datasets/`, read and write `checkpoints/`, bound to one account."""
    kms_key = context.settings.bucket.kms_key
    component = TrainerIdentity(context.name("trainer"), context.options)
    role = aws.iam.Role(
        context.name("trainer"),
        description=f"Read datasets/, write checkpoints/ of the model bucket for {service_account.subject}",
        assume_role_policy=irsa_trust(cluster, service_account),
        max_session_duration=3600 * 12,  # a long run's upload happens at its end
        opts=context.child(component),
    )
    aws.iam.RolePolicy(
        context.name("trainer"),
        role=role.id,
        policy=bucket.bucket.arn.apply(lambda arn: trainer_policy(arn, kms_key)),
        opts=context.child(component),
    )
    _finish(component, role, context.settings.region)
    return component


def trainer_policy(bucket_arn: str, kms_key: str | None) -> str:
    """List and read under `datasets/`; list, read and write under `checkpoints/`; nothing else."""
    read, write = TRAINER_READ_PREFIX, TRAINER_WRITE_PREFIX
    statements: list[dict[str, Any]] = [
        {
            "Sid": "ListTrainingPrefixes",
            "Effect": "Allow",
            "Action": "s3:ListBucket",
            "Resource": bucket_arn,
            "Condition": {"StringLike": {"s3:prefix": [f"{read}*", f"{write}*"]}},
        },
        {
            "Sid": "ReadDatasets",
            "Effect": "Allow",
            "Action": ["s3:GetObject", "s3:GetObjectVersion"],
            "Resource": f"{bucket_arn}/{read}*",
        },
        {
            "Sid": "WriteCheckpoints",
            "Effect": "Allow",
            "Action": ["s3:GetObject", "s3:PutObject", "s3:AbortMultipartUpload"],
            "Resource": f"{bucket_arn}/{write}*",
        },
    ]
    if kms_key:
        statements.append(
            {
                "Sid": "UseModelKey",
                "Effect": "Allow",
                "Action": ["kms:Decrypt", "kms:GenerateDataKey"],
                "Resource": kms_key,
            }
        )
    return json.dumps({"Version": "2012-10-17", "Statement": statements})


def _finish(component: ReaderIdentity, role: aws.iam.Role, region: str) -> None:
    """The pod side of IRSA: the annotation naming the role (EKS's webhook injects the web identity token)
    and the stack's region for the SDKs."""
    component.finish(
        identity_id=role.arn,
        service_account_annotations={"eks.amazonaws.com/role-arn": role.arn},
        env={"AWS_DEFAULT_REGION": region, "AWS_REGION": region},
    )
