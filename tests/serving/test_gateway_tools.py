"""Tool calling's pieces on their own: the Lark grammars the gateway sends (compiled and run by
llguidance itself over a real byte-level vocabulary, the tiny model's), the parser of finished answers,
the streaming parser's deltas, and token ids turned into OpenAI's `token`/`bytes`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import llguidance
import pytest
from tokenizers import Tokenizer

from model_repo.runtime.contract import TOKENIZER_FILE
from serving.gateway.tools import CallStream, Function, ToolPlan, parse_calls, tool_grammar

PARAMS = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "enum": ["Paris", "Tokyo"]},
        "day": {"$ref": "#/$defs/Day"},
    },
    "required": ["city"],
    "additionalProperties": False,
    "$defs": {"Day": {"type": "integer", "minimum": 1, "maximum": 7}},
}
WEATHER = Function("get_weather", "the weather", PARAMS)
CLOCK = Function("get_time", None, {"type": "object", "properties": {}})
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "day": 3}}\n</tool_call>'
CLOCK_CALL = '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>'


@pytest.fixture(scope="module")
def vocabulary(small_context: Path) -> llguidance.LLTokenizer:
    return llguidance.LLTokenizer(str(small_context / TOKENIZER_FILE))


def _accepts(vocabulary: llguidance.LLTokenizer, grammar: str, text: str) -> bool:
    """Whether llguidance lets a model write exactly `text` under `grammar` and end there."""
    assert llguidance.LLMatcher.validate_grammar(grammar, vocabulary) == ""
    matcher = llguidance.LLMatcher(vocabulary, grammar, log_level=0)
    return matcher.consume_tokens(vocabulary.tokenize_str(text)) and matcher.is_accepting()


@pytest.mark.parametrize(
    ("mode", "parallel", "text", "allowed"),
    [
        ("auto", True, "It is sunny.", True),
        ("auto", True, CALL, True),
        ("auto", True, CALL + "\n" + CLOCK_CALL, True),
        ("auto", True, CALL.replace("Paris", "Lyon"), False),  # a call is always held to its schema
        ("auto", False, CALL + "\n" + CALL, False),
        ("required", True, "It is sunny.", False),
        ("required", True, CLOCK_CALL, True),
        ("required", True, CALL.replace('"day": 3', '"day": 9'), False),  # $defs hoisted and enforced
        ("get_weather", True, CALL, True),
        ("get_weather", True, CLOCK_CALL, False),
        ("get_weather", True, CALL + "\n" + CALL, False),
    ],
)
def test_the_tool_grammar_allows_what_the_tool_choice_allows(
    vocabulary: llguidance.LLTokenizer, mode: str, parallel: bool, text: str, allowed: bool
) -> None:
    grammar = tool_grammar(ToolPlan((WEATHER, CLOCK), mode, parallel))
    assert _accepts(vocabulary, grammar, text) is allowed


def test_auto_with_a_response_format_allows_the_schemas_json_or_calls(
    vocabulary: llguidance.LLTokenizer,
) -> None:
    grammar = tool_grammar(
        ToolPlan((WEATHER,), "auto"), {"type": "object", "properties": {"a": {"type": "integer"}}}
    )
    assert _accepts(vocabulary, grammar, '{"a": 5}') and _accepts(vocabulary, grammar, CALL)
    assert not _accepts(vocabulary, grammar, "plain text")


def test_finished_answers_parse_into_calls_or_content() -> None:
    content, calls = parse_calls(CALL + "\n" + CLOCK_CALL)
    assert content is None and [c.function.name for c in calls] == ["get_weather", "get_time"]
    assert json.loads(calls[0].function.arguments) == {"city": "Paris", "day": 3}
    assert len({c.id for c in calls}) == 2
    assert parse_calls("It is sunny.") == ("It is sunny.", [])
    cut = CALL + "\n" + CLOCK_CALL[:20]  # a block cut by max_tokens is dropped, the complete one kept
    assert [c.function.name for c in parse_calls(cut)[1]] == ["get_weather"]


@pytest.mark.parametrize("size", [1, 3, 11, 1000])
def test_the_streaming_parser_gives_the_same_calls_whatever_the_chunking(size: int) -> None:
    text = CALL + "\n" + CLOCK_CALL
    stream = CallStream()
    deltas: list[dict[str, Any]] = []
    for i in range(0, len(text), size):
        deltas += stream.push(text[i : i + size])
    deltas += stream.finish()
    assert all("content" not in d for d in deltas)
    calls: dict[int, dict[str, str]] = {}
    for delta in deltas:
        for call in delta["tool_calls"]:
            entry = calls.setdefault(call["index"], {"id": "", "name": "", "arguments": ""})
            entry["id"] += call.get("id", "")
            entry["name"] += call["function"].get("name", "")
            entry["arguments"] += call["function"].get("arguments", "")
    assert [c["name"] for c in calls.values()] == ["get_weather", "get_time"]
    assert [json.loads(c["arguments"]) for c in calls.values()] == [{"city": "Paris", "day": 3}, {}]
    assert [c["id"] for c in calls.values()] == [c.id for c in stream.calls]


def test_the_streaming_parser_passes_plain_text_through_holding_back_only_a_possible_call() -> None:
    stream = CallStream()
    assert list(stream.push("<tool")) == []  # could still be a call
    assert list(stream.push("s are fun")) == [{"content": "<tools are fun"}]
    assert list(stream.push(" indeed")) == [{"content": " indeed"}]
    held = CallStream()
    assert list(held.push("  <tool_")) == [] and list(held.finish()) == [{"content": "  <tool_"}]


TOOL_TEMPLATE = (
    "{% if tools %}<|im_start|>system\nTOOLS:{% for t in tools %}{{ t.function.name }};{% endfor %}"
    "<|im_end|>\n{% endif %}{% for m in messages %}<|im_start|>{{ m.role }}\n"
    "{% if m.tool_calls %}{% for c in m.tool_calls %}"
    "CALL {{ c.function.name }} {{ c.function.arguments | tojson }}"
    "{% endfor %}{% else %}{{ m.content }}{% endif %}<|im_end|>\n{% endfor %}<|im_start|>assistant\n"
)


def _history() -> list[Any]:
    from serving.gateway.schemas import ChatMessage

    return [
        ChatMessage(role="developer", content="be brief"),
        ChatMessage(role="user", content="weather in Paris?"),
        ChatMessage.model_validate(
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                    }
                ],
            }
        ),
        ChatMessage(role="tool", content="21 C", tool_call_id="c1"),
    ]


def test_a_template_that_takes_tools_renders_tools_calls_and_results_itself(small_context: Path) -> None:
    from serving.gateway.prompts import PromptFormatter
    from serving.gateway.tools import chat_messages, template_takes_tools

    tokenizer = Tokenizer.from_file(str(small_context / TOKENIZER_FILE))
    formatter = PromptFormatter(tokenizer, TOOL_TEMPLATE)
    assert formatter.takes_tools and template_takes_tools(TOOL_TEMPLATE)
    messages, tools = chat_messages(_history(), ToolPlan((WEATHER,), "auto"), True)
    assert tools is not None and tools[0]["function"]["name"] == "get_weather"
    text = formatter.chat(messages, tools).text
    assert "TOOLS:get_weather;" in text and 'CALL get_weather {"city": "Paris"}' in text
    assert "<|im_start|>tool\n21 C<|im_end|>" in text and "<|im_start|>system\nbe brief" in text
    assert "# Tools" not in text  # the default format is only for templates without tools


def test_the_default_format_writes_tools_calls_and_results_as_documented() -> None:
    from serving.gateway.tools import chat_messages

    messages, tools = chat_messages(_history(), ToolPlan((WEATHER,), "auto"), False)
    assert tools is None
    assert messages[0]["role"] == "system" and messages[0]["content"].startswith("be brief\n\n# Tools")
    assert '"name": "get_weather"' in messages[0]["content"]
    assert messages[2] == {
        "role": "assistant",
        "content": '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
    }
    assert messages[3] == {"role": "user", "content": "<tool_response>\n21 C\n</tool_response>"}
