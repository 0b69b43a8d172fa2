"""The one chat template renderer (gateway and build): sandboxed, compiled once, errors named."""

from __future__ import annotations

import pytest

from model_repo.chat_template import ChatTemplateError, _compiled_chat_template, render_chat_template


def test_chat_template_is_compiled_once_and_its_errors_are_chat_template_errors() -> None:
    """A chat request must not pay for compiling the template (~2.3 ms for SmolLM2's); a template
    that refuses the messages, or does not parse, is a ChatTemplateError naming the cause."""
    template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    messages = [{"role": "user", "content": "hi"}]
    before = _compiled_chat_template.cache_info()
    first = render_chat_template(template, messages)
    second = render_chat_template(template, [{"role": "user", "content": "again"}])
    after = _compiled_chat_template.cache_info()
    assert (first, second) == ("[user] hi\n", "[user] again\n")
    assert (after.misses - before.misses, after.hits - before.hits) == (1, 1)
    refusing = "{{ raise_exception('only user messages, please') }}"
    with pytest.raises(ChatTemplateError, match="only user messages, please"):
        render_chat_template(refusing, messages)
    with pytest.raises(ChatTemplateError, match="chat template failed"):
        render_chat_template("{% for m in messages %}", messages)


def test_a_models_own_template_and_special_tokens_are_used() -> None:
    """`apply_chat_template` takes what generation.json holds: the template and the bos/eos strings."""
    from model_repo.chat_template import apply_chat_template
    from model_repo.runtime.contract import GenerationMetadata

    meta = GenerationMetadata(
        architecture="llama",
        num_layers=1,
        num_kv_heads=1,
        head_dim=1,
        vocab_size=2,
        max_context=8,
        eos_token_ids=(1,),
        pad_token_id=1,
        chat_template="{{ bos_token }}{% for m in messages %}{{ m['content'] }}{{ eos_token }}{% endfor %}",
        bos_token="<s>",
        eos_token="</s>",
    )
    assert apply_chat_template(meta, [{"role": "user", "content": "hi"}]) == "<s>hi</s>"
    with pytest.raises(ChatTemplateError, match="no chat template"):
        apply_chat_template(GenerationMetadata(**{**meta.__dict__, "chat_template": None}), [])
