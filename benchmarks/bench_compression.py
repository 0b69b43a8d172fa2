"""Compression pays (issue 17): prune the default model, distil it, build int4; one run, side by side.

    .venv/bin/python benchmarks/bench_compression.py [--drop-layers 8] [--variants depth[,width]]
        [--prompts 192 --answers 2 --answer-tokens 128] [--topk 32 --epochs 2 --lr 3e-4] [--stage ...]

The recipe of NVIDIA's Minitron (Compact Language Models via Pruning and Knowledge Distillation) at the
scale of two shared CPU cores:
1. the teacher (SmolLM2-135M-Instruct, 30 layers) is built to int4 (its quality gates against its own fp32
   export); that engine answers `--prompts` made-up writing prompts `--answers` times each, sampled with
   a seed per answer, `--streams` answers in one continuous batch (benchmarks/engine_text.py):
   the calibration and distillation text, prose like the held-out text, no data set needed;
2. prune: depth (`--drop-layers`, removed one at a time, each the layer whose removal changes the final
   hidden states least; `--criterion block`: the one-pass block influence instead) and/or width
   (`--mlp-keep`, by default as many weights as the dropped layers hold; the channels with the largest
   activations stay), scored on `--calibration` answers spread over the text;
3. the fp32 teacher scores the text once: its top `--topk` next-token log-probabilities at every token
   (teacher_topk.py), so each epoch costs only the student's step;
4. distil each student on those targets (KL over the top-k and the rest; with `--hidden-weight` also the
   teacher's hidden states at the same depth, Minitron's choice when depth is cut a lot;
   `--epochs` or `--steps` of `--batch` conversations, `--lr` with a `--schedule` and `--warmup`),
   printing held-out perplexity every `--eval-every` steps;
5. perplexity on held-out prose none of them trained on (model_repo/data/heldout.txt, the build gates'
   text) for teacher, pruned and distilled: the share of the pruning loss distillation recovered;
6. `tritonform build --quantize int4` of each distilled student (quality gates against its own fp32), and
   the int4 engines' tokens/s side by side with the teacher's, batch 1, greedy, rounds alternated.

Each expensive step is cached under ${TRITONFORM_CACHE:-~/.cache/tritonform}/bench/compression/, keyed by
its inputs' content (the teacher, the text, the code of that step, its settings, the step before it), so a
re-run only redoes what changed and re-measures. The machine is shared (2 cores, other sessions): the load
average is printed with the figures; compare ratios measured in the same run.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
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
TRAINING = ROOT / "model_repo" / "training"


def prompts(count: int) -> list[list[dict[str, str]]]:
    items = [form.format(subject) for form in FORMS for subject in SUBJECTS]
    return [[{"role": "user", "content": text}] for text in items[:count]]


def key(*parts: object) -> str:
    """A content key: strings, numbers and files (their bytes) hashed together."""
    h = hashlib.sha256()
    for part in parts:
        h.update(part.read_bytes() if isinstance(part, Path) else repr(part).encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def cached(path: Path, marker: str, make: Callable[[Path], object], timings: dict[str, float]) -> Path:
    """`path` if it holds `marker` (a finished step); else make it in a temporary sibling, then rename."""
    if (path / marker).is_file():
        return path
    import shutil

    tmp = path.with_name(f".{path.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    t0 = time.perf_counter()
    make(tmp)
    timings[path.name.rsplit("-", 1)[0]] = time.perf_counter() - t0
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)
    return path


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.1f} (5 min {five:.1f}) on {os.cpu_count()} cores"


def parameters(path: Path) -> int:
    from safetensors import safe_open

    total = 0
    for f in path.glob("*.safetensors"):
        with safe_open(str(f), "pt") as st:
            for name in st.keys():  # noqa: SIM118 (safe_open is not a mapping)
                n = 1
                for d in st.get_slice(name).get_shape():
                    n *= int(d)
                total += n
    return total


def mlp_keep_for_same_size(config: dict[str, Any], drop: int) -> float:
    """The MLP share that removes as many weights as `drop` whole layers hold (attention included)."""
    h, inter, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    head = config.get("head_dim") or h // config["num_attention_heads"]
    attn = h * head * (2 * config["num_attention_heads"] + 2 * config["num_key_value_heads"])
    per_layer = attn + 3 * h * inter + 2 * h  # + the two norms
    removed_channels = drop * per_layer / (layers * 3 * h)
    return 1.0 - removed_channels / inter


def tok_s(engine_dir: Path, threads: int, ids: list[list[int]], tokens: int) -> float:
    from model_repo.runtime.engine import Engine

    engine = Engine.load(engine_dir, num_threads=threads)
    engine.greedy_ids(ids[0], 4)  # warm-up
    t0 = time.perf_counter()
    for p in ids:
        engine.greedy_ids(p, tokens)
    return len(ids) * tokens / (time.perf_counter() - t0)


def main() -> None:
    from model_repo.training.prune import CRITERIA

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--drop-layers", type=int, default=8, help="depth pruning: a quarter of 30, rounded up")
    ap.add_argument("--mlp-keep", type=float, default=None, help="width pruning (default: the same size)")
    ap.add_argument("--prompts", type=int, default=192, help="writing prompts the teacher answers")
    ap.add_argument("--answers", type=int, default=2, help="sampled answers per prompt (own seed each)")
    ap.add_argument("--answer-tokens", type=int, default=128, help="at most this many tokens per answer")
    ap.add_argument("--streams", type=int, default=16, help="answers advancing together in the engine")
    ap.add_argument("--sample-temperature", type=float, default=0.7, help="sampling the teacher's answers")
    ap.add_argument("--top-p", type=float, default=0.9)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--text-engine", type=Path, default=None,
        help="an int4/fp32 teacher engine folder (llm/1/engine) to answer with (default: this run's build)",
    )  # fmt: skip
    ap.add_argument(
        "--text", type=Path, default=None,
        help="distil (and calibrate) on this chat JSON Lines file instead of the engine's answers",
    )  # fmt: skip
    ap.add_argument("--calibration", type=int, default=16, help="answers the pruning scores are taken on")
    ap.add_argument(
        "--criterion",
        choices=CRITERIA,
        default=CRITERIA[0],
        help="depth pruning's layer choice: output (greedy) or block (one pass)",
    )
    ap.add_argument("--topk", type=int, default=32, help="teacher log-probabilities kept per token")
    ap.add_argument("--epochs", type=float, default=2.0, help="passes over the text per student")
    ap.add_argument("--steps", type=int, default=-1, help="distillation steps per student (over --epochs)")
    ap.add_argument("--batch", type=int, default=8, help="conversations per distillation step")
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--schedule", default="cosine", help="learning rate: constant, cosine or linear")
    ap.add_argument("--warmup", type=int, default=4, help="warm-up steps")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--eval-every", type=int, default=10, help="held-out perplexity every N steps")
    ap.add_argument(
        "--quant-aware", choices=("none", "int4"), default="int4",
        help="int4: the students train through the int4 build's rounding (the build then keeps what they "
        "learned); none: plain fp32 distillation",
    )  # fmt: skip
    ap.add_argument(
        "--hidden-weight", type=float, default=0.0,
        help="also distil the teacher's hidden states at the same depth, weighted this against the KL "
        "(Minitron's recipe when depth is cut a lot; 0: logits only)",
    )  # fmt: skip
    ap.add_argument("--variants", default="depth", help="which pruned students: depth, width or both")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--tokens", type=int, default=64, help="new tokens per prompt in the speed run")
    ap.add_argument(
        "--stage", choices=("text", "prune", "train", "all"), default="all",
        help="text: stop after the teacher's answers; prune: stop after pruning (prints the pruned "
        "models' perplexity); train: stop after "
        "distillation (variants may train in parallel processes, then run 'all')",
    )  # fmt: skip
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    import torch
    from engine_text import SampledText, engine_answers
    from rich.progress import Progress, TextColumn

    from model_repo.build import BuildOptions, build, build_code_digest
    from model_repo.checkpoint import cache_dir, fetch_default
    from model_repo.gates import DEFAULT_MAX_PPL_INCREASE, DEFAULT_MIN_AGREEMENT, HELDOUT_TEXT, meets_gates
    from model_repo.training.data import load_chat_jsonl, write_chat_jsonl
    from model_repo.training.distill import DistillConfig, run_distill
    from model_repo.training.distill_topk import rendered
    from model_repo.training.evaluate import text_perplexity
    from model_repo.training.finetune import load_model, load_tokenizer
    from model_repo.training.prune import PRUNING_FILE, prune_checkpoint
    from model_repo.training.teacher_topk import TOPK_FILE, topk_summary, write_targets

    torch.set_num_threads(args.threads)
    print(f"start: {load()}", flush=True)
    teacher = fetch_default(print)
    root = cache_dir() / "bench" / "compression"
    root.mkdir(parents=True, exist_ok=True)
    tok = load_tokenizer(teacher)
    timings: dict[str, float] = {}
    config = json.loads((teacher / "config.json").read_text())
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if not variants or set(variants) - {"depth", "width"}:
        sys.exit(f"--variants {args.variants!r}: give depth, width or depth,width")
    mlp_keep = args.mlp_keep or mlp_keep_for_same_size(config, args.drop_layers)

    def built(name: str, model: Path) -> Path:
        """`model`'s int4 build, cached: its engine folder. The teacher's must pass the quality gates
        against its own fp32 export; a student's is built whatever its figures (the speed is measured
        either way) and judged against the same gates in the report below."""
        bkey = key(model.name, build_code_digest("bench-int4"))
        student = name != "teacher"

        def make(repo: Path) -> None:
            options = BuildOptions(
                model=str(model), out=repo, quantize="int4",
                min_agreement=0.0 if student else DEFAULT_MIN_AGREEMENT,
                max_ppl_increase=1e9 if student else DEFAULT_MAX_PPL_INCREASE,
            )  # fmt: skip
            build(options, lambda *_: None, print)

        return cached(root / f"repo-{name}-int4-{bkey}", "REPOSITORY.json", make, timings) / "llm/1/engine"

    def teacher_engine() -> Path:
        return built("teacher", teacher)

    asked = prompts(args.prompts)
    sampled = SampledText(
        answers_per_prompt=args.answers, max_new_tokens=args.answer_tokens, streams=args.streams,
        temperature=args.sample_temperature, top_p=args.top_p, seed=args.seed,
    )  # fmt: skip
    text_code = Path(__file__).with_name("engine_text.py")
    answers_dir = root / f"text-{key(teacher.name, asked, sampled, text_code)}"

    def answer(out: Path) -> None:
        text_engine = args.text_engine or teacher_engine()
        out.mkdir(parents=True)
        with Progress(*Progress.get_default_columns(), TextColumn("{task.fields[tokens]} tokens")) as bar:
            task = bar.add_task("teacher answering (engine)", total=len(asked) * args.answers, tokens=0)
            examples = engine_answers(
                text_engine, tok, asked, sampled, threads=args.threads,
                progress=lambda done, _total, n: bar.update(task, completed=done, tokens=n),
            )  # fmt: skip
        write_chat_jsonl(out / "answers.jsonl", examples)

    if args.text is not None:  # the user's own chat text instead of the engine's answers
        if not args.text.is_file():
            sys.exit(f"--text {args.text}: no such file (a chat JSON Lines file, one conversation a line)")
        text = args.text
        answers_dir = root / f"given-{key(text)}"
        answers_dir.mkdir(exist_ok=True)
    else:
        text = cached(answers_dir, "answers.jsonl", answer, timings) / "answers.jsonl"
    print(f"distillation text: {len(text.read_text().splitlines())} answers; {load()}", flush=True)
    if args.stage == "text":
        return
    calibration = answers_dir / f"calibration-{args.calibration}.jsonl"
    if not calibration.is_file():  # answers spread over the prompts' forms and subjects
        lines = text.read_text(encoding="utf-8").splitlines(keepends=True)
        every = max(1, len(lines) // args.calibration)
        calibration.write_text("".join(lines[::every][: args.calibration]), encoding="utf-8")
    tkey = key(teacher.name, text, args.topk, args.temperature, TRAINING / "teacher_topk.py")

    def score(out: Path) -> None:
        sequences = rendered(tok, load_chat_jsonl(text), DistillConfig.max_length)
        write_targets(load_model(teacher), sequences, args.topk, args.temperature, out / TOPK_FILE)

    targets: Path | None = None
    prune_settings = {"depth": (args.drop_layers, None), "width": (0, mlp_keep)}
    students: dict[str, dict[str, Path]] = {}
    for variant in variants:
        drop, keep = prune_settings[variant]
        criterion = args.criterion if drop else "block"  # width pruning has no layer choice
        pkey = key(teacher.name, calibration, TRAINING / "prune.py", drop, keep, criterion)
        pruned = cached(
            root / f"pruned-{variant}-{pkey}",
            PRUNING_FILE,
            functools.partial(
                prune_checkpoint,
                teacher,
                drop=drop,
                calibration=calibration,
                mlp_keep=keep,
                criterion=criterion,
            ),
            timings,
        )
        if args.stage == "prune":
            value = text_perplexity(load_model(pruned), tok, HELDOUT_TEXT.read_text(encoding="utf-8"))
            print(f"{variant} pruned: held-out perplexity {value:.2f}; {parameters(pruned) / 1e6:.1f} M "
                  f"parameters; {load()}; {timings}", flush=True)  # fmt: skip
            continue
        if targets is None:
            targets = cached(root / f"targets-{tkey}", TOPK_FILE, score, timings) / TOPK_FILE
            print(f"teacher targets: {topk_summary(targets)}; {load()}", flush=True)
        settings = (
            args.epochs, args.steps, args.batch, args.lr, args.schedule, args.warmup, args.quant_aware,
            args.hidden_weight,
        )  # fmt: skip
        names = (
            "distill.py", "distill_topk.py", "finetune.py", "teacher_topk.py", "quant_aware.py",
            "hidden_states.py",
        )  # fmt: skip
        code = [TRAINING / f for f in names]
        dkey = key(pkey, tkey, *code, settings)

        def distil(out: Path, student: Path = pruned, targets: Path = targets) -> None:
            run_distill(
                DistillConfig(
                    teacher=str(teacher), student=str(student), out=str(out), data=str(text),
                    epochs=args.epochs, max_steps=args.steps, learning_rate=args.lr, batch_size=args.batch,
                    temperature=args.temperature, alpha=1.0, topk=args.topk, topk_file=str(targets),
                    schedule=args.schedule, warmup_steps=args.warmup, heldout=str(HELDOUT_TEXT),
                    eval_every=args.eval_every, quant_aware=args.quant_aware,
                    hidden_weight=args.hidden_weight,
                )
            )  # fmt: skip

        distilled = cached(root / f"distilled-{variant}-{dkey}", "training.json", distil, timings)
        students[variant] = {"pruned": pruned, "distilled": distilled}
    if args.stage != "all":
        print(f"trained {', '.join(variants)}: {load()}; {timings}")
        return

    heldout = HELDOUT_TEXT.read_text(encoding="utf-8")
    ppl: dict[str, float] = {"teacher": text_perplexity(load_model(teacher), tok, heldout)}
    for variant, paths in students.items():
        for stage, path in paths.items():
            ppl[f"{variant} {stage}"] = text_perplexity(load_model(path), tok, heldout)
    print(f"perplexity measured: {load()}", flush=True)

    engines = {"teacher": teacher_engine()}
    for variant, paths in students.items():
        engines[variant] = built(variant, paths["distilled"])
    reports = {n: json.loads((e / "build_report.json").read_text()) for n, e in engines.items()}
    prompt_ids = [
        tok.apply_chat_template(p, add_generation_prompt=True, tokenize=True)["input_ids"] for p in prompts(3)
    ]
    speed: dict[str, float] = {}
    for _round in range(2):  # alternate, keep each one's best: the cores are shared
        for name, engine_dir in engines.items():
            speed[name] = max(speed.get(name, 0.0), tok_s(engine_dir, args.threads, prompt_ids, args.tokens))
    print(f"speed measured: {load()}", flush=True)

    print(
        f"\nteacher {teacher.name}: {config['num_hidden_layers']} layers, "
        f"{parameters(teacher) / 1e6:.1f} M parameters"
    )
    for variant, paths in students.items():
        record = json.loads((paths["pruned"] / PRUNING_FILE).read_text())
        what = (
            f"dropped layers {record['dropped']}"
            if variant == "depth"
            else f"MLP channels {record['mlp']['channels_before']} -> {record['mlp']['channels_kept']}"
        )
        summary = json.loads((paths["distilled"] / "training.json").read_text())
        losses = summary.get("losses") or [float("nan")]
        print(
            f"{variant:<6}{what}; {parameters(paths['distilled']) / 1e6:.1f} M parameters; distilled "
            f"{summary['steps']} steps x {args.batch} conversations ({summary.get('tokens_seen', 0)} tokens, "
            f"{summary['runtime_s'] / 60:.0f} min), KL {losses[0]:.3f} -> {losses[-1]:.3f}"
        )
        history = summary.get("heldout_perplexity", [])
        curve = ", ".join(f"{int(step)}: {value:.1f}" for step, value in history)
        print(f"      held-out perplexity by step: {curve}")
    print(f"perplexity on held-out prose ({HELDOUT_TEXT.name}, never trained on):")
    for name, value in ppl.items():
        print(f"  {name:<18}{value:>9.2f}  ({value / ppl['teacher'] - 1:+.1%} vs teacher)")
    recovered = {}
    for variant in students:
        lost = ppl[f"{variant} pruned"] - ppl["teacher"]
        recovered[variant] = (
            (ppl[f"{variant} pruned"] - ppl[f"{variant} distilled"]) / lost if lost > 0 else float("nan")
        )
        print(f"  {variant}: distillation recovered {recovered[variant]:.0%} of what pruning lost")
    gates = {}
    for name, report in reports.items():
        q = report.get("quality") or {}
        agreement, decode = q.get("agreement", 0.0), q.get("decode_agreement", 0.0)
        rise = q.get("perplexity_increase", float("inf"))
        gates[name] = meets_gates(agreement, decode, rise)  # the default gates, whatever the build used
        print(f"int4 {name:<8} quality gates vs own fp32: agreement {agreement:.1%} on held-out text, "
              f"{decode:.1%} while generating (min {DEFAULT_MIN_AGREEMENT:.0%}), perplexity {rise:+.2%} "
              f"(max {DEFAULT_MAX_PPL_INCREASE:+.0%}): {'passed' if gates[name] else 'FAILED'}")  # fmt: skip
    ratios = {n: speed[n] / speed["teacher"] for n in students}
    print(
        f"int4 engine tok/s, batch 1, {args.tokens} new tokens, {args.threads} threads: "
        + ", ".join(
            f"{n} {v:.1f}" + (f" ({ratios[n]:.2f}x)" if n in ratios else "") for n, v in speed.items()
        )
    )
    for step, seconds in timings.items():
        print(f"  time: {step} {seconds:.0f} s")
    print(f"end: {load()}")
    figures = {
        "perplexity": ppl, "recovered": recovered, "tok_s": speed, "speedup": ratios, "mlp_keep": mlp_keep,
        "settings": vars(args) | {"json": None}, "timings_s": timings,
        "quality": {n: r.get("quality") for n, r in reports.items()}, "gates_passed": gates,
        "load": os.getloadavg(),
    }  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
