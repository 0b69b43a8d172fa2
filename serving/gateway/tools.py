"""Tools and structured output: the prompt's tool section, the guide the engine enforces, the parser.

Tool-call format (what the model writes, and what the grammar allows): one block per call,

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

the format of Hermes/Qwen-style chat templates. With a chat template that takes `tools` (it mentions
them), the tools, the assistant's earlier `tool_calls` and the `tool` messages are rendered by the
template itself. With a template that does not (the default model's), the gateway's documented
default format is used: a `# Tools` section in the system message lists the functions as JSON and
shows the block above; earlier calls are written into the assistant's message as such blocks; a tool's
result becomes a user message `<tool_response>\n...\n</tool_response>`.

The guide (a Lark grammar in llguidance's syntax, sent as guided_decoding_guide_type "lark"):
`auto` allows free text (not starting with a call) or calls; `required` only calls; a named function
exactly one call of it; `parallel_tool_calls: false` one call at most. Each call's JSON is
`%json {...}`: `arguments` must validate against the function's parameters schema, so it always parses.
"""

from __future__ import annotations

import copy
import json
import re
import secrets
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from serving.gateway.responses import FunctionCallOut, ToolCallOut

if TYPE_CHECKING:
    from serving.gateway.schemas import ChatMessage

CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
# compact, deterministic JSON: no free whitespace for the model to loop on (llguidance's options)
JSON_STYLE = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
_BLOCK = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)
_NAME = re.compile(r'"name"\s*:\s*"([^"\\]*)"')


class ToolError(ValueError):
    """A tool definition or choice that cannot be used; `param` names the field."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class Function:
    name: str
    description: str | None
    parameters: dict[str, Any]


@dataclass(frozen=True)
class ToolPlan:
    """What a request asks of tools: its functions, `mode` ('none', 'auto', 'required' or a function's
    name) and whether several calls may come in one answer."""

    functions: tuple[Function, ...]
    mode: str = "auto"
    parallel: bool = True

    @property
    def parses_calls(self) -> bool:
        return bool(self.functions) and self.mode != "none"


def tool_schema(function: Function) -> dict[str, Any]:
    """OpenAI's tool object, as chat templates and the prompt's tool section show it."""
    body: dict[str, Any] = {"name": function.name}
    if function.description:
        body["description"] = function.description
    body["parameters"] = function.parameters
    return {"type": "function", "function": body}


def template_takes_tools(template: str | None) -> bool:
    """Whether a chat template renders tools itself (it reads the `tools` variable)."""
    return bool(template) and re.search(r"\btools\b", template or "") is not None


def default_tool_section(functions: tuple[Function, ...]) -> str:
    """The system-message section of the default format (models whose template knows no tools)."""
    listed = "\n".join(json.dumps(tool_schema(f), ensure_ascii=False) for f in functions)
    return (
        "# Tools\n\nYou can call these functions. Their definitions, one JSON object a line, are between "
        f"<tools> and </tools>:\n<tools>\n{listed}\n</tools>\n\n"
        "To call a function, answer with one block per call and nothing else:\n"
        f'{CALL_OPEN}\n{{"name": "<function name>", "arguments": {{<arguments as JSON>}}}}\n{CALL_CLOSE}\n'
        "A function's result comes back in a <tool_response> block; then answer the user with it."
    )


def call_block(name: str, arguments: Any) -> str:
    return (
        f"{CALL_OPEN}\n{json.dumps({'name': name, 'arguments': arguments}, ensure_ascii=False)}\n{CALL_CLOSE}"
    )


def arguments_value(text: str) -> Any:
    """An earlier call's `arguments` text as JSON (kept as text if it is not JSON)."""
    try:
        return json.loads(text)
    except ValueError:
        return text


# --- guides -----------------------------------------------------------------------------------------


def _hoist_defs(schema: dict[str, Any], prefix: str, defs: dict[str, Any]) -> dict[str, Any]:
    """`schema` with its `$defs`/`definitions` moved into `defs` under `prefix`-ed names, so that it can
    be nested in a larger schema (its `#/$defs/X` references are rewritten to match)."""
    schema = copy.deepcopy(schema)
    local: dict[str, Any] = {}
    for key in ("$defs", "definitions"):
        found = schema.pop(key, None) or {}
        if not isinstance(found, dict):
            raise ToolError("tools", f"{key} in a parameters schema must be an object")
        for name, value in found.items():
            local[f"#/{key}/{name}"] = f"{prefix}{name}"
            defs[f"{prefix}{name}"] = value

    def rewrite(node: Any) -> Any:
        if isinstance(node, dict):
            out = {k: rewrite(v) for k, v in node.items()}
            ref = out.get("$ref")
            if isinstance(ref, str):
                if ref in local:
                    out["$ref"] = f"#/$defs/{local[ref]}"
                elif ref == "#":
                    raise ToolError("tools", "recursive parameters schemas ($ref '#') are not supported")
            return out
        if isinstance(node, list):
            return [rewrite(v) for v in node]
        return node

    result = rewrite(schema)
    for name in [v for v in local.values()]:
        defs[name] = rewrite(defs[name])
    return dict(result)


def _calls_schema(functions: tuple[Function, ...]) -> dict[str, Any]:
    defs: dict[str, Any] = {}
    options = []
    for index, function in enumerate(functions):
        arguments = _hoist_defs(function.parameters, f"f{index}_", defs)
        options.append(
            {
                "type": "object",
                "properties": {"name": {"const": function.name}, "arguments": arguments},
                "required": ["name", "arguments"],
                "additionalProperties": False,
            }
        )
    schema: dict[str, Any] = options[0] if len(options) == 1 else {"anyOf": options}
    if defs:
        schema = {**schema, "$defs": defs}
    return {**schema, "x-guidance": JSON_STYLE}


def styled(schema: dict[str, Any]) -> dict[str, Any]:
    """A response_format schema with llguidance's compact JSON style (other validators ignore it)."""
    own = schema.get("x-guidance")
    return {**schema, "x-guidance": {**JSON_STYLE, **(own if isinstance(own, dict) else {})}}


def tool_grammar(plan: ToolPlan, answer_schema: dict[str, Any] | None = None) -> str:
    """The Lark grammar (llguidance syntax) for `plan`; `answer_schema`: a response_format schema the
    non-call answer must follow instead of free text (auto mode)."""
    functions = plan.functions
    if plan.mode not in ("auto", "required"):
        functions = tuple(f for f in functions if f.name == plan.mode)
    one = plan.mode not in ("auto", "required") or not plan.parallel
    lines = [
        "%llguidance {}",
        'call: "<tool_call>\\n" call_json "\\n</tool_call>"',
        f"call_json: %json {json.dumps(_calls_schema(functions), ensure_ascii=False)}",
        "calls: call" if one else 'calls: call ("\\n" call)*',
    ]
    if plan.mode == "auto":
        if answer_schema is not None:
            lines += ["start: answer | calls", f"answer: %json {json.dumps(styled(answer_schema))}"]
        else:
            # any text that does not begin with a call (so a call is always held to its schema)
            lines += ["start: TEXT | calls", r"TEXT: /(?s:.*)/ & ~/(?s:[ \t\r\n]*<tool_call>.*)/"]
    else:
        lines.append("start: calls")
    return "\n".join(lines) + "\n"


# --- parsing --------------------------------------------------------------------------------------


def new_call_id() -> str:
    return "call_" + secrets.token_hex(12)


def parse_calls(text: str) -> tuple[str | None, list[ToolCallOut]]:
    """(content, calls) of a finished answer: the calls when it begins with call blocks (complete ones
    only: a block cut by max_tokens is dropped), else the whole text as content."""
    if not text.lstrip().startswith(CALL_OPEN):
        return text, []
    calls = []
    for match in _BLOCK.finditer(text):
        call = _call(match.group(1))
        if call is not None:
            calls.append(call)
    if not calls:
        return text, []
    return None, calls


def _call(body: str) -> ToolCallOut | None:
    try:
        value = json.loads(body)
    except ValueError:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        return None
    arguments = value.get("arguments", value.get("parameters", {}))
    text = arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
    return ToolCallOut(id=new_call_id(), function=FunctionCallOut(name=value["name"], arguments=text))


@dataclass
class CallStream:
    """Turns streamed text into OpenAI's deltas: content, or tool calls (a call's id and name as soon
    as its name is written, its arguments when its block closes). Text that may still become a call is
    held back, never more than the length of `<tool_call>`."""

    state: str = "undecided"  # -> "content" or "calls"
    buffer: str = ""
    calls: list[ToolCallOut] = field(default_factory=list)
    open_name_sent: bool = False
    _open_id: str = ""

    def push(self, text: str) -> Iterator[dict[str, Any]]:
        """Deltas (`{"content": ...}` or `{"tool_calls": [...]}`) for new text."""
        if self.state == "content":
            if text:
                yield {"content": text}
            return
        self.buffer += text
        if self.state == "undecided":
            head = self.buffer.lstrip()
            if head.startswith(CALL_OPEN):
                self.state = "calls"
            elif CALL_OPEN.startswith(head):
                return  # could still become a call
            else:
                self.state, pending, self.buffer = "content", self.buffer, ""
                yield {"content": pending}
                return
        yield from self._calls()

    def _calls(self) -> Iterator[dict[str, Any]]:
        while True:
            start = self.buffer.find(CALL_OPEN)
            if start < 0:
                return
            body_start = start + len(CALL_OPEN)
            if not self.open_name_sent:
                name = _NAME.search(self.buffer, body_start)
                if name is not None:
                    self.open_name_sent, self._open_id = True, new_call_id()
                    yield self._delta(id=self._open_id, name=name.group(1), arguments="")
            end = self.buffer.find(CALL_CLOSE, body_start)
            if end < 0:
                return
            call = _call(self.buffer[body_start:end].strip())
            self.buffer = self.buffer[end + len(CALL_CLOSE) :]
            if call is not None:
                if not self.open_name_sent:
                    self._open_id = call.id
                    yield self._delta(id=call.id, name=call.function.name, arguments="")
                call = call.model_copy(update={"id": self._open_id})
                self.calls.append(call)
                yield self._delta(arguments=call.function.arguments, index=len(self.calls) - 1)
            self.open_name_sent = False

    def _delta(self, index: int | None = None, **function: str) -> dict[str, Any]:
        position = len(self.calls) if index is None else index
        entry: dict[str, Any] = {"index": position}
        if "id" in function:
            entry["id"] = function.pop("id")
            entry["type"] = "function"
        entry["function"] = function
        return {"tool_calls": [entry]}

    def finish(self) -> Iterator[dict[str, Any]]:
        """At the end: text still held back (it never became a call) is content."""
        if self.state == "undecided" and self.buffer:
            self.state = "content"
            yield {"content": self.buffer}
            self.buffer = ""


# --- the prompt -----------------------------------------------------------------------------------


def chat_messages(
    messages: Sequence[ChatMessage], plan: ToolPlan, template_tools: bool
) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """The messages (and tools) to render: as the template expects them when it takes tools
    (`template_tools`), else in the default format (module docs)."""
    out: list[dict[str, Any]] = []
    for message in messages:
        role = "system" if message.role == "developer" else message.role
        text = message.text()
        if template_tools:
            item: dict[str, Any] = {"role": role, "content": text}
            if message.tool_calls:
                item["tool_calls"] = [
                    {
                        "id": call.id,
                        "type": "function",
                        "function": {
                            "name": call.function.name,
                            "arguments": arguments_value(call.function.arguments),
                        },
                    }
                    for call in message.tool_calls
                ]
            if message.role == "tool":
                item["tool_call_id"] = message.tool_call_id
            if message.name:
                item["name"] = message.name
            out.append(item)
        elif message.role == "tool":
            out.append({"role": "user", "content": f"<tool_response>\n{text}\n</tool_response>"})
        elif message.tool_calls:
            blocks = [
                call_block(c.function.name, arguments_value(c.function.arguments)) for c in message.tool_calls
            ]
            out.append({"role": role, "content": "\n".join([text, *blocks] if text else blocks)})
        else:
            out.append({"role": role, "content": text})
    if not plan.functions:
        return out, None
    if template_tools:
        return out, [tool_schema(f) for f in plan.functions]
    if plan.mode == "none":
        return out, None
    section = default_tool_section(plan.functions)
    if out and out[0]["role"] == "system":
        out[0] = {**out[0], "content": f"{out[0]['content']}\n\n{section}"}
    else:
        out.insert(0, {"role": "system", "content": section})
    return out, None
