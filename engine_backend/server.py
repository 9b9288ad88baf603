"""OpenAI-compatible HTTP server over one shared ``AsyncLLMEngine``.

Every Python worker of a query (Spark executors, DuckDB threads) talks to one server so
they share one engine and one prefix cache. It binds loopback by default and demands a
bearer token on everything but ``/health``. A list ``prompt`` is one ordered batch: the
engine admits it in that order, which is what lets the optimiser's row order pay off.

Endpoints: ``POST /v1/completions``, ``POST /v1/chat/completions``, ``GET /v1/models``,
``GET /metrics`` (Prometheus text), ``GET /health`` (open), and two of our own for
``llm_sql.explain``'s estimates, measured where the engine runs:

* ``GET /v1/llm_sql/cost``: ``{"model", "block_size" (null when prefix caching is off),
  "max_num_seqs", "max_num_batched_tokens", "batches": [{"requests", "uncached_prompt_tokens",
  "generated_tokens", "seconds", "steps"}, ...], "generated": {kind: [requests, tokens]}}``: the
  engine's limits and its busy periods' history (``AsyncLLMEngine.history``: one record per
  period, however many clients' batches ran in it);
* ``POST /v1/llm_sql/cached_prefix_blocks`` with ``{"token_ids": [[int, ...], ...]}``:
  ``{"blocks": [int, ...]}``, per prompt the leading full blocks the prefix cache could serve
  now (looked up on the engine thread; nothing is allocated). At most ``MAX_PREFIX_PROMPTS``
  prompts and ``MAX_PREFIX_TOKENS`` tokens, ids in ``[0, vocab)``.

Errors: a bad field, or a single prompt the engine rejects, is a 400 in OpenAI's error
shape; inside a list, a prompt that fails on its own gets ``finish_reason: "error"`` and
an ``error`` string while the others complete. A client that disconnects has its
requests aborted, so their KV pages are freed at once.
"""
from __future__ import annotations

import asyncio
import dataclasses
import hmac
import ipaddress
import json
import re
import secrets
import sys
import threading
import time
import uuid
from collections import Counter
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException as StarletteHTTPException

from engine_backend.async_engine import AsyncLLMEngine, BatchStream, EngineClosedError, EngineError
from engine_backend.openai_shapes import chat_logprobs, completion_logprobs, usage
from engine_backend.reasoning import reasoning_format, require_format
from engine_backend.sampling_params import MAX_LOGPROBS, SamplingParams
from engine_backend.server_stream import ChunkWriter, sse

OPEN_PATHS = frozenset({"/health"})
MAX_N = 16  # choices per prompt: each is a request of its own
COST_PATH = "/v1/llm_sql/cost"
PREFIX_BLOCKS_PATH = "/v1/llm_sql/cached_prefix_blocks"
MAX_PREFIX_PROMPTS = 100_000  # one cached_prefix_blocks request: the lookup holds the engine thread
MAX_PREFIX_TOKENS = 20_000_000
MAX_PREFIX_BODY_BYTES = 256 * 2**20
_KNOWN_PATHS = frozenset({"/v1/completions", "/v1/chat/completions", "/v1/models", "/health", "/metrics",
                          COST_PATH, PREFIX_BLOCKS_PATH})


# --- errors ------------------------------------------------------------------------------
class APIError(Exception):
    """An error answered in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else None
        return JSONResponse(body, status_code=self.status, headers=headers)


def _validation_error(exc: RequestValidationError) -> APIError:
    """Pydantic's errors as one short 400 (FastAPI's default is a 422 with a JSON dump).

    One line per top-level field: a union type (``stop``: str or list) fails once per
    alternative, and the first is enough to say what is wrong.
    """
    parts, fields = [], []
    for err in exc.errors():
        loc = [str(x) for x in err.get("loc", ()) if x != "body"]
        field = loc[0] if loc else "body"
        if field in fields:
            continue
        fields.append(field)
        if field == "body":
            parts.append(f"the body must be a JSON object: {err.get('msg', 'invalid')}")
            continue
        got = f" (got {type(err['input']).__name__})" if "input" in err else ""
        parts.append(f"{field}: {err.get('msg', 'invalid')}{got}")
    return APIError(400, "invalid request: " + "; ".join(parts[:5]), param=fields[0] if fields else None)


# --- request bodies ------------------------------------------------------------------------
class _SamplingFields(BaseModel):
    # strict: "16" is not a max_tokens; extra fields OpenAI clients add (user, ...) are ignored.
    model_config = ConfigDict(strict=True, extra="allow")

    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool | None = None
    n: int | None = None
    best_of: int | None = None
    stream: bool | None = None
    stream_options: dict[str, Any] | None = None  # {"include_usage": bool}
    logprobs: Any = None  # completions: how many alternatives (int); chat: whether (bool), see top_logprobs
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None  # token id (as a string) -> bias in [-100, 100]
    tools: list[Any] | None = None  # function calling is not offered: refused rather than ignored
    functions: list[Any] | None = None
    choices: list[str] | None = None  # our extension: the output is exactly one of these
    guided_choice: list[str] | None = None  # vLLM's name for the same thing (before 0.12)
    guided_json: dict[str, Any] | str | None = None  # vLLM's (before 0.12): a JSON schema
    guided_regex: str | None = None
    structured_outputs: dict[str, Any] | None = None  # vLLM's newer spelling: {"choice" | "json" | "regex": ...}
    response_format: dict[str, Any] | None = None  # OpenAI's: {"type": "text" | "json_object" | "json_schema"}


class CompletionRequest(_SamplingFields):
    prompt: Any = None  # checked by hand for a clearer message than a 4-way union error
    echo: bool | None = None
    suffix: str | None = None
    # our extension: a reasoning model thinks first (a text prompt is rendered by its chat template with thinking
    # on); the choice carries reasoning_content. How the SQL functions reason through a server.
    reasoning: bool | None = None
    max_reasoning_tokens: int | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")
    role: str
    content: str | list[dict[str, Any]] | None = None


class ChatRequest(_SamplingFields):
    messages: list[ChatMessage]
    max_completion_tokens: int | None = None
    top_logprobs: int | None = None
    chat_template_kwargs: dict[str, Any] | None = None  # vLLM's: e.g. {"enable_thinking": false} for Qwen3
    reasoning_effort: str | None = None  # OpenAI's; "none" / "minimal" turn a reasoning model's thinking off
    max_reasoning_tokens: int | None = None  # our extension: the thinking budget


def _reject_unsupported(req: _SamplingFields) -> None:
    if req.n is not None and not 1 <= req.n <= MAX_N:
        raise APIError(400, f"n must be between 1 and {MAX_N}, got n={req.n}", param="n")
    if req.best_of not in (None, 1, req.n or 1):
        raise APIError(400, f"best_of is not supported (only best_of equal to n), got best_of={req.best_of}",
                       param="best_of")
    if req.stream_options is not None:
        if not req.stream:
            raise APIError(400, "stream_options is only allowed with stream=true", param="stream_options")
        if not isinstance(req.stream_options.get("include_usage", False), bool):
            raise APIError(400, "stream_options.include_usage must be a boolean", param="stream_options")
    for name in ("tools", "functions"):
        if getattr(req, name):
            raise APIError(400, f"{name} (function calling) is not supported by this server", param=name)
    if getattr(req, "echo", None):
        raise APIError(400, "echo=true is not supported by this server", param="echo")
    if getattr(req, "suffix", None):
        raise APIError(400, "suffix is not supported by this server", param="suffix")


def _logprobs_asked(req: _SamplingFields) -> int | None:
    """How many alternatives per token the request wants (0: the chosen token only), or None for no logprobs.
    Completions give the count as ``logprobs``; chat says ``logprobs: true`` and the count as ``top_logprobs``."""
    if isinstance(req, ChatRequest):
        if req.logprobs not in (None, True, False):
            raise APIError(400, "logprobs must be a boolean for chat (the count goes in top_logprobs)",
                           param="logprobs")
        if req.top_logprobs is not None and not req.logprobs:
            raise APIError(400, "top_logprobs needs logprobs=true", param="top_logprobs")
        count = (req.top_logprobs or 0) if req.logprobs else None
        param = "top_logprobs"
    else:
        if req.logprobs is not None and (isinstance(req.logprobs, bool) or not isinstance(req.logprobs, int)):
            raise APIError(400, "logprobs must be an integer (how many alternatives per token)", param="logprobs")
        count, param = req.logprobs, "logprobs"
    if count is not None and not 0 <= count <= MAX_LOGPROBS:
        raise APIError(400, f"{param} must be between 0 and {MAX_LOGPROBS}, got {count}", param=param)
    return count


def _logit_bias(bias: dict[str, float] | None) -> dict[int, float] | None:
    if not bias:
        return None
    if any(not (k.isascii() and k.isdigit()) for k in bias):  # str.isdigit alone passes "²" (int() fails) and "١"
        raise APIError(400, "logit_bias keys must be token ids written as strings, e.g. {\"50256\": -100}",
                       param="logit_bias")
    return {int(k): float(v) for k, v in bias.items()}


def _output_constraint(req: _SamplingFields) -> dict[str, Any]:
    """The one output constraint the request asks for, under any of the names clients use, as SamplingParams
    fields ({"choices": ...} | {"json_schema": ...} | {"regex": ...} | {}). Two different ones are a 400."""
    asked: list[tuple[str, str, Any]] = []  # (where, kind, value)
    for where, kind, value in (("choices", "choices", req.choices), ("guided_choice", "choices", req.guided_choice),
                               ("guided_json", "json_schema", req.guided_json),
                               ("guided_regex", "regex", req.guided_regex)):
        if value is not None:
            asked.append((where, kind, value))
    if req.structured_outputs is not None:
        so = req.structured_outputs
        names = {"choice": "choices", "json": "json_schema", "regex": "regex"}
        if not so or set(so) - set(names):
            raise APIError(400, "structured_outputs takes one of choice, json, regex", param="structured_outputs")
        asked += [(f"structured_outputs.{k}", names[k], v) for k, v in so.items()]
    if req.response_format is not None:
        rf = req.response_format
        kind = rf.get("type")
        if kind == "json_object":
            asked.append(("response_format", "json_schema", {"type": "object"}))
        elif kind == "json_schema":
            spec = rf.get("json_schema")
            if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
                raise APIError(400, "response_format json_schema needs {\"json_schema\": {\"name\": ..., "
                                    "\"schema\": {...}}}", param="response_format")
            asked.append(("response_format", "json_schema", spec["schema"]))
        elif kind != "text":
            raise APIError(400, f"response_format type must be text, json_object or json_schema, got {kind!r}",
                           param="response_format")
    distinct = {(kind, json.dumps(value, sort_keys=True)) for _, kind, value in asked}
    if len(distinct) > 1:
        raise APIError(400, f"{' and '.join(w for w, _, _ in asked)} ask for different outputs: give one",
                       param=asked[1][0])
    return {asked[0][1]: asked[0][2]} if asked else {}


def _sampling_params(req: _SamplingFields, max_tokens: int | None) -> SamplingParams:
    """Map the OpenAI fields onto ``SamplingParams``; any invalid value is a 400 naming it."""
    _reject_unsupported(req)
    kwargs: dict[str, Any] = {
        "stop": [req.stop] if isinstance(req.stop, str) else list(req.stop or []),
        "stop_token_ids": list(req.stop_token_ids or []),
        "ignore_eos": bool(req.ignore_eos),
        "seed": req.seed,
        "logprobs": _logprobs_asked(req),
        "presence_penalty": req.presence_penalty or 0.0,
        "frequency_penalty": req.frequency_penalty or 0.0,
        "logit_bias": _logit_bias(req.logit_bias),
        **_output_constraint(req),
    }
    if max_tokens is not None:
        kwargs["max_tokens"] = max_tokens
    if req.temperature is not None:  # unset means greedy: SQL answers should be repeatable
        kwargs["temperature"] = float(req.temperature)
    if req.top_p is not None:
        kwargs["top_p"] = float(req.top_p)
    if req.top_k is not None:
        kwargs["top_k"] = 0 if req.top_k == -1 else req.top_k  # vLLM spells "off" as -1
    try:
        return SamplingParams(**kwargs)
    except ValueError as exc:
        raise APIError(400, str(exc)) from None


def _prompts(prompt: Any) -> tuple[list[str | list[int]], bool]:
    """The batch in order, and whether the body gave a single prompt (errors are then a 400)."""
    def is_ids(x: Any) -> bool:
        return isinstance(x, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in x)

    if isinstance(prompt, str):
        batch, single = [prompt], True
    elif isinstance(prompt, list) and prompt and is_ids(prompt):
        batch, single = [prompt], True
    elif isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        batch, single = list(prompt), False
    elif isinstance(prompt, list) and prompt and all(isinstance(p, list) and is_ids(p) for p in prompt):
        batch, single = [list(p) for p in prompt], False
    elif prompt is None or prompt == []:
        raise APIError(400, "prompt is required and must not be empty", param="prompt")
    else:
        raise APIError(400, "prompt must be a string, a list of strings, a list of token ids, "
                            "or a list of token-id lists", param="prompt")
    if single and not batch[0]:
        raise APIError(400, "prompt must not be empty", param="prompt")
    return batch, single


def _message_text(content: str | list[dict[str, Any]] | None) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    texts = []
    for part in content:
        if part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise APIError(400, "only text content parts are supported", param="messages")
        texts.append(part["text"])
    return "".join(texts)


def _prefix_token_lists(body: bytes, vocab_size: int) -> list[list[int]]:
    """The prompts of a ``cached_prefix_blocks`` request, checked: a JSON object ``{"token_ids": [[id, ...], ...]}``
    with ids in ``[0, vocab_size)``, within the size bounds; anything else is a 400."""
    shape = 'the body must be a JSON object {"token_ids": [[token id, ...], ...]}'
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise APIError(400, f"{shape}: {exc}") from None
    if not isinstance(data, dict) or "token_ids" not in data:
        raise APIError(400, shape, param="token_ids")
    lists = data["token_ids"]
    if not isinstance(lists, list) or not all(type(ids) is list for ids in lists):
        raise APIError(400, "token_ids must be a list of token-id lists", param="token_ids")
    if len(lists) > MAX_PREFIX_PROMPTS:
        raise APIError(400, f"token_ids has {len(lists)} prompts; at most {MAX_PREFIX_PROMPTS} per request",
                       param="token_ids")
    total = sum(map(len, lists))
    if total > MAX_PREFIX_TOKENS:
        raise APIError(400, f"token_ids has {total} tokens; at most {MAX_PREFIX_TOKENS} per request",
                       param="token_ids")
    for ids in lists:  # type(t) is int: neither a bool nor a float
        if not all(type(t) is int for t in ids) or (ids and (min(ids) < 0 or max(ids) >= vocab_size)):
            raise APIError(400, f"token ids must be integers in [0, {vocab_size})", param="token_ids")
    return lists


async def _read_body(request: Request, limit: int) -> bytes:
    """The request's body, refused with a 413 once it passes ``limit`` bytes (before reading it all)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise APIError(413, f"the body is {declared} bytes; at most {limit}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise APIError(413, f"the body is over {limit} bytes")
    return bytes(body)


# --- responses -------------------------------------------------------------------------------
def _with_choices(params: SamplingParams, n: int) -> list[SamplingParams]:
    """``n`` requests for one prompt. A seeded sampler gets seed, seed + 1, ...: reproducible, yet n different
    answers (one seed n times would give n equal ones)."""
    if n == 1:
        return [params]
    if params.seed is None or params.greedy:
        return [params] * n
    return [dataclasses.replace(params, seed=(params.seed + j) % 2**64) for j in range(n)]


def _completion_choice(index: int, out: Any, tokenizer: Any) -> dict:
    logprobs = None
    if out.logprobs is not None and out.finish_reason != "error":
        logprobs = completion_logprobs(tokenizer, *out.answer_logprobs())
    choice = {"index": index, "text": out.text, "logprobs": logprobs, "finish_reason": out.finish_reason,
              # extensions: exact tokens and per-choice usage, so a client can account per row
              "token_ids": list(out.token_ids), "usage": usage([out])}
    if out.reasoning is not None:
        choice["reasoning_content"] = out.reasoning
    if out.finish_reason == "error":
        choice["text"] = ""
        choice["error"] = out.error or "request failed"
    return choice


def _chat_choice(index: int, out: Any, tokenizer: Any) -> dict:
    logprobs = chat_logprobs(tokenizer, *out.answer_logprobs()) if out.logprobs is not None else None
    message = {"role": "assistant", "content": out.text}
    if out.reasoning is not None:  # vLLM's field name, which clients of reasoning models read
        message["reasoning_content"] = out.reasoning
    return {"index": index, "message": message, "logprobs": logprobs,
            "finish_reason": out.finish_reason, "token_ids": list(out.token_ids)}


def _chat_prompt(tokenizer: Any, body: "ChatRequest", messages: list[dict], params: SamplingParams,
                 model_name: str) -> tuple[list[int], SamplingParams]:
    """The rendered chat, and the params with reasoning on when a reasoning model will think: its template's
    switch from ``chat_template_kwargs`` / ``reasoning_effort``, else the model's own default (thinking on)."""
    kwargs = dict(body.chat_template_kwargs or {})
    fmt = reasoning_format(tokenizer)
    thinking = kwargs.pop("enable_thinking", None)
    if thinking is None and body.reasoning_effort is not None:
        thinking = body.reasoning_effort not in ("none", "minimal")
    if thinking is not None and not isinstance(thinking, bool):
        raise APIError(400, "chat_template_kwargs.enable_thinking must be a boolean", param="chat_template_kwargs")
    if body.max_reasoning_tokens is not None and body.max_reasoning_tokens < 0:
        raise APIError(400, "max_reasoning_tokens must be a non-negative integer", param="max_reasoning_tokens")
    try:
        if fmt is None:
            if thinking:
                require_format(tokenizer, model_name)  # the clear error: this model cannot think
            text = tokenizer.apply_chat_template(messages, True, **kwargs)
        else:
            thinking = True if thinking is None else thinking
            text = fmt.render(tokenizer, messages, thinking, **kwargs)
    except ValueError as exc:
        raise APIError(400, str(exc), param="messages") from None
    except Exception as exc:  # a template that rejects the roles, or none at all
        raise APIError(400, f"cannot apply the chat template: {exc}", param="messages") from None
    if fmt is not None and thinking:
        params = dataclasses.replace(params, reasoning=True, max_reasoning_tokens=body.max_reasoning_tokens)
    # token ids, not text: the template already writes BOS, encoding its text would add another
    return tokenizer.encode(text, add_special_tokens=False), params


# --- auth and request counting (pure ASGI: runs before the body is read) ---------------------
class _AuthAndCount:
    def __init__(self, app: Any, api_key: str, counts: Counter):
        self.app, self.key, self.counts = app, api_key.encode(), counts

    def _authorized(self, scope: dict) -> bool:
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.key)
        return False

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        status = {"code": 500}

        async def counting_send(message: dict) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            if path in OPEN_PATHS or self._authorized(scope):
                await self.app(scope, receive, counting_send)
            else:
                msg = "missing or invalid API key: send 'Authorization: Bearer <key>'"
                await APIError(401, msg, type="authentication_error", code="invalid_api_key").response()(
                    scope, receive, counting_send)
        finally:
            label = path if path in _KNOWN_PATHS else "other"
            self.counts[(label, str(status["code"]))] += 1



# --- Prometheus text ---------------------------------------------------------------------------
_METRICS = [  # (stats key, metric name, type, help)
    ("prompt_tokens", "llm_sql_prompt_tokens_total", "counter", "Prompt tokens of finished requests."),
    ("cached_prompt_tokens", "llm_sql_cached_prompt_tokens_total", "counter",
     "Prompt tokens served from the prefix cache."),
    ("generated_tokens", "llm_sql_generated_tokens_total", "counter", "Tokens generated."),
    ("num_requests_finished", "llm_sql_requests_finished_total", "counter", "Requests the engine finished."),
    ("requests_submitted", "llm_sql_requests_submitted_total", "counter", "Requests submitted to the engine."),
    ("requests_rejected", "llm_sql_requests_rejected_total", "counter", "Requests rejected as invalid."),
    ("requests_aborted", "llm_sql_requests_aborted_total", "counter",
     "Requests aborted (client disconnects included)."),
    ("engine_errors", "llm_sql_engine_errors_total", "counter", "Engine failures reported to callers."),
    ("preemptions", "llm_sql_preemptions_total", "counter", "Requests preempted for KV space."),
    ("waiting", "llm_sql_requests_waiting", "gauge", "Requests queued in the scheduler."),
    ("running", "llm_sql_requests_running", "gauge", "Requests running in the scheduler."),
    ("kv_pages_total", "llm_sql_kv_pages_total", "gauge", "KV-cache pages in the pool."),
    ("kv_pages_used", "llm_sql_kv_pages_used", "gauge", "KV-cache pages held by requests."),
    ("peak_kv_pages", "llm_sql_kv_pages_peak", "gauge", "Most KV-cache pages held at once."),
    ("swapped_out_blocks", "llm_sql_swapped_out_blocks_total", "counter",
     "KV blocks copied from the device to the host tier (swap-outs and prefix-cache spills)."),
    ("swapped_in_blocks", "llm_sql_swapped_in_blocks_total", "counter",
     "KV blocks copied from the host tier back to the device (resumes and host-tier prefix hits)."),
    ("host_cached_prompt_tokens", "llm_sql_host_cached_prompt_tokens_total", "counter",
     "Prompt tokens served from the host tier's prefix cache (also in cached_prompt_tokens)."),
    ("host_kv_bytes_used", "llm_sql_host_kv_bytes_used", "gauge", "Host-tier KV bytes held or cached."),
    ("swap_seconds", "llm_sql_swap_seconds_total", "counter", "Seconds spent copying KV between tiers."),
    ("swap_hidden_fraction", "llm_sql_swap_hidden_fraction", "gauge",
     "Share of layers whose host-tier copies were done before the layer needed them."),
    ("spec_proposed_tokens", "llm_sql_spec_proposed_tokens_total", "counter",
     "Speculative tokens verified (proposed and scheduled)."),
    ("spec_accepted_tokens", "llm_sql_spec_accepted_tokens_total", "counter",
     "Speculative tokens accepted by verification."),
    ("spec_mean_k", "llm_sql_spec_mean_k", "gauge",
     "Mean speculative tokens per decoding request-step, zeros included."),
]
# per proposer, from stats["spec_by_proposer"]: (field, metric name, type, help)
_PROPOSER_METRICS = [
    ("proposed_tokens", "llm_sql_spec_proposer_proposed_tokens_total", "counter",
     "Speculative tokens verified, by proposer."),
    ("accepted_tokens", "llm_sql_spec_proposer_accepted_tokens_total", "counter",
     "Speculative tokens accepted, by proposer."),
    ("mean_k", "llm_sql_spec_proposer_mean_k", "gauge",
     "Mean speculative tokens per request-step that chose the proposer, zeros included."),
]


def _metric_name(key: str) -> str:
    return "llm_sql_" + re.sub(r"[^a-zA-Z0-9_]", "_", key)


def _label(value: Any) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: Any) -> str:
    if isinstance(value, float):
        if value != value:
            return "NaN"
        if value in (float("inf"), float("-inf")):
            return "+Inf" if value > 0 else "-Inf"
        return repr(value)
    return str(int(value))


def render_metrics(stats: dict, http_counts: Counter) -> str:
    """Engine stats and HTTP counts in the Prometheus text exposition format (0.0.4)."""
    lines: list[str] = []

    emitted: set[str] = set()

    def family(name: str, kind: str, help_: str, samples: list[tuple[str, Any]]) -> None:
        if name in emitted:  # an engine stat whose name clashes with one of ours
            return
        emitted.add(name)
        lines.extend([f"# HELP {name} {help_}", f"# TYPE {name} {kind}"])
        lines.extend(f"{name}{labels} {_number(v)}" for labels, v in samples)

    known = set()
    for key, name, kind, help_ in _METRICS:
        known.add(key)
        if isinstance(stats.get(key), (int, float)):
            family(name, kind, help_, [("", stats[key])])
    by_type = stats.get("kv_bytes_by_type") or {}
    known.add("kv_bytes_by_type")
    family("llm_sql_kv_cache_bytes", "gauge", "KV-cache bytes per layer type.",
           [(f'{{layer_type="{_label(t)}"}}', b) for t, b in sorted(by_type.items())])
    by_proposer = stats.get("spec_by_proposer") or {}
    known.add("spec_by_proposer")
    for field, name, kind, help_ in _PROPOSER_METRICS:
        family(name, kind, help_, [(f'{{proposer="{_label(p)}"}}', v[field]) for p, v in sorted(by_proposer.items())])
    # Whatever else the engine reports (swap, speculation, ...) is exposed as gauges as it comes.
    for key in sorted(stats):
        value = stats[key]
        if key in known or isinstance(value, bool):
            continue
        if isinstance(value, (int, float)):
            family(_metric_name(key), "gauge", f"Engine stat {key}.", [("", value)])
        elif isinstance(value, dict) and value and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                       for v in value.values()):
            family(_metric_name(key), "gauge", f"Engine stat {key}.",
                   [(f'{{key="{_label(k)}"}}', v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))])
    family("llm_sql_http_requests_total", "counter", "HTTP requests by path and status code.",
           [(f'{{path="{_label(p)}",code="{_label(c)}"}}', n) for (p, c), n in sorted(http_counts.items())])
    return "\n".join(lines) + "\n"


# --- running a batch while watching the client ---------------------------------------------------
async def _client_gone(request: Request) -> None:
    """Returns when the client disconnects (the body is read already, so receive() only waits)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def _unless_client_leaves(request: Request, fut: asyncio.Future, abort: Any) -> Any:
    """``fut``'s result, or 499 if the client disconnects first: ``abort()`` then frees its requests' pages."""
    watch = asyncio.ensure_future(_client_gone(request))
    try:
        done, _ = await asyncio.wait({fut, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
        if not fut.done():  # client gone, or this handler cancelled: free the pages now
            abort()
            fut.cancel()
    if fut not in done:
        raise APIError(499, "client closed the request", type="client_closed_request")
    return fut.result()


async def _run_batch(engine: AsyncLLMEngine, request: Request, prompts: list, params: SamplingParams | list) -> list:
    try:
        handle = engine.submit(prompts, params)
        return await _unless_client_leaves(request, asyncio.ensure_future(handle.wait()), handle.abort)
    except EngineClosedError as exc:
        raise APIError(503, str(exc), type="server_error") from None
    except EngineError as exc:
        raise APIError(500, str(exc), type="server_error") from None


async def _first_event(events: Any, stream: BatchStream, request: Request) -> tuple:
    """The stream's first event, or 499 if the client leaves before it (its requests are aborted)."""
    return await _unless_client_leaves(request, asyncio.ensure_future(events.__anext__()), stream.abort)


async def _stream_response(engine: AsyncLLMEngine, request: Request, prompts: list, params_list: list,
                           writer: ChunkWriter, single: bool, param: str) -> StreamingResponse:
    """Start streaming, once the first event shows the request was accepted: a single prompt the engine
    rejects is still a 400 (headers are not sent yet), as it is without streaming."""
    try:
        stream = engine.stream(prompts, params_list)
    except EngineClosedError as exc:
        raise APIError(503, str(exc), type="server_error") from None
    events = stream.events()
    first = await _first_event(events, stream, request)
    if first[0] == "error":
        status = 503 if isinstance(first[1], EngineClosedError) else 500
        raise APIError(status, str(first[1]), type="server_error")
    if single and first[0] == "done" and first[2].finish_reason == "error":
        stream.abort()
        raise APIError(400, first[2].error or "invalid request", param=param)

    async def replay() -> Any:
        yield first
        async for event in events:
            yield event

    return StreamingResponse(sse(writer, replay(), stream), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache"})


# --- the app ----------------------------------------------------------------------------------------
def create_app(engine: AsyncLLMEngine, api_key: str, model_name: str) -> FastAPI:
    """The OpenAI-compatible app; the caller owns ``engine`` and shuts it down."""
    if not api_key:
        raise ValueError("api_key must be a non-empty string")
    app = FastAPI(title="llm-sql engine", docs_url=None, redoc_url=None, openapi_url=None)
    counts: Counter = Counter()
    app.add_middleware(_AuthAndCount, api_key=api_key, counts=counts)
    created = int(time.time())

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return _validation_error(exc).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return APIError(exc.status_code, str(exc.detail), type=kind).response()

    def check_model(name: str | None) -> None:
        if name not in (None, "", model_name):
            raise APIError(404, f"model {name!r} does not exist; this server serves {model_name!r}",
                           param="model", code="model_not_found")

    @app.get("/health")
    async def health() -> JSONResponse:
        if not engine.is_running:
            return JSONResponse({"status": "engine stopped"}, status_code=503)
        return JSONResponse({"status": "ok"})

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": created,
                                            "owned_by": "llm-sql", "max_model_len": engine.max_model_len}]}

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        try:
            stats = await engine.stats_async()
        except EngineClosedError:
            stats = {}
        return PlainTextResponse(render_metrics(stats, counts), media_type="text/plain; version=0.0.4")

    @app.get(COST_PATH)
    async def cost() -> dict:
        return {"model": model_name, "block_size": engine.prefix_block_size, "max_num_seqs": engine.max_num_seqs,
                "max_num_batched_tokens": engine.max_num_batched_tokens, **engine.history().to_json()}

    @app.post(PREFIX_BLOCKS_PATH)
    async def cached_prefix_blocks(request: Request) -> dict:
        body = await _read_body(request, MAX_PREFIX_BODY_BYTES)
        loop = asyncio.get_running_loop()
        token_lists = await loop.run_in_executor(None, _prefix_token_lists, body, engine.vocab_size)
        try:
            blocks = await engine.cached_prefix_blocks_async(token_lists, timeout=300.0)
        except (EngineClosedError, TimeoutError) as exc:
            raise APIError(503, str(exc), type="server_error") from None
        return {"blocks": blocks}

    async def respond(request: Request, body: _SamplingFields, prompts: list, params: SamplingParams,
                      single: bool, chat: bool) -> Any:
        """Run every prompt ``n`` times (choice index = prompt index * n + j), streamed or whole."""
        n = body.n or 1
        batch = [p for p in prompts for _ in range(n)]
        params_list = _with_choices(params, n) * len(prompts)
        param = "messages" if chat else "prompt"
        response_id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        if body.stream:
            include_usage = bool((body.stream_options or {}).get("include_usage"))
            writer = ChunkWriter(engine.tokenizer, chat=chat, model=model_name, response_id=response_id,
                                 params=params_list, include_usage=include_usage, n=n,
                                 reasoning=reasoning_format(engine.tokenizer))
            return await _stream_response(engine, request, batch, params_list, writer, single, param)
        outs = await _run_batch(engine, request, batch, params_list)
        if single and outs[0].finish_reason == "error":
            raise APIError(400, outs[0].error or "invalid request", param=param)
        if chat:
            choices = [_chat_choice(i, o, engine.tokenizer) for i, o in enumerate(outs)]
        else:
            choices = [_completion_choice(i, o, engine.tokenizer) for i, o in enumerate(outs)]
        return {"id": response_id, "object": "chat.completion" if chat else "text_completion",
                "created": int(time.time()), "model": model_name, "choices": choices, "usage": usage(outs, n)}

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request) -> Any:
        check_model(body.model)
        params = _sampling_params(body, body.max_tokens)
        if body.reasoning:
            try:
                require_format(engine.tokenizer, model_name)
                params = dataclasses.replace(params, reasoning=True, max_reasoning_tokens=body.max_reasoning_tokens)
            except ValueError as exc:
                raise APIError(400, str(exc), param="reasoning") from None
        prompts, single = _prompts(body.prompt)
        return await respond(request, body, prompts, params, single, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest, request: Request) -> Any:
        check_model(body.model)
        if not body.messages:
            raise APIError(400, "messages must not be empty", param="messages")
        max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        params = _sampling_params(body, max_tokens)
        messages = [{"role": m.role, "content": _message_text(m.content)} for m in body.messages]
        prompt, params = _chat_prompt(engine.tokenizer, body, messages, params, model_name)
        return await respond(request, body, [prompt], params, True, chat=True)

    return app


# --- running it ------------------------------------------------------------------------------------
def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ServerThread:
    """Run an ASGI app with uvicorn on a background thread (tests, on-demand local servers).

    ``port=0`` picks a free port; the socket is bound before the thread starts, so
    ``url`` is valid at once and there is no race for the port.
    """

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"):
        import socket

        import uvicorn

        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self.host, self.port = host, self._sock.getsockname()[1]
        # A short graceful period: stop() must not wait on a client that never reads.
        config = uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=5)
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self._sock]},
                                        name="llm-sql-http", daemon=True)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self, timeout: float = 30.0) -> "ServerThread":
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the HTTP server on {self.url} did not start")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        self._thread.join(timeout)
        self._sock.close()

    def __enter__(self) -> "ServerThread":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def serve(model_dir: str, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
          *, log_level: str = "warning", **engine_kwargs: Any) -> None:
    """Load the model and serve it until interrupted (blocking)."""
    import uvicorn

    if api_key is None:
        api_key = secrets.token_urlsafe(32)
        print(f"llm-sql: generated API key (send 'Authorization: Bearer <key>'): {api_key}",
              file=sys.stderr, flush=True)
    if not _is_loopback(host):
        print(f"llm-sql: warning: listening on {host}, reachable beyond this machine", file=sys.stderr)
    engine = AsyncLLMEngine.from_model(model_dir, **engine_kwargs)
    try:
        app = create_app(engine, api_key, engine.model_name)
        print(f"llm-sql: serving {engine.model_name!r} on http://{host}:{port}/v1", file=sys.stderr, flush=True)
        uvicorn.run(app, host=host, port=port, log_level=log_level)
    finally:
        engine.shutdown()
