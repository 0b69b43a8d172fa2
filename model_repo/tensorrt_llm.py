"""`--backend tensorrt-llm`: the TensorRT-LLM model repository and the engine build recipe.

    write_tensorrt_llm_repository(out_dir, artefacts_dir, spec, build, build_job) -> Path

Repository (same request/response tensors as the ONNX backend, see `model_repo.spec`):

    out_dir/
      REPOSITORY.json           manifest (backend "tensorrt-llm", engine URI, spec)
      engine-build-job.yaml     `build_job`: the Kubernetes Job that builds the engine on the GPU pool
      <spec.model_name>/        ensemble: text_input ... -> text_output, completion_tokens
      preprocessing/            python: tokenizer.json -> input ids, stop words -> TRT-LLM word list
      tensorrt_llm/             backend "tensorrtllm" (in-flight batching, decoupled streaming);
        1/ENGINE.json           where the engine lives in the bucket and where the pod must mount it
      postprocessing/           python: output ids -> text

A TensorRT engine only runs on the GPU architecture and TensorRT-LLM version it was built with,
so it cannot be built here; a Kubernetes Job on the GPU node pool converts
the Hugging Face checkpoint (`tensorrt_llm.models.*ForCausalLM.from_hugging_face`, stable across
releases) and runs `trtllm-build`, then syncs the engine to
`<bucket>/engines/<model hash>/<sm arch>/trtllm-<version>/<settings hash>/` and writes `_COMPLETE`
last. Triton's pod syncs that prefix to `engine_mount_path` before it starts (workload side).
`EngineBuild` is the recipe; the Job itself is a workload object (`infra/workload/engine_build.py`),
rendered by the CLI and handed to `write_tensorrt_llm_repository` as a manifest dict.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Mapping
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
# Architecture -> the TensorRT-LLM class that converts its Hugging Face checkpoint.
CONVERTERS = {"llama": "LLaMAForCausalLM", "gpt2": "GPTForCausalLM", "mistral": "LLaMAForCausalLM"}
ENGINE_BUILD_JOB_FILE = "engine-build-job.yaml"


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


# --- the engine build Job's file -------------------------------------------------------------


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
    out_dir: Path | str,
    artefacts_dir: Path | str,
    spec: GenerationSpec,
    build: EngineBuild,
    build_job: Mapping[str, Any],
) -> Path:
    """Write the TensorRT-LLM repository and the engine build Job `build_job` (a Kubernetes manifest,
    see `infra.workload.engine_build`) as `engine-build-job.yaml` (see module docs); atomic like
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
        (staging / ENGINE_BUILD_JOB_FILE).write_text(dump_manifest(dict(build_job)), "utf-8")
        info = {"backend": "tensorrt-llm", "spec": json.loads(json.dumps(asdict(spec))), "engine": engine}
        write_manifest(staging, info)
    return out_dir
