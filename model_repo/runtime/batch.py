"""Continuous batching over one model: sequences of different lengths advance in one onnxruntime call.

A sequence joins after a batch-1 prefill (`DecodeBatch.add`), every `step` advances all of them by one
token, and finished or cancelled sequences leave. The stacked KV cache's layout follows the model's
attention (`GenerationMetadata.kv_layout`): `LeftPaddedBatch` or `RightPaddedBatch`.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from .contract import EngineError, GenerationMetadata
from .guide import Guide, GuideCompiler
from .kv_store import KVStore
from .logits import RowSettings, apply_processors, token_logprobs
from .sampling import Sampler, SamplingParams


class BatchRunner(Protocol):
    """What a batch needs from a session of the model (`Engine` is one): its metadata and model calls."""

    metadata: GenerationMetadata
    guides: GuideCompiler
    kv: KVStore  # where the cache lives (numpy on the host, or OrtValues on the session's device)

    def prefill(self, ids: Sequence[int]) -> tuple[np.ndarray, list[np.ndarray]]: ...

    def forward(
        self,
        input_ids: np.ndarray,
        attention_mask: np.ndarray,
        position_ids: np.ndarray,
        past: Sequence[Any],
        last_only: bool = False,
    ) -> tuple[np.ndarray, list[Any]]: ...

    def forward_in_place(
        self,
        input_ids: np.ndarray,
        attention_mask: np.ndarray,
        position_ids: np.ndarray,
        cache: list[np.ndarray],
        binding: Any = None,
    ) -> np.ndarray: ...

    def bind_cache(self, cache: list[np.ndarray]) -> Any: ...


@dataclass(frozen=True)
class StepOutput:
    """One new token for one sequence. finish_reason: None while running, 'stop' or 'length' at the end,
    'error' when choosing this sequence's token failed (`error` says why; `token_id` is -1).

    When a sequence stops on an eos/stop token that token is still reported (token_id) but
    `is_stop_token` is True so callers do not print it (nor count it as generated text).

    `logprob` (with `SamplingParams.logprobs` or top_logprobs): the token's log-probability under the
    processed logits (bias and penalties applied; before temperature, top-k/p, min-p and grammar);
    `top_ids` / `top_logprobs`: the `top_logprobs` most likely tokens there, best first.
    """

    request_id: str
    token_id: int
    finished: bool
    finish_reason: str | None
    is_stop_token: bool = False
    error: str | None = None
    logprob: float | None = None
    top_ids: tuple[int, ...] = ()
    top_logprobs: tuple[float, ...] = ()


@dataclass
class _SeqState:
    """One sequence in a batch: its sampling, its place in the cache and its stop tokens."""

    request_id: str
    params: SamplingParams
    sampler: Sampler
    length: int  # tokens whose keys/values are in the cache
    last_token: int
    generated: int = 0
    stop_ids: frozenset[int] = field(default_factory=frozenset)
    settings: RowSettings | None = None  # bias and penalties; None: the row's logits are used as they are
    guide: Guide | None = None  # grammar state when the sequence is constrained


class DecodeBatch:
    """Continuous batching: sequences with different prompt and past lengths advance in one ORT call.

    A sequence joins after a batch-1 prefill (`add`), every `step` advances all of them by one token,
    and finished or cancelled sequences leave. How the stacked KV cache is laid out depends on the
    model's attention (`GenerationMetadata.kv_layout`); see `LeftPaddedBatch` and `RightPaddedBatch`.
    Not thread-safe: drive it from one thread (the Triton model's scheduler loop).
    """

    def __init__(self, engine: BatchRunner) -> None:
        self.engine = engine
        self.seqs: list[_SeqState] = []
        self._pool: ThreadPoolExecutor | None = None

    def _mask_pool(self) -> ThreadPoolExecutor:
        """One worker thread that computes grammar masks beside the model call (made on first use)."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tritonform-masks")
        return self._pool

    def __len__(self) -> int:
        return len(self.seqs)

    @property
    def request_ids(self) -> list[str]:
        """The sequences in the batch, in row order."""
        return [s.request_id for s in self.seqs]

    def _finish(self, s: _SeqState, tok: int) -> tuple[bool, str | None, bool]:
        if tok in s.stop_ids:
            return True, "stop", True
        if s.guide is not None and s.guide.done:  # the grammar is complete and allows nothing more
            # (an eos it accepted while eos is not an end token here is still no text)
            return True, "stop", tok in self.engine.metadata.eos_token_ids
        # `tok` would be fed at position s.length next: the sequence ends when that position is past
        # the model's context (every position 0..max_context-1 is used)
        if s.generated >= s.params.max_tokens or s.length >= self.engine.metadata.max_context:
            return True, "length", False
        return False, None, False

    def add(
        self,
        request_id: str,
        prompt_ids: Sequence[int],
        params: SamplingParams,
        runner: BatchRunner | None = None,
    ) -> StepOutput:
        """Prefill one prompt (one ORT call), sample its first token and, unless it already finished,
        join the batch. Returns that first token. `runner`: another session of the same model to run
        the call on (see `Engine.sibling`); default, the batch's own engine."""
        return self.add_group([request_id], prompt_ids, [params], runner)[0]

    def add_group(
        self,
        request_ids: Sequence[str],
        prompt_ids: Sequence[int],
        params: Sequence[SamplingParams],
        runner: BatchRunner | None = None,
    ) -> list[StepOutput]:
        """Several sequences of one prompt (`n` choices): ONE prefill, whose KV cache each sequence
        then gets a copy of; sequence i samples with `params[i]` (its own seed, grammar state and
        penalties). Returns each sequence's first token, in order."""
        meta = self.engine.metadata
        prompt_len = len(prompt_ids)
        if prompt_len == 0:
            raise EngineError("empty prompt: send at least one token")
        if prompt_len > meta.max_context:
            raise EngineError(f"prompt has {prompt_len} tokens; this model's context is {meta.max_context}")
        running = {s.request_id for s in self.seqs}
        if len(set(request_ids)) != len(request_ids) or running & set(request_ids):
            raise EngineError(f"request ids {list(request_ids)} are already running")
        ids = np.asarray([prompt_ids], dtype=np.int64)
        if ids.min() < 0 or ids.max() >= meta.vocab_size:
            raise EngineError(f"token ids must be in [0, {meta.vocab_size})")
        states = [self._new_state(rid, p, prompt_ids) for rid, p in zip(request_ids, params, strict=True)]
        last_logits, present = (runner or self.engine).prefill(prompt_ids)
        processed = apply_processors(last_logits[None, :], [s.settings for s in states])[0]
        outs = []
        for state in states:
            out = self._choose(state, processed)
            if not out.finished:
                self._join_cache(present, prompt_len)
                self.seqs.append(state)
            outs.append(out)
        return outs

    def _new_state(self, request_id: str, params: SamplingParams, prompt_ids: Sequence[int]) -> _SeqState:
        meta = self.engine.metadata
        if any(not 0 <= t < meta.vocab_size for t in params.stop_token_ids):
            raise EngineError(f"stop token ids must be in [0, {meta.vocab_size})")
        if any(not 0 <= t < meta.vocab_size for t, _ in params.logit_bias):
            raise EngineError(f"logit_bias token ids must be in [0, {meta.vocab_size})")
        stop = set(params.stop_token_ids)
        if not params.ignore_eos:
            stop |= set(meta.eos_token_ids)
        guide = self.engine.guides.guide(params.guide_type, params.guide) if params.guide_type else None
        return _SeqState(
            request_id,
            params,
            Sampler(params),
            len(prompt_ids),
            0,
            stop_ids=frozenset(stop),
            settings=RowSettings.of(params, prompt_ids, meta.vocab_size),
            guide=guide,
        )

    def _choose(
        self, s: _SeqState, row: np.ndarray, mask: np.ndarray | Exception | None = None
    ) -> StepOutput:
        """Sample `s`'s next token from its processed logits row and advance its state; a failure
        (non-finite logits, a grammar that allows nothing) is this sequence's 'error' output. `mask`:
        the grammar's mask when already computed (or the error computing it raised)."""
        try:
            if isinstance(mask, Exception):
                raise ValueError(f"the grammar's mask failed: {mask}")
            allowed = mask if mask is not None else s.guide.allowed() if s.guide is not None else None
            tok = s.sampler(row, allowed)
            if s.guide is not None:
                s.guide.consume(tok)
        except (ValueError, EngineError) as exc:  # this row only: the others go on
            return StepOutput(s.request_id, -1, True, "error", error=str(exc))
        logprob: float | None = None
        top_ids: tuple[int, ...] = ()
        top_lp: tuple[float, ...] = ()
        if s.params.wants_logprobs:
            logprob, top_ids, top_lp = token_logprobs(row, tok, s.params.top_logprobs)
        if s.settings is not None and s.settings.history is not None:
            s.settings.history.add(tok)
        s.generated += 1
        s.last_token = tok
        finished, reason, is_stop = self._finish(s, tok)
        return StepOutput(s.request_id, tok, finished, reason, is_stop, None, logprob, top_ids, top_lp)

    def remove(self, request_id: str) -> bool:
        """Drop a sequence (finished or cancelled). Returns False if it was not in the batch."""
        keep = [i for i, s in enumerate(self.seqs) if s.request_id != request_id]
        if len(keep) == len(self.seqs):
            return False
        self._keep(keep)
        return True

    def _keep(self, keep: list[int]) -> None:
        self.seqs = [self.seqs[i] for i in keep]
        self._keep_cache(keep)

    def step(self, runner: BatchRunner | None = None) -> list[StepOutput]:
        """Advance every active sequence by one token in a single ORT call, on `runner` (another
        session of the same model, see `Engine.sibling`) or by default the batch's own engine.

        Finished sequences are removed from the batch automatically after this step. A sequence whose
        token cannot be chosen (non-finite logits) ends alone with finish_reason 'error'.
        """
        if not self.seqs:
            return []
        rows = len(self.seqs)
        input_ids = np.fromiter((s.last_token for s in self.seqs), dtype=np.int64, count=rows)[:, None]
        lengths = np.fromiter((s.length for s in self.seqs), dtype=np.int64, count=rows)
        # the grammar masks depend only on tokens already chosen: they are computed while the model runs
        # (llguidance releases the GIL), so constrained decoding costs little more than free decoding
        guided = [s.guide for s in self.seqs if s.guide is not None]
        masks = self._mask_pool().submit(_masks, guided) if guided else None
        try:
            logits = self._advance(input_ids, lengths, runner or self.engine)[:, -1]
        finally:
            done = masks.result() if masks is not None else []
        by_guide = dict(zip(map(id, guided), done, strict=True))
        processed = apply_processors(logits, [s.settings for s in self.seqs])
        outs: list[StepOutput] = []
        for i, s in enumerate(self.seqs):
            s.length += 1
            outs.append(self._choose(s, processed[i], by_guide.get(id(s.guide))))
        if any(o.finished for o in outs):  # all that finished leave at once: one cache re-stack
            self._keep([i for i, o in enumerate(outs) if not o.finished])
        return outs

    # ---- the cache layout (subclasses) ------------------------------------------------------
    def _join_cache(self, present: list[np.ndarray], length: int) -> None:
        """Append a prefilled sequence's KV ([1, H, length, D] per tensor) as the last row."""
        raise NotImplementedError

    def _keep_cache(self, keep: list[int]) -> None:
        """Keep only these rows (in this order); `self.seqs` is already filtered."""
        raise NotImplementedError

    def _advance(self, input_ids: np.ndarray, lengths: np.ndarray, runner: BatchRunner) -> np.ndarray:
        """One decode call: each row's next token at position lengths[b]. Returns logits [B, 1, V]."""
        raise NotImplementedError


class LeftPaddedBatch(DecodeBatch):
    """For MultiHeadAttention and plain attention graphs: one stacked KV cache [B, kv_heads, L, head_dim]
    per layer, left-padded: sequence b's tokens occupy the last `length_b` columns and `attention_mask`
    zeros the padding; each sequence gets its own position_ids. Joining and leaving re-stack the cache;
    plain steps pass ORT's present tensors straight back as the next past (no copy)."""

    def __init__(self, engine: BatchRunner) -> None:
        super().__init__(engine)
        self.past: list[Any] = []  # 2*num_layers arrays/OrtValues [B, H, L, D]
        self.width = 0  # L

    def _join_cache(self, present: list[Any], length: int) -> None:
        if not self.seqs:
            self.past, self.width = list(present), length
            return
        width = max(self.width, length)
        kv = self.engine.kv
        self.past = [kv.stack(o, p, width, left=True) for o, p in zip(self.past, present, strict=True)]
        self.width = width

    def _keep_cache(self, keep: list[int]) -> None:
        if not self.seqs:
            self.past, self.width = [], 0
            return
        width = max(s.length for s in self.seqs)
        cut = self.width - width  # columns that only the removed sequences used
        self.past = [self.engine.kv.select(p, keep, cut, width) for p in self.past]
        self.width = width

    def _advance(self, input_ids: np.ndarray, lengths: np.ndarray, runner: BatchRunner) -> np.ndarray:
        rows, width = len(lengths), self.width
        mask = np.ones((rows, width + 1), dtype=np.int64)
        if rows > 1:
            cols = np.arange(width)[None, :]
            mask[:, :width] = cols >= (width - lengths)[:, None]
        logits, present = runner.forward(input_ids, mask, lengths[:, None], self.past)
        self.past, self.width = present, width + 1
        return logits


class RightPaddedBatch(DecodeBatch):
    """For GroupQueryAttention graphs (see model_repo/gqa.py): one KV buffer [B, kv_heads, capacity,
    head_dim] per tensor, right-padded: sequence b's tokens occupy columns 0..length_b-1. A step binds
    each buffer as both past and present, so the attention op writes the new token's key/value into
    column length_b in place: a step copies no cache at all. The capacity grows in CAPACITY_STEP
    columns; joining and leaving copy the buffers once."""

    CAPACITY_STEP = 64

    def __init__(self, engine: BatchRunner) -> None:
        super().__init__(engine)
        # 2*num_layers buffers [B, H, capacity, D]: numpy arrays, or OrtValues on the engine's device
        self.cache: list[Any] = []
        # (session, cache list, its IO binding): reused while both stay; every cache change makes a new list
        self._bound: tuple[BatchRunner, list[Any], Any] | None = None
        self._capacity = 0

    @property
    def capacity(self) -> int:
        """Columns of the cache buffers (0 while the batch is empty)."""
        return self._capacity if self.cache else 0

    def _capacity_for(self, columns: int) -> int:
        step = self.CAPACITY_STEP
        return min(-(-columns // step) * step, self.engine.metadata.max_context)

    def _join_cache(self, present: list[Any], length: int) -> None:
        cap = max(self.capacity, self._capacity_for(max([length, *(s.length for s in self.seqs)]) + 1))
        kv = self.engine.kv
        if self.cache:
            self.cache = [kv.stack(c, p, cap, left=False) for c, p in zip(self.cache, present, strict=True)]
        else:
            self.cache = [kv.select(p, [0], 0, cap) for p in present]
        self._capacity = cap

    def _keep_cache(self, keep: list[int]) -> None:
        # the buffer shrinks to what the remaining rows need: a long answer that ends frees its memory
        cap = self._capacity_for(max((s.length for s in self.seqs), default=0) + 1)
        self.cache = [self.engine.kv.select(c, keep, 0, cap) for c in self.cache] if keep else []
        self._capacity = cap
        self._bound = None  # the old binding held the old buffers

    def _advance(self, input_ids: np.ndarray, lengths: np.ndarray, runner: BatchRunner) -> np.ndarray:
        need = int(lengths.max()) + 1
        if need > self.capacity:
            cap = self._capacity_for(need)
            rows = list(range(len(lengths)))
            self.cache = [self.engine.kv.select(c, rows, 0, cap) for c in self.cache]
            self._capacity = cap
        # ones over 0..length_b (the new token included): the graph derives each row's length from it
        mask = (np.arange(self.capacity)[None, :] <= lengths[:, None]).astype(np.int64)
        bound = self._bound
        if bound is None or bound[0] is not runner or bound[1] is not self.cache:
            bound = self._bound = (runner, self.cache, runner.bind_cache(self.cache))
        return runner.forward_in_place(input_ids, mask, lengths[:, None], self.cache, bound[2])


def _masks(guides: list[Guide]) -> list[np.ndarray | Exception]:
    """Each guide's next-token mask, or the error computing it raised (that sequence alone fails)."""
    out: list[np.ndarray | Exception] = []
    for guide in guides:
        try:
            out.append(guide.allowed())
        except Exception as exc:
            out.append(exc)
    return out


def to_numpy(value: Any) -> np.ndarray:
    """`value` as a numpy array (an onnxruntime OrtValue is copied to one; an array is returned as is)."""
    return value if isinstance(value, np.ndarray) else value.numpy()
