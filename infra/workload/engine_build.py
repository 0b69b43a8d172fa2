"""The Kubernetes Job that builds a TensorRT-LLM engine on the GPU pool, for `--backend tensorrt-llm`.

A TensorRT engine only runs on the GPU architecture and TensorRT-LLM version it was built with, so it is
built in the cluster: fetch the Hugging Face checkpoint from the bucket, convert it and run
`trtllm-build` on one GPU, then sync the engine to `EngineBuild.engine_uri(spec)` and write `_COMPLETE`
last. The Job lands on the GPU pool with the same `GpuScheduling` values Triton's pods use.

`tritonform build` renders it (`engine_build_job`) and writes it into the repository as
`engine-build-job.yaml`; a plain function of plain values, so rendering it creates no resources.
"""

from __future__ import annotations

import json
import shlex
from typing import Any

from infra.platform.base import GpuScheduling
from model_repo.spec import GenerationSpec
from model_repo.storage import StorageUri
from model_repo.tensorrt_llm import CONVERTERS, EngineBuild, gpu_architecture

# The bucket's command line tool per storage scheme: syncs the checkpoint in and the engine out.
SYNC_IMAGES = {
    "s3": "public.ecr.aws/aws-cli/aws-cli:2.22.35",
    "gs": "gcr.io/google.com/cloudsdktool/google-cloud-cli:502.0.0-slim",
    "as": "mcr.microsoft.com/azure-cli:2.67.0",
}
NAMESPACE = "tritonform"
SERVICE_ACCOUNT = "engine-builder"  # may write to the bucket's engines/ prefix
# The Azure CLI signs in with the pod's workload identity (the webhook projects these variables).
AZURE_LOGIN = (
    'az login --service-principal -u "$AZURE_CLIENT_ID" -t "$AZURE_TENANT_ID" '
    '--federated-token "$(cat $AZURE_FEDERATED_TOKEN_FILE)" --output none'
)


def _sync_command(scheme: str, source: str, target: str) -> str:
    """Shell command that copies a prefix between a bucket and a local directory (either way)."""
    if scheme == "s3":
        return f"aws s3 sync {shlex.quote(source)} {shlex.quote(target)} --only-show-errors"
    if scheme == "gs":
        return f"gcloud storage rsync --recursive {shlex.quote(source)} {shlex.quote(target)}"
    # Azure: workload identity login, then the batch copy commands (as://ACCOUNT/CONTAINER/PREFIX)
    login = AZURE_LOGIN
    if source.startswith("as://"):
        loc = StorageUri.parse(source)
        return (
            f"{login} && az storage blob download-batch --auth-mode login --account-name {loc.account} "
            f"-s {loc.bucket} --pattern {shlex.quote(loc.prefix + '/*')} -d {shlex.quote(target)} && "
            f"cp -r {shlex.quote(target)}/{shlex.quote(loc.prefix)}/. {shlex.quote(target)}/"
        )
    loc = StorageUri.parse(target)
    return (
        f"{login} && az storage blob upload-batch --auth-mode login --account-name {loc.account} "
        f"-d {loc.bucket} --destination-path {shlex.quote(loc.prefix)} -s {shlex.quote(source)} --overwrite"
    )


def _marker_command(scheme: str, engine_uri: str) -> str:
    marker = engine_uri.rstrip("/") + "/_COMPLETE"
    if scheme == "s3":
        return f"aws s3 cp /work/build-info.json {shlex.quote(marker)}"
    if scheme == "gs":
        return f"gcloud storage cp /work/build-info.json {shlex.quote(marker)}"
    loc = StorageUri.parse(marker)
    return (
        f"az storage blob upload --auth-mode login --account-name {loc.account} -c {loc.bucket} "
        f"-n {shlex.quote(loc.prefix)} -f /work/build-info.json --overwrite"
    )


def engine_build_job(
    spec: GenerationSpec,
    build: EngineBuild,
    scheduling: GpuScheduling,
    *,
    namespace: str = NAMESPACE,
    service_account: str = SERVICE_ACCOUNT,
) -> dict[str, Any]:
    """A `batch/v1` Job: fetch checkpoint -> convert + trtllm-build on one GPU -> sync engine, marker
    last. `scheduling`: how pods land on the GPU pool (node selector, tolerations, GPU resource)."""
    scheme = StorageUri.parse(build.bucket_uri).scheme
    engine_uri = build.engine_uri(spec)
    arch = gpu_architecture(build.gpu_type)
    converter = CONVERTERS[build.architecture]
    quant = {"none": "None", "int8": "QuantAlgo.W8A16", "int4": "QuantAlgo.W4A16"}[build.weight_only]
    convert = (
        "from tensorrt_llm.models import " + converter + "\n"
        "from tensorrt_llm.models.modeling_utils import QuantConfig\n"
        "from tensorrt_llm.quantization import QuantAlgo\n"
        f"quant = QuantConfig(quant_algo={quant})\n"
        f"model = {converter}.from_hugging_face('/work/hf', dtype='{build.dtype}', quant_config=quant)\n"
        "model.save_checkpoint('/work/ckpt', save_config=True)\n"
    )
    build_cmd = [
        "trtllm-build",
        "--checkpoint_dir", "/work/ckpt",
        "--output_dir", "/work/engine",
        "--gemm_plugin", "auto",
        "--max_batch_size", str(spec.max_batch_size),
        "--max_input_len", str(build.max_input_len),
        "--max_seq_len", str(build.max_seq_len),
        *build.extra_build_args,
    ]  # fmt: skip
    info = {
        "model_hash": build.model_hash,
        "gpu_architecture": arch,
        "tensorrt_llm": build.trtllm_version,
        "image": build.image,
        "settings": build.settings_hash(spec),
    }
    build_script = "\n".join(
        [
            "set -euo pipefail",
            "python3 - <<'PY'",
            convert.rstrip("\n"),
            "PY",
            shlex.join(build_cmd),
            "python3 -c 'import tensorrt_llm; print(tensorrt_llm.__version__)' > /work/engine/TRTLLM_VERSION",
            f"echo {shlex.quote(json.dumps(info))} > /work/build-info.json",
        ]
    )
    sync_image = SYNC_IMAGES[scheme]
    work = [{"name": "work", "mountPath": "/work"}]
    name = f"trtllm-build-{build.model_hash[:8]}-{arch}-{build.settings_hash(spec)[:6]}"
    labels = {"app.kubernetes.io/name": "trtllm-engine-build", "app.kubernetes.io/part-of": "tritonform"}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "backoffLimit": 1,
            "activeDeadlineSeconds": 4 * 3600,
            "ttlSecondsAfterFinished": 7 * 24 * 3600,
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "restartPolicy": "Never",
                    "serviceAccountName": service_account,
                    "nodeSelector": dict(scheduling.node_selector),
                    "tolerations": [dict(toleration) for toleration in scheduling.tolerations],
                    "volumes": [{"name": "work", "emptyDir": {}}],
                    "initContainers": [
                        {
                            "name": "fetch-checkpoint",
                            "image": sync_image,
                            "command": [
                                "/bin/sh",
                                "-c",
                                _sync_command(scheme, build.checkpoint_uri, "/work/hf"),
                            ],
                            "volumeMounts": work,
                        },
                        {
                            "name": "build-engine",
                            "image": build.image,
                            "command": ["/bin/bash", "-c", build_script],
                            "resources": {"limits": {scheduling.gpu_resource: 1}},
                            "volumeMounts": work,
                        },
                    ],
                    "containers": [
                        {
                            "name": "upload-engine",
                            "image": sync_image,
                            "command": [
                                "/bin/sh",
                                "-c",
                                _sync_command(scheme, "/work/engine", engine_uri)
                                + " && "
                                + _marker_command(scheme, engine_uri),
                            ],
                            "volumeMounts": work,
                        }
                    ],
                },
            },
        },
    }
