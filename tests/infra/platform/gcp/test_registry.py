"""GCP registry (gcp/registry.py): Artifact Registry, read by the nodes, pushed with a short-lived token."""

from __future__ import annotations

from infra.offline.mocks.gcp import ACCESS_TOKEN
from tests.infra.platform.provisioned import provisioned


def test_artifact_registry_repository_reader_grant_and_push_credentials() -> None:
    p = provisioned("gcp-dev")
    repo = p.plan.one("gcp:artifactregistry/repository:Repository").inputs
    assert repo["format"] == "DOCKER" and repo["location"] == "us-central1"
    grant = p.plan.one("gcp:artifactregistry/repositoryIamMember:RepositoryIamMember").inputs
    assert grant["role"] == "roles/artifactregistry.reader"
    assert grant["member"] == "serviceAccount:tf-dev-nodes@your-project-id.iam.gserviceaccount.com"
    project_roles = {r.inputs["role"] for r in p.plan.of_type("gcp:projects/iAMMember:IAMMember")}
    assert "roles/artifactregistry.reader" not in project_roles  # repository-scoped only
    registry = p.platform.registry
    assert p.value(registry.address) == "us-central1-docker.pkg.dev"
    assert p.value(registry.username) == "oauth2accesstoken"
    assert p.value(registry.password) == ACCESS_TOKEN
    assert p.value(registry.repositories["tritonform-gateway"]) == (
        "us-central1-docker.pkg.dev/your-project-id/tf-dev-images/tritonform-gateway"
    )
