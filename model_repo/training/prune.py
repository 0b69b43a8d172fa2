"""Structured depth pruning: drop the decoder layers whose removal changes the hidden states least.

Each layer's importance is measured on calibration text as in NVIDIA's Minitron work (and ShortGPT's
"block influence"): one minus the cosine similarity between the hidden states a layer receives and the
ones it passes on, averaged over every calibration token. A layer that barely turns the residual stream
is the one whose removal changes the model least; the N least important go. What remains is a normal,
shallower checkpoint with the same tokenizer, ready for `tritonform distill` (to recover what was lost)
and for `tritonform build`. `pruning.json` in the output records every layer's score and the choice.

Width pruning (MLP channels, heads) is not offered: see the README for why it did not pay at this scale.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model_repo.training.data import DataError

PRUNING_FILE = "pruning.json"


@dataclass(frozen=True)
class PruneResult:
    importance: list[float]  # per layer, in the original order
    dropped: list[int]
    kept: list[int]


def layer_importance(model: Any, tokenizer: Any, passages: list[str], max_length: int = 512) -> list[float]:
    """Per decoder layer: mean over calibration tokens of 1 - cos(hidden state in, hidden state out)."""
    import torch

    layers = decoder_layers(model)
    total = torch.zeros(len(layers), dtype=torch.float64)
    seen: dict[int, Any] = {}

    def before(index: int) -> Any:
        def hook(_module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            seen[index] = (args[0] if args else kwargs["hidden_states"]).detach()

        return hook

    def after(index: int) -> Any:
        def hook(_module: Any, _args: Any, _kwargs: Any, output: Any) -> None:
            out = output[0] if isinstance(output, tuple) else output
            cos = torch.nn.functional.cosine_similarity(seen[index].double(), out.detach().double(), dim=-1)
            total[index] += (1.0 - cos).sum()

        return hook

    handles = []
    for i, layer in enumerate(layers):
        handles.append(layer.register_forward_pre_hook(before(i), with_kwargs=True))
        handles.append(layer.register_forward_hook(after(i), with_kwargs=True))
    tokens = 0
    model.eval()
    try:
        with torch.no_grad():
            for text in passages:
                ids = tokenizer(text, return_tensors="pt", truncation=True, max_length=max_length)
                model(**ids)
                tokens += int(ids["input_ids"].shape[1])
    finally:
        for handle in handles:
            handle.remove()
    if tokens == 0:
        raise DataError("the calibration text produced no tokens")
    return [float(v) for v in total / tokens]


def decoder_layers(model: Any) -> Any:
    base = getattr(model, "model", None)
    if base is not None and hasattr(base, "layers"):
        return base.layers
    raise DataError(
        f"{type(model).__name__}: depth pruning supports Llama-family models (model.model.layers)"
    )


def choose_layers(importance: list[float], drop: int) -> PruneResult:
    """Drop the `drop` least important layers; never the first or the last (they map to and from tokens)."""
    n = len(importance)
    if not 0 < drop <= n - 2:
        raise DataError(f"--drop-layers must be between 1 and {n - 2} for a {n}-layer model (got {drop})")
    candidates = sorted(range(1, n - 1), key=lambda i: importance[i])
    dropped = sorted(candidates[:drop])
    return PruneResult(importance, dropped, [i for i in range(n) if i not in dropped])


def drop_layers(model: Any, kept: list[int]) -> Any:
    """Keep only the `kept` decoder layers (renumbered for the KV cache) and fix the config to match."""
    import torch

    layers = decoder_layers(model)
    model.model.layers = torch.nn.ModuleList([layers[i] for i in kept])
    for new_index, layer in enumerate(model.model.layers):
        if hasattr(layer, "self_attn") and hasattr(layer.self_attn, "layer_idx"):
            layer.self_attn.layer_idx = new_index
    model.config.num_hidden_layers = len(kept)
    layer_types = getattr(model.config, "layer_types", None)
    if layer_types:
        model.config.layer_types = [layer_types[i] for i in kept]
    return model


def prune_checkpoint(
    model_path: str | Path, out: str | Path, drop: int, calibration: str | Path
) -> PruneResult:
    """Score the layers on `calibration`, drop `drop` of them, write the shallower checkpoint to `out`."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM

    from model_repo.training.finetune import load_tokenizer
    from model_repo.training.text import load_passages

    tokenizer = load_tokenizer(model_path)
    model = AutoModelForCausalLM.from_pretrained(str(model_path), dtype="float32")
    passages = load_passages(calibration, tokenizer)
    result = choose_layers(layer_importance(model, tokenizer, passages), drop)
    drop_layers(model, result.kept)
    target = Path(out)
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(target), safe_serialization=True)
    tokenizer.save_pretrained(str(target))
    record = {
        "source": str(model_path),
        "calibration": str(calibration),
        "calibration_passages": len(passages),
        "importance": result.importance,
        "dropped": result.dropped,
        "kept": result.kept,
    }
    (target / PRUNING_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return result
