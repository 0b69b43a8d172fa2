"""OpenAI-compatible request models; FastAPI builds the OpenAPI document from these.

Every parameter of OpenAI's Chat Completions and Completions references is a field here, so the
OpenAPI document says exactly what the gateway takes. Each is either honoured, accepted because it
changes nothing on a self-hosted server (`user`, `metadata`, `service_tier`, ...), or refused with a
400 that names it and says why (`serving/gateway/compat.py` holds those reasons; README's
compatibility table lists them all). Unknown fields are refused too (a typo must not pass silently).
`top_k`, `min_p` and `repetition_penalty` are extensions (vLLM's names) outside OpenAI's reference.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from serving.gateway.responses import (  # noqa: F401  (re-exported: the routes' response models)
    AssistantMessage,
    ChatChoice,
    ChatCompletionResponse,
    CompletionChoice,
    CompletionResponse,
    ErrorBody,
    ErrorResponse,
    ModelCard,
    ModelList,
    Usage,
)

Stop = Annotated[str, Field(min_length=1, max_length=256)]
FUNCTION_NAME = r"^[A-Za-z0-9_-]{1,64}$"


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Open(BaseModel):
    """A sub-object OpenAI may grow (stream_options, prediction): unknown keys are ignored."""

    model_config = ConfigDict(extra="allow")


class StreamOptions(_Open):
    include_usage: bool = False
    include_obfuscation: bool | None = None  # accepted: nothing to obfuscate against on loopback


class _SamplingFields(_Request):
    model: str = Field(min_length=1, max_length=256)
    max_tokens: int | None = Field(None, ge=1, description="new-token budget (capped by the server)")
    temperature: float | None = Field(1.0, ge=0.0, le=2.0, description="0 is greedy")
    top_p: float | None = Field(1.0, gt=0.0, le=1.0)
    seed: int | None = Field(None, ge=0, le=2**63 - 1, description="same seed + same request = same text")
    stop: Stop | list[Stop] | None = Field(None, description="up to 4 stop strings")
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    n: int | None = Field(1, ge=1, le=16, description="choices; they share the prompt's prefill")
    frequency_penalty: float | None = Field(0.0, ge=-2.0, le=2.0)
    presence_penalty: float | None = Field(0.0, ge=-2.0, le=2.0)
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = Field(
        None, description="token id (as a string) -> bias added to its logit, -100..100", max_length=1024
    )
    user: str | None = Field(None, max_length=256)
    # extensions (vLLM's names)
    top_k: int | None = Field(None, ge=0, description="extension: sample among the k most likely (0 = off)")
    min_p: float | None = Field(None, ge=0.0, le=1.0, description="extension: 0 = off")
    repetition_penalty: float | None = Field(
        None, gt=0.0, le=10.0, description="extension (HF/CTRL semantics): 1.0 = off"
    )

    @model_validator(mode="after")
    def _check_stop(self) -> _SamplingFields:
        if isinstance(self.stop, list) and len(self.stop) > 4:
            raise ValueError("stop: at most 4 stop strings")
        return self

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def requested_max_tokens(self) -> int | None:
        return self.max_tokens

    def choices(self) -> int:
        return self.n or 1


TokenIds = Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]


class CompletionRequest(_SamplingFields):
    """`POST /v1/completions`: one prompt (text or token ids)."""

    prompt: (
        Annotated[str, Field(min_length=1)]
        | Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1, max_length=64)]
        | TokenIds
        | Annotated[list[TokenIds], Field(min_length=1, max_length=64)]
    ) = Field(description="the prompt: text or token ids (a list must hold exactly one prompt)")
    echo: bool | None = Field(False, description="return the prompt before the completion")
    logprobs: int | None = Field(None, ge=0, le=5, description="logprobs of the k most likely tokens too")
    suffix: str | None = Field(None, description="fill-in-the-middle: only for models with FIM tokens")
    best_of: int | None = Field(None, ge=1, le=16)

    def prompt_count(self) -> int:
        prompt = self.prompt
        if isinstance(prompt, str) or not isinstance(prompt[0], str | list):
            return 1
        return len(prompt)

    def prompt_text(self) -> str:
        """The prompt as text (token-id prompts count as no characters here)."""
        if isinstance(self.prompt, str):
            return self.prompt
        first = self.prompt[0]
        return first if isinstance(first, str) else ""

    def prompt_ids(self) -> list[int] | None:
        """The prompt's token ids when it was sent as ids."""
        prompt = self.prompt
        if isinstance(prompt, str) or isinstance(prompt[0], str):
            return None
        first = prompt[0]
        if isinstance(first, list):
            return [int(i) for i in first]
        return [int(i) for i in prompt if isinstance(i, int)]


# --- chat messages ------------------------------------------------------------------------------


class TextPart(_Request):
    type: Literal["text"]
    text: str


class OtherPart(BaseModel):
    """A content part the gateway cannot read (image_url, input_audio, file, refusal): a 400 names it."""

    model_config = ConfigDict(extra="allow")
    type: str


ContentPart = TextPart | OtherPart


class FunctionCall(_Request):
    name: str = Field(pattern=FUNCTION_NAME)
    arguments: str = Field(description="the arguments as a JSON object (text)")


class ToolCall(_Request):
    id: str = Field(min_length=1, max_length=256)
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Request):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None
    name: str | None = Field(None, max_length=64)
    tool_calls: list[ToolCall] | None = Field(None, max_length=128)
    tool_call_id: str | None = Field(None, max_length=256)
    refusal: str | None = None
    audio: dict[str, Any] | None = None
    function_call: dict[str, Any] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content if isinstance(p, TextPart))


# --- tools and structured output ----------------------------------------------------------------


class FunctionDefinition(_Request):
    name: str = Field(pattern=FUNCTION_NAME, description="a-z, A-Z, 0-9, _ and -, at most 64")
    description: str | None = None
    parameters: dict[str, Any] | None = Field(None, description="a JSON schema of an object")
    strict: bool | None = None


class Tool(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str = Field(description="'function' (custom tools are refused)")
    function: FunctionDefinition | None = None


class NamedFunction(_Request):
    name: str


class NamedToolChoice(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    function: NamedFunction | None = None


class JsonSchemaFormat(_Request):
    name: str = Field(pattern=FUNCTION_NAME)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str = Field(description="'text', 'json_object' or 'json_schema'")
    json_schema: JsonSchemaFormat | None = None


class ChatCompletionRequest(_SamplingFields):
    """`POST /v1/chat/completions`: messages rendered with the model's own chat template."""

    messages: list[ChatMessage] = Field(min_length=1, max_length=1024)
    max_completion_tokens: int | None = Field(None, ge=1, description="newer name for max_tokens")
    logprobs: bool | None = Field(False, description="logprob of each generated token")
    top_logprobs: int | None = Field(None, ge=0, le=20, description="with logprobs: k alternatives")
    tools: list[Tool] | None = Field(None, max_length=128)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    # accepted; nothing to do on a self-hosted server (README's table says why)
    metadata: dict[str, str] | None = Field(None, max_length=16)
    store: bool | None = None
    service_tier: str | None = None
    prompt_cache_key: str | None = None
    prompt_cache_retention: str | None = None
    safety_identifier: str | None = None
    prediction: dict[str, Any] | None = None
    modalities: list[str] | None = None
    # refused with a reason (compat.py)
    audio: dict[str, Any] | None = None
    functions: list[dict[str, Any]] | None = None
    function_call: Any = None
    reasoning_effort: str | None = None
    verbosity: str | None = None
    web_search_options: dict[str, Any] | None = None

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens
