"""The gateway in front of TensorRT-LLM's LLM API model: the same OpenAI API, the llmapi tensor names
underneath (serving/gateway/llmapi.py), the tokenizer found in the repository's checkpoint folder.

A real Triton serves our llmapi model.py with the stand-in `tensorrt_llm` of
tests/model_repo/test_tensorrt_llm.py (no GPU here: it echoes the prompt word by word)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import pytest

from model_repo.spec import GenerationSpec
from model_repo.tensorrt_llm import LlmApiOptions, write_tensorrt_llm_repository
from serving.gateway.llmapi import LlmApiUnsupported, is_llmapi, llmapi_inputs, llmapi_tensors
from serving.gateway.triton import GenerationParams
from serving.triton_local import TritonServer, TritonServerConfig
from tests.model_repo.test_tensorrt_llm import FAKE_TENSORRT_LLM, _artefacts, _checkpoint
from tests.serving.conftest import API_KEY, gateway_settings, start_gateway


def test_llmapi_tensors_carry_the_request() -> None:
    params = GenerationParams(prompt="hi", max_tokens=5, temperature=0.0, seed=7, stop=("x",), stream=True)
    tensors = {name: (value.tolist(), kind) for name, value, kind in llmapi_tensors(params)}
    assert tensors["text_input"] == ([b"hi"], "BYTES") and tensors["streaming"] == ([True], "BOOL")
    assert tensors["sampling_param_max_tokens"] == ([5], "INT32")
    assert tensors["sampling_param_top_k"] == ([1], "INT32")  # temperature 0: greedy
    assert tensors["sampling_param_seed"] == ([7], "UINT64") and tensors["sampling_param_stop"][0] == [b"x"]
    assert is_llmapi({"text_input", "sampling_param_max_tokens"}) and not is_llmapi(
        {"text_input", "max_tokens"}
    )
    params = GenerationParams("hi", 5, 0.7, top_k=40, presence_penalty=0.5)
    sampled = {name: value.tolist() for name, value, _ in llmapi_tensors(params)}
    assert sampled["sampling_param_top_k"] == [40] and sampled["sampling_param_presence_penalty"] == [0.5]
    with pytest.raises(LlmApiUnsupported, match="logprobs: the served model"):
        llmapi_inputs(GenerationParams("hi", 5, logprobs=True), lambda *a: a)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_openai_api_through_the_llmapi_model(tmp_path: Path) -> None:
    repo = write_tensorrt_llm_repository(
        tmp_path / "repo", _checkpoint(tmp_path / "ckpt"), _artefacts(tmp_path / "art"), GenerationSpec(),
        LlmApiOptions(model_type="llama"),
    )  # fmt: skip
    fake = repo / "llm" / "1" / "tensorrt_llm"
    fake.mkdir()
    (fake / "__init__.py").write_text(FAKE_TENSORRT_LLM)
    env = {"FAKE_LLM_RECORD": str(tmp_path / "args.json")}
    with TritonServer(TritonServerConfig(repo, startup_timeout_s=90, extra_env=env)) as server:
        running = start_gateway(gateway_settings(server.grpc_url, repo))
        try:
            headers = {"Authorization": f"Bearer {API_KEY}"}
            with httpx.Client(base_url=running.url, headers=headers, timeout=60) as http:
                body = {"model": "llm", "prompt": "alpha beta gamma delta", "max_tokens": 3}
                whole = http.post("/v1/completions", json=body)
                assert whole.status_code == 200, whole.text
                choice = whole.json()["choices"][0]
                assert choice["text"] == "alpha beta gamma" and choice["finish_reason"] == "length"
                assert whole.json()["usage"]["completion_tokens"] > 0  # counted with the tokenizer
                chunks = []
                with http.stream("POST", "/v1/completions", json={**body, "stream": True}) as stream:
                    for line in stream.iter_lines():
                        if line.startswith("data: ") and line != "data: [DONE]":
                            chunks.append(json.loads(line[6:]))
                text = "".join(c["choices"][0]["text"] for c in chunks if c["choices"])
                assert text == "alpha beta gamma"
                refused = http.post("/v1/completions", json={**body, "logprobs": 2})
                assert refused.status_code == 400 and "does not support it" in refused.text
        finally:
            running.stop()
    shutil.rmtree(repo, ignore_errors=True)
