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
    if params.temperature == 0.0:
        tensors.append(("sampling_param_top_k", np.array([1], dtype=np.int32), "INT32"))  # greedy
    if params.seed is not None:
        tensors.append(("sampling_param_seed", np.array([params.seed], dtype=np.uint64), "UINT64"))
    if params.stop:
        stop = np.array([s.encode("utf-8") for s in params.stop], dtype=np.object_)
        tensors.append(("sampling_param_stop", stop, "BYTES"))
    return tensors


def llmapi_inputs(params: Any, make: Callable[[str, np.ndarray, str, bool], Any]) -> list[Any]:
    """The request's inputs built with the gateway's tensor maker (`make(name, value, datatype, batched)`);
    the llmapi model has no batch dimension."""
    return [make(name, value, datatype, False) for name, value, datatype in llmapi_tensors(params)]
