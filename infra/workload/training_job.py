"""Training on the GPU pool: a Kubernetes Indexed Job plus a headless Service for torchrun's rendezvous.

One pod per GPU node (`nodes`), each running torchrun with `nproc` processes (one per GPU). The pods find
each other through the headless Service: an Indexed Job's pod `<job>-<index>` gets the hostname
`<job>-<index>.<service>`, so every node points torchrun's static rendezvous at pod 0 and passes its
completion index as its node rank. Init containers copy the data set from the bucket's `datasets/` and
the trainer runs; the last container of pod 0 copies the checkpoint to `checkpoints/<run>/` and writes
`_COMPLETE` after it. The pods run as the trainer service account, which every cloud binds to an
identity that may read `datasets/` and write `checkpoints/` only (`TrainerIdentity`).

A plain function of plain values (like the other workload builders): rendering creates no resource, and
the CLI validates the result strictly against the cluster version's schemas before writing or submitting it.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from typing import Any

from infra.platform.base import TRAINER_READ_PREFIX, TRAINER_WRITE_PREFIX, GpuScheduling
from infra.workload.bucket_sync import AZURE_LOGIN, SYNC_IMAGES, sync_command
from model_repo.storage import StorageUri

TRAINING_APP = "tritonform-training"  # the app label the namespace's network policies know
TRAINER_UID = 10003  # a high id no node account uses
RENDEZVOUS_PORT = 29500
IMAGE_DEFAULT_MODEL = "/opt/tritonform/default-model"  # where docker/trainer puts `--model default`
TEACHER_DIR = "/work/teacher"  # where a bucket-held teacher is copied for distillation
DATASETS_PREFIX = TRAINER_READ_PREFIX.rstrip("/")
CHECKPOINTS_PREFIX = TRAINER_WRITE_PREFIX.rstrip("/")


@dataclass(frozen=True)
class TrainingJobSpec:
    """What one training run needs; `step` is `finetune` or `distill`, `config` its settings (JSON)."""

    run: str  # a DNS label naming the Job, the Service and the checkpoint folder
    step: str
    image: str
    bucket_uri: str  # s3://BUCKET, gs://BUCKET or as://ACCOUNT/CONTAINER
    dataset_key: str  # under datasets/
    model: str  # a path inside the image, or a checkpoint folder under checkpoints/
    config: dict[str, Any] = field(default_factory=dict)
    nodes: int = 1
    nproc: int = 1
    namespace: str = "tritonform"
    service_account: str = "trainer"
    pod_labels: dict[str, str] = field(default_factory=dict)  # what the cloud's identity needs on the pod
    deadline_s: int = 24 * 3600

    def validate(self) -> None:
        if not re.match(r"^[a-z0-9]([-a-z0-9]{0,40}[a-z0-9])?$", self.run):
            raise ValueError(f"run name {self.run!r} must be a lowercase DNS label of at most 42 characters")
        if self.step not in ("finetune", "distill"):
            raise ValueError(f"step {self.step!r} is not finetune or distill")
        if self.nodes < 1 or self.nproc < 1:
            raise ValueError(f"nodes ({self.nodes}) and nproc ({self.nproc}) must be at least 1")
        if self.bucket_uri.split("://")[0] not in SYNC_IMAGES:
            raise ValueError(f"bucket {self.bucket_uri!r} is not an s3://, gs:// or as:// URI")

    def dataset_uri(self) -> str:
        return f"{self.bucket_uri.rstrip('/')}/{DATASETS_PREFIX}/{self.dataset_key}"

    def checkpoint_uri(self) -> str:
        return f"{self.bucket_uri.rstrip('/')}/{CHECKPOINTS_PREFIX}/{self.run}"

    def model_uri(self) -> str | None:
        """A base model kept in the bucket (`checkpoints/NAME`), copied in beside the data; else None."""
        return self._in_bucket(self.model)

    def teacher_uri(self) -> str | None:
        """Distillation's teacher when the bucket keeps it (`checkpoints/NAME`); else None (in the image)."""
        teacher = self.config.get("teacher") if self.step == "distill" else None
        return self._in_bucket(teacher) if isinstance(teacher, str) else None

    def _in_bucket(self, model: str) -> str | None:
        return f"{self.bucket_uri.rstrip('/')}/{model}" if in_bucket(model) else None


def in_bucket(model: str) -> bool:
    """Whether `model` names a checkpoint kept in the stack's bucket (`checkpoints/NAME`)."""
    return model.startswith(f"{CHECKPOINTS_PREFIX}/")


def _security(read_only_root: bool = False) -> dict[str, Any]:
    """Pod Security Standards 'restricted' for one container."""
    return {
        "runAsNonRoot": True,
        "runAsUser": TRAINER_UID,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": read_only_root,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _copy_file(scheme: str, uri: str, local: str) -> str:
    """Shell command copying one object from the bucket to a local file."""
    if scheme == "s3":
        return f"aws s3 cp {shlex.quote(uri)} {shlex.quote(local)} --only-show-errors"
    if scheme == "gs":
        return f"gcloud storage cp {shlex.quote(uri)} {shlex.quote(local)}"
    loc = StorageUri.parse(uri)  # as://ACCOUNT/CONTAINER/KEY
    return (
        f"{AZURE_LOGIN} && az storage blob download --auth-mode login --account-name {loc.account} "
        f"-c {loc.bucket} -n {shlex.quote(loc.prefix)} -f {shlex.quote(local)} --output none"
    )


def _copy_inputs(spec: TrainingJobSpec, scheme: str) -> str:
    """Copy the data file (and a bucket-held base model and teacher) into /work."""
    command = f"mkdir -p /work/data /work/model {TEACHER_DIR} && " + _copy_file(
        scheme, spec.dataset_uri(), _data_file(spec)
    )
    for uri, local in ((spec.model_uri(), "/work/model"), (spec.teacher_uri(), TEACHER_DIR)):
        if uri:
            command += " && " + sync_command(scheme, uri, local)
    return command


def _data_file(spec: TrainingJobSpec) -> str:
    return f"/work/data/{spec.dataset_key.rsplit('/', 1)[-1]}"


def _train_script(spec: TrainingJobSpec, service: str) -> str:
    model = "/work/model" if spec.model_uri() else spec.model
    config = {**spec.config, "out": "/work/out", "show_progress": False}
    data_key = "prompts" if config.pop("data_is_prompts", False) else "data"
    config.update({"model" if spec.step == "finetune" else "student": model, data_key: _data_file(spec)})
    if spec.teacher_uri():
        config["teacher"] = TEACHER_DIR
    rendezvous = f"{spec.run}-0.{service}.{spec.namespace}.svc.cluster.local"
    torchrun = shlex.join(
        [
            "python", "-m", "torch.distributed.run",
            f"--nnodes={spec.nodes}", f"--nproc-per-node={spec.nproc}",
            f"--master-addr={rendezvous}", f"--master-port={RENDEZVOUS_PORT}",
        ]
    )  # fmt: skip
    launch = shlex.join(["-m", "model_repo.training.launch", spec.step, "/work/config.json"])
    return "\n".join(
        [
            "set -eu",
            f"echo {shlex.quote(json.dumps(config, sort_keys=True))} > /work/config.json",
            f'{torchrun} --node-rank="$JOB_COMPLETION_INDEX" {launch}',
        ]
    )


def _upload_script(spec: TrainingJobSpec, scheme: str) -> str:
    """Pod 0 copies the checkpoint out and writes `_COMPLETE` last; the other pods have nothing to copy."""
    target = spec.checkpoint_uri()
    marker = {
        "s3": f"aws s3 cp /work/out/training.json {shlex.quote(target + '/_COMPLETE')}",
        "gs": f"gcloud storage cp /work/out/training.json {shlex.quote(target + '/_COMPLETE')}",
    }.get(scheme, sync_command(scheme, "/work/out", target))
    # GCS: the trainer may create objects under checkpoints/ but not list the bucket, so copy, not rsync
    copy = (
        f"gcloud storage cp --recursive '/work/out/*' {shlex.quote(target + '/')}"
        if scheme == "gs"
        else sync_command(scheme, "/work/out", target)
    )
    return 'if [ "$JOB_COMPLETION_INDEX" != "0" ]; then exit 0; fi; ' + copy + " && " + marker


def training_objects(spec: TrainingJobSpec, scheduling: GpuScheduling) -> list[dict[str, Any]]:
    """The headless Service and the Indexed Job of one training run, as Kubernetes objects."""
    spec.validate()
    scheme = spec.bucket_uri.split("://")[0]
    sync_image = SYNC_IMAGES[scheme]
    service = f"{spec.run}-rdzv"
    labels = {
        "app.kubernetes.io/name": TRAINING_APP,
        "app.kubernetes.io/part-of": "tritonform",
        "tritonform.dev/run": spec.run,
    }
    work = [{"name": "work", "mountPath": "/work"}]
    index_env = [
        {
            "name": "JOB_COMPLETION_INDEX",
            "valueFrom": {
                "fieldRef": {"fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}
            },
        },
        {"name": "HOME", "value": "/work"},
    ]
    headless = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": service, "namespace": spec.namespace, "labels": labels},
        "spec": {
            "clusterIP": "None",
            # pods must resolve each other before they are ready (the rendezvous is how they get ready)
            "publishNotReadyAddresses": True,
            "selector": {"tritonform.dev/run": spec.run},
            "ports": [{"name": "rendezvous", "port": RENDEZVOUS_PORT, "targetPort": RENDEZVOUS_PORT}],
        },
    }
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": spec.run, "namespace": spec.namespace, "labels": labels},
        "spec": {
            "completionMode": "Indexed",
            "completions": spec.nodes,
            "parallelism": spec.nodes,
            "backoffLimit": 0,  # a failed rank fails the run: torchrun's group cannot lose a member
            "activeDeadlineSeconds": spec.deadline_s,
            "ttlSecondsAfterFinished": 7 * 24 * 3600,
            "template": {
                "metadata": {"labels": {**spec.pod_labels, **labels}},
                "spec": {
                    "restartPolicy": "Never",
                    "subdomain": service,
                    "serviceAccountName": spec.service_account,
                    "nodeSelector": dict(scheduling.node_selector),
                    "tolerations": [dict(t) for t in scheduling.tolerations],
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": TRAINER_UID,
                        "runAsGroup": TRAINER_UID,
                        "fsGroup": TRAINER_UID,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "volumes": [
                        {"name": "work", "emptyDir": {}},
                        # NCCL and torch's shared-memory tensors need more than the container default
                        {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "8Gi"}},
                    ],
                    "initContainers": [
                        {
                            "name": "fetch-dataset",
                            "image": sync_image,
                            "command": ["/bin/sh", "-c", _copy_inputs(spec, scheme)],
                            "env": index_env,
                            "volumeMounts": work,
                            "securityContext": _security(),
                        },
                        {
                            "name": "train",
                            "image": spec.image,
                            "command": ["/bin/sh", "-c", _train_script(spec, service)],
                            "env": [*index_env, {"name": "HF_HUB_OFFLINE", "value": "1"}],
                            "ports": [{"name": "rendezvous", "containerPort": RENDEZVOUS_PORT}],
                            "resources": {
                                "limits": {scheduling.gpu_resource: spec.nproc},
                                "requests": {scheduling.gpu_resource: spec.nproc},
                            },
                            "volumeMounts": [*work, {"name": "shm", "mountPath": "/dev/shm"}],
                            "securityContext": _security(),
                        },
                    ],
                    "containers": [
                        {
                            "name": "upload-checkpoint",
                            "image": sync_image,
                            "command": ["/bin/sh", "-c", _upload_script(spec, scheme)],
                            "env": index_env,
                            "volumeMounts": work,
                            "securityContext": _security(),
                        }
                    ],
                },
            },
        },
    }
    return [headless, job]
