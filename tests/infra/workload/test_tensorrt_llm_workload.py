"""A TensorRT-LLM stack (gcp-prod: model.backend tensorrt-llm, gpusPerReplica 2) runs NGC's matching
`-trtllm-python-py3` image, syncs the llmapi repository to node-local storage sized for its model before
Triton starts, and hands the replica's GPU count to the LLM API as its tensor parallel size; an ONNX stack
keeps reading the bucket directly."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from infra.offline import Plan, plan_stack
from infra.settings.fit import checkpoint_storage_gib
from tests.infra.conftest import MODEL_VERSION, with_model_version

PlanOf = Callable[[str], Plan]


def _triton_pod(plan: Plan) -> dict[str, Any]:
    (deployment,) = [
        r.inputs
        for r in plan.resources
        if r.type == "kubernetes:apps/v1:Deployment" and r.inputs["metadata"]["name"] == "triton"
    ]
    return dict(deployment["spec"]["template"]["spec"])


def test_tensorrt_llm_stack_syncs_the_llmapi_repository_and_runs_the_trtllm_image(
    serving_plan_of: PlanOf,
) -> None:
    plan = serving_plan_of("gcp-prod")
    pod = _triton_pod(plan)
    (triton,) = pod["containers"]
    (locator,) = pod["initContainers"]
    # docker/triton-trtllm (FROM NGC's tritonserver:<release>-trtllm-python-py3), pushed and run by digest
    assert f":{plan.settings.triton.version}-trtllm-python-py3-" in str(triton["image"])
    assert locator["args"][:5] == ["sync", "--prefix", locator["args"][2], "--version", MODEL_VERSION]
    assert locator["args"][5:7] == ["--dest", "/models"]
    size = f"{checkpoint_storage_gib(plan.settings.model)}Gi"
    (models,) = [v for v in pod["volumes"] if v["name"] == "models"]
    assert models["emptyDir"]["sizeLimit"] == size == triton["resources"]["requests"]["ephemeral-storage"]
    assert {"name": "models", "mountPath": "/models"} in triton["volumeMounts"]
    assert {"name": "models", "mountPath": "/models"} in locator["volumeMounts"]
    env = {e["name"]: e.get("value") for e in triton["env"]}
    assert env["TRITONFORM_TENSOR_PARALLEL_SIZE"] == "2" == triton["resources"]["limits"]["nvidia.com/gpu"]


def test_onnx_stack_reads_the_bucket_without_a_local_copy(serving_plan_of: PlanOf) -> None:
    pod = _triton_pod(serving_plan_of("aws-prod"))
    (locator,) = pod["initContainers"]
    assert locator["args"][0] == "resolve"
    assert "models" not in {v["name"] for v in pod["volumes"]}
    assert "trtllm" not in str(pod["containers"][0]["image"])


def test_onnx_stack_runs_cuda_by_default_and_tensorrt_when_chosen(
    serving_plan_of: PlanOf, tmp_path: Path
) -> None:
    """The ONNX backend's provider is the stack's choice (triton.executionProvider), handed to the model in
    the pod's environment: CUDA by default; TensorRT opt-in with its engine cache on the scratch volume."""
    env = {
        e["name"]: e.get("value") for e in _triton_pod(serving_plan_of("aws-prod"))["containers"][0]["env"]
    }
    assert env["TRITONFORM_EXECUTION_PROVIDER"] == "cuda" and "TRITONFORM_TRT_ENGINE_CACHE" not in env

    document = yaml.safe_load(with_model_version("aws-prod", tmp_path).read_text())
    document["config"]["tritonform:triton"]["executionProvider"] = "tensorrt"
    path = tmp_path / "Pulumi.aws-trt.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    (triton,) = _triton_pod(plan_stack(path))["containers"]
    env = {e["name"]: e.get("value") for e in triton["env"]}
    assert env["TRITONFORM_EXECUTION_PROVIDER"] == "tensorrt"
    cache = env["TRITONFORM_TRT_ENGINE_CACHE"]
    assert any(cache.startswith(m["mountPath"] + "/") for m in triton["volumeMounts"])
