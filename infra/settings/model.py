"""The model a stack serves, as the fit and cost estimates need it (the `model:` block).

Either a checkpoint's `config.json` (`configJson`, relative to the project root) or the architecture's
numbers; with neither, the kit's default model (SmolLM2-135M-Instruct). Precision, context length and
concurrency say how it is served; `backend` is the Triton backend the uploaded repository uses.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from infra.settings.base import Settings
from infra.sizing import ModelShape, ModelShapeError, Precision, shape_from_config_file

Backend = Literal["onnx", "tensorrt-llm"]
# The project root: where relative `configJson` paths start (the Pulumi program also runs there).
PROJECT_ROOT = Path(__file__).resolve().parents[2]


class ModelSettings(Settings):
    """What Triton serves: its shape, precision, context and how many sequences one replica holds."""

    name: str = "SmolLM2-135M-Instruct"
    config_json: str | None = None  # a checkpoint's config.json; overrides the numbers below
    parameters_b: float | None = Field(default=None, gt=0, le=2000)  # billions; None: counted from the shape
    layers: int = Field(default=30, ge=1, le=1000)
    hidden_size: int = Field(default=576, ge=16, le=131072)
    intermediate_size: int = Field(default=1536, ge=16, le=524288)
    attention_heads: int = Field(default=9, ge=1, le=1024)
    kv_heads: int = Field(default=3, ge=1, le=1024)
    head_dim: int | None = Field(default=None, ge=8, le=1024)
    vocab_size: int = Field(default=49152, ge=16, le=4_000_000)
    tied_embeddings: bool = True
    precision: Precision = "fp16"
    context_length: int = Field(default=4096, ge=16, le=2_000_000)
    concurrency: int = Field(default=8, ge=1, le=4096)  # sequences one replica decodes at once
    backend: Backend = "onnx"

    @model_validator(mode="after")
    def _heads(self) -> ModelSettings:
        if self.config_json is None and self.attention_heads % self.kv_heads:
            raise ValueError(
                f"model.kvHeads: {self.kv_heads} must divide attentionHeads ({self.attention_heads}) "
                "(grouped-query attention shares each KV head among a whole number of query heads)"
            )
        if self.config_json is not None:
            self.shape()  # a missing or wrong config.json is a settings error, named here
        return self

    def compute_precision(self) -> str:
        """The activations' and KV cache's precision: the ONNX backend's weight-only int8/int4 builds
        keep fp32 activations and an fp32 KV cache (model_repo/build.py refuses --dtype with
        --quantize); TensorRT-LLM's weight-only formats compute in 16 bits."""
        if self.backend == "onnx" and self.precision in ("int8", "int4"):
            return "fp32"
        return self.precision

    def shape(self) -> ModelShape:
        """The model's shape: read from `configJson`, else from the numbers given."""
        if self.config_json is not None:
            path = Path(self.config_json)
            path = path if path.is_absolute() else PROJECT_ROOT / path
            try:
                shape = shape_from_config_file(path)
            except ModelShapeError as exc:
                raise ValueError(f"model.configJson: {exc}") from None
            if self.parameters_b is not None:
                shape = ModelShape(**{**shape.__dict__, "parameters": self.parameters_b * 1e9})
            return ModelShape(**{**shape.__dict__, "name": self.name})
        return ModelShape(
            name=self.name,
            layers=self.layers,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            attention_heads=self.attention_heads,
            kv_heads=self.kv_heads,
            vocab_size=self.vocab_size,
            head_dim=self.head_dim or 0,
            tied_embeddings=self.tied_embeddings,
            parameters=(self.parameters_b or 0.0) * 1e9,
        )
