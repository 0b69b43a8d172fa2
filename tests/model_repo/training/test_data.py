"""Chat JSON Lines: good files load; every kind of bad line is refused with its line number and the fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from model_repo.training.data import DataError, load_chat_jsonl, write_chat_jsonl

GOOD = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}


def _file(tmp_path: Path, *lines: str) -> Path:
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_a_good_file_loads_prompt_and_answer_and_skips_blank_lines(tmp_path: Path) -> None:
    """The answer is the last assistant message; the prompt is everything before it."""
    path = _file(tmp_path, json.dumps(GOOD), "", json.dumps(GOOD))
    examples = load_chat_jsonl(path)
    assert [e.line for e in examples] == [1, 3]
    assert examples[0].answer == "hello"
    assert examples[0].prompt == ({"role": "user", "content": "hi"},)
    again = load_chat_jsonl(write_chat_jsonl(tmp_path / "copy.jsonl", examples))
    assert again[0].messages == examples[0].messages


@pytest.mark.parametrize(
    ("line", "said"),
    [
        ("{not json", "not valid JSON"),
        ('{"prompt": "x"}', '"messages" list'),
        ('{"messages": []}', "non-empty list"),
        ('{"messages": [{"role": "bot", "content": "x"}]}', "role 'bot'"),
        ('{"messages": [{"role": "user", "content": 3}]}', "string 'content'"),
        ('{"messages": [{"role": "user", "content": "q"}]}', "last message must be the assistant"),
        ('{"messages": [{"role": "assistant", "content": "a"}]}', "no user message"),
        ('{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": " "}]}', "empty"),
        ('{"messages": [{"role": "user", "content": "q", "tool_calls": []}, '
         '{"role": "assistant", "content": "a"}]}', "unsupported keys"),
    ],
)  # fmt: skip
def test_a_bad_line_names_the_file_the_line_and_the_problem(tmp_path: Path, line: str, said: str) -> None:
    path = _file(tmp_path, json.dumps(GOOD), line)
    with pytest.raises(DataError) as caught:
        load_chat_jsonl(path)
    assert f"{path}:2" in str(caught.value)
    assert said in str(caught.value)


def test_missing_and_empty_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_chat_jsonl(tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match="no examples"):
        load_chat_jsonl(_file(tmp_path, "", ""))


def test_text_that_is_not_utf8_names_the_line_and_a_folder_is_not_a_file(tmp_path: Path) -> None:
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(json.dumps(GOOD).encode() + b"\n" + '{"messages": "caf\xe9"}\n'.encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1.jsonl:2: not UTF-8 text \(byte 0xe9\); save the file as"):
        load_chat_jsonl(path)
    with pytest.raises(DataError, match="is a folder, not a file"):
        load_chat_jsonl(tmp_path)


def test_a_byte_order_mark_is_read_past_and_line_separators_stay_in_their_strings(tmp_path: Path) -> None:
    path = tmp_path / "bom.jsonl"
    path.write_text(json.dumps(GOOD) + "\n", encoding="utf-8-sig")
    assert [e.answer for e in load_chat_jsonl(path)] == ["hello"]
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(GOOD).encode() + b"\n\xe9")
    with pytest.raises(DataError, match=r"bom.jsonl:2: not UTF-8 text \(byte 0xe9\)"):
        load_chat_jsonl(path)
    # JSON strings may hold U+2028 / U+0085 unescaped (ensure_ascii=False); they are not line ends
    answer = "one\u2028two\x85three"
    record = {"messages": [GOOD["messages"][0], {"role": "assistant", "content": answer}]}
    path.write_text(json.dumps(record, ensure_ascii=False) + "\r\n", encoding="utf-8")
    assert [e.answer for e in load_chat_jsonl(path)] == [answer]
