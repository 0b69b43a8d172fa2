"""GCP container registry: an Artifact Registry Docker repository that only the nodes may read, pushed to
with the deployer's own short-lived OAuth token."""

from __future__ import annotations

import pulumi
import pulumi_gcp as gcp

from infra.platform.base import IMAGE_NAMES, ContainerRegistry
from infra.platform.gcp.cluster import GcpCluster
from infra.platform.gcp.provider import GcpContext


def build_registry(context: GcpContext, cluster: GcpCluster) -> ContainerRegistry:
    """A Docker repository the nodes may read, and short-lived push credentials of whoever runs Pulumi."""
    region = context.settings.region
    component = ContainerRegistry(context.name("registry"), context.options)
    child = context.child(component)
    repo = gcp.artifactregistry.Repository(
        context.name("images"),
        repository_id=context.name("images"),
        location=region,
        format="DOCKER",
        description="tritonform images (Triton with our runtime deps, the gateway)",
        opts=child,
    )
    # Read access on this repository only, for the nodes' service account (the kubelet pulls with it).
    gcp.artifactregistry.RepositoryIamMember(
        context.name("images-nodes"),
        project=context.project,
        location=region,
        repository=repo.name,
        role="roles/artifactregistry.reader",
        member=cluster.node_account.member,
        opts=child,
    )
    # The deployer's own OAuth access token (about an hour): Artifact Registry's documented docker login
    # is user `oauth2accesstoken` with such a token, so no key file is ever created.
    client = gcp.organizations.get_client_config_output(opts=pulumi.InvokeOptions(parent=component))
    address = f"{region}-docker.pkg.dev"
    base = pulumi.Output.concat(address, "/", context.project, "/", repo.repository_id)
    component.finish(
        address=address,
        username="oauth2accesstoken",
        password=pulumi.Output.secret(client.access_token),
        repositories={image: pulumi.Output.concat(base, "/", image) for image in IMAGE_NAMES},
    )
    return component
