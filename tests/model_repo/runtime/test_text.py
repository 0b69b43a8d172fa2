"""Streaming text: deltas never split a character (Chinese, emoji, accented text), stop strings cut across
tokens, and the token ids of a response are exactly those behind its text."""

from __future__ import annotations

import random

from model_repo.runtime.batch import StepOutput
from model_repo.runtime.engine import Engine
from model_repo.runtime.request import GenerationRequest, SequenceOutput
from model_repo.runtime.text import IncrementalDetokenizer, TextStream
from model_repo.runtime.token_bytes import cut_character, token_bytes


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


def test_an_answer_cut_inside_a_character_drops_the_partial_bytes(tiny_engine: Engine) -> None:
    """max_tokens may end an answer between a character's bytes: the flush sends no U+FFFD for them."""
    ids = tiny_engine.encode("ok 東")
    detok = IncrementalDetokenizer(tiny_engine.tokenizer)
    deltas = [detok.push(i) for i in ids[:-1]] + [detok.flush()]  # the last byte of 東 never comes
    assert "".join(deltas) == "ok " and all("\ufffd" not in d for d in deltas)


MULTILINGUAL = ["你好\uff0c世界", "emoji 🎉🚀 ok", "très élégant, ça va ?"]


def _tokens(ids: list[int]) -> list[StepOutput]:
    return [
        StepOutput("r", t, i == len(ids) - 1, "length" if i == len(ids) - 1 else None)
        for i, t in enumerate(ids)
    ]


def test_streamed_responses_carry_whole_characters_and_the_ids_behind_them(tiny_engine: Engine) -> None:
    """Each streamed response's token ids decode to exactly its text: ids of bytes held back (a split
    character) travel with the response that releases the character."""
    for text in MULTILINGUAL:
        ids = tiny_engine.encode(text)
        seq = SequenceOutput(
            0, tiny_engine.tokenizer, GenerationRequest(prompt="p", max_tokens=99, stream=True)
        )
        responses = []
        for out in _tokens(ids):
            released, finished = seq.push(out)
            response = seq.response(released, finished, 1)
            if response is not None:
                responses.append(response)
        assert "".join(r.text for r in responses) == text
        assert [t for r in responses for t in r.token_ids] == ids
        for r in responses:
            assert "\ufffd" not in r.text and tiny_engine.decode(list(r.token_ids)) == r.text
            assert r.completion_tokens == len(r.token_ids)
        assert responses[-1].final and responses[-1].finish_reason == "length"


def test_a_non_streamed_sequence_answers_once_with_all_its_text_and_ids(tiny_engine: Engine) -> None:
    ids = tiny_engine.encode(MULTILINGUAL[0])
    seq = SequenceOutput(0, tiny_engine.tokenizer, GenerationRequest(prompt="p", max_tokens=99))
    made = [seq.response(*seq.push(out), 1) for out in _tokens(ids)]
    assert made[:-1] == [None] * (len(ids) - 1)
    last = made[-1]
    assert last is not None and last.text == MULTILINGUAL[0] and list(last.token_ids) == ids


def test_an_answer_ending_in_bytes_that_are_not_utf8_keeps_their_replacement_character(
    tiny_engine: Engine,
) -> None:
    """Only a character the end cut in half is dropped: a byte no character holds (0xFF) is U+FFFD at the
    end as it is anywhere else, so the text is what the tokens' bytes decode to (completions' echo and
    logprobs agree)."""
    invalid = tiny_engine.tokenizer.token_to_id("ÿ")
    ids = [*tiny_engine.encode("ok"), invalid]
    detok = IncrementalDetokenizer(tiny_engine.tokenizer)
    text = "".join([detok.push(i) for i in ids] + [detok.flush()])
    assert text == "ok\ufffd" == b"ok\xff".decode("utf-8", errors="replace")


def test_streamed_text_is_what_the_tokens_bytes_spell_for_any_sequence_of_tokens(tiny_engine: Engine) -> None:
    """Random token sequences (the random tiny model writes such byte soup): pushed one by one and
    flushed, the text is the tokens' bytes decoded with U+FFFD for bytes that are not UTF-8, less a
    character cut by the end, the same text the gateway's logprobs spell."""
    names = token_bytes(tiny_engine.tokenizer)
    rng = random.Random(0)
    vocab = [i for i in range(tiny_engine.tokenizer.get_vocab_size()) if i not in names.specials]
    for _ in range(500):
        ids = [rng.choice(vocab) for _ in range(rng.randint(1, 10))]
        detok = IncrementalDetokenizer(tiny_engine.tokenizer)
        text = "".join([detok.push(i) for i in ids] + [detok.flush()])
        raw = b"".join(names.of(i) for i in ids)
        spelled = raw.decode("utf-8", errors="replace")
        assert text == (spelled[:-1] if cut_character(raw) else spelled), ids
