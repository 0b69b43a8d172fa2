"""`--backend tensorrt-llm`: the TensorRT-LLM model repository and the engine build recipe.

    write_tensorrt_llm_repository(out_dir, artefacts_dir, spec, build) -> Path

Repository (same request/response tensors as the ONNX backend, see `model_repo.spec`):

    out_dir/
      REPOSITORY.json           manifest (backend "tensorrt-llm", engine URI, spec)
      engine-build-job.yaml     Kubernetes Job that builds the engine on the GPU pool (below)
      <spec.model_name>/        ensemble: text_input ... -> text_output, completion_tokens
      preprocessing/            python: tokenizer.json -> input ids, stop words -> TRT-LLM word list
      tensorrt_llm/             backend "tensorrtllm" (in-flight batching, decoupled streaming);
        1/ENGINE.json           where the engine lives in the bucket and where the pod must mount it
      postprocessing/           python: output ids -> text

A TensorRT engine only runs on the GPU architecture and TensorRT-LLM version it was built with,
so it cannot be built here; `engine_build_job` renders a Job for the GPU node pool that converts
the Hugging Face checkpoint (`tensorrt_llm.models.*ForCausalLM.from_hugging_face`, stable across
releases) and runs `trtllm-build`, then syncs the engine to
`<bucket>/engines/<model hash>/<sm arch>/trtllm-<version>/<settings hash>/` and writes `_COMPLETE`
last. Triton's pod syncs that prefix to `engine_mount_path` before it starts (workload side).
"""

from __future__ import annotations

import hashlib
import json
import shlex
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from model_repo.layout import LayoutError, replaced_atomically
from model_repo.manifest import MODEL_VERSION, write_manifest
from model_repo.runtime.contract import METADATA_FILE, TOKENIZER_FILE
from model_repo.spec import (
    ENSEMBLE_OUTPUTS,
    GENERATION_INPUTS,
    DataType,
    EnsembleStep,
    GenerationSpec,
    InstanceGroup,
    ModelConfig,
    SpecError,
    TensorSpec,
    render_model_config,
)
from model_repo.storage import StorageUri

TEMPLATES = Path(__file__).parent / "templates" / "tensorrt_llm"

# NGC `tritonserver:<tag>-trtllm-python-py3` -> TensorRT-LLM inside (Triton compatibility matrix).
TRITON_TRTLLM_RELEASES: dict[str, str] = {"25.01": "0.17.0", "25.08": "0.21.0", "25.12": "1.1.0"}
DEFAULT_TRITON_RELEASE = "25.08"

# GPU type (any spelling the clouds use) -> CUDA compute capability the engine is built for.
GPU_ARCHITECTURES: dict[str, str] = {
    "t4": "sm75",
    "a10": "sm86",
    "a10g": "sm86",
    "a100": "sm80",
    "l4": "sm89",
    "l40s": "sm89",
    "h100": "sm90",
    "h200": "sm90",
}
CONVERTERS = {"llama": "LLaMAForCausalLM", "gpt2": "GPTForCausalLM", "mistral": "LLaMAForCausalLM"}
SYNC_IMAGES = {
    "s3": "public.ecr.aws/aws-cli/aws-cli:2.22.35",
    "gs": "gcr.io/google.com/cloudsdktool/google-cloud-cli:502.0.0-slim",
    "as": "mcr.microsoft.com/azure-cli:2.67.0",
}


def gpu_architecture(gpu_type: str) -> str:
    """`sm89` for `nvidia-l4`, `L4`, `Standard_NC...`-free names like `a10g`; error lists the known ones."""
    key = gpu_type.lower().removeprefix("nvidia-").removeprefix("nvidia-tesla-").replace("tesla-", "")
    key = key.split("-")[0]
    if key not in GPU_ARCHITECTURES:
        raise SpecError(f"gpu_type {gpu_type!r}: unknown; known: {', '.join(sorted(GPU_ARCHITECTURES))}")
    return GPU_ARCHITECTURES[key]


@dataclass(frozen=True)
class EngineBuild:
    """How and where to build the TensorRT-LLM engine."""

    model_hash: str  # model_repo.checkpoint.checkpoint_hash of the source checkpoint
    architecture: Literal["llama", "gpt2", "mistral"]
    checkpoint_uri: str  # the Hugging Face checkpoint in the bucket (uploaded by the build)
    bucket_uri: str  # s3://, gs:// or as:// prefix; engines go under <bucket_uri>/engines/
    gpu_type: str  # e.g. "nvidia-l4", "a10g", "h100"
    triton_release: str = DEFAULT_TRITON_RELEASE
    dtype: Literal["float16", "bfloat16"] = "float16"
    weight_only: Literal["none", "int8", "int4"] = "none"
    max_input_len: int = 2048
    max_seq_len: int = 4096
    namespace: str = "tritonform"
    service_account: str = "engine-builder"  # may write to the bucket's engines/ prefix
    node_selector: tuple[tuple[str, str], ...] = ()  # the GPU pool's label (given by the platform)
    tolerations: tuple[tuple[str, str], ...] = (("nvidia.com/gpu", "NoSchedule"),)
    engine_mount_path: str = "/engines/current"
    extra_build_args: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.triton_release not in TRITON_TRTLLM_RELEASES:
            raise SpecError(f"triton_release {self.triton_release!r}: known {sorted(TRITON_TRTLLM_RELEASES)}")
        if self.architecture not in CONVERTERS:
            raise SpecError(f"architecture {self.architecture!r}: supported {sorted(CONVERTERS)}")
        if not 1 <= self.max_input_len < self.max_seq_len:
            raise SpecError("max_input_len must be >= 1 and below max_seq_len")
        gpu_architecture(self.gpu_type)
        StorageUri.parse(self.bucket_uri)
        StorageUri.parse(self.checkpoint_uri)

    @property
    def trtllm_version(self) -> str:
        return TRITON_TRTLLM_RELEASES[self.triton_release]

    @property
    def image(self) -> str:
        return f"nvcr.io/nvidia/tritonserver:{self.triton_release}-trtllm-python-py3"

    def settings_hash(self, spec: GenerationSpec) -> str:
        settings = {
            "dtype": self.dtype,
            "weight_only": self.weight_only,
            "max_batch_size": spec.max_batch_size,
            "max_input_len": self.max_input_len,
            "max_seq_len": self.max_seq_len,
            "extra": list(self.extra_build_args),
        }
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]

    def engine_uri(self, spec: GenerationSpec) -> str:
        """Bucket location keyed by model hash, GPU architecture, TRT-LLM version and settings."""
        location = StorageUri.parse(self.bucket_uri)
        arch = gpu_architecture(self.gpu_type)
        parts = (
            "engines",
            self.model_hash[:16],
            arch,
            f"trtllm-{self.trtllm_version}",
            self.settings_hash(spec),
        )
        return location.uri(*parts)


# --- model configs ----------------------------------------------------------------------------


def _t(name: str, dtype: DataType, dims: tuple[int, ...], **kw: Any) -> TensorSpec:
    return TensorSpec(name, dtype, dims, **kw)


def preprocessing_config(spec: GenerationSpec) -> ModelConfig:
    return ModelConfig(
        name="preprocessing",
        backend="python",
        max_batch_size=spec.max_batch_size,
        inputs=(
            _t("QUERY", DataType.STRING, (1,)),
            _t("STOP_WORDS_DICT", DataType.STRING, (-1,), optional=True),
            _t("END_ID", DataType.INT32, (1,), optional=True),
        ),
        outputs=(
            _t("INPUT_ID", DataType.INT32, (-1,)),
            _t("REQUEST_INPUT_LEN", DataType.INT32, (1,)),
            _t("STOP_WORDS_IDS", DataType.INT32, (2, -1)),
            _t("OUT_END_ID", DataType.INT32, (1,)),
            _t("OUT_PAD_ID", DataType.INT32, (1,)),
        ),
        instance_groups=(InstanceGroup("KIND_CPU", spec.instance_count),),
    )


def tensorrt_llm_config(spec: GenerationSpec, build: EngineBuild) -> ModelConfig:
    scalar: dict[str, Any] = {"dims": (1,), "reshape": ()}
    return ModelConfig(
        name="tensorrt_llm",
        backend="tensorrtllm",
        max_batch_size=spec.max_batch_size,
        decoupled=True,
        inputs=(
            _t("input_ids", DataType.INT32, (-1,), ragged=True),
            _t("input_lengths", DataType.INT32, **scalar),
            _t("request_output_len", DataType.INT32, **scalar),
            _t("end_id", DataType.INT32, optional=True, **scalar),
            _t("pad_id", DataType.INT32, optional=True, **scalar),
            _t("stop_words_list", DataType.INT32, (2, -1), optional=True, ragged=True),
            _t("runtime_top_k", DataType.INT32, optional=True, **scalar),
            _t("runtime_top_p", DataType.FP32, optional=True, **scalar),
            _t("temperature", DataType.FP32, optional=True, **scalar),
            _t("random_seed", DataType.UINT64, optional=True, **scalar),
            _t("streaming", DataType.BOOL, optional=True, **scalar),
        ),
        outputs=(
            _t("output_ids", DataType.INT32, (-1, -1)),
            _t("sequence_length", DataType.INT32, (-1,)),
        ),
        # the backend schedules the GPU itself; Triton's instance stays on the CPU side
        instance_groups=(InstanceGroup("KIND_CPU", 1),),
        parameters=(
            ("gpt_model_type", "inflight_fused_batching"),
            ("gpt_model_path", build.engine_mount_path),
            ("batch_scheduler_policy", "guaranteed_no_evict"),
            ("kv_cache_free_gpu_mem_fraction", "0.9"),
            ("exclude_input_in_output", "true"),
            ("max_beam_width", "1"),
        ),
    )


def postprocessing_config(spec: GenerationSpec) -> ModelConfig:
    return ModelConfig(
        name="postprocessing",
        backend="python",
        max_batch_size=spec.max_batch_size,
        inputs=(_t("TOKENS_BATCH", DataType.INT32, (-1, -1)), _t("SEQUENCE_LENGTH", DataType.INT32, (-1,))),
        outputs=(_t("OUTPUT", DataType.STRING, (-1,)),),
        instance_groups=(InstanceGroup("KIND_CPU", spec.instance_count),),
    )


def ensemble_config(spec: GenerationSpec) -> ModelConfig:
    """The public model: named like the ONNX backend's model, with the same tensors."""
    return ModelConfig(
        name=spec.model_name,
        platform="ensemble",
        max_batch_size=spec.max_batch_size,
        inputs=GENERATION_INPUTS,
        outputs=ENSEMBLE_OUTPUTS,
        ensemble_steps=(
            EnsembleStep(
                "preprocessing",
                (("QUERY", "text_input"), ("STOP_WORDS_DICT", "stop_words"), ("END_ID", "end_id")),
                (
                    ("INPUT_ID", "_input_ids"),
                    ("REQUEST_INPUT_LEN", "_prompt_tokens"),
                    ("STOP_WORDS_IDS", "_stop_words_ids"),
                    ("OUT_END_ID", "_end_id"),
                    ("OUT_PAD_ID", "_pad_id"),
                ),
            ),
            EnsembleStep(
                "tensorrt_llm",
                (
                    ("input_ids", "_input_ids"),
                    ("input_lengths", "_prompt_tokens"),
                    ("request_output_len", "max_tokens"),
                    ("end_id", "_end_id"),
                    ("pad_id", "_pad_id"),
                    ("stop_words_list", "_stop_words_ids"),
                    ("runtime_top_k", "top_k"),
                    ("runtime_top_p", "top_p"),
                    ("temperature", "temperature"),
                    ("random_seed", "random_seed"),
                    ("streaming", "stream"),
                ),
                (("output_ids", "_output_ids"), ("sequence_length", "completion_tokens")),
            ),
            EnsembleStep(
                "postprocessing",
                (("TOKENS_BATCH", "_output_ids"), ("SEQUENCE_LENGTH", "completion_tokens")),
                (("OUTPUT", "text_output"),),
            ),
        ),
    )


# --- the engine build Job ---------------------------------------------------------------------


def _sync_command(scheme: str, source: str, target: str) -> str:
    """Shell command that copies a prefix between a bucket and a local directory (either way)."""
    if scheme == "s3":
        return f"aws s3 sync {shlex.quote(source)} {shlex.quote(target)} --only-show-errors"
    if scheme == "gs":
        return f"gcloud storage rsync --recursive {shlex.quote(source)} {shlex.quote(target)}"
    # Azure: workload identity login, then the batch copy commands (as://ACCOUNT/CONTAINER/PREFIX)
    login = (
        'az login --service-principal -u "$AZURE_CLIENT_ID" -t "$AZURE_TENANT_ID" '
        '--federated-token "$(cat $AZURE_FEDERATED_TOKEN_FILE)" --output none'
    )
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


def engine_build_job(spec: GenerationSpec, build: EngineBuild) -> dict[str, Any]:
    """A `batch/v1` Job: fetch checkpoint -> convert + trtllm-build on one GPU -> sync engine, marker last."""
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
        "metadata": {"name": name, "namespace": build.namespace, "labels": labels},
        "spec": {
            "backoffLimit": 1,
            "activeDeadlineSeconds": 4 * 3600,
            "ttlSecondsAfterFinished": 7 * 24 * 3600,
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "restartPolicy": "Never",
                    "serviceAccountName": build.service_account,
                    "nodeSelector": dict(build.node_selector),
                    "tolerations": [
                        {"key": key, "operator": "Exists", "effect": effect}
                        for key, effect in build.tolerations
                    ],
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
                            "resources": {"limits": {"nvidia.com/gpu": 1}},
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


class _ManifestDumper(yaml.SafeDumper):
    """Plain YAML for people: no anchors/aliases, multi-line scripts as literal blocks."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_ManifestDumper.add_representer(str, _str)


def dump_manifest(document: dict[str, Any]) -> str:
    """A Kubernetes manifest as YAML, keys in the order given."""
    return yaml.dump(document, Dumper=_ManifestDumper, sort_keys=False, width=120)


# --- writing the repository -------------------------------------------------------------------


def write_tensorrt_llm_repository(
    out_dir: Path | str, artefacts_dir: Path | str, spec: GenerationSpec, build: EngineBuild
) -> Path:
    """Write the TensorRT-LLM repository and the engine build Job (see module docs); atomic like
    `model_repo.layout.write_repository`. `artefacts_dir` provides tokenizer.json and generation.json."""
    out_dir, artefacts_dir = Path(out_dir), Path(artefacts_dir)
    missing = [n for n in (TOKENIZER_FILE, METADATA_FILE) if not (artefacts_dir / n).is_file()]
    if missing:
        raise LayoutError(f"artefacts directory {artefacts_dir} lacks {', '.join(missing)}")
    with replaced_atomically(out_dir) as staging:
        configs = (
            ensemble_config(spec),
            preprocessing_config(spec),
            tensorrt_llm_config(spec, build),
            postprocessing_config(spec),
        )
        for config in configs:
            (staging / config.name / MODEL_VERSION).mkdir(parents=True)
            (staging / config.name / "config.pbtxt").write_text(render_model_config(config), "utf-8")
        for step in ("preprocessing", "postprocessing"):
            version_dir = staging / step / MODEL_VERSION
            shutil.copy2(TEMPLATES / f"{step}.py", version_dir / "model.py")
            shutil.copy2(artefacts_dir / TOKENIZER_FILE, version_dir / TOKENIZER_FILE)
        shutil.copy2(artefacts_dir / METADATA_FILE, staging / "preprocessing" / MODEL_VERSION / METADATA_FILE)
        engine = {
            "engine_uri": build.engine_uri(spec),
            "mount_path": build.engine_mount_path,
            "gpu_architecture": gpu_architecture(build.gpu_type),
            "tensorrt_llm": build.trtllm_version,
            "image": build.image,
        }
        (staging / "tensorrt_llm" / MODEL_VERSION / "ENGINE.json").write_text(
            json.dumps(engine, indent=2) + "\n", "utf-8"
        )
        job = engine_build_job(spec, build)
        (staging / "engine-build-job.yaml").write_text(dump_manifest(job), "utf-8")
        info = {"backend": "tensorrt-llm", "spec": json.loads(json.dumps(asdict(spec))), "engine": engine}
        write_manifest(staging, info)
    return out_dir
