"""ONNX export with a KV cache, then onnxruntime graph optimisation; fp32, or fp16 from a model loaded in
float16 (`model_repo.precision`).

Why `torch.onnx.export(dynamo=True)` and not optimum-onnx: optimum-onnx 0.1 needs transformers<4.58, while
the kit runs transformers 5.x (pinned in pyproject, also needed for GGUF loading of current models).
Exporting our own thin wrapper also fixes the graph's interface to exactly what the runtime expects
(`model_repo/runtime/contract.py`), for every supported family, with no extra dependency but onnxscript
(which the dynamo exporter itself requires).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model_repo.checkpoint import CheckpointError, inspect_checkpoint
from model_repo.gqa import use_group_query_attention
from model_repo.runtime.contract import (
    KV_LAYOUT_LEFT,
    KV_LAYOUT_RIGHT,
    LOGITS_TO_KEEP,
    ONNX_FILE,
    TOKENIZER_FILE,
    GenerationMetadata,
    past_names,
    present_names,
)

OPSET = 18
EXPORTER = "torch.onnx.export(dynamo=True)"
GRAPH_OPTIMISATION = "onnxscript ort_fusions + onnxruntime ORT_ENABLE_EXTENDED"
# An fp16 graph skips onnxruntime's offline pass: run on the CPU provider, which has no fp16 MatMul, it
# would write its CPU-only fp32 islands (Cast around every MatMul) into the saved model that GPUs serve.
GRAPH_OPTIMISATION_HALF = "onnxscript ort_fusions"


class ExportError(RuntimeError):
    """Export or optimisation failed; the message says which step."""


@dataclass(frozen=True)
class ExportResult:
    """What the export wrote (`model_dir`, `metadata`) and how: the facts a build report records."""

    model_dir: Path
    metadata: GenerationMetadata
    export_seconds: float
    optimize_seconds: float
    fusions: dict[str, int]
    exporter: str = EXPORTER
    opset: int = OPSET
    dtype: str = "float32"
    kv_cache: bool = True
    graph_optimisation: str = GRAPH_OPTIMISATION

    def facts(self) -> dict[str, Any]:
        """The export's entry of a build report (timings rounded to 10 ms)."""
        return {
            "exporter": self.exporter,
            "opset": self.opset,
            "dtype": self.dtype,
            "kv_cache": self.kv_cache,
            "graph_optimisation": self.graph_optimisation,
            "fusions": self.fusions,
            "export_s": round(self.export_seconds, 2),
            "optimise_s": round(self.optimize_seconds, 2),
        }


def load_torch_model(checkpoint: Path, dtype: str = "float32") -> tuple[Any, Any]:
    """(model in eval mode, transformers tokenizer) from a local checkpoint, offline. `dtype` "float16"
    loads the weights in float16 (converted tensor by tensor: no fp32 copy of the model is made) and
    stops with a PrecisionError when one does not fit float16's range."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(
        str(checkpoint), dtype=dtype, attn_implementation="eager"
    ).eval()
    if dtype != "float32":
        from model_repo.precision import check_half_weights

        check_half_weights(model, checkpoint)
    tok = AutoTokenizer.from_pretrained(str(checkpoint))
    return model, tok


def generation_metadata(model: Any, tok: Any, quantization: str = "none") -> GenerationMetadata:
    """The runtime's metadata for a loaded torch model and its transformers tokenizer."""
    cfg = model.config
    heads = int(getattr(cfg, "num_attention_heads", getattr(cfg, "n_head", 0)))
    hidden = int(getattr(cfg, "hidden_size", getattr(cfg, "n_embd", 0)))
    head_dim = int(getattr(cfg, "head_dim", None) or hidden // heads)
    kv_heads = int(getattr(cfg, "num_key_value_heads", None) or heads)
    layers = int(getattr(cfg, "num_hidden_layers", getattr(cfg, "n_layer", 0)))
    max_ctx = int(getattr(cfg, "max_position_embeddings", getattr(cfg, "n_positions", 2048)))
    eos: list[int] = []
    for src in (getattr(model, "generation_config", None), cfg):
        val = getattr(src, "eos_token_id", None) if src is not None else None
        for e in val if isinstance(val, list) else [val]:
            if e is not None and int(e) not in eos:
                eos.append(int(e))
    if tok.eos_token_id is not None and tok.eos_token_id not in eos:
        eos.append(int(tok.eos_token_id))
    pad = tok.pad_token_id if tok.pad_token_id is not None else (eos[0] if eos else 0)
    return GenerationMetadata(
        architecture=str(cfg.model_type),
        num_layers=layers,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        vocab_size=int(cfg.vocab_size),
        max_context=max_ctx,
        eos_token_ids=tuple(eos),
        pad_token_id=int(pad),
        bos_token_id=None if tok.bos_token_id is None else int(tok.bos_token_id),
        chat_template=getattr(tok, "chat_template", None),
        bos_token=tok.bos_token,
        eos_token=tok.eos_token,
        quantization=quantization,
    )


def cache_argument(model: Any) -> str:
    """transformers 5.x renamed `past_key_values` to `cache` (the old name is deprecated)."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def output_cache(out: Any) -> Any:
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def _wrapper(model: Any, num_layers: int) -> Any:
    import torch
    from transformers import DynamicCache

    cache_kw = cache_argument(model)

    class KVCacheLM(torch.nn.Module):
        """Flat tensors in and out, so the ONNX graph has one named input/output per cache tensor."""

        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(
            self, input_ids: Any, attention_mask: Any, position_ids: Any, logits_to_keep: Any, *past: Any
        ) -> Any:
            cache = DynamicCache(ddp_cache_data=[(past[2 * i], past[2 * i + 1]) for i in range(num_layers)])
            out = self.model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                # positions (of this call's tokens) whose logits to compute: a prefill needs only the
                # last one, and the vocabulary projection is the largest matmul of a small model
                logits_to_keep=logits_to_keep,
                use_cache=True,
                **{cache_kw: cache},
            )
            flat = []
            for layer in output_cache(out).layers:
                flat.extend([layer.keys, layer.values])
            return (out.logits.float(), *flat)  # fp32 logits whatever the model's type (a Cast if fp16)

    return KVCacheLM().eval()


@dataclass(frozen=True)
class RawExport:
    """The exporter's graph before fusions (`export_graph`), with what `finish_export` needs."""

    out: Path
    raw: Path
    metadata: GenerationMetadata
    export_seconds: float
    model_type: str


def export_onnx(
    checkpoint: str | Path,
    out_dir: str | Path,
    *,
    optimize: bool = True,
    progress: Callable[[str], None] | None = None,
    model: Any = None,
    tokenizer: Any = None,
    dtype: str = "float32",
) -> ExportResult:
    """Export `checkpoint` to `out_dir/model.onnx` (+ external data), write tokenizer.json and
    generation.json, and optimise the graph: `export_graph` then `finish_export`.

    `model`, `tokenizer`: the checkpoint already loaded with `load_torch_model` (its dtype then decides
    the export's); the export unties the model's output projection in place (same values). Default:
    loaded here at `dtype`. A build calls the two steps itself, to free the torch model between them."""
    if model is None or tokenizer is None:
        model, tokenizer = load_torch_model(inspect_checkpoint(checkpoint).path, dtype)
    raw = export_graph(checkpoint, out_dir, model, tokenizer, progress)
    return finish_export(raw, optimize=optimize, progress=progress)


def export_graph(
    checkpoint: str | Path,
    out_dir: str | Path,
    model: Any,
    tokenizer: Any,
    progress: Callable[[str], None] | None = None,
) -> RawExport:
    """torch.onnx.export of `model` (fp32 or fp16, as loaded) to `out_dir/raw/`, and tokenizer.json to
    `out_dir`. Nothing of the model is held afterwards: the caller may free it before `finish_export`."""
    import torch

    say = progress or (lambda _m: None)
    info = inspect_checkpoint(checkpoint)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _untie_output_projection(model)
    dtype = next(model.parameters()).dtype
    meta = dataclasses.replace(generation_metadata(model, tokenizer), dtype=str(dtype).removeprefix("torch."))
    n = meta.num_layers
    wrapper = _wrapper(model, n)

    # Example sizes avoid 0 and 1, which torch.export would specialise on.
    b, s, p = 2, 3, 4
    kv = (b, meta.num_kv_heads, p, meta.head_dim)
    args = (
        torch.randint(0, meta.vocab_size, (b, s)),
        torch.ones((b, p + s), dtype=torch.int64),
        torch.arange(p, p + s).repeat(b, 1),
        torch.tensor([1, 2]),
        *[torch.randn(kv, dtype=dtype) for _ in range(2 * n)],
    )
    past_inputs = [name for pair in past_names(n) for name in pair]
    present_outputs = [name for pair in present_names(n) for name in pair]
    dyn = torch.export.Dim.DYNAMIC
    dynamic_shapes = (
        {0: dyn, 1: dyn},
        {0: dyn, 1: dyn},
        {0: dyn, 1: dyn},
        {0: dyn},
        # `*past` reaches torch.export as one tuple argument.
        tuple({0: dyn, 2: dyn} for _ in range(2 * n)),
    )
    raw = out / "raw"
    raw.mkdir(exist_ok=True)
    say(f"exporting {info.model_type} ({n} layers, {meta.dtype}) to ONNX")
    t0 = time.perf_counter()
    try:
        with torch.no_grad():
            program = torch.onnx.export(
                wrapper,
                args,
                dynamo=True,
                input_names=["input_ids", "attention_mask", "position_ids", LOGITS_TO_KEEP, *past_inputs],
                output_names=["logits", *present_outputs],
                dynamic_shapes=dynamic_shapes,
                opset_version=OPSET,
                optimize=True,
                verbose=False,
            )
        if program is None:
            raise ExportError("torch.onnx.export returned no program")
        program.save(str(raw / ONNX_FILE), external_data=True)
    except CheckpointError:
        raise
    except Exception as exc:  # the exporter raises many types; name the step
        raise ExportError(f"ONNX export of {info.path} failed: {type(exc).__name__}: {exc}") from exc
    tokenizer.backend_tokenizer.save(str(out / TOKENIZER_FILE))
    return RawExport(out, raw, meta, time.perf_counter() - t0, info.model_type)


def finish_export(
    raw: RawExport, *, optimize: bool = True, progress: Callable[[str], None] | None = None
) -> ExportResult:
    """Fuse and optimise `raw`'s graph into `raw.out/model.onnx`, write generation.json, remove raw/."""
    say = progress or (lambda _m: None)
    meta, out, folder = raw.metadata, raw.out, raw.raw
    half = meta.dtype != "float32"
    t1 = time.perf_counter()
    fusions: dict[str, int] = {}
    if optimize:
        say("fusing transformer patterns (RMSNorm, attention) for onnxruntime")
        fused = folder / "fused.onnx"
        try:
            fusions = fuse_for_onnxruntime(folder / ONNX_FILE, fused, meta.max_context)
            grouped = folder / "grouped.onnx"
            layers = use_group_query_attention(fused, grouped, meta.num_kv_heads)
            if layers:
                say(f"attention over a cache updated in place: GroupQueryAttention in {layers} layers")
                fusions["group_query_attention"] = layers
                meta = dataclasses.replace(meta, kv_layout=KV_LAYOUT_RIGHT)
            best = grouped if layers else fused
            if half:
                _move_model(best, out / ONNX_FILE)
            else:
                say("optimising the ONNX graph with onnxruntime")
                optimize_graph(best, out / ONNX_FILE)
        except Exception as exc:  # a fusion pattern that does not fit this model: keep the plain graph
            say(f"transformer fusions skipped ({type(exc).__name__}); optimising the plain graph")
            fusions, meta = {}, dataclasses.replace(meta, kv_layout=KV_LAYOUT_LEFT)
            if half:
                _move_model(folder / ONNX_FILE, out / ONNX_FILE)
            else:
                optimize_graph(folder / ONNX_FILE, out / ONNX_FILE)
    else:
        _move_model(folder / ONNX_FILE, out / ONNX_FILE)
    shutil.rmtree(folder, ignore_errors=True)
    optimize_s = time.perf_counter() - t1

    meta.save(out)
    graph_optimisation = (GRAPH_OPTIMISATION_HALF if half else GRAPH_OPTIMISATION) if optimize else "none"
    return ExportResult(
        out,
        meta,
        raw.export_seconds,
        optimize_s,
        fusions,
        dtype=meta.dtype,
        graph_optimisation=graph_optimisation,
    )


def _untie_output_projection(model: Any) -> None:
    """Give lm_head its own copy of a tied embedding matrix.

    Tied, the exporter emits MatMul(x, Transpose(embedding)) because the matrix is shared with the
    embedding Gather; the later fusion turns that into a FusedMatMul that weight-only quantisation
    skips, leaving the largest matmul in fp32. Untied, it is a plain MatMul with a constant weight.
    """
    import torch

    head = getattr(model, "lm_head", None)
    emb = model.get_input_embeddings()
    if head is not None and emb is not None and head.weight.data_ptr() == emb.weight.data_ptr():
        head.weight = torch.nn.Parameter(emb.weight.detach().clone(), requires_grad=False)
        model.config.tie_word_embeddings = False


def fuse_for_onnxruntime(src: Path, dst: Path, max_positions: int) -> dict[str, int]:
    """onnxscript's onnxruntime fusions for dynamo-exported transformers: RMSNorm and skip-RMSNorm to
    (Skip)SimplifiedLayerNormalization, rotary embedding to RotaryEmbedding with a cos/sin cache,
    scaled-dot-product attention to MultiHeadAttention. Returns the count of each fusion applied.

    onnxscript's GroupQueryAttention fusion is switched off: it matches only a purely causal mask, not
    the padded batch the engine runs; `model_repo.gqa` turns MultiHeadAttention into GroupQueryAttention
    afterwards instead.
    """
    from unittest import mock

    import onnx_ir as ir
    from onnxscript.optimizer import optimize
    from onnxscript.rewriter import _fusion_utils, pattern
    from onnxscript.rewriter.ort_fusions import _core, optimize_for_ort
    from onnxscript.rewriter.ort_fusions.rotary_embedding import fuse_rotary_embedding

    from model_repo.rope_fusion import MulFreqsCosSinCache

    model = ir.load(str(src))
    optimize(model)
    counts = {"rotary_embedding": int(fuse_rotary_embedding(model))}
    rules = [
        MulFreqsCosSinCache.rule(
            f"CosSinCache_mul{'_cast' * cast}", cast=cast, const_freqs=False, max_pos_id=max_positions - 1
        )
        for cast in (False, True)  # fp32 export; fp16 export (cos/sin cast to the activations' type)
    ]
    counts["cos_sin_cache_mul"] = int(_fusion_utils.apply_fusion_rules(pattern.RewriteRuleSet(rules))(model))
    with mock.patch.object(_core, "fuse_gqa", lambda *_a, **_k: 0):
        model, more = optimize_for_ort(model)
    counts.update({k: int(v) for k, v in more.items() if v})
    ir.save(model, str(dst), external_data=dst.name + ".data")
    return {k: v for k, v in counts.items() if v}


def _move_model(src: Path, dst: Path) -> None:
    import onnx

    model = onnx.load(str(src))
    save_onnx(model, dst)


def save_onnx(model: Any, dst: Path) -> None:
    """Save with all weights in one external data file next to the graph (`model.onnx.data`)."""
    import onnx

    data = dst.name + ".data"
    for stale in (dst, dst.parent / data):
        stale.unlink(missing_ok=True)
    onnx.save_model(
        model,
        str(dst),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=data,
        size_threshold=1024,
    )


def optimize_graph(src: Path, dst: Path) -> None:
    """Hardware-independent onnxruntime graph optimisations (constant folding, fusions such as
    SimplifiedLayerNormalization, SkipSimplifiedLayerNormalization, Gelu), written to `dst`.

    ORT_ENABLE_EXTENDED is the highest level that stays portable between CPU and GPU providers;
    the engine still applies the provider-specific layout optimisations when it opens the model.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    tmp = dst.with_name(dst.name + ".ortopt.onnx")
    opts.optimized_model_filepath = str(tmp)
    opts.add_session_config_entry(
        "session.optimized_model_external_initializers_file_name", tmp.name + ".data"
    )
    opts.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    try:
        ort.InferenceSession(str(src), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ExportError(f"onnxruntime could not optimise {src}: {exc}") from exc
    _move_model(tmp, dst)
    tmp.unlink(missing_ok=True)
    (tmp.parent / (tmp.name + ".data")).unlink(missing_ok=True)
