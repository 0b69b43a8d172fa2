"""In-process speed and quality: PyTorch eager vs the onnxruntime engine, builds and CPU operators.

The engine runs the fp32, int8 and int4 builds on onnxruntime's kernels, and the int4 build again on
tritonform's CPU operator (what `tritonform serve` runs on the CPU; model_repo/cpu_ops.py).

    .venv/bin/python benchmarks/bench_engine.py [--model default|PATH] [--threads 2] [--tokens 64]

Same prompts for every backend, batch 1, greedy, `--tokens` new tokens per prompt (eos ignored so each
run has the same length). Quality: teacher-forced next-token agreement with the fp32 ONNX model and
perplexity on model_repo/data/heldout.txt (the build gates' figures). Engines are exported once and kept
under ${TRITONFORM_CACHE:-~/.cache/tritonform}/bench/<checkpoint sha>-<build code digest>/, so a changed
exporter or quantiser gives fresh engines.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

PROMPTS = (
    "What is the capital of France?",
    "Write a short poem about the sea.",
    "Explain how a bicycle works to a child.",
)


def _engines(checkpoint: Path, sha: str) -> dict[str, Path]:
    from model_repo.build import build_code_digest
    from model_repo.checkpoint import cache_dir
    from model_repo.export import export_onnx
    from model_repo.quantize import quantize_model

    root = cache_dir() / "bench" / f"{sha[:16]}-{build_code_digest()[:12]}"
    dirs = {"fp32": root / "fp32", "int8": root / "int8", "int4": root / "int4"}
    if not (dirs["fp32"] / "generation.json").is_file():
        t0 = time.perf_counter()
        export_onnx(checkpoint, dirs["fp32"], progress=lambda m: print(f"  {m}", flush=True))
        print(f"export + optimise: {time.perf_counter() - t0:.1f} s", flush=True)
    for name in ("int8", "int4"):
        if not (dirs[name] / "generation.json").is_file():
            quantize_model(dirs["fp32"], dirs[name], name)
    return dirs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from model_repo.checkpoint import checkpoint_hash, resolve_checkpoint
    from model_repo.gates import check_quality
    from model_repo.runtime.engine import Engine

    torch.set_num_threads(args.threads)
    info = resolve_checkpoint(args.model)
    sha = checkpoint_hash(info.path)
    dirs = _engines(info.path, sha)
    tok = AutoTokenizer.from_pretrained(str(info.path))
    prompts = [
        tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False)
        if tok.chat_template
        else p
        for p in PROMPTS
    ]
    ids = [tok(p).input_ids for p in prompts]
    n = args.tokens
    results: dict[str, dict[str, float]] = {}

    # Each backend runs with 1 and with --threads threads and keeps its best: on a shared 2-core machine
    # PyTorch's OpenMP threads degrade badly under contention, which would flatter the ratios.
    thread_options = sorted({1, args.threads})
    model = AutoModelForCausalLM.from_pretrained(str(info.path), dtype="float32").eval()
    best = (0.0, 0)
    for threads in thread_options:
        torch.set_num_threads(threads)
        with torch.inference_mode():
            model.generate(torch.tensor([ids[0]]), max_new_tokens=4, do_sample=False)  # warm-up
            t0 = time.perf_counter()
            for p in ids:
                model.generate(
                    torch.tensor([p]),
                    max_new_tokens=n,
                    min_new_tokens=n,
                    do_sample=False,
                    pad_token_id=tok.pad_token_id,
                )
            best = max(best, (len(ids) * n / (time.perf_counter() - t0), threads))
    results["pytorch-eager"] = {"tok_s": best[0], "threads": best[1]}
    del model

    from model_repo.cpu_ops import CpuOpsError, build_library

    # every build on onnxruntime's kernels; int4 again with tritonform's CPU operator (serve's default)
    variants = [(name, path, "off") for name, path in dirs.items()]
    try:
        variants.append(("int4-cpu-ops", dirs["int4"], str(build_library(print))))
    except CpuOpsError as exc:
        print(f"tritonform's CPU operators not measured: {exc}")
    reference = Engine.load(dirs["fp32"], num_threads=args.threads, cpu_ops="off")
    for name, path, cpu_ops in variants:
        best = (0.0, 0)
        for threads in thread_options:
            engine = Engine.load(path, num_threads=threads, cpu_ops=cpu_ops)
            engine.greedy_ids(ids[0], 4)  # warm-up
            t0 = time.perf_counter()
            for p in ids:
                engine.greedy_ids(p, n)
            best = max(best, (len(ids) * n / (time.perf_counter() - t0), threads))
        quality = check_quality(engine, reference, raise_on_fail=False)
        results[f"ort-{name}"] = {
            "tok_s": best[0],
            "threads": best[1],
            "agreement": quality.agreement,
            "decode_agreement": quality.decode_agreement,
            "perplexity": quality.perplexity,
            "ppl_increase": quality.perplexity_increase,
            "size_mb": sum(f.stat().st_size for f in path.iterdir() if f.name.startswith("model.onnx"))
            / 2**20,
        }

    base = results["pytorch-eager"]["tok_s"]
    print(
        f"\nmodel {info.path.name} ({info.model_type}), {args.threads} threads, batch 1, {n} new tokens x "
        f"{len(ids)} prompts, {os.cpu_count()} cores"
    )
    print(f"load average at the end: {os.getloadavg()[0]:.2f} (other processes share these cores)")
    # agree: held-out text (teacher forced); decode: while generating (the build gates' two figures)
    header = (
        f"{'backend':<15}{'thr':>4}{'tok/s':>8}{'x eager':>9}{'agree':>8}{'decode':>8}{'ppl':>8}{'ppl +':>8}"
    )
    print(f"{header}{'MB':>8}")
    for name, r in results.items():
        extra = ""
        if "agreement" in r:
            extra = (
                f"{r['agreement']:>8.1%}{r['decode_agreement']:>8.1%}{r['perplexity']:>8.2f}"
                f"{r['ppl_increase']:>+8.1%}{r['size_mb']:>8.0f}"
            )
        print(f"{name:<15}{r['threads']:>4}{r['tok_s']:>8.1f}{r['tok_s'] / base:>8.2f}x{extra}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
