"""Compression pays (issue 17): prune a quarter of the default model's layers, distil, build int4; one run.

    .venv/bin/python benchmarks/bench_compression.py [--drop-layers 8] [--prompts 192] [--epochs 2]
                                                     [--threads 2] [--tokens 64] [--json FILE]

The recipe of NVIDIA's Minitron at this scale:
1. the teacher (SmolLM2-135M, 30 layers) answers `--prompts` made-up writing prompts (greedy): the
   calibration and distillation text (no data set is needed);
2. `prune`: drop the `--drop-layers` layers whose removal turns the hidden states least on that text;
3. `distill`: KL to the teacher's logits (temperature 1, alpha 0.9) plus the label loss, on the same text;
4. perplexity on held-out prose the teacher never wrote (model_repo/data/heldout.txt, the build gates'
   text) for teacher, pruned and distilled: the share of the pruning loss that distillation recovered;
5. `tritonform build --quantize int4` of the teacher and of the distilled student (each passes its quality
   gates against its own fp32 export) and their engines' tokens/s side by side, batch 1, greedy.

Artefacts are cached under ${TRITONFORM_CACHE:-~/.cache/tritonform}/bench/compression/<key>/ keyed by the
settings and the training code, so a re-run only re-measures. The machine is shared (2 cores, other
sessions): the load average is printed with the figures; compare ratios measured in the same run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

SUBJECTS = (
    "a lighthouse keeper", "a busy market", "learning to swim", "an old bicycle", "the first snow",
    "a school library", "planting tomatoes", "a night train", "a lost umbrella", "baking bread",
    "a mountain village", "a football match", "a quiet museum", "a rainy afternoon", "a fishing boat",
    "a new neighbour", "a broken clock", "a summer festival", "a city park", "a letter from abroad",
    "a kitchen garden", "an empty beach", "a country road", "a family dinner",
)  # fmt: skip
FORMS = (
    "Write a short paragraph about {}.", "Describe {} in a few sentences.", "Tell a short story about {}.",
    "Explain to a child what is special about {}.", "Write a diary entry about {}.",
    "Give three observations about {}.", "Write a short news report about {}.", "Describe a morning with {}.",
)  # fmt: skip


def prompts(count: int) -> list[list[dict[str, str]]]:
    items = [form.format(subject) for form in FORMS for subject in SUBJECTS]
    return [[{"role": "user", "content": text}] for text in items[:count]]


def _key(args: argparse.Namespace) -> str:
    code = b"".join(
        p.read_bytes() for p in sorted((Path(__file__).parents[1] / "model_repo" / "training").glob("*.py"))
    )
    settings = f"{args.drop_layers}:{args.prompts}:{args.epochs}:{args.answer_tokens}".encode()
    return hashlib.sha256(code + settings).hexdigest()[:16]


def _tok_s(engine_dir: Path, threads: int, ids: list[list[int]], tokens: int) -> float:
    from model_repo.runtime.engine import Engine

    engine = Engine.load(engine_dir, num_threads=threads)
    engine.greedy_ids(ids[0], 4)  # warm-up
    t0 = time.perf_counter()
    for p in ids:
        engine.greedy_ids(p, tokens)
    return len(ids) * tokens / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--drop-layers", type=int, default=8, help="a quarter of 30, rounded up")
    ap.add_argument("--prompts", type=int, default=192)
    ap.add_argument("--answer-tokens", type=int, default=96)
    ap.add_argument("--epochs", type=float, default=2.0)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--tokens", type=int, default=64, help="new tokens per prompt in the speed run")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    import torch

    from model_repo.build import BuildOptions, build
    from model_repo.checkpoint import cache_dir, fetch_default
    from model_repo.gates import HELDOUT_TEXT
    from model_repo.training.data import ChatExample, write_chat_jsonl
    from model_repo.training.distill import DistillConfig, run_distill, teacher_answers
    from model_repo.training.evaluate import text_perplexity
    from model_repo.training.finetune import load_model, load_tokenizer
    from model_repo.training.prune import prune_checkpoint

    torch.set_num_threads(args.threads)
    teacher = fetch_default(print)
    root = cache_dir() / "bench" / "compression" / _key(args)
    root.mkdir(parents=True, exist_ok=True)
    tok = load_tokenizer(teacher)
    timings: dict[str, float] = {}

    text_file = root / "teacher-answers.jsonl"
    if not text_file.is_file():
        t0 = time.perf_counter()
        asked = [ChatExample(tuple(p), "-", i + 1) for i, p in enumerate(prompts(args.prompts))]
        answers = teacher_answers(load_model(teacher), tok, asked, args.answer_tokens)
        write_chat_jsonl(text_file, answers)
        timings["teacher answers"] = time.perf_counter() - t0
    pruned = root / "pruned"
    if not (pruned / "pruning.json").is_file():
        t0 = time.perf_counter()
        prune_checkpoint(teacher, pruned, args.drop_layers, text_file)
        timings["prune"] = time.perf_counter() - t0
    distilled = root / "distilled"
    if not (distilled / "training.json").is_file():
        t0 = time.perf_counter()
        run_distill(
            DistillConfig(
                teacher=str(teacher), student=str(pruned), out=str(distilled), data=str(text_file),
                epochs=args.epochs, learning_rate=1e-4, batch_size=8, temperature=1.0, alpha=0.9,
            )
        )  # fmt: skip
        timings["distill"] = time.perf_counter() - t0

    heldout = HELDOUT_TEXT.read_text(encoding="utf-8")
    ppl = {name: text_perplexity(load_model(path), tok, heldout) for name, path in
           (("teacher", teacher), ("pruned", pruned), ("distilled", distilled))}  # fmt: skip
    lost = ppl["pruned"] - ppl["teacher"]
    recovered = (ppl["pruned"] - ppl["distilled"]) / lost if lost > 0 else float("nan")

    builds: dict[str, dict[str, object]] = {}
    for name, path in (("teacher", teacher), ("distilled", distilled)):
        repo = root / f"repo-{name}-int4"
        report_file = repo / "llm" / "1" / "engine" / "build_report.json"
        if not report_file.is_file():
            t0 = time.perf_counter()
            build(BuildOptions(model=str(path), out=repo, quantize="int4"), lambda *_: None, print)
            timings[f"build {name} int4"] = time.perf_counter() - t0
        builds[name] = json.loads(report_file.read_text())
    prompt_ids = [
        tok.apply_chat_template(p, add_generation_prompt=True, tokenize=True)["input_ids"] for p in prompts(3)
    ]
    speed = {}
    for _round in range(2):  # alternate, keep each one's best: the cores are shared
        for name in ("teacher", "distilled"):
            engine_dir = root / f"repo-{name}-int4" / "llm" / "1" / "engine"
            speed[name] = max(speed.get(name, 0.0), _tok_s(engine_dir, args.threads, prompt_ids, args.tokens))

    layers = json.loads((pruned / "pruning.json").read_text())
    print(
        f"\nteacher {teacher.name}: 30 layers; dropped {layers['dropped']} ({len(layers['dropped'])} layers)"
    )
    print(f"load average at the end: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores (shared machine)")
    print(f"perplexity on held-out prose ({HELDOUT_TEXT.name}):")
    for name, value in ppl.items():
        print(f"  {name:<10}{value:>8.2f}  ({value / ppl['teacher'] - 1:+.1%} vs teacher)")
    print(f"  distillation recovered {recovered:.0%} of what pruning lost")
    for name, report in builds.items():
        q = report.get("quality") or {}
        print(
            f"int4 {name:<10} quality gate vs own fp32: agreement {q.get('agreement', 0):.1%}, "
            f"ppl {q.get('perplexity_increase', 0):+.2%} (passed: {q.get('passed', True)})"
        )
    ratio = speed["distilled"] / speed["teacher"]
    print(f"int4 engine tok/s, batch 1, {args.tokens} new tokens: teacher {speed['teacher']:.1f}, "
          f"pruned+distilled {speed['distilled']:.1f} ({ratio:.2f}x)")  # fmt: skip
    for step, seconds in timings.items():
        print(f"  time: {step} {seconds:.0f} s")
    figures = {
        "perplexity": ppl, "recovered": recovered, "tok_s": speed, "speedup": ratio,
        "dropped": layers["dropped"], "timings_s": timings,
        "quality": {n: r.get("quality") for n, r in builds.items()},
    }  # fmt: skip
    (root / "figures.json").write_text(json.dumps(figures, indent=2) + "\n")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
