"""GCP reader identity (gcp/identity.py): Workload Identity for Triton, reading the model bucket only."""

from __future__ import annotations

from infra.offline import Plan
from tests.infra.platform.provisioned import provisioned


def test_reader_is_bound_to_the_triton_service_account_and_reads_only_the_bucket(dev: Plan) -> None:
    binding = dev.one("gcp:serviceaccount/iAMMember:IAMMember").inputs
    assert binding["role"] == "roles/iam.workloadIdentityUser"
    assert binding["member"] == "serviceAccount:your-project-id.svc.id.goog[tritonform/triton]"
    assert binding["serviceAccountId"].endswith("/tf-dev-reader@your-project-id.iam.gserviceaccount.com")
    grant = dev.one("gcp:storage/bucketIAMMember:BucketIAMMember").inputs
    assert grant["role"] == "roles/storage.objectViewer"
    assert grant["bucket"] == dev.outputs["bucket_uri"].removeprefix("gs://")
    assert grant["member"] == "serviceAccount:tf-dev-reader@your-project-id.iam.gserviceaccount.com"


def test_reader_annotation_and_outputs() -> None:
    p = provisioned("gcp-dev")
    email = "tf-dev-reader@your-project-id.iam.gserviceaccount.com"
    assert p.value(p.platform.reader.service_account_annotations) == {"iam.gke.io/gcp-service-account": email}
    assert p.plan.outputs["model_reader_identity"] == email
    assert p.plan.outputs["bucket_uri"] == "gs://tf-dev-models-a1b2c3d"
