"""The model's tokenizer, chat template and context, loaded once from the model repository.

The gateway turns every request into token ids itself (and sends Triton those ids when the model takes
them, see model_repo/spec.py), so that what it counts is what the model runs:

- chat: the model's own template (from the repository's `generation.json`, rendered by the one
  sandboxed renderer `model_repo.chat_template`); control tokens come only from the template. Text in
  a message that spells a control token (`<|im_end|>`, `[INST]`, `<|start_header_id|>` ...) is
  tokenised as plain text, so a user cannot forge a system turn;
- completions: the prompt with the BOS token the tokenizer's own post-processor adds (Llama and Mistral
  tokenizers add `<s>`, GPT-2-style ones add nothing), as `transformers` encodes a plain prompt.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from tokenizers import Tokenizer

from model_repo.chat_template import ChatTemplateError, render_chat_template
from model_repo.runtime.contract import METADATA_FILE, TOKENIZER_FILE
from serving.gateway.tools import template_takes_tools

# fill-in-the-middle tokens (prefix, suffix, middle): StarCoder/SantaCoder, Qwen2.5-Coder/CodeGemma styles
_FIM_TOKENS = (
    ("<fim_prefix>", "<fim_suffix>", "<fim_middle>"),
    ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"),
    ("<|fim_begin|>", "<|fim_hole|>", "<|fim_end|>"),
)
DEFAULT_CONTEXT = 2048  # a repository without generation.json (older builds) says nothing of its context


class PromptError(ValueError):
    """The request cannot be turned into a prompt (no template, template refused it, not Unicode)."""


@dataclass(frozen=True)
class Prompt:
    """A request's prompt: the text (for logs and models that take text) and its token ids."""

    text: str
    ids: tuple[int, ...]


class PromptFormatter:
    """Tokenizer + chat template + context length of the served model."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        chat_template: str | None,
        bos: str = "",
        eos: str = "",
        max_context: int = DEFAULT_CONTEXT,
    ) -> None:
        self.tokenizer, self.chat_template, self.bos, self.eos = tokenizer, chat_template, bos, eos
        self.max_context = max_context
        # the same vocabulary with every special token spelled out as text: for user content
        self._literal = Tokenizer.from_str(tokenizer.to_str())
        self._literal.encode_special_tokens = True
        self._specials = sorted(
            (t.content for t in tokenizer.get_added_tokens_decoder().values() if t.special),
            key=len,
            reverse=True,
        )
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
        self.takes_tools = template_takes_tools(chat_template)
        self.fim_tokens = next(
            (fim for fim in _FIM_TOKENS if all(tokenizer.token_to_id(t) is not None for t in fim)), None
        )

    @classmethod
    def load(cls, folder: Path) -> PromptFormatter:
        """The tokenizer and `generation.json` (template, special tokens, context) in `folder`."""
        tokenizer = Tokenizer.from_file(str(folder / TOKENIZER_FILE))
        meta: dict[str, Any] = {}
        if (folder / METADATA_FILE).is_file():
            meta = json.loads((folder / METADATA_FILE).read_text(encoding="utf-8"))
        template = meta.get("chat_template")
        if template is None and (folder / "tokenizer_config.json").is_file():
            template = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8")).get(
                "chat_template"
            )
        return cls(
            tokenizer,
            template,
            str(meta.get("bos_token") or ""),
            str(meta.get("eos_token") or ""),
            int(meta.get("max_context") or DEFAULT_CONTEXT),
        )

    def count_tokens(self, text: str) -> int:
        """Tokens of `text` as the model reads it (special tokens recognised)."""
        return len(self.tokenizer.encode(_unicode(text, "text"), add_special_tokens=False).ids)

    def completion(self, prompt: str) -> Prompt:
        """A /v1/completions prompt, with the BOS the tokenizer adds for its family (never twice)."""
        ids = self.tokenizer.encode(_unicode(prompt, "prompt"), add_special_tokens=True).ids
        plain = self.tokenizer.encode(prompt, add_special_tokens=False).ids
        front = ids[: len(ids) - len(plain)]
        # only what the post-processor puts in front (a BOS), and not when the text already starts with it
        if not front or ids[len(front) :] != plain or plain[: len(front)] == front:
            return Prompt(prompt, tuple(plain))
        return Prompt(prompt, tuple(ids))

    def from_ids(self, ids: list[int]) -> Prompt:
        """A prompt sent as token ids (completions): checked against the vocabulary."""
        bad = next((i for i in ids if i >= self.vocab_size), None)
        if bad is not None:
            raise PromptError(
                f"prompt: token id {bad} is not in this model's vocabulary (0..{self.vocab_size - 1})"
            )
        return Prompt(self.tokenizer.decode(ids, skip_special_tokens=False), tuple(ids))

    def fill_in_the_middle(self, prefix: str, suffix: str) -> Prompt:
        """A completions prompt with a `suffix`, in the model's fill-in-the-middle format."""
        assert self.fim_tokens is not None
        start, hole, middle = self.fim_tokens
        before = self._literal.encode(_unicode(prefix, "prompt"), add_special_tokens=False).ids
        after = self._literal.encode(_unicode(suffix, "suffix"), add_special_tokens=False).ids
        start_id, hole_id, middle_id = (int(self.tokenizer.token_to_id(t) or 0) for t in self.fim_tokens)
        ids = (start_id, *before, hole_id, *after, middle_id)
        return Prompt(f"{start}{prefix}{hole}{suffix}{middle}", ids)

    def chat(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None) -> Prompt:
        """Render `messages` with the model's template; control tokens only where the template put them.
        `tools` go to the template (for templates that render tools themselves)."""
        if not self.chat_template:
            raise PromptError("this model has no chat template; use /v1/completions with a plain prompt")
        for message in messages:
            _unicode(message.get("content") or "", "messages")
        # Every special token spelled in the messages becomes a unique marker before rendering, so that
        # afterwards the template's own control tokens are the only special tokens in the text.
        marker = f"\ue000{secrets.token_hex(4)}\ue001"
        spelled: list[str] = []

        def hide(text: str) -> str:
            for special in self._specials:
                if special in text:
                    parts = text.split(special)
                    text = parts[0]
                    for part in parts[1:]:
                        text += f"{marker}{len(spelled)}{marker}{part}"
                        spelled.append(special)
            return text

        hidden = [
            {**m, "content": hide(m["content"])} if isinstance(m.get("content"), str) else m for m in messages
        ]
        extra: dict[str, Any] = {"tools": tools} if tools else {}
        try:
            rendered = render_chat_template(
                self.chat_template,
                cast(Any, hidden),  # message values may be lists (tool_calls), not only text
                add_generation_prompt=True,
                bos_token=self.bos,
                eos_token=self.eos,
                **extra,
            )
        except ChatTemplateError as exc:
            raise PromptError(str(exc)) from None
        if not spelled:
            ids = self.tokenizer.encode(rendered, add_special_tokens=False).ids
            return Prompt(rendered, tuple(ids))
        return self._encode_with_literals(rendered, marker, spelled)

    def _encode_with_literals(self, rendered: str, marker: str, spelled: list[str]) -> Prompt:
        pieces = rendered.split(marker)  # text, index, text, index, ..., text
        ids: list[int] = []
        text: list[str] = []
        for position, piece in enumerate(pieces):
            if position % 2:
                literal = spelled[int(piece)]
                ids += self._literal.encode(literal, add_special_tokens=False).ids
                text.append(literal)
            elif piece:
                ids += self.tokenizer.encode(piece, add_special_tokens=False).ids
                text.append(piece)
        return Prompt("".join(text), tuple(ids))


def _unicode(text: str, field: str) -> str:
    """`text`, if it can be encoded as UTF-8 (JSON allows lone surrogates such as "\\ud800")."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise PromptError(
            f"{field}: not valid Unicode text (a lone surrogate at character {exc.start})"
        ) from None
    return text
