"""Decoding features' cost (issue 15): the engine before and after, and constrained vs free decoding.

    .venv/bin/python benchmarks/bench_decoding.py [--engine-dir DIR] [--baseline-ref main] [--tokens 64]

Side by side in one run, on the same model directory (default: the default model's repository that
`tritonform serve` built, under ${TRITONFORM_CACHE:-~/.cache/tritonform}/repositories/), greedy, eos ignored:

  1. before / after: decode tokens/s of `--baseline-ref`'s runtime (taken with `git archive`, imported
     as its own package) and of this checkout's runtime, plain requests (no new parameter), 1 and 8
     streams; after / before should be ~1.0 (the plain path skips every new step);
  2. constrained / free: a nested JSON schema (objects, arrays, enums, required) vs the same request
     unconstrained, 1 and 8 streams (both run exactly --tokens tokens: the schema needs more);
  3. mask cost per token on the model's vocabulary: llguidance (what the engine uses) and xgrammar,
     replaying the same constrained token sequence through each, for the schema of 2 and for the same
     schema with maxLength on its strings. xgrammar is not a project dependency:
     `pip install --no-deps xgrammar==0.2.9 apache-tvm-ffi==0.1.15.post2` (CPU masks need neither its
     torch nor its triton requirement); without it that row says so.

Each figure is the median of --rounds rounds, configurations interleaved within a round. Only decode
steps are timed (prefill excluded). The machine may be shared: read ratios, not absolute figures.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROMPT = "<|im_start|>user\nList ten people with their addresses as JSON.<|im_end|>\n<|im_start|>assistant\n"
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "address": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "zip": {"type": "string"}},
            "required": ["city", "zip"],
            "additionalProperties": False,
        },
        "role": {"enum": ["admin", "user", "guest"]},
        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 4},
    },
    "required": ["name", "age", "address", "role", "tags"],
    "additionalProperties": False,
}
SCHEMA = {
    "type": "object",
    "properties": {"people": {"type": "array", "items": PERSON, "minItems": 10}},
    "required": ["people"],
    "additionalProperties": False,
}
# the same with bounded strings: llguidance's vocabulary "slices" speed up masks inside unbounded strings
# only, so the first token of each bounded string costs a full vocabulary walk (measured below)
BOUNDED = json.loads(json.dumps(SCHEMA).replace('{"type": "string"}', '{"type": "string", "maxLength": 24}'))


def default_engine_dir() -> Path:
    """The default model's engine directory (built once and cached, as `tritonform serve` does); the
    newest repository in the cache may be another model (a fine-tune the tests built)."""
    from model_repo.build import build_default_repository
    from model_repo.manifest import engine_dir

    return engine_dir(build_default_repository(print), "llm")


def baseline_runtime(ref: str, scratch: Path) -> ModuleType:
    """`ref`'s model_repo/runtime, extracted with git archive and imported as package `baseline_runtime`."""
    try:
        data = subprocess.run(
            ["git", "-C", str(ROOT), "archive", ref, "model_repo/runtime"], capture_output=True, check=True
        ).stdout
    except subprocess.CalledProcessError as exc:
        raise SystemExit(f"git archive {ref}: {exc.stderr.decode().strip()}") from None
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(scratch, filter="data")
    folder = scratch / "model_repo" / "runtime"
    spec = importlib.util.spec_from_file_location(
        "baseline_runtime", folder / "__init__.py", submodule_search_locations=[str(folder)]
    )
    assert spec is not None and spec.loader is not None
    package = importlib.util.module_from_spec(spec)
    sys.modules["baseline_runtime"] = package
    spec.loader.exec_module(package)
    return package


def decode_rate(engine: Any, make_params: Callable[[], Any], streams: int) -> tuple[float, list[int]]:
    """Tokens/s over the decode steps of `streams` sequences of PROMPT (prefills not timed), and the
    first sequence's tokens."""
    ids = engine.encode(PROMPT)
    batch = engine.new_batch()
    first = [batch.add(str(i), ids, make_params()).token_id for i in range(streams)][:1]
    tokens, seconds = 0, 0.0
    while len(batch):
        start = time.perf_counter()
        outs = batch.step()
        seconds += time.perf_counter() - start
        tokens += len(outs)
        first += [o.token_id for o in outs if o.request_id == "0"]
    return tokens / seconds, first


def _summary(seconds: list[float]) -> str:
    return (
        f"mean {statistics.mean(seconds) * 1e6:6.0f} µs, median {statistics.median(seconds) * 1e6:5.0f} µs, "
        f"max {max(seconds) * 1e6:6.0f} µs over {len(seconds)} tokens"
    )


def xgrammar_mask_times(
    engine_dir: Path, vocab_size: int, eos: list[int], schema: dict, tokens: list[int]
) -> str:
    """xgrammar's mask time per token replaying `tokens` under `schema`, or why not."""
    try:
        import xgrammar as xgr
    except ImportError:
        return "not installed (see this script's docstring)"
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(tokenizer_file=str(engine_dir / "tokenizer.json"))
    info = xgr.TokenizerInfo.from_huggingface(hf, vocab_size=vocab_size, stop_token_ids=eos)
    matcher = xgr.GrammarMatcher(xgr.GrammarCompiler(info).compile_json_schema(json.dumps(schema)))
    bitmask = xgr.allocate_token_bitmask(1, vocab_size)
    seconds = []
    for token in tokens:
        start = time.perf_counter()
        matcher.fill_next_token_bitmask(bitmask)
        seconds.append(time.perf_counter() - start)
        if not matcher.accept_token(token):
            break
    return _summary(seconds)


def llguidance_mask_times(engine: Any, schema: dict, tokens: list[int]) -> str:
    """llguidance's mask time per token replaying `tokens` under `schema` (the engine's own Guide)."""
    guide = engine.guides.guide("json_schema", json.dumps(schema))
    seconds = []
    for token in tokens:
        start = time.perf_counter()
        guide.allowed()
        seconds.append(time.perf_counter() - start)
        guide.consume(token)
    return _summary(seconds)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--engine-dir", type=Path, default=None, help="model directory (default: the cached default)"
    )
    ap.add_argument("--baseline-ref", default="main", help="git ref whose runtime is 'before' (default main)")
    ap.add_argument("--tokens", type=int, default=64, help="new tokens per sequence")
    ap.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads")
    ap.add_argument("--rounds", type=int, default=3, help="rounds; each figure is the median")
    args = ap.parse_args()

    from model_repo.runtime.engine import Engine
    from model_repo.runtime.sampling import SamplingParams

    engine_dir = args.engine_dir or default_engine_dir()
    with tempfile.TemporaryDirectory() as scratch:
        old = baseline_runtime(args.baseline_ref, Path(scratch))
        old_engine_mod = importlib.import_module("baseline_runtime.engine")
        old_sampling = importlib.import_module("baseline_runtime.sampling")
        assert old.__name__ == "baseline_runtime"
        before = old_engine_mod.Engine.load(engine_dir, num_threads=args.threads)
    after = Engine.load(engine_dir, num_threads=args.threads)
    n = args.tokens
    guide = json.dumps(SCHEMA)
    configs: dict[str, tuple[Any, Callable[[], Any]]] = {
        "before": (before, lambda: old_sampling.SamplingParams(max_tokens=n, ignore_eos=True)),
        "after": (after, lambda: SamplingParams(max_tokens=n, ignore_eos=True)),
        "constrained": (
            after,
            lambda: SamplingParams(max_tokens=n, ignore_eos=True, guide_type="json_schema", guide=guide),
        ),
    }
    after.guides.grammar("json_schema", guide)  # llguidance's vocabulary and the grammar: built once, untimed
    print(f"model {engine_dir} ({after.metadata.quantization}), {args.threads} threads, {n} tokens, greedy")
    rates: dict[tuple[str, int], list[float]] = {}
    constrained_tokens: list[int] = []
    for round_no in range(args.rounds):
        for streams in (1, 8):
            names = list(configs) if round_no % 2 == 0 else list(reversed(configs))
            for name in names:
                engine, make = configs[name]
                rate, first = decode_rate(engine, make, streams)
                rates.setdefault((name, streams), []).append(rate)
                if name == "constrained":
                    constrained_tokens = first
        print(f"  round {round_no + 1}/{args.rounds} done", flush=True)
    med = {key: statistics.median(values) for key, values in rates.items()}
    print(f"\n{'configuration':<34}{'1 stream':>12}{'8 streams':>12}   (decode tok/s, median)")
    labels = {
        "before": f"before ({args.baseline_ref}'s runtime)",
        "after": "after (this runtime, plain)",
        "constrained": "after, nested JSON schema",
    }
    for name, label in labels.items():
        print(f"{label:<34}{med[(name, 1)]:>12.1f}{med[(name, 8)]:>12.1f}")
    for streams in (1, 8):
        print(
            f"{streams} stream(s): after/before {med[('after', streams)] / med[('before', streams)]:.3f}, "
            f"constrained/unconstrained {med[('constrained', streams)] / med[('after', streams)]:.3f}"
        )
    text = after.decode(constrained_tokens)
    print(f"\nconstrained output (first sequence, {len(constrained_tokens)} tokens): {text[:120]!r}...")
    print("grammar mask time per token, same tokens, same vocabulary:")
    eos = list(after.metadata.eos_token_ids)
    for label, schema in (("schema above", SCHEMA), ("strings with maxLength", BOUNDED)):
        tokens = constrained_tokens
        if schema is BOUNDED:
            params = SamplingParams(
                max_tokens=n, ignore_eos=True, guide_type="json_schema", guide=json.dumps(schema)
            )
            tokens = [t.token_id for t in after.generate(PROMPT, params)]
        print(f"  {label}:")
        print(f"    llguidance {llguidance_mask_times(after, schema, tokens)}")
        vocab = after.metadata.vocab_size
        print(f"    xgrammar   {xgrammar_mask_times(engine_dir, vocab, eos, schema, tokens)}")


if __name__ == "__main__":
    main()
