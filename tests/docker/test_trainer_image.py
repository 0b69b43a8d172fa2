"""The trainer image (docker/trainer) runs the training Job (issue 17): its files, copied as the
Dockerfile's COPY lines copy them into an empty folder, hold every module the training code imports, and
the Job's own `train` command (from infra/workload/training_job.py, paths moved to a temporary folder and
the rendezvous to loopback) fine-tunes the tiny model from those files alone."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

from infra.platform.base import TRAINER_IMAGE, GpuScheduling
from infra.workload.training_job import IMAGE_DEFAULT_MODEL, TRAINER_UID, TrainingJobSpec, training_objects
from tests.docker.test_images import copy_image_files, imported_from_image, missing_modules
from tests.model_repo.training.facts import write_facts

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "docker" / "trainer" / "Dockerfile"
ENTRY_POINTS = (
    "model_repo.training.launch",
    "model_repo.training.finetune",
    "model_repo.training.distill",
    "model_repo.training.prune",
    "model_repo.training.evaluate",
    "model_repo.checkpoint",
)


def test_the_trainer_image_holds_every_module_its_code_imports(tmp_path: Path) -> None:
    app = copy_image_files(DOCKERFILE, tmp_path / "app")
    assert missing_modules(app) == []
    assert (app / "model_repo" / "training" / "launch.py").is_file()


def test_the_trainer_images_entry_points_import_from_its_files_alone(tmp_path: Path) -> None:
    app = copy_image_files(DOCKERFILE, tmp_path / "app")
    assert imported_from_image(app, ENTRY_POINTS, ["model_repo"]) >= len(ENTRY_POINTS)


def test_the_image_matches_the_job_and_the_lock(tmp_path: Path) -> None:
    """The image runs as the Job's user, puts the default model where `--model default` points the Job,
    and pins the training libraries at the versions requirements.lock tests (torch: the same release,
    the CUDA build instead of the CPU one)."""
    text = DOCKERFILE.read_text()
    assert f"USER {TRAINER_UID}:{TRAINER_UID}" in text and IMAGE_DEFAULT_MODEL in text
    assert TRAINER_IMAGE == "tritonform-trainer"

    def pins(path: Path) -> dict[str, str]:
        found = {}
        for line in path.read_text().splitlines():
            if "==" in line and not line.startswith("#"):
                name, _, version = line.partition("==")
                found[name.strip().lower().replace("_", "-")] = version.strip()
        return found

    image, lock = pins(DOCKERFILE.parent / "requirements.txt"), pins(ROOT / "requirements.lock")
    for name in (
        "transformers",
        "peft",
        "trl",
        "accelerate",
        "datasets",
        "tokenizers",
        "safetensors",
        "gguf",
    ):
        assert image[name] == lock[name], name
    assert image["torch"] == lock["torch"].split("+")[0]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_jobs_train_command_runs_from_the_images_files(
    tiny_llama_checkpoint: Path, tmp_path: Path
) -> None:
    """The `train` container's command of a rendered Job, run as is (torchrun, one node, one process) from
    the image's files: it trains and writes the checkpoint and training.json where the upload container
    copies from; the training modules were compiled from the image's copy, not from the checkout."""
    app = copy_image_files(DOCKERFILE, tmp_path / "app")
    spec = TrainingJobSpec(
        run="finetune-test-00000001", step="finetune", image="r.example/tritonform-trainer:1",
        bucket_uri="s3://bucket", dataset_key="0123-facts.jsonl", model=str(tiny_llama_checkpoint),
        config={"method": "full", "max_steps": 2, "batch_size": 4, "learning_rate": 1e-3},
    )  # fmt: skip
    job = next(o for o in training_objects(spec, GpuScheduling.standard()) if o["kind"] == "Job")
    train = next(c for c in job["spec"]["template"]["spec"]["initContainers"] if c["name"] == "train")
    script = train["command"][-1]
    work = tmp_path / "work"
    (work / "data").mkdir(parents=True)
    write_facts(work / "data" / spec.dataset_key)
    rendezvous = f"{spec.run}-0.{spec.run}-rdzv.{spec.namespace}.svc.cluster.local"
    assert rendezvous in script and "--master-port=29500" in script
    script = script.replace(rendezvous, "127.0.0.1").replace(
        "--master-port=29500", f"--master-port={_free_port()}"
    )
    script = script.replace("/work", str(work))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONDONTWRITEBYTECODE")}
    path = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(PATH=path, JOB_COMPLETION_INDEX="0", HOME=str(work), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    done = subprocess.run(
        ["/bin/sh", "-c", script], cwd=app, env=env, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((work / "out" / "training.json").read_text())
    assert summary["steps"] == 2 and summary["processes"] == 1
    assert (work / "out" / "config.json").is_file() and list((work / "out").glob("*.safetensors"))
    compiled = {p.name.split(".")[0] for p in (app / "model_repo" / "training" / "__pycache__").glob("*.pyc")}
    assert {"launch", "finetune", "data"} <= compiled
    shutil.rmtree(work / "out")
