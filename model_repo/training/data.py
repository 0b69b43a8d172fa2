"""Training and evaluation data: JSON Lines in OpenAI's chat fine-tuning format.

One example per line: `{"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}`,
ending with the assistant message that is learnt (fine-tuning) or expected (evaluation). A bad line
raises `DataError` naming the file, the line and what is wrong with it, so the user can fix it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROLES = ("system", "user", "assistant")


class DataError(ValueError):
    """A data file that cannot be used; the message names the line and what to change."""


@dataclass(frozen=True)
class ChatExample:
    """One conversation: the messages before the answer, and the answer (the last assistant message)."""

    prompt: tuple[dict[str, str], ...]
    answer: str
    line: int

    @property
    def messages(self) -> list[dict[str, str]]:
        return [*self.prompt, {"role": "assistant", "content": self.answer}]


def _check_message(where: str, index: int, message: Any) -> dict[str, str]:
    if not isinstance(message, dict):
        raise DataError(f"{where}: messages[{index}] is a {type(message).__name__}, not an object")
    role, content = message.get("role"), message.get("content")
    if role not in ROLES:
        raise DataError(f"{where}: messages[{index}] has role {role!r}; use one of {', '.join(ROLES)}")
    if not isinstance(content, str):
        raise DataError(f"{where}: messages[{index}] ({role}) needs a string 'content'")
    extra = sorted(set(message) - {"role", "content", "name", "weight"})
    if extra:
        raise DataError(f"{where}: messages[{index}] has unsupported keys {extra}; keep role and content")
    return {"role": str(role), "content": content}


def parse_example(text: str, where: str, line: int) -> ChatExample:
    """One JSON line -> a `ChatExample`, or `DataError` saying what is wrong with it."""
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(record, dict) or "messages" not in record:
        raise DataError(f'{where}: expected an object with a "messages" list, like {{"messages": [...]}}')
    messages = record["messages"]
    if not isinstance(messages, list) or not messages:
        raise DataError(f'{where}: "messages" must be a non-empty list of {{"role", "content"}} objects')
    checked = [_check_message(where, i, m) for i, m in enumerate(messages)]
    if checked[-1]["role"] != "assistant":
        raise DataError(
            f"{where}: the last message must be the assistant's answer (found {checked[-1]['role']})"
        )
    if not any(m["role"] == "user" for m in checked[:-1]):
        raise DataError(f"{where}: no user message before the assistant's answer")
    if not checked[-1]["content"].strip():
        raise DataError(f"{where}: the assistant's answer is empty")
    return ChatExample(prompt=tuple(checked[:-1]), answer=checked[-1]["content"], line=line)


def read_text(path: str | Path, what: str, hint: str) -> tuple[Path, str]:
    """(the path, its text) of a UTF-8 text file (a leading byte-order mark is dropped); `DataError` naming
    `what` when it is missing, a folder, or not UTF-8 (with the line of the first bad byte). `hint` says
    what to pass instead."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise DataError(f"{what} {p} is a folder, not a file; {hint}")
    if not p.is_file():
        raise DataError(f"{what} {p} does not exist; {hint}")
    raw = p.read_bytes()
    raw = raw[3:] if raw.startswith(b"\xef\xbb\xbf") else raw  # a byte-order mark
    try:
        return p, raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(
            f"{p}:{line}: not UTF-8 text (byte 0x{raw[exc.start]:02x}); save the file as UTF-8"
        ) from None


def text_lines(content: str) -> list[str]:
    """The lines of a JSON Lines text: split at newlines only (JSON strings may hold U+2028, U+0085...,
    which `str.splitlines` would split at)."""
    return content.split("\n")


def load_chat_jsonl(path: str | Path) -> list[ChatExample]:
    """Every example of a JSON Lines file (blank lines skipped); `DataError` on the first bad line."""
    p, content = read_text(path, "data file", "pass a JSON Lines file with --data")
    examples = []
    for number, text in enumerate(text_lines(content), start=1):
        if text.strip():
            examples.append(parse_example(text, f"{p}:{number}", number))
    if not examples:
        raise DataError(f'{p} holds no examples; write one {{"messages": [...]}} object per line')
    return examples


def write_chat_jsonl(path: str | Path, examples: list[ChatExample] | list[list[dict[str, str]]]) -> Path:
    """Write conversations (examples or plain message lists) as JSON Lines."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("w", encoding="utf-8") as fh:
        for example in examples:
            messages = example.messages if isinstance(example, ChatExample) else example
            fh.write(json.dumps({"messages": messages}, ensure_ascii=False) + "\n")
    return p
