"""GCP reader identity (Workload Identity): a Google service account only Triton's Kubernetes service account
may act as, with read access on the model bucket alone."""

from __future__ import annotations

import pulumi
import pulumi_gcp as gcp

from infra.platform.base import ReaderIdentity, ServiceAccountRef
from infra.platform.gcp.cluster import GcpCluster
from infra.platform.gcp.provider import GcpContext
from infra.platform.gcp.storage import GcpBucket


def build_reader(
    context: GcpContext, cluster: GcpCluster, bucket: GcpBucket, service_account: ServiceAccountRef
) -> ReaderIdentity:
    """The reader's service account, its Workload Identity binding and its bucket-level read grant."""
    component = ReaderIdentity(context.name("model-reader"), context.options)
    child = context.child(component)
    account = gcp.serviceaccount.Account(
        context.name("reader"),
        account_id=context.name("reader"),
        display_name="Triton model reader",
        description=f"Read-only access to the model bucket for {service_account.subject}",
        opts=child,
    )
    # Only the Triton Kubernetes service account may act as this Google service account.
    gcp.serviceaccount.IAMMember(
        context.name("reader-workload-identity"),
        service_account_id=account.name,
        role="roles/iam.workloadIdentityUser",
        member=(
            f"serviceAccount:{context.project}.svc.id.goog"
            f"[{service_account.namespace}/{service_account.name}]"
        ),
        opts=pulumi.ResourceOptions(parent=component, depends_on=[cluster.gke]),
    )
    # Bucket-level, read-only: no project-wide storage role.
    gcp.storage.BucketIAMMember(
        context.name("reader-objects"),
        bucket=bucket.bucket.name,
        role="roles/storage.objectViewer",
        member=account.member,
        opts=child,
    )
    component.finish(
        identity_id=account.email,
        service_account_annotations={"iam.gke.io/gcp-service-account": account.email},
        # Triton's GCS client falls back to the metadata server, which Workload Identity serves.
        env={},
    )
    return component
