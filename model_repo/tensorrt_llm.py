"""`--backend tensorrt-llm`: a Triton repository that serves the checkpoint through TensorRT-LLM's LLM API.

TensorRT-LLM's PyTorch backend loads a Hugging Face checkpoint directly (no engine build, no converter
per architecture), so the repository carries the checkpoint itself:

    out_dir/
      REPOSITORY.json             manifest (backend "tensorrt-llm", protocol "llmapi", spec, llmapi)
      <spec.model_name>/
        config.pbtxt              python backend, decoupled, the llmapi tensors (LLMAPI_INPUTS/OUTPUTS)
        1/model.py                templates/tensorrt_llm/llmapi_model.py
        1/model.yaml              tensorrt_llm.LLM arguments: model, backend pytorch, tensor_parallel_size...
        1/checkpoint/             config.json, safetensors, tokenizer files, tokenizer.json, generation.json

It runs in NGC's `tritonserver:<yy.mm>-trtllm-python-py3` image. The gateway finds tokenizer.json and
generation.json in `<model>/1/checkpoint/` through the manifest (`spec.engine_subdir`), as for ONNX.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

import yaml

from model_repo.layout import LayoutError, replaced_atomically
from model_repo.manifest import MODEL_VERSION, write_manifest
from model_repo.runtime.contract import METADATA_FILE, TOKENIZER_FILE
from model_repo.spec import (
    DataType,
    GenerationSpec,
    InstanceGroup,
    ModelConfig,
    SpecError,
    TensorSpec,
    render_model_config,
)

TEMPLATES = Path(__file__).parent / "templates" / "tensorrt_llm"
CHECKPOINT_SUBDIR = "checkpoint"
PROTOCOL = "llmapi"
IMAGE_SUFFIX = "-trtllm-python-py3"
# Hugging Face model types TensorRT-LLM's PyTorch backend serves from their own config (each by its own
# modelling code: Qwen2 is not Llama).
LLMAPI_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2"})
# Checkpoint files the LLM API reads; weights and configs only (no optimiser states, no ONNX).
CHECKPOINT_PATTERNS = ("*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken", "*.jinja")

_SCALAR = (1,)
LLMAPI_INPUTS = (
    TensorSpec("text_input", DataType.STRING, _SCALAR),
    TensorSpec("streaming", DataType.BOOL, _SCALAR, optional=True),
    TensorSpec("sampling_param_max_tokens", DataType.INT32, _SCALAR, optional=True),
    TensorSpec("sampling_param_temperature", DataType.FP32, _SCALAR, optional=True),
    TensorSpec("sampling_param_top_k", DataType.INT32, _SCALAR, optional=True),
    TensorSpec("sampling_param_top_p", DataType.FP32, _SCALAR, optional=True),
    TensorSpec("sampling_param_frequency_penalty", DataType.FP32, _SCALAR, optional=True),
    TensorSpec("sampling_param_presence_penalty", DataType.FP32, _SCALAR, optional=True),
    TensorSpec("sampling_param_seed", DataType.UINT64, _SCALAR, optional=True),
    TensorSpec("sampling_param_stop", DataType.STRING, (-1,), optional=True),
)
LLMAPI_OUTPUTS = (
    TensorSpec("text_output", DataType.STRING, (-1,)),
    TensorSpec("finish_reason", DataType.STRING, (-1,)),
)


@dataclass(frozen=True)
class LlmApiOptions:
    """What model.yaml tells `tensorrt_llm.LLM`."""

    model_type: str
    tensor_parallel_size: int = 1
    dtype: Literal["auto", "float16", "bfloat16"] = "auto"
    max_seq_len: int = 4096
    max_batch_size: int = 8

    def __post_init__(self) -> None:
        if self.model_type not in LLMAPI_MODEL_TYPES:
            raise SpecError(
                f"model type {self.model_type!r}: TensorRT-LLM's LLM API backend here serves "
                f"{', '.join(sorted(LLMAPI_MODEL_TYPES))}; build it with --backend onnx"
            )
        if not 1 <= self.tensor_parallel_size <= 8:
            raise SpecError(f"tensor parallel size {self.tensor_parallel_size}: must be 1 to 8")

    def model_yaml(self) -> dict[str, Any]:
        return {
            "model": CHECKPOINT_SUBDIR,
            "backend": "pytorch",
            "tensor_parallel_size": self.tensor_parallel_size,
            "pipeline_parallel_size": 1,
            "dtype": self.dtype,
            "max_seq_len": self.max_seq_len,
            "max_batch_size": self.max_batch_size,
        }


def llmapi_config(spec: GenerationSpec) -> ModelConfig:
    """The repository's one model: the python backend running the LLM API, decoupled (streams)."""
    return ModelConfig(
        name=spec.model_name,
        backend="python",
        max_batch_size=0,  # the LLM API batches in flight itself; Triton hands requests over one by one
        decoupled=True,
        inputs=LLMAPI_INPUTS,
        outputs=LLMAPI_OUTPUTS,
        instance_groups=(InstanceGroup("KIND_CPU", 1),),
    )


def write_tensorrt_llm_repository(
    out_dir: Path | str,
    checkpoint_dir: Path | str,
    artefacts_dir: Path | str,
    spec: GenerationSpec,
    options: LlmApiOptions,
) -> Path:
    """Write the llmapi repository (module docs), atomically like `model_repo.layout.write_repository`.

    `checkpoint_dir` is the Hugging Face checkpoint; `artefacts_dir` provides tokenizer.json and
    generation.json (and build_report.json when present)."""
    out_dir, checkpoint_dir, artefacts_dir = Path(out_dir), Path(checkpoint_dir), Path(artefacts_dir)
    missing = [n for n in (TOKENIZER_FILE, METADATA_FILE) if not (artefacts_dir / n).is_file()]
    if missing:
        raise LayoutError(f"artefacts directory {artefacts_dir} lacks {', '.join(missing)}")
    if not (checkpoint_dir / "config.json").is_file():
        raise LayoutError(f"{checkpoint_dir} is not a Hugging Face checkpoint (no config.json)")
    spec = replace(spec, engine_subdir=CHECKPOINT_SUBDIR)
    with replaced_atomically(out_dir) as staging:
        version_dir = staging / spec.model_name / MODEL_VERSION
        checkpoint = version_dir / CHECKPOINT_SUBDIR
        checkpoint.mkdir(parents=True)
        for pattern in CHECKPOINT_PATTERNS:
            for source in sorted(checkpoint_dir.glob(pattern)):
                shutil.copy2(source, checkpoint / source.name)
        for artefact in sorted(artefacts_dir.iterdir()):
            if artefact.is_file():
                shutil.copy2(artefact, checkpoint / artefact.name)
        (staging / spec.model_name / "config.pbtxt").write_text(
            render_model_config(llmapi_config(spec)), "utf-8"
        )
        shutil.copy2(TEMPLATES / "llmapi_model.py", version_dir / "model.py")
        (version_dir / "model.yaml").write_text(
            yaml.safe_dump(options.model_yaml(), sort_keys=False), "utf-8"
        )
        info = {
            "backend": "tensorrt-llm",
            "protocol": PROTOCOL,
            "spec": json.loads(json.dumps(asdict(spec))),
            "llmapi": {**asdict(options), "image_suffix": IMAGE_SUFFIX},
        }
        write_manifest(staging, info)
    return out_dir
