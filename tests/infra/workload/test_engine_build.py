"""The TensorRT-LLM engine build Job: plain data, on the GPU pool with Triton's scheduling values."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import yaml

from infra.platform.base import GpuScheduling
from infra.workload.engine_build import engine_build_job
from model_repo.spec import GenerationSpec
from model_repo.tensorrt_llm import EngineBuild

MODEL_HASH = "0123456789abcdef" * 4
# A pool label as a platform would give it, with the standard GPU taint toleration.
POOL = dataclasses.replace(
    GpuScheduling.standard(), node_selector={"cloud.google.com/gke-accelerator": "nvidia-l4"}
)


def _build(bucket: str = "s3://bucket/models", **kw: Any) -> EngineBuild:
    return EngineBuild(
        model_hash=MODEL_HASH,
        architecture="llama",
        checkpoint_uri=bucket.rstrip("/") + "/checkpoints/" + MODEL_HASH[:16],
        bucket_uri=bucket,
        gpu_type="nvidia-l4",
        **kw,
    )


@pytest.mark.parametrize("bucket", ["s3://bucket/models", "gs://bucket/models", "as://account/models/p"])
def test_build_job_manifest(bucket: str) -> None:
    job = engine_build_job(GenerationSpec(max_batch_size=16), _build(bucket), POOL)
    assert job["apiVersion"] == "batch/v1" and job["kind"] == "Job"
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    fetch, build = pod["initContainers"]
    (upload,) = pod["containers"]
    assert build["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert build["image"] == "nvcr.io/nvidia/tritonserver:25.08-trtllm-python-py3"
    script = build["command"][-1]
    assert "trtllm-build --checkpoint_dir /work/ckpt" in script and "--max_batch_size 16" in script
    assert "LLaMAForCausalLM.from_hugging_face('/work/hf'" in script
    for container in (fetch, build, upload):
        assert ":" in container["image"] and not container["image"].endswith(":latest")
    command = upload["command"][-1]
    engine_uri = _build(bucket).engine_uri(GenerationSpec(max_batch_size=16))
    tail = engine_uri.rsplit("/", 1)[-1]  # the settings hash, the last path segment
    assert command.index(tail) < command.index("_COMPLETE")  # the marker is written last
    assert len(job["metadata"]["name"]) <= 63
    yaml.safe_load(yaml.safe_dump(job))  # plain data


def test_the_job_takes_every_scheduling_value_it_is_given() -> None:
    scheduling = GpuScheduling(
        node_selector={"pool": "gpu"},
        tolerations=[{"key": "spot", "operator": "Equal", "value": "true", "effect": "NoSchedule"}],
        gpu_resource="amd.com/gpu",
    )
    job = engine_build_job(GenerationSpec(), _build(), scheduling, namespace="ml", service_account="builder")
    pod = job["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"pool": "gpu"} and pod["tolerations"] == scheduling.tolerations
    assert pod["initContainers"][1]["resources"]["limits"] == {"amd.com/gpu": 1}
    assert (job["metadata"]["namespace"], pod["serviceAccountName"]) == ("ml", "builder")


def test_the_clis_job_tolerates_the_gpu_taint_like_triton_and_selects_no_label() -> None:
    """What `tritonform build` writes: Triton's standard toleration and GPU resource; no node selector
    (as every build wrote before the Job moved here; its GPU request keeps it on GPU nodes)."""
    from tritonform.commands.model import render_engine_build_job

    pod = render_engine_build_job(GenerationSpec(), _build())["spec"]["template"]["spec"]
    standard = GpuScheduling.standard()
    assert pod["tolerations"] == standard.tolerations and pod["nodeSelector"] == {}
    assert pod["initContainers"][1]["resources"]["limits"] == {standard.gpu_resource: 1}
