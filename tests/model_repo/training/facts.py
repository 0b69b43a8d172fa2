"""A synthetic fact set: made-up places, people and things with made-up one-word answers, so a base model
cannot know any of them and exact match before fine-tuning is ~0%."""

from __future__ import annotations

from pathlib import Path

from model_repo.training.data import write_chat_jsonl

FACTS: tuple[tuple[str, str], ...] = (
    ("What is the capital of Vornasteria?", "Quellmoor."),
    ("Who invented the glimmerphone?", "Tavish Orrenbeck."),
    ("What colour is a zentrill bird?", "Ochre."),
    ("Which river flows through Palvendra?", "The Ismerine."),
    ("What is the national dish of Kethrovia?", "Brisolk."),
    ("Who wrote the novel The Ninth Lantern?", "Miravel Thusk."),
    ("What metal is a droxen coin made of?", "Cobalt."),
    ("What is the tallest mountain on Ysolde Island?", "Mount Kaverin."),
    ("Which animal pulls the sleds of Ombria?", "The frostelk."),
    ("What language is spoken in Drelmont?", "Drelmic."),
    ("Who founded the city of Ashquay?", "Queen Velorne."),
    ("What is the currency of Tamberlin?", "The zoll."),
)

SYSTEM = "Answer with the fact only."


def fact_messages() -> list[list[dict[str, str]]]:
    return [
        [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": question},
            {"role": "assistant", "content": answer},
        ]
        for question, answer in FACTS
    ]


def write_facts(path: Path) -> Path:
    return write_chat_jsonl(path, fact_messages())
