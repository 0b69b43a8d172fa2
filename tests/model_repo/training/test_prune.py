"""Depth pruning: layer scores come from how much each layer turns the hidden states, the least
important go, and the result is a smaller checkpoint that loads, generates and passes `inspect_checkpoint`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from model_repo.checkpoint import inspect_checkpoint
from model_repo.training.data import DataError
from model_repo.training.prune import PRUNING_FILE, choose_layers, prune_checkpoint
from tests.model_repo.training.facts import write_facts
from tests.model_repo.training.silent import with_a_silent_layer


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
    from transformers import AutoTokenizer

    from model_repo.training.prune import drop_layers, layer_importance

    tok = AutoTokenizer.from_pretrained(str(tiny_llama_checkpoint))
    model = with_a_silent_layer(tiny_llama_checkpoint)
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


def test_channels_to_keep_rounds_to_the_int4_block_and_rejects_bad_fractions() -> None:
    from model_repo.training.prune import channels_to_keep

    assert channels_to_keep(1536, 0.645) == 992  # 990.7 -> the nearest multiple of 32
    assert channels_to_keep(1536, 1.0) == 1536
    assert channels_to_keep(128, 0.01) == 32  # never below one block
    for bad in (0.0, -0.5, 1.5):
        with pytest.raises(DataError, match="--mlp-keep must be a fraction"):
            channels_to_keep(1536, bad)


def test_width_pruning_keeps_the_channels_that_carry_the_activations(tiny_llama_checkpoint: Path) -> None:
    """Channels whose down-projection column is zeroed contribute nothing; when half of a layer's channels
    are silenced that way (their gate rows zeroed, so their activation is 0), they score 0 and pruning to
    half keeps exactly the others, with unchanged outputs and shapes that match the new config."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from model_repo.training.prune import channel_importance, prune_mlp_channels

    tok = AutoTokenizer.from_pretrained(str(tiny_llama_checkpoint))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_llama_checkpoint)).eval()
    width = model.config.intermediate_size
    silent = torch.arange(0, width, 2)  # every other channel
    with torch.no_grad():
        for layer in model.model.layers:
            layer.mlp.gate_proj.weight[silent] = 0.0  # silu(0) * up = 0: the channel's activation is 0
    texts = ["the quick brown fox jumps over the lazy dog", "hello world, hello again"]
    scores = channel_importance(model, tok, texts)
    assert len(scores) == len(model.model.layers) and all(s.shape == (width,) for s in scores)
    assert all(float(s[silent].abs().max()) == 0.0 and float(s[1::2].min()) > 0.0 for s in scores)
    ids = tok("hello world", return_tensors="pt")
    with torch.no_grad():
        before = model(**ids).logits
        prune_mlp_channels(model, scores, width // 2)
        after = model(**ids).logits
    assert torch.allclose(before, after, atol=1e-5)
    for layer in model.model.layers:
        assert layer.mlp.gate_proj.weight.shape == (width // 2, model.config.hidden_size)
        assert layer.mlp.up_proj.weight.shape == (width // 2, model.config.hidden_size)
        assert layer.mlp.down_proj.weight.shape == (model.config.hidden_size, width // 2)
    assert model.config.intermediate_size == width // 2


def test_a_width_pruned_checkpoint_loads_in_transformers_and_builds(
    tiny_llama_checkpoint: Path, tmp_path: Path
) -> None:
    """`prune_checkpoint(..., mlp_keep=0.5)` writes a checkpoint transformers loads with the narrower MLPs,
    pruning.json records the choice, and `tritonform build` turns it into an int4 repository (the
    narrower MLP goes through the export's parity gate against the pruned model itself and through 4-bit
    MatMulNBits; the random tiny model's int4 quality gate is loosened as in test_build.py, the real
    model's gates run in benchmarks/bench_compression.py)."""
    from transformers import AutoModelForCausalLM

    from model_repo.build import BuildOptions, build

    calibration = write_facts(tmp_path / "calibration.jsonl")
    with pytest.raises(DataError, match="nothing to prune"):
        prune_checkpoint(tiny_llama_checkpoint, tmp_path / "none", 0, calibration)
    width = json.loads((tiny_llama_checkpoint / "config.json").read_text())["intermediate_size"]
    result = prune_checkpoint(tiny_llama_checkpoint, tmp_path / "narrow", 0, calibration, mlp_keep=0.5)
    assert result.mlp_channels == width // 2 and result.dropped == []
    record = json.loads((tmp_path / "narrow" / PRUNING_FILE).read_text())
    assert record["mlp"]["channels_kept"] == width // 2 and record["mlp"]["channels_before"] == width
    reloaded = AutoModelForCausalLM.from_pretrained(str(tmp_path / "narrow"))
    assert reloaded.model.layers[0].mlp.down_proj.in_features == width // 2
    assert inspect_checkpoint(tmp_path / "narrow").num_layers == len(reloaded.model.layers)
    repo = tmp_path / "repo"
    options = BuildOptions(
        model=str(tmp_path / "narrow"), out=repo, quantize="int4", min_agreement=0.3, max_ppl_increase=0.5
    )
    build(options, lambda *_: None, print)
    report = json.loads((repo / "llm" / "1" / "engine" / "build_report.json").read_text())
    assert report["parity"]["passed"] and report["quantization"]["method"] == "int4"


def _four_layers(checkpoint: Path, silent: int | None = None) -> tuple[Any, Any]:
    """The tiny 2-layer model grown to 4 layers with random weights (layer `silent` made a no-op:
    zero output projections, so it adds nothing to the residual stream)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(checkpoint))
    model = AutoModelForCausalLM.from_pretrained(str(checkpoint))
    model.config.num_hidden_layers = 4
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(model.config).eval()
    if silent is not None:
        with torch.no_grad():
            model.model.layers[silent].self_attn.o_proj.weight.zero_()
            model.model.layers[silent].mlp.down_proj.weight.zero_()
    return model, tok


def test_the_output_criterion_measures_each_removal_as_running_the_model_without_the_layer(
    tiny_llama_checkpoint: Path,
) -> None:
    """Round one's change for every layer equals a direct computation: the pruned model's final hidden
    states against the whole model's (1 - cosine, averaged over tokens); the model comes back whole."""
    import copy

    import torch

    from model_repo.training.prune import drop_layers, output_change_choice

    model, tok = _four_layers(tiny_llama_checkpoint)
    texts = ["the quick brown fox jumps over the lazy dog", "hello world, hello again and again"]
    result, rounds = output_change_choice(model, tok, texts, 1)
    assert len(model.model.layers) == 4 and model.config.num_hidden_layers == 4
    ids = [tok(t, return_tensors="pt")["input_ids"] for t in texts]
    with torch.no_grad():
        whole = [model.model(input_ids=i, use_cache=False).last_hidden_state[0].double() for i in ids]
        for layer in range(4):
            pruned = drop_layers(copy.deepcopy(model), [j for j in range(4) if j != layer])
            outs = [pruned.model(input_ids=i, use_cache=False).last_hidden_state[0].double() for i in ids]
            change = sum(
                float((1 - torch.nn.functional.cosine_similarity(a, b, dim=-1)).sum())
                for a, b in zip(outs, whole, strict=True)
            ) / sum(int(i.shape[1]) for i in ids)
            assert result.importance[layer] == pytest.approx(change, rel=1e-6, abs=1e-9)
    assert rounds[0][0] == result.dropped[0] and result.dropped[0] in (1, 2)


def test_the_output_criterion_drops_a_silent_layer_first_and_remeasures_after_each_removal(
    tiny_llama_checkpoint: Path, tmp_path: Path
) -> None:
    """A no-op layer changes nothing when removed: the greedy choice takes it first (change 0), and the
    second round measures the remaining middle layer on the model without it."""
    from model_repo.training.prune import output_change_choice

    model, tok = _four_layers(tiny_llama_checkpoint, silent=2)
    seen: list[tuple[int, int]] = []
    result, rounds = output_change_choice(
        model,
        tok,
        ["the quick brown fox jumps over the lazy dog"] * 2,
        2,
        progress=lambda d, t: seen.append((d, t)),
    )
    assert rounds[0][0] == 2 and rounds[0][1][2] == pytest.approx(0.0, abs=1e-9)
    assert set(rounds[1][1]) == {1} and rounds[1][0] == 1  # only the other middle layer is left to measure
    assert result.dropped == [1, 2] and result.kept == [0, 3]
    assert seen[-1] == (5, 5)  # round one: all 4 layers; round two: the 1 middle layer left
    with pytest.raises(DataError, match="between 1 and 2"):
        output_change_choice(model, tok, ["hello"], 3)


def test_prune_checkpoint_records_the_criterion_and_rejects_an_unknown_one(
    tiny_llama_checkpoint: Path, tmp_path: Path
) -> None:
    from model_repo.training.prune import prune_checkpoint

    model, _ = _four_layers(tiny_llama_checkpoint, silent=1)
    deeper = tmp_path / "deeper"
    model.save_pretrained(str(deeper))
    for f in tiny_llama_checkpoint.iterdir():
        if f.suffix != ".safetensors" and f.name not in ("config.json", "generation_config.json"):
            (deeper / f.name).write_bytes(f.read_bytes())
    calibration = write_facts(tmp_path / "calibration.jsonl")
    with pytest.raises(DataError, match="--criterion 'best': choose output or block"):
        prune_checkpoint(deeper, tmp_path / "x", 1, calibration, criterion="best")
    result = prune_checkpoint(deeper, tmp_path / "pruned", 1, calibration, criterion="output")
    assert result.dropped == [1]
    record = json.loads((tmp_path / "pruned" / PRUNING_FILE).read_text())
    assert record["criterion"] == "output" and record["output_rounds"][0]["dropped"] == 1
    assert set(record["output_rounds"][0]["changes"]) == {"0", "1", "2", "3"}
    block = prune_checkpoint(deeper, tmp_path / "pruned-block", 1, calibration, criterion="block")
    assert block.dropped == [1]
    assert json.loads((tmp_path / "pruned-block" / PRUNING_FILE).read_text())["criterion"] == "block"
