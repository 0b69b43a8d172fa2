"""AWS container registry: one private ECR repository per image, scanned on push and KMS-encrypted."""

from __future__ import annotations

import pulumi
import pulumi_aws as aws

from infra.platform.base import IMAGE_NAMES, CloudContext, ContainerRegistry


def build_registry(context: CloudContext) -> ContainerRegistry:
    """One private ECR repository per image, scanned on push and encrypted.

    Tags stay mutable because a rebuild re-pushes the same version tag; the workload always runs the
    digest-pinned reference the build returns, so what runs is never ambiguous.
    """
    registry = ContainerRegistry(context.name("registry"), context.options)
    child = context.child(registry)
    repositories = {
        image: aws.ecr.Repository(
            context.name(image),
            name=f"{context.prefix}/{image}",
            image_tag_mutability="MUTABLE",
            image_scanning_configuration=aws.ecr.RepositoryImageScanningConfigurationArgs(scan_on_push=True),
            encryption_configurations=[aws.ecr.RepositoryEncryptionConfigurationArgs(encryption_type="KMS")],
            force_delete=context.settings.environment == "dev",
            opts=child,
        )
        for image in IMAGE_NAMES
    }
    first = repositories[IMAGE_NAMES[0]]
    token = aws.ecr.get_authorization_token_output(
        registry_id=first.registry_id, opts=pulumi.InvokeOutputOptions(parent=registry)
    )
    registry.finish(
        address=token.proxy_endpoint.apply(lambda url: url.removeprefix("https://")),
        username=token.user_name,
        password=token.password,
        repositories={image: repo.repository_url for image, repo in repositories.items()},
    )
    return registry
