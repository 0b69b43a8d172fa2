"""A generation request, the responses it gets, and how one sequence's tokens become responses.

No Triton types: the python model (`model_repo/python_model/model.py`) turns tensors into a
`GenerationRequest` and a `Response` back into tensors (names in model_repo/spec.py).

A request may ask for `n` sequences (choices); each has a `SequenceOutput` that turns its tokens into
responses. Text is released only in whole UTF-8 characters and never past a stop string
(`TextStream`); the ids and logprobs of the tokens behind held text wait with it and travel in the
response that releases the text, so `Response.token_ids` always line up with `Response.text`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from .sampling import SamplingParams
from .text import TextStream


class JobError(str):
    """The message a job fails with (a `str`, so a `fail` callback may treat it as text) and its `kind`:
    INVALID_ARG (the request cannot be served as sent), UNAVAILABLE (try again: queue full, shutting
    down), CANCELLED (the client went away) or INTERNAL (the generation broke). The names are
    Triton's error codes, which the adapter sets on the error it sends."""

    kind: str

    def __new__(cls, message: str, kind: str = "INTERNAL") -> JobError:
        error = super().__new__(cls, message)
        error.kind = kind
        return error


@dataclass(frozen=True)
class GenerationRequest:
    """A validated request, independent of Triton's types (see spec.py for each setting's meaning)."""

    prompt: str
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stream: bool = False
    end_id: int | None = None  # None: the model's eos; -1: no end token (run to max_tokens)
    # the prompt already tokenised (the gateway sends ids, so that only its chat template inserts
    # control tokens); None: encode `prompt`
    prompt_ids: tuple[int, ...] | None = None
    min_p: float = 0.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: tuple[tuple[int, float], ...] = ()
    logprobs: bool = False
    top_logprobs: int = 0
    n: int = 1  # sequences (choices) sharing the prompt's prefill
    guide_type: str = ""
    guide: str = ""
    echo_logprobs: bool = False  # also the prompt tokens' logprobs, in the first response

    def sampling_params(self, index: int = 0) -> SamplingParams:
        """Sequence `index`'s settings: with a seed, sequence i draws with seed + i."""
        return SamplingParams(
            max_tokens=self.max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            min_p=self.min_p,
            seed=None if self.seed is None else self.seed + index,
            stop=self.stop,
            # end_id replaces the model's eos as the token that ends the answer (TRT-LLM's meaning)
            ignore_eos=self.end_id is not None,
            stop_token_ids=(self.end_id,) if self.end_id is not None and self.end_id != -1 else (),
            frequency_penalty=self.frequency_penalty,
            presence_penalty=self.presence_penalty,
            repetition_penalty=self.repetition_penalty,
            logit_bias=self.logit_bias,
            logprobs=self.logprobs,
            top_logprobs=self.top_logprobs,
            guide_type=self.guide_type,
            guide=self.guide,
        )


class Response(NamedTuple):
    """One response of a job. The first four fields are what every response has had since the start:
    text, `final` (Triton's FINAL flag: the request's last response), the prompt's token count and the
    completion tokens behind THIS response. `finish_reason` is set on a sequence's last response;
    `token_ids` are the tokens behind `text` (an end token is not among them), with their logprobs
    when asked; the prompt's ids and logprobs come in the first response with echo."""

    text: str
    final: bool
    prompt_tokens: int
    completion_tokens: int
    sequence_index: int = 0
    finish_reason: str = ""
    token_ids: tuple[int, ...] = ()
    log_probs: tuple[float, ...] = ()
    top_token_ids: tuple[int, ...] = ()  # flattened [len(token_ids) * top_logprobs], best first
    top_log_probs: tuple[float, ...] = ()
    prompt_token_ids: tuple[int, ...] = ()
    prompt_log_probs: tuple[float, ...] = ()  # the first token's is NaN (nothing precedes it)


class SequenceOutput:
    """One sequence of a job: its text stream and the tokens not sent yet."""

    def __init__(self, index: int, tokenizer: Any, request: GenerationRequest) -> None:
        self.index = index
        self.stream = TextStream(tokenizer, stop=request.stop)
        self.streaming = request.stream
        self.logprobs = request.logprobs or request.top_logprobs > 0
        self.finish_reason: str | None = None
        self.completion_tokens = 0
        self._text: list[str] = []
        self._ids: list[int] = []
        self._lps: list[float] = []
        self._top_ids: list[int] = []
        self._top_lps: list[float] = []

    @property
    def done(self) -> bool:
        """Whether the sequence has ended (its last response is made)."""
        return self.finish_reason is not None

    def push(self, out: Any) -> tuple[str, bool]:
        """Take one `StepOutput`: (text to send now, whether the sequence ended). A stop string found
        in the text ends it too ('stop')."""
        text = ""
        if not out.is_stop_token:
            self.completion_tokens += 1
            self._ids.append(out.token_id)
            if self.logprobs and out.logprob is not None:
                self._lps.append(out.logprob)
                self._top_ids.extend(out.top_ids)
                self._top_lps.extend(out.top_logprobs)
            text = self.stream.push(out.token_id)
        finished = out.finished or self.stream.stopped
        if finished:
            text += self.stream.flush()
            self.finish_reason = "stop" if self.stream.stopped else out.finish_reason
        return text, finished

    def response(self, text: str, final: bool, prompt_tokens: int) -> Response | None:
        """The response to send after a token (None: nothing to send yet). Streaming: whenever text is
        released or the sequence ends; otherwise once, at the end, with all its text and tokens."""
        if not self.streaming:
            self._text.append(text)
            if not self.done:
                return None
            text = "".join(self._text)
        elif not text and not self.done:
            return None
        ids, self._ids = tuple(self._ids), []
        lps, self._lps = tuple(self._lps), []
        top_ids, self._top_ids = tuple(self._top_ids), []
        top_lps, self._top_lps = tuple(self._top_lps), []
        return Response(
            text,
            final,
            prompt_tokens,
            len(ids),
            self.index,
            self.finish_reason or "",
            ids,
            lps,
            top_ids,
            top_lps,
        )


@dataclass
class Job:
    """One admitted request and how to answer it.

    `emit(response)` sends a `Response`; `fail(message)` sends an error (a `JobError`) as the final
    response; `is_cancelled()` says whether the client went away.
    """

    request_id: str
    request: GenerationRequest
    emit: Callable[[Response], None]
    fail: Callable[[str], None]
    is_cancelled: Callable[[], bool] = lambda: False
    prompt_tokens: int = 0
    sequences: list[SequenceOutput] = field(default_factory=list)
    echo: tuple[tuple[int, ...], tuple[float, ...]] | None = None  # prompt ids, logprobs: first response

    @property
    def completion_tokens(self) -> int:
        """Tokens generated so far over every sequence (end tokens not counted)."""
        return sum(s.completion_tokens for s in self.sequences)

    @property
    def finish_reason(self) -> str | None:
        """The first sequence's finish reason (None while it runs)."""
        return self.sequences[0].finish_reason if self.sequences else None

    def sequence_id(self, index: int) -> str:
        """The id of sequence `index` in a decode batch."""
        return self.request_id if index == 0 else f"{self.request_id}#{index}"
