"""Multi-turn chats over two Triton replicas: prefix-aware routing + prefix cache vs round-robin without.

    python benchmarks/bench_routing.py                 # the default model (built once, cached)
    python benchmarks/bench_routing.py --tiny          # the tiny random test model (fast, not meaningful)

Each configuration is a local stack with `--triton-replicas 2` (serving/local_stack.py): two real Triton
processes behind the gateway. `--conversations` chats run at once, each `--turns` turns long: every turn
sends the whole conversation so far (a shared system prompt, the earlier questions and answers, a new
question), streamed, `--max-tokens` new tokens at temperature 0. Time to first token is measured from
sending each request; tokens/s is all completion tokens over the configuration's wall time.

- routed: the gateway's prefix-aware router (serving/gateway/routing.py), the engine's prefix cache on;
- round-robin: replicas in turn, the prefix cache off (TRITONFORM_PREFIX_CACHE_MB=0 in Triton's
  environment), i.e. every turn prefills its whole conversation.

Target (issue 18): TTFT p50 routed <= 0.5x round-robin, tokens/s not lower. The two configurations run
one after the other on a machine shared with other sessions: compare the ratio, and rerun to see noise.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Literal

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from model_repo.build import build_default_repository  # noqa: E402
from serving.local_stack import LocalStack, LocalStackConfig  # noqa: E402
from serving.triton_local import free_port  # noqa: E402

SYSTEM = (
    "You are a careful assistant for a small bakery. You answer questions about bread, pastry, opening "
    "hours and orders. Keep every answer short, friendly and precise, and never invent prices."
)
QUESTIONS = [
    "What kinds of bread do you bake on weekdays?",
    "Which of those keeps best for three days?",
    "Can I order a large sourdough for Saturday morning?",
    "Do you have anything without wheat?",
    "How early do you open on Sundays?",
    "Could you summarise what we discussed?",
]


def _tiny_repository(root: Path) -> Path:
    from model_repo.checkpoint import make_tiny_checkpoint
    from model_repo.export import export_onnx
    from model_repo.layout import write_repository
    from model_repo.spec import GenerationSpec

    onnx = export_onnx(make_tiny_checkpoint(root / "checkpoint"), root / "onnx").model_dir
    return write_repository(root / "repo", onnx, GenerationSpec(model_name="llm"))


def _turn(
    client: httpx.Client, model: str, messages: list[dict[str, str]], max_tokens: int
) -> tuple[float, str, int]:
    """(seconds to first text, the answer, completion tokens) of one streamed chat turn."""
    body = {
        "model": model,
        "messages": messages,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    sent = time.perf_counter()
    first: float | None = None
    text: list[str] = []
    tokens = 0
    with client.stream("POST", "/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: {"):
                continue
            event = json.loads(line.removeprefix("data: "))
            if event.get("usage"):
                tokens = int(event["usage"]["completion_tokens"])
            for choice in event.get("choices", []):
                piece = choice.get("delta", {}).get("content")
                if piece:
                    first = first if first is not None else time.perf_counter() - sent
                    text.append(piece)
    return (first if first is not None else time.perf_counter() - sent), "".join(text), tokens


def run(
    repository: Path, routing: Literal["prefix", "round-robin"], args: argparse.Namespace
) -> tuple[list[float], float]:
    """Every conversation at once through a two-replica stack; (TTFTs, tokens/s)."""
    previous = os.environ.get("TRITONFORM_PREFIX_CACHE_MB")
    if routing == "round-robin":
        os.environ["TRITONFORM_PREFIX_CACHE_MB"] = "0"  # Triton inherits it: no prefix cache
    try:
        config = LocalStackConfig(
            repository, port=free_port(), triton_replicas=2, routing=routing, startup_timeout_s=300
        )
        with LocalStack(config) as stack:
            ttfts: list[float] = []
            tokens = [0]
            lock = threading.Lock()

            def conversation(index: int) -> None:
                messages = [{"role": "system", "content": SYSTEM}]
                with httpx.Client(
                    base_url=stack.url, headers={"Authorization": f"Bearer {stack.api_key}"}, timeout=600
                ) as client:
                    for turn in range(args.turns):
                        question = f"(customer {index}) {QUESTIONS[turn % len(QUESTIONS)]}"
                        messages.append({"role": "user", "content": question})
                        ttft, answer, count = _turn(client, stack.model_name, messages, args.max_tokens)
                        messages.append({"role": "assistant", "content": answer})
                        with lock:
                            ttfts.append(ttft)
                            tokens[0] += count

            started = time.perf_counter()
            threads = [threading.Thread(target=conversation, args=(i,)) for i in range(args.conversations)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            wall = time.perf_counter() - started
            backend = stack._gateway.triton if stack._gateway is not None else None
            print(f"{routing}: served per replica {getattr(backend, 'served', '?')}", flush=True)
        return ttfts, tokens[0] / wall
    finally:
        if previous is None:
            os.environ.pop("TRITONFORM_PREFIX_CACHE_MB", None)
        else:
            os.environ["TRITONFORM_PREFIX_CACHE_MB"] = previous


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model-repo", type=Path, help="a built repository (default: the default model)")
    parser.add_argument("--tiny", action="store_true", help="the tiny random test model (fast)")
    parser.add_argument("--conversations", type=int, default=8)
    parser.add_argument("--turns", type=int, default=6)
    parser.add_argument("--max-tokens", type=int, default=24)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        if args.tiny:
            repository = _tiny_repository(Path(scratch))
        else:
            repository = args.model_repo or build_default_repository(print)
        results = {routing: run(repository, routing, args) for routing in ("prefix", "round-robin")}
    (routed, routed_tps), (plain, plain_tps) = results["prefix"], results["round-robin"]
    p50_routed, p50_plain = statistics.median(routed), statistics.median(plain)
    print(
        f"\n{args.conversations} conversations x {args.turns} turns, 2 Triton replicas, "
        f"{args.max_tokens} tokens a turn"
    )
    print(f"routed + prefix cache : TTFT p50 {p50_routed * 1000:8.1f} ms   {routed_tps:6.1f} tok/s")
    print(f"round-robin, no cache : TTFT p50 {p50_plain * 1000:8.1f} ms   {plain_tps:6.1f} tok/s")
    print(f"TTFT p50 ratio routed/round-robin: {p50_routed / p50_plain:.2f}x (target <= 0.50x)")
    print(f"tokens/s ratio routed/round-robin: {routed_tps / plain_tps:.2f}x (target >= 1.00x)")


if __name__ == "__main__":
    main()
