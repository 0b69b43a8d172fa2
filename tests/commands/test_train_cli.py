"""`tritonform finetune|prune|distill|eval` as a user runs them: help a newcomer understands, one clear
line for bad input, a local run end to end on the tiny model, and `--stack --render` writing a strictly
valid Job; submitting is exercised up to the Kubernetes API call (uploads to a fake store, a fake API)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from infra.offline.render import validate
from tests.model_repo.training.facts import write_facts
from tritonform.cli import app
from tritonform.commands import train_remote

runner = CliRunner()


@pytest.mark.parametrize("command", ["finetune", "prune", "distill", "eval"])
def test_every_command_explains_itself(command: str) -> None:
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0
    assert "--out" in result.output or "--data" in result.output


def test_a_bad_data_line_is_one_clear_error(tmp_path: Path) -> None:
    data = tmp_path / "bad.jsonl"
    data.write_text('{"messages": [{"role": "user", "content": "q"}]}\n')
    result = runner.invoke(app, ["finetune", "--data", str(data), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert f"{data}:1" in result.output and "last message must be the assistant" in result.output
    assert "Traceback" not in result.output


def test_bad_model_and_metric_are_clear_errors(tmp_path: Path) -> None:
    data = write_facts(tmp_path / "facts.jsonl")
    result = runner.invoke(app, ["finetune", "--data", str(data), "--out", "o", "--model", str(tmp_path)])
    assert result.exit_code == 2 and "no config.json" in result.output
    result = runner.invoke(
        app, ["eval", "--data", str(data), "--model", str(tmp_path), "--metrics", "accuracy"]
    )
    assert result.exit_code == 2 and "choose from" in result.output
    result = runner.invoke(app, ["distill", "--teacher", "a", "--student", "b", "--out", "o"])
    assert result.exit_code == 2 and "exactly one of --data" in result.output


def test_prune_without_a_choice_or_with_a_bad_fraction_is_one_clear_line(
    tiny_llama_checkpoint: Path, tmp_path: Path
) -> None:
    data = write_facts(tmp_path / "facts.jsonl")
    base = [
        "prune",
        "--model",
        str(tiny_llama_checkpoint),
        "--out",
        str(tmp_path / "p"),
        "--calibration",
        str(data),
    ]
    result = runner.invoke(app, base)
    assert result.exit_code == 2 and "nothing to prune" in result.output
    result = runner.invoke(app, [*base, "--mlp-keep", "1.5"])
    assert result.exit_code == 2 and "--mlp-keep must be a fraction" in result.output
    result = runner.invoke(app, [*base, "--drop-layers", "1", "--criterion", "cosine"])
    assert result.exit_code == 2 and "--criterion 'cosine': choose output or block" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "p").exists()
    missing = [*base[:-1], str(tmp_path / "nope.txt"), "--drop-layers", "1"]
    result = runner.invoke(app, missing)
    assert result.exit_code == 2 and "--calibration" in result.output and "does not exist" in result.output


def test_finetune_then_eval_locally_on_the_tiny_model(tiny_llama_checkpoint: Path, tmp_path: Path) -> None:
    data = write_facts(tmp_path / "facts.jsonl")
    out = tmp_path / "ft"
    result = runner.invoke(app, [
        "finetune", "--model", str(tiny_llama_checkpoint), "--data", str(data), "--out", str(out),
        "--max-steps", "3", "--batch-size", "4", "--lr", "1e-3",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert (out / "metrics.jsonl").is_file() and (out / "adapter").is_dir()
    result = runner.invoke(app, [
        "eval", "--model", str(out), "--data", str(data), "--metrics", "exact,bleu,perplexity",
        "--max-new-tokens", "4", "--json",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    figures = json.loads(result.output[result.output.index("{") :])
    assert figures["examples"] == 12 and set(figures["metrics"]) == {"exact", "bleu", "perplexity"}


def test_a_stack_without_a_trainer_image_says_how_to_get_one(tmp_path: Path) -> None:
    """aws-prod builds no trainer image (serving only): the Job is refused with the setting that builds it
    and the --image alternative, not rendered with an empty image."""
    data = write_facts(tmp_path / "facts.jsonl")
    result = runner.invoke(app, [
        "finetune", "--stack", "aws-prod", "--render", str(tmp_path / "job"), "--data", str(data),
        "--out", "ignored",
    ])  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "workload.buildTrainerImage" in result.output and "--image" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "job").exists()


def test_finetune_render_for_aws_dev_writes_a_strictly_valid_job(tmp_path: Path) -> None:
    data = write_facts(tmp_path / "facts.jsonl")
    out = tmp_path / "job"
    result = runner.invoke(app, [
        "finetune", "--stack", "aws-dev", "--render", str(out), "--data", str(data), "--out", "ignored",
        "--nproc", "2", "--nodes", "2",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    docs = [yaml.safe_load(p.read_text()) for p in sorted(out.glob("*.yaml"))]
    assert [d["kind"] for d in docs] == ["Service", "Job"]
    assert all(validate(d, "1.36") for d in docs)
    pod = docs[1]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "trainer" and docs[1]["spec"]["completions"] == 2
    assert "/datasets/" in pod["initContainers"][0]["command"][-1]
    assert "/checkpoints/" in pod["containers"][0]["command"][-1]
    # without --image the Job runs the stack's own trainer image (docker/trainer, pushed by the stack)
    train = pod["initContainers"][1]
    assert (
        train["name"] == "train" and "/tritonform-trainer:" in train["image"] and "@sha256:" in train["image"]
    )
    assert "/opt/tritonform/default-model" in train["command"][-1]  # `--model default` inside the image
    # a second render replaces the first; a folder holding something else is refused
    assert runner.invoke(app, ["finetune", "--stack", "aws-dev", "--render", str(out), "--data", str(data),
                               "--out", "x"]).exit_code == 0  # fmt: skip
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    again = ["finetune", "--stack", "aws-dev", "--render", str(other), "--data", str(data), "--out", "x"]
    result = runner.invoke(app, again)
    assert result.exit_code == 2 and "not an earlier render" in result.output


class _FakeStore:
    """An object store keeping objects in memory, with the cloud's checksum of what it stored."""

    def __init__(self) -> None:
        from model_repo.storage import ContentChecksum

        self.checksum = ContentChecksum("sha256")
        self.objects: dict[str, bytes] = {}
        self.uploads = 0

    def stored_checksum(self, key: str) -> str | None:
        import base64
        import hashlib

        data = self.objects.get(key)
        return None if data is None else base64.b64encode(hashlib.sha256(data).digest()).decode()

    def upload_file(self, local: Path, key: str, digests: Any) -> None:
        self.uploads += 1
        self.objects[key] = local.read_bytes()


def test_submit_uploads_the_data_then_creates_the_objects(tmp_path: Path) -> None:
    """With --stack and no --render: the stack's outputs come from pulumi (faked), the data goes to
    datasets/ once (a second submit finds it there), and the validated objects reach the API (faked)."""
    data = write_facts(tmp_path / "facts.jsonl")
    store = _FakeStore()
    submitted: list[list[dict[str, Any]]] = []
    outputs = {
        "bucket_uri": "s3://real-bucket", "gpu_node_selector": {"pool": "gpu"},
        "gpu_tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "trainer_pod_labels": {"azure.workload.identity/use": "true"},
    }  # fmt: skip

    def pulumi(cmd: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        assert cmd[:3] == ["pulumi", "stack", "output"] and "aws-dev" in cmd
        return subprocess.CompletedProcess(cmd, 0, json.dumps(outputs), "")

    for _ in range(2):
        objects = train_remote.submit_remote(
            "finetune", "aws-dev", None, "registry.example/trainer:1", 1, 1, data, "default", Path("o"),
            {"method": "lora"}, pulumi_run=pulumi, submit=submitted.append, store_factory=lambda _loc: store,
        )  # fmt: skip
    key = f"datasets/{train_remote.dataset_key(data)}"
    assert store.objects == {key: data.read_bytes()} and store.uploads == 1
    assert len(submitted) == 2 and submitted[-1] == objects
    pod = objects[1]["spec"]["template"]
    assert pod["spec"]["nodeSelector"] == {"pool": "gpu"}
    assert pod["metadata"]["labels"]["azure.workload.identity/use"] == "true"
    assert "s3://real-bucket/datasets/" in pod["spec"]["initContainers"][0]["command"][-1]


def test_submit_without_an_image_or_with_a_failing_api_is_one_clear_line(tmp_path: Path) -> None:
    """A stack deployed before the trainer image existed exports none: one line says what to do; the
    stack's exported image is what runs otherwise; an API refusal is one line too."""
    import typer

    data = write_facts(tmp_path / "facts.jsonl")
    outputs = json.dumps({"bucket_uri": "s3://b"})

    def pulumi(cmd: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(cmd, 0, outputs, "")

    with pytest.raises(typer.Exit) as caught:
        train_remote.submit_remote(
            "finetune", "aws-dev", None, None, 1, 1, data, "default", Path("o"), {}, pulumi_run=pulumi,
            submit=lambda _objects: None, store_factory=lambda _loc: _FakeStore(),
        )  # fmt: skip
    assert caught.value.exit_code == 2
    submitted: list[list[dict[str, Any]]] = []
    outputs = json.dumps(
        {"bucket_uri": "s3://b", "trainer_image": "r.example/tritonform-trainer:1@sha256:ab"}
    )
    train_remote.submit_remote(
        "distill", "aws-dev", None, None, 1, 1, data, "default", Path("o"), {"teacher": "default"},
        pulumi_run=pulumi, submit=submitted.append, store_factory=lambda _loc: _FakeStore(),
    )  # fmt: skip
    train = submitted[0][1]["spec"]["template"]["spec"]["initContainers"][1]
    assert train["image"] == "r.example/tritonform-trainer:1@sha256:ab"
    config = json.loads(train["command"][-1].split("echo ", 1)[1].split(" > /work/config.json")[0].strip("'"))
    assert config["teacher"] == config["student"] == "/opt/tritonform/default-model"

    def refuse(_objects: list[dict[str, Any]]) -> None:
        raise RuntimeError("Forbidden: jobs.batch is forbidden")

    with pytest.raises(typer.Exit) as caught:
        train_remote.submit_remote(
            "finetune", "aws-dev", None, "img", 1, 1, data, "default", Path("o"), {},
            pulumi_run=lambda cmd, **_: subprocess.CompletedProcess(cmd, 0, outputs, ""),
            submit=refuse, store_factory=lambda _loc: _FakeStore(),
        )  # fmt: skip
    assert caught.value.exit_code == 1


def test_distill_options_are_checked_up_front_and_reach_the_job(tmp_path: Path) -> None:
    """--topk, --schedule, --warmup-steps and --quant-aware: a bad value is one clear line before anything
    loads; on a stack they travel in the Job's config (what the trainer's DistillConfig reads)."""
    data = write_facts(tmp_path / "facts.jsonl")
    base = ["distill", "--teacher", "default", "--student", "default", "--data", str(data), "--alpha", "1"]
    for extra, message in [
        (["--quant-aware", "int3"], "--quant-aware 'int3': choose one of none, int4"),
        (["--schedule", "steps"], "--schedule 'steps'"),
        (["--topk", "8", "--alpha", "0.5"], "--topk trains on the teacher's logits only"),
        (["--hidden-weight", "-1"], "--hidden-weight must be 0 (logits only) or positive"),
    ]:
        result = runner.invoke(app, [*base, "--out", str(tmp_path / "o"), *extra])
        assert result.exit_code == 2 and message in result.output, result.output
        assert "Traceback" not in result.output and not (tmp_path / "o").exists()
    out = tmp_path / "job"
    result = runner.invoke(app, [
        *base, "--out", "ignored", "--stack", "aws-dev", "--render", str(out), "--topk", "32",
        "--schedule", "cosine", "--warmup-steps", "2", "--quant-aware", "int4", "--hidden-weight", "0.5",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    job = next(yaml.safe_load(p.read_text()) for p in sorted(out.glob("*.yaml")) if "job" in p.name.lower())
    script = job["spec"]["template"]["spec"]["initContainers"][1]["command"][-1]
    config = json.loads(script.split("echo ", 1)[1].split(" > /work/config.json")[0].strip("'"))
    assert config["topk"] == 32 and config["schedule"] == "cosine" and config["warmup_steps"] == 2
    assert config["quant_aware"] == "int4" and config["alpha"] == 1.0 and config["hidden_weight"] == 0.5
    result = runner.invoke(app, [*base, "--out", "x", "--stack", "aws-dev", "--render", str(tmp_path / "j2"),
                                 "--heldout", str(data)])  # fmt: skip
    assert result.exit_code == 2 and "--heldout is read on this machine" in result.output


def test_out_never_overwrites_an_input_or_a_folder_of_the_users(
    tiny_llama_checkpoint: Path, tmp_path: Path
) -> None:
    """--out that is the input checkpoint (or inside it), a file, or a folder holding other files is one
    clear line before anything trains; the files there are untouched."""
    data = write_facts(tmp_path / "facts.jsonl")
    model = str(tiny_llama_checkpoint)
    before = sorted(p.name for p in tiny_llama_checkpoint.iterdir())
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "keep.txt").write_text("mine")
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    finetune = ["finetune", "--model", model, "--data", str(data), "--max-steps", "1"]
    distill = ["distill", "--teacher", model, "--student", model, "--data", str(data), "--max-steps", "1"]
    prune = ["prune", "--model", model, "--calibration", str(data), "--drop-layers", "1"]
    for command in (finetune, distill, prune):
        for out, said in [
            (model, "is the input checkpoint"),
            (str(tiny_llama_checkpoint / "sub"), "is the input checkpoint"),
            (str(a_file), "is a file"),
            (str(mine), "not an earlier"),
        ]:
            result = runner.invoke(app, [*command, "--out", out])
            assert result.exit_code == 2 and said in result.output, (command[0], out, result.output)
            assert "Traceback" not in result.output
    assert sorted(p.name for p in tiny_llama_checkpoint.iterdir()) == before
    assert [p.name for p in mine.iterdir()] == ["keep.txt"] and a_file.read_text() == "x"


def test_process_counts_and_batch_splits_are_checked_before_launch(tmp_path: Path) -> None:
    data = write_facts(tmp_path / "facts.jsonl")
    base = ["finetune", "--data", str(data), "--out", str(tmp_path / "o")]
    for extra, said in [
        (["--nproc", "0"], "--nproc must be at least 1 (got 0)"),
        (["--nproc", "2", "--batch-size", "3"], "--batch-size 3 does not split evenly over 2 processes"),
        (["--epochs", "inf"], "--epochs must be a finite number"),
        (["--lr", "0"], "--lr must be a positive number"),
        (["--lora-rank", "0"], "--lora-rank must be at least 1"),
    ]:
        result = runner.invoke(app, [*base, *extra])
        assert result.exit_code == 2 and said in result.output, result.output
    assert not (tmp_path / "o").exists()


def test_a_stack_run_checks_its_settings_and_render_folder_too(tmp_path: Path) -> None:
    """--stack used to hand nonsense to the Job; the same checks as a local run apply first."""
    data = write_facts(tmp_path / "facts.jsonl")
    job = tmp_path / "job"
    base = ["finetune", "--data", str(data), "--out", "x", "--stack", "aws-dev"]
    for extra, said in [
        (["--batch-size", "0"], "--batch-size must be at least 1"),
        (["--lr", "-1"], "--lr must be a positive number"),
        (["--nproc", "2", "--nodes", "2", "--batch-size", "6"], "does not split evenly over 4 processes"),
    ]:
        result = runner.invoke(app, [*base, "--render", str(job), *extra])
        assert result.exit_code == 2 and said in result.output, result.output
    assert not job.exists()
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    result = runner.invoke(app, [*base, "--render", str(a_file)])
    assert result.exit_code == 2 and "is a file" in result.output and a_file.read_text() == "x"
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"messages": [{"role": "user", "content": "q"}]}\n\n{"messages": [}\n')
    result = runner.invoke(app, [
        "distill", "--teacher", "default", "--student", "default", "--prompts", str(prompts), "--out", "x",
        "--stack", "aws-dev", "--render", str(job),
    ])  # fmt: skip
    assert result.exit_code == 2 and f"{prompts}:3: not valid JSON" in result.output, result.output


def test_bad_text_and_endpoints_are_one_clear_line(tmp_path: Path) -> None:
    latin1 = tmp_path / "latin1.jsonl"
    latin1.write_bytes('{"messages": [{"role": "user", "content": "caf\xe9"}]}\n'.encode("latin-1"))
    result = runner.invoke(app, ["finetune", "--data", str(latin1), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "not UTF-8 text" in result.output and "Traceback" not in result.output
    data = write_facts(tmp_path / "facts.jsonl")
    for endpoint in ["not a url", "localhost:8000", "ftp://host/v1", "http://"]:
        result = runner.invoke(app, ["eval", "--endpoint", endpoint, "--data", str(data)])
        assert result.exit_code == 2 and "is not an http(s) URL" in result.output, result.output
    zero = ["eval", "--endpoint", "http://x/v1", "--data", str(data), "--max-new-tokens", "0"]
    result = runner.invoke(app, zero)
    assert result.exit_code == 2 and "--max-new-tokens must be at least 1" in result.output
    # nothing listens on port 9 (discard): the client's connection error becomes one line, exit 1
    result = runner.invoke(app, ["eval", "--endpoint", "http://127.0.0.1:9/v1", "--data", str(data)])
    assert result.exit_code == 1 and "cannot reach http://127.0.0.1:9/v1" in result.output, result.output
    assert "Traceback" not in result.output


def test_a_stack_run_refuses_a_checkpoint_that_is_only_on_this_machine(
    tiny_llama_checkpoint: Path, tmp_path: Path
) -> None:
    data = write_facts(tmp_path / "facts.jsonl")
    job = tmp_path / "job"
    stack = ["--data", str(data), "--out", "x", "--stack", "aws-dev", "--render", str(job)]
    for command in (
        ["finetune", "--model", str(tiny_llama_checkpoint)],
        ["finetune", "--model", "pruned"],
        ["distill", "--teacher", "default", "--student", "pruned", "--alpha", "1"],
        ["distill", "--teacher", str(tiny_llama_checkpoint), "--student", "checkpoints/p", "--alpha", "1"],
    ):
        result = runner.invoke(app, [*command, *stack])
        assert result.exit_code == 2 and "does not reach the pod" in result.output, result.output
    assert not job.exists()
    result = runner.invoke(app, ["distill", "--teacher", "checkpoints/t", "--student", "checkpoints/s",
                                 "--alpha", "1", *stack])  # fmt: skip
    assert result.exit_code == 0, result.output


def test_an_empty_folder_or_an_earlier_runs_output_is_a_fine_out(
    tiny_llama_checkpoint: Path, tmp_path: Path
) -> None:
    data = write_facts(tmp_path / "facts.jsonl")
    empty = tmp_path / "empty"
    empty.mkdir()
    prune = ["prune", "--model", str(tiny_llama_checkpoint), "--calibration", str(data), "--mlp-keep", "0.5"]
    for _ in range(2):  # an empty folder, then the same folder holding that run's output
        result = runner.invoke(app, [*prune, "--out", str(empty)])
        assert result.exit_code == 0, result.output
        assert (empty / "pruning.json").is_file() and (empty / "config.json").is_file()
