"""The model's tokenizer and chat template, loaded once from the model repository.

The gateway counts prompt tokens (to enforce `max_prompt_tokens` before Triton does any work) and
renders chat messages with the model's own template (stored in the repository's `generation.json`),
with the one sandboxed renderer (`model_repo.chat_template`) the build's gates use too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from model_repo.chat_template import ChatTemplateError, render_chat_template
from model_repo.runtime.contract import METADATA_FILE, TOKENIZER_FILE


class PromptError(ValueError):
    """The messages cannot be turned into a prompt (no template, template refused them)."""


class PromptFormatter:
    """Tokenizer + chat template of the served model."""

    def __init__(self, tokenizer: Tokenizer, chat_template: str | None, bos: str = "", eos: str = "") -> None:
        self.tokenizer, self.chat_template, self.bos, self.eos = tokenizer, chat_template, bos, eos

    @classmethod
    def load(cls, folder: Path) -> PromptFormatter:
        tokenizer = Tokenizer.from_file(str(folder / TOKENIZER_FILE))
        meta: dict[str, Any] = {}
        if (folder / METADATA_FILE).is_file():
            meta = json.loads((folder / METADATA_FILE).read_text(encoding="utf-8"))
        template = meta.get("chat_template")
        if template is None and (folder / "tokenizer_config.json").is_file():
            template = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8")).get(
                "chat_template"
            )
        return cls(tokenizer, template, str(meta.get("bos_token") or ""), str(meta.get("eos_token") or ""))

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def render_chat(self, messages: list[dict[str, str]]) -> str:
        if not self.chat_template:
            raise PromptError("this model has no chat template; use /v1/completions with a plain prompt")
        try:
            return render_chat_template(
                self.chat_template,
                messages,
                add_generation_prompt=True,
                bos_token=self.bos,
                eos_token=self.eos,
            )
        except ChatTemplateError as exc:
            raise PromptError(str(exc)) from None
