"""Streaming text: deltas never split a character, stop strings cut across tokens."""

from __future__ import annotations

from model_repo.runtime.engine import Engine
from model_repo.runtime.text import IncrementalDetokenizer, TextStream


def test_incremental_detokenizer_never_splits_a_character(tiny_engine: Engine) -> None:
    text = "Café naïve 東京 🙂 hello"
    ids = tiny_engine.encode(text)
    detok = IncrementalDetokenizer(tiny_engine.tokenizer)
    deltas = [detok.push(i) for i in ids] + [detok.flush()]
    assert "".join(deltas) == text
    assert all("\ufffd" not in d for d in deltas)


def test_text_stream_cuts_at_a_stop_string_spanning_tokens(tiny_engine: Engine) -> None:
    ids = tiny_engine.encode("hello world how are you")
    stream = TextStream(tiny_engine.tokenizer, stop=("how are",))
    out = ""
    for i in ids:
        out += stream.push(i)
        if stream.stopped:
            break
    assert stream.stopped and out == "hello world "
