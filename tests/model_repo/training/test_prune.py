"""Depth pruning: layer scores come from how much each layer turns the hidden states, the least
important go, and the result is a smaller checkpoint that loads, generates and passes `inspect_checkpoint`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from model_repo.checkpoint import inspect_checkpoint
from model_repo.training.data import DataError
from model_repo.training.prune import PRUNING_FILE, choose_layers, prune_checkpoint
from tests.model_repo.training.facts import write_facts


def test_choose_layers_drops_the_least_important_and_keeps_the_ends() -> None:
    result = choose_layers([0.9, 0.1, 0.5, 0.05, 0.3, 0.01], 2)
    assert result.dropped == [1, 3]  # layer 5 scores lowest but the last layer always stays
    assert result.kept == [0, 2, 4, 5]
    with pytest.raises(DataError, match="between 1 and 4"):
        choose_layers([0.1] * 6, 5)


def test_an_identity_layer_scores_zero_and_is_the_one_dropped(
    tiny_llama_checkpoint: Path, tmp_path: Path
) -> None:
    """A 4-layer model whose layer 2 is made a no-op (zero output projections): its score is 0 and pruning
    one layer removes exactly it; the pruned model's outputs are unchanged."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from model_repo.training.prune import drop_layers, layer_importance

    tok = AutoTokenizer.from_pretrained(str(tiny_llama_checkpoint))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_llama_checkpoint)).eval()
    extra = [type(model.model.layers[0])(model.config, i) for i in (2, 3)]
    for layer in extra:
        layer.load_state_dict(model.model.layers[1].state_dict())
    model.model.layers.extend(extra)
    model.config.num_hidden_layers = 4
    with torch.no_grad():
        model.model.layers[2].self_attn.o_proj.weight.zero_()
        model.model.layers[2].mlp.down_proj.weight.zero_()
    scores = layer_importance(model, tok, ["the quick brown fox jumps over the lazy dog"] * 2)
    assert scores[2] == pytest.approx(0.0, abs=1e-9)
    assert min(scores[1], scores[3]) > 1e-4
    choice = choose_layers(scores, 1)
    assert choice.dropped == [2]
    ids = tok("hello world", return_tensors="pt")
    with torch.no_grad():
        before = model(**ids).logits
        drop_layers(model, choice.kept)
        after = model(**ids).logits
    assert model.config.num_hidden_layers == 3
    assert torch.allclose(before, after, atol=1e-5)


def test_prune_checkpoint_writes_a_buildable_shallower_checkpoint(
    tiny_llama_checkpoint: Path, tmp_path: Path
) -> None:
    from transformers import AutoModelForCausalLM

    calibration = write_facts(tmp_path / "calibration.jsonl")
    with pytest.raises(DataError, match="between 1 and 0"):  # a 2-layer model has no middle layer to drop
        prune_checkpoint(tiny_llama_checkpoint, tmp_path / "pruned", 1, calibration)
    deeper = tmp_path / "deeper"
    model = AutoModelForCausalLM.from_pretrained(str(tiny_llama_checkpoint))
    model.config.num_hidden_layers = 4
    AutoModelForCausalLM.from_config(model.config).save_pretrained(str(deeper))
    for f in tiny_llama_checkpoint.iterdir():
        if f.suffix != ".safetensors" and f.name not in ("config.json", "generation_config.json"):
            (deeper / f.name).write_bytes(f.read_bytes())
    result = prune_checkpoint(deeper, tmp_path / "pruned", 2, calibration)
    assert len(result.kept) == 2 and result.kept[0] == 0 and result.kept[-1] == 3
    info = inspect_checkpoint(tmp_path / "pruned")
    assert info.num_layers == 2
    record = json.loads((tmp_path / "pruned" / PRUNING_FILE).read_text())
    assert record["dropped"] == result.dropped and len(record["importance"]) == 4
    reloaded = AutoModelForCausalLM.from_pretrained(str(tmp_path / "pruned"))
    assert len(reloaded.model.layers) == 2
