"""Guided decoding (model_repo/runtime/guide.py, llguidance) on the tiny model through the scheduler: every
output parses and validates, each sequence of a batch keeps its own grammar state, a bad guide is a
clear INVALID_ARG, and the grammar's end ends the sequence."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest

from model_repo.runtime.engine import Engine
from model_repo.runtime.scheduler import GenerationRequest

from .test_decoding import PROMPT, run

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 8},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "address": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 8},
                "zip": {"type": "string", "pattern": "^[0-9]{5}$"},
            },
            "required": ["city", "zip"],
            "additionalProperties": False,
        },
        "tags": {"type": "array", "items": {"type": "string", "enum": ["red", "green"]}, "maxItems": 3},
        "kind": {"enum": ["x", "y", 3]},
    },
    "required": ["name", "age", "address", "tags", "kind"],
    "additionalProperties": False,
}
CALL = {
    "type": "object",
    "properties": {"x": {"type": "integer", "minimum": 0, "maximum": 99}},
    "required": ["x"],
    "additionalProperties": False,
}
LARK = 'start: "call " call | "none"\ncall: %json ' + json.dumps(CALL)
REGEX = r"[0-9]{3}-[a-z]{2,4}"
SEEDS = (None, 1, 2)


def _check_json_schema(text: str) -> None:
    jsonschema.validate(json.loads(text), PERSON)


def _check_json(text: str) -> None:
    assert isinstance(json.loads(text), dict)


def _check_regex(text: str) -> None:
    assert re.fullmatch(REGEX, text), text


def _check_lark(text: str) -> None:
    assert text == "none" or text.startswith("call ")
    if text != "none":
        jsonschema.validate(json.loads(text.removeprefix("call ")), CALL)


GUIDES = {
    "json_schema": (json.dumps(PERSON), _check_json_schema),
    "json": ("", _check_json),
    "regex": (REGEX, _check_regex),
    "lark": (LARK, _check_lark),
}


@pytest.mark.parametrize("guide_type", list(GUIDES))
def test_every_output_follows_its_guide_and_ends_with_the_grammar(
    tiny_engine: Engine, guide_type: str
) -> None:
    """Greedy and sampled sequences, batched together, each parse and validate; with no end token
    (end_id -1) the grammar's completion is what ends them ('stop', before max_tokens)."""
    guide, check = GUIDES[guide_type]
    # "json" bounds nothing: a random model sampling freely may write one key for ever (then 'length',
    # as with any server); a bias towards closing quotes and braces (a feature too) lets it finish
    closing = tuple((tiny_engine.encode(c)[0], 4.0) for c in '"}') if guide_type == "json" else ()
    requests = [
        GenerationRequest(
            prompt=PROMPT,
            max_tokens=300,
            end_id=-1,
            temperature=0.0 if seed is None else 1.0,
            seed=seed,
            guide_type=guide_type,
            guide=guide,
            logit_bias=closing,
        )
        for seed in SEEDS
    ]
    records, scheduler = run(tiny_engine, requests)
    assert scheduler.max_batch_seen == len(SEEDS)
    for record in records:
        assert record.errors == []
        last = record.responses[-1]
        check(last.text)
        assert last.finish_reason == "stop" and last.completion_tokens < 300


def test_a_constrained_and_a_free_sequence_batched_keep_their_own_state(tiny_engine: Engine) -> None:
    free = GenerationRequest(prompt=PROMPT, max_tokens=30, end_id=-1)
    (alone,), _ = run(tiny_engine, [free])
    constrained = GenerationRequest(
        prompt=PROMPT, max_tokens=300, guide_type="json_schema", guide=json.dumps(PERSON)
    )
    (guided, unguided), scheduler = run(tiny_engine, [constrained, free])
    assert scheduler.max_batch_seen == 2
    _check_json_schema(guided.responses[-1].text)
    assert unguided.ids() == alone.ids() and unguided.responses[-1].text == alone.responses[-1].text


@pytest.mark.parametrize(
    ("guide_type", "guide", "message"),
    [
        ("json_schema", '{"type": "foo"}', "Invalid type: foo"),
        ("json_schema", "{not json", "not valid JSON"),
        ("json_schema", "[1, 2]", "must be a JSON object"),
        ("regex", "[a-z", "unclosed character class"),
        ("lark", "start: missing_rule", 'unknown name: "missing_rule"'),
    ],
)
def test_an_invalid_guide_is_an_invalid_arg_error_naming_the_problem(
    tiny_engine: Engine, guide_type: str, guide: str, message: str
) -> None:
    bad = GenerationRequest(prompt=PROMPT, max_tokens=8, guide_type=guide_type, guide=guide)
    good = GenerationRequest(prompt=PROMPT, max_tokens=4, end_id=-1)
    (failed, served), _ = run(tiny_engine, [bad, good])
    assert len(failed.errors) == 1 and failed.errors[0].kind == "INVALID_ARG"
    assert message in failed.errors[0] and f"guided decoding ({guide_type})" in failed.errors[0]
    assert served.errors == [] and served.responses[-1].completion_tokens == 4


def test_n_constrained_sequences_each_follow_the_grammar(tiny_engine: Engine) -> None:
    request = GenerationRequest(
        prompt=PROMPT,
        max_tokens=300,
        temperature=1.0,
        seed=7,
        n=3,
        guide_type="json_schema",
        guide=json.dumps(PERSON),
    )
    (record,), _ = run(tiny_engine, [request])
    texts = {r.sequence_index: r.text for r in record.responses if r.finish_reason}
    assert sorted(texts) == [0, 1, 2]
    for text in texts.values():
        _check_json_schema(text)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_multilingual_text_generated_by_the_engine_has_no_broken_characters(
    tiny_engine: Engine, stream: bool
) -> None:
    """The tiny model's tokenizer splits every non-ASCII character into byte tokens; a regex guide makes
    the engine generate such text: no response holds U+FFFD and each one's ids decode to its text."""
    target = "你好\uff0c世界 🎉🚀 très élégant"
    request = GenerationRequest(
        prompt=PROMPT, max_tokens=200, stream=stream, guide_type="regex", guide=re.escape(target)
    )
    (record,), _ = run(tiny_engine, [request])
    assert "".join(r.text for r in record.responses) == target
    for response in record.responses:
        assert "\ufffd" not in response.text
        assert tiny_engine.decode(list(response.token_ids)) == response.text
    assert len(record.responses) > 3 if stream else len(record.responses) == 1
    assert record.responses[-1].final
