"""`Gateway`: admission, accounting and the generation itself, for every route; one per app.

Admission runs the cheap checks first and the costly ones last: model name and max_tokens, the
prompt's length in characters, a concurrency slot (taken at once, so a burst cannot overshoot the
cap), the key's request and token budget (one request and max_tokens reserved), and only then the
chat template and the tokenizer, off the event loop; the prompt's tokens are checked against
`max_prompt_tokens` and, with max_tokens, against the served model's own context, then charged to
the key. When the generation ends, however it ends, the slot is released and the tokens that were
not generated go back to the key.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request

from model_repo.runtime.token_bytes import TokenBytes
from serving.gateway.canary import CANARY, STABLE, Canary, canary_from_settings, conversation_key
from serving.gateway.compat import ChatPlan, CompletionPlan, chat_plan, completion_plan
from serving.gateway.errors import ApiError
from serving.gateway.holding import ColdStartHold
from serving.gateway.limits import ApiKeys, LocalKeyLimits, RateLimiter
from serving.gateway.logprobs import TokenRecord
from serving.gateway.observability import LOGGER_NAME, GatewayMetrics
from serving.gateway.prompts import Prompt, PromptError, PromptFormatter
from serving.gateway.schemas import ChatCompletionRequest, CompletionRequest, Usage
from serving.gateway.settings import GatewaySettings
from serving.gateway.tools import chat_messages
from serving.gateway.triton import Delta, GenerationParams, TritonError, TritonGenerator

log = logging.getLogger(LOGGER_NAME)
_FINISH_REASONS = ("stop", "length")


@dataclass
class Choice:
    """One of the n sequences: its text, tokens (with logprobs when asked) and finish reason."""

    text: list[str] = field(default_factory=list)
    record: TokenRecord = field(default_factory=TokenRecord)
    finish_reason: str | None = None
    tokens: int = 0  # completion tokens reported for this sequence


@dataclass
class Generation:
    """A request that passed every check: what to send to Triton and how to account for it."""

    route: str
    key_id: str
    params: GenerationParams
    prompt_tokens: int
    reserved_completion: int  # max_tokens x n as reserved from the key's budget at admission
    plan: ChatPlan | CompletionPlan | None = None
    prompt: Prompt | None = None
    started: float = field(default_factory=time.perf_counter)
    choices: dict[int, Choice] = field(default_factory=dict)
    prompt_record: TokenRecord | None = None  # the prompt's tokens and logprobs (echo + logprobs)
    usage: Usage | None = None
    first_token_at: float | None = None
    completion_tokens: int | None = 0  # summed over the stream; None if Triton does not report it
    generated: int = 0  # completion tokens seen so far (for the refund, whatever Triton reports)
    released: bool = False
    role: str = STABLE  # the version serving it: stable, or canary (serving/gateway/canary.py)

    def choice(self, index: int) -> Choice:
        if index not in self.choices:
            self.choices[index] = Choice()
        return self.choices[index]

    @property
    def text(self) -> list[str]:
        """The first choice's text pieces."""
        return self.choice(0).text

    @property
    def finish_reason(self) -> str | None:
        return self.choice(0).finish_reason


class Gateway:
    """Everything a route needs; one per app (no module-level state). `shutdown()` is the public stop
    hook: new requests get 503 and every generation still running ends with an error."""

    def __init__(self, settings: GatewaySettings, on_cold: Callable[[], None] | None = None) -> None:
        """`on_cold`: called when requests start waiting for Triton (the local stack starts it)."""
        self.settings = settings
        self.keys = ApiKeys(settings.resolved_api_keys())
        self.prompts = PromptFormatter.load(settings.resolved_tokenizer_dir())
        self.token_bytes = TokenBytes(self.prompts.tokenizer)  # ids -> OpenAI's token/bytes (logprobs)
        self.metrics = GatewayMetrics()
        # A canary may bring its own tokenizer: its prompt formatter and token bytes (None: the stable's).
        self.canary_format: tuple[PromptFormatter, TokenBytes] | None = None
        self.canary: Canary | None = None
        self.canary_triton: TritonGenerator | None = None  # set when the app starts, with a canary
        if settings.has_canary:
            self.canary = canary_from_settings(settings, self.metrics.registry)
            own = settings.canary_tokenizer_dir
            if own is not None:
                prompts = PromptFormatter.load(own)
                self.canary_format = (prompts, TokenBytes(prompts.tokenizer))
        local = RateLimiter(settings.requests_per_minute, settings.tokens_per_minute)
        self.limits: Any = LocalKeyLimits(local)
        if settings.rate_limit_redis_url:
            from serving.gateway.shared_limits import RedisRateLimiter

            self.limits = RedisRateLimiter(
                settings.rate_limit_redis_url,
                settings.requests_per_minute,
                settings.tokens_per_minute,
                fallback=local,
                on_store_error=self.metrics.rate_limit_store_errors.inc,
            )
        self.hold = ColdStartHold(
            settings.cold_start_timeout_s, settings.max_held_requests, self.metrics.registry, on_cold
        )
        self.triton: TritonGenerator | None = None  # set when the app starts
        self.active = 0  # admitted requests not yet released (the concurrency cap counts these)
        self.running = 0  # generations talking to Triton (the in-flight gauge)
        self.draining = False
        # What `shutdown()` calls to end each running generation with an error (the streams register).
        self.interrupts: set[Callable[[], None]] = set()
        self.created = int(time.time())
        self.loop: asyncio.AbstractEventLoop | None = None  # the server's, set when the app starts

    def token_bytes_of(self, gen: Generation) -> TokenBytes:
        """The token bytes (logprobs) of the version serving `gen`."""
        return self._format(gen.role)[1]

    def _format(self, role: str) -> tuple[PromptFormatter, TokenBytes]:
        """The prompt formatter and token bytes of `role`'s version."""
        if role == CANARY and self.canary_format is not None:
            return self.canary_format
        return self.prompts, self.token_bytes

    def backend(self, role: str = STABLE) -> TritonGenerator:
        """The Triton client of `role`'s version; 503 while the gateway starts or stops."""
        if self.draining:
            raise ApiError(
                503, "the gateway is shutting down; try again shortly", headers={"Retry-After": "1"}
            )
        if self.triton is None:
            raise ApiError(503, "the gateway is starting; try again shortly", headers={"Retry-After": "1"})
        if role == CANARY and self.canary_triton is not None:
            return self.canary_triton
        return self.triton

    def shutdown_from_thread(self, timeout_s: float = 30.0) -> None:
        """`shutdown()` from another thread (a signal handler, `tritonform serve`); waits for it."""
        if self.loop is None:
            self.draining = True
            return
        asyncio.run_coroutine_threadsafe(self.shutdown(), self.loop).result(timeout_s)

    async def shutdown(self) -> None:
        """Stop: refuse new requests (503) and end every running generation with an error (closing the
        Triton client fails their streams), so that the server can finish its connections."""
        self.draining = True
        for interrupt in list(self.interrupts):
            interrupt()
        await self.hold.close()
        triton, self.triton = self.triton, None
        if triton is not None:
            await triton.close()
        canary, self.canary_triton = self.canary_triton, None
        if canary is not None:
            await canary.close()
        if self.canary is not None:
            await self.canary.close()
        await self.limits.close()

    # -- admission -------------------------------------------------------------------------------
    async def admit(
        self, route: str, request: Request, body: CompletionRequest | ChatCompletionRequest
    ) -> Generation:
        """Check and reserve everything for `body`; raises `ApiError` (4xx, 503) when it cannot run."""
        s = self.settings
        self.backend()
        if body.model != s.public_model_name:
            raise ApiError(
                404,
                f"model {body.model!r} does not exist; this server serves {s.public_model_name!r}",
                param="model",
                code="model_not_found",
            )
        asked = body.requested_max_tokens()
        max_tokens = asked or s.default_max_tokens
        if max_tokens > s.max_tokens_cap:
            raise ApiError(
                400,
                f"max_tokens={max_tokens} is over this server's limit max_tokens_cap={s.max_tokens_cap}",
                param="max_tokens",
                code="max_tokens_too_large",
            )
        role = self.canary.choose(conversation_key(body)) if self.canary is not None else STABLE
        plan: ChatPlan | CompletionPlan
        if isinstance(body, ChatCompletionRequest):
            plan = chat_plan(body)
            param, chars = "messages", sum(len(m.text()) for m in body.messages)
        else:
            plan = completion_plan(body, self._format(role)[0].fim_tokens)
            param, chars = "prompt", len(body.prompt_text()) + len(body.suffix or "")
        if chars > s.prompt_chars_limit:
            raise ApiError(
                400,
                f"the prompt has {chars} characters, over this server's limit "
                f"max_prompt_chars={s.prompt_chars_limit}",
                param=param,
                code="context_length_exceeded",
            )
        if self.active >= s.max_concurrent_requests:
            raise ApiError(
                429,
                f"the server is busy (max_concurrent_requests={s.max_concurrent_requests}); retry shortly",
                headers={"Retry-After": "1"},
                code="server_busy",
            )
        self.active += 1  # taken before any await: a burst cannot pass the check together
        try:
            return await self._admit_key(
                route, str(request.state.key_id), body, plan, max_tokens, asked, param, role
            )
        except BaseException:
            self.active -= 1
            raise

    async def _admit_key(
        self,
        route: str,
        key: str,
        body: CompletionRequest | ChatCompletionRequest,
        plan: ChatPlan | CompletionPlan,
        max_tokens: int,
        asked: int | None,
        param: str,
        role: str,
    ) -> Generation:
        s = self.settings
        prompts = self._format(role)[0]
        n = body.choices()
        wait = await self.limits.admit(key, max_tokens * n)
        if wait:
            raise ApiError(
                429,
                f"rate limit reached for this API key (requests_per_minute={s.requests_per_minute},"
                f" tokens_per_minute={s.tokens_per_minute}); retry in {wait} s",
                headers={"Retry-After": str(wait)},
                code="rate_limit_exceeded",
            )
        try:
            prompt = await asyncio.to_thread(self._prompt, body, plan, prompts)
            fitted = self._fit(len(prompt.ids), max_tokens, asked, param, prompts.max_context)
            params = self._params(body, plan, prompt, fitted, prompts.vocab_size)
        except BaseException:
            await self.limits.refund(key, max_tokens * n)
            raise
        if fitted < max_tokens:
            await self.limits.refund(key, (max_tokens - fitted) * n)
        await self.limits.charge(key, len(prompt.ids))
        if s.log_prompts:
            log.info("prompt", extra={"prompt": prompt.text})
        return Generation(route, key, params, len(prompt.ids), fitted * n, plan, prompt, role=role)

    def _params(
        self,
        body: CompletionRequest | ChatCompletionRequest,
        plan: ChatPlan | CompletionPlan,
        prompt: Prompt,
        max_tokens: int,
        vocab: int,
    ) -> GenerationParams:
        bias = []
        for token, value in (body.logit_bias or {}).items():
            token_id = int(token) if token.strip().isascii() and token.strip().isdigit() else -1
            if not 0 <= token_id < vocab:
                raise ApiError(
                    400,
                    f"logit_bias: {token!r} is not a token id of this model (0..{vocab - 1})",
                    param="logit_bias",
                )
            bias.append((token_id, float(value)))
        logprobs, top, guide, echo = False, 0, None, False
        if isinstance(plan, ChatPlan):
            logprobs, top = plan.logprobs, plan.top_logprobs
            guide = (plan.guide.kind, plan.guide.text) if plan.guide else None
        elif plan.logprobs is not None:
            logprobs, top, echo = True, plan.logprobs, plan.echo
        return GenerationParams(
            prompt.text,
            max_tokens,
            1.0 if body.temperature is None else body.temperature,
            1.0 if body.top_p is None else body.top_p,
            body.seed,
            tuple(body.stop_list()),
            bool(body.stream),
            prompt.ids,
            top_k=body.top_k or 0,
            min_p=body.min_p or 0.0,
            repetition_penalty=1.0 if body.repetition_penalty is None else body.repetition_penalty,
            frequency_penalty=body.frequency_penalty or 0.0,
            presence_penalty=body.presence_penalty or 0.0,
            logit_bias=tuple(bias),
            logprobs=logprobs,
            top_logprobs=top,
            n=body.choices(),
            guide=guide,
            echo_logprobs=echo,
        )

    def _prompt(
        self,
        body: CompletionRequest | ChatCompletionRequest,
        plan: ChatPlan | CompletionPlan,
        prompts: PromptFormatter,
    ) -> Prompt:
        """Render and tokenise with the serving version's formatter (runs in a worker thread)."""
        try:
            if isinstance(body, ChatCompletionRequest):
                assert isinstance(plan, ChatPlan)
                messages, tools = chat_messages(body.messages, plan.tools, prompts.takes_tools)
                return prompts.chat(messages, tools)
            ids = body.prompt_ids()
            if ids is not None:
                return prompts.from_ids(ids)
            if body.suffix is not None:
                return prompts.fill_in_the_middle(body.prompt_text(), body.suffix)
            return prompts.completion(body.prompt_text())
        except PromptError as exc:
            param = "messages" if isinstance(body, ChatCompletionRequest) else "prompt"
            raise ApiError(400, str(exc), param=param) from None

    def _fit(self, prompt_tokens: int, max_tokens: int, asked: int | None, param: str, context: int) -> int:
        """max_tokens once the prompt is counted: 400 `context_length_exceeded` if the prompt is over
        `max_prompt_tokens`, or prompt + max_tokens over the model's context (a default max_tokens
        shrinks to what fits instead)."""
        s = self.settings
        if prompt_tokens > s.max_prompt_tokens:
            raise ApiError(
                400,
                f"the prompt has {prompt_tokens} tokens, over this server's limit "
                f"max_prompt_tokens={s.max_prompt_tokens}",
                param=param,
                code="context_length_exceeded",
            )
        room = context - prompt_tokens
        if max_tokens <= room:
            return max_tokens
        if asked is None and room >= 1:
            return room
        raise ApiError(
            400,
            f"this model's maximum context length is {context} tokens; the prompt has {prompt_tokens} "
            f"tokens and max_tokens is {max_tokens} ({prompt_tokens + max_tokens} in all): shorten the "
            "prompt or lower max_tokens",
            param=param if room < 1 else "max_tokens",
            code="context_length_exceeded",
        )

    async def release(self, gen: Generation) -> None:
        """Free the concurrency slot and give back the tokens not generated (once per generation)."""
        if gen.released:
            return
        gen.released = True
        self.active -= 1
        await self.limits.refund(gen.key_id, gen.reserved_completion - gen.generated)

    # -- generation ------------------------------------------------------------------------------
    async def deltas(self, gen: Generation, request_id: str) -> AsyncGenerator[Delta, None]:
        """Triton's deltas, with metrics; `TritonError` on failure (counted by status). While no Triton
        replica is ready the request waits in the cold-start hold (serving/gateway/holding.py) and is
        then sent again; it counts as held there, as in flight only while it talks to Triton."""
        deadline: float | None = None
        wait = self.hold.enabled and self.hold.cold  # others wait already: join them
        while True:
            if wait:
                deadline = deadline or self.hold.deadline()
                await self._held(deadline)
            answered = False
            self.running += 1
            self.metrics.in_flight.inc()
            try:
                stream = self.backend(gen.role).generate(
                    gen.params, request_id, self.settings.generation_timeout_s
                )
                try:
                    async for delta in stream:
                        answered = True
                        self._account(gen, delta)
                        yield delta
                    return
                finally:
                    await stream.aclose()
            except TritonError as exc:
                # a canary that is down is the canary's failure (counted below), not a cold start
                stable = gen.role == STABLE
                wait = stable and not answered and await self.hold.should_hold(exc, self._triton_not_ready)
                if wait:
                    continue  # out of the in-flight count first (finally), then into the hold
                self.metrics.triton_errors.labels(str(exc.status)).inc()
                if self.canary is not None and exc.status >= 500:
                    self.canary.record(gen.role, False, None)
                raise
            finally:
                self.running -= 1
                self.metrics.in_flight.dec()

    async def _triton_not_ready(self) -> str | None:
        """The current Triton client's readiness (looked up each time: `use_triton` may replace it)."""
        return await self.backend().not_ready_reason()

    async def use_triton(self, url: str) -> None:
        """Talk to the Triton at `url` from now on (the local stack restarted it on new ports)."""
        s = self.settings
        old, self.triton = self.triton, TritonGenerator(url, s.model_name, s.triton_check_timeout_s)
        self.hold.poke()  # the held requests need not wait for the next readiness poll
        if old is not None:
            await old.close()

    async def _held(self, deadline: float) -> None:
        try:
            await self.hold.wait(self._triton_not_ready, deadline)
        except TritonError as exc:
            self.metrics.triton_errors.labels(str(exc.status)).inc()
            raise

    def _account(self, gen: Generation, delta: Delta) -> None:
        if gen.first_token_at is None and (delta.text or delta.final):
            gen.first_token_at = time.perf_counter()
            self.metrics.ttft.labels(gen.route).observe(gen.first_token_at - gen.started)
        choice = gen.choice(delta.sequence_index)
        choice.text.append(delta.text)
        choice.record.add(delta.token_ids, delta.log_probs, delta.top_token_ids, delta.top_log_probs)
        if delta.prompt_token_ids:
            gen.prompt_record = TokenRecord()
            gen.prompt_record.add(delta.prompt_token_ids, delta.prompt_log_probs, (), ())
        if delta.finish_reason in _FINISH_REASONS:
            choice.finish_reason = delta.finish_reason
        if delta.completion_tokens is None or gen.completion_tokens is None:
            gen.completion_tokens = None
            gen.generated += 1 if delta.text else 0
        else:
            choice.tokens += delta.completion_tokens
            gen.completion_tokens += delta.completion_tokens  # per response, as TRT-LLM
            gen.generated = gen.completion_tokens
        if delta.final:
            self._finish(gen, delta)

    def _finish(self, gen: Generation, last: Delta) -> None:
        completion = gen.completion_tokens
        if completion is None:
            prompts = self._format(gen.role)[0]
            completion = sum(prompts.count_tokens("".join(c.text)) for c in gen.choices.values())
        gen.generated = completion
        prompt = last.prompt_tokens if last.prompt_tokens is not None else gen.prompt_tokens
        gen.usage = Usage(
            prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
        )
        for index in range(gen.params.n):
            choice = gen.choice(index)
            if choice.finish_reason is None:
                # a model without the finish_reason output (the TensorRT-LLM ensemble): best guess
                tokens = choice.tokens if gen.completion_tokens is not None else completion
                choice.finish_reason = "length" if tokens >= gen.params.max_tokens else "stop"
        self.metrics.completion_tokens.inc(completion)
        self.metrics.prompt_tokens.inc(prompt)
        if self.canary is not None:
            ttft = None if gen.first_token_at is None else gen.first_token_at - gen.started
            self.canary.record(gen.role, True, ttft)
