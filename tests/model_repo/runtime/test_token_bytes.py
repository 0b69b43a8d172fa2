"""Each token's exact bytes: they spell the text even where a token holds part of a character, and they
tell a character cut by the end of an answer from bytes that are not UTF-8 at all."""

from __future__ import annotations

from model_repo.runtime.engine import Engine
from model_repo.runtime.token_bytes import TokenBytes, cut_character, token_bytes


def test_token_bytes_spell_the_text_even_when_a_token_holds_part_of_a_character(tiny_engine: Engine) -> None:
    names = TokenBytes(tiny_engine.tokenizer)
    text = "héllo 世界 🎉"
    ids = tiny_engine.encode(text)
    assert b"".join(names.of(i) for i in ids).decode() == text
    partial = [i for i in ids if names.text(i).startswith("bytes:")]
    assert partial, "the tiny vocabulary splits these characters into byte tokens"
    assert all("\\x" in names.text(i) for i in partial)


def test_an_end_inside_a_character_is_told_from_bytes_that_are_not_utf8(tiny_engine: Engine) -> None:
    names = token_bytes(tiny_engine.tokenizer)
    assert token_bytes(tiny_engine.tokenizer) is names  # built once per tokenizer
    cut = tiny_engine.encode("ok 東")[:-1]  # the last byte of 東 never comes
    assert names.ends_inside_a_character(cut)
    assert not names.ends_inside_a_character(tiny_engine.encode("ok 東"))
    invalid = tiny_engine.tokenizer.token_to_id("ÿ")  # byte 0xFF: no UTF-8 character holds it
    assert names.of(invalid) == b"\xff"
    assert not names.ends_inside_a_character([*tiny_engine.encode("ok"), invalid])
    # A skipped special token after the cut does not hide it (decoding leaves it out too)
    eos = next(iter(names.specials))
    assert names.ends_inside_a_character([*cut, eos])
    assert not names.ends_inside_a_character([*cut, eos], skip_special_tokens=False)


def test_a_cut_character_is_the_start_of_one_that_more_bytes_could_complete() -> None:
    cut = ["東".encode()[:1], "東".encode()[:2], "🎉".encode()[:3], b"ok \xc3", b"\xed\x9f"]
    assert all(cut_character(raw) for raw in cut)
    whole_or_never_utf8 = [
        b"",
        b"ok",
        "東".encode(),
        b"\xff",  # never in UTF-8
        b"\x80",  # a continuation with no lead byte
        b"\xc0",  # an overlong lead byte
        b"\xed\xa8",  # a surrogate's start (Python's incremental decoder holds it back as if it were cut)
        b"\xf0\x80",  # an overlong 4-byte start
        b"\xf4\x90",  # beyond U+10FFFF
        b"\xe6\x9d\x41",  # cut, then an ASCII byte: not at the end
    ]
    assert not any(cut_character(raw) for raw in whole_or_never_utf8)
