"""OpenAI's Chat Completions and Completions parameters, through the gateway, against a scripted
Triton (tests/serving/fake_backend.py) and the official `openai` client: what each parameter becomes
on the wire to Triton (the issue-15 tensor contract), what is refused and why, and the response shapes
(tool calls, logprobs, n choices, streaming deltas) built from Triton's answers."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from pydantic import BaseModel
from tokenizers import Tokenizer

from model_repo.runtime.contract import TOKENIZER_FILE
from serving.gateway.triton import Delta
from tests.serving.conftest import API_KEY
from tests.serving.fake_backend import FakeTriton

AUTH = {"Authorization": f"Bearer {API_KEY}"}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "the weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "enum": ["Paris", "Tokyo"]}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
CALL_TEXT = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
USER = [{"role": "user", "content": "weather in Paris?"}]


def _client(gateway: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.v1, api_key=API_KEY, max_retries=0, timeout=30)


def _post(gateway: Any, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(gateway.v1 + path, json={"model": "llm", **body}, headers=AUTH, timeout=30)


def _pieces(text: str, size: int = 7) -> list[Delta]:
    """`text` as streamed responses of `size` characters, the last one final with finish 'stop'."""
    parts = [text[i : i + size] for i in range(0, len(text), size)] or [""]
    return [
        Delta(part, i == len(parts) - 1, 3, 1, "stop" if i == len(parts) - 1 else None)
        for i, part in enumerate(parts)
    ]


@pytest.fixture(scope="module")
def tokenizer(roomy_context: Path) -> Tokenizer:
    return Tokenizer.from_file(str(roomy_context / TOKENIZER_FILE))


@pytest.fixture
def serve(serve: Any, roomy_context: Path) -> Any:
    """The scripted gateway with a context and prompt limit that fit tool definitions."""

    def start(backend: Any, **overrides: Any) -> Any:
        return serve(backend, tokenizer_dir=roomy_context, max_prompt_tokens=3000, **overrides)

    return start


# --- refused and accepted parameters ----------------------------------------------------------------

REFUSED_CHAT = [
    ("audio", {"audio": {"voice": "alloy", "format": "wav"}}),
    ("modalities", {"modalities": ["text", "audio"]}),
    ("functions", {"functions": [{"name": "f", "parameters": {}}]}),
    ("function_call", {"function_call": "auto"}),
    ("reasoning_effort", {"reasoning_effort": "low"}),
    ("verbosity", {"verbosity": "low"}),
    ("web_search_options", {"web_search_options": {}}),
    ("store", {"store": True}),
    ("top_logprobs", {"top_logprobs": 3}),
    ("tools[0]", {"tools": [{"type": "custom", "custom": {"name": "x"}}]}),
    ("tool_choice", {"tool_choice": "required"}),
    ("tool_choice", {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}),
    ("response_format", {"response_format": {"type": "grammar"}}),
    ("logit_bias", {"logit_bias": {"99999999": 5}}),
    ("messages[0].content[0]", {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}),
    ("messages[0].role", {"messages": [{"role": "function", "name": "f", "content": "x"}]}),
    ("messages[0].tool_call_id", {"messages": [{"role": "tool", "content": "x"}]}),
]


@pytest.mark.parametrize(
    ("param", "extra"), REFUSED_CHAT, ids=[f"{p}-{i}" for i, (p, _) in enumerate(REFUSED_CHAT)]
)
def test_a_chat_parameter_that_cannot_be_honoured_is_a_400_naming_it(
    serve: Any, param: str, extra: dict[str, Any]
) -> None:
    backend = FakeTriton()
    answer = _post(serve(backend), "/chat/completions", {"messages": USER, **extra})
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["param"] == param and param.split("[")[0] in error["message"]
    assert backend.started == 0


@pytest.mark.parametrize(
    ("param", "extra"),
    [
        ("best_of", {"best_of": 3}),
        ("suffix", {"suffix": "end"}),
        ("prompt", {"prompt": [[10**9]]}),
        ("prompt", {"prompt": ["one", "two"]}),
    ],
)
def test_a_completions_parameter_that_cannot_be_honoured_is_a_400_naming_it(
    serve: Any, param: str, extra: dict[str, Any]
) -> None:
    backend = FakeTriton()
    answer = _post(serve(backend), "/completions", {"prompt": "hello", **extra})
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["param"] == param and backend.started == 0


def test_parameters_without_effect_here_are_accepted(serve: Any) -> None:
    """user, metadata, store=false, service_tier, prompt caching keys, safety_identifier, prediction,
    modalities=["text"] and stream_options.include_obfuscation change nothing on this server."""
    backend = FakeTriton()
    extra = {
        "user": "u-1",
        "metadata": {"app": "test"},
        "store": False,
        "service_tier": "auto",
        "prompt_cache_key": "k",
        "prompt_cache_retention": "24h",
        "safety_identifier": "hash",
        "prediction": {"type": "content", "content": "hello"},
        "modalities": ["text"],
        "parallel_tool_calls": True,
    }
    answer = _post(serve(backend), "/chat/completions", {"messages": USER, **extra})
    assert answer.status_code == 200, answer.text
    assert answer.json()["choices"][0]["message"]["content"] == "hello"


def test_sampling_parameters_reach_triton_as_the_contracts_inputs(serve: Any) -> None:
    backend = FakeTriton()
    client = _client(serve(backend))
    client.chat.completions.create(
        model="llm",
        messages=USER,  # type: ignore[arg-type]
        frequency_penalty=0.5,
        presence_penalty=-0.25,
        logit_bias={"5": 10, "7": -100},
        seed=42,
        max_completion_tokens=9,
        stop=["END"],
        logprobs=True,
        top_logprobs=3,
        n=2,
        extra_body={"top_k": 5, "min_p": 0.1, "repetition_penalty": 1.2},
    )
    p = backend.seen[0]
    assert (p.frequency_penalty, p.presence_penalty, p.seed, p.max_tokens) == (0.5, -0.25, 42, 9)
    assert p.logit_bias == ((5, 10.0), (7, -100.0)) and p.stop == ("END",)
    assert (p.logprobs, p.top_logprobs, p.n) == (True, 3, 2)
    assert (p.top_k, p.min_p) == (5, pytest.approx(0.1)) and p.repetition_penalty == pytest.approx(1.2)
    assert p.guide is None


# --- tools ------------------------------------------------------------------------------------------


def test_tools_are_described_in_the_prompt_and_enforced_by_a_lark_guide(serve: Any) -> None:
    """The tiny model's template knows no tools: the default format's `# Tools` section is in the
    system message, and `required` asks the engine for calls only, each a %json of the function."""
    backend = FakeTriton(deltas=_pieces(CALL_TEXT))
    client = _client(serve(backend))
    answer = client.chat.completions.create(
        model="llm",
        messages=USER,  # type: ignore[arg-type]
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice="required",
        parallel_tool_calls=False,
    )
    p = backend.seen[0]
    assert "# Tools" in p.prompt and '"name": "get_weather"' in p.prompt and "<tool_call>" in p.prompt
    assert p.guide is not None and p.guide[0] == "lark"
    grammar = p.guide[1]
    assert "start: calls" in grammar and "calls: call\n" in grammar and '"const": "get_weather"' in grammar
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    assert choice.message.tool_calls is not None and len(choice.message.tool_calls) == 1
    call = choice.message.tool_calls[0]
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}


def test_auto_allows_text_or_calls_and_a_plain_answer_stays_content(serve: Any) -> None:
    backend = FakeTriton(deltas=_pieces("It is sunny."))
    answer = _client(serve(backend)).chat.completions.create(
        model="llm",
        messages=USER,  # type: ignore[arg-type]
        tools=[WEATHER],  # type: ignore[list-item]
    )
    grammar = backend.seen[0].guide[1]  # type: ignore[index]
    assert "start: TEXT | calls" in grammar and 'calls: call ("\\n" call)*' in grammar
    assert answer.choices[0].message.content == "It is sunny." and answer.choices[0].finish_reason == "stop"
    assert answer.choices[0].message.tool_calls is None


def test_tool_choice_none_sends_no_guide_and_parses_no_calls(serve: Any) -> None:
    backend = FakeTriton(deltas=_pieces(CALL_TEXT))
    answer = _client(serve(backend)).chat.completions.create(
        model="llm",
        messages=USER,  # type: ignore[arg-type]
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice="none",
    )
    assert backend.seen[0].guide is None and "# Tools" not in backend.seen[0].prompt
    assert answer.choices[0].message.content == CALL_TEXT and answer.choices[0].finish_reason == "stop"


def test_a_named_tool_choice_allows_exactly_that_function(serve: Any) -> None:
    other = {**WEATHER, "function": {**WEATHER["function"], "name": "get_time"}}  # type: ignore[dict-item]
    backend = FakeTriton(deltas=_pieces(CALL_TEXT))
    _client(serve(backend)).chat.completions.create(
        model="llm",
        messages=USER,  # type: ignore[arg-type]
        tools=[other, WEATHER],  # type: ignore[list-item]
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    grammar = backend.seen[0].guide[1]  # type: ignore[index]
    assert '"const": "get_weather"' in grammar and '"const": "get_time"' not in grammar


def test_streamed_tool_calls_arrive_as_openai_tool_call_deltas(serve: Any) -> None:
    text = CALL_TEXT + "\n" + CALL_TEXT.replace("Paris", "Tokyo")
    backend = FakeTriton(deltas=_pieces(text, size=5))
    chunks = list(
        _client(serve(backend)).chat.completions.create(
            model="llm",
            messages=USER,  # type: ignore[arg-type]
            tools=[WEATHER],  # type: ignore[list-item]
            stream=True,
        )
    )
    calls: dict[int, dict[str, str]] = {}
    content = ""
    for chunk in chunks:
        delta = chunk.choices[0].delta
        content += delta.content or ""
        for call in delta.tool_calls or []:
            entry = calls.setdefault(call.index, {"id": "", "name": "", "arguments": ""})
            entry["id"] += call.id or ""
            entry["name"] += (call.function.name or "") if call.function else ""
            entry["arguments"] += (call.function.arguments or "") if call.function else ""
    assert content == ""
    assert [c["name"] for c in calls.values()] == ["get_weather", "get_weather"]
    assert [json.loads(c["arguments"])["city"] for c in calls.values()] == ["Paris", "Tokyo"]
    assert (
        all(c["id"].startswith("call_") for c in calls.values())
        and len({c["id"] for c in calls.values()}) == 2
    )
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_earlier_tool_calls_and_results_are_rendered_into_the_prompt(serve: Any) -> None:
    backend = FakeTriton(deltas=_pieces("It is 21 degrees in Paris."))
    messages = [
        *USER,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "21 degrees, sunny"},
    ]
    answer = _client(serve(backend)).chat.completions.create(
        model="llm",
        messages=messages,  # type: ignore[arg-type]
        tools=[WEATHER],  # type: ignore[list-item]
    )
    prompt = backend.seen[0].prompt
    assert CALL_TEXT in prompt and "<tool_response>\n21 degrees, sunny\n</tool_response>" in prompt
    assert prompt.index(CALL_TEXT) < prompt.index("<tool_response>\n21")
    assert answer.choices[0].message.content == "It is 21 degrees in Paris."


# --- structured output --------------------------------------------------------------------------------


class City(BaseModel):
    name: str
    population: int


def test_json_schema_response_format_is_a_json_schema_guide_and_parse_reads_it(serve: Any) -> None:
    backend = FakeTriton(deltas=_pieces('{"name": "Paris", "population": 2100000}'))
    client = _client(serve(backend))
    parsed = client.chat.completions.parse(
        model="llm",
        messages=USER,  # type: ignore[arg-type]
        response_format=City,
    )
    kind, guide = backend.seen[0].guide  # type: ignore[misc]
    schema = json.loads(guide)
    assert kind == "json_schema" and schema["properties"]["population"]["type"] == "integer"
    assert schema["x-guidance"]["whitespace_flexible"] is False
    assert parsed.choices[0].message.parsed == City(name="Paris", population=2100000)


def test_json_object_response_format_is_the_json_guide_for_any_object(serve: Any) -> None:
    backend = FakeTriton(deltas=_pieces('{"a": 1}'))
    _post(serve(backend), "/chat/completions", {"messages": USER, "response_format": {"type": "json_object"}})
    kind, guide = backend.seen[0].guide  # type: ignore[misc]
    assert kind == "json_schema" and json.loads(guide)["type"] == "object"


# --- logprobs and n ------------------------------------------------------------------------------


def _token_deltas(tokenizer: Tokenizer, text: str, index: int = 0, top: int = 2) -> list[Delta]:
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    out = []
    for i, token in enumerate(ids):
        last = i == len(ids) - 1
        out.append(
            Delta(
                tokenizer.decode([token]),
                False,
                3,
                1,
                "stop" if last else None,
                sequence_index=index,
                token_ids=(token,),
                log_probs=(-0.5 - i,),
                top_token_ids=tuple([token, (token + 1) % 50][:top]),
                top_log_probs=(-0.5 - i, -3.0)[:top],
            )
        )
    return out


def test_chat_logprobs_have_openais_shape_and_bytes_that_spell_the_text(
    serve: Any, tokenizer: Tokenizer
) -> None:
    deltas = _token_deltas(tokenizer, "hello world")
    backend = FakeTriton(deltas=[*deltas, Delta("", True, 3, 0)])
    answer = _client(serve(backend)).chat.completions.create(
        model="llm",
        messages=USER,  # type: ignore[arg-type]
        logprobs=True,
        top_logprobs=2,
    )
    content = answer.choices[0].logprobs.content  # type: ignore[union-attr]
    assert content is not None and len(content) == len(deltas)
    assert bytes(b for item in content for b in item.bytes or []).decode() == "hello world"
    assert [item.logprob for item in content] == [-0.5 - i for i in range(len(deltas))]
    assert all(len(item.top_logprobs) == 2 and item.top_logprobs[0].token == item.token for item in content)


def test_streamed_logprobs_come_with_the_content_they_belong_to(serve: Any, tokenizer: Tokenizer) -> None:
    deltas = _token_deltas(tokenizer, "hello world", top=1)
    backend = FakeTriton(deltas=[*deltas, Delta("", True, 3, 0)])
    chunks = list(
        _client(serve(backend)).chat.completions.create(
            model="llm",
            messages=USER,  # type: ignore[arg-type]
            logprobs=True,
            stream=True,
        )
    )
    tokens = [
        t.token
        for c in chunks
        if c.choices and c.choices[0].logprobs
        for t in c.choices[0].logprobs.content or []
    ]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "".join(tokens) == text == "hello world"


def test_completions_logprobs_and_echo_have_openais_shape(serve: Any, tokenizer: Tokenizer) -> None:
    deltas = _token_deltas(tokenizer, " world", top=2)
    prompt_ids = tuple(tokenizer.encode("hello", add_special_tokens=False).ids)
    prompt_logprobs = (float("nan"),) + (-1.0,) * (len(prompt_ids) - 1)
    deltas[0] = dataclasses.replace(deltas[0], prompt_token_ids=prompt_ids, prompt_log_probs=prompt_logprobs)
    backend = FakeTriton(deltas=[*deltas, Delta("", True, 3, 0)])
    answer = _client(serve(backend)).completions.create(model="llm", prompt="hello", logprobs=2, echo=True)
    choice = answer.choices[0]
    assert choice.text == "hello world" and backend.seen[0].echo_logprobs
    lp = choice.logprobs
    assert lp is not None and lp.tokens is not None and lp.token_logprobs is not None
    assert "".join(lp.tokens) == "hello world"
    assert lp.token_logprobs[0] is None and lp.top_logprobs is not None and lp.top_logprobs[0] is None
    assert lp.text_offset == sorted(lp.text_offset) and lp.text_offset[0] == 0
    assert lp.text_offset[len(prompt_ids)] == len("hello")
    chunks = list(
        _client(serve(FakeTriton(deltas=[*deltas, Delta("", True, 3, 0)]))).completions.create(
            model="llm", prompt="hello", logprobs=2, echo=True, stream=True
        )
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "hello world"
    streamed = [
        t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.tokens or []
    ]
    assert streamed == lp.tokens
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_n_choices_are_answered_each_with_its_own_text_and_finish(serve: Any, tokenizer: Tokenizer) -> None:
    first, second = _token_deltas(tokenizer, "hello", 0), _token_deltas(tokenizer, "hello world", 1)
    second[-1] = Delta(second[-1].text, False, 3, 1, "length", sequence_index=1)
    interleaved = [d for pair in zip(first, second, strict=False) for d in pair] + second[len(first) :]
    backend = FakeTriton(deltas=[*interleaved, Delta("", True, 3, 0)])
    client = _client(serve(backend))
    answer = client.chat.completions.create(model="llm", messages=USER, n=2)  # type: ignore[arg-type]
    assert [c.index for c in answer.choices] == [0, 1]
    assert [c.message.content for c in answer.choices] == ["hello", "hello world"]
    assert [c.finish_reason for c in answer.choices] == ["stop", "length"]
    assert answer.usage.completion_tokens == len(first) + len(second)  # type: ignore[union-attr]
    chunks = list(client.chat.completions.create(model="llm", messages=USER, n=2, stream=True))  # type: ignore[arg-type]
    texts = {0: "", 1: ""}
    finishes = {}
    for chunk in chunks:
        for c in chunk.choices:
            texts[c.index] += c.delta.content or ""
            if c.finish_reason:
                finishes[c.index] = c.finish_reason
    assert texts == {0: "hello", 1: "hello world"} and finishes == {0: "stop", 1: "length"}
