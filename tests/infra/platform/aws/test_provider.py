"""AWS provider (aws/provider.py): region and default tags from the stack."""

from __future__ import annotations

import json

from infra.offline import Plan


def test_provider_region_and_default_tags_come_from_the_stack(dev: Plan) -> None:
    provider = dev.one("pulumi:providers:aws")
    assert provider.inputs["region"] == "us-east-1"
    tags = (
        json.loads(provider.inputs["defaultTags"])["tags"]
        if isinstance(provider.inputs["defaultTags"], str)
        else provider.inputs["defaultTags"]["tags"]
    )
    assert tags["team"] == "ml-platform" and tags["stack-name"] == "tf-dev"
