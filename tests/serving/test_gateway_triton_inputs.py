"""The gateway's request to Triton: each OpenAI parameter as the contract's tensor (model_repo/spec.py,
TensorRT-LLM's names), with the batch dimension when the model batches; a parameter the served model
has no input for is a 400 that names it instead of being dropped silently."""

from __future__ import annotations

import numpy as np
import pytest

from serving.gateway.triton import GenerationParams, TritonError, _inputs, _ModelLayout

ALL_INPUTS = frozenset(
    {
        "text_input", "max_tokens", "temperature", "top_p", "top_k", "random_seed", "stop_words", "stream",
        "input_ids", "frequency_penalty", "presence_penalty", "repetition_penalty", "min_p",
        "logit_bias_ids", "logit_bias_values", "return_log_probs", "top_logprobs", "num_return_sequences",
        "guided_decoding_guide_type", "guided_decoding_guide", "echo_prompt_logprobs",
    }
)  # fmt: skip
PARAMS = GenerationParams(
    "hi",
    16,
    top_k=5,
    min_p=0.1,
    repetition_penalty=1.3,
    frequency_penalty=0.5,
    presence_penalty=-0.5,
    logit_bias=((7, 3.0), (9, -100.0)),
    logprobs=True,
    top_logprobs=4,
    n=3,
    guide=("lark", "start: /a+/"),
    echo_logprobs=True,
    seed=11,
)


def _tensors(params: GenerationParams, inputs: frozenset[str], batched: bool = True) -> dict[str, object]:
    return {t.name(): t for t in _inputs(params, _ModelLayout(batched, inputs))}


def test_every_parameter_goes_as_the_contracts_tensor_with_the_batch_dimension() -> None:
    sent = _tensors(PARAMS, ALL_INPUTS)
    expected = {
        "top_k": ("INT32", [1, 1]),
        "min_p": ("FP32", [1, 1]),
        "repetition_penalty": ("FP32", [1, 1]),
        "frequency_penalty": ("FP32", [1, 1]),
        "presence_penalty": ("FP32", [1, 1]),
        "logit_bias_ids": ("INT32", [1, 2]),
        "logit_bias_values": ("FP32", [1, 2]),
        "return_log_probs": ("BOOL", [1, 1]),
        "top_logprobs": ("INT32", [1, 1]),
        "num_return_sequences": ("INT32", [1, 1]),
        "guided_decoding_guide_type": ("BYTES", [1, 1]),
        "guided_decoding_guide": ("BYTES", [1, 1]),
        "echo_prompt_logprobs": ("BOOL", [1, 1]),
        "random_seed": ("UINT64", [1, 1]),
    }
    for name, (datatype, shape) in expected.items():
        tensor = sent[name]
        assert (tensor.datatype(), tensor.shape()) == (datatype, shape), name  # type: ignore[attr-defined]


def test_defaults_send_nothing_new_so_older_models_keep_working() -> None:
    old = frozenset({"text_input", "max_tokens", "temperature", "top_p", "stream", "input_ids"})
    sent = _tensors(GenerationParams("hi", 16, prompt_ids=(1, 2)), old, batched=False)
    assert set(sent) == {"text_input", "max_tokens", "temperature", "top_p", "stream", "input_ids"}
    assert sent["input_ids"].shape() == [2]  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("field", "value", "public"),
    [
        ("n", 2, "n"),
        ("logprobs", True, "logprobs"),
        ("guide", ("json", ""), "response_format/tools"),
        ("logit_bias", ((1, 1.0),), "logit_bias"),
        ("frequency_penalty", 0.2, "frequency_penalty"),
    ],
)
def test_a_parameter_the_model_cannot_take_is_a_400_naming_it(field: str, value: object, public: str) -> None:
    import dataclasses

    params = dataclasses.replace(GenerationParams("hi", 16), **{field: value})
    with pytest.raises(TritonError) as caught:
        _inputs(params, _ModelLayout(True, frozenset({"text_input", "max_tokens"})))
    assert caught.value.status == 400 and caught.value.message.startswith(f"{public}:")
    assert "rebuild the repository" in caught.value.message


def test_logit_bias_values_travel_intact() -> None:
    sent = _tensors(PARAMS, ALL_INPUTS, batched=False)
    ids = np.frombuffer(sent["logit_bias_ids"]._raw_content, dtype=np.int32)  # type: ignore[attr-defined]
    values = np.frombuffer(sent["logit_bias_values"]._raw_content, dtype=np.float32)  # type: ignore[attr-defined]
    assert ids.tolist() == [7, 9] and values.tolist() == [3.0, -100.0]
