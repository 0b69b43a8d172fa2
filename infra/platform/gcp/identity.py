"""GCP reader identities (Workload Identity): a Google service account that only one Kubernetes service
account may act as, reading the model bucket, narrowed by an IAM condition to the objects it may read."""

from __future__ import annotations

import functools
import json

import pulumi
import pulumi_gcp as gcp

from infra.platform.base import (
    TRAINER_READ_PREFIX,
    TRAINER_WRITE_PREFIX,
    EgressEndpoint,
    ReaderIdentity,
    ReadScope,
    ServiceAccountRef,
    TrainerIdentity,
)
from infra.platform.gcp.cluster import GcpCluster
from infra.platform.gcp.provider import GcpContext
from infra.platform.gcp.storage import GcpBucket

# Triton's resource names: <prefix>-reader, -reader-workload-identity, -reader-objects.
TRITON_READER = "reader"
GATEWAY_READER = "gw-reader"  # service account ids are 6-30 characters: <prefix (<=20)>-gw-reader fits
TRAINER = "trainer"


# Pods reach GKE's metadata server (which mints their Workload Identity tokens) at the metadata address;
# with Dataplane V2 the node's gke-metadata-server answers on 169.254.169.252:988, which a pod's egress
# network policy must allow (GKE docs, Workload Identity Federation for GKE: restrictions).
METADATA_SERVER_EGRESS = (
    EgressEndpoint("169.254.169.254/32", 80),
    EgressEndpoint("169.254.169.252/32", 988),
)


def object_condition(bucket_name: str, scope: ReadScope) -> str:
    """The IAM condition (CEL) that admits only the objects a narrowed `scope` names.

    Object requests carry `resource.name` = `projects/_/buckets/<bucket>/objects/<object name>`; a
    bucket-level request (listing) carries the bucket's name, so it matches no object prefix and is refused.
    """
    objects = f"projects/_/buckets/{bucket_name}/objects/{scope.prefix}"
    expression = f"resource.name.startsWith({json.dumps(objects)})"
    if scope.suffixes:
        ends = " || ".join(f"resource.name.endsWith({json.dumps(suffix)})" for suffix in scope.suffixes)
        expression += f" && ({ends})"
    return expression


def build_reader(
    context: GcpContext,
    cluster: GcpCluster,
    bucket: GcpBucket,
    service_account: ServiceAccountRef,
    scope: ReadScope,
    key: str = TRITON_READER,
) -> ReaderIdentity:
    """A service account, its Workload Identity binding and a read grant on the bucket limited to `scope`."""
    component = ReaderIdentity(context.name(f"model-{key}"), context.options)
    child = context.child(component)
    account = _workload_account(
        context,
        cluster,
        component,
        key,
        service_account,
        display_name=f"Model reader for {service_account.name}",
        description=f"Read-only access to the model bucket for {service_account.subject}",
    )
    # Bucket-level, read-only (no project-wide storage role); IAM conditions need uniform bucket access,
    # which the model bucket has.
    narrowed = bool(scope.prefix or scope.suffixes)
    condition = (
        gcp.storage.BucketIAMMemberConditionArgs(
            title=f"{key}-objects",
            description=f"Objects under {scope.prefix or '/'} ending in {' or '.join(scope.suffixes) or '*'}",
            expression=bucket.bucket.name.apply(lambda name: object_condition(name, scope)),
        )
        if narrowed
        else None
    )
    gcp.storage.BucketIAMMember(
        context.name(f"{key}-objects"),
        bucket=bucket.bucket.name,
        role="roles/storage.objectViewer",
        member=account.member,
        condition=condition,
        opts=child,
    )
    _finish(component, account)
    return component


def _condition_for(prefix: str, bucket_name: str) -> str:
    """`prefix_condition` with the prefix first, for `Output.apply` over the bucket's name."""
    return prefix_condition(bucket_name, prefix)


def prefix_condition(bucket_name: str, prefix: str) -> str:
    """The IAM condition (CEL) admitting only objects whose name starts with `prefix`."""
    return f"resource.name.startsWith({json.dumps(f'projects/_/buckets/{bucket_name}/objects/{prefix}')})"


def build_trainer(
    context: GcpContext, cluster: GcpCluster, bucket: GcpBucket, service_account: ServiceAccountRef
) -> TrainerIdentity:
    """The training Jobs' service account: read objects under `datasets/`, create and read objects under
    `checkpoints/`, each grant narrowed by an IAM condition on the object name; nothing else."""
    component = TrainerIdentity(context.name("model-trainer"), context.options)
    child = context.child(component)
    account = _workload_account(
        context,
        cluster,
        component,
        TRAINER,
        service_account,
        display_name=f"Trainer for {service_account.name}",
        description=f"Reads datasets/, writes checkpoints/ of the model bucket for {service_account.subject}",
    )
    grants = (
        ("datasets", "roles/storage.objectViewer", TRAINER_READ_PREFIX),
        ("checkpoints-read", "roles/storage.objectViewer", TRAINER_WRITE_PREFIX),
        ("checkpoints-write", "roles/storage.objectCreator", TRAINER_WRITE_PREFIX),
    )
    for key, role, prefix in grants:
        gcp.storage.BucketIAMMember(
            context.name(f"{TRAINER}-{key}"),
            bucket=bucket.bucket.name,
            role=role,
            member=account.member,
            condition=gcp.storage.BucketIAMMemberConditionArgs(
                title=f"{TRAINER}-{key}",
                description=f"Objects under {prefix}",
                expression=bucket.bucket.name.apply(functools.partial(_condition_for, prefix)),
            ),
            opts=child,
        )
    _finish(component, account)
    return component


def _workload_account(
    context: GcpContext,
    cluster: GcpCluster,
    component: pulumi.ComponentResource,
    key: str,
    service_account: ServiceAccountRef,
    *,
    display_name: str,
    description: str,
) -> gcp.serviceaccount.Account:
    """A Google service account that only `service_account` (Kubernetes) may act as."""
    account = gcp.serviceaccount.Account(
        context.name(key),
        account_id=context.name(key),
        display_name=display_name,
        description=description,
        opts=context.child(component),
    )
    gcp.serviceaccount.IAMMember(
        context.name(f"{key}-workload-identity"),
        service_account_id=account.name,
        role="roles/iam.workloadIdentityUser",
        member=(
            f"serviceAccount:{context.project}.svc.id.goog"
            f"[{service_account.namespace}/{service_account.name}]"
        ),
        opts=pulumi.ResourceOptions(parent=component, depends_on=[cluster.gke]),
    )
    return account


def _finish(component: ReaderIdentity, account: gcp.serviceaccount.Account) -> None:
    """The pod side of Workload Identity: the annotation naming the Google account. Google's clients fall
    back to the metadata server, which Workload Identity serves, so no environment is needed."""
    component.finish(
        identity_id=account.email,
        service_account_annotations={"iam.gke.io/gcp-service-account": account.email},
        env={},
        egress=METADATA_SERVER_EGRESS,
    )
