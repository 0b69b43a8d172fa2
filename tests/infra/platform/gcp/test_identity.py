"""GCP reader identities (gcp/identity.py): Workload Identity for Triton, reading the model bucket only, and
the gateway's own identity, reading only the tokenizer files of each version."""

from __future__ import annotations

from infra.offline import Plan
from infra.platform.base import ReadScope
from infra.platform.gcp.identity import object_condition
from tests.infra.platform.provisioned import provisioned

WI_USER = "gcp:serviceaccount/iAMMember:IAMMember"
BUCKET_GRANT = "gcp:storage/bucketIAMMember:BucketIAMMember"


def test_reader_is_bound_to_the_triton_service_account_and_reads_only_the_bucket(dev: Plan) -> None:
    binding = dev.one(WI_USER, "tf-dev-reader-workload-identity").inputs
    assert binding["role"] == "roles/iam.workloadIdentityUser"
    assert binding["member"] == "serviceAccount:your-project-id.svc.id.goog[tritonform/triton]"
    assert binding["serviceAccountId"].endswith("/tf-dev-reader@your-project-id.iam.gserviceaccount.com")
    grant = dev.one(BUCKET_GRANT, "tf-dev-reader-objects").inputs
    assert grant["role"] == "roles/storage.objectViewer"
    assert grant["bucket"] == dev.outputs["bucket_uri"].removeprefix("gs://")
    assert grant["member"] == "serviceAccount:tf-dev-reader@your-project-id.iam.gserviceaccount.com"
    assert "condition" not in grant  # Triton reads whole model repositories


def test_reader_annotation_and_outputs() -> None:
    p = provisioned("gcp-dev")
    email = "tf-dev-reader@your-project-id.iam.gserviceaccount.com"
    assert p.value(p.platform.reader.service_account_annotations) == {"iam.gke.io/gcp-service-account": email}
    assert p.plan.outputs["model_reader_identity"] == email
    assert p.plan.outputs["bucket_uri"] == "gs://tf-dev-models-a1b2c3d"


def test_gateway_reader_is_its_own_account_bound_to_the_gateway_service_account(dev: Plan) -> None:
    binding = dev.one(WI_USER, "tf-dev-gw-reader-workload-identity").inputs
    assert binding["role"] == "roles/iam.workloadIdentityUser"
    assert binding["member"] == "serviceAccount:your-project-id.svc.id.goog[tritonform/gateway]"
    assert binding["serviceAccountId"].endswith("/tf-dev-gw-reader@your-project-id.iam.gserviceaccount.com")
    p = provisioned("gcp-dev")
    gateway_reader = p.platform.gateway_reader
    assert gateway_reader is not None
    email = "tf-dev-gw-reader@your-project-id.iam.gserviceaccount.com"
    assert p.value(gateway_reader.service_account_annotations) == {"iam.gke.io/gcp-service-account": email}
    assert p.value(gateway_reader.identity_id) != p.value(p.platform.reader.identity_id)


def test_gateway_reader_may_read_only_the_tokenizer_files_of_a_version(dev: Plan) -> None:
    grant = dev.one(BUCKET_GRANT, "tf-dev-gw-reader-objects").inputs
    assert grant["role"] == "roles/storage.objectViewer"
    assert grant["member"] == "serviceAccount:tf-dev-gw-reader@your-project-id.iam.gserviceaccount.com"
    bucket = dev.outputs["bucket_uri"].removeprefix("gs://")
    expression = grant["condition"]["expression"]
    assert expression == object_condition(bucket, ReadScope.tokenizer_files("models"))
    assert expression.startswith(
        f'resource.name.startsWith("projects/_/buckets/{bucket}/objects/models/versions/") && ('
    )
    for name in ("REPOSITORY.json", "tokenizer.json", "generation.json"):
        assert f'resource.name.endsWith("/{name}")' in expression
    assert grant["condition"]["title"]


def test_object_condition_follows_the_scope() -> None:
    prefix_only = object_condition("b", ReadScope(prefix="m/"))
    assert prefix_only == 'resource.name.startsWith("projects/_/buckets/b/objects/m/")'
    both = object_condition("b", ReadScope(prefix="m/v/", suffixes=("/a.json",)))
    assert both == (
        'resource.name.startsWith("projects/_/buckets/b/objects/m/v/") && (resource.name.endsWith("/a.json"))'
    )
