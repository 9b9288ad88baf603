"""Any OpenAI-compatible ``/v1/completions`` server: ours, vLLM, or a hosted API.

Requests go out as ordered batches (one ``prompt`` list per call) so that a prefix
cache on the server sees the optimiser's order. Transient failures (connection errors,
429, 5xx) are retried with exponential backoff and jitter; a batch the server rejects
with a 400 is split until the offending prompts are isolated, so one bad row never
costs the others.

Against our own server (``llm-sql serve``), the facts ``llm_sql.explain`` estimates with come
from where the engine runs, so batches that several workers sent at once are measured as they
ran: ``history()`` is the server's busy-period history (``GET /v1/llm_sql/cost``, with engine
steps), ``prefix_block_size()`` and ``steps_for()`` use its block size and scheduler limits, and
``cached_prefix_blocks()`` asks its prefix cache (``POST /v1/llm_sql/cached_prefix_blocks``).
A server without these endpoints (vLLM, a hosted API: a 404, remembered) gets None from each,
and ``history()`` is then what this client measured on its own batches.
"""
from __future__ import annotations

import json

import os
import random
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from engine_backend.backends.base import (Backend, BackendError, BatchHistory, GenerationRequest, GenerationResult,
                                          _Totals)
from engine_backend.backends.embedded import simulate_steps
from engine_backend.sampling_params import SamplingParams

COST_PATH = "/llm_sql/cost"  # under base_url (…/v1): our server's, see engine_backend.server
PREFIX_BLOCKS_PATH = "/llm_sql/cached_prefix_blocks"
PREFIX_CHUNK_PROMPTS = 10_000  # one cached_prefix_blocks request, well within the server's bounds
PREFIX_CHUNK_TOKENS = 1_000_000


class _Rejected(Exception):
    """The server refused this batch as a bad request (HTTP 400/413/422)."""


def _error_message(resp: httpx.Response) -> str:
    try:
        err = resp.json().get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
        if isinstance(err, str):
            return err
    except Exception:  # not JSON: fall back to the raw text
        pass
    return resp.text[:300] or resp.reason_phrase


def _normalise_base_url(base_url: str) -> str:
    url = base_url.rstrip("/")
    if httpx.URL(url).path in ("", "/"):
        url += "/v1"  # a bare "http://host:port" means the standard prefix
    return url


def _chunks(token_lists: list[list[int]]):
    """The prompts in consecutive runs of at most ``PREFIX_CHUNK_PROMPTS`` prompts and ``PREFIX_CHUNK_TOKENS``
    tokens (a longer prompt alone), as JSON-ready int lists."""
    chunk: list[list[int]] = []
    tokens = 0
    for ids in token_lists:
        if chunk and (len(chunk) >= PREFIX_CHUNK_PROMPTS or tokens + len(ids) > PREFIX_CHUNK_TOKENS):
            yield chunk
            chunk, tokens = [], 0
        chunk.append([int(t) for t in ids])
        tokens += len(ids)
    if chunk:
        yield chunk


class OpenAIBackend(Backend):
    """``OpenAIBackend("http://127.0.0.1:8000", api_key=..., model=None)``.

    ``api_key`` defaults to ``$LLM_SQL_API_KEY``; ``model`` defaults to the first model the
    server lists. ``max_concurrency`` > 1 keeps several batches in flight (faster on a
    busy server, at the price of a slightly looser arrival order).
    """

    name = "openai"

    def __init__(self, base_url: str, api_key: str | None = None, model: str | None = None,
                 batch_size: int = 128, max_retries: int = 5, timeout: float = 600.0, *,
                 backoff: float = 0.5, max_backoff: float = 30.0, max_concurrency: int = 1,
                 extra_body: dict[str, Any] | None = None):
        if batch_size < 1 or max_retries < 0 or max_concurrency < 1:
            raise ValueError("batch_size and max_concurrency must be >= 1, max_retries >= 0")
        self.base_url = _normalise_base_url(base_url)
        self.model = model
        self.batch_size, self.max_retries = batch_size, max_retries
        self.backoff, self.max_backoff = backoff, max_backoff
        self.max_concurrency = max_concurrency
        self.extra_body = dict(extra_body or {})
        api_key = api_key if api_key is not None else os.environ.get("LLM_SQL_API_KEY")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(headers=headers, timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)))
        self._totals = _Totals()
        self._retries = 0
        self._lock = threading.Lock()
        self._not_ours = False  # the server answered 404 for /llm_sql/cost: not ours, not asked again
        self._limits: tuple[int | None, int, int] | None = None  # our server's (block_size, max_num_seqs, tokens)

    # --- HTTP with retries -------------------------------------------------------------------
    def _delay(self, attempt: int, retry_after: str | None) -> float:
        base = min(self.max_backoff, self.backoff * 2 ** (attempt - 1))
        delay = base / 2 + random.uniform(0, base / 2)  # jitter: many clients must not retry in lockstep
        try:
            delay = max(delay, min(float(retry_after), self.max_backoff)) if retry_after else delay
        except ValueError:  # an HTTP-date Retry-After: our own backoff will do
            pass
        return delay

    def _request(self, method: str, path: str, body: dict | None = None, missing_ok: bool = False) -> Any:
        """The JSON answer; None for a 404 when ``missing_ok`` (an endpoint this server does not have)."""
        url = self.base_url + path
        last, retry_after = "no attempt made", None
        for attempt in range(self.max_retries + 1):
            if attempt:
                with self._lock:
                    self._retries += 1
                time.sleep(self._delay(attempt, retry_after))
            retry_after = None
            try:
                resp = self._client.request(method, url, json=body)
            except httpx.TransportError as exc:  # refused, reset, timed out: worth another try
                last = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                continue
            status = resp.status_code
            if status == 429 or status >= 500:
                last, retry_after = f"HTTP {status}: {_error_message(resp)}", resp.headers.get("retry-after")
                continue
            if status in (401, 403):
                raise BackendError(f"{url} refused the API key (HTTP {status}): {_error_message(resp)}")
            if status in (400, 413, 422):
                raise _Rejected(_error_message(resp))
            if status == 404 and missing_ok:
                return None
            if status >= 300:
                raise BackendError(f"{url} answered HTTP {status}: {_error_message(resp)}")
            try:
                return resp.json()
            except ValueError:
                raise BackendError(f"{url} answered with something that is not JSON: {resp.text[:200]!r}") from None
        raise BackendError(f"OpenAI-compatible server at {url} failed after {self.max_retries + 1} attempts: {last}")

    def _model(self) -> str:
        if self.model is None:
            try:
                data = self._request("GET", "/models").get("data") or []
            except _Rejected as exc:
                raise BackendError(f"{self.base_url}/models: {exc}") from None
            if not data:
                raise BackendError(f"{self.base_url}/models lists no model: pass model=...")
            self.model = data[0]["id"]
        return self.model

    # --- batches ---------------------------------------------------------------------------------
    def _payload(self, prompts: list, p: SamplingParams) -> dict:
        body: dict[str, Any] = {"model": self._model(), "prompt": prompts, "max_tokens": p.max_tokens,
                                "temperature": p.temperature, "top_p": p.top_p, "n": 1}
        if p.seed is not None:
            body["seed"] = p.seed
        if p.stop:
            body["stop"] = list(p.stop)
        # Extensions are sent only when used: strict servers reject unknown fields.
        if p.top_k:
            body["top_k"] = p.top_k
        if p.stop_token_ids:
            body["stop_token_ids"] = list(p.stop_token_ids)
        if p.ignore_eos:
            body["ignore_eos"] = True
        if p.choices:
            body["choices"] = list(p.choices)  # our server's name
            body["guided_choice"] = list(p.choices)  # vLLM's name before 0.12
            body["structured_outputs"] = {"choice": list(p.choices)}  # vLLM's name since 0.10.2
        if p.json_schema is not None:  # OpenAI's name, which vLLM, SGLang and our server also read
            schema = json.loads(p.json_schema) if isinstance(p.json_schema, str) else p.json_schema
            body["response_format"] = {"type": "json_schema", "json_schema": {"name": "output", "schema": schema}}
        if p.regex is not None:
            body["guided_regex"] = p.regex  # vLLM's name before 0.12
            body["structured_outputs"] = {"regex": p.regex}
        if p.logprobs is not None:
            body["logprobs"] = p.logprobs
        if p.presence_penalty:
            body["presence_penalty"] = p.presence_penalty
        if p.frequency_penalty:
            body["frequency_penalty"] = p.frequency_penalty
        if p.logit_bias:
            body["logit_bias"] = {str(t): b for t, b in p.logit_bias.items()}
        if p.reasoning:  # our server's extension (see engine_backend.server.CompletionRequest)
            body["reasoning"] = True
            if p.max_reasoning_tokens is not None:
                body["max_reasoning_tokens"] = p.max_reasoning_tokens
        body.update(self.extra_body)
        return body

    @staticmethod
    def _result(choice: dict, usage: dict | None) -> GenerationResult:
        usage = choice.get("usage") or usage or {}
        token_ids = list(choice.get("token_ids") or [])
        prompt_tokens = usage.get("prompt_tokens") or len(choice.get("prompt_token_ids") or [])
        if choice.get("finish_reason") == "error" or choice.get("error"):
            return GenerationResult.failed(str(choice.get("error") or "request failed"), prompt_tokens)
        details = usage.get("prompt_tokens_details") or {}
        logprobs = None
        lp = choice.get("logprobs")
        if isinstance(lp, dict) and lp.get("token_logprobs") is not None:
            logprobs = [(float(v), dict(top or {})) for v, top in zip(lp["token_logprobs"], lp.get("top_logprobs")
                                                                      or [None] * len(lp["token_logprobs"]))]
        return GenerationResult(
            text=choice.get("text", ""), token_ids=token_ids, finish_reason=choice.get("finish_reason") or "stop",
            error=None, prompt_tokens=prompt_tokens,
            cached_prompt_tokens=usage.get("cached_tokens", details.get("cached_tokens")) or 0,
            completion_tokens=usage.get("completion_tokens") or len(token_ids), logprobs=logprobs,
            reasoning=choice.get("reasoning_content"),
            reasoning_tokens=(usage.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0)

    def _run(self, items: list[GenerationRequest]) -> list[GenerationResult]:
        try:
            data = self._request("POST", "/completions", self._payload([r.prompt for r in items], items[0].params))
        except _Rejected as exc:
            if len(items) == 1:
                return [GenerationResult.failed(str(exc))]
            mid = len(items) // 2  # isolate the bad prompts, keep the good ones
            return self._run(items[:mid]) + self._run(items[mid:])
        choices = sorted(data.get("choices") or [], key=lambda c: c.get("index", 0))
        if len(choices) != len(items):
            raise BackendError(f"{self.base_url}/completions returned {len(choices)} choices "
                               f"for {len(items)} prompts")
        usage = data.get("usage") if len(items) == 1 else None  # totals are per-choice only for one prompt
        return [self._result(c, usage) for c in choices]

    def _batches(self, requests: list[GenerationRequest]) -> list[list[GenerationRequest]]:
        """Consecutive runs with the same params and prompt kind, at most ``batch_size`` long."""
        batches: list[list[GenerationRequest]] = []
        for r in requests:
            last = batches[-1] if batches else None
            if (last and len(last) < self.batch_size and last[0].params == r.params
                    and isinstance(last[0].prompt, str) == isinstance(r.prompt, str)):
                last.append(r)
            else:
                batches.append([r])
        return batches

    def generate(self, requests: list[GenerationRequest], progress: bool = False) -> list[GenerationResult]:
        from tqdm import tqdm

        start = time.perf_counter()
        results: list[GenerationResult] = []
        if requests:
            self._model()  # once, before any worker thread needs it
        batches = self._batches(list(requests))
        with tqdm(total=len(requests), disable=not progress, file=sys.stderr, unit="req", delay=1.0) as bar:
            if self.max_concurrency == 1 or len(batches) == 1:
                for batch in batches:
                    results.extend(self._run(batch))
                    bar.update(len(batch))
            else:
                with ThreadPoolExecutor(self.max_concurrency) as pool:
                    for batch, future in [(b, pool.submit(self._run, b)) for b in batches]:
                        results.extend(future.result())
                        bar.update(len(batch))
        with self._lock:
            self._totals.add(results, time.perf_counter() - start, list(requests))  # per-kind output lengths too
        return results

    # --- our server's cost facts (llm_sql.explain's estimates) ----------------------------------------------
    def _ask(self, method: str, path: str, body: dict | None = None) -> Any:
        try:
            return self._request(method, path, body, missing_ok=True)
        except _Rejected as exc:
            raise BackendError(f"{self.base_url}{path}: {exc}") from None

    def server_cost(self) -> dict[str, Any] | None:
        """A fresh ``GET /v1/llm_sql/cost`` of our server (``engine_backend.server``: its model, prefix-cache
        block size, scheduler limits and busy-period history); None when the server has no such endpoint (a 404:
        vLLM, a hosted API), which is remembered so that it is not asked again. ``BackendError`` otherwise."""
        if self._not_ours:
            return None
        data = self._ask("GET", COST_PATH)
        if data is None:
            self._not_ours = True
            return None
        try:
            block = data["block_size"]
            self._limits = (None if block is None else int(block), int(data["max_num_seqs"]),
                            int(data["max_num_batched_tokens"]))
        except (KeyError, TypeError, ValueError):
            raise BackendError(f"{self.base_url}{COST_PATH} answered without the engine's limits: "
                               f"{str(data)[:200]}") from None
        return data

    def _server_limits(self) -> tuple[int | None, int, int] | None:
        if self._limits is None:
            self.server_cost()  # fixed for a server: asked once
        return self._limits

    def history(self) -> BatchHistory:
        """Our server's busy-period history (engine steps included) when it has one (``server_cost``), else what
        this client measured on its own batches."""
        cost = self.server_cost()
        if cost is None:
            return self._totals.history
        try:
            return BatchHistory.from_json(cost)
        except ValueError as exc:
            raise BackendError(f"{self.base_url}{COST_PATH}: {exc}") from None

    def prefix_block_size(self) -> int | None:
        """Our server's prefix-cache block size; None when its prefix cache is off or the server is not ours."""
        limits = self._server_limits()
        return limits[0] if limits is not None else None

    def steps_for(self, token_lists: list[list[int]], cached: list[int], generated: list[int]) -> int | None:
        """``simulate_steps`` with our server's block size and scheduler limits; None when the server is not ours."""
        limits = self._server_limits()
        return simulate_steps(token_lists, cached, generated, *limits) if limits is not None else None

    def cached_prefix_blocks(self, token_lists: list[list[int]]) -> list[int] | None:
        """Per prompt (token ids), the leading full blocks our server's prefix cache could serve now (nothing is
        allocated there); None when the server is not ours. Sent in requests within the server's bounds."""
        limits = self._server_limits()
        if limits is None:
            return None
        if limits[0] is None:  # no prefix cache there
            return [0] * len(token_lists)
        blocks: list[int] = []
        for chunk in _chunks(token_lists):
            data = self._ask("POST", PREFIX_BLOCKS_PATH, {"token_ids": chunk})
            if data is None:
                return None
            got = data.get("blocks") if isinstance(data, dict) else None
            if not isinstance(got, list) or len(got) != len(chunk):
                raise BackendError(f"{self.base_url}{PREFIX_BLOCKS_PATH} answered {str(data)[:200]} "
                                   f"for {len(chunk)} prompts")
            blocks.extend(int(b) for b in got)
        return blocks

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {**self._totals.as_dict(), "retries": self._retries, "base_url": self.base_url,
                    "model": self.model}

    def close(self) -> None:
        self._client.close()
