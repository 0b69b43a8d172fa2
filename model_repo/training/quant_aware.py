"""Quantisation-aware distillation: the student trains through the int4 build's own rounding.

Why: distillation moves each weight by a small fraction of a 4-bit step, and `tritonform build --quantize
int4` rounds every projection back to blocks of 32 weights on 16 levels between the block's minimum and
maximum (model_repo/quantize_int4.py), which puts most of those weights back where they were: measured on
the default model pruned by 8 layers and distilled, held-out perplexity 123.8 (pruned) -> 73.5
(distilled, fp32) -> 108.1 once its projections are rounded so. Here every projection's forward uses the
rounded weight and the gradient passes straight through the rounding to the fp32 weight underneath (the
straight-through estimator, as in quantisation-aware training), so what the student learns is what
survives the build; at the end the rounded weights are written, which the int4 build then reproduces
exactly. The output projection goes through the build's 8-bit rounding the same way (symmetric blocks of
32: onnxruntime's MatMulNBits quantiser, scale = -(the block's largest-magnitude weight) / 128); when it
is tied to the input embeddings, both read the rounded table, as the built graph does.

torch's parametrisations carry the rounding (`torch.nn.utils.parametrize`): the weight is rounded wherever
it is read and the optimiser sees the weight underneath.
"""

from __future__ import annotations

from typing import Any

BLOCK = 32  # the int4 build's block along each output's inputs (quantize_int4.BLOCK)
LEVELS = 15  # 4 bits: 16 levels, 15 steps between a block's minimum and maximum
MODES = ("none", "int4")


def round_blocks(weight: Any) -> Any:
    """`weight` [out, in] as the int4 build stores it: each block of 32 inputs of an output on 16 evenly
    spaced levels from the block's minimum to its maximum (a last partial block padded with its last
    value, as the build does)."""
    import torch

    out, k = weight.shape
    pad = -k % BLOCK
    padded = torch.cat([weight, weight[:, -1:].expand(out, pad)], dim=1) if pad else weight
    blocks = padded.reshape(out, -1, BLOCK)
    low = blocks.amin(-1, keepdim=True)
    step = (blocks.amax(-1, keepdim=True) - low) / LEVELS
    step = torch.where(step == 0, torch.ones_like(step), step)
    q = torch.clamp(torch.round((blocks - low) / step), 0, LEVELS)
    return (low + q * step).reshape(out, -1)[:, :k]


def round_blocks_8bit(weight: Any) -> Any:
    """`weight` [out, in] as the int4 build stores its output projection: symmetric 8-bit blocks of 32
    inputs, scale = -(the block's largest-magnitude weight) / 128, levels -128..127 (onnxruntime's
    `quantize_matmul_8bits` with is_symmetric; a last partial block is padded with zeros)."""
    import torch

    out, k = weight.shape
    pad = -k % BLOCK
    padded = torch.cat([weight, weight.new_zeros(out, pad)], dim=1) if pad else weight
    blocks = padded.reshape(out, -1, BLOCK)
    largest = blocks.gather(-1, blocks.abs().argmax(-1, keepdim=True))
    scale = -largest / 128
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    return (torch.clamp(torch.round(blocks / scale), -128, 127) * scale).reshape(out, -1)[:, :k]


def _rounded_weight(rounding: Any) -> Any:
    """A parametrisation: the forward reads the rounded weight, the gradient reaches the weight as if
    there were no rounding (straight-through)."""
    import torch

    class RoundedWeight(torch.nn.Module):
        def forward(self, weight: Any) -> Any:
            return weight + (rounding(weight) - weight).detach()

    return RoundedWeight()


def _head_modules(model: Any) -> list[Any]:
    """The output projection, and the input embeddings when they share its weight (tied), whether or not
    the weight is rounded yet (once it is, both hold the one weight underneath their rounding)."""
    from torch.nn.utils import parametrize

    def underneath(module: Any) -> Any:
        rounded = parametrize.is_parametrized(module, "weight")
        return module.parametrizations.weight.original if rounded else module.weight

    head = model.get_output_embeddings()
    if head is None:
        return []
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    tied = embeddings is not None and underneath(embeddings) is underneath(head)
    return [head, embeddings] if tied else [head]


def rounded_projections(model: Any) -> list[tuple[str, Any]]:
    """(name, module) of every Linear the int4 build turns to 4 bits: all but the output projection."""
    import torch

    head = model.get_output_embeddings()
    return [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and module is not head
    ]


def train_through_rounding(model: Any) -> int:
    """Make every projection of `model` read its weight rounded as the int4 build rounds it (in place):
    4 bits for the projections, 8 for the output one. Returns how many projections are 4-bit."""
    from torch.nn.utils import parametrize

    projections = rounded_projections(model)
    for _name, module in projections:
        parametrize.register_parametrization(module, "weight", _rounded_weight(round_blocks))
    for module in _head_modules(model):  # tied: both register the one shared weight underneath
        parametrize.register_parametrization(module, "weight", _rounded_weight(round_blocks_8bit))
    return len(projections)


def keep_rounded(model: Any) -> int:
    """Undo `train_through_rounding`, leaving each weight rounded (what the student is: its int4 build
    reproduces these weights) and tied weights tied again. Returns how many 4-bit projections it rounded."""
    from torch.nn.utils import parametrize

    heads = _head_modules(model)
    done = 0
    for _name, module in list(model.named_modules()):
        if parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
            done += not any(module is h for h in heads)
    if len(heads) == 2:  # tied: each module now holds its own (equal) rounded copy, share one again
        heads[0].weight = heads[1].weight
    return done
