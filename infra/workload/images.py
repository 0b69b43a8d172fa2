"""Container images: built from docker/triton, docker/gateway and docker/trainer and pushed to the stack's
registry (the trainer image is what `tritonform finetune|distill --stack` Jobs run; nothing of the
stack's own workload runs it, so it is built only with `workload.buildTrainerImage`).

A stack may instead name prebuilt images (`triton.image`, `gateway.image`, `workload.trainerImage`); then
that one is not built.
The workload runs the digest-pinned reference the build returns.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import pulumi

from infra.platform.base import GATEWAY_IMAGE, TRAINER_IMAGE, TRITON_IMAGE, ContainerRegistry
from infra.settings import StackSettings

ROOT = Path(__file__).resolve().parents[2]
DISTRIBUTION = "tritonform"  # the installed kit; its version tags the images it builds


@dataclass(frozen=True)
class Images:
    triton: pulumi.Input[str]
    gateway: pulumi.Input[str]
    trainer: pulumi.Input[str] | None  # None: the stack has no trainer image (training Jobs need --image)


def build_images(
    settings: StackSettings, registry: ContainerRegistry, opts: pulumi.ResourceOptions
) -> Images:
    """Build (or take from the settings) the Triton and gateway images, and the trainer's when asked."""
    kit_version = version(DISTRIBUTION)
    if settings.model.backend == "tensorrt-llm":
        # TensorRT-LLM's LLM API runs in NGC's own image of the same release (it carries tensorrt_llm):
        # pushed to the stack's registry unchanged, so it runs by digest like the others.
        dockerfile, tag = "docker/triton-trtllm/Dockerfile", f"{settings.triton.version}-trtllm-python-py3"
    else:
        dockerfile, tag = "docker/triton/Dockerfile", settings.triton.version
    triton = settings.triton.image or _build(
        settings,
        registry,
        TRITON_IMAGE,
        dockerfile,
        f"{tag}-{kit_version}",
        {"TRITON_VERSION": settings.triton.version},
        opts,
    )
    gateway = settings.gateway.image or _build(
        settings, registry, GATEWAY_IMAGE, "docker/gateway/Dockerfile", kit_version, {}, opts
    )
    trainer: pulumi.Input[str] | None = settings.workload.trainer_image
    if trainer is None and settings.workload.build_trainer_image:
        dockerfile = "docker/trainer/Dockerfile"
        trainer = _build(settings, registry, TRAINER_IMAGE, dockerfile, kit_version, {}, opts)
    return Images(triton=triton, gateway=gateway, trainer=trainer)


def _build(
    settings: StackSettings,
    registry: ContainerRegistry,
    image: str,
    dockerfile: str,
    tag: str,
    build_args: dict[str, str],
    opts: pulumi.ResourceOptions,
) -> pulumi.Output[str]:
    import pulumi_docker_build as docker_build

    built = docker_build.Image(
        f"{settings.name}-{image}",
        tags=[pulumi.Output.concat(registry.repositories[image], ":", tag)],
        context=docker_build.BuildContextArgs(location=str(ROOT)),
        dockerfile=docker_build.DockerfileArgs(location=str(ROOT / dockerfile)),
        build_args=build_args,
        platforms=[docker_build.Platform.LINUX_AMD64],
        push=True,
        registries=[
            docker_build.RegistryArgs(
                address=registry.address, username=registry.username, password=registry.password
            )
        ],
        opts=pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(depends_on=[registry])),
    )
    return built.ref
