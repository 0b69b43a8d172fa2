"""Triton python-backend generation model: decoupled streaming with continuous batching.

Runs inside Triton's python stub (locally from nvidia-pytriton, in the cloud in the NGC container).
`model_repo.layout.write_repository` copies this file to `<model>/1/model.py` with the runtime package
next to it as `tritonform_runtime/` and the exported artefacts in `<model>/1/<engine_subdir>/`, so the
repository is self-contained: nothing from tritonform has to be installed in the container.

This file is the thin adapter: `execute` parses each request's tensors (`parse_request`) and hands a
`Job` to the runtime's `ContinuousBatchScheduler` (see `model_repo/runtime/scheduler.py`), then returns
at once (decoupled policy); the scheduler's threads send the responses through the Triton response
sender. Bad input gets a Triton error response. Tensor names: see model_repo/spec.py (TensorRT-LLM
ensemble compatible).
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # the same class whichever copy of the runtime `runtime_module` finds
    from model_repo.runtime.scheduler import GenerationRequest

RUNTIME_PACKAGE = "tritonform_runtime"
IN_TREE_RUNTIME = "model_repo.runtime"


def runtime_module(name: str) -> ModuleType:
    """Module `name` of the runtime package shipped next to this file in a repository, else of the
    in-tree `model_repo.runtime` (this file run from the source tree)."""
    return importlib.import_module(f"{_runtime_package()}.{name}")


@functools.cache
def _runtime_package() -> str:
    folder = Path(__file__).resolve().parent / RUNTIME_PACKAGE
    if not (folder / "__init__.py").is_file():
        return IN_TREE_RUNTIME
    if RUNTIME_PACKAGE not in sys.modules:
        # Load the package from this directory by path: it does not depend on what the python
        # backend put on sys.path, and its modules' relative imports resolve inside it.
        spec = importlib.util.spec_from_file_location(
            RUNTIME_PACKAGE, folder / "__init__.py", submodule_search_locations=[str(folder)]
        )
        assert spec is not None and spec.loader is not None
        package = importlib.util.module_from_spec(spec)
        sys.modules[RUNTIME_PACKAGE] = package
        spec.loader.exec_module(package)
    return RUNTIME_PACKAGE


class RequestError(ValueError):
    """The request is malformed; sent back to the client as a Triton error."""


def _scalar(value: np.ndarray | None, name: str) -> Any:
    if value is None:
        return None
    if value.size != 1:
        raise RequestError(f"{name}: expected one value, got shape {list(value.shape)}")
    return value.reshape(-1)[0]


def _text(value: Any, name: str) -> str:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise RequestError(f"{name}: not valid UTF-8") from None
    return str(value)


def parse_request(tensors: dict[str, np.ndarray | None], max_tokens_limit: int) -> GenerationRequest:
    """Check and convert the input tensors (already numpy, batch dimension included)."""
    text = tensors.get("text_input")
    if text is None:
        raise RequestError("text_input is required")
    for name, value in tensors.items():  # a batch dimension, if the model has one, must be 1
        if value is not None and value.ndim >= 2 and value.shape[0] != 1:
            raise RequestError(f"{name}: send one prompt per request (batch {value.shape[0]} given)")
    prompt = _text(_scalar(text, "text_input"), "text_input")
    if not prompt:
        raise RequestError("text_input is empty")
    raw_max = _scalar(tensors.get("max_tokens"), "max_tokens")
    if raw_max is None:
        raise RequestError("max_tokens is required")
    max_tokens = int(raw_max)
    if not 1 <= max_tokens <= max_tokens_limit:
        raise RequestError(f"max_tokens={max_tokens}: must be between 1 and {max_tokens_limit}")
    temperature = _scalar(tensors.get("temperature"), "temperature")
    top_p = _scalar(tensors.get("top_p"), "top_p")
    top_k = _scalar(tensors.get("top_k"), "top_k")
    seed = _scalar(tensors.get("random_seed"), "random_seed")
    stream = _scalar(tensors.get("stream"), "stream")
    end_id = _scalar(tensors.get("end_id"), "end_id")
    prompt_ids = tensors.get("input_ids")
    if prompt_ids is not None and prompt_ids.size == 0:
        raise RequestError("input_ids is empty")
    stop_words = tensors.get("stop_words")
    stop = (
        tuple(s for s in (_text(v, "stop_words") for v in stop_words.reshape(-1)) if s)
        if (stop_words is not None)
        else ()
    )
    request: GenerationRequest = runtime_module("scheduler").GenerationRequest(
        prompt=prompt,
        max_tokens=max_tokens,
        temperature=0.0 if temperature is None else float(temperature),
        top_p=1.0 if top_p is None else float(top_p),
        top_k=0 if top_k is None else int(top_k),
        seed=None if seed is None else int(seed),
        stop=stop,
        stream=bool(stream) if stream is not None else False,
        end_id=None if end_id is None else int(end_id),
        prompt_ids=None if prompt_ids is None else tuple(int(t) for t in prompt_ids.reshape(-1)),
    )
    if not (np.isfinite(request.temperature) and request.temperature >= 0):
        raise RequestError(f"temperature={request.temperature}: must be >= 0")
    if not 0 < request.top_p <= 1:
        raise RequestError(f"top_p={request.top_p}: must be in (0, 1]")
    if request.top_k < 0:
        raise RequestError(f"top_k={request.top_k}: must be >= 0")
    if request.end_id is not None and request.end_id < -1:
        raise RequestError(f"end_id={request.end_id}: must be a token id, or -1 for none")
    return request


_INPUT_NAMES = (
    "text_input",
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "random_seed",
    "stop_words",
    "stream",
    "end_id",
    "input_ids",
)


def _providers(choice: str, engine_module: ModuleType, device_id: int) -> list[Any]:
    if choice == "cpu":
        return ["CPUExecutionProvider"]
    if choice == "cuda":
        return [("CUDAExecutionProvider", {"device_id": device_id}), "CPUExecutionProvider"]
    if choice == "tensorrt":
        return [
            ("TensorrtExecutionProvider", {"device_id": device_id}),
            ("CUDAExecutionProvider", {"device_id": device_id}),
            "CPUExecutionProvider",
        ]
    options = {"device_id": device_id}
    return [(p, options) if p != "CPUExecutionProvider" else p for p in engine_module.available_providers()]


def _never() -> bool:
    return False


class TritonPythonModel:
    """Entry point the python backend instantiates once per model instance."""

    def initialize(self, args: dict[str, str]) -> None:
        """Open the engine on the artefacts next to this file and start the scheduler's lanes."""
        import triton_python_backend_utils as pb_utils

        self.pb = pb_utils
        config = json.loads(args["model_config"])
        if not pb_utils.using_decoupled_model_transaction_policy(config):
            raise pb_utils.TritonModelException(
                "this model needs `model_transaction_policy { decoupled: true }`"
            )
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.max_tokens_limit = int(params.get("max_tokens_limit", "2048"))
        engine_module, scheduler_module = runtime_module("engine"), runtime_module("scheduler")
        model_dir = Path(__file__).resolve().parent / params.get("engine_subdir", "engine")
        device_id = int(args.get("model_instance_device_id", "0") or 0)
        threads = int(params.get("intra_op_threads", "0")) or None
        self.engine = engine_module.Engine.load(
            model_dir,
            providers=_providers(params.get("execution_provider", "auto"), engine_module, device_id),
            num_threads=threads,
            allow_spinning=params.get("allow_spinning", "false") == "true",
        )
        max_active = int(params.get("max_active_sequences", "8"))
        self.job_class = scheduler_module.Job
        self.scheduler = scheduler_module.ContinuousBatchScheduler.with_lanes(
            self.engine,
            max_active,
            int(params.get("decode_lanes", "0")),
            log=pb_utils.Logger.log_info,
            max_queued=int(params.get("max_queued_requests", "0")) or None,
        )
        self.scheduler.start()
        self._counter = 0
        lanes = self.scheduler.lanes
        pb_utils.Logger.log_info(
            f"tritonform generation model ready: {model_dir} on {self.engine.providers}, "
            f"up to {max_active} sequences at once in {len(lanes)} lane(s)"
            + (f" of {lanes[0].engine.num_threads} thread(s)" if len(lanes) > 1 else "")
        )

    def execute(self, requests: list[Any]) -> None:
        """Parse each request and queue it; the scheduler answers through its response sender."""
        pb = self.pb
        for request in requests:
            sender = request.get_response_sender()
            try:
                tensors = {}
                for name in _INPUT_NAMES:
                    tensor = pb.get_input_tensor_by_name(request, name)
                    tensors[name] = None if tensor is None else tensor.as_numpy()
                parsed = parse_request(tensors, self.max_tokens_limit)
            except (RequestError, ValueError, TypeError, OverflowError) as exc:
                self._send_error(sender, f"bad request: {exc}", "INVALID_ARG")
                continue
            self._counter += 1
            job = self.job_class(
                request_id=f"{os.getpid()}-{self._counter}",
                request=parsed,
                emit=_never,  # replaced below: the emitter reads the job's finish reason
                fail=functools.partial(self._fail, sender),
                is_cancelled=getattr(request, "is_cancelled", _never),
            )
            job.emit = self._emitter(sender, job)
            self.scheduler.submit(job)
        return None

    def _emitter(self, sender: Any, job: Any) -> Callable[[str, bool, int, int], None]:
        pb = self.pb

        def emit(text: str, final: bool, prompt_tokens: int, completion_tokens: int) -> None:
            reason = (job.finish_reason or "") if final else ""
            response = pb.InferenceResponse(
                output_tensors=[
                    pb.Tensor("text_output", np.array([[text.encode("utf-8")]], dtype=np.object_)),
                    pb.Tensor("prompt_tokens", np.array([[prompt_tokens]], dtype=np.int32)),
                    pb.Tensor("completion_tokens", np.array([[completion_tokens]], dtype=np.int32)),
                    pb.Tensor("finish_reason", np.array([[reason.encode()]], dtype=np.object_)),
                ]
            )
            sender.send(response, flags=pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL if final else 0)

        return emit

    def _fail(self, sender: Any, message: str) -> None:
        self._send_error(sender, message, getattr(message, "kind", "INTERNAL"))

    def _send_error(self, sender: Any, message: str, kind: str) -> None:
        """An error as the final response: Triton's error code `kind`, and `[kind]` leading the message
        (Triton's gRPC stream passes only the message; see model_repo/spec.py)."""
        pb = self.pb
        code = getattr(pb.TritonError, kind, None)
        text = f"[{kind}] {message}"
        error = pb.TritonError(text) if code is None else pb.TritonError(text, code)
        sender.send(
            pb.InferenceResponse(output_tensors=[], error=error),
            flags=pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL,
        )

    def finalize(self) -> None:
        """Stop the scheduler: every request still running or queued gets an error (UNAVAILABLE),
        after the responses already made."""
        scheduler = getattr(self, "scheduler", None)
        if scheduler is not None:
            scheduler.stop()
