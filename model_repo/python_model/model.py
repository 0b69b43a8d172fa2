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
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # the same class whichever copy of the runtime `runtime_module` finds
    from model_repo.runtime.request import GenerationRequest, Response

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


GUIDE_TYPES = ("json", "json_schema", "regex", "lark")  # guided_decoding_guide_type (runtime/guide.py)


def _float(tensors: dict[str, np.ndarray | None], name: str, default: float) -> float:
    value = _scalar(tensors.get(name), name)
    result = default if value is None else float(value)
    if not np.isfinite(result):
        raise RequestError(f"{name}={result}: must be a finite number")
    return result


def _int(tensors: dict[str, np.ndarray | None], name: str, default: int) -> int:
    value = _scalar(tensors.get(name), name)
    return default if value is None else int(value)


def _flag(tensors: dict[str, np.ndarray | None], name: str) -> bool:
    value = _scalar(tensors.get(name), name)
    return bool(value) if value is not None else False


def _logit_bias(tensors: dict[str, np.ndarray | None]) -> tuple[tuple[int, float], ...]:
    ids, values = tensors.get("logit_bias_ids"), tensors.get("logit_bias_values")
    if ids is None and values is None:
        return ()
    if ids is None or values is None or ids.size != values.size:
        raise RequestError("logit_bias_ids and logit_bias_values go together, with the same length")
    pairs = tuple(zip((int(t) for t in ids.reshape(-1)), (float(v) for v in values.reshape(-1)), strict=True))
    for token, bias in pairs:
        if not -100.0 <= bias <= 100.0:
            raise RequestError(f"logit_bias for token {token}: {bias} is not between -100 and 100")
    return pairs


def parse_request(
    tensors: dict[str, np.ndarray | None], max_tokens_limit: int, max_sequences: int = 8
) -> GenerationRequest:
    """Check and convert the input tensors (already numpy, batch dimension included);
    `max_sequences`: the most sequences one request may ask for (num_return_sequences)."""
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
    seed = _scalar(tensors.get("random_seed"), "random_seed")
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
    guide_type = _scalar(tensors.get("guided_decoding_guide_type"), "guided_decoding_guide_type")
    guide = _scalar(tensors.get("guided_decoding_guide"), "guided_decoding_guide")
    request: GenerationRequest = runtime_module("request").GenerationRequest(
        prompt=prompt,
        max_tokens=max_tokens,
        temperature=_float(tensors, "temperature", 0.0),
        top_p=_float(tensors, "top_p", 1.0),
        top_k=_int(tensors, "top_k", 0),
        seed=None if seed is None else int(seed),
        stop=stop,
        stream=_flag(tensors, "stream"),
        end_id=None if end_id is None else int(end_id),
        prompt_ids=None if prompt_ids is None else tuple(int(t) for t in prompt_ids.reshape(-1)),
        min_p=_float(tensors, "min_p", 0.0),
        frequency_penalty=_float(tensors, "frequency_penalty", 0.0),
        presence_penalty=_float(tensors, "presence_penalty", 0.0),
        repetition_penalty=_float(tensors, "repetition_penalty", 1.0),
        logit_bias=_logit_bias(tensors),
        logprobs=_flag(tensors, "return_log_probs"),
        top_logprobs=_int(tensors, "top_logprobs", 0),
        n=_int(tensors, "num_return_sequences", 1),
        guide_type="" if guide_type is None else _text(guide_type, "guided_decoding_guide_type").strip(),
        guide="" if guide is None else _text(guide, "guided_decoding_guide"),
        echo_logprobs=_flag(tensors, "echo_prompt_logprobs"),
    )
    checks = (
        (request.temperature >= 0, f"temperature={request.temperature}: must be >= 0"),
        (0 < request.top_p <= 1, f"top_p={request.top_p}: must be in (0, 1]"),
        (request.top_k >= 0, f"top_k={request.top_k}: must be >= 0"),
        (0 <= request.min_p <= 1, f"min_p={request.min_p}: must be in [0, 1]"),
        (
            request.end_id is None or request.end_id >= -1,
            f"end_id={request.end_id}: a token id, or -1 for none",
        ),
        (-2 <= request.frequency_penalty <= 2, f"frequency_penalty={request.frequency_penalty}: -2..2"),
        (-2 <= request.presence_penalty <= 2, f"presence_penalty={request.presence_penalty}: -2..2"),
        (request.repetition_penalty > 0, f"repetition_penalty={request.repetition_penalty}: > 0 (1 = off)"),
        (0 <= request.top_logprobs <= 20, f"top_logprobs={request.top_logprobs}: must be between 0 and 20"),
        (
            1 <= request.n <= max_sequences,
            f"num_return_sequences={request.n}: must be between 1 and {max_sequences} (the model's batch)",
        ),
        (
            not request.guide_type or request.guide_type in GUIDE_TYPES,
            f"guided_decoding_guide_type={request.guide_type!r}: use one of {', '.join(GUIDE_TYPES)}",
        ),
        (
            request.guide_type in ("", "json") or bool(request.guide.strip()),
            f"guided_decoding_guide is required with guided_decoding_guide_type={request.guide_type!r}",
        ),
    )
    for ok, message in checks:
        if not ok:
            raise RequestError(message)
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
    "frequency_penalty",
    "presence_penalty",
    "repetition_penalty",
    "min_p",
    "logit_bias_ids",
    "logit_bias_values",
    "return_log_probs",
    "top_logprobs",
    "num_return_sequences",
    "guided_decoding_guide_type",
    "guided_decoding_guide",
    "echo_prompt_logprobs",
)


def _never() -> bool:
    return False


def response_tensors(response: Response) -> dict[str, np.ndarray]:
    """The output tensors of one response (batch dimension 1; names in model_repo/spec.py). The token
    id and logprob lists go out only when they hold something (logprobs only when asked for): a plain
    streamed token carries 6 tensors instead of 11, which the model, Triton and the gateway each
    handle per token. A missing output reads as empty."""

    def ints(values: tuple[int, ...]) -> np.ndarray:
        return np.asarray(values, dtype=np.int32).reshape(1, -1)

    def floats(values: tuple[float, ...]) -> np.ndarray:
        return np.asarray(values, dtype=np.float32).reshape(1, -1)

    tensors = {
        "text_output": np.array([[response.text.encode("utf-8")]], dtype=np.object_),
        "prompt_tokens": np.array([[response.prompt_tokens]], dtype=np.int32),
        "completion_tokens": np.array([[response.completion_tokens]], dtype=np.int32),
        "finish_reason": np.array([[response.finish_reason.encode()]], dtype=np.object_),
        "sequence_index": np.array([[response.sequence_index]], dtype=np.int32),
    }
    id_lists = {
        "output_token_ids": response.token_ids,
        "output_top_token_ids": response.top_token_ids,
        "prompt_token_ids": response.prompt_token_ids,
    }
    logprob_lists = {
        "output_log_probs": response.log_probs,
        "output_top_log_probs": response.top_log_probs,
        "prompt_log_probs": response.prompt_log_probs,
    }
    tensors.update({name: ints(values) for name, values in id_lists.items() if values})
    tensors.update({name: floats(values) for name, values in logprob_lists.items() if values})
    return tensors


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
        max_active = int(params.get("max_active_sequences", "8"))
        providers_module, contract = runtime_module("providers"), runtime_module("contract")
        try:  # the pod's $TRITONFORM_EXECUTION_PROVIDER (the stack's choice) over the config's
            choice = providers_module.chosen_provider(params.get("execution_provider", "auto"))
            providers = providers_module.provider_list(
                choice, contract.GenerationMetadata.load(model_dir), device_id, max_active
            )
            self.engine = engine_module.Engine.load(
                model_dir,
                providers=providers,
                num_threads=threads,
                allow_spinning=params.get("allow_spinning", "false") == "true",
                spin_only_in_runs=params.get("spin_only_in_runs", "false") == "true",
            )
        except contract.EngineError as exc:  # not ready, with the reason in Triton's log and model status
            raise pb_utils.TritonModelException(f"tritonform generation model not ready: {exc}") from None
        self.max_sequences = max_active
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
            f"tritonform generation model ready: {model_dir} on {self.engine.providers} "
            f"(CPU operators {self.engine.cpu_ops.state}), "
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
                parsed = parse_request(tensors, self.max_tokens_limit, self.max_sequences)
            except (RequestError, ValueError, TypeError, OverflowError) as exc:
                self._send_error(sender, f"bad request: {exc}", "INVALID_ARG")
                continue
            self._counter += 1
            job = self.job_class(
                request_id=f"{os.getpid()}-{self._counter}",
                request=parsed,
                emit=functools.partial(self._emit, sender),
                fail=functools.partial(self._fail, sender),
                is_cancelled=getattr(request, "is_cancelled", _never),
            )
            self.scheduler.submit(job)
        return None

    def _emit(self, sender: Any, response: Response) -> None:
        pb = self.pb
        tensors = [pb.Tensor(name, value) for name, value in response_tensors(response).items()]
        flags = pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL if response.final else 0
        sender.send(pb.InferenceResponse(output_tensors=tensors), flags=flags)

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
