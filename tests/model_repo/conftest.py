"""Fixtures for tests/model_repo; the tiny Llama, its export and repository are in tests/conftest.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

# --- serving section: a tiny exported model, its Triton repository and a real Triton ------------


@pytest.fixture(scope="session")
def tiny_triton(tiny_repository: Path) -> Iterator[object]:
    """A real Triton serving `tiny_repository` on loopback for the whole session."""
    from serving.triton_local import TritonServer, TritonServerConfig

    with TritonServer(TritonServerConfig(tiny_repository, startup_timeout_s=120)) as server:
        yield server


# --- build section: tiny checkpoints and their exports (model_repo.checkpoint / export / quantize) ----


@pytest.fixture(scope="session")
def tiny_gpt2_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Seeded random tiny GPT-2 with the same tokenizer."""
    from model_repo.checkpoint import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("build-tiny-gpt2") / "checkpoint", "gpt2", seed=0)


@pytest.fixture(scope="session")
def tiny_llama_int8(tiny_llama_export: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Llama export quantised to 8-bit MatMulNBits."""
    from model_repo.quantize import quantize_model

    out = tmp_path_factory.mktemp("build-tiny-int8") / "int8"
    return quantize_model(tiny_llama_export, out, "int8").model_dir


@pytest.fixture(scope="session")
def tiny_gpt2_export(tiny_gpt2_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny GPT-2 exported: its attention stays a plain graph (left-padded batches)."""
    from model_repo.export import export_onnx

    return export_onnx(tiny_gpt2_checkpoint, tmp_path_factory.mktemp("build-tiny-gpt2") / "export").model_dir


@pytest.fixture(scope="session")
def tiny_engine(tiny_llama_export: Path) -> object:
    """An Engine over the tiny fp32 export, one thread (tests run on 2 shared cores)."""
    from model_repo.runtime.engine import Engine

    return Engine.load(tiny_llama_export, num_threads=1)


@pytest.fixture(scope="session")
def tiny_llama_fp16(tiny_llama_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Llama loaded in fp16 and exported (weights, activations and KV cache fp16; logits fp32)."""
    from model_repo.export import export_onnx

    out = tmp_path_factory.mktemp("build-tiny-fp16") / "fp16"
    return export_onnx(tiny_llama_checkpoint, out, dtype="float16").model_dir
