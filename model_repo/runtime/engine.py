"""In-process onnxruntime generation engine for decoder-only LLMs exported by `model_repo.export`.

Used by `tritonform build` (gates, benchmark) and by the Triton python-backend model. No torch import:
the hot loop is numpy + onnxruntime only, so a Triton model instance stays small. The model directory
it opens is described in `contract.py`.

API in brief:
    engine = Engine.load(model_dir, num_threads=2)          # providers chosen by availability
    engine = Engine.load(model_dir, providers=provider_list("cuda", meta))   # fails unless CUDA runs it
    for tok in engine.generate("Hello", SamplingParams(max_tokens=32)): ...   # GeneratedToken
    text = engine.generate_text(prompt, params)
    batch = engine.new_batch()                               # continuous batching of independent sequences
    first = batch.add("req-1", prompt_ids, params)           # prefill (one ORT call), returns StepOutput
    outs = batch.step()                                      # ONE ORT call advances every active sequence
    batch.remove("req-1")                                    # cancel
    stream = TextStream(engine.tokenizer, stop=("\\n\\n",))  # text deltas, never split a UTF-8 character
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .batch import DecodeBatch, LeftPaddedBatch, RightPaddedBatch, StepOutput, to_numpy
from .contract import (
    KV_LAYOUT_RIGHT,
    LOGITS_TO_KEEP,
    TOKENIZER_FILE,
    EngineError,
    GenerationMetadata,
    past_names,
    present_names,
)
from .cpus import usable_cpus
from .guide import GuideCompiler
from .kv_store import ORT_CACHE_TYPES, DeviceKV, HostKV, KVStore
from .prefix_cache import PrefixCache, cache_bytes_from_env
from .providers import available_providers, check_providers, provider_name
from .q4_fusion import CpuOps, session_model
from .sampling import SamplingParams
from .text import TextStream

# Prompt-prefix KV reuse: a new prompt that shares at least PREFIX_MIN_TOKENS leading tokens with one seen
# before (a chat template's system prompt, a conversation's earlier turns) prefills only the rest. The
# cache (runtime/prefix_cache.py) keeps many prompts, at most PREFIX_MAX_TOKENS tokens each, within
# $TRITONFORM_PREFIX_CACHE_MB (~46 KB a token for SmolLM2-135M).
PREFIX_MIN_TOKENS = 8
PREFIX_MAX_TOKENS = 4096
# The last PREFIX_FRESH_TAIL prompt tokens always run through the prefill: a one-token tail runs on the
# decode kernels, whose logits differ from a full prefill's (up to 0.97 on the int4 build), so a
# repeated prompt would sample differently; tails of 2 or more tokens give bit-identical logits.
PREFIX_FRESH_TAIL = 2


@dataclass(frozen=True)
class GeneratedToken:
    """What `Engine.generate` yields: the token and the text it adds (may be '' while a char is split)."""

    token_id: int
    text: str
    finished: bool
    finish_reason: str | None


__all__ = ["Engine", "EngineError", "GeneratedToken", "available_providers"]


class Engine:
    """An onnxruntime session over one exported model plus its tokenizer and metadata."""

    def __init__(
        self,
        model_dir: Path,
        metadata: GenerationMetadata,
        session: Any,
        tokenizer: Any,
        num_threads: int = 0,
        session_args: tuple[Path, list[Any], bool, bool] | None = None,
        guides: GuideCompiler | None = None,
        prefix_cache: PrefixCache | None = None,
        io_binding: bool | None = None,
        cpu_ops: CpuOps | None = None,
    ) -> None:
        """`num_threads`: the session's intra-op threads (0: not known); `session_args` (the onnx path,
        the repository's or the fused graph's, providers, allow_spinning, spin_only_in_runs): how to open
        another session of the model, for `sibling()`, with `cpu_ops.library` registered; `cpu_ops`:
        whether the session runs tritonform's CPU operators (runtime/q4_fusion.py);
        `guides`: the grammar compiler to share (siblings share their parent's); `prefix_cache`: a
        cache to share (siblings share their engine's), default a new one; `io_binding`: keep the KV
        cache in OrtValues on the session's device and run every call through IO binding (the GPU path);
        None: when the session's first provider is not the CPU's."""
        self.model_dir = Path(model_dir)
        self.metadata = metadata
        self.cpu_ops = cpu_ops or CpuOps(None, "", 0, "off (session opened by its caller)")
        self.session = session
        self.tokenizer = tokenizer
        self._past_names = past_names(metadata.num_layers)
        self._present_names = present_names(metadata.num_layers)
        self._output_names = ["logits"] + [n for pair in self._present_names for n in pair]
        self._flat_past_names = [n for pair in self._past_names for n in pair]
        inputs = {i.name for i in session.get_inputs()}
        missing = {"input_ids", "attention_mask", "position_ids", self._past_names[0][0]} - inputs
        if missing:
            raise EngineError(f"{model_dir}: ONNX model lacks inputs {sorted(missing)}; rebuild it")
        cache_type = next(i.type for i in session.get_inputs() if i.name == self._past_names[0][0])
        if cache_type not in ORT_CACHE_TYPES:
            raise EngineError(f"{model_dir}: KV cache of type {cache_type} is not supported; rebuild it")
        self._float, dtype_name = ORT_CACHE_TYPES[cache_type]
        self._positions_input = LOGITS_TO_KEEP in inputs
        # The logits' width and element type when the graph states them: `forward_in_place` then binds
        # a numpy array of its own as the output and reads it directly (fetching the binding's outputs
        # wraps all ~60 KV tensors too: 0.12 ms a step for SmolLM2-135M, ~1% of a single stream's step).
        logits_meta = next(o for o in session.get_outputs() if o.name == "logits")
        width = logits_meta.shape[-1] if logits_meta.shape else None
        numpy_type = ORT_CACHE_TYPES.get(logits_meta.type, (None, ""))[0]  # float32 or float16
        self._logits_out = (width, numpy_type) if isinstance(width, int) and numpy_type else None
        running = list(session.get_providers())
        self._cpu_only = running[:1] == ["CPUExecutionProvider"]
        self.device_bound = (not self._cpu_only) if io_binding is None else io_binding
        self.kv: KVStore = HostKV()
        if self.device_bound:
            device_type, device_id = _device_of(session)
            provs = session_args[1] if session_args else running
            self.kv = DeviceKV(dtype_name, provs, device_type, device_id)
        self._device = _device_of(session) if self.device_bound else ("cpu", 0)
        self.prefix_cache = (
            prefix_cache
            if prefix_cache is not None
            else PrefixCache(cache_bytes_from_env(), PREFIX_MIN_TOKENS, PREFIX_MAX_TOKENS)
        )
        self._session_args = session_args
        self.num_threads = num_threads
        self.guides = guides or GuideCompiler(tokenizer, metadata.vocab_size, metadata.eos_token_ids)
        self.prefills = 0  # prompts prefilled by this session (n choices of one prompt share one)

    # ---- loading -------------------------------------------------------------------------------
    @classmethod
    def load(
        cls,
        model_dir: str | Path,
        *,
        providers: Sequence[str] | None = None,
        num_threads: int | None = None,
        onnx_file: str | None = None,
        allow_spinning: bool = True,
        spin_only_in_runs: bool = False,
        io_binding: bool | None = None,
        cpu_ops: str | None = None,
    ) -> Engine:
        """Open a model directory. `num_threads` defaults to $TRITONFORM_NUM_THREADS or `usable_cpus()`.
        `allow_spinning=False` stops idle ORT threads from busy-waiting (better when other processes,
        e.g. Triton's server next to its python stub, need the same cores); `spin_only_in_runs` lets
        them busy-wait between the operators of a run but stops them as each run returns
        (onnxruntime's `session.force_spinning_stop`): a lone stream's step no longer waits for a
        sleeping thread at every operator, and nothing spins between steps. `providers` (see
        runtime/providers.py): the first one must be the one the session runs, else `EngineError` says
        why (onnxruntime would otherwise fall back to the CPU silently). `io_binding`: see `__init__`.
        `cpu_ops`: tritonform's CPU operator library (a path, or "off"; default $TRITONFORM_CPU_OPS):
        on the CPU provider its operators replace the 4-bit projections' standard nodes
        (runtime/q4_fusion.py; `engine.cpu_ops` says whether they run and why not)."""
        from tokenizers import Tokenizer

        model_dir = Path(model_dir)
        if not model_dir.is_dir():
            raise EngineError(f"model directory {model_dir} does not exist")
        meta = GenerationMetadata.load(model_dir)
        onnx_path = model_dir / (onnx_file or meta.onnx_file)
        tok_path = model_dir / TOKENIZER_FILE
        for p in (onnx_path, tok_path):
            if not p.is_file():
                raise EngineError(f"{p} not found: the model directory is incomplete; rebuild it")
        threads = num_threads or int(os.environ.get("TRITONFORM_NUM_THREADS", "0")) or usable_cpus()
        provs = list(providers) if providers else available_providers()
        source, ops = session_model(onnx_path, provider_name(provs[0]), cpu_ops)
        spin = (allow_spinning, spin_only_in_runs)
        try:
            session = _open_session(source, provs, threads, *spin, ops.library)
        except Exception as exc:  # onnxruntime refused the fused graph: run the repository's as it is
            if ops.library is None:
                raise
            refused = f"off (onnxruntime refused the fused graph: {exc})"
            source, ops = onnx_path, CpuOps(None, ops.kernel, 0, refused)
            session = _open_session(source, provs, threads, *spin, None)
        check_providers(provs, list(session.get_providers()))
        tokenizer = Tokenizer.from_file(str(tok_path))
        return cls(
            model_dir,
            meta,
            session,
            tokenizer,
            threads,
            (source, provs, allow_spinning, spin_only_in_runs),
            io_binding=io_binding,
            cpu_ops=ops,
        )

    def sibling(self, num_threads: int) -> Engine:
        """Another onnxruntime session over the same model, with `num_threads` threads, sharing this
        engine's tokenizer, metadata and prefix cache (a prompt prefilled on one lane serves the
        others). Sequences can move between the two:
        a batch's KV cache is plain memory that any session of the model can advance (see
        `DecodeBatch.step`). Costs the model's weights once more in memory."""
        if self._session_args is None:
            raise EngineError("sibling() needs an engine opened with Engine.load")
        source, provs, allow_spinning, spin_only_in_runs = self._session_args
        library = self.cpu_ops.library
        session = _open_session(source, provs, num_threads, allow_spinning, spin_only_in_runs, library)
        return Engine(
            self.model_dir,
            self.metadata,
            session,
            self.tokenizer,
            num_threads,
            self._session_args,
            self.guides,
            self.prefix_cache,
            io_binding=self.device_bound,
            cpu_ops=self.cpu_ops,
        )

    @property
    def providers(self) -> list[str]:
        """The session's execution providers, in the order onnxruntime uses them."""
        return list(self.session.get_providers())

    # ---- text helpers --------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; special tokens written in the text (e.g. <|im_start|>) are recognised."""
        return list(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """The text of token `ids` (special tokens left out unless asked for)."""
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens))

    # ---- model calls ---------------------------------------------------------------------------
    def empty_past(self, batch: int = 1) -> list[np.ndarray]:
        """A cache of length 0 for `batch` rows (2 arrays per layer), the past of a first call."""
        meta = self.metadata
        shape = (batch, meta.num_kv_heads, 0, meta.head_dim)
        return [np.zeros(shape, dtype=self._float) for _ in range(2 * meta.num_layers)]

    def forward(
        self,
        input_ids: np.ndarray,
        attention_mask: np.ndarray,
        position_ids: np.ndarray,
        past: Sequence[Any],
        last_only: bool = False,
    ) -> tuple[np.ndarray, list[Any]]:
        """One ORT call. `past` items are numpy arrays or OrtValues (2 per layer, key then value).
        `last_only` computes logits for the last position only (a batch-1 prefill needs no other),
        which saves most of the vocabulary projection.

        Returns (logits [B,S,V] numpy, or [B,1,V] with `last_only`; present as OrtValues, which can be
        passed back without a copy).
        """
        width = input_ids.shape[1]
        extra: dict[str, np.ndarray] = {}
        if self._positions_input:
            keep = [width - 1] if last_only else range(width)
            extra[LOGITS_TO_KEEP] = np.fromiter(keep, dtype=np.int64)
        if self.device_bound:
            return self._forward_bound(input_ids, attention_mask, position_ids, extra, past, last_only)
        import onnxruntime as ort

        feeds: dict[str, Any] = {
            "input_ids": ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(input_ids, dtype=np.int64)),
            "attention_mask": ort.OrtValue.ortvalue_from_numpy(
                np.ascontiguousarray(attention_mask, dtype=np.int64)
            ),
            "position_ids": ort.OrtValue.ortvalue_from_numpy(
                np.ascontiguousarray(position_ids, dtype=np.int64)
            ),
        }
        for name, value in extra.items():
            feeds[name] = ort.OrtValue.ortvalue_from_numpy(value)
        for (kname, vname), i in zip(self._past_names, range(0, len(past), 2), strict=True):
            feeds[kname] = _as_ortvalue(past[i])
            feeds[vname] = _as_ortvalue(past[i + 1])
        outs = self.session.run_with_ort_values(self._output_names, feeds)
        return _last(outs[0].numpy(), last_only), list(outs[1:])

    def _forward_bound(
        self,
        input_ids: np.ndarray,
        attention_mask: np.ndarray,
        position_ids: np.ndarray,
        extra: dict[str, np.ndarray],
        past: Sequence[Any],
        last_only: bool,
    ) -> tuple[np.ndarray, list[Any]]:
        """`forward` through IO binding: the small integer inputs and any numpy past are copied in, the
        present tensors are written on the session's device and stay there, only the logits come back."""
        binding = self.session.io_binding()
        binding.bind_cpu_input("input_ids", np.ascontiguousarray(input_ids, dtype=np.int64))
        binding.bind_cpu_input("attention_mask", np.ascontiguousarray(attention_mask, dtype=np.int64))
        binding.bind_cpu_input("position_ids", np.ascontiguousarray(position_ids, dtype=np.int64))
        for name, value in extra.items():
            binding.bind_cpu_input(name, value)
        for name, value in zip(self._flat_past_names, past, strict=True):
            if isinstance(value, np.ndarray):
                binding.bind_cpu_input(name, np.ascontiguousarray(value, dtype=self._float))
            else:
                binding.bind_ortvalue_input(name, value)
        binding.bind_output("logits")  # host memory: sampling runs in numpy
        device_type, device_id = self._device
        for name in self._output_names[1:]:
            binding.bind_output(name, device_type, device_id)
        self.session.run_with_iobinding(binding)
        outs = binding.get_outputs()
        return _last(outs[0].numpy(), last_only), list(outs[1:])

    def forward_in_place(
        self,
        input_ids: np.ndarray,
        attention_mask: np.ndarray,
        position_ids: np.ndarray,
        cache: list[np.ndarray],
        binding: Any = None,
    ) -> np.ndarray:
        """One call over a right-padded cache (KV_LAYOUT_RIGHT): each `cache` array is bound as both the
        past and the present tensor, so GroupQueryAttention writes the new keys/values into it in place.
        `binding`: what `bind_cache(cache)` returned for this session and these very arrays, reused
        across steps (binding ~60 tensors costs ~0.6 ms a step); None binds afresh.
        Returns logits [B, S, V].
        """
        if binding is None:
            binding = self.bind_cache(cache)
        binding.bind_cpu_input("input_ids", np.ascontiguousarray(input_ids, dtype=np.int64))
        binding.bind_cpu_input("attention_mask", np.ascontiguousarray(attention_mask, dtype=np.int64))
        binding.bind_cpu_input("position_ids", np.ascontiguousarray(position_ids, dtype=np.int64))
        if self._positions_input:
            binding.bind_cpu_input(LOGITS_TO_KEEP, np.arange(input_ids.shape[1], dtype=np.int64))
        if self._logits_out is None:
            binding.bind_output("logits")  # a fresh buffer each call: the caller keeps the last logits
            self.session.run_with_iobinding(binding)
            return np.asarray(binding.get_outputs()[-1].numpy())  # logits were bound last
        width, numpy_type = self._logits_out
        logits = np.empty((input_ids.shape[0], input_ids.shape[1], width), numpy_type)  # fresh each call
        binding.bind_output("logits", "cpu", 0, numpy_type, list(logits.shape), logits.ctypes.data)
        self.session.run_with_iobinding(binding)
        return logits

    def bind_cache(self, cache: list[Any]) -> Any:
        """An IO binding of this session with each `cache` buffer (a numpy array, or an OrtValue on the
        session's device when `device_bound`) as past and present."""
        import onnxruntime as ort

        binding = self.session.io_binding()
        presents = self._output_names[1:]
        for past_name, present_name, buf in zip(self._flat_past_names, presents, cache, strict=True):
            # a numpy array is wrapped without a copy; an OrtValue is bound as it is
            value = ort.OrtValue.ortvalue_from_numpy(buf) if isinstance(buf, np.ndarray) else buf
            binding.bind_ortvalue_input(past_name, value)
            binding.bind_ortvalue_output(present_name, value)
        return binding

    def prefill(self, ids: Sequence[int]) -> tuple[np.ndarray, list[np.ndarray]]:
        """Batch-1 prefill of a prompt: (logits of its last position [V], present KV as numpy arrays).

        Reuses the KV of the leading tokens it shares with a prompt in the prefix cache (see
        PREFIX_MIN_TOKENS): causal attention makes those keys and values independent of what follows
        them. The logits are bit-identical to a prefill without reuse (see PREFIX_FRESH_TAIL).
        """
        self.prefills += 1
        length = len(ids)
        reuse, cached = self.prefix_cache.lookup(ids, length - PREFIX_FRESH_TAIL)
        past: list[Any] = cached if reuse else self.empty_past(1)
        logits, present = self.forward(
            np.asarray([ids[reuse:]], dtype=np.int64),
            np.ones((1, length), dtype=np.int64),
            np.arange(reuse, length, dtype=np.int64)[None, :],
            past,
            last_only=True,
        )
        if not self.device_bound:
            kv = [to_numpy(p) for p in present]
            self.prefix_cache.store(ids, kv)
            return logits[0, -1], kv
        if self.prefix_cache.max_bytes > 0:  # the prefix cache keeps host copies; the batch the device's
            self.prefix_cache.store(ids, [to_numpy(p) for p in present])
        return logits[0, -1], present

    def prompt_logits(self, ids: Sequence[int]) -> np.ndarray:
        """Logits [len(ids), V] for every position of one sequence (teacher forcing, used by gates)."""
        length = len(ids)
        logits, _ = self.forward(
            np.asarray([ids], dtype=np.int64),
            np.ones((1, length), dtype=np.int64),
            np.arange(length, dtype=np.int64)[None, :],
            self.empty_past(1),
        )
        return logits[0]

    def decode_logits(self, ids: Sequence[int], prefix_len: int) -> np.ndarray:
        """Logits for positions prefix_len-1 .. len(ids)-2, taken the way generation runs: one prefill
        of the first `prefix_len` tokens, then one decode step per remaining token (teacher forcing).

        The decode path (one token against a KV cache) uses other kernels than a prefill, so gates
        must check it too: a model can prefill correctly and still decode wrongly.
        """
        if not 1 <= prefix_len < len(ids):
            raise ValueError("prefix_len must leave at least one token to decode")
        logits, past = self.forward(
            np.asarray([ids[:prefix_len]], dtype=np.int64),
            np.ones((1, prefix_len), dtype=np.int64),
            np.arange(prefix_len, dtype=np.int64)[None, :],
            self.empty_past(1),
            last_only=True,
        )
        rows = [logits[0, -1]]
        for pos in range(prefix_len, len(ids) - 1):
            logits, past = self.forward(
                np.asarray([[ids[pos]]], dtype=np.int64),
                np.ones((1, pos + 1), dtype=np.int64),
                np.asarray([[pos]], dtype=np.int64),
                past,
            )
            rows.append(logits[0, -1])
        return np.stack(rows)

    # ---- generation ----------------------------------------------------------------------------
    def new_batch(self) -> DecodeBatch:
        """A batch of independent sequences advanced together (see `DecodeBatch`)."""
        if self.metadata.kv_layout == KV_LAYOUT_RIGHT:
            return RightPaddedBatch(self)
        return LeftPaddedBatch(self)

    def generate(
        self, prompt: str | Sequence[int], params: SamplingParams | None = None
    ) -> Iterator[GeneratedToken]:
        """Single-stream generation: yields tokens with their text deltas until eos, a stop string or
        max_tokens. `prompt` is text (encoded as is: apply the chat template first for chat) or token ids."""
        params = params or SamplingParams()
        ids = self.encode(prompt) if isinstance(prompt, str) else [int(t) for t in prompt]
        batch = self.new_batch()
        stream = TextStream(self.tokenizer, stop=params.stop)
        out: StepOutput | None = batch.add("0", ids, params)
        while out is not None:
            if out.error is not None:
                batch.remove("0")
                raise EngineError(f"generation failed: {out.error}")
            text = "" if out.is_stop_token else stream.push(out.token_id)
            finished, reason = out.finished, out.finish_reason
            if stream.stopped:
                finished, reason = True, "stop"
            if finished:
                text += stream.flush()
            yield GeneratedToken(out.token_id, text, finished, reason)
            if finished:
                batch.remove("0")
                return
            steps = batch.step()
            out = steps[0] if steps else None

    def generate_text(self, prompt: str | Sequence[int], params: SamplingParams | None = None) -> str:
        """The whole answer of `generate` as one string."""
        return "".join(t.text for t in self.generate(prompt, params))

    def greedy_ids(self, ids: Sequence[int], max_tokens: int) -> list[int]:
        """Greedy continuation token ids (eos ignored), for parity checks."""
        params = SamplingParams(max_tokens=max_tokens, ignore_eos=True)
        return [t.token_id for t in self.generate(ids, params)]


def _open_session(
    model: Path,
    providers: list[Any],
    threads: int,
    allow_spinning: bool,
    spin_only_in_runs: bool,
    library: str | None = None,
) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if library is not None:
        opts.register_custom_ops_library(library)
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # The build already wrote an optimised graph; ORT_ENABLE_ALL is cheap and adds CPU-only fusions.
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if allow_spinning else "0")
    if allow_spinning and spin_only_in_runs:
        opts.add_session_config_entry("session.force_spinning_stop", "1")
    return ort.InferenceSession(str(model), sess_options=opts, providers=providers)


def _device_of(session: Any) -> tuple[str, int]:
    """(device type, id) where the session's first provider keeps tensors: ("cuda", n) for CUDA and
    TensorRT, ("cpu", 0) for the CPU."""
    first = provider_name(session.get_providers()[0])
    if first in ("CUDAExecutionProvider", "TensorrtExecutionProvider"):
        options = session.get_provider_options().get(first, {})
        return "cuda", int(options.get("device_id", 0) or 0)
    return "cpu", 0


def _last(logits: np.ndarray, last_only: bool) -> np.ndarray:
    """Models built before `logits_to_keep` return every position: keep the last one as asked."""
    return logits[:, -1:] if last_only and logits.shape[1] > 1 else logits


def _as_ortvalue(value: Any) -> Any:
    import onnxruntime as ort

    if isinstance(value, np.ndarray):
        return ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(value))
    return value
