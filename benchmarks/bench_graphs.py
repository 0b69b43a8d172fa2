"""Two engine graphs of one model side by side, in-process: tokens/s of a single stream, alternating.

    python benchmarks/bench_graphs.py OLD_ENGINE_DIR NEW_ENGINE_DIR [--rounds 7] [--tokens 64]

An engine directory is a repository's `<model>/1/engine` (or any `tritonform build` output with
model.onnx, tokenizer.json and generation.json). For a change to the build's graph (quantisation,
fusions) this isolates the graph: same runtime, same prompts (chat-formatted when the model has a chat
template), greedy, exactly --tokens new tokens each (eos ignored). Rounds alternate A, B, B, A, ... so
a slower spell of a shared machine hits both; figures are medians of the rounds. Also prints the nodes
each graph runs per decode step and whether both produced the same tokens.
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
    parser.add_argument("engines", nargs=2, type=Path, help="two engine directories: before, after")
    parser.add_argument("--rounds", type=int, default=7, help="rounds per graph; medians (7)")
    parser.add_argument("--tokens", type=int, default=64, help="new tokens per answer (64)")
    parser.add_argument("--threads", type=int, help="onnxruntime threads (default: the engine's)")
    args = parser.parse_args()
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
    for engine in engines:  # warm up
        engine.generate_text(prompt(0), params)
    rates: list[list[float]] = [[], []]
    tokens: list[list[list[int]]] = [[], []]
    for r in range(args.rounds):
        for side in (0, 1) if r % 2 == 0 else (1, 0):
            started = time.perf_counter()
            ids = [t.token_id for t in engines[side].generate(prompt(r + 1), params)]
            rates[side].append(len(ids) / (time.perf_counter() - started))
            tokens[side].append(ids)
    names = ["before", "after"]
    for side in (0, 1):
        print(f"{names[side]}: {args.engines[side]}")
    for side in (0, 1):
        print(
            f"{names[side]:<7} {statistics.median(rates[side]):7.1f} tok/s (median of {args.rounds}; "
            f"min {min(rates[side]):.1f}, max {max(rates[side]):.1f})  {nodes[side]} graph nodes"
        )
    print(f"after / before: {statistics.median(rates[1]) / statistics.median(rates[0]):.2f}x")
    same = sum(a == b for a, b in zip(tokens[0], tokens[1], strict=True))
    print(f"same tokens in {same}/{args.rounds} answers")


if __name__ == "__main__":
    main()
