"""Session fixtures shared by every test folder: one tiny Llama, exported and laid out once per run.

Exporting costs tens of seconds on our machines, so the model_repo, serving and e2e tests all use
these instead of building their own copies. Tests only read them.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.procs import marked_processes

# Every process the suite starts inherits this mark, so the suite can tell what it left running.
SESSION_MARK = "TRITONFORM_TEST_SESSION"
# Servers the suite starts that must not outlive it (the supervisor, Triton, its python stubs).
SERVER_WORDS = ("tritonserver", "triton_python_backend_stub", "serving.supervised")


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault(SESSION_MARK, uuid.uuid4().hex)


@pytest.fixture(scope="session", autouse=True)
def no_server_outlives_the_suite() -> Iterator[None]:
    """After the last test: no Triton (or its supervisor or stubs) that this run started is still alive."""
    yield
    leftover = [
        process
        for process in marked_processes(SESSION_MARK, os.environ[SESSION_MARK])
        if any(word in process for word in SERVER_WORDS)
    ]
    assert leftover == [], f"servers started by the tests are still running: {leftover}"


@pytest.fixture(scope="session")
def cpu_ops_library() -> str:
    """tritonform's CPU operator library, built once (model_repo/cpu_ops.py: cached by content under the
    kit's cache; the first build fetches onnxruntime's C header from Debian's archive)."""
    from model_repo.cpu_ops import build_library

    return str(build_library())


@pytest.fixture(scope="session")
def tiny_llama_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Seeded random tiny Llama (2 layers, GQA 4/2 heads) with a locally trained byte-level BPE."""
    from model_repo.checkpoint import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("build-tiny-llama") / "checkpoint", "llama", seed=0)


@pytest.fixture(scope="session")
def tiny_llama_export(tiny_llama_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Llama exported to fp32 ONNX with KV cache and optimised (an engine model directory)."""
    from model_repo.export import export_onnx

    out = tmp_path_factory.mktemp("build-tiny-llama-onnx") / "fp32"
    return export_onnx(tiny_llama_checkpoint, out).model_dir


@pytest.fixture(scope="session")
def tiny_repository(tiny_llama_export: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Triton model repository (python backend, model name `llm`) for the tiny fp32 Llama export."""
    from model_repo.layout import write_repository
    from model_repo.spec import GenerationSpec

    out = tmp_path_factory.mktemp("tiny-repository") / "repo"
    return write_repository(
        out, tiny_llama_export, GenerationSpec(model_name="llm", intra_op_threads=1, decode_lanes=2)
    )
