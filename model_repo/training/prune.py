"""Structured pruning as in NVIDIA's Minitron: depth (whole decoder layers) and width (MLP channels).

Depth: each layer's importance is measured on calibration text as in NVIDIA's Minitron work (and ShortGPT's
"block influence"): one minus the cosine similarity between the hidden states a layer receives and the
ones it passes on, averaged over every calibration token. A layer that barely turns the residual stream
is the one whose removal changes the model least; the N least important go. What remains is a normal,
shallower checkpoint with the same tokenizer, ready for `tritonform distill` (to recover what was lost)
and for `tritonform build`.

Width: every MLP channel (a row of gate/up, the matching column of down) is scored by its activation on
the same calibration text, Minitron's activation-based importance: the root mean square over every token of
`act(gate(x)) * up(x)`, the value that channel feeds into the down projection. Each layer keeps its
`mlp_keep` share of highest-scoring channels (the same count in every layer, since the config has one
`intermediate_size`; rounded to a multiple of 32, the int4 build's block). Depth and width combine:
channels are scored on the full model, then layers dropped. `pruning.json` in the output records every
score summary and the choice.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model_repo.training.data import DataError

PRUNING_FILE = "pruning.json"


CHANNEL_MULTIPLE = 32  # the int4 build quantises in blocks of 32 along each weight's input dimension


@dataclass(frozen=True)
class PruneResult:
    importance: list[float]  # per layer, in the original order
    dropped: list[int]
    kept: list[int]
    mlp_channels: int | None = None  # channels kept per layer; None: the MLPs are untouched


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
    tokens = _calibrate(model, tokenizer, passages, max_length, handles)
    return [float(v) for v in total / tokens]


def _calibrate(model: Any, tokenizer: Any, passages: Any, max_length: int, handles: list[Any]) -> int:
    """Run the calibration passages through `model` (its hooks recording), remove the hooks, and return
    how many tokens were seen (a DataError if none)."""
    import torch

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
    return tokens


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


def _mlps(model: Any) -> list[Any]:
    mlps = [getattr(layer, "mlp", None) for layer in decoder_layers(model)]
    if not all(hasattr(m, n) for m in mlps for n in ("gate_proj", "up_proj", "down_proj")):
        raise DataError(
            f"{type(model).__name__}: width pruning needs gated MLPs (gate_proj, up_proj, down_proj)"
        )
    return mlps


def channel_importance(model: Any, tokenizer: Any, passages: list[str], max_length: int = 512) -> list[Any]:
    """Per layer, one score per MLP channel: the RMS over calibration tokens of the channel's activation
    (the input of `down_proj`), Minitron's activation-based importance."""
    import torch

    mlps = _mlps(model)
    sums = [torch.zeros(m.down_proj.in_features, dtype=torch.float64) for m in mlps]

    def record(index: int) -> Any:
        def hook(_module: Any, args: tuple[Any, ...]) -> None:
            sums[index] += args[0].detach().double().pow(2).sum(dim=tuple(range(args[0].dim() - 1)))

        return hook

    handles = [m.down_proj.register_forward_pre_hook(record(i)) for i, m in enumerate(mlps)]
    tokens = _calibrate(model, tokenizer, passages, max_length, handles)
    return [(s / tokens).sqrt() for s in sums]


def channels_to_keep(intermediate: int, fraction: float) -> int:
    """`fraction` of the channels, rounded to the nearest multiple of 32 (at least 32, at most all)."""
    if not 0.0 < fraction <= 1.0:
        raise DataError(f"--mlp-keep must be a fraction in (0, 1] (got {fraction})")
    rounded = round(intermediate * fraction / CHANNEL_MULTIPLE) * CHANNEL_MULTIPLE
    return max(min(rounded, intermediate), min(CHANNEL_MULTIPLE, intermediate))


def prune_mlp_channels(model: Any, importance: list[Any], keep: int) -> Any:
    """Keep each layer's `keep` highest-scoring MLP channels (in their original order); fix the config."""
    import torch

    for mlp, scores in zip(_mlps(model), importance, strict=True):
        index = torch.sort(torch.topk(scores, keep).indices).values
        for name in ("gate_proj", "up_proj"):
            old = getattr(mlp, name)
            new = torch.nn.Linear(old.in_features, keep, bias=old.bias is not None, dtype=old.weight.dtype)
            new.weight.data = old.weight.data[index].clone()
            if old.bias is not None:
                new.bias.data = old.bias.data[index].clone()
            setattr(mlp, name, new)
        old = mlp.down_proj
        new = torch.nn.Linear(keep, old.out_features, bias=old.bias is not None, dtype=old.weight.dtype)
        new.weight.data = old.weight.data[:, index].clone()
        if old.bias is not None:
            new.bias.data = old.bias.data.clone()
        mlp.down_proj = new
        if hasattr(mlp, "intermediate_size"):
            mlp.intermediate_size = keep
    model.config.intermediate_size = keep
    return model


def prune_checkpoint(
    model_path: str | Path,
    out: str | Path,
    drop: int,
    calibration: str | Path,
    mlp_keep: float | None = None,
) -> PruneResult:
    """Score on `calibration`; keep `mlp_keep` of each MLP's channels (if given) and drop `drop` layers (if
    positive); write the smaller checkpoint to `out`."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM

    from model_repo.training.finetune import load_tokenizer
    from model_repo.training.text import load_passages

    if drop <= 0 and mlp_keep is None:
        raise DataError("nothing to prune: give --drop-layers N and/or --mlp-keep FRACTION")
    if mlp_keep is not None:
        channels_to_keep(1, mlp_keep)  # a bad fraction fails before the model loads
    tokenizer = load_tokenizer(model_path)
    model = AutoModelForCausalLM.from_pretrained(str(model_path), dtype="float32")
    passages = load_passages(calibration, tokenizer)
    record: dict[str, Any] = {}
    channels = None
    if mlp_keep is not None:
        channels = channels_to_keep(int(model.config.intermediate_size), mlp_keep)
        scores = channel_importance(model, tokenizer, passages)
        record["mlp"] = {
            "fraction": mlp_keep,
            "channels_before": int(model.config.intermediate_size),
            "channels_kept": channels,
            "kept_score_share": [
                float(s.sort(descending=True).values[:channels].sum() / s.sum()) for s in scores
            ],
        }
        prune_mlp_channels(model, scores, channels)
    n = len(decoder_layers(model))
    if drop > 0:
        result = choose_layers(layer_importance(model, tokenizer, passages), drop)
        drop_layers(model, result.kept)
    else:
        result = PruneResult([], [], list(range(n)))
    result = PruneResult(result.importance, result.dropped, result.kept, channels)
    target = Path(out)
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(target), safe_serialization=True)
    tokenizer.save_pretrained(str(target))
    record = {
        **record,
        "source": str(model_path),
        "calibration": str(calibration),
        "calibration_passages": len(passages),
        "importance": result.importance,
        "dropped": result.dropped,
        "kept": result.kept,
    }
    (target / PRUNING_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return result
