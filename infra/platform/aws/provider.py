"""AWS provider: the stack's region and default tags on every resource, and the context helpers take."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from infra.platform.base import CloudContext
from infra.settings import AwsSettings, StackSettings


@dataclass(frozen=True)
class AwsContext(CloudContext):
    """The context of an AWS stack: also its `aws:` settings block (defaults when the stack has none)."""

    aws: AwsSettings


def cloud_context(settings: StackSettings) -> AwsContext:
    """Create the stack's explicit AWS provider; every component of the stack is created through it."""
    tags = settings.resource_tags
    provider = aws.Provider(
        "aws",
        region=settings.region,  # type: ignore[arg-type]
        default_tags=aws.ProviderDefaultTagsArgs(tags=tags),
    )
    return AwsContext(
        settings, pulumi.ResourceOptions(providers={"aws": provider}), tags, settings.aws or AwsSettings()
    )
