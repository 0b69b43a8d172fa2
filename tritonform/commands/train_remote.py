"""`--stack NAME` for finetune and distill: run the work on the stack's GPU pool as a Kubernetes Job.

The stack's settings come from its offline plan (namespace, trainer service account, Kubernetes version);
the data file goes to the bucket's `datasets/` (named by its content, verified by the cloud's own
checksum, skipped when already there); the Indexed Job and its headless Service
(infra/workload/training_job.py) are validated strictly against the cluster version's schemas, then
written (`--render DIR`) or created through the Kubernetes API with the current kubeconfig context.
The checkpoint lands in the bucket's `checkpoints/<run>/`, `_COMPLETE` last.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from tritonform.commands.failures import EXIT_BAD_INPUT, EXIT_FAILED, fail

RENDER_MARKER = ".tritonform-render"


def run_name(step: str, data: Path, stamp: float | None = None) -> str:
    """`<step>-<data hash>-<time>`: a DNS label naming the Job, its Service and the checkpoint folder."""
    digest = hashlib.sha256(data.read_bytes()).hexdigest()[:8]
    return f"{step}-{digest}-{int(stamp if stamp is not None else time.time()) % 10**8:08d}"


def dataset_key(data: Path) -> str:
    """The object name under `datasets/`: the content's hash first, so a re-upload is a no-op."""
    digest = hashlib.sha256(data.read_bytes()).hexdigest()[:16]
    stem = re.sub(r"[^a-zA-Z0-9._-]+", "-", data.name)
    return f"{digest}-{stem}"


def upload_dataset(data: Path, bucket_uri: str, store_factory: Callable[[Any], Any] | None = None) -> str:
    """Put `data` at `<bucket>/datasets/<key>` (through the same object stores as model uploads); returns
    the key. The object is checked by the checksum the cloud computed of what it stored."""
    from model_repo.storage import StorageError, StorageUri, checksums_match, digest_file

    if store_factory is None:
        from model_repo.object_stores import open_store

        store_factory = open_store
    location = StorageUri.parse(bucket_uri)
    store = store_factory(location)
    key = dataset_key(data)
    object_key = location.key("datasets", key)
    digests = digest_file(data, store.checksum)
    if not checksums_match(store.stored_checksum(object_key), digests.cloud_checksum):
        store.upload_file(data, object_key, digests)
        if not checksums_match(store.stored_checksum(object_key), digests.cloud_checksum):
            raise StorageError(f"{location.uri('datasets', key)}: the stored object does not match {data}")
    return key


def stack_outputs(stack: str, run: Callable[..., Any] = subprocess.run) -> dict[str, Any]:
    """The outputs `pulumi up` exported for `stack` (bucket, GPU pool scheduling, trainer pod labels)."""
    from model_repo.upload import UploadError

    if shutil.which("pulumi") is None and run is subprocess.run:
        raise UploadError(
            "the pulumi CLI is not installed, so the stack's bucket is unknown; use --render DIR"
        )
    done = run(["pulumi", "stack", "output", "--json", "--stack", stack], capture_output=True, text=True)
    if done.returncode != 0:
        raise UploadError(f"`pulumi stack output --stack {stack}` failed: {done.stderr.strip()}")
    outputs: dict[str, Any] = json.loads(done.stdout or "{}")
    if not isinstance(outputs.get("bucket_uri"), str):
        raise UploadError(f"stack {stack} has no output bucket_uri; run `pulumi up --stack {stack}` first")
    return outputs


def scheduling_from(outputs: dict[str, Any]) -> Any:
    """The GPU pool's node selector and tolerations, as the stack exported them."""
    from infra.platform.base import GpuScheduling

    standard = GpuScheduling.standard()
    return GpuScheduling(
        node_selector=dict(outputs.get("gpu_node_selector") or standard.node_selector),
        tolerations=[dict(t) for t in outputs.get("gpu_tolerations") or standard.tolerations],
    )


def validated(objects: list[dict[str, Any]], kubernetes_version: str) -> list[dict[str, Any]]:
    """Every object checked strictly against the cluster version's schemas (like `tritonform render`)."""
    from infra.offline.render import validate

    for doc in objects:
        if not validate(doc, kubernetes_version):
            raise ValueError(f"{doc['kind']} has no schema in Kubernetes {kubernetes_version}")
    return objects


def write_manifests(objects: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    """One YAML file per object in `out_dir` (an empty folder or an earlier render of this command)."""
    from infra.offline.render import holds_other_files

    if holds_other_files(out_dir, (RENDER_MARKER,)):
        raise ValueError(f"{out_dir} exists and is not an earlier render; choose a new or empty folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("*.yaml"):
        old.unlink()
    paths = []
    for index, doc in enumerate(objects):
        path = out_dir / f"{index:02d}-{doc['kind'].lower()}-{doc['metadata']['name']}.yaml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        paths.append(path)
    (out_dir / RENDER_MARKER).write_text("written by `tritonform finetune|distill --render`\n")
    return paths


def check_remote_model(flag: str, name: str) -> None:
    """On the GPU pool a model is `default` (in the trainer image), a checkpoint in the stack's bucket
    (`checkpoints/NAME`) or an absolute path inside the image; a folder of this machine is none of them."""
    from infra.workload.training_job import CHECKPOINTS_PREFIX, in_bucket

    if name == "default" or in_bucket(name):
        return
    if name.startswith("/") and not (Path(name) / "config.json").is_file():
        return  # a path inside the image (a checkpoint of this machine would have its config.json here)
    raise fail(
        f"{flag} {name}: with --stack, name 'default', a checkpoint in the stack's bucket "
        f"({CHECKPOINTS_PREFIX}/NAME, e.g. an earlier run's output) or a path inside --image; a folder on "
        "this machine does not reach the pod",
        EXIT_BAD_INPUT,
    )


def kubernetes_submit(objects: list[dict[str, Any]]) -> None:
    """Create the objects with the official Kubernetes client and the current kubeconfig context."""
    from kubernetes import client, config, utils

    config.load_kube_config()
    api = client.ApiClient()
    for doc in objects:
        utils.create_from_dict(api, doc, namespace=doc["metadata"]["namespace"])


def submit_remote(
    step: str,
    stack: str | None,
    render: Path | None,
    image: str | None,
    nodes: int,
    nproc: int,
    data: Path | None,
    model: str,
    out: Path,
    config: dict[str, Any],
    *,
    pulumi_run: Callable[..., Any] = subprocess.run,
    submit: Callable[[list[dict[str, Any]]], None] | None = None,
    store_factory: Callable[[Any], Any] | None = None,
) -> list[dict[str, Any]]:
    """Build the Job for `step` on `stack`, then write it to `render` or upload the data and submit it."""
    from rich.console import Console

    from infra.workload.training_job import TrainingJobSpec, training_objects
    from tritonform.commands.infra import run_plan, stack_file

    console = Console(stderr=True, highlight=False, soft_wrap=True)
    if stack is None:
        raise fail(
            "--render needs --stack NAME: the Job is rendered for that stack's cluster", EXIT_BAD_INPUT
        )
    if data is None:
        raise fail("--data (or --prompts) is required", EXIT_BAD_INPUT)
    from infra.workload.training_job import IMAGE_DEFAULT_MODEL

    for flag, name in (("--model/--student", model), ("--teacher", config.get("teacher"))):
        if isinstance(name, str):
            check_remote_model(flag, name)

    # the trainer image holds the default checkpoint (docker/trainer/Dockerfile)
    model = IMAGE_DEFAULT_MODEL if model == "default" else model
    if config.get("teacher") == "default":
        config = {**config, "teacher": IMAGE_DEFAULT_MODEL}
    try:
        path = stack_file(stack)
    except ValueError as exc:
        raise fail(str(exc), EXIT_BAD_INPUT) from None
    with console.status(f"planning stack {stack} offline"):
        plan = run_plan(path)
    settings = plan.settings
    try:
        outputs = plan.outputs if render is not None else stack_outputs(stack, pulumi_run)
        bucket = str(outputs["bucket_uri"])
        # the stack's own trainer image (docker/trainer, pushed by `pulumi up`; or workload.trainerImage)
        image = image or outputs.get("trainer_image")
        if not isinstance(image, str) or not image:
            raise ValueError(
                f"stack {stack} exports no trainer_image: build it with `pulumi config set --path "
                f"--stack {stack} workload.buildTrainerImage true` then `pulumi up --stack {stack}`, or set "
                "workload.trainerImage, or pass --image IMAGE with tritonform's training code installed"
            )
        spec = TrainingJobSpec(
            run=run_name(step, data),
            step=step,
            image=image,
            bucket_uri=bucket,
            dataset_key=dataset_key(data),
            model=model,
            config=config,
            nodes=nodes,
            nproc=nproc,
            namespace=settings.workload.namespace,
            service_account=settings.workload.trainer_service_account,
            pod_labels=dict(outputs.get("trainer_pod_labels") or {}),
        )
        objects = validated(
            training_objects(spec, scheduling_from(outputs)), settings.cluster.kubernetes_version
        )
    except Exception as exc:  # bad values and schema errors are user-facing
        raise fail(f"{type(exc).__name__}: {exc}", EXIT_BAD_INPUT) from None
    if render is not None:
        if render.exists() and not render.is_dir():
            raise fail(f"--render {render} is a file; name a folder for the manifests", EXIT_BAD_INPUT)
        try:
            files = write_manifests(objects, render)
        except ValueError as exc:
            raise fail(str(exc), EXIT_BAD_INPUT) from None
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise fail(f"--render {render}: cannot write there ({reason})", EXIT_BAD_INPUT) from None
        console.print(
            f"wrote {len(files)} manifests to {render} (Kubernetes {settings.cluster.kubernetes_version}, "
            f"strict schemas); the checkpoint would land in {spec.checkpoint_uri()}"
        )
        return objects
    try:
        with console.status(f"uploading {data} to {bucket}/datasets/"):
            upload_dataset(data, bucket, store_factory)
        (submit or kubernetes_submit)(objects)
    except Exception as exc:  # SDK and API errors (credentials, missing bucket, RBAC) are user-facing
        raise fail(f"submitting failed ({type(exc).__name__}): {exc}", EXIT_FAILED) from None
    console.print(
        f"submitted Job {settings.workload.namespace}/{spec.run} ({nodes} node(s) x {nproc} GPU(s)); "
        f"follow it with: kubectl -n {settings.workload.namespace} logs -f job/{spec.run} -c train; "
        f"the checkpoint lands in {spec.checkpoint_uri()} (_COMPLETE last)"
    )
    return objects
