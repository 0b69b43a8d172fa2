"""GCP services: the Google APIs the stack calls, enabled in the project before anything else is created.

A fresh project has almost none of them on, so without this step the first `pulumi up` fails on its first
create. The services stay enabled on `pulumi destroy`: other things in the user's project may use them.
"""

from __future__ import annotations

import dataclasses

import pulumi
import pulumi_gcp as gcp

from infra.platform.gcp.provider import GcpContext

# Each API and what of ours calls it.
SERVICES: dict[str, str] = {
    "serviceusage.googleapis.com": "enabling the other services",
    "cloudresourcemanager.googleapis.com": "project IAM grants and audit configs",
    "compute.googleapis.com": "VPC, Cloud NAT, the load balancer, its IP, Cloud Armor, SSL policy, firewall",
    "container.googleapis.com": "GKE, its node pools and the Gateway controller",
    "artifactregistry.googleapis.com": "the image repository",
    "certificatemanager.googleapis.com": "the edge's Google-managed certificate and its map",
    "iam.googleapis.com": "the nodes' and the readers' service accounts",
    "iamcredentials.googleapis.com": "Workload Identity: tokens the GKE metadata server mints for pods",
    "sts.googleapis.com": "Workload Identity: the token exchange",
    "storage.googleapis.com": "the model bucket",
    "logging.googleapis.com": "GKE logs, the load balancer's request logs, the bucket's data-access logs",
    "monitoring.googleapis.com": "GKE system metrics",
}


def enable_services(context: GcpContext) -> GcpContext:
    """Enable every service in `SERVICES`; the returned context makes each GCP resource wait for them."""
    services = tuple(
        gcp.projects.Service(
            context.name("api", service.split(".")[0]),
            project=context.project,
            service=service,
            # Leave them on at destroy, and never switch off what depends on them.
            disable_on_destroy=False,
            disable_dependent_services=False,
            opts=context.options,
        )
        for service in SERVICES
    )
    # A transformation reaches every child of the components built with these options, which an
    # explicit `depends_on` on a component would not (children do not inherit it).
    options = pulumi.ResourceOptions.merge(
        context.options, pulumi.ResourceOptions(transformations=[_after(services)])
    )
    return dataclasses.replace(context, options=options, services=services)


def _after(services: tuple[gcp.projects.Service, ...]) -> pulumi.ResourceTransformation:
    """A transformation that makes a GCP resource depend on the enabled services."""

    def depend(args: pulumi.ResourceTransformationArgs) -> pulumi.ResourceTransformationResult | None:
        if not args.type_.startswith("gcp:"):
            return None
        extra = pulumi.ResourceOptions(depends_on=list(services))
        return pulumi.ResourceTransformationResult(args.props, pulumi.ResourceOptions.merge(args.opts, extra))

    return depend
