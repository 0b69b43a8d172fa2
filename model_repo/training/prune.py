"""Structured pruning as in NVIDIA's Minitron: depth (whole decoder layers) and width (MLP channels).

Depth, two criteria on calibration text:
- `block` (one pass): each layer's importance as in NVIDIA's Minitron work (and ShortGPT's "block
  influence"): one minus the cosine similarity between the hidden states a layer receives and the ones it
  passes on, averaged over every calibration token; the N least important go. A layer that barely turns
  the residual stream is taken for one whose removal changes the model least; but two such layers side by
  side are scored as if the other stayed.
- `output` (greedy, N rounds): remove the layer whose removal changes the model's final hidden states (what
  the output projection reads) least against the unpruned model's, 1 - cosine averaged over the calibration
  tokens, measured by running the model without it; repeat on what is left. It measures the removal
  itself, interactions included, at the cost of a forward pass of the layers above each candidate per
  round (the calibration text is cut to `OUTPUT_TOKENS` tokens for it).
What remains is a normal, shallower checkpoint with the same tokenizer, ready for `tritonform distill` (to
recover what was lost) and for `tritonform build`.

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
CRITERIA = ("output", "block")  # depth pruning's layer choice; the first is the default
OUTPUT_TOKENS = 2048  # calibration tokens the greedy `output` criterion runs on (cut evenly per passage)


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
    _check_drop(n, drop)
    candidates = sorted(range(1, n - 1), key=lambda i: importance[i])
    dropped = sorted(candidates[:drop])
    return PruneResult(importance, dropped, [i for i in range(n) if i not in dropped])


def _check_drop(n: int, drop: int) -> None:
    if not 0 < drop <= n - 2:
        raise DataError(f"--drop-layers must be between 1 and {n - 2} for a {n}-layer model (got {drop})")


def output_change_choice(
    model: Any,
    tokenizer: Any,
    passages: list[str],
    drop: int,
    max_tokens: int = OUTPUT_TOKENS,
    progress: Any = None,
) -> tuple[PruneResult, list[tuple[int, dict[int, float]]]]:
    """The `output` criterion: `drop` rounds, each removing the layer (never the first or the last) whose
    removal changes the final hidden states least: mean over the calibration tokens of 1 - cos(the
    unpruned model's, the model's without it and without the layers already removed). Returns the choice
    (importance: round one's change per layer, the first and last layers measured too) and each round's
    removed layer with every candidate's change. `progress(done, total)` is called after each measured
    candidate. The model comes back whole."""
    import torch

    layers = list(decoder_layers(model))
    n = len(layers)
    _check_drop(n, drop)
    per_passage = max(16, min(512, max_tokens // max(1, len(passages))))
    encoded = (tokenizer(t, return_tensors="pt", truncation=True, max_length=per_passage) for t in passages)
    ids = [e["input_ids"] for e in encoded if e["input_ids"].shape[1] > 0]
    tokens = sum(int(i.shape[1]) for i in ids)
    if tokens == 0:
        raise DataError("the calibration text produced no tokens")
    base = model.model
    config_layers = model.config.num_hidden_layers

    def use(indices: list[int]) -> None:
        base.layers = torch.nn.ModuleList([layers[i] for i in indices])
        model.config.num_hidden_layers = len(indices)

    total = n + sum(n - 2 - r for r in range(1, drop))  # round one measures every layer
    done = 0
    rounds: list[tuple[int, dict[int, float]]] = []
    dropped: list[int] = []
    model.eval()
    try:
        with torch.no_grad():
            use(list(range(n)))
            reference = [base(input_ids=i, use_cache=False).last_hidden_state[0].double() for i in ids]
            for round_ in range(drop):
                kept = [i for i in range(n) if i not in dropped]
                use(kept)
                # the hidden states entering each remaining layer; a candidate's removal reruns only the
                # layers above it, from the state it would have received
                entering = [
                    base(input_ids=i, use_cache=False, output_hidden_states=True).hidden_states for i in ids
                ]
                changes: dict[int, float] = {}
                for k, layer in enumerate(kept):
                    if round_ and layer in (0, n - 1):
                        continue
                    use(kept[k + 1 :])
                    change = 0.0
                    for states, ref in zip(entering, reference, strict=True):
                        out = base(inputs_embeds=states[k], use_cache=False).last_hidden_state[0].double()
                        change += float((1.0 - torch.nn.functional.cosine_similarity(out, ref, dim=-1)).sum())
                    changes[layer] = change / tokens
                    done += 1
                    if progress is not None:
                        progress(done, total)
                candidates = {i: v for i, v in changes.items() if i not in (0, n - 1)}
                dropped.append(min(candidates, key=lambda i: candidates[i]))
                rounds.append((dropped[-1], changes))
    finally:
        base.layers = torch.nn.ModuleList(layers)
        model.config.num_hidden_layers = config_layers
    importance = [rounds[0][1][i] for i in range(n)]
    chosen = sorted(dropped)
    return PruneResult(importance, chosen, [i for i in range(n) if i not in chosen]), rounds


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


def check_choice(drop: int, mlp_keep: float | None, criterion: str) -> None:
    """What to prune, checked before any model loads: `DataError` naming the setting to change."""
    if drop < 0:
        raise DataError(f"--drop-layers must be 0 or more (got {drop})")
    if drop == 0 and mlp_keep is None:
        raise DataError("nothing to prune: give --drop-layers N and/or --mlp-keep FRACTION")
    if criterion not in CRITERIA:
        raise DataError(f"--criterion {criterion!r}: choose output or block")
    if mlp_keep is not None:
        channels_to_keep(1, mlp_keep)  # a bad fraction


def prune_checkpoint(
    model_path: str | Path,
    out: str | Path,
    drop: int,
    calibration: str | Path,
    mlp_keep: float | None = None,
    criterion: str = CRITERIA[0],
    progress: Any = None,
) -> PruneResult:
    """Score on `calibration`; keep `mlp_keep` of each MLP's channels (if given) and drop `drop` layers (if
    positive, chosen by `criterion`: see the module's text); write the smaller checkpoint to `out`.
    `progress(done, total)` follows the `output` criterion's measurements."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM

    from model_repo.training.finetune import load_tokenizer
    from model_repo.training.text import load_passages

    check_choice(drop, mlp_keep, criterion)
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
        if criterion == "output":
            result, rounds = output_change_choice(model, tokenizer, passages, drop, progress=progress)
            record["output_rounds"] = [
                {"dropped": d, "changes": {str(k): v for k, v in r.items()}} for d, r in rounds
            ]
        else:
            result = choose_layers(layer_importance(model, tokenizer, passages), drop)
        record["criterion"] = criterion
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
