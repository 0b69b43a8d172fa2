"""Quantisation-aware distillation: the student trains through the int4 build's own rounding.

Why: distillation moves each weight by a small fraction of a 4-bit step, and `tritonform build --quantize
int4` rounds every projection back to blocks of 32 weights on 16 levels between the block's minimum and
maximum (model_repo/quantize_int4.py), which puts most of those weights back where they were: measured on
the default model pruned by 8 layers and distilled, held-out perplexity 123.8 (pruned) -> 73.5
(distilled, fp32) -> 108.1 once its projections are rounded so. Here every projection's forward uses the
rounded weight and the gradient passes straight through the rounding to the fp32 weight underneath (the
straight-through estimator, as in quantisation-aware training), so what the student learns is what
survives the build; at the end the rounded weights are written, which the int4 build then reproduces
exactly. An output projection tied to the input embeddings stays fp32: the int4 build scores the
vocabulary at 4 bits only to pick candidates and computes the best 64 from the fp32 embedding table
(model_repo/rescored_head.py), which is what decides the next token and what distillation's top-k
targets compare. An untied one goes through the build's 8-bit rounding the same way as the projections
(symmetric blocks of 32: onnxruntime's MatMulNBits quantiser, scale = -(the block's largest-magnitude
weight) / 128).

The inputs too: onnxruntime's 4- and 8-bit kernels at the build's `accuracy_level` 4 compute with each
row's input rounded to 8 bits in blocks of 32 (`round_activations`; tested equal to the kernel's output),
while the 4-bit build's offset correction reads the input unrounded. A forward hook adds exactly that
difference to each projection's output, so the student trains, and its held-out perplexity is measured,
as the int4 engine computes; the gradient passes through the input's rounding unchanged.

torch's parametrisations carry the rounding (`torch.nn.utils.parametrize`): the weight is rounded wherever
it is read and the optimiser sees the weight underneath.
"""

from __future__ import annotations

from typing import Any

BLOCK = 32  # the int4 build's block along each output's inputs (quantize_int4.BLOCK)
LEVELS = 15  # 4 bits: 16 levels, 15 steps between a block's minimum and maximum
MODES = ("none", "int4")
# the attribute holding a projection's input-rounding hook, for keep_rounded to remove
_INPUT_HOOK = "_tritonform_input_rounding"


def _blocks(x: Any, pad_with_last: bool) -> Any:
    """`x` [..., in] in blocks of `BLOCK` along its last axis, [..., blocks, BLOCK]; a last partial block
    padded with the row's last value (as the 4-bit build pads) or with zeros (onnxruntime's 8-bit
    quantiser and its kernels' inputs). `_unblocked` undoes it."""
    import torch

    pad = -x.shape[-1] % BLOCK
    if pad:
        rows = x.shape[:-1]
        x = torch.cat([x, x[..., -1:].expand(*rows, pad) if pad_with_last else x.new_zeros(*rows, pad)], -1)
    return x.reshape(*x.shape[:-1], -1, BLOCK)


def _unblocked(blocks: Any, k: int) -> Any:
    return blocks.flatten(-2)[..., :k]


def round_blocks(weight: Any) -> Any:
    """`weight` [out, in] as the int4 build stores it: each block of 32 inputs of an output on 16 evenly
    spaced levels from the block's minimum to its maximum (a last partial block padded with its last
    value, as the build does)."""
    import torch

    blocks = _blocks(weight, pad_with_last=True)
    low = blocks.amin(-1, keepdim=True)
    step = (blocks.amax(-1, keepdim=True) - low) / LEVELS
    step = torch.where(step == 0, torch.ones_like(step), step)
    q = torch.clamp(torch.round((blocks - low) / step), 0, LEVELS)
    return _unblocked(low + q * step, weight.shape[-1])


def round_blocks_8bit(weight: Any) -> Any:
    """`weight` [out, in] as the int4 build stores its output projection: symmetric 8-bit blocks of 32
    inputs, scale = -(the block's largest-magnitude weight) / 128, levels -128..127 (onnxruntime's
    `quantize_matmul_8bits` with is_symmetric; a last partial block is padded with zeros)."""
    import torch

    blocks = _blocks(weight, pad_with_last=False)
    largest = blocks.gather(-1, blocks.abs().argmax(-1, keepdim=True))
    scale = -largest / 128
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    return _unblocked(torch.clamp(torch.round(blocks / scale), -128, 127) * scale, weight.shape[-1])


def round_activations(x: Any) -> Any:
    """`x` [..., in] as onnxruntime's 4- and 8-bit MatMulNBits compute with it at the build's
    `accuracy_level` 4 (its int8 path): each row's blocks of 32 inputs on the symmetric 8-bit levels of
    the block, scale = the block's largest magnitude / 127 (a last partial block padded with zeros)."""
    import torch

    blocks = _blocks(x, pad_with_last=False)
    scale = blocks.abs().amax(-1, keepdim=True) / 127
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    return _unblocked(torch.round(blocks / scale) * scale, x.shape[-1])


def block_offsets(weight: Any) -> Any:
    """Each weight's block offset as the int4 build stores it (quantize_int4: a block's minimum + 8 of
    its 15 steps), so that `weight - block_offsets(weight)` is what the symmetric 4-bit kernel holds."""
    blocks = _blocks(weight, pad_with_last=True)
    low, high = blocks.amin(-1, keepdim=True), blocks.amax(-1, keepdim=True)
    return _unblocked((low + 8 * (high - low) / LEVELS).expand_as(blocks), weight.shape[-1])


def _as_the_kernel_computes(offsets: bool) -> Any:
    """A forward hook: the projection's output as onnxruntime computes it in the built graph, where the
    4-bit kernel reads its input rounded (`round_activations`) and the exact offset correction reads it
    unrounded (quantize_int4), so y = x @ W + (rounded x - x) @ (W - offsets); the 8-bit output projection
    has no offsets. The rounding error is a constant to the gradient (straight-through)."""
    import torch

    def hook(module: Any, args: tuple[Any, ...], output: Any) -> Any:
        x = args[0]
        error = (round_activations(x) - x).detach()
        weight = module.weight.detach()
        symmetric = weight - block_offsets(weight) if offsets else weight
        return output + torch.nn.functional.linear(error, symmetric)

    return hook


def _rounded_weight(rounding: Any) -> Any:
    """A parametrisation: the forward reads the rounded weight, the gradient reaches the weight as if
    there were no rounding (straight-through)."""
    import torch

    class RoundedWeight(torch.nn.Module):
        def forward(self, weight: Any) -> Any:
            return weight + (rounding(weight) - weight).detach()

    return RoundedWeight()


def _untied_head(model: Any) -> Any:
    """The output projection when the int4 build rounds it to 8 bits: a Linear that does not share its
    weight with the input embeddings (a tied one stays fp32, see the module docs); else None."""
    import torch

    head = model.get_output_embeddings()
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if not isinstance(head, torch.nn.Linear) or (embeddings is not None and embeddings.weight is head.weight):
        return None
    return head


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
    """Make every projection of `model` compute as the int4 build computes it (in place): its weight
    rounded to 4 bits (8 for an untied output projection; a tied one stays fp32, see the module docs) and
    its input to the kernel's 8-bit blocks. Returns how many projections are 4-bit."""
    from torch.nn.utils import parametrize

    projections = rounded_projections(model)
    for _name, module in projections:
        parametrize.register_parametrization(module, "weight", _rounded_weight(round_blocks))
    head = _untied_head(model)
    if head is not None:
        parametrize.register_parametrization(head, "weight", _rounded_weight(round_blocks_8bit))
    for _name, module in projections:
        setattr(module, _INPUT_HOOK, module.register_forward_hook(_as_the_kernel_computes(offsets=True)))
    if head is not None:
        setattr(head, _INPUT_HOOK, head.register_forward_hook(_as_the_kernel_computes(offsets=False)))
    return len(projections)


def keep_rounded(model: Any) -> int:
    """Undo `train_through_rounding`, leaving each weight rounded (what the student is: its int4 build
    reproduces these weights; a tied output projection was never rounded and stays tied). Returns how
    many 4-bit projections it rounded."""
    from torch.nn.utils import parametrize

    for module in model.modules():
        if hasattr(module, _INPUT_HOOK):
            getattr(module, _INPUT_HOOK).remove()
            delattr(module, _INPUT_HOOK)
    head = model.get_output_embeddings()
    done = 0
    for _name, module in list(model.named_modules()):
        if parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
            done += module is not head
    return done
