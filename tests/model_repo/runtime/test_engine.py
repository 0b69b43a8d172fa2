"""The in-process onnxruntime engine: loading, sessions, prefill, generation."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from model_repo.chat_template import apply_chat_template
from model_repo.runtime.contract import KV_LAYOUT_RIGHT, LOGITS_TO_KEEP, EngineError
from model_repo.runtime.engine import (
    PREFIX_FRESH_TAIL,
    PREFIX_MIN_TOKENS,
    Engine,
    _last,
    available_providers,
)
from model_repo.runtime.sampling import SamplingParams


def test_cpu_provider_is_always_last_and_available() -> None:
    provs = available_providers()
    assert provs[-1] == "CPUExecutionProvider"


def test_load_rejects_incomplete_directory(tmp_path: Path, tiny_engine: Engine) -> None:
    tiny_engine.metadata.save(tmp_path)
    with pytest.raises(EngineError, match="incomplete"):
        Engine.load(tmp_path)


def test_sibling_needs_an_engine_opened_from_a_directory(tiny_engine: Engine) -> None:
    bare = Engine(tiny_engine.model_dir, tiny_engine.metadata, tiny_engine.session, tiny_engine.tokenizer)
    with pytest.raises(EngineError, match=r"Engine\.load"):
        bare.sibling(1)


def test_spinning_only_inside_runs_reaches_the_session_and_its_siblings(tiny_engine: Engine) -> None:
    """spin_only_in_runs: onnxruntime's threads may busy-wait during a run and stop as it returns
    (its session.force_spinning_stop); a sibling session is opened the same way."""

    def entries(engine: Engine) -> tuple[str, str]:
        options = engine.session.get_session_options()
        return (
            options.get_session_config_entry("session.intra_op.allow_spinning"),
            options.get_session_config_entry("session.force_spinning_stop"),
        )

    engine = Engine.load(tiny_engine.model_dir, num_threads=2, allow_spinning=True, spin_only_in_runs=True)
    assert entries(engine) == ("1", "1") and entries(engine.sibling(1)) == ("1", "1")
    off = Engine.load(tiny_engine.model_dir, num_threads=2, allow_spinning=False, spin_only_in_runs=True)
    options = off.session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    with pytest.raises(RuntimeError, match="does not have"):  # not set: threads never spin anyway
        options.get_session_config_entry("session.force_spinning_stop")


def test_max_tokens_and_eos_stop_sequences(tiny_engine: Engine) -> None:
    ids = tiny_engine.encode("hello")
    toks = list(tiny_engine.generate(ids, SamplingParams(max_tokens=5, ignore_eos=True)))
    assert len(toks) == 5 and toks[-1].finished and toks[-1].finish_reason == "length"
    first = toks[0].token_id
    stopped = list(tiny_engine.generate(ids, SamplingParams(max_tokens=5, stop_token_ids=(first,))))
    assert len(stopped) == 1 and stopped[0].finish_reason == "stop" and stopped[0].text == ""


def test_generate_text_and_chat_template(tiny_engine: Engine) -> None:
    prompt = apply_chat_template(tiny_engine.metadata, [{"role": "user", "content": "hi"}])
    assert prompt.endswith("<|im_start|>assistant\n") and prompt.count("<|im_start|>") == 3
    text = tiny_engine.generate_text(prompt, SamplingParams(max_tokens=8, ignore_eos=True))
    ids = tiny_engine.greedy_ids(tiny_engine.encode(prompt), 8)
    assert text == tiny_engine.decode(ids)


def test_prompt_sharing_a_prefix_with_the_previous_one_prefills_only_the_rest(
    tiny_llama_export: Path,
) -> None:
    engine = Engine.load(tiny_llama_export, num_threads=1)
    fresh = Engine.load(tiny_llama_export, num_threads=1)
    system = engine.encode("you are a helpful assistant who answers briefly and well. ")
    assert len(system) >= 8
    first, second = system + engine.encode("hello world"), system + engine.encode("the quick brown fox")
    engine.greedy_ids(first, 4)

    calls: list[int] = []
    forward = engine.forward

    def counting(input_ids: np.ndarray, *args: object, **kwargs: object) -> object:
        calls.append(input_ids.shape[1])
        return forward(input_ids, *args, **kwargs)  # type: ignore[arg-type]

    engine.forward = counting  # type: ignore[method-assign]
    reused = engine.greedy_ids(second, 12)
    # The prefill ran over the new tail only (shared tokens come from the cache), then 1-token steps.
    assert calls[0] == len(second) - len(system)
    # ... and generates exactly what an engine without that cache generates.
    assert reused == fresh.greedy_ids(second, 12)


def test_prompts_with_little_in_common_prefill_in_full(tiny_engine: Engine) -> None:
    tiny_engine.greedy_ids(tiny_engine.encode("hello world and more words here"), 2)
    other = tiny_engine.encode("completely different text to start with")
    _, present = tiny_engine.prefill(other)
    assert present[0].shape[2] == len(other)
    # An identical prompt reuses all but its last two tokens (see PREFIX_FRESH_TAIL), and its logits
    # match a full prefill's.
    logits, _ = tiny_engine.prefill(other)
    np.testing.assert_allclose(logits, tiny_engine.prompt_logits(other)[-1], rtol=1e-4, atol=1e-4)


def test_a_prefill_projects_only_its_last_position_to_the_vocabulary(tiny_engine: Engine) -> None:
    ids = tiny_engine.encode("hello world and a few more words")
    n = len(ids)
    feeds = {
        "input_ids": np.asarray([ids], dtype=np.int64),
        "attention_mask": np.ones((1, n), dtype=np.int64),
        "position_ids": np.arange(n, dtype=np.int64)[None, :],
        LOGITS_TO_KEEP: np.asarray([n - 1], dtype=np.int64),
    }
    names = [
        f"past_key_values.{i}.{kind}"
        for i in range(tiny_engine.metadata.num_layers)
        for kind in ("key", "value")
    ]
    feeds.update(zip(names, tiny_engine.empty_past(1), strict=True))
    (logits,) = tiny_engine.session.run(["logits"], feeds)
    # The graph itself computed one row (not all n and then sliced) ...
    assert logits.shape == (1, 1, tiny_engine.metadata.vocab_size)
    # ... equal to the last row of a full teacher-forced pass, which the prefill uses.
    np.testing.assert_allclose(logits[0, 0], tiny_engine.prompt_logits(ids)[-1], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(tiny_engine.prefill(ids)[0], logits[0, 0], rtol=1e-4, atol=1e-4)


def test_models_built_without_logits_to_keep_still_give_the_last_row() -> None:
    full = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    np.testing.assert_array_equal(_last(full, last_only=True), full[:, -1:])
    assert _last(full, last_only=False) is full
    assert _last(full[:, -1:], last_only=True).shape == (2, 1, 4)


def test_a_repeated_prompt_gives_bit_identical_logits(tiny_llama_export: Path) -> None:
    """A prompt that reuses the cached prefix must sample exactly like a fresh one: with a one-token
    tail its logits came from the decode kernels and differed (4e-5 fp32, up to 0.97 int4)."""
    engine = Engine.load(tiny_llama_export, num_threads=1)
    ids = engine.encode("completely different text to start with and more words of text here")
    assert len(ids) > PREFIX_MIN_TOKENS + PREFIX_FRESH_TAIL
    fresh, _ = engine.prefill(ids)
    reused, _ = engine.prefill(ids)  # the cache holds this very prompt now
    assert np.array_equal(fresh, reused)
    longer = [*ids, *engine.encode(" and then some")]
    continued, _ = engine.prefill(longer)  # shares the whole previous prompt
    assert np.array_equal(continued, Engine.load(tiny_llama_export, num_threads=1).prefill(longer)[0])


def test_the_engine_uses_every_position_of_its_context(tiny_engine: Engine) -> None:
    """A sequence may fill positions 0..max_context-1: the token sampled from the last position's
    logits ends it (the engine used to stop one token earlier)."""
    context = 40
    small = Engine(
        tiny_engine.model_dir,
        replace(tiny_engine.metadata, max_context=context),
        tiny_engine.session,
        tiny_engine.tokenizer,
    )
    ids = tiny_engine.encode("completely different text to start with and more words of text here") * 2
    params = SamplingParams(max_tokens=10, ignore_eos=True)
    tokens = list(small.generate(ids[: context - 3], params))
    assert len(tokens) == 4 and tokens[-1].finish_reason == "length"
    assert tokens == list(
        tiny_engine.generate(ids[: context - 3], SamplingParams(max_tokens=4, ignore_eos=True))
    )
    whole = list(small.generate(ids[:context], params))
    assert len(whole) == 1 and whole[0].finish_reason == "length"
    with pytest.raises(EngineError, match="context is 40"):
        list(small.generate(ids[: context + 1], params))


def test_decode_steps_read_the_logits_from_an_array_of_their_own(tiny_engine: Engine) -> None:
    """A right-padded decode step binds a fresh numpy array as the logits output (no fetch of the
    binding's ~60 outputs); its tokens are those of the binding's own output buffer, and an earlier
    step's logits are never overwritten by a later one."""
    assert tiny_engine.metadata.kv_layout == KV_LAYOUT_RIGHT and tiny_engine._logits_out is not None
    fetched = Engine(tiny_engine.model_dir, tiny_engine.metadata, tiny_engine.session, tiny_engine.tokenizer)
    fetched._logits_out = None  # the binding's own buffer, fetched with every output

    def tokens(engine: Engine) -> list[list[int]]:
        batch = engine.new_batch()
        params = SamplingParams(max_tokens=6, ignore_eos=True)
        ids = {
            batch.add(str(i), engine.encode(text), params).request_id: [] for i, text in enumerate(PROMPTS)
        }
        while len(batch):
            for out in batch.step():
                ids[out.request_id].append(out.token_id)
        return list(ids.values())

    assert tokens(tiny_engine) == tokens(fetched)
    batch = tiny_engine.new_batch()
    batch.add("a", tiny_engine.encode(PROMPTS[0]), SamplingParams(max_tokens=4, ignore_eos=True))
    batch.step()
    _, cache, binding = batch._bound
    lengths = np.array([len(tiny_engine.encode(PROMPTS[0]))])

    def mask(length: int) -> np.ndarray:
        return (np.arange(batch.capacity)[None, :] <= length).astype(np.int64)

    first = tiny_engine.forward_in_place(np.array([[5]]), mask(lengths[0]), lengths[:, None], cache, binding)
    kept = first.copy()
    second = tiny_engine.forward_in_place(
        np.array([[7]]), mask(lengths[0] + 1), lengths[:, None] + 1, cache, binding
    )
    assert not np.shares_memory(first, second) and np.array_equal(first, kept)
    assert first.shape == (1, 1, tiny_engine._logits_out[0])


PROMPTS = ("the quick brown fox", "a completely different prompt of more words")


def test_a_4bit_model_runs_on_the_cpu_operators_as_on_its_standard_graph(
    tiny_llama_export: Path,
    tmp_path: Path,
    cpu_ops_library: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With $TRITONFORM_CPU_OPS naming the library, each 4-bit projection runs as one Q4OffsetMatMul
    (sibling sessions too) and the logits are the standard graph's to float rounding; "off" keeps the
    repository's graph."""
    import onnx

    from model_repo.quantize import quantize_model
    from model_repo.runtime.q4_fusion import CPU_OPS_ENV, VECTOR_KERNELS, library_kernel

    int4 = quantize_model(tiny_llama_export, tmp_path / "int4", "int4").model_dir
    monkeypatch.setenv("TRITONFORM_CACHE", str(tmp_path / "cache"))  # where the fused graph is kept
    monkeypatch.setenv(CPU_OPS_ENV, "off")
    standard = Engine.load(int4, providers=["CPUExecutionProvider"], num_threads=2)
    assert standard.cpu_ops.fused == 0 and standard.cpu_ops.state == f"off (${CPU_OPS_ENV}=off)"
    monkeypatch.setenv(CPU_OPS_ENV, cpu_ops_library)
    fused = Engine.load(int4, providers=["CPUExecutionProvider"], num_threads=2)
    if library_kernel(cpu_ops_library) not in VECTOR_KERNELS:
        assert fused.cpu_ops.fused == 0 and "AVX2" in fused.cpu_ops.state
        return
    layers = fused.metadata.num_layers
    assert fused.cpu_ops.fused == 4 * layers  # q/k/v merged, o, gate/up merged, down
    assert fused.sibling(1).cpu_ops == fused.cpu_ops
    assert fused._session_args is not None
    graph = fused._session_args[0]
    assert graph.is_relative_to(tmp_path / "cache" / "cpu-ops" / "graphs")  # the repository is untouched
    ops = [n.op_type for n in onnx.load(str(graph), load_external_data=False).graph.node]
    assert ops.count("Q4OffsetMatMul") == 4 * layers
    ids = fused.encode("The quick brown fox jumps over the lazy dog")
    want, got = standard.prompt_logits(ids), fused.prompt_logits(ids)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * float(np.abs(want).max()))
    assert fused.greedy_ids(ids, 8) == standard.greedy_ids(ids, 8)
