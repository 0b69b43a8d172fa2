"""`--backend tensorrt-llm`: layout, configs parsed with Triton's schema, engine keys, the build Job,
and the ensemble run by a real Triton with a stand-in for the GPU-only `tensorrt_llm` step."""

from __future__ import annotations

import dataclasses
import json
import queue
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from model_repo.manifest import read_manifest
from model_repo.spec import GenerationSpec, SpecError, parse_model_config, render_model_config
from model_repo.tensorrt_llm import (
    EngineBuild,
    gpu_architecture,
    tensorrt_llm_config,
    write_tensorrt_llm_repository,
)
from tritonform.commands.model import render_engine_build_job

MODEL_HASH = "0123456789abcdef" * 4


def _build(bucket: str = "s3://bucket/models", **kw: Any) -> EngineBuild:
    return EngineBuild(
        model_hash=MODEL_HASH,
        architecture="llama",
        checkpoint_uri=bucket.rstrip("/") + "/checkpoints/" + MODEL_HASH[:16],
        bucket_uri=bucket,
        gpu_type="nvidia-l4",
        **kw,
    )


def _artefacts(root: Path) -> Path:
    """tokenizer.json + generation.json from a real tiny tokenizer (no export needed)."""
    from model_repo.checkpoint import train_tiny_tokenizer

    root.mkdir(parents=True)
    train_tiny_tokenizer().save(str(root / "tokenizer.json"))  # type: ignore[attr-defined]
    (root / "generation.json").write_text(json.dumps({"eos_token_ids": [2], "pad_token_id": 2}))
    return root


@pytest.fixture(scope="module")
def trt_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("trtllm")
    spec, build = GenerationSpec(), _build()
    job = render_engine_build_job(spec, build)
    return write_tensorrt_llm_repository(root / "repo", _artefacts(root / "art"), spec, build, job)


def _configs(repo: Path) -> dict[str, Any]:
    return {p.parent.name: parse_model_config(p.read_text()) for p in repo.glob("*/config.pbtxt")}


def test_layout_and_configs_parse(trt_repo: Path) -> None:
    configs = _configs(trt_repo)
    assert sorted(configs) == ["llm", "postprocessing", "preprocessing", "tensorrt_llm"]
    assert configs["llm"].platform == "ensemble" and configs["tensorrt_llm"].backend == "tensorrtllm"
    assert configs["tensorrt_llm"].model_transaction_policy.decoupled
    params = {k: v.string_value for k, v in configs["tensorrt_llm"].parameters.items()}
    assert params["gpt_model_path"] == "/engines/current" and params["exclude_input_in_output"] == "true"
    for step in ("preprocessing", "postprocessing"):
        assert (trt_repo / step / "1" / "model.py").is_file() and (
            trt_repo / step / "1" / "tokenizer.json"
        ).is_file()
    engine = json.loads((trt_repo / "tensorrt_llm" / "1" / "ENGINE.json").read_text())
    assert engine["engine_uri"].startswith(
        f"s3://bucket/models/engines/{MODEL_HASH[:16]}/sm89/trtllm-0.21.0/"
    )
    assert read_manifest(trt_repo)["backend"] == "tensorrt-llm"


def test_ensemble_maps_only_existing_tensors(trt_repo: Path) -> None:
    configs = _configs(trt_repo)
    ensemble = configs["llm"]
    produced = {t.name for t in ensemble.input}
    for step in ensemble.ensemble_scheduling.step:
        model = configs[step.model_name]
        inputs, outputs = {t.name for t in model.input}, {t.name for t in model.output}
        assert set(step.input_map) <= inputs, step.model_name
        assert set(step.output_map) <= outputs, step.model_name
        required = {t.name for t in model.input if not t.optional}
        assert required <= set(step.input_map), step.model_name
        assert set(step.input_map.values()) <= produced, step.model_name
        produced |= set(step.output_map.values())
    assert {t.name for t in ensemble.output} <= produced


def test_same_public_tensors_as_the_onnx_backend(trt_repo: Path) -> None:
    from model_repo.spec import python_model_config

    onnx = parse_model_config(render_model_config(python_model_config(GenerationSpec())))
    ensemble = _configs(trt_repo)["llm"]
    # the python model alone also takes the prompt as token ids and returns prompt_tokens, finish_reason
    onnx_inputs = [(t.name, t.data_type) for t in onnx.input if t.name != "input_ids"]
    assert [(t.name, t.data_type) for t in ensemble.input] == onnx_inputs
    onnx_outputs = [
        (t.name, t.data_type) for t in onnx.output if t.name not in ("prompt_tokens", "finish_reason")
    ]
    assert [(t.name, t.data_type) for t in ensemble.output] == onnx_outputs


def test_engine_key_depends_on_gpu_version_and_settings() -> None:
    spec = GenerationSpec()
    base = _build().engine_uri(spec)
    h100 = dataclasses.replace(_build(), gpu_type="h100").engine_uri(spec)
    newer = dataclasses.replace(_build(), triton_release="25.12").engine_uri(spec)
    int8 = dataclasses.replace(_build(), weight_only="int8").engine_uri(spec)
    assert len({base, h100, newer, int8}) == 4
    assert "/sm90/" in h100 and "/trtllm-1.1.0/" in newer
    assert base == _build().engine_uri(spec)  # deterministic
    assert gpu_architecture("A10G") == "sm86" and gpu_architecture("nvidia-tesla-t4") == "sm75"
    with pytest.raises(SpecError, match="unknown; known"):
        gpu_architecture("v100")
    with pytest.raises(SpecError, match="triton_release"):
        _build(triton_release="23.01")


def test_job_file_is_plain_yaml(trt_repo: Path) -> None:
    text = (trt_repo / "engine-build-job.yaml").read_text()
    assert "&id" not in text and "*id" not in text
    assert yaml.safe_load(text)["kind"] == "Job"
    assert yaml.safe_load(text) == render_engine_build_job(GenerationSpec(), _build())  # the Job it was given


FAKE_ENGINE = '''
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    """Stand-in for the GPU-only TensorRT-LLM backend: echoes the prompt's tokens, one per step,
    up to (not including) the first one equal to end_id."""

    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            ids = pb_utils.get_input_tensor_by_name(request, "input_ids").as_numpy()[0]
            n = pb_utils.get_input_tensor_by_name(request, "request_output_len").as_numpy()
            n = int(n.reshape(-1)[0])
            stream = pb_utils.get_input_tensor_by_name(request, "streaming")
            stream = bool(stream.as_numpy().reshape(-1)[0]) if stream is not None else False
            end = int(pb_utils.get_input_tensor_by_name(request, "end_id").as_numpy().reshape(-1)[0])
            out = ids[:n].astype(np.int32)
            if end in out:
                out = out[: list(out).index(end)]
            chunks = [out[i : i + 1] for i in range(len(out))] if stream else [out]
            for i, chunk in enumerate(chunks):
                tensors = [
                    pb_utils.Tensor("output_ids", chunk.reshape(1, 1, -1)),
                    pb_utils.Tensor("sequence_length", np.array([[len(chunk)]], dtype=np.int32)),
                ]
                final = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL if i == len(chunks) - 1 else 0
                sender.send(pb_utils.InferenceResponse(output_tensors=tensors), flags=final)
        return None
'''


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_real_triton_runs_the_ensemble_with_a_stand_in_engine(tmp_path: Path) -> None:
    import tritonclient.grpc as grpcclient
    from tokenizers import Tokenizer

    from serving.triton_local import TritonServer, TritonServerConfig

    spec = GenerationSpec()
    job = render_engine_build_job(spec, _build())
    repo = write_tensorrt_llm_repository(tmp_path / "repo", _artefacts(tmp_path / "art"), spec, _build(), job)
    # the real tensorrtllm backend needs a GPU: same config, python backend, echoing stand-in
    stand_in = dataclasses.replace(tensorrt_llm_config(spec, _build()), backend="python")
    (repo / "tensorrt_llm" / "config.pbtxt").write_text(render_model_config(stand_in))
    (repo / "tensorrt_llm" / "1" / "model.py").write_text(FAKE_ENGINE)
    tokenizer = Tokenizer.from_file(str(repo / "preprocessing" / "1" / "tokenizer.json"))
    prompt = "hello world the end"
    ids = tokenizer.encode(prompt, add_special_tokens=False).ids

    def run(client_url: str, stream: bool, end_id: int | None = None) -> list[Any]:
        client = grpcclient.InferenceServerClient(client_url)
        answers: queue.Queue[Any] = queue.Queue()
        client.start_stream(callback=lambda result, error: answers.put((result, error)))
        inputs = []
        for name, value, kind in (
            ("text_input", np.array([[prompt.encode()]], dtype=np.object_), "BYTES"),
            ("max_tokens", np.array([[3]], dtype=np.int32), "INT32"),
            ("stream", np.array([[stream]], dtype=bool), "BOOL"),
            ("stop_words", np.array([[b"zzz", b"end"]], dtype=np.object_), "BYTES"),
            *([] if end_id is None else [("end_id", np.array([[end_id]], dtype=np.int32), "INT32")]),
        ):
            tensor = grpcclient.InferInput(name, list(value.shape), kind)
            tensor.set_data_from_numpy(value)
            inputs.append(tensor)
        client.async_stream_infer("llm", inputs, enable_empty_final_response=True)
        results = []
        while True:
            result, error = answers.get(timeout=30)
            assert error is None, error
            response = result.get_response()
            if response.outputs:
                results.append(result)
            if response.parameters["triton_final_response"].bool_param:
                break
        client.stop_stream()
        client.close()
        return results

    with TritonServer(TritonServerConfig(repo, startup_timeout_s=90)) as server:
        assert {m["name"]: m["state"] for m in server.model_states()} == dict.fromkeys(
            ["llm", "postprocessing", "preprocessing", "tensorrt_llm"], "READY"
        )
        (whole,) = run(server.grpc_url, stream=False)
        assert whole.as_numpy("text_output").reshape(-1)[0].decode() == tokenizer.decode(ids[:3])
        assert int(whole.as_numpy("completion_tokens").reshape(-1)[0]) == 3
        parts = run(server.grpc_url, stream=True)
        assert [tokenizer.decode([i]) for i in ids[:3]] == [
            p.as_numpy("text_output").reshape(-1)[0].decode() for p in parts
        ]
        assert [int(p.as_numpy("completion_tokens").reshape(-1)[0]) for p in parts] == [1, 1, 1]
        # a client's end_id reaches the engine in place of the model's eos
        (cut,) = run(server.grpc_url, stream=False, end_id=ids[1])
        assert cut.as_numpy("text_output").reshape(-1)[0].decode() == tokenizer.decode(ids[:1])
