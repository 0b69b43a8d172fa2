"""Before the checkpoint: `tritonform finetune`, `tritonform prune` and `tritonform distill`.

Each writes a Hugging Face checkpoint that `tritonform build --model DIR` takes as is, shows progress
(steps, loss, tokens/s, time left) and writes its metrics into the output folder. With `--stack NAME`
the work runs on the stack's GPU pool instead (tritonform/commands/train_remote.py).

Heavy imports happen inside the commands so `--help` stays fast. Bad input prints one clear line and
exits 2; a failed run exits 1.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from tritonform.commands.failures import EXIT_BAD_INPUT, EXIT_FAILED, fail

T = TypeVar("T")

ModelOpt = Annotated[
    str,
    typer.Option(
        "--model", "-m", help="A local Hugging Face checkpoint directory, or 'default' (SmolLM2-135M)."
    ),
]
DataOpt = Annotated[
    Path,
    typer.Option(
        "--data", help='JSON Lines in OpenAI\'s chat fine-tuning format: one {"messages": [...]} per line.'
    ),
]
OutOpt = Annotated[
    Path, typer.Option("--out", "-o", help="The checkpoint folder to write (metrics go there too).")
]
NprocOpt = Annotated[
    int,
    typer.Option("--nproc", help="Processes (GPUs per node on the pool) to train with, through torchrun."),
]
StackOpt = Annotated[
    str | None,
    typer.Option("--stack", help="Run on this stack's GPU pool as a Kubernetes Job instead of locally."),
]
RenderOpt = Annotated[
    Path | None,
    typer.Option("--render", help="With --stack: write the Job's manifests here instead of submitting."),
]
ImageOpt = Annotated[
    str | None,
    typer.Option(
        "--image",
        help="With --stack: a training image to run instead of the stack's own (docker/trainer, pushed by "
        "`pulumi up`).",
    ),
]
NodesOpt = Annotated[int, typer.Option("--nodes", help="With --stack: GPU nodes to train on (one pod each).")]


def bad_input(work: Callable[[], T]) -> T:
    """`work()`, a check of the user's input: its `DataError` or `CheckpointError` -> its line, exit 2."""
    from model_repo.checkpoint import CheckpointError
    from model_repo.training.data import DataError

    try:
        return work()
    except (DataError, CheckpointError) as exc:
        raise fail(str(exc), EXIT_BAD_INPUT) from None


def resolve_model(model: str) -> str:
    """'default' -> the cached SmolLM2 checkpoint; a directory is checked to be a usable checkpoint."""
    from model_repo.checkpoint import resolve_checkpoint

    return str(bad_input(lambda: resolve_checkpoint(model)).path)


def run_guarded(what: str, work: Any) -> Any:
    """Run `work()`; bad input -> exit 2 with its message, other failures -> exit 1, Ctrl-C -> 130."""
    from model_repo.checkpoint import CheckpointError
    from model_repo.training.data import DataError

    try:
        return work()
    except KeyboardInterrupt:
        raise fail(f"{what} interrupted; the output folder may hold a partial result", 130) from None
    except (DataError, CheckpointError) as exc:
        raise fail(str(exc), EXIT_BAD_INPUT) from None
    except (RuntimeError, OSError, ValueError) as exc:
        raise fail(f"{what} failed ({type(exc).__name__}): {exc}", EXIT_FAILED) from None


def check_out(out: Path, sources: list[str], markers: tuple[str, ...], what: str) -> None:
    """Before any work: `--out` must be a folder that is new, empty or an earlier run of this command
    (holding one of `markers`), and neither an input checkpoint nor inside one, so a run never writes over
    what it reads or over a folder of the user's."""
    folder = out.expanduser()
    if folder.exists() and not folder.is_dir():
        raise fail(f"--out {out} is a file; name a folder for the checkpoint", EXIT_BAD_INPUT)
    target = folder.resolve()
    for source in sources:
        checkpoint = Path(source).expanduser().resolve()
        if target == checkpoint or checkpoint in target.parents:
            raise fail(
                f"--out {out} is the input checkpoint {source} or inside it; the run would write over what "
                "it reads: choose a new folder",
                EXIT_BAD_INPUT,
            )
    from infra.offline.render import holds_other_files

    if holds_other_files(folder, markers):
        raise fail(
            f"--out {out} is a folder with other files in it, not an earlier {what} run; choose a new or "
            "empty folder",
            EXIT_BAD_INPUT,
        )


def check_processes(nproc: int, nodes: int, batch_size: int) -> None:
    """--nproc and --nodes are at least 1, and the global batch splits evenly over every process."""
    from model_repo.training.finetune import per_device_batch

    if nproc < 1:
        raise fail(f"--nproc must be at least 1 (got {nproc})", EXIT_BAD_INPUT)
    if nodes < 1:
        raise fail(f"--nodes must be at least 1 (got {nodes})", EXIT_BAD_INPUT)
    bad_input(lambda: per_device_batch(batch_size, nproc * nodes))


def _check_data(data: Path) -> None:
    from model_repo.training.data import load_chat_jsonl

    bad_input(lambda: load_chat_jsonl(data))


def finetune_command(
    data: DataOpt,
    out: OutOpt,
    model: ModelOpt = "default",
    lora: Annotated[
        bool,
        typer.Option(
            "--lora/--full", help="LoRA adapters merged into the weights (default), or all weights."
        ),
    ] = True,
    epochs: Annotated[float, typer.Option("--epochs", help="Passes over the data.")] = 3.0,
    max_steps: Annotated[
        int, typer.Option("--max-steps", help="Stop after this many steps (overrides --epochs).")
    ] = -1,
    lr: Annotated[
        float | None, typer.Option("--lr", help="Learning rate (default 2e-4 LoRA, 2e-5 full).")
    ] = None,
    batch_size: Annotated[
        int, typer.Option("--batch-size", help="Global batch, split over the processes.")
    ] = 8,
    lora_rank: Annotated[int, typer.Option("--lora-rank", help="LoRA rank.")] = 16,
    max_length: Annotated[
        int,
        typer.Option(
            "--max-length",
            help="Longest conversation learnt, in tokens (chat template included); longer answers are cut "
            "and the run says how many.",
        ),
    ] = 512,
    nproc: NprocOpt = 1,
    strategy: Annotated[
        str, typer.Option("--strategy", help="ddp (each process holds the model) or fsdp (sharded).")
    ] = "ddp",
    seed: Annotated[int, typer.Option("--seed", help="Random seed (data order, LoRA init).")] = 0,
    stack: StackOpt = None,
    render: RenderOpt = None,
    image: ImageOpt = None,
    nodes: NodesOpt = 1,
) -> None:
    """Fine-tune a model on chat data with TRL's SFTTrainer: the loss is on the assistant's answer only and
    the chat template is applied as at serving time. Writes a checkpoint (LoRA merged, adapter kept in
    adapter/) plus metrics.jsonl and training.json, ready for `tritonform build --model OUT`."""
    from model_repo.training.finetune import SUMMARY_FILE, TRAINER_DIR, FinetuneConfig

    _check_data(data)
    if strategy not in ("ddp", "fsdp"):
        raise fail(f"--strategy {strategy!r} is not one of ddp, fsdp", EXIT_BAD_INPUT)
    config = FinetuneConfig(
        model=model,
        data=str(data),
        out=str(out),
        method="lora" if lora else "full",
        epochs=epochs,
        max_steps=max_steps,
        learning_rate=lr,
        batch_size=batch_size,
        lora_rank=lora_rank,
        lora_alpha=2 * lora_rank,
        max_length=max_length,
        seed=seed,
        strategy=strategy,  # type: ignore[arg-type]
    )
    bad_input(config.validate)  # the settings' own checks, before anything loads or uploads
    check_processes(nproc, nodes if stack is not None or render is not None else 1, batch_size)
    if stack is not None or render is not None:
        from tritonform.commands.train_remote import submit_remote

        submit_remote("finetune", stack, render, image, nodes, nproc, data, model, out, {
            "method": "lora" if lora else "full", "epochs": epochs, "max_steps": max_steps,
            "learning_rate": lr, "batch_size": batch_size, "lora_rank": lora_rank,
            "lora_alpha": 2 * lora_rank, "max_length": max_length,
            "seed": seed, "strategy": strategy,
        })  # fmt: skip
        return
    config = replace(config, model=resolve_model(model))
    from model_repo.training.progress import METRICS_FILE

    check_out(out, [config.model], (SUMMARY_FILE, METRICS_FILE, TRAINER_DIR), "finetune")
    from model_repo.training.launch import run

    summary = run_guarded("fine-tuning", lambda: run("finetune", config, nproc))
    _done(out, summary)


def _done(out: Path, summary: dict[str, Any]) -> None:
    from rich.console import Console

    losses = summary.get("losses") or [float("nan")]
    Console(stderr=True, highlight=False).print(
        f"{summary['steps']} steps on {summary['processes']} process(es), "
        f"loss {losses[0]:.4f} -> {losses[-1]:.4f}; "
        f"checkpoint in {out} (next: tritonform build --model {out} --out REPO)"
    )
    typer.echo(str(out))


def prune_command(
    model: ModelOpt,
    out: OutOpt,
    calibration: Annotated[
        Path,
        typer.Option(
            "--calibration", help="Text the layers are scored on: chat .jsonl (rendered) or plain text."
        ),
    ],
    drop_layers: Annotated[
        int, typer.Option("--drop-layers", help="How many decoder layers to remove (depth pruning).")
    ] = 0,
    mlp_keep: Annotated[
        float | None,
        typer.Option(
            "--mlp-keep",
            help="Width pruning: the share of each MLP's channels to keep, e.g. 0.65 (rounded to 32s).",
        ),
    ] = None,
    criterion: Annotated[
        str,
        typer.Option(
            "--criterion",
            help="How depth pruning picks layers. output: N rounds, each removing the layer whose removal "
            "changes the model's final hidden states least (measured by running the model without it; "
            "minutes on a CPU). block: one pass, the layers that turn their own input least.",
        ),
    ] = "output",
) -> None:
    """Prune a model as in NVIDIA's Minitron. Depth: remove the N decoder layers whose removal changes the
    hidden states least on the calibration text (see --criterion). Width: keep the MLP channels with the
    largest activations on that text. Writes the smaller checkpoint and pruning.json (the scores and the
    choice); follow with `tritonform distill`."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from model_repo.training.data import read_text
    from model_repo.training.prune import PRUNING_FILE, check_choice, prune_checkpoint

    bad_input(lambda: check_choice(drop_layers, mlp_keep, criterion))  # before the model loads
    bad_input(
        lambda: read_text(calibration, "--calibration", "pass chat JSON Lines (.jsonl) or a plain text file")
    )
    path = resolve_model(model)
    check_out(out, [path], (PRUNING_FILE,), "prune")
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, transient=True) as bar:
        task = bar.add_task("pruning", total=None)  # counts the output criterion's measured removals

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        result = run_guarded(
            "pruning",
            lambda: prune_checkpoint(path, out, drop_layers, calibration, mlp_keep, criterion, progress),
        )
    from rich.console import Console

    what = [f"dropped layers {result.dropped} of {len(result.importance)}"] if result.dropped else []
    if result.mlp_channels is not None:
        what.append(f"kept {result.mlp_channels} MLP channels per layer")
    Console(stderr=True, highlight=False).print(
        f"{'; '.join(what)}; checkpoint in {out} "
        f"(next: tritonform distill --teacher {model} --student {out} ...)"
    )
    typer.echo(str(out))


def distill_command(
    teacher: Annotated[
        str, typer.Option("--teacher", help="The model to learn from (checkpoint or 'default').")
    ],
    student: Annotated[
        str, typer.Option("--student", help="The model that learns (e.g. a pruned checkpoint).")
    ],
    out: OutOpt,
    data: Annotated[
        Path | None, typer.Option("--data", help="Labelled chat JSON Lines (answers mixed in by --alpha).")
    ] = None,
    prompts: Annotated[
        Path | None,
        typer.Option(
            "--prompts", help="Without --data: chat JSON Lines of prompts; the teacher answers them."
        ),
    ] = None,
    epochs: Annotated[float, typer.Option("--epochs", help="Passes over the data.")] = 1.0,
    max_steps: Annotated[int, typer.Option("--max-steps", help="Stop after this many steps.")] = -1,
    lr: Annotated[float, typer.Option("--lr", help="Learning rate.")] = 1e-4,
    batch_size: Annotated[
        int, typer.Option("--batch-size", help="Global batch, split over the processes.")
    ] = 8,
    temperature: Annotated[float, typer.Option("--temperature", help="Softens both distributions.")] = 2.0,
    alpha: Annotated[
        float, typer.Option("--alpha", help="Weight of the KL term (1 - alpha: label loss).")
    ] = 0.5,
    topk: Annotated[
        int,
        typer.Option(
            "--topk",
            help="0: the teacher runs beside the student at every step. N: the teacher scores the text "
            "once, keeping its N likeliest next tokens per position (cached in --out), and every epoch "
            "trains only the student (needs --alpha 1).",
        ),
    ] = 0,
    schedule: Annotated[
        str, typer.Option("--schedule", help="Learning rate over the run: constant, cosine or linear.")
    ] = "constant",
    warmup_steps: Annotated[int, typer.Option("--warmup-steps", help="Steps of learning-rate warm-up.")] = 0,
    heldout: Annotated[
        Path | None,
        typer.Option("--heldout", help="Plain text whose perplexity is printed every --eval-every steps."),
    ] = None,
    eval_every: Annotated[int, typer.Option("--eval-every", help="Steps between held-out checks.")] = 0,
    quant_aware: Annotated[
        str,
        typer.Option(
            "--quant-aware",
            help="none | int4: the student trains through the rounding of `build --quantize int4` (its "
            "weights, and the kernels' 8-bit inputs) and is written rounded, so its int4 build keeps what "
            "distillation taught it.",
        ),
    ] = "none",
    hidden_weight: Annotated[
        float,
        typer.Option(
            "--hidden-weight",
            help="0: learn the teacher's logits only. W > 0: also its hidden states, each kept layer's "
            "output against the teacher's at the same depth (the layers a `tritonform prune` student "
            "dropped are read from its pruning.json), weighted W against the KL; Minitron's recipe when "
            "many layers were dropped. The teacher then runs beside the student at every step.",
        ),
    ] = 0.0,
    nproc: NprocOpt = 1,
    stack: StackOpt = None,
    render: RenderOpt = None,
    image: ImageOpt = None,
    nodes: NodesOpt = 1,
) -> None:
    """Distil a teacher into a student: KL between their temperature-softened next-token distributions mixed
    with the label loss, on the answers of --data, or (without it) on the teacher's own answers to --prompts.
    Writes the student's checkpoint plus metrics.jsonl (loss, kl, ce per step) and training.json."""
    from model_repo.training.distill import DistillConfig
    from model_repo.training.finetune import SUMMARY_FILE, TRAINER_DIR

    if (data is None) == (prompts is None):
        raise fail(
            "give exactly one of --data FILE (labelled) or --prompts FILE (the teacher answers)",
            EXIT_BAD_INPUT,
        )
    if data is not None:
        _check_data(data)
    if prompts is not None:
        from model_repo.training.evaluate import load_prompts

        bad_input(lambda: load_prompts(prompts))  # read now, not after the teacher has loaded
    config = DistillConfig(
        teacher=teacher, student=student, out=str(out), data=str(data) if data else None,
        prompts=str(prompts) if prompts else None, epochs=epochs, max_steps=max_steps, learning_rate=lr,
        batch_size=batch_size, temperature=temperature, alpha=alpha,
        heldout=str(heldout) if heldout else None, eval_every=eval_every, topk=topk, schedule=schedule,
        warmup_steps=warmup_steps, quant_aware=quant_aware, hidden_weight=hidden_weight,
    )  # fmt: skip
    bad_input(config.validate)  # the settings' own checks, before anything loads or uploads
    check_processes(nproc, nodes if stack is not None or render is not None else 1, batch_size)
    if stack is not None or render is not None:
        from tritonform.commands.train_remote import submit_remote

        if heldout is not None:
            raise fail("--heldout is read on this machine: leave it out with --stack", EXIT_BAD_INPUT)
        submit_remote("distill", stack, render, image, nodes, nproc, data or prompts, student, out, {
            "teacher": teacher, "epochs": epochs, "max_steps": max_steps, "learning_rate": lr,
            "batch_size": batch_size, "temperature": temperature, "alpha": alpha,
            "data_is_prompts": data is None, "topk": topk, "schedule": schedule,
            "warmup_steps": warmup_steps, "quant_aware": quant_aware, "hidden_weight": hidden_weight,
        })  # fmt: skip
        return
    config = replace(config, teacher=resolve_model(teacher), student=resolve_model(student))
    from model_repo.training.distill import TEACHER_ANSWERS
    from model_repo.training.progress import METRICS_FILE
    from model_repo.training.teacher_topk import TOPK_FILE

    earlier = (SUMMARY_FILE, METRICS_FILE, TRAINER_DIR, TEACHER_ANSWERS, TOPK_FILE)  # a finished or cut run's
    check_out(out, [config.teacher, config.student], earlier, "distill")
    from model_repo.training.launch import run

    summary = run_guarded("distillation", lambda: run("distill", config, nproc))
    _done(out, summary)


def register(app: typer.Typer) -> None:
    """Add finetune, prune and distill to the main app."""
    app.command("finetune")(finetune_command)
    app.command("prune")(prune_command)
    app.command("distill")(distill_command)
