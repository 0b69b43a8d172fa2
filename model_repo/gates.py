"""Quality gates for an exported model.

- fp32 parity: greedy tokens from the ONNX engine equal PyTorch's for `n_tokens` (>= 64) on fixed prompts
  (eos treated as an ordinary token, so both sides run the full length).
- quantised (or fp16) quality: teacher-forced next-token agreement with a reference, and perplexity of both
  on a held-out English text shipped in `model_repo/data/heldout.txt`. The gate fails when agreement is
  below `min_agreement` (default 0.95) or perplexity rises by more than `max_ppl_increase` (default 0.05).

Each gate's reference side is a small record (`ParityReference`: PyTorch's greedy tokens;
`GateReference`: the reference's argmax and per-token loss on the held-out text and its greedy answers to
the decode prompts), so a build computes it first and frees the model it came from (the torch model, the
fp32 session) before the next large object is loaded. The reference is the fp32 ONNX export for quantised
builds and PyTorch computing in fp32 for fp16 builds (`model_repo.precision.float32_compute`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from model_repo.chat_template import apply_chat_template
from model_repo.runtime.contract import GenerationMetadata
from model_repo.runtime.engine import Engine

HELDOUT_TEXT = Path(__file__).parent / "data" / "heldout.txt"
PARITY_PROMPTS: tuple[str, ...] = (
    "What is the capital of France?",
    "Write a short poem about the sea.",
    "Explain how a bicycle works to a child.",
)
# The decode-path gate: the reference's greedy answers to these (8 x 64 = 512 tokens). A sample of
# 96 tokens moved by 3 points between two graphs whose fp32 logits agree to 5e-5 (8-bit activation
# rounding turns tiny differences into flips where the top two tokens are close); 512 keeps the
# figure's standard error near 1 point at 95%.
DECODE_PROMPTS: tuple[str, ...] = (
    *PARITY_PROMPTS,
    "Give me three tips for learning to cook.",
    "Write a Python function that reverses a string.",
    "Why is the sky blue?",
    "List the planets of the solar system in order.",
    "Describe a cat to someone who has never seen one.",
)
DECODE_TOKENS = 64
DEFAULT_MIN_AGREEMENT = 0.95
DEFAULT_MAX_PPL_INCREASE = 0.05
WINDOW = 256


class GateError(RuntimeError):
    """A quality gate failed; the message gives the figures and the threshold."""


class Encoder(Protocol):
    """What turns the gates' texts into token ids: an `Engine`, or a `TextEncoder` before any exists."""

    @property
    def metadata(self) -> GenerationMetadata: ...
    def encode(self, text: str) -> list[int]: ...


@dataclass(frozen=True)
class TextEncoder:
    """The engine's encoding without an engine: the metadata the export writes and the `tokenizers`
    tokenizer it saves as tokenizer.json (a transformers tokenizer's `backend_tokenizer`), so PyTorch's
    side of a gate runs on exactly the token ids the ONNX side will see."""

    metadata: GenerationMetadata
    tokenizer: Any

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False).ids)


@dataclass(frozen=True)
class ParityResult:
    passed: bool
    n_tokens: int
    prompts: int
    matched_tokens: list[int]  # per prompt: length of the equal prefix

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class QualityResult:
    passed: bool
    agreement: float
    perplexity_reference: float
    perplexity: float
    perplexity_increase: float
    tokens: int
    min_agreement: float
    max_ppl_increase: float
    # Agreement on the decode path (one token at a time against the KV cache, as generation runs),
    # over the reference's greedy answers to the parity prompts.
    decode_agreement: float = 1.0
    decode_tokens: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def parity_prompts(engine: Encoder, texts: tuple[str, ...] = PARITY_PROMPTS) -> list[list[int]]:
    """The fixed prompts as token ids; chat-formatted when the model has a chat template."""
    out = []
    for text in texts:
        if engine.metadata.chat_template:
            text = apply_chat_template(engine.metadata, [{"role": "user", "content": text}])
        out.append(engine.encode(text))
    return out


def torch_greedy(model: Any, ids: list[int], n_tokens: int) -> list[int]:
    """Greedy continuation with PyTorch eager and a KV cache; eos is not special."""
    import torch

    from model_repo.export import cache_argument, output_cache

    kw = cache_argument(model)
    out: list[int] = []
    with torch.no_grad():
        res = model(input_ids=torch.tensor([ids]), use_cache=True)
        for _ in range(n_tokens):
            tok = int(res.logits[0, -1].argmax())
            out.append(tok)
            res = model(input_ids=torch.tensor([[tok]]), use_cache=True, **{kw: output_cache(res)})
    return out


def torch_greedy_batch(model: Any, prompts: list[list[int]], n_tokens: int) -> list[list[int]]:
    """`torch_greedy` for several prompts at once (left-padded, one forward per token for all of them):
    what a reference that costs a pass over the weights per forward can afford."""
    import torch

    from model_repo.export import cache_argument, output_cache

    kw = cache_argument(model)
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    out: list[list[int]] = [[] for _ in prompts]
    with torch.no_grad():
        res = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0))
        for step in range(n_tokens):
            nxt = res.logits[:, -1].argmax(-1)
            for row, tok in zip(out, nxt.tolist(), strict=True):
                row.append(int(tok))
            if step == n_tokens - 1:
                break
            mask = torch.cat([mask, torch.ones((len(prompts), 1), dtype=mask.dtype)], dim=1)
            res = model(
                input_ids=nxt[:, None],
                attention_mask=mask,
                position_ids=mask.sum(-1, keepdim=True) - 1,
                use_cache=True,
                **{kw: output_cache(res)},
            )
    return out


@dataclass(frozen=True)
class ParityReference:
    """PyTorch's greedy tokens on the parity prompts: the reference side of the parity gate, computed
    before the export so the build frees the torch model before it loads the ONNX session."""

    prompts: list[list[int]]
    tokens: list[list[int]]

    @classmethod
    def from_torch(cls, model: Any, encoder: Encoder, n_tokens: int) -> ParityReference:
        prompts = parity_prompts(encoder)
        return cls(prompts, [torch_greedy(model, ids, n_tokens) for ids in prompts])


def check_parity(
    engine: Engine, reference: Any, n_tokens: int = 64, raise_on_fail: bool = True
) -> ParityResult:
    """Greedy tokens of `engine` (fp32) vs PyTorch on each fixed prompt. `reference`: a
    `ParityReference` (its length decides `n_tokens`), or the checkpoint's torch model
    (`model_repo.export.load_torch_model`), run here for `n_tokens`."""
    if not isinstance(reference, ParityReference):
        reference = ParityReference.from_torch(reference, engine, n_tokens)
    matched = []
    for ids, ref in zip(reference.prompts, reference.tokens, strict=True):
        n_tokens = len(ref)
        got = engine.greedy_ids(ids, n_tokens)
        same = next((i for i, (a, b) in enumerate(zip(ref, got, strict=True)) if a != b), n_tokens)
        matched.append(same)
    result = ParityResult(all(m == n_tokens for m in matched), n_tokens, len(matched), matched)
    if raise_on_fail and not result.passed:
        raise GateError(
            f"fp32 parity failed: greedy tokens match PyTorch for {matched} of {n_tokens} tokens per prompt; "
            "the export is wrong for this model"
        )
    return result


def heldout_windows(engine: Encoder, text: str | None = None, window: int = WINDOW) -> list[list[int]]:
    ids = engine.encode(text if text is not None else HELDOUT_TEXT.read_text(encoding="utf-8"))
    window = min(window, engine.metadata.max_context)
    return [ids[i : i + window] for i in range(0, len(ids), window) if len(ids[i : i + window]) > 1]


def _nll(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    mx = x.max(-1, keepdims=True)
    lse = np.log(np.exp(x - mx).sum(-1)) + mx[:, 0]
    return np.asarray(lse - x[np.arange(len(targets)), targets])


@dataclass(frozen=True)
class GateReference:
    """The reference side of the quality gate: per held-out window its token ids, the reference's argmax
    and loss at each position; per decode prompt its ids and the reference's greedy answer. A few KB
    whatever the model's size, so the model it came from can be freed before the gated one loads."""

    windows: list[list[int]]
    argmax: list[np.ndarray]
    nll: list[np.ndarray]
    prompts: list[list[int]]
    answers: list[list[int]]

    @classmethod
    def from_engine(cls, engine: Engine, text: str | None = None) -> GateReference:
        """From an ONNX engine (the fp32 export, for quantised builds)."""
        windows = heldout_windows(engine, text)
        logits = [engine.prompt_logits(ids)[:-1] for ids in windows]
        prompts = parity_prompts(engine, DECODE_PROMPTS)
        return cls(
            windows,
            [a.argmax(-1) for a in logits],
            [_nll(a, np.asarray(ids[1:])) for a, ids in zip(logits, windows, strict=True)],
            prompts,
            [engine.greedy_ids(p, DECODE_TOKENS) for p in prompts],
        )

    @classmethod
    def from_torch(cls, model: Any, encoder: Encoder, text: str | None = None) -> GateReference:
        """From a torch model computing as it is set up (fp16 builds: inside `float32_compute`)."""
        import torch

        windows = heldout_windows(encoder, text)
        argmax, nll = [], []
        with torch.no_grad():
            for ids in windows:
                a = model(input_ids=torch.tensor([ids])).logits[0, :-1].float().numpy()
                argmax.append(a.argmax(-1))
                nll.append(_nll(a, np.asarray(ids[1:])))
        prompts = parity_prompts(encoder, DECODE_PROMPTS)
        return cls(windows, argmax, nll, prompts, torch_greedy_batch(model, prompts, DECODE_TOKENS))


def check_quality(
    engine: Engine,
    reference: Engine | GateReference,
    *,
    min_agreement: float = DEFAULT_MIN_AGREEMENT,
    max_ppl_increase: float = DEFAULT_MAX_PPL_INCREASE,
    text: str | None = None,
    raise_on_fail: bool = True,
) -> QualityResult:
    """Teacher-forced next-token agreement and perplexity of `engine` against `reference`: the fp32
    export's engine, or a `GateReference` recorded earlier (`text` is then the one it was recorded on)."""
    if not isinstance(reference, GateReference):
        reference = GateReference.from_engine(reference, text)
    agree = total = 0
    nll_q: list[np.ndarray] = []
    for ids, ref_argmax in zip(reference.windows, reference.argmax, strict=True):
        b = engine.prompt_logits(ids)[:-1]
        targets = np.asarray(ids[1:])
        agree += int((ref_argmax == b.argmax(-1)).sum())
        total += len(targets)
        nll_q.append(_nll(b, targets))
    if total == 0:
        raise GateError("the held-out text is empty; cannot measure quality")
    ppl_ref = float(np.exp(np.concatenate(reference.nll).mean()))
    ppl = float(np.exp(np.concatenate(nll_q).mean()))
    rise = ppl / ppl_ref - 1.0
    agreement = agree / total
    decode_agree, decode_total = _decode_agreement(engine, reference)
    decode_agreement = decode_agree / decode_total
    passed = meets_gates(agreement, decode_agreement, rise, min_agreement, max_ppl_increase)
    result = QualityResult(
        passed,
        agreement,
        ppl_ref,
        ppl,
        rise,
        total,
        min_agreement,
        max_ppl_increase,
        decode_agreement,
        decode_total,
    )
    if raise_on_fail and not passed:
        raise GateError(quality_failure_message(result))
    return result


def meets_gates(
    agreement: float,
    decode_agreement: float,
    perplexity_increase: float,
    min_agreement: float = DEFAULT_MIN_AGREEMENT,
    max_ppl_increase: float = DEFAULT_MAX_PPL_INCREASE,
) -> bool:
    """The quality gates' rule: both agreements at least `min_agreement`, the perplexity rise at most
    `max_ppl_increase`."""
    return (
        agreement >= min_agreement
        and decode_agreement >= min_agreement
        and perplexity_increase <= max_ppl_increase
    )


def _decode_agreement(engine: Engine, reference: GateReference) -> tuple[int, int]:
    """Teacher-forced agreement on the decode path over the reference's greedy chat answers."""
    agree = total = 0
    for prompt, answer in zip(reference.prompts, reference.answers, strict=True):
        logits = engine.decode_logits([*prompt, *answer], len(prompt))
        agree += int((logits.argmax(-1) == np.asarray(answer)).sum())
        total += len(answer)
    return agree, total


def quality_failure_message(
    result: QualityResult,
    what: str = "quantised",
    advice: str = "use a milder --quantize, or lower --min-agreement / raise --max-ppl-increase",
) -> str:
    return (
        f"{what} model failed its quality gate: next-token agreement {result.agreement:.1%} "
        f"on held-out text and {result.decode_agreement:.1%} while generating "
        f"(minimum {result.min_agreement:.1%} each), perplexity {result.perplexity_reference:.2f} -> "
        f"{result.perplexity:.2f} ({result.perplexity_increase:+.1%}, "
        f"maximum +{result.max_ppl_increase:.1%}); {advice}"
    )
