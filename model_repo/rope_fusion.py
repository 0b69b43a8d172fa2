"""A rotary-embedding cos/sin-cache fusion rule for graphs exported from transformers 5.x.

onnxscript's `CosSinCacheFusion` expects the rotary angles as Transpose(MatMul(inv_freq, position_ids)),
the form older transformers produced; transformers 5.x computes `position_ids[..., None] * inv_freq`
(a Mul). This rule matches that form and reuses the parent's rewrite to com.microsoft RotaryEmbedding.
"""

from __future__ import annotations

from typing import Any

import onnx_ir as ir
from onnxscript.rewriter import _ir_utils, pattern
from onnxscript.rewriter.ort_fusions.cos_sin_cache import CosSinCacheFusion


class MulFreqsCosSinCache(CosSinCacheFusion):
    """Rotary angles computed with Mul (transformers 5.x) -> RotaryEmbedding(x, position_ids, cos, sin).

    With `max_pos_id` the cos/sin caches become constants (no MatMul left for weight quantisation to
    touch, nothing recomputed per call). With `cast=True` it matches a half-precision export, where
    transformers computes cos/sin in fp32 and casts them to the activations' type.
    """

    def __init__(self, name: str, *, max_pos_id: int, **kwargs: Any) -> None:
        super().__init__(name, **kwargs)
        self.max_pos_id = max_pos_id

    def pattern(  # type: ignore[override]
        self,
        op: Any,
        x: Any,
        inv_freq: Any,
        position_ids: Any,
        interleaved: Any,
        num_heads: Any,
        freqs: Any,
        dtype: Any,
        extra_dims: Any,
    ) -> Any:
        pos = op.Cast(op.Unsqueeze(position_ids, extra_dims), to=ir.DataType.FLOAT)
        angles = op.Mul(pos, inv_freq)  # [B, S, head_dim / 2]
        emb = op.Concat(angles, angles, axis=-1)
        cos, sin = op.Cos(emb), op.Sin(emb)
        if self._cast:  # a half-precision export: the fp32 angles cast to the activations' type
            cos, sin = op.Cast(cos, to=dtype), op.Cast(sin, to=dtype)
        cos_4d = op.Unsqueeze(cos, [1])
        sin_4d = op.Unsqueeze(sin, [1])
        return op.RotaryEmbedding(
            x, cos_4d, sin_4d, interleaved=interleaved, num_heads=num_heads, _domain="ai.onnxruntime._fusion"
        )

    def check(  # type: ignore[override]
        self, context: Any, inv_freq: Any, position_ids: Any, **_: Any
    ) -> Any:
        result = pattern.MatchResult()
        if not _ir_utils.has_rank(position_ids, 2):
            return result.fail("position_ids is not 2D", position_ids)
        if inv_freq.const_value is None:
            return result.fail("inv_freq is not a constant", inv_freq)
        return result
