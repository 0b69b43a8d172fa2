"""GCP provider: the stack's project, region and labels on every resource, and the context helpers take."""

from __future__ import annotations

import re
from dataclasses import dataclass

import pulumi
import pulumi_gcp as gcp

from infra.platform.base import CloudContext
from infra.settings import GcpSettings, SettingsError, StackSettings

KMS_KEY = re.compile(r"^projects/[^/]+/locations/[^/]+/keyRings/[^/]+/cryptoKeys/[^/]+$")


@dataclass(frozen=True)
class GcpContext(CloudContext):
    """The context of a GCP stack: also its `gcp:` settings block. `tags` are GCP labels.

    `services` are the enabled Google APIs (services.py): provider functions that need one wait for them.
    """

    gcp: GcpSettings
    services: tuple[pulumi.Resource, ...] = ()

    @property
    def project(self) -> str:
        return self.gcp.project

    @property
    def location(self) -> str:
        """Where the cluster and its pools live: the zone of a zonal cluster, else the region."""
        return self.gcp.zone if self.gcp.zonal and self.gcp.zone else self.settings.region

    def invoke_options(self, parent: pulumi.Resource) -> pulumi.InvokeOutputOptions:
        """Options of a provider function called for `parent`: after the services it may need."""
        return pulumi.InvokeOutputOptions(parent=parent, depends_on=list(self.services))


def gcp_labels(tags: dict[str, str]) -> dict[str, str]:
    """GCP labels allow only lowercase letters, digits, '-' and '_' (63 characters at most)."""

    def clean(text: str) -> str:
        return re.sub(r"[^a-z0-9_-]", "-", text.lower())[:63]

    return {clean(key): clean(value) for key, value in tags.items()}


def cloud_context(settings: StackSettings) -> GcpContext:
    """Check the GCP-only settings, then create the stack's explicit GCP provider."""
    kms_key = settings.bucket.kms_key
    if kms_key is not None and not KMS_KEY.match(kms_key):
        raise SettingsError(
            [
                f"tritonform:bucket.kmsKey: {kms_key!r} is not a Cloud KMS key; use "
                "projects/PROJECT/locations/LOCATION/keyRings/RING/cryptoKeys/KEY"
            ]
        )
    assert settings.gcp is not None  # settings refuse a GCP stack without a `gcp:` block
    labels = gcp_labels(settings.resource_tags)
    provider = gcp.Provider(
        "gcp", project=settings.gcp.project, region=settings.region, default_labels=labels
    )
    options = pulumi.ResourceOptions(providers={"gcp": provider})
    return GcpContext(settings, options, labels, settings.gcp)
