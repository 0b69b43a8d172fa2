"""The training Job (infra/workload/training_job.py): an Indexed Job with one pod per node and a headless
Service for torchrun's rendezvous, on the GPU pool, restricted pod security, strictly valid Kubernetes."""

from __future__ import annotations

import json

import pytest

from infra.offline.render import validate
from infra.platform.base import GpuScheduling
from infra.workload.training_job import RENDEZVOUS_PORT, TrainingJobSpec, training_objects


def _spec(**changes: object) -> TrainingJobSpec:
    values: dict[str, object] = {
        "run": "finetune-abcd1234-00000001", "step": "finetune", "image": "registry.example/trainer:1",
        "bucket_uri": "s3://tf-dev-models", "dataset_key": "0123456789abcdef-facts.jsonl",
        "model": "/opt/tritonform/default-model", "config": {"method": "lora", "batch_size": 8},
        "nodes": 2, "nproc": 4,
    }  # fmt: skip
    values.update(changes)
    return TrainingJobSpec(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize("bucket", ["s3://tf-dev-models", "gs://tf-dev-models", "as://tfdevacct/models"])
def test_objects_are_strictly_valid_for_every_bucket_kind(bucket: str) -> None:
    for doc in training_objects(_spec(bucket_uri=bucket), GpuScheduling.standard()):
        assert validate(doc, "1.36"), doc["kind"]


def test_one_pod_per_node_with_nproc_gpus_and_a_rendezvous_through_the_headless_service() -> None:
    service, job = training_objects(_spec(), GpuScheduling.standard())
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is True
    assert service["spec"]["ports"][0]["port"] == RENDEZVOUS_PORT
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"] == 2
    pod = spec["template"]["spec"]
    assert pod["subdomain"] == service["metadata"]["name"]
    assert service["spec"]["selector"].items() <= spec["template"]["metadata"]["labels"].items()
    assert pod["serviceAccountName"] == "trainer"
    assert pod["nodeSelector"] == GpuScheduling.standard().node_selector
    assert pod["tolerations"] == GpuScheduling.standard().tolerations
    train = next(c for c in pod["initContainers"] if c["name"] == "train")
    assert train["resources"]["limits"] == {"nvidia.com/gpu": 4}
    script = train["command"][-1]
    assert "--nnodes=2" in script and "--nproc-per-node=4" in script
    assert '--node-rank="$JOB_COMPLETION_INDEX"' in script
    assert f"--master-addr=finetune-abcd1234-00000001-0.{service['metadata']['name']}.tritonform" in script
    config = json.loads(script.split("echo ")[1].split(" > /work/config.json")[0].strip("'"))
    assert config["data"] == "/work/data/0123456789abcdef-facts.jsonl" and config["out"] == "/work/out"
    assert config["model"] == "/opt/tritonform/default-model" and config["method"] == "lora"


def test_data_comes_from_datasets_and_the_checkpoint_goes_to_checkpoints_from_pod_zero_only() -> None:
    _, job = training_objects(_spec(), GpuScheduling.standard())
    pod = job["spec"]["template"]["spec"]
    fetch = pod["initContainers"][0]["command"][-1]
    assert "s3://tf-dev-models/datasets/0123456789abcdef-facts.jsonl" in fetch
    upload = pod["containers"][0]["command"][-1]
    assert upload.startswith('if [ "$JOB_COMPLETION_INDEX" != "0" ]; then exit 0; fi;')
    assert "s3://tf-dev-models/checkpoints/finetune-abcd1234-00000001" in upload
    assert upload.rstrip().endswith("/_COMPLETE")
    assert "datasets" not in upload and "checkpoints" not in fetch


def test_every_container_runs_restricted() -> None:
    _, job = training_objects(_spec(), GpuScheduling.standard())
    pod = job["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for container in [*pod["initContainers"], *pod["containers"]]:
        ctx = container["securityContext"]
        assert ctx["allowPrivilegeEscalation"] is False and ctx["capabilities"] == {"drop": ["ALL"]}
        assert ctx["runAsNonRoot"] is True


def test_a_bucket_held_base_model_is_copied_in_and_bad_specs_are_refused() -> None:
    _, job = training_objects(_spec(model="checkpoints/finetune-old"), GpuScheduling.standard())
    pod = job["spec"]["template"]["spec"]
    assert "s3://tf-dev-models/checkpoints/finetune-old" in pod["initContainers"][0]["command"][-1]
    assert '"model": "/work/model"' in pod["initContainers"][1]["command"][-1]
    with pytest.raises(ValueError, match="DNS label"):
        training_objects(_spec(run="Bad_Name"), GpuScheduling.standard())
    with pytest.raises(ValueError, match="s3://, gs:// or as://"):
        training_objects(_spec(bucket_uri="file:///tmp"), GpuScheduling.standard())


@pytest.mark.parametrize("bucket", ["s3://tf-dev-models", "gs://tf-dev-models", "as://tfdevacct/models"])
def test_a_bucket_held_teacher_is_copied_in_for_distillation(bucket: str) -> None:
    """`distill --teacher checkpoints/NAME --stack ...`: the teacher comes from the bucket like the student
    (it used to stay a bucket path the trainer could not open)."""
    spec = _spec(
        step="distill", bucket_uri=bucket, model="checkpoints/pruned-1",
        config={"teacher": "checkpoints/finetune-old", "alpha": 1.0},
    )  # fmt: skip
    _, job = training_objects(spec, GpuScheduling.standard())
    pod = job["spec"]["template"]["spec"]
    copy, train = pod["initContainers"][0]["command"][-1], pod["initContainers"][1]["command"][-1]
    assert "checkpoints/finetune-old" in copy and "/work/teacher" in copy
    assert '"teacher": "/work/teacher"' in train and '"student": "/work/model"' in train
    # a teacher inside the image (default) stays as it is, and nothing more is copied
    spec = _spec(step="distill", config={"teacher": "/opt/tritonform/default-model"})
    _, job = training_objects(spec, GpuScheduling.standard())
    pod = job["spec"]["template"]["spec"]
    assert "checkpoints/" not in pod["initContainers"][0]["command"][-1]
    assert '"teacher": "/opt/tritonform/default-model"' in pod["initContainers"][1]["command"][-1]
