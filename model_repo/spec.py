"""One typed spec for every Triton `config.pbtxt` tritonform writes, and the strict renderer.

`GenerationSpec` is what a user chooses (model name, batch size, limits, execution providers).
From it, `python_model_config` (ONNX backend) and the TensorRT-LLM builders in
`model_repo.tensorrt_llm` derive `ModelConfig` values, and `render_model_config` turns a
`ModelConfig` into text with the Jinja2 templates in `model_repo/templates/`.

Rendering is strict: a placeholder without a value, or a value without a placeholder, is an
error (`TemplateError`); templates are read-only inputs and never edited in place. Every rendered
config is parsed back with Triton's own protobuf schema (`tritonclient.grpc.model_config_pb2`)
so a typo in a field name fails here and not at server load.

Request/response tensors (`GENERATION_INPUTS` / `GENERATION_OUTPUTS`) follow the TensorRT-LLM
`ensemble` model, so one client or gateway talks to either backend:

  text_input  BYTES [1]   prompt                     max_tokens  INT32 [1]   new-token budget
  temperature FP32  [1]   optional (0 = greedy)      top_p       FP32  [1]   optional
  top_k       INT32 [1]   optional (0 = off)         random_seed UINT64 [1]  optional (TRT-LLM's name
  stop_words  BYTES [-1]  optional stop strings                              for a seed)
  stream      BOOL  [1]   optional (false: one final response)
  end_id      INT32 [1]   optional token id that ends an answer (default: the model's eos);
                          -1: none, every answer runs to max_tokens (benchmarks, as with TRT-LLM)
  input_ids   INT32 [-1]  python model only, optional: the prompt already tokenised (TRT-LLM's
                          name). The gateway sends it, so that only the chat template inserts control
                          tokens and the prompt's BOS is the gateway's; `text_input` is then ignored.
  -> text_output BYTES [-1]
     finish_reason BYTES [-1]     python model only (TRT-LLM's llmapi model has it, same name): on
                                  the final response 'stop' (end token or stop string) or 'length'
                                  (max_tokens or the model's context); empty before.
     completion_tokens INT32 [1]  tokens generated for THIS response (sum them over a stream; a
                                  non-streaming answer carries the total; an end token is not
                                  counted). From TRT-LLM's `sequence_length`, so both backends mean
                                  the same thing.
     prompt_tokens INT32 [1]      ONNX backend only: TensorRT-LLM's LLM API model (its own tensor
                                  names, model_repo/tensorrt_llm.py) reports no token counts, so the
                                  gateway counts them with the tokenizer.

Decoding features (python model only, all inputs optional; absent = off; names from TensorRT-LLM
where it has them; each applies per sequence inside the continuous batch):

  frequency_penalty   FP32  [1]   OpenAI: a token's logit loses count * penalty (tokens generated so far)
  presence_penalty    FP32  [1]   OpenAI: a token's logit loses penalty once it was generated
  repetition_penalty  FP32  [1]   extension, Hugging Face/CTRL: 1.0 = off; a token seen in prompt or
                                  answer has its positive logit divided, its negative one multiplied
  min_p               FP32  [1]   extension: 0 = off; keep tokens with p >= min_p * p(best)
  logit_bias_ids / logit_bias_values  INT32 / FP32 [-1]  OpenAI logit_bias: biases -100..100 added to
                                  those tokens' logits (same length)
  random_seed                     sequence i of n draws with seed + i; same seed + same request =
                                  same text, whatever else is batched
  return_log_probs    BOOL  [1]   return each generated token's logprob
  top_logprobs        INT32 [1]   0..20: also the k most likely alternatives per token
  num_return_sequences INT32 [1]  n choices (1..max_batch_size); they share ONE prefill of the prompt
  guided_decoding_guide_type BYTES [1]  "json" (any JSON object), "json_schema", "regex", "lark"
                                  (llguidance's Lark syntax; `%json { schema }` embeds a JSON schema)
  guided_decoding_guide      BYTES [1]  the schema / regex / grammar text. Enforced by a token mask
                                  every step, per sequence; the sequence ends ("stop") when the
                                  grammar is complete. An invalid guide is an INVALID_ARG error.
  echo_prompt_logprobs BOOL [1]   also the prompt tokens' logprobs (first response; the first is NaN)
  -> sequence_index      INT32 [1]   which of the n sequences this response belongs to
     output_token_ids    INT32 [-1]  the token ids behind THIS response's text (an end token is not
                                     among them); ids of tokens whose text is held back (a split UTF-8
                                     character, a possible stop string) come with the text
     output_log_probs    FP32  [-1]  each of those tokens' logprob: log-softmax of the logits with
                                     logit_bias and penalties applied, before temperature/top-k/top-p/
                                     min-p and grammar masks; empty unless return_log_probs/top_logprobs
     output_top_token_ids / output_top_log_probs  INT32 / FP32 [-1]  flattened
                                     [len(output_token_ids) * top_logprobs], best first
     prompt_token_ids / prompt_log_probs  INT32 / FP32 [-1]  with echo_prompt_logprobs, first response
  A sequence's last response carries its finish_reason; the request's last response carries
  Triton's FINAL flag. text_output never holds a U+FFFD made by a character split across tokens, and
  never a stop string (stop_words stop also when the string spans several tokens).

With `max_batch_size > 0` every tensor gets a leading batch dimension, so a request carries
`text_input` of shape [1, 1], exactly as for TensorRT-LLM.

Errors: the python model sets Triton's error code on each error response (INVALID_ARG, UNAVAILABLE,
CANCELLED, INTERNAL) and starts its message with the same name in brackets (`[UNAVAILABLE] ...`),
because Triton's gRPC stream passes an error's message and not its code.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from functools import cache
from pathlib import Path
from typing import Any, Literal

from model_repo.manifest import DEFAULT_ENGINE_SUBDIR

TEMPLATE_DIR = Path(__file__).parent / "templates"
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_TENSOR_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class TemplateError(ValueError):
    """A template and the values given to it do not match (missing or unused placeholder)."""


class SpecError(ValueError):
    """A spec value is out of range; the message names the field."""


class DataType(enum.StrEnum):
    """Triton data types we use (`TYPE_STRING` is BYTES on the wire)."""

    STRING = "TYPE_STRING"
    BOOL = "TYPE_BOOL"
    INT32 = "TYPE_INT32"
    INT64 = "TYPE_INT64"
    UINT64 = "TYPE_UINT64"
    FP32 = "TYPE_FP32"


@dataclass(frozen=True)
class TensorSpec:
    """One input or output tensor of a model (dims exclude the batch dimension)."""

    name: str
    data_type: DataType
    dims: tuple[int, ...]
    optional: bool = False
    reshape: tuple[int, ...] | None = None  # e.g. () to drop a [1] dim for the TRT-LLM backend
    ragged: bool = False  # allow_ragged_batch (TRT-LLM input_ids, stop_words_list)

    def __post_init__(self) -> None:
        if not _TENSOR_NAME.match(self.name):
            raise SpecError(f"tensor name {self.name!r}: use letters, digits and '_'")
        if not self.dims or any(d == 0 or d < -1 for d in self.dims):
            raise SpecError(f"tensor {self.name}: dims {self.dims} must be positive or -1")


@dataclass(frozen=True)
class InstanceGroup:
    """`instance_group` entry: how many model instances, on CPU or GPU."""

    kind: Literal["KIND_CPU", "KIND_GPU", "KIND_AUTO"] = "KIND_CPU"
    count: int = 1


@dataclass(frozen=True)
class EnsembleStep:
    """One step of an ensemble: model name and tensor maps (step tensor -> ensemble tensor)."""

    model_name: str
    input_map: tuple[tuple[str, str], ...]
    output_map: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class ModelConfig:
    """Everything a `config.pbtxt` says. Exactly one of `backend` / `platform` is set."""

    name: str
    max_batch_size: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    backend: str | None = None
    platform: str | None = None
    decoupled: bool = False
    instance_groups: tuple[InstanceGroup, ...] = ()
    parameters: tuple[tuple[str, str], ...] = ()
    ensemble_steps: tuple[EnsembleStep, ...] = ()
    dynamic_batching: bool = False

    def __post_init__(self) -> None:
        if not _MODEL_NAME.match(self.name):
            raise SpecError(f"model name {self.name!r}: 1-63 letters, digits, '_', '.', '-'")
        if (self.backend is None) == (self.platform is None):
            raise SpecError(f"model {self.name}: set exactly one of backend / platform")
        if self.max_batch_size < 0:
            raise SpecError(f"model {self.name}: max_batch_size must be >= 0")
        names = [t.name for t in (*self.inputs, *self.outputs)]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise SpecError(f"model {self.name}: duplicate tensor names {duplicates}")
        if self.platform == "ensemble" and not self.ensemble_steps:
            raise SpecError(f"model {self.name}: an ensemble needs at least one step")


# --- the generation interface (TensorRT-LLM ensemble compatible) -----------------------------

GENERATION_INPUTS: tuple[TensorSpec, ...] = (
    TensorSpec("text_input", DataType.STRING, (1,)),
    TensorSpec("max_tokens", DataType.INT32, (1,)),
    TensorSpec("temperature", DataType.FP32, (1,), optional=True),
    TensorSpec("top_p", DataType.FP32, (1,), optional=True),
    TensorSpec("top_k", DataType.INT32, (1,), optional=True),
    TensorSpec("random_seed", DataType.UINT64, (1,), optional=True),
    TensorSpec("stop_words", DataType.STRING, (-1,), optional=True),
    TensorSpec("stream", DataType.BOOL, (1,), optional=True),
    TensorSpec("end_id", DataType.INT32, (1,), optional=True),
)
# what only the python model takes (see the module docs)
PYTHON_MODEL_INPUTS: tuple[TensorSpec, ...] = (
    *GENERATION_INPUTS,
    TensorSpec("input_ids", DataType.INT32, (-1,), optional=True),
    TensorSpec("frequency_penalty", DataType.FP32, (1,), optional=True),
    TensorSpec("presence_penalty", DataType.FP32, (1,), optional=True),
    TensorSpec("repetition_penalty", DataType.FP32, (1,), optional=True),
    TensorSpec("min_p", DataType.FP32, (1,), optional=True),
    TensorSpec("logit_bias_ids", DataType.INT32, (-1,), optional=True),
    TensorSpec("logit_bias_values", DataType.FP32, (-1,), optional=True),
    TensorSpec("return_log_probs", DataType.BOOL, (1,), optional=True),
    TensorSpec("top_logprobs", DataType.INT32, (1,), optional=True),
    TensorSpec("num_return_sequences", DataType.INT32, (1,), optional=True),
    TensorSpec("guided_decoding_guide_type", DataType.STRING, (1,), optional=True),
    TensorSpec("guided_decoding_guide", DataType.STRING, (1,), optional=True),
    TensorSpec("echo_prompt_logprobs", DataType.BOOL, (1,), optional=True),
)
GENERATION_OUTPUTS: tuple[TensorSpec, ...] = (
    TensorSpec("text_output", DataType.STRING, (-1,)),
    TensorSpec("prompt_tokens", DataType.INT32, (1,)),
    TensorSpec("completion_tokens", DataType.INT32, (1,)),
    TensorSpec("finish_reason", DataType.STRING, (-1,)),
)
# what only the python model returns besides (see the module docs)
PYTHON_MODEL_OUTPUTS: tuple[TensorSpec, ...] = (
    *GENERATION_OUTPUTS,
    TensorSpec("sequence_index", DataType.INT32, (1,)),
    TensorSpec("output_token_ids", DataType.INT32, (-1,)),
    TensorSpec("output_log_probs", DataType.FP32, (-1,)),
    TensorSpec("output_top_token_ids", DataType.INT32, (-1,)),
    TensorSpec("output_top_log_probs", DataType.FP32, (-1,)),
    TensorSpec("prompt_token_ids", DataType.INT32, (-1,)),
    TensorSpec("prompt_log_probs", DataType.FP32, (-1,)),
)
# what the TensorRT-LLM ensemble can return (see the module docs about prompt_tokens, finish_reason)
ENSEMBLE_OUTPUTS: tuple[TensorSpec, ...] = tuple(
    t for t in GENERATION_OUTPUTS if t.name not in ("prompt_tokens", "finish_reason")
)

ExecutionProvider = Literal["auto", "cpu", "cuda", "tensorrt"]


@dataclass(frozen=True)
class GenerationSpec:
    """What the user chooses for the served generation model; every config derives from this.

    `max_batch_size` is the number of sequences decoded together (continuous batching in the
    python backend, in-flight batching in TensorRT-LLM). `execution_provider="auto"` uses
    TensorRT/CUDA when onnxruntime in the container offers them, else CPU.
    """

    model_name: str = "llm"
    max_batch_size: int = 8
    max_tokens_limit: int = 2048
    instance_kind: Literal["KIND_CPU", "KIND_GPU"] = "KIND_CPU"
    instance_count: int = 1
    execution_provider: ExecutionProvider = "auto"
    intra_op_threads: int = 0  # 0: onnxruntime decides
    # onnxruntime's threads busy-wait for work inside a run (a lone stream's step no longer waits for a
    # sleeping thread at every operator: 1.13x at one stream, served beside the previous build on a
    # quiet 2-core machine, issue 16) and stop as each run returns, so nothing spins between steps; the
    # runs on all the cores never overlap a decode lane's (runtime/scheduler.py). Spinning between runs
    # as well (spin_only_in_runs False) steals the cores Triton's server process needs to forward each
    # response (8 streams ran ~1.5-2x faster without it); on a node other work keeps busy, set
    # allow_spinning False.
    allow_spinning: bool = True
    spin_only_in_runs: bool = True
    # Independent continuous batches, each on its own onnxruntime session with a share of the cores
    # (see ContinuousBatchScheduler in runtime/scheduler.py); 0: auto (2 on CPU, 1 on a GPU).
    decode_lanes: int = 0
    # Requests waiting for a free sequence slot; beyond this the model answers UNAVAILABLE at once
    # (the gateway: 503 with Retry-After) instead of queueing work it cannot start soon. 0: 4 x
    # max_batch_size.
    max_queued_requests: int = 0
    engine_subdir: str = DEFAULT_ENGINE_SUBDIR  # artefacts, relative to the model version directory
    extra_parameters: tuple[tuple[str, str], ...] = field(default=())

    def __post_init__(self) -> None:
        if not _MODEL_NAME.match(self.model_name):
            raise SpecError(f"model_name {self.model_name!r}: 1-63 letters, digits, '_', '.', '-'")
        checks = {
            "max_batch_size": (self.max_batch_size, 1, 256),
            "max_tokens_limit": (self.max_tokens_limit, 1, 1 << 20),
            "instance_count": (self.instance_count, 1, 64),
            "intra_op_threads": (self.intra_op_threads, 0, 1024),
            "decode_lanes": (self.decode_lanes, 0, 64),
            "max_queued_requests": (self.max_queued_requests, 0, 1 << 16),
        }
        for name, (value, low, high) in checks.items():
            if not low <= value <= high:
                raise SpecError(f"{name}={value}: must be between {low} and {high}")
        if "/" in self.engine_subdir or self.engine_subdir in ("", ".", ".."):
            raise SpecError(f"engine_subdir {self.engine_subdir!r}: one plain directory name")

    def parameters(self) -> tuple[tuple[str, str], ...]:
        """The `parameters` block the python model reads in `initialize`."""
        own = (
            ("max_active_sequences", str(self.max_batch_size)),
            ("max_tokens_limit", str(self.max_tokens_limit)),
            ("execution_provider", self.execution_provider),
            ("intra_op_threads", str(self.intra_op_threads)),
            ("allow_spinning", "true" if self.allow_spinning else "false"),
            ("spin_only_in_runs", "true" if self.spin_only_in_runs else "false"),
            ("decode_lanes", str(self.decode_lanes)),
            ("max_queued_requests", str(self.max_queued_requests or 4 * self.max_batch_size)),
            ("engine_subdir", self.engine_subdir),
        )
        clash = {k for k, _ in own} & {k for k, _ in self.extra_parameters}
        if clash:
            raise SpecError(f"extra_parameters may not override {sorted(clash)}")
        return own + self.extra_parameters


def python_model_config(spec: GenerationSpec) -> ModelConfig:
    """The decoupled python-backend generation model (ONNX Runtime inside)."""
    return ModelConfig(
        name=spec.model_name,
        backend="python",
        max_batch_size=spec.max_batch_size,
        inputs=PYTHON_MODEL_INPUTS,
        outputs=PYTHON_MODEL_OUTPUTS,
        decoupled=True,
        instance_groups=(InstanceGroup(spec.instance_kind, spec.instance_count),),
        parameters=spec.parameters(),
    )


# --- strict rendering ------------------------------------------------------------------------


@cache
def _environment() -> Any:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATE_DIR)),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["q"] = pbtxt_string
    return env


def pbtxt_string(value: object) -> str:
    """A protobuf text-format string literal (quotes and backslashes escaped, one line only)."""
    text = str(value)
    if any(ch in text for ch in "\n\r\0"):
        raise TemplateError(f"value {text!r} may not contain line breaks or NUL")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_template(template_name: str, values: Mapping[str, Any]) -> str:
    """Render `templates/<template_name>`; missing or unused values raise `TemplateError`."""
    import jinja2
    from jinja2 import meta

    env = _environment()
    try:
        source = (TEMPLATE_DIR / template_name).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TemplateError(f"no template {template_name!r} in {TEMPLATE_DIR}") from None
    wanted = meta.find_undeclared_variables(env.parse(source))
    missing, unused = sorted(wanted - set(values)), sorted(set(values) - wanted)
    if missing or unused:
        raise TemplateError(f"{template_name}: missing values {missing}, unused values {unused}")
    try:
        text = env.get_template(template_name).render(**values)
    except jinja2.UndefinedError as exc:  # e.g. an attribute the value does not have
        raise TemplateError(f"{template_name}: {exc}") from None
    leftover = re.search(r"\$\{[^}]*\}|\{\{|\{%", text)
    if leftover:
        raise TemplateError(f"{template_name}: unrendered placeholder {leftover.group(0)!r}")
    return text


def render_model_config(config: ModelConfig) -> str:
    """`config.pbtxt` text for `config`, checked against Triton's ModelConfig protobuf."""
    values = {f.name: getattr(config, f.name) for f in fields(config)}
    text = render_template("config.pbtxt.j2", values)
    parse_model_config(text)
    return text


def parse_model_config(text: str) -> Any:
    """Parse `config.pbtxt` text with Triton's schema; raises `SpecError` naming the problem."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    message = model_config_pb2.ModelConfig()
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as exc:
        raise SpecError(f"rendered config.pbtxt does not parse: {exc}") from None
    return message
