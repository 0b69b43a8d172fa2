"""Engine graphs of one model side by side, in-process: tokens/s of 1 (or --rows) streams, alternating.

    python benchmarks/bench_graphs.py OLD_ENGINE_DIR NEW_ENGINE_DIR [MORE ...] [--rounds 7] [--tokens 64]
    python benchmarks/bench_graphs.py OLD NEW --rows 4 --threads 1     # a decode lane's batch

An engine directory is a repository's `<model>/1/engine` (or any `tritonform build` output with
model.onnx, tokenizer.json and generation.json). For a change to the build's graph (quantisation,
fusions) this isolates the graph: same runtime, same prompts (chat-formatted when the model has a chat
template), greedy, exactly --tokens new tokens each (eos ignored). With --rows N, N sequences decode
together in one batch (the engine's DecodeBatch, as a served lane runs them) and tok/s counts all of
them; --decode-only leaves the prompts' prefills (and the first tokens they give) out of the timing.
Rounds alternate A, B, B, A, ... so a slower spell of a shared machine hits every graph; figures are
medians of the rounds, ratios against the first graph. Also prints the nodes each graph runs per
decode step and whether the graphs produced the same tokens as the first.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PROMPT = "Write a short story about a robot who learns to paint landscapes at sunset."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("engines", nargs="+", type=Path, help="two or more engine directories, first = base")
    parser.add_argument("--rounds", type=int, default=7, help="rounds per graph; medians (7)")
    parser.add_argument("--tokens", type=int, default=64, help="new tokens per answer (64)")
    parser.add_argument("--threads", type=int, help="onnxruntime threads (default: the engine's)")
    parser.add_argument("--rows", type=int, default=1, help="sequences decoded together (1)")
    parser.add_argument(
        "--decode-only", action="store_true", help="time the decode steps only, not the prompts' prefills"
    )
    args = parser.parse_args()
    if len(args.engines) < 2:
        parser.error("give at least two engine directories to compare")
    if args.rows < 1 or args.rounds < 1 or args.tokens < 1:
        parser.error("--rows, --rounds and --tokens must be at least 1")
    for path in args.engines:
        if not (path / "generation.json").is_file():
            parser.error(
                f"{path} is not an engine directory (no generation.json); give <repo>/<model>/1/engine"
            )
    import onnx

    from model_repo.chat_template import render_chat_template
    from model_repo.runtime.engine import Engine
    from model_repo.runtime.sampling import SamplingParams

    engines = [Engine.load(p, num_threads=args.threads) for p in args.engines]
    nodes = [len(onnx.load(str(p / "model.onnx"), load_external_data=False).graph.node) for p in args.engines]
    meta = engines[0].metadata
    template = meta.chat_template

    def prompt(i: int) -> str:
        text = f"Request {i}. {PROMPT}"
        if not template:
            return text
        return render_chat_template(
            template, [{"role": "user", "content": text}], bos_token=meta.bos_token or ""
        )

    params = SamplingParams(max_tokens=args.tokens, ignore_eos=True)

    def run(engine: Engine, r: int) -> tuple[float, list[list[int]]]:
        """Decode --rows prompts of round `r` together: (tok/s, each sequence's tokens)."""
        batch = engine.new_batch()
        ids: dict[str, list[int]] = {}
        started = time.perf_counter()
        for row in range(args.rows):
            out = batch.add(str(row), engine.encode(prompt(r * args.rows + row + 1)), params)
            ids[out.request_id] = [out.token_id]
        if args.decode_only:
            started = time.perf_counter()
        while len(batch):
            for out in batch.step():
                ids[out.request_id].append(out.token_id)
        count = sum(len(v) - (1 if args.decode_only else 0) for v in ids.values())
        return count / (time.perf_counter() - started), [ids[str(row)] for row in range(args.rows)]

    for engine in engines:  # warm up
        run(engine, 0)
    n = len(engines)
    rates: list[list[float]] = [[] for _ in range(n)]
    tokens: list[list[list[list[int]]]] = [[] for _ in range(n)]
    for r in range(args.rounds):
        for side in range(n) if r % 2 == 0 else reversed(range(n)):
            rate, ids = run(engines[side], r + 1)
            rates[side].append(rate)
            tokens[side].append(ids)
    base = statistics.median(rates[0])
    print(f"{args.rows} sequence(s) per batch, {args.tokens} tokens each, {args.rounds} rounds")
    for side in range(n):
        rate = statistics.median(rates[side])
        same = sum(a == b for a, b in zip(tokens[0], tokens[side], strict=True))
        print(
            f"{rate:7.1f} tok/s ({rate / base:.2f}x; min {min(rates[side]):.1f}, max {max(rates[side]):.1f})"
            f"  {nodes[side]} nodes  same tokens as the first in {same}/{args.rounds} rounds  "
            f"{args.engines[side]}"
        )


if __name__ == "__main__":
    main()
