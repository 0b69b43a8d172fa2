"""Quantisation-aware distillation: the student trains through exactly the int4 build's rounding, learns
through it (straight-through gradients), and is written rounded, so its int4 build reproduces the weights
it was trained and measured with."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from model_repo.quantize_int4 import dequantize_blocks, quantize_blocks, quantize_int4_with_offsets
from model_repo.training.distill import DistillConfig, run_distill
from model_repo.training.quant_aware import (
    keep_rounded,
    round_activations,
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


def _run_onnx(model: Any, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {"x": x})[0])


def _one_matmul(weight: np.ndarray, rows: int) -> Any:
    """An ONNX graph of one MatMul x @ weight.T, as the exporter writes a projection."""
    from onnx import TensorProto, helper, numpy_helper

    out, k = weight.shape
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="proj")],
        "one",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [rows, out])],
        [numpy_helper.from_array(np.ascontiguousarray(weight.T), "w")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("inputs", [96, 70])  # whole blocks, and a last partial block
@pytest.mark.parametrize("rows", [1, 40])  # a decode step, a prefill
def test_a_projection_computes_as_the_int4_builds_kernel_does(rows: int, inputs: int) -> None:
    """The built projection (onnxruntime's 4-bit kernel at accuracy level 4 on the input's 8-bit blocks,
    plus the exact offset correction on the unrounded input) gives what the quantisation-aware student
    computes, within float rounding, and not what the same weights give on the unrounded input."""
    import torch

    generator = torch.Generator().manual_seed(2)
    linear = torch.nn.Linear(inputs, 48, bias=False)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(48, inputs, generator=generator) * 0.05 + 0.02)
    x = torch.randn(rows, inputs, generator=generator) * torch.linspace(0.1, 4.0, inputs)  # uneven blocks
    built = _one_matmul(linear.weight.detach().numpy(), rows)
    assert quantize_int4_with_offsets(built, accuracy_level=4) == 1
    served = _run_onnx(built, x.numpy())

    class Holder(torch.nn.Module):  # train_through_rounding takes a model with an output projection
        def __init__(self) -> None:
            super().__init__()
            self.proj = linear

        def get_output_embeddings(self) -> None:
            return None

    holder = Holder()
    train_through_rounding(holder)
    with torch.no_grad():
        student = holder.proj(x).numpy()
        unrounded_input = x.numpy() @ holder.proj.weight.numpy().T
    np.testing.assert_allclose(student, served, rtol=0, atol=1e-4)
    assert np.abs(unrounded_input - served).max() > 1e-3  # the input's rounding is real and modelled


def test_the_output_projection_computes_as_onnxruntimes_8_bit_kernel_does() -> None:
    """onnxruntime's 8-bit MatMulNBits at accuracy level 4 equals the rounded weight applied to the
    input rounded by `round_activations`."""
    import torch
    from onnx import TensorProto, helper, numpy_helper

    rows, out, k, block = 5, 64, 96, 32
    generator = torch.Generator().manual_seed(3)
    weight = round_blocks_8bit(torch.randn(out, k, generator=generator) * 0.05)
    x = torch.randn(rows, k, generator=generator) * torch.linspace(0.1, 4.0, k)
    blocks = weight.reshape(out, k // block, block)
    largest = blocks.gather(-1, blocks.abs().argmax(-1, keepdim=True))[..., 0]
    scale = -largest / 128  # the quantiser's signed scale: the rounded weight reproduces exactly
    levels = (torch.round(blocks / scale[..., None]) + 128).to(torch.uint8)
    node = helper.make_node(
        "MatMulNBits", ["x", "q", "s"], ["y"], domain="com.microsoft",
        K=k, N=out, bits=8, block_size=block, accuracy_level=4,
    )  # fmt: skip
    graph = helper.make_graph(
        [node], "head",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [rows, out])],
        [numpy_helper.from_array(levels.numpy(), "q"), numpy_helper.from_array(scale.flatten().numpy(), "s")],
    )  # fmt: skip
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    )
    served = _run_onnx(model, x.numpy())
    np.testing.assert_allclose((levels.float() - 128) * scale[..., None], blocks, rtol=0, atol=1e-7)
    np.testing.assert_allclose((round_activations(x) @ weight.T).numpy(), served, rtol=0, atol=1e-4)
    assert np.abs((x @ weight.T).numpy() - served).max() > 1e-3


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
    x = torch.randn(3, 64)  # and the inputs are no longer rounded: plain Linear layers again
    linear = torch.nn.functional.linear
    with torch.no_grad():
        assert torch.equal(model.inner(x), linear(x, model.inner.weight, model.inner.bias))
        assert torch.equal(model(x), linear(model.inner(x), model.head.weight, model.head.bias))


def test_a_quant_aware_distillation_learns_through_the_rounding_and_writes_rounded_weights(
    tiny_llama_checkpoint: Path, tmp_path: Path
) -> None:
    """The written student is closer to the teacher than the same student rounded without training, every
    4-bit projection is on its grid (the int4 build changes nothing), and the embeddings are still tied
    to the output projection and fp32 (the int4 build rescores the best tokens with the fp32 table)."""
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
    assert not torch.equal(round_blocks_8bit(embed.detach()), embed.detach())
    assert not torch.allclose(round_blocks(embed.detach()), embed.detach())
