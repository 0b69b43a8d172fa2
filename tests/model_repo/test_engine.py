"""The in-process onnxruntime engine: batching, sampling, stopping and streaming text."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from model_repo.engine import (
    LOGITS_TO_KEEP,
    Engine,
    EngineError,
    GenerationMetadata,
    IncrementalDetokenizer,
    LeftPaddedBatch,
    RightPaddedBatch,
    Sampler,
    SamplingParams,
    TextStream,
    _last,
    available_providers,
    cgroup_cpu_quota,
    usable_cpus,
)


def _drain(batch: object, outs: dict[str, list[int]]) -> None:
    while len(batch):  # type: ignore[arg-type]
        for o in batch.step():  # type: ignore[attr-defined]
            outs[o.request_id].append(o.token_id)


def test_cpu_provider_is_always_last_and_available() -> None:
    provs = available_providers()
    assert provs[-1] == "CPUExecutionProvider"


def test_cgroup_cpu_quota_reads_v2_groups_and_their_parents_then_v1(tmp_path: Path) -> None:
    """A container's CPU limit decides how many threads onnxruntime gets, not the node's core count."""
    assert cgroup_cpu_quota(tmp_path, own="") is None  # no cgroup files: no limit known
    pod = tmp_path / "kubepods" / "pod1"
    pod.mkdir(parents=True)
    (tmp_path / "cpu.max").write_text("max 100000\n")
    (pod / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cpu_quota(tmp_path, own="/kubepods/pod1") == 1.5
    (pod / "cpu.max").write_text("max 100000\n")
    (tmp_path / "kubepods" / "cpu.max").write_text("400000 100000\n")  # the parent's quota binds
    assert cgroup_cpu_quota(tmp_path, own="/kubepods/pod1") == 4.0
    (tmp_path / "kubepods" / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_quota(tmp_path, own="/kubepods/pod1") is None
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_quota(v1, own="") is None
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("300000\n")
    assert cgroup_cpu_quota(v1, own="") == 3.0


def test_usable_cpus_never_exceeds_the_quota_nor_the_affinity_mask(tmp_path: Path) -> None:
    import os

    mask = len(os.sched_getaffinity(0))
    (tmp_path / "cpu.max").write_text("50000 100000\n")  # half a CPU still gets one thread
    assert usable_cpus(tmp_path) == 1
    (tmp_path / "cpu.max").write_text(f"{(mask + 3) * 100000} 100000\n")
    assert usable_cpus(tmp_path) == mask
    assert usable_cpus(tmp_path / "nowhere") == mask


def test_metadata_round_trips_and_rejects_missing_file(tmp_path: Path, tiny_engine: Engine) -> None:
    tiny_engine.metadata.save(tmp_path)
    assert GenerationMetadata.load(tmp_path) == tiny_engine.metadata
    with pytest.raises(EngineError, match="not found"):
        GenerationMetadata.load(tmp_path / "nowhere")


def test_load_rejects_incomplete_directory(tmp_path: Path, tiny_engine: Engine) -> None:
    tiny_engine.metadata.save(tmp_path)
    with pytest.raises(EngineError, match="incomplete"):
        Engine.load(tmp_path)


@pytest.fixture(params=["llama-gqa-right-padded", "gpt2-plain-left-padded"])
def any_engine(request: pytest.FixtureRequest, tiny_gpt2_export: Path) -> Engine:
    """Both batch layouts: GroupQueryAttention (right-padded, in place) and plain attention (left)."""
    if request.param.startswith("llama"):
        engine: Engine = request.getfixturevalue("tiny_engine")
        assert isinstance(engine.new_batch(), RightPaddedBatch)
    else:
        engine = Engine.load(tiny_gpt2_export, num_threads=1)
        assert isinstance(engine.new_batch(), LeftPaddedBatch)
    return engine


def test_batched_step_equals_each_sequence_alone(any_engine: Engine) -> None:
    """Sequences with different prompt lengths that join at different times give exactly the tokens
    they give alone: padding, masks and per-sequence positions are right."""
    tiny_engine = any_engine
    prompts = [
        tiny_engine.encode(t)
        for t in ("hello world how are you", "the", "quick brown fox jumps over a lazy dog")
    ]
    alone = [tiny_engine.greedy_ids(p, 12) for p in prompts]
    params = SamplingParams(max_tokens=12, ignore_eos=True)
    batch = tiny_engine.new_batch()
    outs: dict[str, list[int]] = {"a": [], "b": [], "c": []}
    outs["a"].append(batch.add("a", prompts[0], params).token_id)
    for _ in range(3):
        for o in batch.step():
            outs[o.request_id].append(o.token_id)
    outs["b"].append(batch.add("b", prompts[1], params).token_id)
    outs["c"].append(batch.add("c", prompts[2], params).token_id)
    assert len(batch) == 3
    _drain(batch, outs)
    assert [outs["a"], outs["b"], outs["c"]] == alone


def test_a_batch_moves_between_sessions_of_the_same_model_without_changing_a_token(
    any_engine: Engine,
) -> None:
    """`Engine.sibling` opens another session (own threads, own prefix cache) over the same files; a
    batch's prefill and steps may run on either, since the KV cache is the batch's plain memory."""
    sibling = any_engine.sibling(1)
    assert sibling.session is not any_engine.session and sibling.tokenizer is any_engine.tokenizer
    assert sibling.num_threads == 1 and sibling.metadata == any_engine.metadata
    prompts = [any_engine.encode(t) for t in ("hello world how are you", "quick brown fox")]
    alone = [any_engine.greedy_ids(p, 10) for p in prompts]
    params = SamplingParams(max_tokens=10, ignore_eos=True)
    batch = any_engine.new_batch()
    outs: dict[str, list[int]] = {"a": [], "b": []}
    outs["a"].append(batch.add("a", prompts[0], params, sibling).token_id)
    outs["b"].append(batch.add("b", prompts[1], params).token_id)
    turn = 0
    while len(batch):
        turn += 1
        for o in batch.step(sibling if turn % 2 else None):
            outs[o.request_id].append(o.token_id)
    assert [outs["a"], outs["b"]] == alone


def test_a_batch_binds_its_cache_once_and_again_only_when_the_cache_changes(tiny_engine: Engine) -> None:
    """Binding every cache tensor costs ~0.6 ms; steps over an unchanged cache reuse the binding, and a
    join, a leave or another session binds afresh (a stale binding would write into freed buffers)."""
    ids = [tiny_engine.encode(t) for t in ("hello world", "quick brown fox", "a lazy dog")]
    alone = [tiny_engine.greedy_ids(p, 8) for p in ids]
    params = SamplingParams(max_tokens=8, ignore_eos=True)
    batch = tiny_engine.new_batch()
    assert isinstance(batch, RightPaddedBatch)
    outs: dict[str, list[int]] = {"a": [], "b": [], "c": []}
    outs["a"].append(batch.add("a", ids[0], params).token_id)
    outs["b"].append(batch.add("b", ids[1], params).token_id)
    seen = []
    for runner in (None, None, tiny_engine.sibling(1)):
        for o in batch.step(runner):
            outs[o.request_id].append(o.token_id)
        assert batch._bound is not None
        seen.append(batch._bound[2])
    assert seen[0] is seen[1] and seen[2] is not seen[1]
    outs["c"].append(batch.add("c", ids[2], params).token_id)
    for o in batch.step():
        outs[o.request_id].append(o.token_id)
    assert batch._bound is not None and batch._bound[2] is not seen[2]
    _drain(batch, outs)
    assert batch._bound is None  # the emptied batch holds no buffers through a binding
    assert [outs["a"], outs["b"], outs["c"]] == alone


def test_sibling_needs_an_engine_opened_from_a_directory(tiny_engine: Engine) -> None:
    bare = Engine(tiny_engine.model_dir, tiny_engine.metadata, tiny_engine.session, tiny_engine.tokenizer)
    with pytest.raises(EngineError, match=r"Engine\.load"):
        bare.sibling(1)


def test_removing_a_sequence_mid_batch_keeps_the_others_exact(any_engine: Engine) -> None:
    tiny_engine = any_engine
    prompts = [tiny_engine.encode(t) for t in ("a lazy dog", "model servers stream tokens to clients")]
    alone = tiny_engine.greedy_ids(prompts[0], 10)
    params = SamplingParams(max_tokens=10, ignore_eos=True)
    batch = tiny_engine.new_batch()
    outs: dict[str, list[int]] = {"keep": [], "drop": []}
    outs["keep"].append(batch.add("keep", prompts[0], params).token_id)
    outs["drop"].append(batch.add("drop", prompts[1], params).token_id)
    for o in batch.step():
        outs[o.request_id].append(o.token_id)
    assert batch.remove("drop") and not batch.remove("drop")
    assert batch.request_ids == ["keep"]
    _drain(batch, outs)
    assert outs["keep"] == alone


def test_max_tokens_and_eos_stop_sequences(tiny_engine: Engine) -> None:
    ids = tiny_engine.encode("hello")
    toks = list(tiny_engine.generate(ids, SamplingParams(max_tokens=5, ignore_eos=True)))
    assert len(toks) == 5 and toks[-1].finished and toks[-1].finish_reason == "length"
    first = toks[0].token_id
    stopped = list(tiny_engine.generate(ids, SamplingParams(max_tokens=5, stop_token_ids=(first,))))
    assert len(stopped) == 1 and stopped[0].finish_reason == "stop" and stopped[0].text == ""


def test_seeded_sampling_is_reproducible_and_differs_from_greedy(tiny_engine: Engine) -> None:
    ids = tiny_engine.encode("the quick")
    p = SamplingParams(max_tokens=16, temperature=1.5, top_p=0.95, top_k=50, seed=7, ignore_eos=True)
    a = [t.token_id for t in tiny_engine.generate(ids, p)]
    b = [t.token_id for t in tiny_engine.generate(ids, p)]
    assert a == b
    assert a != tiny_engine.greedy_ids(ids, 16)


def test_sampler_respects_top_k_and_top_p() -> None:
    logits = np.array([5.0, 4.0, 3.0, -10.0, -10.0], dtype=np.float32)
    top2 = Sampler(SamplingParams(temperature=1.0, top_k=2, seed=0))
    assert {top2(logits) for _ in range(200)} <= {0, 1}
    nucleus = Sampler(SamplingParams(temperature=1.0, top_p=0.5, seed=0))
    assert {nucleus(logits) for _ in range(50)} == {0}
    assert Sampler(SamplingParams())(logits) == 0


@pytest.mark.parametrize(
    "kwargs", [{"max_tokens": 0}, {"temperature": -1.0}, {"top_p": 0.0}, {"top_p": 1.5}, {"top_k": -1}]
)
def test_bad_sampling_params_are_rejected(kwargs: dict[str, float]) -> None:
    with pytest.raises(EngineError):
        SamplingParams(**kwargs)  # type: ignore[arg-type]


def test_bad_prompts_are_rejected(tiny_engine: Engine) -> None:
    batch = tiny_engine.new_batch()
    with pytest.raises(EngineError, match="empty"):
        batch.add("x", [], SamplingParams())
    with pytest.raises(EngineError, match="token ids"):
        batch.add("x", [tiny_engine.metadata.vocab_size], SamplingParams())


def test_incremental_detokenizer_never_splits_a_character(tiny_engine: Engine) -> None:
    text = "Café naïve 東京 🙂 hello"
    ids = tiny_engine.encode(text)
    detok = IncrementalDetokenizer(tiny_engine.tokenizer)
    deltas = [detok.push(i) for i in ids] + [detok.flush()]
    assert "".join(deltas) == text
    assert all("\ufffd" not in d for d in deltas)


def test_text_stream_cuts_at_a_stop_string_spanning_tokens(tiny_engine: Engine) -> None:
    ids = tiny_engine.encode("hello world how are you")
    stream = TextStream(tiny_engine.tokenizer, stop=("how are",))
    out = ""
    for i in ids:
        out += stream.push(i)
        if stream.stopped:
            break
    assert stream.stopped and out == "hello world "


def test_generate_text_and_chat_template(tiny_engine: Engine) -> None:
    prompt = tiny_engine.apply_chat_template([{"role": "user", "content": "hi"}])
    assert prompt.endswith("<|im_start|>assistant\n") and prompt.count("<|im_start|>") == 3
    text = tiny_engine.generate_text(prompt, SamplingParams(max_tokens=8, ignore_eos=True))
    ids = tiny_engine.greedy_ids(tiny_engine.encode(prompt), 8)
    assert text == tiny_engine.decode(ids)


def test_chat_template_is_compiled_once_and_its_errors_are_engine_errors() -> None:
    """A chat request must not pay for compiling the template (~2.3 ms for SmolLM2's); a template
    that refuses the messages, or does not parse, is an EngineError naming the cause."""
    from model_repo.engine import _compiled_chat_template, render_chat_template

    template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    messages = [{"role": "user", "content": "hi"}]
    before = _compiled_chat_template.cache_info()
    first = render_chat_template(template, messages)
    second = render_chat_template(template, [{"role": "user", "content": "again"}])
    after = _compiled_chat_template.cache_info()
    assert (first, second) == ("[user] hi\n", "[user] again\n")
    assert (after.misses - before.misses, after.hits - before.hits) == (1, 1)
    refusing = "{{ raise_exception('only user messages, please') }}"
    with pytest.raises(EngineError, match="only user messages, please"):
        render_chat_template(refusing, messages)
    with pytest.raises(EngineError, match="chat template failed"):
        render_chat_template("{% for m in messages %}", messages)


def test_host_copy_path_used_for_gpu_providers_gives_the_same_tokens(tiny_llama_export: Path) -> None:
    """With a GPU provider the engine feeds numpy and reads host copies; results must not change."""
    engine = Engine.load(tiny_llama_export, num_threads=1)
    ids = engine.encode("hello world")
    expected = engine.greedy_ids(ids, 10)
    engine._cpu_only = False  # what a CUDA/TensorRT session selects
    assert engine.greedy_ids(ids, 10) == expected


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
    # An identical prompt reuses all but its last token (one token must run to give logits), and its
    # logits match a full prefill's.
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


def test_a_decode_step_writes_the_new_keys_into_the_batch_cache_in_place(tiny_engine: Engine) -> None:
    batch = tiny_engine.new_batch()
    assert isinstance(batch, RightPaddedBatch)
    params = SamplingParams(max_tokens=8, ignore_eos=True)
    batch.add("a", tiny_engine.encode("hello world"), params)
    batch.add("b", tiny_engine.encode("a somewhat longer prompt than the first"), params)
    lengths = [s.length for s in batch.seqs]
    arrays = list(batch.cache)
    assert all(not a[row, :, n:].any() for a in arrays for row, n in enumerate(lengths))
    batch.step()
    # the same arrays (no copy), each row's new key/value now in column length_b, nothing beyond it
    assert all(a is b for a, b in zip(batch.cache, arrays, strict=True))
    for a in arrays:
        for row, n in enumerate(lengths):
            assert a[row, :, n].any() and not a[row, :, n + 1 :].any()


def test_the_batch_cache_grows_past_its_capacity_and_stays_exact(
    tiny_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(RightPaddedBatch, "CAPACITY_STEP", 4)
    prompts = [tiny_engine.encode(t) for t in ("the cat", "a much longer prompt with many more words in it")]
    alone = [tiny_engine.greedy_ids(p, 20) for p in prompts]
    params = SamplingParams(max_tokens=20, ignore_eos=True)
    batch = tiny_engine.new_batch()
    outs: dict[str, list[int]] = {"a": [batch.add("a", prompts[0], params).token_id]}
    first_capacity = batch.capacity  # type: ignore[attr-defined]
    outs["b"] = [batch.add("b", prompts[1], params).token_id]
    _drain(batch, outs)
    assert [outs["a"], outs["b"]] == alone
    assert first_capacity % 4 == 0 and first_capacity < len(prompts[1])


def test_the_batch_cache_shrinks_when_a_long_sequence_leaves(
    tiny_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(RightPaddedBatch, "CAPACITY_STEP", 4)
    short, long = tiny_engine.encode("hi there"), tiny_engine.encode("a long prompt " * 8)
    alone = tiny_engine.greedy_ids(short, 10)
    batch = tiny_engine.new_batch()
    assert isinstance(batch, RightPaddedBatch)
    outs = {"short": [batch.add("short", short, SamplingParams(max_tokens=10, ignore_eos=True)).token_id]}
    batch.add("long", long, SamplingParams(max_tokens=2, ignore_eos=True))
    assert batch.capacity > len(long)
    for o in batch.step():  # the long one ends here and leaves
        if o.request_id == "short":
            outs["short"].append(o.token_id)
    assert batch.request_ids == ["short"] and batch.capacity < len(long)
    _drain(batch, outs)
    assert outs["short"] == alone
