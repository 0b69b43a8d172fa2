"""Text for calibration and perplexity: chat examples rendered with the model's own chat template, or plain
text files (one passage per blank-line separated paragraph)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from model_repo.training.data import DataError, load_chat_jsonl, read_text


def load_passages(path: str | Path, tokenizer: Any) -> list[str]:
    """Passages from `path`: a `.jsonl` chat file (each conversation rendered as at serving time) or text."""
    p, text = read_text(path, "text file", "pass chat JSON Lines (.jsonl) or a plain text file")
    if p.suffix == ".jsonl":
        return [tokenizer.apply_chat_template(e.messages, tokenize=False) for e in load_chat_jsonl(p)]
    passages = [block.strip() for block in text.split("\n\n") if block.strip()]
    if not passages:
        raise DataError(f"{p} holds no text; separate passages with blank lines")
    return passages
