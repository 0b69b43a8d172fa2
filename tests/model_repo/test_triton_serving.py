"""A real Triton (nvidia-pytriton's binary) serving the tiny model's repository over gRPC and HTTP."""

from __future__ import annotations

import json
import queue
import re
import time
import urllib.request
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

PROMPT = "hello world, the"


@dataclass
class Chunk:
    text: str
    prompt_tokens: int
    completion_tokens: int
    final: bool
    finish_reason: str = ""


def _input(name: str, value: np.ndarray, datatype: str) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(name, list(value.shape), datatype)
    tensor.set_data_from_numpy(value)
    return tensor


def request_inputs(prompt: str, max_tokens: int, stream: bool = False, **extra: Any) -> list[Any]:
    inputs = [
        _input("text_input", np.array([[prompt.encode()]], dtype=np.object_), "BYTES"),
        _input("max_tokens", np.array([[max_tokens]], dtype=np.int32), "INT32"),
        _input("stream", np.array([[stream]], dtype=bool), "BOOL"),
    ]
    if "temperature" in extra:
        inputs.append(_input("temperature", np.array([[extra["temperature"]]], np.float32), "FP32"))
    if "top_k" in extra:
        inputs.append(_input("top_k", np.array([[extra["top_k"]]], np.int32), "INT32"))
    if "seed" in extra:
        inputs.append(_input("random_seed", np.array([[extra["seed"]]], np.uint64), "UINT64"))
    if "end_id" in extra:
        inputs.append(_input("end_id", np.array([[extra["end_id"]]], np.int32), "INT32"))
    if "stop" in extra:
        words = np.array([[s.encode() for s in extra["stop"]]], dtype=np.object_)
        inputs.append(_input("stop_words", words, "BYTES"))
    if "input_ids" in extra:
        inputs.append(_input("input_ids", np.array([extra["input_ids"]], np.int32), "INT32"))
    return inputs


def to_chunk(result: Any, final: bool) -> Chunk:
    return Chunk(
        result.as_numpy("text_output").reshape(-1)[0].decode(),
        int(result.as_numpy("prompt_tokens").reshape(-1)[0]),
        int(result.as_numpy("completion_tokens").reshape(-1)[0]),
        final,
        result.as_numpy("finish_reason").reshape(-1)[0].decode(),
    )


def generate(url: str, inputs: list[Any], timeout: float = 60) -> list[Chunk]:
    """Send one request on a gRPC stream; collect every response until the final one."""
    client = grpcclient.InferenceServerClient(url)
    responses: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client.start_stream(callback=lambda result, error: responses.put((result, error)))
    try:
        client.async_stream_infer("llm", inputs)
        chunks: list[Chunk] = []
        while True:
            result, error = responses.get(timeout=timeout)
            if error is not None:
                raise error
            final = result.get_response().parameters["triton_final_response"].bool_param
            chunks.append(to_chunk(result, final))
            if final:
                return chunks
    finally:
        client.stop_stream()
        client.close()


@pytest.fixture(scope="module")
def engine(tiny_llama_export: Any) -> Any:
    from model_repo.runtime.engine import Engine

    return Engine.load(tiny_llama_export, num_threads=1)


def greedy(engine: Any, prompt: str, max_tokens: int, **kw: Any) -> str:
    from model_repo.runtime.sampling import SamplingParams

    return str(engine.generate_text(prompt, SamplingParams(max_tokens=max_tokens, **kw)))


def test_non_streaming_returns_one_final_response_equal_to_engine_greedy(
    tiny_triton: Any, engine: Any
) -> None:
    chunks = generate(tiny_triton.grpc_url, request_inputs(PROMPT, 24, temperature=0.0))
    assert len(chunks) == 1 and chunks[0].final
    expected = greedy(engine, PROMPT, 24)
    assert expected and chunks[0].text == expected
    assert chunks[0].prompt_tokens == len(engine.encode(PROMPT))
    assert 1 <= chunks[0].completion_tokens <= 24


def test_streaming_sends_deltas_in_order_then_final(tiny_triton: Any, engine: Any) -> None:
    chunks = generate(tiny_triton.grpc_url, request_inputs(PROMPT, 24, stream=True))
    assert len(chunks) > 2
    assert [c.final for c in chunks] == [False] * (len(chunks) - 1) + [True]
    # completion_tokens counts the tokens behind each response (TRT-LLM semantics): sum them
    assert all(c.completion_tokens >= 1 for c in chunks) and sum(c.completion_tokens for c in chunks) <= 24
    assert all(c.prompt_tokens == len(engine.encode(PROMPT)) for c in chunks)
    assert "".join(c.text for c in chunks) == greedy(engine, PROMPT, 24)


def test_a_plain_stream_sends_no_empty_lists(tiny_triton: Any, engine: Any) -> None:
    """Without logprobs or echo, a streamed token's response leaves out the logprob and prompt lists
    (6 tensors, not 11: less to send, forward and parse per token); its token ids still come."""
    got = generate_raw(tiny_triton.grpc_url, request_inputs(PROMPT, 8, stream=True))
    sent = [{name for name, value in out.items() if value.size} for out, _ in got]
    every = {"text_output", "prompt_tokens", "completion_tokens", "finish_reason", "sequence_index"}
    assert all(every <= names <= every | {"output_token_ids"} for names in sent)
    ids = [int(t) for out, _ in got for t in out["output_token_ids"]]
    assert len(ids) == sum(int(out["completion_tokens"][0]) for out, _ in got) == 8
    assert ids == engine.greedy_ids(engine.encode(PROMPT), 8)


def test_response_tensors_leave_out_only_empty_lists() -> None:
    from model_repo.python_model.model import response_tensors
    from model_repo.runtime.request import Response

    plain = response_tensors(Response("a", False, 3, 1, token_ids=(7,)))
    every = {"text_output", "prompt_tokens", "completion_tokens", "finish_reason", "sequence_index"}
    assert set(plain) == every | {"output_token_ids"}
    lists = ((7,), (-0.5,), (7, 8), (-0.5, -1.0), (1, 2), (float("nan"), -2.0))
    full = response_tensors(Response("a", True, 3, 1, 0, "stop", *lists))
    assert len(full) == 11 and full["output_top_token_ids"].tolist() == [[7, 8]]
    assert full["finish_reason"][0, 0] == b"stop" and full["output_log_probs"].dtype == np.float32


def generate_together(url: str, requests: list[list[Any]], timeout: float = 60) -> dict[int, list[Chunk]]:
    """Send every request on one gRPC stream, back to back (so they reach the model while the first is
    still decoding, whatever the machine's speed), and collect each one's responses until its final one."""
    client = grpcclient.InferenceServerClient(url)
    responses: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client.start_stream(callback=lambda result, error: responses.put((result, error)))
    results: dict[int, list[Chunk]] = {i: [] for i in range(len(requests))}
    try:
        for i, inputs in enumerate(requests):
            client.async_stream_infer("llm", inputs, request_id=str(i))
        open_ids = set(results)
        while open_ids:
            result, error = responses.get(timeout=timeout)
            if error is not None:
                raise error
            response = result.get_response()
            final = response.parameters["triton_final_response"].bool_param
            i = int(response.id)
            results[i].append(to_chunk(result, final))
            if final:
                open_ids.discard(i)
        return results
    finally:
        client.stop_stream()
        client.close()


def test_concurrent_requests_are_batched_and_all_complete(tiny_triton: Any, engine: Any) -> None:
    prompts = [f"{PROMPT} {word}" for word in ("one", "two and three", "four", "five six seven")]
    results = generate_together(tiny_triton.grpc_url, [request_inputs(p, 64, stream=True) for p in prompts])
    assert sorted(results) == list(range(len(prompts)))
    for i, chunks in results.items():
        assert chunks[-1].final
        # batched decoding (left-padded shared KV cache) gives the same greedy text as batch size 1
        assert "".join(c.text for c in chunks) == greedy(engine, prompts[i], 64)
    # one engine step advanced several of them together: the model logs each new largest batch a step
    # ran with (what the model reports, not the streams' timestamps, which flake on a busy machine),
    # in the two lanes the tiny repository asks for (each its own session and thread)
    assert re.search(r"decode step batched [2-9] sequences", tiny_triton.log_text())
    assert re.search(r"up to 8 sequences at once in 2 lane\(s\) of 1 thread", tiny_triton.log_text())


def test_stop_words_cut_the_text(tiny_triton: Any, engine: Any) -> None:
    full = greedy(engine, PROMPT, 32)
    stop = full[len(full) // 2 : len(full) // 2 + 2]
    assert stop.strip(), f"pick a visible stop string from {full!r}"
    chunks = generate(tiny_triton.grpc_url, request_inputs(PROMPT, 32, stream=True, stop=[stop]))
    text = "".join(c.text for c in chunks)
    assert text == full[: full.index(stop)]
    assert chunks[-1].final


def test_seeded_sampling_is_repeatable(tiny_triton: Any) -> None:
    first = generate(tiny_triton.grpc_url, request_inputs(PROMPT, 16, temperature=1.0, seed=7))
    again = generate(tiny_triton.grpc_url, request_inputs(PROMPT, 16, temperature=1.0, seed=7))
    assert first[0].text == again[0].text


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        (lambda: request_inputs(PROMPT, 0), "max_tokens=0"),
        (lambda: request_inputs("", 8), "text_input is empty"),
        (lambda: request_inputs(PROMPT, 8, temperature=-1.0), "temperature"),
        (lambda: request_inputs(PROMPT, 8)[:1], "max_tokens"),  # a required input is missing
        (
            lambda: [
                request_inputs(PROMPT, 8)[0],
                _input("max_tokens", np.array([[8.0]], np.float32), "FP32"),
            ],
            "FP32",  # wrong data type, rejected by Triton itself
        ),
    ],
    ids=["zero-max-tokens", "empty-prompt", "negative-temperature", "missing-input", "wrong-dtype"],
)
def test_malformed_requests_get_triton_errors(tiny_triton: Any, inputs: Any, message: str) -> None:
    with pytest.raises(InferenceServerException, match=message):
        generate(tiny_triton.grpc_url, inputs())
    # the model is still serving
    assert generate(tiny_triton.grpc_url, request_inputs(PROMPT, 4))[0].final


def test_http_generate_endpoint(tiny_triton: Any, engine: Any) -> None:
    body = json.dumps({"text_input": PROMPT, "max_tokens": 12, "stream": False}).encode()
    request = urllib.request.Request(
        f"{tiny_triton.http_url}/v2/models/llm/generate",
        data=body,
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        answer = json.load(response)
    assert answer["text_output"] == greedy(engine, PROMPT, 12)
    assert answer["completion_tokens"] >= 1


def test_cancelled_stream_leaves_the_batch(tiny_triton: Any) -> None:
    client = grpcclient.InferenceServerClient(tiny_triton.grpc_url)
    responses: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client.start_stream(callback=lambda result, error: responses.put((result, error)))
    # 2000 tokens, no end token (end_id -1): ~0.8 s of work for the tiny model on a fast 2-core
    # machine, four times the model's cancellation check interval (0.2 s); 400 tokens (~0.2 s) could
    # end before the check and fail the test on such a machine (seen)
    long_request = request_inputs(PROMPT, 2000, stream=True, top_k=0, temperature=1.0, seed=1, end_id=-1)
    client.async_stream_infer("llm", long_request)
    for _ in range(2):
        _result, error = responses.get(timeout=30)
        assert error is None
    client.stop_stream(cancel_requests=True)
    client.close()
    deadline = time.monotonic() + 20
    cancelled = re.compile(r"cancelled after \d+ tokens")
    while time.monotonic() < deadline and not cancelled.search(tiny_triton.log_text()):
        time.sleep(0.1)
    assert re.search(r"cancelled after \d+ tokens", tiny_triton.log_text())
    assert generate(tiny_triton.grpc_url, request_inputs(PROMPT, 4))[0].final  # still serving


def test_end_id_replaces_eos_and_minus_one_runs_to_max_tokens(tiny_triton: Any, engine: Any) -> None:
    from model_repo.runtime.sampling import SamplingParams

    ids = engine.encode(PROMPT)
    free = [t.token_id for t in engine.generate(ids, SamplingParams(max_tokens=12, ignore_eos=True))]
    # -1: no end token, every answer is exactly max_tokens long (how benchmarks ask for 64 tokens)
    whole = generate(tiny_triton.grpc_url, request_inputs(PROMPT, 12, end_id=-1))
    assert whole[-1].completion_tokens == 12
    assert whole[-1].text == engine.decode(free).rstrip("\ufffd")  # a character cut by the budget is dropped
    # a token id: the answer ends at its first occurrence (the end token itself is not text)
    k = 5
    end = free[k]
    first = free.index(end)
    cut = generate(tiny_triton.grpc_url, request_inputs(PROMPT, 12, end_id=end))
    # the end token ends the answer and is not a completion token (issue 22; it used to count)
    assert cut[-1].completion_tokens == first
    assert cut[-1].text == engine.decode(free[:first]).rstrip("\ufffd")  # a cut character is dropped
    assert cut[-1].finish_reason == "stop" and whole[-1].finish_reason == "length"
    # an id outside the vocabulary is the client's mistake, reported as such
    with pytest.raises(InferenceServerException, match="stop token ids"):
        generate(tiny_triton.grpc_url, request_inputs(PROMPT, 4, end_id=engine.metadata.vocab_size))


def test_request_parsing_rejects_batches_and_bad_values() -> None:
    from model_repo.python_model.model import RequestError, parse_request

    def tensors(**kw: Any) -> dict[str, Any]:
        base = {"text_input": np.array([[b"hi"]], dtype=np.object_), "max_tokens": np.array([[4]], np.int32)}
        return {**base, **kw}

    parsed = parse_request(tensors(stop_words=np.array([[b"a", b""]], dtype=np.object_)), 100)
    assert parsed.prompt == "hi" and parsed.max_tokens == 4 and parsed.stop == ("a",) and not parsed.stream
    bad = {
        "one prompt per request": tensors(text_input=np.array([[b"a"], [b"b"]], dtype=np.object_)),
        "between 1 and 100": tensors(max_tokens=np.array([[101]], np.int32)),
        "not valid UTF-8": tensors(text_input=np.array([[b"\xff"]], dtype=np.object_)),
        "top_p": tensors(top_p=np.array([[0.0]], np.float32)),
        "top_k": tensors(top_k=np.array([[-1]], np.int32)),
        "end_id=-2": tensors(end_id=np.array([[-2]], np.int32)),
        "max_tokens is required": {"text_input": np.array([[b"hi"]], dtype=np.object_)},
    }
    for message, value in bad.items():
        with pytest.raises(RequestError, match=message):
            parse_request(value, 100)


def test_request_parsing_reads_the_decoding_features_and_names_bad_values() -> None:
    from model_repo.python_model.model import RequestError, parse_request

    def tensors(**kw: Any) -> dict[str, Any]:
        base = {"text_input": np.array([[b"hi"]], dtype=np.object_), "max_tokens": np.array([[4]], np.int32)}
        return {**base, **{k: np.array([[v]]) if not isinstance(v, np.ndarray) else v for k, v in kw.items()}}

    parsed = parse_request(
        tensors(
            frequency_penalty=np.float32(0.5),
            presence_penalty=np.float32(-0.5),
            repetition_penalty=np.float32(1.2),
            min_p=np.float32(0.1),
            logit_bias_ids=np.array([[3, 7]], np.int32),
            logit_bias_values=np.array([[5.0, -100.0]], np.float32),
            return_log_probs=True,
            top_logprobs=np.int32(2),
            num_return_sequences=np.int32(3),
            guided_decoding_guide_type=np.array([[b"json_schema"]], dtype=np.object_),
            guided_decoding_guide=np.array([[b'{"type": "object"}']], dtype=np.object_),
            echo_prompt_logprobs=True,
        ),
        100,
        8,
    )
    assert (parsed.frequency_penalty, parsed.presence_penalty, parsed.min_p) == pytest.approx(
        (0.5, -0.5, 0.1)
    )
    assert parsed.logit_bias == ((3, 5.0), (7, -100.0)) and parsed.logprobs and parsed.top_logprobs == 2
    assert parsed.n == 3 and parsed.guide_type == "json_schema" and parsed.echo_logprobs
    assert parsed.sampling_params(2).seed is None and parse_request(tensors(), 100).n == 1
    bad = {
        "frequency_penalty=3.0: -2..2": tensors(frequency_penalty=np.float32(3.0)),
        "same length": tensors(
            logit_bias_ids=np.array([[1, 2]], np.int32), logit_bias_values=np.array([[1.0]])
        ),
        "between -100 and 100": tensors(
            logit_bias_ids=np.array([[1]], np.int32), logit_bias_values=np.array([[150.0]], np.float32)
        ),
        "top_logprobs=21": tensors(top_logprobs=np.int32(21)),
        "num_return_sequences=9: must be between 1 and 8": tensors(num_return_sequences=np.int32(9)),
        "guided_decoding_guide_type='yaml'": tensors(
            guided_decoding_guide_type=np.array([[b"yaml"]], dtype=np.object_)
        ),
        "guided_decoding_guide is required": tensors(
            guided_decoding_guide_type=np.array([[b"regex"]], dtype=np.object_)
        ),
        "min_p=2.0": tensors(min_p=np.float32(2.0)),
        "repetition_penalty=0.0": tensors(repetition_penalty=np.float32(0.0)),
    }
    for message, value in bad.items():
        with pytest.raises(RequestError, match=re.escape(message)):
            parse_request(value, 100, 8)


def test_the_model_reports_its_finish_reason_and_takes_token_ids(tiny_triton: Any, engine: Any) -> None:
    from model_repo.runtime.sampling import SamplingParams

    ids = engine.encode(PROMPT)
    free = [t.token_id for t in engine.generate(ids, SamplingParams(max_tokens=6, ignore_eos=True))]
    # an end token on the last allowed token: the model says 'stop' (a guess from the count says 'length')
    last = generate(tiny_triton.grpc_url, request_inputs(PROMPT, free.index(free[5]) + 1, end_id=free[5]))
    assert last[-1].finish_reason == "stop"
    streamed = generate(tiny_triton.grpc_url, request_inputs(PROMPT, 6, stream=True, end_id=-1))
    assert [c.finish_reason for c in streamed] == [""] * (len(streamed) - 1) + ["length"]
    # the prompt as token ids (what the gateway sends): the text input is then ignored
    by_ids = generate(tiny_triton.grpc_url, request_inputs("ignored", 6, end_id=-1, input_ids=ids))
    assert by_ids[-1].text == engine.decode(free) and by_ids[-1].prompt_tokens == len(ids)


def test_errors_carry_tritons_error_code_in_the_message(tiny_triton: Any, engine: Any) -> None:
    """Triton's gRPC stream passes an error's message, not its code: the model leads with the code."""
    with pytest.raises(InferenceServerException, match=r"^\[INVALID_ARG\] bad request: max_tokens=0"):
        generate(tiny_triton.grpc_url, request_inputs(PROMPT, 0))
    too_long = [1] * (engine.metadata.max_context + 1)
    with pytest.raises(InferenceServerException, match=r"^\[INVALID_ARG\] prompt has \d+ tokens"):
        generate(tiny_triton.grpc_url, request_inputs(PROMPT, 4, input_ids=too_long))


def generate_raw(
    url: str, inputs: list[Any], timeout: float = 60
) -> list[tuple[dict[str, np.ndarray], bool]]:
    """Send one request on a gRPC stream; every response's output tensors and FINAL flag, to the final one."""
    from model_repo.spec import PYTHON_MODEL_OUTPUTS

    client = grpcclient.InferenceServerClient(url)
    responses: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client.start_stream(callback=lambda result, error: responses.put((result, error)))
    try:
        client.async_stream_infer("llm", inputs)
        out: list[tuple[dict[str, np.ndarray], bool]] = []
        while True:
            result, error = responses.get(timeout=timeout)
            if error is not None:
                raise error
            final = result.get_response().parameters["triton_final_response"].bool_param
            # an output the response leaves out (an empty list: logprobs not asked for) reads as empty
            values = {t.name: result.as_numpy(t.name) for t in PYTHON_MODEL_OUTPUTS}
            out.append(({k: np.array([]) if v is None else v.reshape(-1) for k, v in values.items()}, final))
            if final:
                return out
    finally:
        client.stop_stream()
        client.close()


def test_the_decoding_feature_tensors_work_through_triton(tiny_triton: Any, engine: Any) -> None:
    """tritonclient sends issue 15's tensors: n=2 sampled choices under a JSON schema with logprobs come
    back as two sequences, each valid, with token ids and logprobs that line up with the text; bias,
    penalties and echo are taken; a bad schema is INVALID_ARG."""
    import jsonschema

    schema = {
        "type": "object",
        "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 9}, "b": {"enum": ["x", "y"]}},
        "required": ["a", "b"],
        "additionalProperties": False,
    }

    def features(**kw: Any) -> list[Any]:
        tensors = request_inputs(PROMPT, 64, temperature=1.0, seed=11)
        for name, (value, datatype) in kw.items():
            tensors.append(_input(name, value, datatype))
        return tensors

    got = generate_raw(
        tiny_triton.grpc_url,
        features(
            num_return_sequences=(np.array([[2]], np.int32), "INT32"),
            return_log_probs=(np.array([[True]]), "BOOL"),
            top_logprobs=(np.array([[2]], np.int32), "INT32"),
            guided_decoding_guide_type=(np.array([[b"json_schema"]], dtype=np.object_), "BYTES"),
            guided_decoding_guide=(np.array([[json.dumps(schema).encode()]], dtype=np.object_), "BYTES"),
            echo_prompt_logprobs=(np.array([[True]]), "BOOL"),
        ),
    )
    assert [final for _, final in got] == [False, True]
    assert sorted(int(out["sequence_index"][0]) for out, _ in got) == [0, 1]
    for out, _ in got:
        text = out["text_output"][0].decode()
        jsonschema.validate(json.loads(text), schema)
        ids = [int(t) for t in out["output_token_ids"]]
        assert engine.decode(ids) == text and int(out["completion_tokens"][0]) == len(ids)
        assert len(out["output_log_probs"]) == len(ids) and np.all(out["output_log_probs"] <= 0)
        assert len(out["output_top_token_ids"]) == len(out["output_top_log_probs"]) == 2 * len(ids)
        assert out["finish_reason"][0] == b"stop"
    echoed = [out for out, _ in got if len(out["prompt_token_ids"])]
    assert len(echoed) == 1 and list(echoed[0]["prompt_token_ids"]) == engine.encode(PROMPT)
    assert np.isnan(echoed[0]["prompt_log_probs"][0])

    forced = engine.encode("q")[0]
    biased = generate_raw(
        tiny_triton.grpc_url,
        features(
            logit_bias_ids=(np.array([[forced]], np.int32), "INT32"),
            logit_bias_values=(np.array([[100.0]], np.float32), "FP32"),
            frequency_penalty=(np.array([[0.1]], np.float32), "FP32"),
            presence_penalty=(np.array([[0.1]], np.float32), "FP32"),
            repetition_penalty=(np.array([[1.1]], np.float32), "FP32"),
            min_p=(np.array([[0.05]], np.float32), "FP32"),
            top_k=(np.array([[5]], np.int32), "INT32"),
        ),
    )
    assert list(biased[-1][0]["output_token_ids"]) == [forced] * 64

    bad = features(
        guided_decoding_guide_type=(np.array([[b"json_schema"]], dtype=np.object_), "BYTES"),
        guided_decoding_guide=(np.array([[b'{"type": "nope"}']], dtype=np.object_), "BYTES"),
    )
    with pytest.raises(InferenceServerException, match=r"^\[INVALID_ARG\] guided decoding \(json_schema\)"):
        generate_raw(tiny_triton.grpc_url, bad)


def test_a_provider_that_does_not_load_keeps_the_model_unready_with_the_reason(tiny_repository: Any) -> None:
    """The pod asks for CUDA (TRITONFORM_EXECUTION_PROVIDER, as the stack sets it) where onnxruntime has
    none: onnxruntime would serve on the CPU without a word; the model fails to load, and Triton's load
    error says what was asked and what ran, so the pod never turns ready."""
    import onnxruntime as ort
    import tritonclient.http as httpclient

    from model_repo.runtime.providers import PROVIDER_ENV
    from serving.triton_local import TritonServer, TritonServerConfig

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA: the fallback cannot be provoked here")
    config = TritonServerConfig(
        tiny_repository,
        model_control_mode="explicit",
        extra_env={PROVIDER_ENV: "cuda"},
        startup_timeout_s=120,
    )
    with TritonServer(config) as server:
        client = httpclient.InferenceServerClient(server.http_url.removeprefix("http://"))
        try:
            with pytest.raises(InferenceServerException, match="asked for CUDAExecutionProvider but"):
                client.load_model("llm")
            assert not client.is_model_ready("llm")
        finally:
            client.close()


def test_triton_exports_every_series_the_dashboards_and_alerts_read(tiny_triton: Any) -> None:
    """A real Triton, after one generation, publishes every Triton series in the dashboards' inventory
    (infra/workload/dashboards.py EXPORTED_METRICS), each labelled with the model."""
    from infra.workload.dashboards import EXPORTED_METRICS

    assert generate(tiny_triton.grpc_url, request_inputs("hello", 2))[-1].final
    with urllib.request.urlopen(tiny_triton.metrics_url, timeout=10) as response:
        text = response.read().decode()
    exported = {line.split("{")[0] for line in text.splitlines() if line and not line.startswith("#")}
    assert EXPORTED_METRICS["triton"] <= exported, sorted(EXPORTED_METRICS["triton"] - exported)
    assert 'nv_inference_request_success{model="llm"' in text
