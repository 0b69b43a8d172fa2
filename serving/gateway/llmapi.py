"""The gateway's adapter to TensorRT-LLM's LLM API model (`--backend tensorrt-llm` repositories).

That model speaks its own tensor names (`text_input`, `streaming`, `sampling_param_*`; outputs
`text_output` and `finish_reason`, see model_repo/tensorrt_llm.py) and has no batch dimension. The gateway
recognises it from the model config Triton serves (it declares `sampling_param_max_tokens`), so its
OpenAI API is the same whichever backend serves. Its responses read like the python model's (new text per
response, the finish reason on the last); it reports no token counts, so the gateway counts the answer's
tokens with the model's tokenizer.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

import numpy as np

LLMAPI_MARKER = "sampling_param_max_tokens"
# Request features the llmapi model here has no tensor for (GenerationParams field -> public name).
UNSUPPORTED = {
    "min_p": "min_p",
    "repetition_penalty": "repetition_penalty",
    "logit_bias": "logit_bias",
    "logprobs": "logprobs",
    "top_logprobs": "top_logprobs",
    "n": "n",
    "guide": "response_format/tools",
    "echo_logprobs": "echo with logprobs",
}


class LlmApiUnsupported(ValueError):
    """A request asks for a feature the TensorRT-LLM (llmapi) model does not take; says which."""


def unsupported(params: Any) -> str | None:
    """The public name of the first feature `params` uses that the llmapi model lacks, else None."""
    fields = type(params).__dataclass_fields__
    for name, public in UNSUPPORTED.items():
        if name in fields and getattr(params, name) != fields[name].default:
            return public
    return None


def is_llmapi(model_inputs: Collection[str]) -> bool:
    """Whether a model with these input names is the LLM API model."""
    return LLMAPI_MARKER in model_inputs


def llmapi_tensors(params: Any) -> list[tuple[str, np.ndarray, str]]:
    """(name, value, Triton datatype) of each input for a `GenerationParams`, in the llmapi names."""
    tensors: list[tuple[str, np.ndarray, str]] = [
        ("text_input", np.array([params.prompt.encode("utf-8")], dtype=np.object_), "BYTES"),
        ("streaming", np.array([params.stream], dtype=bool), "BOOL"),
        ("sampling_param_max_tokens", np.array([params.max_tokens], dtype=np.int32), "INT32"),
        ("sampling_param_temperature", np.array([params.temperature], dtype=np.float32), "FP32"),
        ("sampling_param_top_p", np.array([params.top_p], dtype=np.float32), "FP32"),
    ]
    top_k = 1 if params.temperature == 0.0 else int(getattr(params, "top_k", 0))  # temperature 0: greedy
    if top_k:
        tensors.append(("sampling_param_top_k", np.array([top_k], dtype=np.int32), "INT32"))
    for field, name in (("frequency_penalty", "sampling_param_frequency_penalty"),
                        ("presence_penalty", "sampling_param_presence_penalty")):  # fmt: skip
        value = float(getattr(params, field, 0.0))
        if value:
            tensors.append((name, np.array([value], dtype=np.float32), "FP32"))
    if params.seed is not None:
        tensors.append(("sampling_param_seed", np.array([params.seed], dtype=np.uint64), "UINT64"))
    if params.stop:
        stop = np.array([s.encode("utf-8") for s in params.stop], dtype=np.object_)
        tensors.append(("sampling_param_stop", stop, "BYTES"))
    return tensors


def llmapi_inputs(params: Any, make: Callable[[str, np.ndarray, str, bool], Any]) -> list[Any]:
    """The request's inputs built with the gateway's tensor maker (`make(name, value, datatype, batched)`);
    the llmapi model has no batch dimension. `LlmApiUnsupported` names a feature it cannot serve."""
    missing = unsupported(params)
    if missing is not None:
        raise LlmApiUnsupported(
            f"{missing}: the served model (TensorRT-LLM's LLM API backend) does not support it; "
            "leave the parameter out"
        )
    return [make(name, value, datatype, False) for name, value, datatype in llmapi_tensors(params)]
