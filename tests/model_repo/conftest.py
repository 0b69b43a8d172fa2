"""Shared fixtures for tests/model_repo (the build engineer's and the serving engineer's sections)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

# --- serving section: a tiny exported model, its Triton repository and a real Triton ------------


@pytest.fixture(scope="session")
def tiny_repository(tiny_llama_export: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Triton model repository (python backend, model name `llm`) for the tiny fp32 Llama export."""
    from model_repo.layout import write_repository
    from model_repo.spec import GenerationSpec

    out = tmp_path_factory.mktemp("tiny-repository") / "repo"
    return write_repository(out, tiny_llama_export, GenerationSpec(model_name="llm", intra_op_threads=1))


@pytest.fixture(scope="session")
def tiny_triton(tiny_repository: Path) -> Iterator[object]:
    """A real Triton serving `tiny_repository` on loopback for the whole session."""
    from serving.triton_local import TritonServer, TritonServerConfig

    with TritonServer(TritonServerConfig(tiny_repository, startup_timeout_s=120)) as server:
        yield server


# --- build section: tiny checkpoints and their exports (model_repo.checkpoint / export / quantize) ----


@pytest.fixture(scope="session")
def tiny_llama_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Seeded random tiny Llama (2 layers, GQA 4/2 heads) with a locally trained byte-level BPE."""
    from model_repo.checkpoint import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("build-tiny-llama") / "checkpoint", "llama", seed=0)


@pytest.fixture(scope="session")
def tiny_gpt2_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Seeded random tiny GPT-2 with the same tokenizer."""
    from model_repo.checkpoint import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("build-tiny-gpt2") / "checkpoint", "gpt2", seed=0)


@pytest.fixture(scope="session")
def tiny_llama_export(tiny_llama_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Llama exported to fp32 ONNX with KV cache and optimised (an engine model directory)."""
    from model_repo.export import export_onnx

    out = tmp_path_factory.mktemp("build-tiny-llama-onnx") / "fp32"
    return export_onnx(tiny_llama_checkpoint, out).model_dir


@pytest.fixture(scope="session")
def tiny_llama_int8(tiny_llama_export: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Llama export quantised to 8-bit MatMulNBits."""
    from model_repo.quantize import quantize_model

    out = tmp_path_factory.mktemp("build-tiny-int8") / "int8"
    return quantize_model(tiny_llama_export, out, "int8").model_dir


@pytest.fixture(scope="session")
def tiny_engine(tiny_llama_export: Path) -> object:
    """An Engine over the tiny fp32 export, one thread (tests run on 2 shared cores)."""
    from model_repo.engine import Engine

    return Engine.load(tiny_llama_export, num_threads=1)
