"""Tokens/s of one model: PyTorch eager, the in-process onnxruntime engine, and Triton serving it.

    python benchmarks/bench_triton.py --repository out/smol-int8     # a built repository
    python benchmarks/bench_triton.py --build int8                   # build the default model first

Same prompts (chat-formatted) and greedy decoding everywhere, exactly --max-tokens new tokens each
(eos ignored: PyTorch's min_new_tokens, the engine's ignore_eos, Triton's end_id=-1), so every
figure counts the same work:
- PyTorch eager (transformers `generate`, batch 1) from the source checkpoint (--checkpoint or the
  default model), unless --no-pytorch;
- in-process engine, single stream, --streams sequences through one `DecodeBatch`, and --streams
  requests through the Triton model's scheduler in-process (its decode lanes, no transport);
- decode only (prefill left out): one sequence on the all-cores engine vs --streams sequences over
  the model's decode lanes stepping at once: how much one decode step gains from batching on this
  machine, the ceiling of the N-streams-vs-1 ratio before prefill and transport take their share;
- Triton (real server from nvidia-pytriton, gRPC streaming): one stream, then --streams concurrent
  client streams; aggregate tok/s = all tokens / wall time. Also, for information, the concurrent
  streams with answers ending at eos as chat answers do (a batch that shrinks as answers end).
  Peak RSS of Triton = server process plus its python-backend stub processes (where the model
  lives), sampled every 50 ms.
Engine and Triton alternate for --rounds rounds and each figure is the median of its rounds, so load
from other processes on a shared machine affects both sides alike and no single lucky round decides.
Prints a table and the target ratios (Triton 1 stream >= 0.9x engine; N streams >= 3x 1 stream;
Triton peak RSS < 1.5 GB), and writes JSON with --json.
"""

from __future__ import annotations

import argparse
import json
import queue
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

QUESTIONS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain what a GPU is in two sentences.",
    "Give me three tips for learning to cook.",
    "What is 12 times 7?",
    "Name three colours of the rainbow.",
    "Why is the sky blue?",
    "Describe a cat to someone who has never seen one.",
]


def chat_prompts(engine: Any) -> list[str]:
    from model_repo.chat_template import apply_chat_template

    if engine.metadata.chat_template:
        return [apply_chat_template(engine.metadata, [{"role": "user", "content": q}]) for q in QUESTIONS]
    return QUESTIONS


# --- in-process -------------------------------------------------------------------------------


def bench_engine(engine: Any, prompts: list[str], max_tokens: int, streams: int) -> dict[str, float]:
    """Every answer exactly max_tokens long (eos ignored), as Triton is asked below."""
    from model_repo.runtime.sampling import SamplingParams

    params = SamplingParams(max_tokens=max_tokens, ignore_eos=True)
    engine.generate_text(prompts[0], SamplingParams(max_tokens=8))  # warm-up
    tokens, start = 0, time.perf_counter()
    for prompt in prompts[:4]:
        tokens += sum(1 for _ in engine.generate(prompt, params))
    single = tokens / (time.perf_counter() - start)

    batch = engine.new_batch()
    tokens, start = 0, time.perf_counter()
    for i in range(streams):
        batch.add(str(i), engine.encode(prompts[i % len(prompts)]), params)
        tokens += 1
    while len(batch):
        tokens += len(batch.step())
    batched = tokens / (time.perf_counter() - start)
    return {
        "engine_1_stream_tok_s": single,
        f"engine_{streams}_batched_tok_s": batched,
        f"engine_{streams}_lanes_tok_s": scheduler_streams(engine, prompts, max_tokens, streams),
        **decode_only(engine, prompts, max_tokens, streams),
    }


def decode_only(engine: Any, prompts: list[str], max_tokens: int, streams: int) -> dict[str, float]:
    """Steady-state decode tokens/s with prefill left out: one sequence on the all-cores engine, and
    `streams` sequences split over the Triton model's decode lanes, all lanes stepping at once.

    Their ratio is what batching `streams` sequences gains per decode step on this machine, before
    any prefill, Python or transport cost: an upper bound for the served `streams`-vs-1 ratio.
    """
    from model_repo.runtime.sampling import SamplingParams
    from model_repo.runtime.scheduler import ContinuousBatchScheduler

    params = SamplingParams(max_tokens=max_tokens + 2, ignore_eos=True)  # no row ends while timed

    def steps_per_s(batches: list[tuple[Any, Any]]) -> float:
        """Tokens/s of `max_tokens` steps of every (batch, runner), each batch in its own thread."""
        ready = threading.Barrier(len(batches) + 1)
        rows = sum(len(batch) for batch, _ in batches)

        def run(batch: Any, runner: Any) -> None:
            ready.wait()
            for _ in range(max_tokens):
                batch.step(runner)

        threads = [threading.Thread(target=run, args=pair) for pair in batches]
        for t in threads:
            t.start()
        ready.wait()
        start = time.perf_counter()
        for t in threads:
            t.join()
        return rows * max_tokens / (time.perf_counter() - start)

    single = engine.new_batch()
    single.add("0", engine.encode(prompts[0]), params)
    scheduler = ContinuousBatchScheduler.with_lanes(engine, max_active=streams)  # never started
    for i in range(streams):
        lane = scheduler.lanes[i % len(scheduler.lanes)]
        lane.batch.add(str(i), lane.engine.encode(prompts[i % len(prompts)]), params, lane.engine)
    return {
        "engine_1_stream_decode_tok_s": steps_per_s([(single, engine)]),
        f"engine_{streams}_lanes_decode_tok_s": steps_per_s(
            [(lane.batch, lane.engine) for lane in scheduler.lanes]
        ),
    }


def scheduler_streams(engine: Any, prompts: list[str], max_tokens: int, streams: int) -> float:
    """`streams` requests through the Triton model's own scheduler, in-process: its decode lanes as
    the model picks them (see runtime/scheduler.py), without Triton's transport."""
    from model_repo.runtime.scheduler import ContinuousBatchScheduler, GenerationRequest, Job

    scheduler = ContinuousBatchScheduler.with_lanes(engine, max_active=streams)
    scheduler.start()
    finished = threading.Semaphore(0)
    counted = [0]

    def emit(_text: str, final: bool, _prompt_tokens: int, completion_tokens: int) -> None:
        counted[0] += completion_tokens
        if final:
            finished.release()

    def fail(message: str) -> None:
        raise RuntimeError(message)

    try:
        start = time.perf_counter()
        for i in range(streams):
            request = GenerationRequest(prompts[i % len(prompts)], max_tokens, stream=True, end_id=-1)
            scheduler.submit(Job(f"bench-{i}", request, emit, fail))
        for _ in range(streams):
            finished.acquire()
        return counted[0] / (time.perf_counter() - start)
    finally:
        scheduler.stop()


def bench_pytorch(checkpoint: Path, prompts: list[str], max_tokens: int) -> float:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(max(1, torch.get_num_threads()))
    tok = AutoTokenizer.from_pretrained(checkpoint)
    model = AutoModelForCausalLM.from_pretrained(checkpoint, torch_dtype=torch.float32).eval()
    tokens, elapsed = 0, 0.0
    with torch.inference_mode():
        for prompt in prompts[:2]:
            ids = tok(prompt, return_tensors="pt", add_special_tokens=False)
            start = time.perf_counter()
            out = model.generate(
                **ids,
                max_new_tokens=max_tokens,
                min_new_tokens=max_tokens,
                do_sample=False,
                pad_token_id=tok.eos_token_id,
            )
            elapsed += time.perf_counter() - start
            tokens += int(out.shape[1] - ids["input_ids"].shape[1])
    return tokens / elapsed


# --- Triton ------------------------------------------------------------------------------------


def _inputs(prompt: str, max_tokens: int, fixed_length: bool) -> list[Any]:
    import tritonclient.grpc as grpcclient

    tensors = []
    for name, value, kind in (
        ("text_input", np.array([[prompt.encode()]], dtype=np.object_), "BYTES"),
        ("max_tokens", np.array([[max_tokens]], dtype=np.int32), "INT32"),
        ("stream", np.array([[True]], dtype=bool), "BOOL"),
        # end_id -1: no end token, the answer runs to max_tokens (TensorRT-LLM's convention)
        *([("end_id", np.array([[-1]], dtype=np.int32), "INT32")] if fixed_length else []),
    ):
        tensor = grpcclient.InferInput(name, list(value.shape), kind)
        tensor.set_data_from_numpy(value)
        tensors.append(tensor)
    return tensors


def stream_requests(
    url: str, model: str, prompts: list[str], max_tokens: int, fixed_length: bool = True
) -> tuple[int, list[float]]:
    """Send prompts one after another on one gRPC stream; returns (tokens, time-to-first-token list)."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    tokens, ttft = 0, []
    try:
        for prompt in prompts:
            start = time.perf_counter()
            client.async_stream_infer(model, _inputs(prompt, max_tokens, fixed_length))
            first = True
            while True:
                result, error = answers.get(timeout=300)
                if error is not None:
                    raise RuntimeError(str(error))
                if first:
                    ttft.append(time.perf_counter() - start)
                    first = False
                tokens += int(result.as_numpy("completion_tokens").reshape(-1)[0])
                if result.get_response().parameters["triton_final_response"].bool_param:
                    break
    finally:
        client.stop_stream()
        client.close()
    return tokens, ttft


class RssSampler:
    """Peak resident memory of a process tree (server + python stubs)."""

    def __init__(self, pid: int) -> None:
        import psutil

        self.root = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            try:
                procs = [self.root, *self.root.children(recursive=True)]
                self.peak = max(self.peak, sum(p.memory_info().rss for p in procs))
            except psutil.Error:
                pass
            time.sleep(0.05)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def triton_single(url: str, model: str, prompts: list[str], max_tokens: int) -> tuple[float, float]:
    start = time.perf_counter()
    tokens, ttft = stream_requests(url, model, prompts[:4], max_tokens)
    return tokens / (time.perf_counter() - start), 1000 * float(np.median(ttft))


def triton_concurrent(
    url: str, model: str, prompts: list[str], max_tokens: int, streams: int, fixed_length: bool = True
) -> float:
    results: list[int] = []
    lock = threading.Lock()

    def client(i: int) -> None:
        n, _ = stream_requests(url, model, [prompts[i % len(prompts)]], max_tokens, fixed_length)
        with lock:
            results.append(n)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(streams)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(results) / (time.perf_counter() - start)


def bench_rounds(
    repository: Path, engine: Any, model: str, prompts: list[str], max_tokens: int, streams: int, rounds: int
) -> dict[str, float]:
    """Engine and Triton measured in alternating rounds, so that load from other processes on a shared
    machine hits both sides alike; each figure is its median over the rounds (a best-of-rounds let
    one lucky round of either side decide a ratio)."""
    from serving.triton_local import TritonServer, TritonServerConfig

    rounds_seen: dict[str, list[float]] = {}

    def keep(key: str, value: float) -> None:
        rounds_seen.setdefault(key, []).append(value)

    with TritonServer(TritonServerConfig(repository, startup_timeout_s=300)) as server:
        assert server.pid is not None
        with RssSampler(server.pid) as rss:
            stream_requests(server.grpc_url, model, prompts[:1], 8)  # warm-up
            for _ in range(rounds):
                for key, value in bench_engine(engine, prompts, max_tokens, streams).items():
                    keep(key, value)
                single, ttft = triton_single(server.grpc_url, model, prompts, max_tokens)
                keep("triton_1_stream_tok_s", single)
                keep("triton_ttft_ms", ttft)
                concurrent = triton_concurrent(server.grpc_url, model, prompts, max_tokens, streams)
                keep(f"triton_{streams}_streams_tok_s", concurrent)
                natural = triton_concurrent(server.grpc_url, model, prompts, max_tokens, streams, False)
                keep(f"triton_{streams}_streams_eos_ends_tok_s", natural)
                print(
                    "round:",
                    ", ".join(f"{key} {values[-1]:.1f}" for key, values in rounds_seen.items()),
                    flush=True,
                )
    medians = {key: float(np.median(values)) for key, values in rounds_seen.items()}
    medians["triton_peak_rss_mb"] = rss.peak / 2**20
    return medians


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--repository", type=Path, help="a repository written by `tritonform build`")
    source.add_argument("--build", choices=["none", "int8", "int4"], help="build the default model first")
    parser.add_argument("--model-name", default="llm")
    parser.add_argument("--checkpoint", type=Path, help="source checkpoint for the PyTorch baseline")
    parser.add_argument("--no-pytorch", action="store_true")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; figures are medians")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    from model_repo.manifest import engine_dir as engine_folder
    from model_repo.runtime.engine import Engine

    repository = args.repository
    if args.build:
        from model_repo.build import BuildOptions, build

        repository = Path(tempfile.mkdtemp(prefix="bench-")) / "repo"
        build(BuildOptions(model="default", out=repository, quantize=args.build))
    engine_dir = engine_folder(repository, args.model_name)
    # same ORT settings as the Triton model (spec.GenerationSpec: threads spin only inside a run)
    engine = Engine.load(engine_dir, allow_spinning=True, spin_only_in_runs=True)
    prompts = chat_prompts(engine)
    results: dict[str, float] = {}
    if not args.no_pytorch:
        checkpoint = args.checkpoint
        if checkpoint is None:
            from model_repo.checkpoint import resolve_checkpoint

            checkpoint = resolve_checkpoint("default").path
        results["pytorch_eager_tok_s"] = bench_pytorch(checkpoint, prompts, args.max_tokens)
    results.update(
        bench_rounds(repository, engine, args.model_name, prompts, args.max_tokens, args.streams, args.rounds)
    )

    n = args.streams
    ratios = {
        "triton_1_stream_vs_engine": results["triton_1_stream_tok_s"] / results["engine_1_stream_tok_s"],
        f"triton_{n}_streams_vs_1_stream": results[f"triton_{n}_streams_tok_s"]
        / results["triton_1_stream_tok_s"],
        f"engine_{n}_batched_vs_1_stream": results[f"engine_{n}_batched_tok_s"]
        / results["engine_1_stream_tok_s"],
        f"engine_{n}_lanes_vs_1_stream": results[f"engine_{n}_lanes_tok_s"]
        / results["engine_1_stream_tok_s"],
        # the decode-only ceiling of the ratio above: no prefill, no transport (see decode_only)
        f"decode_only_{n}_lanes_vs_1_stream": results[f"engine_{n}_lanes_decode_tok_s"]
        / results["engine_1_stream_decode_tok_s"],
    }
    if "pytorch_eager_tok_s" in results:
        ratios["engine_vs_pytorch"] = results["engine_1_stream_tok_s"] / results["pytorch_eager_tok_s"]
    for key, value in {**results, **ratios}.items():
        print(f"{key:34s} {value:10.2f}")
    checks = {
        "triton 1 stream >= 0.9x engine": ratios["triton_1_stream_vs_engine"] >= 0.9,
        f"triton {n} streams >= 3x 1 stream": ratios[f"triton_{n}_streams_vs_1_stream"] >= 3.0,
        "triton peak RSS < 1.5 GB": results["triton_peak_rss_mb"] < 1536,
    }
    for name, ok in checks.items():
        print(f"{'PASS' if ok else 'FAIL'}  {name}")
    if args.json:
        args.json.write_text(json.dumps({"results": results, "ratios": ratios, "checks": checks}, indent=2))
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
