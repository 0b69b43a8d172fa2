"""Quantisation-aware distillation: the student trains through exactly the int4 build's rounding, learns
through it (straight-through gradients), and is written rounded, so its int4 build reproduces the weights
it was trained and measured with."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from model_repo.quantize_int4 import dequantize_blocks, quantize_blocks
from model_repo.training.distill import DistillConfig, run_distill
from model_repo.training.quant_aware import (
    keep_rounded,
    round_blocks,
    round_blocks_8bit,
    train_through_rounding,
)
from tests.model_repo.training.facts import write_facts
from tests.model_repo.training.kl import kl_to_teacher


def _as_built(weight: np.ndarray) -> np.ndarray:
    """`weight` [out, in] after the int4 build's quantiser (which takes the ONNX layout [in, out])."""
    packed, scales, offsets = quantize_blocks(weight.T)
    return dequantize_blocks(packed, scales, offsets, weight.shape[1]).T


@pytest.mark.parametrize("inputs", [64, 70])  # whole blocks, and a last partial block
def test_the_rounding_is_the_int4_builds_and_rounded_weights_survive_the_build(inputs: int) -> None:
    import torch

    weight = torch.randn(48, inputs, generator=torch.Generator().manual_seed(0)) * 0.05
    rounded = round_blocks(weight)
    np.testing.assert_allclose(rounded.numpy(), _as_built(weight.numpy()), rtol=0, atol=1e-6)
    np.testing.assert_allclose(_as_built(rounded.numpy()), rounded.numpy(), rtol=0, atol=1e-6)
    assert torch.allclose(round_blocks(rounded), rounded, rtol=0, atol=1e-6)  # rounding twice changes nothing
    assert float((rounded - weight).abs().max()) > 1e-4  # it does round


def test_the_output_projections_rounding_is_onnxruntimes_8_bit_quantiser() -> None:
    import torch
    from onnxruntime.capi._pybind_state import quantize_matmul_8bits

    out, k, block = 40, 96, 32
    weight = torch.randn(out, k, generator=torch.Generator().manual_seed(1)) * 0.05
    packed = np.zeros((out, k // block, block), dtype=np.uint8)
    scales = np.zeros(out * (k // block), dtype=np.float32)
    zero_points = np.zeros(out * (k // block), dtype=np.uint8)
    onnx_layout = np.ascontiguousarray(weight.numpy().T)  # [in, out], as the graph's MatMul holds it
    quantize_matmul_8bits(packed, onnx_layout, scales, zero_points, block, out, k, True)
    built = (packed.astype(np.float32) - 128) * scales.reshape(out, -1, 1)
    rounded = round_blocks_8bit(weight)
    np.testing.assert_allclose(rounded.numpy(), built.reshape(out, k), rtol=0, atol=1e-7)
    assert torch.equal(round_blocks_8bit(rounded), rounded)  # rounding twice changes nothing


def test_projections_read_the_rounded_weight_and_their_gradient_reaches_the_weight_underneath() -> None:
    import torch
    from torch.nn.utils import parametrize

    class TwoLayers(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner, self.head = torch.nn.Linear(64, 16), torch.nn.Linear(16, 64)

        def get_output_embeddings(self) -> torch.nn.Module:
            return self.head

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.inner(x))

    torch.manual_seed(0)
    model = TwoLayers()
    original, head = model.inner.weight.detach().clone(), model.head.weight.detach().clone()
    assert train_through_rounding(model) == 1  # one 4-bit projection; the output one at 8 bits
    assert torch.allclose(model.inner.weight, round_blocks(original))
    assert torch.equal(model.head.weight, round_blocks_8bit(head))
    model(torch.randn(3, 64)).square().sum().backward()
    inner: Any = model.inner  # parametrised: its weight now lives in .parametrizations
    underneath = inner.parametrizations.weight.original
    assert underneath.grad is not None and float(underneath.grad.abs().sum()) > 0
    assert keep_rounded(model) == 1
    assert not parametrize.is_parametrized(model.inner) and not parametrize.is_parametrized(model.head)
    assert torch.allclose(model.inner.weight, round_blocks(original))
    assert torch.equal(model.head.weight, round_blocks_8bit(head))


def test_a_quant_aware_distillation_learns_through_the_rounding_and_writes_rounded_weights(
    tiny_llama_checkpoint: Path, tmp_path: Path
) -> None:
    """The written student is closer to the teacher than the same student rounded without training, every
    4-bit projection is on its grid and the tied embeddings on the output projection's 8-bit grid (the
    int4 build changes nothing), and the embeddings are still tied to the output projection."""
    import torch

    from model_repo.checkpoint import make_tiny_checkpoint
    from model_repo.training.finetune import load_model

    student = make_tiny_checkpoint(tmp_path / "student", "llama", seed=1)
    rounded_only = tmp_path / "rounded-only"
    model = load_model(student)
    train_through_rounding(model)
    keep_rounded(model)
    model.save_pretrained(str(rounded_only))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        if (student / name).exists():
            (rounded_only / name).write_bytes((student / name).read_bytes())
    data = write_facts(tmp_path / "facts.jsonl")
    out = tmp_path / "qat"
    summary = run_distill(
        DistillConfig(
            teacher=str(tiny_llama_checkpoint), student=str(student), out=str(out), data=str(data),
            max_steps=15, learning_rate=3e-3, batch_size=4, alpha=1.0, temperature=1.0, topk=16,
            quant_aware="int4", show_progress=False,
        )
    )  # fmt: skip
    assert summary["rounded_projections"] == 2 * 7  # q, k, v, o, gate, up, down in each of 2 layers
    assert kl_to_teacher(out, tiny_llama_checkpoint, data) < 0.8 * kl_to_teacher(
        rounded_only, tiny_llama_checkpoint, data
    )
    written = load_model(out)
    for name, module in written.named_modules():
        if isinstance(module, torch.nn.Linear) and module is not written.get_output_embeddings():
            w = module.weight.detach().numpy()
            np.testing.assert_allclose(_as_built(w), w, rtol=0, atol=1e-6, err_msg=name)
    embed = written.get_input_embeddings().weight
    assert written.get_output_embeddings().weight is embed
    assert torch.equal(round_blocks_8bit(embed.detach()), embed.detach())
    assert not torch.allclose(round_blocks(embed.detach()), embed.detach())
