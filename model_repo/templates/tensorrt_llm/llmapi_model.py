"""Triton python-backend model that serves a Hugging Face checkpoint through TensorRT-LLM's LLM API.

Shipped in every `--backend tensorrt-llm` repository as `<model>/1/model.py`, beside `model.yaml` (the
`tensorrt_llm.LLM` keyword arguments: `model` (the checkpoint folder, relative to this folder),
`backend: pytorch`, `tensor_parallel_size`, ...) and the checkpoint itself. Runs in NGC's
`tritonserver:<yy.mm>-trtllm-python-py3` image, which carries `tensorrt_llm` and PyYAML.

Tensors follow TensorRT-LLM's own llmapi model: `text_input`, `streaming`, `sampling_param_*`; outputs
`text_output` (the new text of each response) and `finish_reason`. The model is decoupled: a streaming
request gets one response per step, a whole request one response; the last carries the final flag.
`TRITONFORM_TENSOR_PARALLEL_SIZE` (the stack's `triton.gpusPerReplica`) overrides model.yaml's size.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils
import yaml

MODEL_YAML = "model.yaml"
TP_ENV = "TRITONFORM_TENSOR_PARALLEL_SIZE"
# request tensor -> SamplingParams keyword
SAMPLING = {
    "sampling_param_max_tokens": "max_tokens",
    "sampling_param_temperature": "temperature",
    "sampling_param_top_k": "top_k",
    "sampling_param_top_p": "top_p",
    "sampling_param_frequency_penalty": "frequency_penalty",
    "sampling_param_presence_penalty": "presence_penalty",
    "sampling_param_seed": "seed",
}


def engine_arguments(model_dir: Path, environ: dict[str, str]) -> dict[str, Any]:
    """model.yaml's LLM arguments, the checkpoint path made absolute and the stack's TP size applied."""
    arguments = yaml.safe_load((model_dir / MODEL_YAML).read_text()) or {}
    checkpoint = Path(str(arguments["model"]))
    arguments["model"] = str(checkpoint if checkpoint.is_absolute() else model_dir / checkpoint)
    if environ.get(TP_ENV):
        arguments["tensor_parallel_size"] = int(environ[TP_ENV])
    return arguments


def _scalar(request: Any, name: str) -> Any:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return None
    value = tensor.as_numpy().reshape(-1)[0]
    return value.item() if isinstance(value, np.generic) else value  # BYTES arrive as Python bytes


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


class TritonPythonModel:
    """One `tensorrt_llm.LLM` per model instance, driven from an asyncio loop on its own thread."""

    def initialize(self, args: dict[str, str]) -> None:
        from tensorrt_llm import LLM, SamplingParams

        self._sampling_params = SamplingParams
        model_dir = Path(args["model_repository"]) / args["model_version"]
        self.arguments = engine_arguments(model_dir, dict(os.environ))
        pb_utils.Logger.log_info(f"tritonform llmapi: starting LLM({json.dumps(self.arguments)})")
        self.llm = LLM(**self.arguments)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="llmapi-loop", daemon=True)
        self.thread.start()

    def execute(self, requests: list[Any]) -> None:
        for request in requests:
            asyncio.run_coroutine_threadsafe(self._generate(request), self.loop)
        return None

    def _parse(self, request: Any) -> tuple[str, Any, bool]:
        prompt = _text(_scalar(request, "text_input"))
        options = {
            key: value for name, key in SAMPLING.items() if (value := _scalar(request, name)) is not None
        }
        stop = pb_utils.get_input_tensor_by_name(request, "sampling_param_stop")
        if stop is not None:
            options["stop"] = [_text(s) for s in stop.as_numpy().reshape(-1) if _text(s)]
        return prompt, self._sampling_params(**options), bool(_scalar(request, "streaming") or False)

    async def _generate(self, request: Any) -> None:
        sender = request.get_response_sender()
        try:
            prompt, params, streaming = self._parse(request)
            sent = 0
            async for output in self.llm.generate_async(prompt, params, streaming=streaming):
                if sender.is_cancelled():
                    output.abort()
                    sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
                    return
                completion = output.outputs[0]
                reason = completion.finish_reason or ""
                if streaming or output.finished:
                    text = completion.text[sent:] if streaming else completion.text
                    sent = len(completion.text)
                    final = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL if output.finished else 0
                    sender.send(self._response(text, reason if output.finished else ""), flags=final)
        except Exception as exc:  # one request's failure is its error response, not the model's
            error = pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(str(exc)))
            sender.send(error, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    @staticmethod
    def _response(text: str, reason: str) -> Any:
        return pb_utils.InferenceResponse(
            output_tensors=[
                pb_utils.Tensor("text_output", np.array([text.encode("utf-8")], dtype=np.object_)),
                pb_utils.Tensor("finish_reason", np.array([reason.encode("utf-8")], dtype=np.object_)),
            ]
        )

    def finalize(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=30)
        self.llm.shutdown()
