"""The gateway's reading of Triton's streamed responses: one pass over the raw contents gives the same
Delta as tritonclient's own reader (`as_numpy`), for a plain token, a final response with usage,
finish reason and logprob lists, with and without a batch dimension, several BYTES elements, and text
sent in the typed contents instead of the raw ones."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from tritonclient.grpc import service_pb2
from tritonclient.grpc._infer_result import InferResult
from tritonclient.utils import serialize_byte_tensor

from serving.gateway.triton import Delta, _delta, _outputs


def _first(result: InferResult, name: str) -> Any:
    value = result.as_numpy(name)
    return None if value is None or value.size == 0 else value.reshape(-1)[0]


def _values(result: InferResult, name: str, kind: type) -> tuple[Any, ...]:
    value = result.as_numpy(name)
    return () if value is None else tuple(kind(v) for v in value.reshape(-1))


def _response(outputs: dict[str, np.ndarray], final: bool = False, raw: bool = True) -> InferResult:
    """A ModelInferResponse as Triton's gRPC frontend writes it (raw contents, or typed contents)."""
    message = service_pb2.ModelInferResponse(model_name="llm", id="r1")
    for name, value in outputs.items():
        out = message.outputs.add(name=name, shape=list(value.shape))
        if value.dtype == np.object_:
            out.datatype = "BYTES"
            if raw:
                message.raw_output_contents.append(serialize_byte_tensor(value).item())
            else:
                out.contents.bytes_contents.extend(value.reshape(-1).tolist())
        else:
            out.datatype = {np.int32: "INT32", np.float32: "FP32", np.bool_: "BOOL"}[value.dtype.type]
            if raw:
                message.raw_output_contents.append(value.tobytes())
            elif value.dtype == np.int32:
                out.contents.int_contents.extend(value.reshape(-1).tolist())
            else:
                out.contents.fp32_contents.extend(value.reshape(-1).tolist())
    message.parameters["triton_final_response"].bool_param = final
    wire = message.SerializeToString()  # through the wire format, as the client receives it
    received = service_pb2.ModelInferResponse()
    received.ParseFromString(wire)
    return InferResult(received)


def _reference(result: InferResult) -> Delta:
    """The Delta read with tritonclient's `as_numpy` (the reader before the one-pass one)."""
    text, reason = _first(result, "text_output"), _first(result, "finish_reason")
    prompt, completion, index = (
        _first(result, n) for n in ("prompt_tokens", "completion_tokens", "sequence_index")
    )
    params = result.get_response().parameters
    return Delta(
        text="" if text is None else text.decode(),
        final=params["triton_final_response"].bool_param,
        prompt_tokens=None if prompt is None else int(prompt),
        completion_tokens=None if completion is None else int(completion),
        finish_reason=reason.decode() if reason else None,
        sequence_index=0 if index is None else int(index),
        token_ids=_values(result, "output_token_ids", int),
        log_probs=_values(result, "output_log_probs", float),
        top_token_ids=_values(result, "output_top_token_ids", int),
        top_log_probs=_values(result, "output_top_log_probs", float),
        prompt_token_ids=_values(result, "prompt_token_ids", int),
        prompt_log_probs=_values(result, "prompt_log_probs", float),
    )


def _ints(*values: int) -> np.ndarray:
    return np.array([values], dtype=np.int32)


def _text(value: str) -> np.ndarray:
    return np.array([[value.encode()]], dtype=np.object_)


PLAIN_TOKEN = {  # what the python model sends for a streamed token (6 outputs)
    "text_output": _text(" Paris"),
    "prompt_tokens": _ints(12),
    "completion_tokens": _ints(1),
    "finish_reason": _text(""),
    "sequence_index": _ints(0),
    "output_token_ids": _ints(4321),
}
LAST_WITH_LOGPROBS = {
    "text_output": _text("é!"),  # non-ASCII text survives
    "prompt_tokens": _ints(7),
    "completion_tokens": _ints(2),
    "finish_reason": _text("length"),
    "sequence_index": _ints(2),
    "output_token_ids": _ints(5, 6),
    "output_log_probs": np.array([[-0.25, -1.5]], dtype=np.float32),
    "output_top_token_ids": _ints(5, 9, 6, 3),
    "output_top_log_probs": np.array([[-0.25, -2.0, -1.5, -3.0]], dtype=np.float32),
    "prompt_token_ids": _ints(1, 2, 3),
    "prompt_log_probs": np.array([[np.nan, -0.5, -0.75]], dtype=np.float32),
}


@pytest.mark.parametrize(
    ("outputs", "final"),
    [(PLAIN_TOKEN, False), (LAST_WITH_LOGPROBS, True), ({"text_output": _text("")}, True)],
    ids=["plain-token", "last-with-logprobs", "text-only"],
)
def test_one_pass_reader_gives_the_same_delta_as_tritonclients(
    outputs: dict[str, np.ndarray], final: bool
) -> None:
    result = _response(outputs, final)
    got, want = _delta(result), _reference(result)
    assert got.final is final
    # NaN != NaN: compare the prompt logprobs by their text form
    assert repr(got) == repr(want)
    assert all(type(v) is int for v in got.token_ids + got.top_token_ids + got.prompt_token_ids)
    assert all(type(v) is float for v in got.log_probs + got.top_log_probs)


def test_text_sent_in_the_typed_contents_reads_through_tritonclients_reader() -> None:
    # tritonclient reads typed contents only for BYTES; Triton itself always sends raw contents
    result = _response({"text_output": _text("typed"), "finish_reason": _text("stop")}, True, raw=False)
    assert not result.get_response().raw_output_contents
    delta = _delta(result)
    assert (delta.text, delta.finish_reason, delta.final) == ("typed", "stop", True)
    assert repr(delta) == repr(_reference(result))


def test_a_plain_token_reads_as_its_text_and_counts() -> None:
    delta = _delta(_response(PLAIN_TOKEN))
    assert (delta.text, delta.final, delta.completion_tokens) == (" Paris", False, 1)
    assert delta.finish_reason is None
    assert (delta.token_ids, delta.log_probs, delta.prompt_token_ids) == ((4321,), (), ())


def test_the_first_of_several_text_elements_is_the_text_and_unbatched_shapes_read_the_same() -> None:
    several = {
        "text_output": np.array([b"first", b"", b"third"], dtype=np.object_),
        "sequence_index": np.array([1], np.int32),
    }
    delta = _delta(_response(several))
    assert (delta.text, delta.sequence_index) == ("first", 1)


@pytest.mark.parametrize("elements", [[], [b""], [b"a"], [b"\x00\xff", b"", "ünï".encode()], [b"x" * 70_000]])
def test_bytes_outputs_read_every_element_of_tritons_serialisation(elements: list[bytes]) -> None:
    message = service_pb2.ModelInferResponse(model_name="llm", id="r1")
    message.outputs.add(name="text_output", datatype="BYTES", shape=[len(elements)])
    data = serialize_byte_tensor(np.array(elements, dtype=np.object_)).item() if elements else b""
    message.raw_output_contents.append(data)
    assert _outputs(InferResult(message))["text_output"].tolist() == elements


def test_a_missing_output_reads_as_empty() -> None:
    delta = _delta(_response({"completion_tokens": _ints(3)}, final=True))
    assert (delta.text, delta.prompt_tokens, delta.finish_reason, delta.token_ids) == ("", None, None, ())
