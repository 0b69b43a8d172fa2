"""An agent loop with the official `openai` client against a tritonform endpoint.

The model is given a tool this example defines (`get_weather`); when it calls it, the example runs the
function and sends the result back as a `tool` message; the model then answers with it. Nothing here is
specific to tritonform: the same code runs against any OpenAI-compatible server.

    scripts/bootstrap tritonform serve          # prints the URL and an API key
    TRITONFORM_API_KEY=<key> .venv/bin/python examples/agent_loop.py "What is the weather in Paris?"

The default model (SmolLM2-135M, a demonstration model) rarely decides by itself to call a tool, so
`--require-tool` (the default) asks for a call on the first turn with `tool_choice="required"`; the
gateway's grammar then makes the call's arguments valid for the tool's schema. Use `--auto` to let the
model choose (a larger model does this well).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass, field
from typing import Any

from openai import OpenAI

WEATHER = {
    "Paris": "18 C, light rain",
    "Tokyo": "24 C, sunny",
    "New York": "12 C, windy",
    "Nairobi": "22 C, clear",
}

TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The current weather in a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "enum": sorted(WEATHER)}},
                "required": ["city"],
                "additionalProperties": False,
            },
        },
    }
]


def get_weather(city: str) -> str:
    """The tool itself: here a table; in a real agent an API call."""
    return WEATHER.get(city, "unknown city")


FUNCTIONS = {"get_weather": get_weather}


@dataclass
class AgentResult:
    answer: str
    calls: list[tuple[str, dict[str, Any], str]] = field(default_factory=list)  # (name, arguments, result)


def run_agent(
    client: OpenAI,
    model: str,
    question: str,
    require_tool: bool = True,
    max_turns: int = 4,
    max_tokens: int = 96,
) -> AgentResult:
    """Ask `question`; run every tool call the model makes and send the results back, until it answers."""
    messages: list[Any] = [
        {"role": "system", "content": "You are a helpful assistant. Use the tools to answer."},
        {"role": "user", "content": question},
    ]
    result = AgentResult(answer="")
    for turn in range(max_turns):
        if turn == 0 and require_tool:
            choice: Any = "required"
        elif result.calls:
            choice = "none"  # the tool ran: now answer with its result
        else:
            choice = "auto"
        response = client.chat.completions.create(
            model=model,
            messages=messages,
            tools=TOOLS,
            tool_choice=choice,
            parallel_tool_calls=False,
            max_tokens=max_tokens,
            temperature=0,
        )
        message = response.choices[0].message
        if not message.tool_calls:
            result.answer = message.content or ""
            return result
        messages.append(message.model_dump(exclude_none=True))
        for call in message.tool_calls:
            function = getattr(call, "function", None)
            if function is None:
                continue
            arguments = json.loads(function.arguments)
            output = FUNCTIONS[function.name](**arguments)
            result.calls.append((function.name, arguments, output))
            print(f"tool {function.name}({json.dumps(arguments)}) -> {output}", file=sys.stderr)
            messages.append({"role": "tool", "tool_call_id": call.id, "content": output})
    result.answer = "(no answer after the turn limit)"
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description="An agent loop: the model calls a tool, we run it.")
    parser.add_argument("question", nargs="?", default="What is the weather in Paris?")
    parser.add_argument("--base-url", default=os.environ.get("TRITONFORM_URL", "http://127.0.0.1:8000/v1"))
    parser.add_argument("--api-key", default=os.environ.get("TRITONFORM_API_KEY", ""))
    parser.add_argument("--model", default="llm")
    parser.add_argument("--auto", action="store_true", help="let the model decide whether to call the tool")
    args = parser.parse_args()
    if not args.api_key:
        parser.error("set TRITONFORM_API_KEY (or --api-key) to the key `tritonform serve` printed")
    client = OpenAI(base_url=args.base_url, api_key=args.api_key)
    result = run_agent(client, args.model, args.question, require_tool=not args.auto)
    print(result.answer)


if __name__ == "__main__":
    main()
