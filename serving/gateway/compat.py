"""What the gateway does with each OpenAI parameter that is not plain sampling: refuse it (a 400 that
names it and says why), accept it (it changes nothing on a self-hosted server), or turn it into the
engine's inputs (tools, response_format, logprobs, FIM). README's compatibility table follows this file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from serving.gateway.errors import ApiError
from serving.gateway.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    NamedToolChoice,
    TextPart,
)
from serving.gateway.tools import Function, ToolError, ToolPlan, styled, tool_grammar

# Chat parameters refused whenever they are set: (why, what to do instead)
_REFUSED_CHAT: dict[str, str] = {
    "audio": "audio output needs an audio model; this server serves a text model (leave it out)",
    "functions": "`functions` is deprecated by OpenAI; send the same definitions as `tools`",
    "function_call": "`function_call` is deprecated by OpenAI; send `tool_choice` instead",
    "reasoning_effort": "the served model is not a reasoning model (leave it out)",
    "verbosity": "the served model cannot be steered to a verbosity level (leave it out; use max_tokens)",
    "web_search_options": "this server has no web search (leave it out)",
}
# Accepted and without effect here (README says why): user, metadata, service_tier, prompt_cache_key,
# prompt_cache_retention, safety_identifier, prediction, stream_options.include_obfuscation,
# store (false only).


@dataclass(frozen=True)
class Guide:
    """What the engine enforces: guided_decoding_guide_type and guided_decoding_guide."""

    kind: str  # "json" | "json_schema" | "regex" | "lark"
    text: str


@dataclass(frozen=True)
class ChatPlan:
    """A chat request checked: its tools, its guide, and how many logprob alternatives it wants."""

    tools: ToolPlan
    guide: Guide | None
    logprobs: bool
    top_logprobs: int


def _refuse(param: str, why: str) -> ApiError:
    return ApiError(400, f"{param}: {why}", param=param, code="unsupported_parameter")


def chat_plan(body: ChatCompletionRequest) -> ChatPlan:
    """Check a chat request's parameters; `ApiError` (400, naming the parameter) for what cannot be
    honoured."""
    for name, why in _REFUSED_CHAT.items():
        if getattr(body, name) is not None:
            raise _refuse(name, why)
    if body.store:
        raise _refuse("store", "this server does not store completions; send store=false or leave it out")
    if body.modalities is not None and any(m != "text" for m in body.modalities):
        raise _refuse("modalities", 'this server answers with text only; send ["text"] or leave it out')
    _check_messages(body)
    if body.top_logprobs is not None and not body.logprobs:
        raise _refuse("top_logprobs", "top_logprobs needs logprobs=true")
    plan = _tool_plan(body)
    answer_schema = _answer_schema(body)
    guide: Guide | None = None
    if plan.functions and plan.mode != "none":
        try:
            guide = Guide("lark", tool_grammar(plan, answer_schema))
        except ToolError as exc:
            raise _refuse(exc.param, str(exc)) from None
    elif answer_schema is not None:
        guide = Guide("json_schema", json.dumps(styled(answer_schema), ensure_ascii=False))
    return ChatPlan(plan, guide, bool(body.logprobs), body.top_logprobs or 0)


def _check_messages(body: ChatCompletionRequest) -> None:
    for i, message in enumerate(body.messages):
        where = f"messages[{i}]"
        if message.role == "function":
            raise _refuse(
                f"{where}.role", "the `function` role is deprecated by OpenAI; send `tool` messages"
            )
        if message.audio is not None:
            raise _refuse(f"{where}.audio", "this server has no audio model")
        if message.function_call is not None:
            raise _refuse(f"{where}.function_call", "deprecated by OpenAI; send `tool_calls`")
        if isinstance(message.content, list):
            for j, part in enumerate(message.content):
                if not isinstance(part, TextPart) and part.type != "refusal":
                    raise _refuse(
                        f"{where}.content[{j}]",
                        f"content of type {part.type!r} is not supported: the served model reads text only",
                    )
        if message.tool_calls and message.role != "assistant":
            raise _refuse(f"{where}.tool_calls", "only assistant messages carry tool_calls")
        if message.role == "tool" and not message.tool_call_id:
            raise _refuse(f"{where}.tool_call_id", "a tool message needs the tool_call_id it answers")
        if message.content is None and message.role not in ("assistant",):
            raise _refuse(f"{where}.content", f"a {message.role} message needs content")


def _tool_plan(body: ChatCompletionRequest) -> ToolPlan:
    functions = []
    for i, tool in enumerate(body.tools or []):
        if tool.type != "function" or tool.function is None:
            raise _refuse(f"tools[{i}]", f"tools of type {tool.type!r} are not supported; use function tools")
        parameters = tool.function.parameters or {"type": "object", "properties": {}}
        if parameters.get("type", "object") != "object":
            raise _refuse(f"tools[{i}].function.parameters", "must be a JSON schema of type object")
        functions.append(Function(tool.function.name, tool.function.description, parameters))
    names = [f.name for f in functions]
    if len(set(names)) != len(names):
        raise _refuse("tools", "two tools have the same name")
    choice = body.tool_choice
    mode = "auto" if functions else "none"
    if isinstance(choice, NamedToolChoice):
        if choice.type != "function" or choice.function is None:
            raise _refuse("tool_choice", f"tool_choice of type {choice.type!r} is not supported")
        if choice.function.name not in names:
            raise _refuse("tool_choice", f"no tool named {choice.function.name!r} in tools")
        mode = choice.function.name
    elif choice is not None:
        if choice != "none" and not functions:
            raise _refuse("tool_choice", f"tool_choice={choice!r} needs tools")
        mode = choice
    return ToolPlan(tuple(functions), mode, body.parallel_tool_calls is not False)


def _answer_schema(body: ChatCompletionRequest) -> dict[str, Any] | None:
    fmt = body.response_format
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return {"type": "object"}
    if fmt.type == "json_schema":
        if fmt.json_schema is None:
            raise _refuse("response_format.json_schema", "json_schema needs {name, schema}")
        return fmt.json_schema.schema_ or {"type": "object"}
    raise _refuse("response_format", f"type {fmt.type!r}: use text, json_object or json_schema")


@dataclass(frozen=True)
class CompletionPlan:
    logprobs: int | None
    echo: bool


def completion_plan(body: CompletionRequest, fim: tuple[str, str, str] | None) -> CompletionPlan:
    """Check a completions request (best_of, suffix); `fim`: the model's FIM tokens, if it has them."""
    if body.prompt_count() > 1:
        raise _refuse(
            "prompt",
            f"{body.prompt_count()} prompts in one request: send one request per prompt (the server batches "
            "concurrent requests itself)",
        )
    if body.best_of is not None and body.best_of != body.choices():
        raise _refuse(
            "best_of",
            "best_of different from n is not supported (candidates are not ranked server-side); "
            "send n candidates and rank them with logprobs",
        )
    if body.suffix is not None and fim is None:
        raise _refuse(
            "suffix", "the served model has no fill-in-the-middle tokens, so it cannot complete a suffix"
        )
    return CompletionPlan(body.logprobs, bool(body.echo))
