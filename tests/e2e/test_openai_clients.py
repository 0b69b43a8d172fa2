"""Real clients, unchanged, against a real local stack (Triton serving the tiny model + the gateway):
the official `openai` SDK (a tools round trip, `chat.completions.parse` with a pydantic model, logprobs,
n, streaming with tool-call deltas, completions with echo and logprobs), LangChain's `langchain-openai`
(`bind_tools`, `with_structured_output`), the agent loop in examples/, and text in Chinese, emoji and
accented Latin that never reaches a client with U+FFFD, streamed or not.

The tiny model's weights are random: what these tests hold is what the stack guarantees whatever the
weights (the grammar makes every tool call's arguments and every json_schema answer valid; logprobs
match the tokens behind the text; a seed reproduces an answer), not what a trained model would say.
One stack for the module (one Triton start).
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import jsonschema
import openai
import pytest
from pydantic import BaseModel, ConfigDict, Field

from model_repo.runtime.token_bytes import cut_character
from serving.triton_local import TritonServer, TritonServerConfig
from tests.serving.conftest import API_KEY, RunningGateway, gateway_settings, start_gateway

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
# The tiny model's vocabulary (384 tokens) spells a tool call almost character by character (~80 tokens)
CALL_BUDGET = 200
ROOT = Path(__file__).resolve().parents[2]
CITY_SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "enum": ["Paris", "Tokyo", "Nairobi"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
    },
    "required": ["city", "days"],
    "additionalProperties": False,
}
WEATHER_TOOL: Any = {
    "type": "function",
    "function": {"name": "get_forecast", "description": "a city's forecast", "parameters": CITY_SCHEMA},
}
MULTILINGUAL = [
    "用中文回答：今天天气怎么样？",  # noqa: RUF001 (Chinese punctuation on purpose)
    "Réponds en français : où est la forêt près de Besançon ?",
    "Emoji time 🎉🚀👩‍💻 — reply with emoji 😀",
    "Ελληνικά, русский, العربية, हिन्दी: say hello",
]


@pytest.fixture(scope="module")
def stack(tiny_repository: Path) -> Iterator[RunningGateway]:
    with TritonServer(TritonServerConfig(tiny_repository, startup_timeout_s=120)) as triton:
        gateway = start_gateway(
            gateway_settings(
                triton.grpc_url,
                tiny_repository,
                max_prompt_tokens=3500,
                max_tokens_cap=256,
                default_max_tokens=48,
                generation_timeout_s=120,
            )
        )
        try:
            yield gateway
        finally:
            gateway.stop()


@pytest.fixture(scope="module")
def client(stack: RunningGateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.v1, api_key=API_KEY, max_retries=0, timeout=120)


def test_tools_round_trip_with_the_openai_sdk(client: openai.OpenAI) -> None:
    """A required call's arguments validate against the tool's schema; the tool's result goes back as a
    `tool` message and the model answers in text."""
    messages: list[Any] = [{"role": "user", "content": "What is the forecast for Paris this week?"}]
    first = client.chat.completions.create(
        model="llm",
        messages=messages,
        tools=[WEATHER_TOOL],
        tool_choice="required",
        max_tokens=CALL_BUDGET,
        seed=1,
    )
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    assert choice.message.tool_calls
    for call in choice.message.tool_calls:
        assert call.function.name == "get_forecast"  # type: ignore[union-attr]
        jsonschema.validate(json.loads(call.function.arguments), CITY_SCHEMA)  # type: ignore[union-attr]
    messages.append(choice.message.model_dump(exclude_none=True))
    for call in choice.message.tool_calls:
        messages.append({"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 C"})
    second = client.chat.completions.create(
        model="llm", messages=messages, tools=[WEATHER_TOOL], tool_choice="none", max_tokens=24
    )
    assert second.choices[0].message.tool_calls is None
    assert isinstance(second.choices[0].message.content, str)
    assert second.choices[0].finish_reason in ("stop", "length")


def test_streamed_tool_calls_assemble_into_valid_arguments(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="llm",
        messages=[{"role": "user", "content": "forecast for Tokyo"}],
        tools=[WEATHER_TOOL],
        tool_choice={"type": "function", "function": {"name": "get_forecast"}},
        max_tokens=CALL_BUDGET,
        stream=True,
    )
    arguments, names, finish = "", "", None
    for chunk in stream:
        for choice in chunk.choices:
            for call in choice.delta.tool_calls or []:
                names += (call.function.name or "") if call.function else ""
                arguments += (call.function.arguments or "") if call.function else ""
            finish = choice.finish_reason or finish
    assert names == "get_forecast" and finish == "tool_calls"
    jsonschema.validate(json.loads(arguments), CITY_SCHEMA)


class Forecast(BaseModel):
    model_config = ConfigDict(extra="forbid")  # additionalProperties: false (else a random model adds keys)

    city: Literal["Paris", "Tokyo", "Nairobi"]
    days: int = Field(ge=1, le=7)
    rain: bool


def test_parse_with_a_pydantic_model_always_validates(client: openai.OpenAI) -> None:
    for seed in (1, 2, 3):
        answer = client.chat.completions.parse(
            model="llm",
            messages=[{"role": "user", "content": "Give me a forecast as JSON."}],
            response_format=Forecast,
            max_tokens=CALL_BUDGET,
            temperature=1.0,
            seed=seed,
        )
        assert isinstance(answer.choices[0].message.parsed, Forecast), answer.choices[0].message.content


def test_chat_logprobs_describe_the_tokens_of_the_text(client: openai.OpenAI) -> None:
    answer = client.chat.completions.create(
        model="llm",
        messages=[{"role": "user", "content": "hello there"}],
        max_tokens=16,
        temperature=0,
        logprobs=True,
        top_logprobs=3,
    )
    choice = answer.choices[0]
    content = choice.logprobs.content  # type: ignore[union-attr]
    assert content and answer.usage is not None and len(content) == answer.usage.completion_tokens
    # the random model may write byte sequences that are not UTF-8 at all: compare as the text decodes
    # (a character cut by max_tokens is dropped from the text, its tokens stay listed)
    decoded = bytes(b for t in content for b in t.bytes or []).decode("utf-8", errors="replace")
    text = choice.message.content or ""
    assert decoded.startswith(text) and set(decoded[len(text) :]) <= {"\ufffd"}
    for token in content:
        tops = [t.logprob for t in token.top_logprobs]
        assert len(tops) == 3 and tops == sorted(tops, reverse=True) and token.logprob <= 0
        assert math.isclose(token.logprob, tops[0], abs_tol=1e-4)  # greedy picks the most likely token


def test_n_choices_and_a_seed_reproduce_the_same_answers(client: openai.OpenAI) -> None:
    def ask() -> list[str]:
        answer = client.chat.completions.create(
            model="llm", messages=[{"role": "user", "content": "tell me a story"}], n=3, seed=7, max_tokens=12
        )
        assert [c.index for c in answer.choices] == [0, 1, 2]
        assert answer.usage is not None and answer.usage.completion_tokens <= 36
        return [c.message.content or "" for c in answer.choices]

    first = ask()
    assert first == ask() and len(set(first)) > 1  # same seed, same answers; sequence i uses seed + i


def test_completions_echo_and_logprobs(client: openai.OpenAI) -> None:
    answer = client.completions.create(
        model="llm", prompt="once upon a time", max_tokens=8, logprobs=2, echo=True
    )
    choice = answer.choices[0]
    lp = choice.logprobs
    assert choice.text.startswith("once upon a time") and lp is not None
    assert lp.token_logprobs is not None and lp.token_logprobs[0] is None
    assert lp.tokens is not None and lp.text_offset is not None and lp.text_offset[0] == 0
    # The text is what the tokens' bytes spell: bytes that are not UTF-8 as U+FFFD, except a character the
    # token budget cut in half, which is dropped (never sent as U+FFFD)
    raw = _spelled(lp.tokens)
    whole = raw.decode("utf-8", errors="replace")
    assert choice.text == (whole[:-1] if cut_character(raw) else whole)
    assert lp.text_offset == sorted(lp.text_offset)


def _spelled(tokens: list[str]) -> bytes:
    """The bytes of completions' `tokens` (a token that is not whole UTF-8 is written `bytes:\\x..`)."""
    out = b""
    for token in tokens:
        if token.startswith("bytes:"):
            out += bytes(int(h, 16) for h in token.removeprefix("bytes:").split("\\x")[1:])
        else:
            out += token.encode()
    return out


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_multilingual_text_never_reaches_the_client_as_a_replacement_character(
    client: openai.OpenAI, stream: bool
) -> None:
    """Chinese, emoji and accented text that the tiny vocabulary spells byte by byte (each character split
    across tokens), forced by a json_schema const so the answer is known: it arrives whole, streamed or
    not, and every streamed piece is whole characters. (Left free, the random tiny model writes byte
    sequences that are not UTF-8 at all, which no detokeniser can turn into characters.)"""
    for expected in MULTILINGUAL:
        schema = {
            "type": "object",
            "properties": {"text": {"const": expected}},
            "required": ["text"],
            "additionalProperties": False,
        }
        kwargs: Any = {
            "model": "llm",
            "messages": [{"role": "user", "content": expected}],
            "max_tokens": 200,
            "response_format": {"type": "json_schema", "json_schema": {"name": "echo", "schema": schema}},
            "logprobs": True,
        }
        if stream:
            pieces = [
                c.choices[0].delta.content or ""
                for c in client.chat.completions.create(stream=True, **kwargs)
                if c.choices
            ]
            assert all("\ufffd" not in piece for piece in pieces)
            text = "".join(pieces)
        else:
            answer = client.chat.completions.create(**kwargs)
            text = answer.choices[0].message.content or ""
            tokens = answer.choices[0].logprobs.content  # type: ignore[union-attr]
            assert tokens and bytes(b for t in tokens for b in t.bytes or []).decode() == text
            assert any(t.token.startswith("bytes:") for t in tokens)  # characters were split across tokens
        assert "\ufffd" not in text and json.loads(text) == {"text": expected}, text


def test_langchain_bind_tools_and_with_structured_output(stack: RunningGateway) -> None:
    from langchain_core.messages import HumanMessage
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(
        model="llm",
        base_url=stack.v1,
        api_key=API_KEY,
        max_retries=0,
        timeout=120,
        max_tokens=CALL_BUDGET,
        temperature=0,
    )  # type: ignore[call-arg]

    class GetForecast(BaseModel):
        """A city's forecast for some days."""

        model_config = ConfigDict(extra="forbid")
        city: Literal["Paris", "Tokyo", "Nairobi"]
        days: int = Field(ge=1, le=7)

    message = llm.bind_tools([GetForecast], tool_choice="GetForecast").invoke(
        [HumanMessage("forecast for Nairobi")]
    )
    assert message.tool_calls and message.tool_calls[0]["name"] == "GetForecast", message
    GetForecast.model_validate(message.tool_calls[0]["args"])

    for method in ("json_schema", "function_calling"):
        forecast = llm.with_structured_output(Forecast, method=method).invoke("a forecast please")  # type: ignore[arg-type]
        assert isinstance(forecast, Forecast), (method, forecast)


def test_the_agent_loop_example_calls_its_tool_and_answers(client: openai.OpenAI) -> None:
    spec = importlib.util.spec_from_file_location("agent_loop", ROOT / "examples" / "agent_loop.py")
    assert spec is not None and spec.loader is not None
    agent = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = agent  # its dataclasses look their module up there
    spec.loader.exec_module(agent)
    result = agent.run_agent(
        client, "llm", "What is the weather in Tokyo?", require_tool=True, max_tokens=CALL_BUDGET
    )
    assert result.calls, "the model should have called get_weather"
    name, arguments, output = result.calls[0]
    assert (
        name == "get_weather"
        and arguments["city"] in agent.WEATHER
        and output == agent.WEATHER[arguments["city"]]
    )
    assert isinstance(result.answer, str) and result.answer != "(no answer after the turn limit)"
