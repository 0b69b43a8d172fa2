"""GCP provider (gcp/provider.py): project, region and labels from the stack."""

from __future__ import annotations

import json

from infra.offline import Plan


def test_provider_project_region_and_labels(dev: Plan) -> None:
    provider = dev.one("pulumi:providers:gcp").inputs
    assert provider["project"] == "your-project-id" and provider["region"] == "us-central1"
    labels = provider["defaultLabels"]
    labels = json.loads(labels) if isinstance(labels, str) else labels
    assert labels["team"] == "ml-platform" and labels["stack-name"] == "tf-dev"
