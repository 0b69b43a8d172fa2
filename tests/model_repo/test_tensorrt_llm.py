"""`--backend tensorrt-llm`: the llmapi repository (checkpoint + model.yaml + config parsed with Triton's
schema), the model types it takes, and its model.py run by a real Triton server with a stand-in
`tensorrt_llm` package: there is no GPU here, so `tensorrt_llm.LLM` is a small fake that echoes the prompt
word by word; what is checked is our adapter (arguments, tensors, streaming, finish reasons, errors)."""

from __future__ import annotations

import json
import queue
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from model_repo.layout import LayoutError
from model_repo.manifest import engine_dir, read_manifest
from model_repo.spec import GenerationSpec, SpecError, parse_model_config
from model_repo.tensorrt_llm import LLMAPI_INPUTS, LlmApiOptions, write_tensorrt_llm_repository


def _artefacts(root: Path) -> Path:
    """tokenizer.json + generation.json from a real tiny tokenizer (no export needed)."""
    from model_repo.checkpoint import train_tiny_tokenizer

    root.mkdir(parents=True)
    train_tiny_tokenizer().save(str(root / "tokenizer.json"))  # type: ignore[attr-defined]
    (root / "generation.json").write_text(json.dumps({"eos_token_ids": [2], "pad_token_id": 2}))
    return root


def _checkpoint(root: Path, model_type: str = "llama") -> Path:
    root.mkdir(parents=True)
    (root / "config.json").write_text(json.dumps({"model_type": model_type, "num_hidden_layers": 2}))
    (root / "model.safetensors").write_bytes(b"weights")
    (root / "optimizer.pt").write_bytes(b"not served")
    return root


@pytest.fixture(scope="module")
def llmapi_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("llmapi")
    options = LlmApiOptions(model_type="llama", tensor_parallel_size=2)
    return write_tensorrt_llm_repository(
        root / "repo", _checkpoint(root / "ckpt"), _artefacts(root / "art"), GenerationSpec(), options
    )


def test_layout_model_yaml_and_config(llmapi_repo: Path) -> None:
    config = parse_model_config((llmapi_repo / "llm" / "config.pbtxt").read_text())
    assert config.backend == "python" and config.model_transaction_policy.decoupled
    assert [t.name for t in config.input] == [t.name for t in LLMAPI_INPUTS]
    assert [t.name for t in config.output] == ["text_output", "finish_reason"]
    model_yaml = yaml.safe_load((llmapi_repo / "llm" / "1" / "model.yaml").read_text())
    assert model_yaml["backend"] == "pytorch" and model_yaml["tensor_parallel_size"] == 2
    assert model_yaml["model"] == "checkpoint"
    checkpoint = engine_dir(llmapi_repo, "llm")  # where the gateway's locator looks for the tokenizer
    assert checkpoint == llmapi_repo / "llm" / "1" / "checkpoint"
    assert sorted(p.name for p in checkpoint.iterdir()) == [
        "config.json", "generation.json", "model.safetensors", "tokenizer.json"
    ]  # fmt: skip
    manifest = read_manifest(llmapi_repo)
    assert manifest["backend"] == "tensorrt-llm" and manifest["protocol"] == "llmapi"
    assert manifest["llmapi"]["image_suffix"] == "-trtllm-python-py3"


def test_qwen2_is_served_as_qwen2_and_unknown_types_are_refused(tmp_path: Path) -> None:
    options = LlmApiOptions(model_type="qwen2")
    repo = write_tensorrt_llm_repository(
        tmp_path / "repo", _checkpoint(tmp_path / "ckpt", "qwen2"), _artefacts(tmp_path / "art"),
        GenerationSpec(), options,
    )  # fmt: skip
    config = json.loads((engine_dir(repo, "llm") / "config.json").read_text())
    assert config["model_type"] == "qwen2" and read_manifest(repo)["llmapi"]["model_type"] == "qwen2"
    with pytest.raises(SpecError, match=r"build it with --backend onnx"):
        LlmApiOptions(model_type="gpt2")
    with pytest.raises(LayoutError, match=r"no config\.json"):
        write_tensorrt_llm_repository(
            tmp_path / "bad", tmp_path / "art", tmp_path / "art", GenerationSpec(), options
        )


# A stand-in for the GPU-only `tensorrt_llm` package: records LLM's arguments, echoes the prompt.
FAKE_TENSORRT_LLM = """
import asyncio
import json
import os
from types import SimpleNamespace


class SamplingParams:
    def __init__(self, **kwargs):
        self.kwargs = kwargs


class _Output:
    def __init__(self):
        self.aborted = False

    def abort(self):
        self.aborted = True


class LLM:
    def __init__(self, **kwargs):
        with open(os.environ["FAKE_LLM_RECORD"], "w") as handle:
            json.dump(kwargs, handle)

    async def generate_async(self, prompt, params, streaming=False):
        if prompt == "fail":
            raise RuntimeError("the engine refused this prompt")
        words = prompt.split()[: params.kwargs.get("max_tokens", 16)]
        stop = params.kwargs.get("stop") or []
        text, reason = "", "length"
        for i, word in enumerate(words):
            if word in stop:
                reason = "stop"
                break
            text += (" " if text else "") + word
            finished = i == len(words) - 1
            if streaming or finished:
                out = _Output()
                out.outputs = [SimpleNamespace(text=text, finish_reason=reason if finished else None)]
                out.finished = finished
                yield out
            await asyncio.sleep(0)
        else:
            return
        out = _Output()
        out.outputs = [SimpleNamespace(text=text, finish_reason=reason)]
        out.finished = True
        yield out

    def shutdown(self):
        pass
"""


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_real_triton_runs_the_llmapi_model_with_a_stand_in_llm(llmapi_repo: Path, tmp_path: Path) -> None:
    import tritonclient.grpc as grpcclient

    from serving.triton_local import TritonServer, TritonServerConfig

    repo = tmp_path / "repo"
    shutil.copytree(llmapi_repo, repo)
    fake = repo / "llm" / "1" / "tensorrt_llm"  # the python backend puts the version folder on sys.path
    fake.mkdir()
    (fake / "__init__.py").write_text(FAKE_TENSORRT_LLM)
    record = tmp_path / "llm-arguments.json"
    env = {"FAKE_LLM_RECORD": str(record), "TRITONFORM_TENSOR_PARALLEL_SIZE": "4"}

    def run(url: str, prompt: str, stream: bool, **extra: Any) -> list[Any]:
        client = grpcclient.InferenceServerClient(url)
        answers: queue.Queue[Any] = queue.Queue()
        client.start_stream(callback=lambda result, error: answers.put((result, error)))
        values: dict[str, tuple[Any, str]] = {
            "text_input": (np.array([prompt.encode()], dtype=np.object_), "BYTES"),
            "streaming": (np.array([stream]), "BOOL"),
            "sampling_param_max_tokens": (np.array([3], dtype=np.int32), "INT32"),
            **extra,
        }
        inputs = []
        for name, (value, kind) in values.items():
            tensor = grpcclient.InferInput(name, list(value.shape), kind)
            tensor.set_data_from_numpy(value)
            inputs.append(tensor)
        client.async_stream_infer("llm", inputs, enable_empty_final_response=True)
        results = []
        while True:
            result, error = answers.get(timeout=30)
            if error is not None:
                results.append(error)
                break
            response = result.get_response()
            if response.outputs:
                results.append(result)
            if response.parameters["triton_final_response"].bool_param:
                break
        client.stop_stream()
        client.close()
        return results

    def text(result: Any, name: str = "text_output") -> str:
        return str(result.as_numpy(name).reshape(-1)[0].decode())

    with TritonServer(TritonServerConfig(repo, startup_timeout_s=90, extra_env=env)) as server:
        arguments = json.loads(record.read_text())
        assert arguments["backend"] == "pytorch" and arguments["tensor_parallel_size"] == 4  # the stack's
        assert arguments["model"] == str(repo / "llm" / "1" / "checkpoint")
        (whole,) = run(server.grpc_url, "one two three four", stream=False)
        assert text(whole) == "one two three" and text(whole, "finish_reason") == "length"
        parts = run(server.grpc_url, "one two three four", stream=True)
        assert [text(p) for p in parts] == ["one", " two", " three"]
        assert [text(p, "finish_reason") for p in parts] == ["", "", "length"]
        stop = {"sampling_param_stop": (np.array([b"two"], dtype=np.object_), "BYTES")}
        (cut,) = run(server.grpc_url, "one two three", stream=False, **stop)
        assert text(cut) == "one" and text(cut, "finish_reason") == "stop"
        (failed,) = run(server.grpc_url, "fail", stream=False)
        assert "the engine refused this prompt" in str(failed)
