"""Time to first token and tokens/s: through the gateway vs Triton directly vs the in-process engine.

    python benchmarks/bench_gateway.py --tiny                 # seconds: the tiny random test model
    python benchmarks/bench_gateway.py [--model-repo DIR]     # the default model (built once, cached)

Everything runs on loopback: a real Triton (serving/triton_local.py) and the gateway (uvicorn in a
thread), both started by `LocalStack` in a process of their own, as `tritonform serve` runs them; the
clients run in this process, so they share the machine's cores with the stack (as on a laptop) but not
the gateway's interpreter lock (in-process clients slowed the gateway at 8 streams: 0.73-0.97x Triton
over four runs, against 0.94x with the stack in its own process). Streams of `--max-tokens` new tokens at
temperature 0, at concurrency 1 and 8, Triton and gateway alternating round by round; TTFT is measured
from sending the request to the first text.
A model with a chat template gets the prompt as a chat message (gateway: /v1/chat/completions; Triton
and the engine: the same rendered template), so an instruct model answers instead of ending at once.
Every request asks a differently numbered question, so only the template's system prompt is shared.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import multiprocessing
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import openai

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from model_repo.build import build_default_repository  # noqa: E402
from serving.gateway.triton import GenerationParams, TritonGenerator  # noqa: E402
from serving.local_stack import LocalStack, LocalStackConfig, find_model_name  # noqa: E402
from serving.triton_local import free_port  # noqa: E402

PROMPT = "Write a short story about a robot who learns to paint landscapes at sunset."  # ~16 tokens
Sample = tuple[float, int, float]  # ttft seconds, tokens, total seconds


def _tiny_repository(root: Path) -> Path:
    from model_repo.checkpoint import make_tiny_checkpoint
    from model_repo.export import export_onnx
    from model_repo.layout import write_repository
    from model_repo.spec import GenerationSpec

    onnx = export_onnx(make_tiny_checkpoint(root / "checkpoint"), root / "onnx").model_dir
    return write_repository(root / "repo", onnx, GenerationSpec(model_name="llm"))


_REQUESTS = itertools.count(1)


def _question() -> str:
    """A new question per request: numbered at its start, so requests share the chat template's
    system prompt (as real chats do) but not the question (the engine reuses a shared prefix's KV)."""
    return f"Request {next(_REQUESTS)}. {PROMPT}"


Render = Callable[[str], str] | None


def _next_prompt(render: Render) -> str:
    return render(_question()) if render else _question()


def _renderer(engine_dir: Path) -> Render:
    """The question as the model sees it through its chat template, or None for a model without one
    (an instruct model given a bare sentence may answer with end-of-text at once)."""
    from model_repo.chat_template import render_chat_template
    from model_repo.runtime.contract import GenerationMetadata

    meta = GenerationMetadata.load(engine_dir)
    template = meta.chat_template
    if not template:
        return None
    return lambda q: render_chat_template(
        template, [{"role": "user", "content": q}], bos_token=meta.bos_token or ""
    )


async def _gateway_stream(client: openai.AsyncOpenAI, model: str, max_tokens: int, chat: bool) -> Sample:
    question = _question()
    started = time.perf_counter()
    first = 0.0
    tokens = 0
    common: dict[str, Any] = {
        "model": model,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if chat:
        stream: Any = await client.chat.completions.create(
            messages=[{"role": "user", "content": question}], **common
        )
    else:
        stream = await client.completions.create(prompt=question, **common)
    async for chunk in stream:
        if not first and chunk.choices:
            choice = chunk.choices[0]
            if choice.delta.content if chat else choice.text:
                first = time.perf_counter() - started
        if chunk.usage:
            tokens = chunk.usage.completion_tokens
    return first, tokens, time.perf_counter() - started


async def _triton_stream(triton: TritonGenerator, render: Render, max_tokens: int) -> Sample:
    prompt = _next_prompt(render)
    started = time.perf_counter()
    first = 0.0
    tokens = 0
    params = GenerationParams(prompt, max_tokens, temperature=0.0, stream=True)
    async for delta in triton.generate(params, "bench", 300):
        if not first and delta.text:
            first = time.perf_counter() - started
        tokens += delta.completion_tokens or 0
    return first, tokens, time.perf_counter() - started


async def _round(one: Callable[[], Awaitable[Sample]], concurrency: int) -> tuple[list[Sample], float]:
    """`concurrency` requests at once: their samples and the round's wall time."""
    started = time.perf_counter()
    samples = list(await asyncio.gather(*(one() for _ in range(concurrency))))
    return samples, time.perf_counter() - started


def _summary(samples: list[Sample], wall: float) -> dict[str, float]:
    ttfts = sorted(s[0] for s in samples)
    p95 = ttfts[min(len(ttfts) - 1, round(0.95 * (len(ttfts) - 1)))]
    return {
        "ttft_p50_ms": statistics.median(ttfts) * 1000,
        "ttft_p95_ms": p95 * 1000,
        "tok_s": sum(s[1] for s in samples) / wall,
    }


def _engine_single(engine: Any, render: Render, max_tokens: int, rounds: int) -> dict[str, float]:
    from model_repo.runtime.sampling import SamplingParams

    samples: list[Sample] = []
    started = time.perf_counter()
    for _ in range(rounds):
        t0 = time.perf_counter()
        first, count = 0.0, 0
        for token in engine.generate(_next_prompt(render), SamplingParams(max_tokens=max_tokens)):
            count += 1
            if not first and token.text:
                first = time.perf_counter() - t0
        samples.append((first, count, time.perf_counter() - t0))
    return _summary(samples, time.perf_counter() - started)


def _engine_batched(
    engine: Any, render: Render, max_tokens: int, rounds: int, streams: int = 8
) -> dict[str, float]:
    """`streams` requests arriving together, advanced by one DecodeBatch (what the Triton model does);
    TTFT counts from the round's start to each request's first token."""
    from model_repo.runtime.sampling import SamplingParams

    params = SamplingParams(max_tokens=max_tokens)
    samples: list[Sample] = []
    started = time.perf_counter()
    for _ in range(rounds):
        t0 = time.perf_counter()
        batch = engine.new_batch()
        counts: dict[str, int] = {}
        firsts: dict[str, float] = {}
        ends: dict[str, float] = {}
        for i in range(streams):
            rid = str(i)
            out = batch.add(rid, engine.encode(_next_prompt(render)), params)
            counts[rid], firsts[rid] = 1, time.perf_counter() - t0
            if out.finished:
                ends[rid] = firsts[rid]
        while len(batch):
            for out in batch.step():
                counts[out.request_id] += 1
                if out.finished:
                    ends[out.request_id] = time.perf_counter() - t0
        samples += [(firsts[r], counts[r], ends[r]) for r in counts]
    return _summary(samples, time.perf_counter() - started)


@dataclass(frozen=True)
class StackAddress:
    """Where the stack process serves: gateway URL, Triton's gRPC address, model, API key."""

    url: str
    triton_grpc_url: str
    model_name: str
    api_key: str


def _serve(config: LocalStackConfig, conn: Connection) -> None:
    """Child process: run the local stack, send its address, serve until the parent says stop."""
    try:
        with LocalStack(config) as stack:
            assert stack.triton is not None
            # plain values: this module is `__mp_main__` in the child, so its classes do not unpickle
            conn.send((stack.url, stack.triton.grpc_url, stack.model_name, stack.api_key))
            conn.recv()
    except Exception as exc:  # the parent prints it and stops
        conn.send(f"{type(exc).__name__}: {exc}")


@contextlib.contextmanager
def stack_process(config: LocalStackConfig) -> Iterator[StackAddress]:
    """`LocalStack(config)` in a process of its own; yields its address once it is ready."""
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    process = ctx.Process(target=_serve, args=(config, child), name="tritonform-bench-stack")
    process.start()
    try:
        deadline = time.monotonic() + config.startup_timeout_s + 60
        while not parent.poll(0.5):
            if not process.is_alive():
                raise SystemExit(f"the local stack process exited with code {process.exitcode}")
            if time.monotonic() > deadline:
                raise SystemExit("the local stack did not start in time")
        answer = parent.recv()
        if not isinstance(answer, tuple):
            raise SystemExit(f"the local stack did not start: {answer}")
        yield StackAddress(*answer)
    finally:
        if process.is_alive():
            with contextlib.suppress(OSError):
                parent.send("stop")
            process.join(60)
        if process.is_alive():  # LocalStack stops Triton on the way out; this is the last resort
            process.terminate()
            process.join(10)


async def _measure(
    stack: StackAddress, render: Render, max_tokens: int, rounds: int
) -> dict[str, dict[str, float]]:
    chat = render is not None
    triton = TritonGenerator(stack.triton_grpc_url, stack.model_name)
    results: dict[str, dict[str, float]] = {}
    async with openai.AsyncOpenAI(base_url=stack.url + "/v1", api_key=stack.api_key, max_retries=0) as client:
        await _gateway_stream(client, stack.model_name, 4, chat)  # warm up both paths
        await _triton_stream(triton, render, 4)
        paths: dict[str, Callable[[], Awaitable[Sample]]] = {
            "triton": lambda: _triton_stream(triton, render, max_tokens),
            "gateway": lambda: _gateway_stream(client, stack.model_name, max_tokens, chat),
        }
        for concurrency in (1, 8):
            # the paths alternate round by round, so a slower spell of a shared machine hits both
            samples: dict[str, list[Sample]] = {name: [] for name in paths}
            walls = dict.fromkeys(paths, 0.0)
            for _ in range(rounds):
                for name, one in paths.items():
                    got, wall = await _round(one, concurrency)
                    samples[name] += got
                    walls[name] += wall
            for name in paths:
                results[f"{name} x{concurrency}"] = _summary(samples[name], walls[name])
    await triton.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-repo", type=Path, help="a built repository (default: the default model)")
    parser.add_argument("--tiny", action="store_true", help="use the tiny random test model (fast)")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5, help="rounds per concurrency level")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tritonform-bench-") as scratch:
        given = _tiny_repository(Path(scratch)) if args.tiny else args.model_repo
        if given is None:
            build_default_repository(print)  # build it (or find it in the cache) before the clock starts
        # Ready time as `tritonform serve` sees it with a cached repository: cache lookup, Triton start
        # and model load, gateway start, both ready.
        started = time.perf_counter()
        repo = given or build_default_repository(print)
        model = find_model_name(repo)
        config = LocalStackConfig(repo, port=free_port(), api_key="bench-" + "k" * 20)
        with stack_process(config) as stack:
            ready_s = time.perf_counter() - started
            engine_dir = next((repo / model / "1").glob("*/generation.json")).parent
            render = _renderer(engine_dir)
            results = asyncio.run(_measure(stack, render, args.max_tokens, args.rounds))
        from model_repo.runtime.engine import Engine

        engine = Engine.load(engine_dir)
        results["engine x1 (in-process)"] = _engine_single(engine, render, args.max_tokens, args.rounds)
        results["engine x8 (in-process)"] = _engine_batched(engine, render, args.max_tokens, args.rounds)
    print(f"local stack ready in {ready_s:.1f} s (target with a cached repository: < 10 s)")
    print(f"{'path':<24} {'TTFT p50 ms':>12} {'TTFT p95 ms':>12} {'tok/s':>9}")
    for name, row in results.items():
        print(f"{name:<24} {row['ttft_p50_ms']:>12.1f} {row['ttft_p95_ms']:>12.1f} {row['tok_s']:>9.1f}")
    for c in (1, 8):
        ratio = results[f"gateway x{c}"]["tok_s"] / results[f"triton x{c}"]["tok_s"]
        print(f"gateway / triton tok/s at concurrency {c}: {ratio:.2f}")


if __name__ == "__main__":
    main()
